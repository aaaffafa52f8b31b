//! Smoke test of the benchmark: `bench --quick` (N=1, tiny sizes) on the testbed, then every
//! figure of our monitor must be in `results.json` and positive (or, for the RAM cost of a
//! memmap kept outside RAM, present), and `plot.png` must be a PNG. No timing thresholds.
//!
//! The peers: cloud-hypervisor and Firecracker come from their default place,
//! `../shared/peers` beside the repository (the variables are unset), and must be measured:
//! every figure of theirs present, or the test fails with the reason the run gives (a peer
//! that is not there fails it too). A peer given through an environment variable that does not
//! exist must come out as missing with its reason while the rest of the run goes on: the test
//! sets QEMU's so.
//!
//! Like the other testbed tests this needs KVM (direct) or QEMU (nested) and fails, never
//! skips, without them.

use std::process::Command;

use serde_json::Value;

#[test]
fn quick_run_has_every_figure() {
    let dir = testbed::ScratchDir::new("bench-smoke").unwrap();
    let out = dir.path().join("out");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench"));
    cmd.arg("--quick")
        .arg("--out")
        .arg(&out)
        .env("PMEMVMM_BENCH_QEMU", "/nonexistent/qemu-system-x86_64")
        .env_remove("PMEMVMM_BENCH_CLOUD_HYPERVISOR")
        .env_remove("PMEMVMM_BENCH_FIRECRACKER");
    let output = cmd.output().expect("running bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(output.status.success(), "bench failed: {}", context());

    let json = std::fs::read_to_string(out.join("results.json"))
        .unwrap_or_else(|e| panic!("results.json: {e}\n{}", context()));
    let doc: Value = serde_json::from_str(&json).unwrap();
    let summaries = doc["summaries"].as_array().unwrap();
    let expected = doc["expected"].as_array().unwrap();
    assert!(expected.len() > 40, "{} expected figures", expected.len());
    let mut bad = Vec::new();
    for e in expected {
        let found = summaries.iter().find(|s| {
            s["phase"] == e["phase"] && s["case"] == e["case"] && s["metric"] == e["metric"]
        });
        let ok = match found {
            None => false,
            Some(s) => {
                let median = s["median"].as_f64().unwrap_or(f64::NAN);
                let min = s["min"].as_f64().unwrap_or(f64::NAN);
                if e["may_be_zero"] == true {
                    median.is_finite()
                } else {
                    median > 0.0 && min > 0.0
                }
            }
        };
        if !ok {
            bad.push(format!("{e} -> {found:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "figures missing or not positive:\n{}\n{}",
        bad.join("\n"),
        context()
    );
    assert!(doc["missing_figures"].as_array().unwrap().is_empty());

    // The machine description.
    let m = &doc["machine"];
    for key in [
        "cpu_model",
        "kernel",
        "guest_kernel",
        "vmm",
        "testbed_mode",
        "nested",
    ] {
        assert!(!m[key].is_null(), "machine.{key} missing: {m}");
    }
    // Every sample is in the file.
    let samples = doc["samples"].as_array().unwrap();
    assert!(
        samples.len() >= expected.len() / 2,
        "{} samples",
        samples.len()
    );

    // The bad peer is reported as missing with its reason.
    let peers = doc["peers"].as_array().unwrap();
    let qemu = peers.iter().find(|p| p["peer"] == "qemu").unwrap();
    assert_eq!(qemu["state"], "missing", "{qemu}");
    assert!(
        qemu["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/qemu-system-x86_64"),
        "{qemu}"
    );
    assert!(
        stdout.contains("peer qemu              missing: /nonexistent/qemu-system-x86_64"),
        "{}",
        context()
    );
    // The default peers ran, with every figure of theirs and a ratio against ours.
    for name in ["cloud-hypervisor", "firecracker"] {
        let p = peers.iter().find(|p| p["peer"] == name).unwrap();
        assert_eq!(p["state"], "measured", "{p}\n{}", context());
        let ratio = summaries.iter().find(|s| {
            s["phase"] == "boot"
                && s["case"] == format!("{name}-0")
                && s["metric"] == "launch_vs_vmm_ratio"
        });
        assert!(ratio.is_some(), "no {name}-0 launch ratio\n{}", context());
    }

    let png = std::fs::read(out.join("plot.png")).expect("plot.png");
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000, "plot.png is only {} bytes", png.len());
}
