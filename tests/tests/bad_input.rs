//! The boot issue's bad input: each case is one line on stderr naming the option and the value,
//! exit status 2, and no KVM object — checked by tracing the monitor's system calls: it must
//! never open /dev/kvm. These run on this machine directly (no guest boots, so no KVM host is
//! needed), under strace.

use std::path::{Path, PathBuf};
use std::process::Command;

use testbed::{kernel, vmm, ScratchDir};

struct Outcome {
    status: Option<i32>,
    stderr: String,
    opened_kvm: bool,
}

fn run_traced(args: &[&str], dir: &Path) -> Outcome {
    let vmm = vmm().expect("build the vmm");
    let trace = dir.join(format!("trace-{}", args.len()));
    let out = Command::new("strace")
        .arg("-f")
        .args(["-e", "trace=open,openat,openat2"])
        .arg("-o")
        .arg(&trace)
        .arg(vmm)
        .args(args)
        .output()
        .expect("strace must be installed (apt-get install strace)");
    let log = std::fs::read_to_string(&trace).unwrap_or_default();
    Outcome {
        status: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        opened_kvm: log.contains("/dev/kvm"),
    }
}

fn expect_usage_error(args: &[&str], dir: &Path, needles: &[&str]) {
    let o = run_traced(args, dir);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        o.status,
        Some(2),
        "{args:?}: exit status; stderr: {}",
        o.stderr
    );
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got: {}", o.stderr);
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{args:?}: {:?} lacks {needle:?}",
            lines[0]
        );
    }
    assert!(
        !o.opened_kvm,
        "{args:?}: the monitor opened /dev/kvm before refusing"
    );
}

#[test]
fn bad_boot_input_is_refused_before_kvm() {
    let dir = ScratchDir::new("bad-input").expect("scratch dir");
    let dir = dir.path();
    let bz = kernel().expect("guest kernel").bzimage.clone();
    let bz = bz.to_str().unwrap();
    let not_kernel = dir.join("not-a-kernel");
    std::fs::write(&not_kernel, vec![0x5a; 64 * 1024]).unwrap();
    let unreadable_dir: PathBuf = dir.join("a-directory");
    std::fs::create_dir(&unreadable_dir).unwrap();
    // 100 MiB of initramfs cannot fit in a 64 MiB guest (sparse: costs nothing here).
    let big = dir.join("big.cpio");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (nk, ud, bg) = (s(&not_kernel), s(&unreadable_dir), s(&big));

    expect_usage_error(
        &["--kernel", "/nonexistent/bzImage"],
        dir,
        &["--kernel", "/nonexistent/bzImage"],
    );
    expect_usage_error(&["--kernel", &ud], dir, &["--kernel", &ud]);
    expect_usage_error(&["--kernel", &nk], dir, &["--kernel", &nk, "not a kernel"]);
    expect_usage_error(
        &["--kernel", bz, "--memory", "64M", "--initramfs", &bg],
        dir,
        &["--initramfs", &bg, "do not fit"],
    );
    expect_usage_error(
        &["--kernel", bz, "--initramfs", "/nonexistent/initrd"],
        dir,
        &["--initramfs", "/nonexistent/initrd"],
    );
    expect_usage_error(&["--kernel", bz, "--cpus", "0"], dir, &["--cpus", "\"0\""]);
    expect_usage_error(
        &["--kernel", bz, "--cpus", "255"],
        dir,
        &["--cpus", "\"255\""],
    );
    expect_usage_error(
        &["--kernel", bz, "--memory", "32M"],
        dir,
        &["--memory", "\"32M\"", "64M"],
    );
    expect_usage_error(
        &["--kernel", bz, "--memory", "100T"],
        dir,
        &["--memory", "\"100T\""],
    );
    expect_usage_error(&["--kernel", bz, "--frobnicate"], dir, &["--frobnicate"]);
    expect_usage_error(
        &["--kernel", bz, "--serial", "tcp:1"],
        dir,
        &["--serial", "tcp:1"],
    );
    expect_usage_error(&[], dir, &["--kernel"]);
}

#[test]
fn help_documents_the_exit_statuses() {
    let out = Command::new(vmm().expect("build the vmm"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "0    the guest powered off",
        "3    the guest rebooted",
        "4    the guest triple-faulted",
        "128+N",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
