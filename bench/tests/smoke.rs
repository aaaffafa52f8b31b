//! Smoke test of the benchmark: `bench --quick` (N=1, tiny sizes) on the testbed, then every
//! figure of our monitor must be in `results.json` and positive (or, for the RAM cost of a
//! memmap kept outside RAM, present), and `plot.png` must be a PNG. No timing thresholds.
//!
//! A peer given through an environment variable that does not exist must come out as missing
//! with its reason while the rest of the run goes on: the test sets one.
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
        .env("PMEMVMM_BENCH_FIRECRACKER", "/nonexistent/firecracker")
        .env_remove("PMEMVMM_BENCH_CLOUD_HYPERVISOR")
        .env_remove("PMEMVMM_BENCH_QEMU");
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

    // The bad peer is reported as missing with its reason; the others as not given.
    let peers = doc["peers"].as_array().unwrap();
    let fc = peers.iter().find(|p| p["peer"] == "firecracker").unwrap();
    assert_eq!(fc["state"], "missing", "{fc}");
    assert!(
        fc["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/firecracker"),
        "{fc}"
    );
    assert!(
        stdout.contains("peer firecracker       missing: /nonexistent/firecracker"),
        "{}",
        context()
    );

    let png = std::fs::read(out.join("plot.png")).expect("plot.png");
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000, "plot.png is only {} bytes", png.len());
}
