//! Smoke test of the benchmark: `bench --quick` (N=1, tiny sizes) on the testbed, then every
//! figure of our monitor must be in `results.json` and positive (or, for the RAM cost of a
//! memmap kept outside RAM, present), and `plot.png` must be a PNG. No timing thresholds.
//!
//! The density phase (two guests on one read-only root image) must really share the image:
//! the host pages behind the monitors' mappings of the image file (their pagemaps, read in the
//! KVM host) are the same pages for ours and for cloud-hypervisor, and disjoint with one copy
//! of the image per guest.
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

    // Density (two guests at once on one read-only DAX root image): the guests' mappings of
    // the image resolve to the same host pages, read from each monitor's /proc/PID/pagemap in
    // the KVM host, with ours and with cloud-hypervisor; with one copy per guest they do not.
    let figure = |case: &str, metric: &str| {
        summaries
            .iter()
            .find(|s| s["phase"] == "density" && s["case"] == case && s["metric"] == metric)
            .and_then(|s| s["median"].as_f64())
            .unwrap_or_else(|| panic!("no density {case} {metric}\n{}", context()))
    };
    for case in ["vmm-shared-2", "cloud-hypervisor-shared-2"] {
        let what = |m: &str| format!("{case}: {m} = {}\n{}", figure(case, m), context());
        assert_eq!(figure(case, "image_files"), 1.0, "{}", what("image_files"));
        // Something of the image was mapped by both (busybox, which both guests read)...
        assert!(
            figure(case, "image_pfn_shared_kib") >= 1024.0,
            "{}",
            what("image_pfn_shared_kib")
        );
        // ... and no page of the file at one offset was two different host pages.
        assert_eq!(
            figure(case, "image_pfn_mismatch_kib"),
            0.0,
            "{}",
            what("image_pfn_mismatch_kib")
        );
        assert!(
            figure(case, "image_distinct_kib") < figure(case, "image_mapped_kib"),
            "{}",
            what("image_distinct_kib")
        );
    }
    let copies = "vmm-copies-2";
    assert_eq!(figure(copies, "image_files"), 2.0, "{}", context());
    assert_eq!(figure(copies, "image_pfn_shared_kib"), 0.0, "{}", context());
    assert_eq!(
        figure(copies, "image_distinct_kib"),
        figure(copies, "image_mapped_kib"),
        "{}",
        context()
    );
    // Two copies hold twice the page cache of the one shared file.
    assert!(
        figure(copies, "image_cache_kib")
            >= 2.0 * figure("vmm-shared-2", "image_cache_kib") - 1024.0,
        "{}",
        context()
    );

    let png = std::fs::read(out.join("plot.png")).expect("plot.png");
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000, "plot.png is only {} bytes", png.len());

    // The Markdown summary: every phase's rows, with our figures filled in.
    let md = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    for row in [
        "| launch to guest init, ",
        "| monitor resident memory without guest RAM and pmem, ",
        "| monitor start-up (exec to first KVM_RUN), ",
        "| guest RAM per GiB of pmem, ",
        "| DAX bandwidth guest / host, devdax ",
        "| stage-2 leaves of 2 MiB or more ",
        "| host memory per guest, ",
    ] {
        let line = md
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("summary.md has no row {row:?}:\n{md}"));
        let ours = line.split(" | ").nth(1).unwrap_or("");
        assert!(
            ours.chars().any(|c| c.is_ascii_digit()) && !ours.starts_with('-'),
            "summary.md row without our figure: {line}\n{md}"
        );
    }
}
