//! Bad input (the boot issue's and the hardening issue's): each case is one line on stderr naming
//! the option and the value, exit status 2, no KVM object — checked by tracing the monitor's
//! system calls: it must never open /dev/kvm — and nothing written: every fixture's checksum,
//! size and modification time are unchanged and no file appears in the fixture directory. These
//! run on this machine directly (no guest boots, so no KVM host is needed), under strace, each
//! with a deadline so that a monitor hanging in `open` fails the case instead of the suite.
//!
//! The loop-device and bind-mount cases need root (`losetup`, `mount --bind`); without it they
//! fail with a message saying so.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{kernel, vmm, ScratchDir};

/// How long one refused invocation may take; they take milliseconds.
const DEADLINE: Duration = Duration::from_secs(30);

struct Outcome {
    status: Option<i32>,
    stderr: String,
    opened_kvm: bool,
}

/// Runs the monitor under strace with `extra_strace` options (e.g. a signal injection).
fn run_traced_with(args: &[String], traces: &Path, extra_strace: &[&str]) -> Outcome {
    let vmm = vmm().expect("build the vmm");
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let trace = traces.join(format!("trace-{n}"));
    let mut child = Command::new("strace")
        .arg("-f")
        .args(["-e", "trace=open,openat,openat2,flock"])
        .args(extra_strace)
        .arg("-o")
        .arg(&trace)
        .arg(vmm)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a hung monitor can be killed with strace.
        .process_group(0)
        .spawn()
        .expect("strace must be installed (apt-get install strace)");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            // SAFETY: signals the process group this test created for strace and the monitor.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("{args:?}: the monitor did not exit within {DEADLINE:?} (hung?)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let log = std::fs::read_to_string(&trace).unwrap_or_default();
    Outcome {
        status: status.code(),
        stderr,
        opened_kvm: log.contains("/dev/kvm"),
    }
}

/// What must not change: per file, content hash, size and mtime (seconds and nanoseconds).
type Snapshot = BTreeMap<PathBuf, (u64, u64, i64, i64)>;

fn hash_file(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

/// Every regular file under `dir` (not following links) and every directory entry name.
fn snapshot(dir: &Path) -> Snapshot {
    let mut snap = Snapshot::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let hash = if meta.is_file() { hash_file(&path) } else { 0 };
        snap.insert(
            path.clone(),
            (hash, meta.len(), meta.mtime(), meta.mtime_nsec()),
        );
        if meta.is_dir() {
            snap.extend(snapshot(&path));
        }
    }
    snap
}

/// The fixture directory and everything a case needs.
struct Fixtures {
    _scratch: ScratchDir,
    _traces: ScratchDir,
    dir: PathBuf,
    traces: PathBuf,
}

impl Fixtures {
    fn new(label: &str) -> Fixtures {
        let scratch = ScratchDir::new(label).expect("scratch dir");
        let traces = ScratchDir::new(&format!("{label}-traces")).expect("scratch dir");
        let dir = scratch.path().to_path_buf();
        // A kernel of our own (so links to it never touch the cache), two 8 MiB backings with
        // non-zero bytes, an initramfs stand-in, a FIFO, a socket's place, a directory.
        std::fs::copy(
            &kernel().expect("guest kernel").bzimage,
            dir.join("bzImage"),
        )
        .unwrap();
        for (name, seed) in [("d.img", 0x5au8), ("e.img", 0xa5)] {
            let mut bytes = vec![0u8; 8 << 20];
            for (i, b) in bytes.iter_mut().enumerate().take(64 << 10) {
                *b = seed ^ (i as u8);
            }
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        std::fs::write(dir.join("initrd.cpio"), vec![0x07; 4096]).unwrap();
        std::fs::write(dir.join("old-report.json"), b"{\"old\": true}\n").unwrap();
        std::fs::hard_link(dir.join("d.img"), dir.join("d-hard")).unwrap();
        std::os::unix::fs::symlink(dir.join("d.img"), dir.join("d-soft")).unwrap();
        std::os::unix::fs::symlink(dir.join("bzImage"), dir.join("k-soft")).unwrap();
        std::os::unix::fs::symlink(dir.join("missing"), dir.join("dangling")).unwrap();
        for fifo in ["fifo", "fifo2"] {
            let c = std::ffi::CString::new(dir.join(fifo).to_str().unwrap()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that lives for the call.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        }
        std::fs::create_dir(dir.join("subdir")).unwrap();
        Fixtures {
            _scratch: scratch,
            traces: traces.path().to_path_buf(),
            _traces: traces,
            dir,
        }
    }

    fn p(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// `args` with `{X}` replaced by the path of fixture X.
    fn args(&self, args: &[&str]) -> Vec<String> {
        args.iter()
            .map(|a| {
                let mut s = a.to_string();
                while let Some(start) = s.find('{') {
                    let end = s[start..].find('}').expect("closing brace") + start;
                    let name = s[start + 1..end].to_string();
                    s.replace_range(start..=end, &self.p(&name));
                }
                s
            })
            .collect()
    }

    /// Runs one case and checks exit 2, one line with every needle, no /dev/kvm, nothing
    /// changed under the fixture directory.
    fn expect_usage_error(&self, args: &[&str], needles: &[&str]) {
        let args = self.args(args);
        let before = snapshot(&self.dir);
        let o = run_traced_with(&args, &self.traces, &[]);
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(
            o.status,
            Some(2),
            "{args:?}: exit status; stderr: {}",
            o.stderr
        );
        assert_eq!(lines.len(), 1, "{args:?}: want one line, got: {}", o.stderr);
        for needle in self.args(needles) {
            assert!(
                lines[0].contains(&needle),
                "{args:?}: {:?} lacks {needle:?}",
                lines[0]
            );
        }
        assert!(
            !o.opened_kvm,
            "{args:?}: the monitor opened /dev/kvm before refusing"
        );
        let after = snapshot(&self.dir);
        assert_eq!(
            before, after,
            "{args:?}: the fixture directory changed (checksum, size, mtime or files)"
        );
    }
}

#[test]
fn bad_boot_input_is_refused_before_kvm() {
    let f = Fixtures::new("bad-input");
    let bz = f.p("bzImage");
    let not_kernel = f.dir.join("not-a-kernel");
    std::fs::write(&not_kernel, vec![0x5a; 64 * 1024]).unwrap();
    // 100 MiB of initramfs cannot fit in a 64 MiB guest (sparse: costs nothing here).
    std::fs::File::create(f.dir.join("big.cpio"))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();

    f.expect_usage_error(
        &["--kernel", "/nonexistent/bzImage"],
        &["--kernel", "/nonexistent/bzImage"],
    );
    f.expect_usage_error(&["--kernel", "{subdir}"], &["--kernel", "{subdir}"]);
    f.expect_usage_error(
        &["--kernel", "{not-a-kernel}"],
        &["--kernel", "{not-a-kernel}", "not a kernel"],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            &bz,
            "--memory",
            "64M",
            "--initramfs",
            "{big.cpio}",
        ],
        &["--initramfs", "{big.cpio}", "do not fit"],
    );
    f.expect_usage_error(
        &["--kernel", &bz, "--initramfs", "/nonexistent/initrd"],
        &["--initramfs", "/nonexistent/initrd"],
    );
    f.expect_usage_error(&["--kernel", &bz, "--cpus", "0"], &["--cpus", "\"0\""]);
    f.expect_usage_error(&["--kernel", &bz, "--cpus", "255"], &["--cpus", "\"255\""]);
    f.expect_usage_error(
        &["--kernel", &bz, "--memory", "32M"],
        &["--memory", "\"32M\"", "64M"],
    );
    f.expect_usage_error(
        &["--kernel", &bz, "--memory", "100T"],
        &["--memory", "\"100T\""],
    );
    f.expect_usage_error(&["--kernel", &bz, "--frobnicate"], &["--frobnicate"]);
    f.expect_usage_error(
        &["--kernel", &bz, "--serial", "tcp:1"],
        &["--serial", "tcp:1"],
    );
    f.expect_usage_error(&[], &["--kernel"]);
}

/// Defect 1: an output path that is a backing, the kernel, the initramfs or the other output,
/// however it is spelled, is refused before anything is opened for writing.
#[test]
fn output_paths_never_alias_inputs_or_backings() {
    let f = Fixtures::new("bad-output");
    let pmem = "path={d.img}";
    for out in ["{d.img}", "{d-hard}", "{d-soft}", "{subdir}/../d.img"] {
        f.expect_usage_error(
            &["--kernel", "{bzImage}", "--pmem", pmem, "--report", out],
            &["--report", out, "same file as --pmem path={d.img}"],
        );
        let serial = format!("file={out}");
        f.expect_usage_error(
            &["--kernel", "{bzImage}", "--pmem", pmem, "--serial", &serial],
            &[&format!("--serial {serial}"), "same file as --pmem"],
        );
    }
    // The second of two backings, or one given through a link.
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={e.img}",
            "--pmem",
            "path={d-soft}",
            "--report",
            "{d-hard}",
        ],
        &["--report {d-hard}", "same file as --pmem path={d-soft}"],
    );
    // The kernel and the initramfs.
    f.expect_usage_error(
        &["--kernel", "{bzImage}", "--report", "{k-soft}"],
        &["--report {k-soft}", "same file as --kernel {bzImage}"],
    );
    f.expect_usage_error(
        &["--kernel", "{k-soft}", "--serial", "file={bzImage}"],
        &["--serial file={bzImage}", "same file as --kernel"],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--initramfs",
            "{initrd.cpio}",
            "--report",
            "{initrd.cpio}",
        ],
        &["--report {initrd.cpio}", "same file as --initramfs"],
    );
    // A writable backing that is the initramfs.
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--initramfs",
            "{d-soft}",
            "--pmem",
            "path={d-hard}",
        ],
        &["--pmem path={d-hard}", "same file as --initramfs {d-soft}"],
    );
    // Both outputs on one path, existing or new; a new backing and a new output.
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--report",
            "{old-report.json}",
            "--serial",
            "file={old-report.json}",
        ],
        &[
            "--serial file={old-report.json}",
            "same file as --report {old-report.json}",
        ],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--report",
            "{new.json}",
            "--serial",
            "file={subdir}/../new.json",
        ],
        &[
            "--serial file={subdir}/../new.json",
            "same file as --report {new.json}",
        ],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={new.img},size=8M",
            "--report",
            "{subdir}/../new.img",
        ],
        &["same file as --pmem path={new.img}"],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={new.img},size=8M",
            "--pmem",
            "path={subdir}/../new.img,size=8M",
        ],
        &["same backing"],
    );
}

/// Defects 1 and 3: FIFOs, sockets, directories and devices as inputs or outputs are refused at
/// once (a FIFO used to block `open` forever), as are outputs that cannot be created.
#[test]
fn non_regular_and_unwritable_paths_are_refused_without_hanging() {
    let f = Fixtures::new("bad-paths");
    let sock = f.dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let kernel_pmem = ["--kernel", "{bzImage}", "--pmem", "path={new.img},size=8M"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = kernel_pmem.to_vec();
        v.extend_from_slice(extra);
        v
    };
    f.expect_usage_error(&["--kernel", "{fifo}"], &["--kernel", "{fifo}", "FIFO"]);
    f.expect_usage_error(
        &with(&["--initramfs", "{fifo}"]),
        &["--initramfs", "{fifo}", "FIFO"],
    );
    f.expect_usage_error(&with(&["--report", "{fifo}"]), &["--report {fifo}", "FIFO"]);
    f.expect_usage_error(
        &with(&["--serial", "file={fifo2}"]),
        &["--serial file={fifo2}", "FIFO"],
    );
    f.expect_usage_error(
        &with(&["--report", "{sock}"]),
        &["--report {sock}", "socket"],
    );
    f.expect_usage_error(&["--kernel", "{sock}"], &["--kernel", "socket"]);
    f.expect_usage_error(
        &with(&["--report", "{subdir}"]),
        &["--report {subdir}", "directory"],
    );
    f.expect_usage_error(
        &with(&["--report", "/dev/null"]),
        &["--report /dev/null", "character device"],
    );
    f.expect_usage_error(
        &with(&["--serial", "file=/dev/zero"]),
        &["--serial file=/dev/zero", "character device"],
    );
    f.expect_usage_error(
        &["--kernel", "/dev/zero"],
        &["--kernel", "character device"],
    );
    f.expect_usage_error(
        &with(&["--report", "{dangling}"]),
        &["--report {dangling}", "symbolic link to a missing file"],
    );
    f.expect_usage_error(
        &with(&["--serial", "file=/nonexistent/x"]),
        &["--serial file=/nonexistent/x", "cannot create"],
    );
    f.expect_usage_error(
        &with(&["--report", "{d.img}/x"]),
        &["--report {d.img}/x", "cannot create"],
    );
    f.expect_usage_error(&with(&["--pmem", "path={fifo}"]), &["{fifo}", "FIFO"]);

    // A directory nobody may create files in, not even root: immutable.
    let locked = f.dir.join("immutable");
    std::fs::create_dir(&locked).unwrap();
    let chattr = |flag: &str| {
        let ok = Command::new("chattr")
            .arg(flag)
            .arg(&locked)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "chattr {flag} {} (needs root and ext4/xfs)",
            locked.display()
        );
    };
    chattr("+i");
    struct Unlock<'a>(&'a dyn Fn(&str));
    impl Drop for Unlock<'_> {
        fn drop(&mut self) {
            (self.0)("-i");
        }
    }
    let _unlock = Unlock(&chattr);
    f.expect_usage_error(
        &with(&["--report", "{immutable}/r.json"]),
        &["--report {immutable}/r.json", "cannot create"],
    );
    f.expect_usage_error(
        &with(&["--serial", "file={immutable}/console.log"]),
        &["--serial file={immutable}/console.log", "cannot create"],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={immutable}/x.img,size=8M",
        ],
        &["{immutable}/x.img", "cannot create"],
    );
}

/// Defect 2: configuration errors that need no I/O, and those that need only reading, come before
/// anything is written and before the host check (on a host without usable KVM the user used to
/// get the host message instead).
#[test]
fn configuration_errors_come_before_any_write_or_kvm() {
    let f = Fixtures::new("bad-config");
    let cases: &[(&str, &[&str])] = &[
        ("path={d.img},mode=raw,align=2M", &["align=2M", "raw"]),
        (
            "path={d.img},memmap=none,mode=fsdax",
            &["memmap=none", "mode=fsdax"],
        ),
        ("path={d.img},memmap=ram,mode=raw", &["mode=raw"]),
        ("path={d.img},memmap=none,align=1G", &["align=1G"]),
        ("path={d.img},align=1G", &["align=1G", "8 MiB"]),
        ("path={d.img},memmap=pmem,align=1G", &["align=1G"]),
        ("path={new.img},size=8M,align=1G", &["align=1G"]),
        ("path={new.img},size=8M,mode=raw,align=4K", &["align=4K"]),
        ("path={new.img},size=3M", &["2 MiB"]),
        ("path={new.img},size=8M,readonly=on", &["readonly=on"]),
        ("path={new.img}", &["size="]),
        ("path={d.img},size=16M", &["size="]),
        ("path={d.img},memmap=ram,format=keep", &["format=keep"]),
        ("path={d.img},memmap=ram", &["not blank"]),
        ("path={d.img},readonly=on,memmap=ram", &["not blank"]),
        (
            "path={e.img},readonly=on,memmap=ram,format=force",
            &["readonly=on"],
        ),
        (
            "path={d.img},firmware=acpi",
            &["firmware=acpi", "nfit or e820"],
        ),
        (
            "path={d.img},firmware=e820,readonly=on",
            &["firmware=e820", "readonly=on"],
        ),
        (
            "path={d.img},numa=0,firmware=e820",
            &["firmware=e820", "numa="],
        ),
    ];
    for (spec, needles) in cases {
        let mut want = vec!["--pmem"];
        want.extend_from_slice(needles);
        f.expect_usage_error(&["--kernel", "{bzImage}", "--pmem", spec], &want);
        // The same with a report and a new console log: neither may appear.
        f.expect_usage_error(
            &[
                "--kernel",
                "{bzImage}",
                "--pmem",
                spec,
                "--report",
                "{r.json}",
                "--serial",
                "file={console.log}",
            ],
            &want,
        );
    }
    // An error in the second device leaves the first (a new file) uncreated.
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={new.img},size=8M",
            "--pmem",
            "path={d.img},mode=raw,align=2M",
        ],
        &["--pmem", "{d.img}"],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={d.img}",
            "--pmem",
            "path={d-soft}",
        ],
        &["same backing"],
    );
}

fn losetup(args: &[&str]) -> String {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .expect("losetup (util-linux) must be installed");
    assert!(
        out.status.success(),
        "losetup {args:?} failed (these cases need root and loop devices): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Detaches loop devices and unmounts bind mounts made by a test, whatever happens.
struct Undo(Vec<Vec<String>>);

impl Drop for Undo {
    fn drop(&mut self) {
        for cmd in self.0.iter().rev() {
            let _ = Command::new(&cmd[0]).args(&cmd[1..]).status();
        }
    }
}

/// Defect 1 through loop devices and bind mounts: a loop device over a backing file is that
/// file (as a second DIMM, or under an output path), and a bind mount shows the same inode.
#[test]
fn loop_devices_and_bind_mounts_are_seen_through() {
    let f = Fixtures::new("bad-loop");
    let mut undo = Undo(Vec::new());
    let d = f.p("d.img");
    let whole = losetup(&["--find", "--show", &d]);
    undo.0
        .push(vec!["losetup".into(), "-d".into(), whole.clone()]);
    let head = losetup(&["--find", "--show", "--sizelimit", "4194304", &f.p("e.img")]);
    undo.0
        .push(vec!["losetup".into(), "-d".into(), head.clone()]);
    let tail = losetup(&["--find", "--show", "--offset", "4194304", &f.p("e.img")]);
    undo.0
        .push(vec!["losetup".into(), "-d".into(), tail.clone()]);
    let mnt = f.dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["--bind", f.dir.join("subdir").to_str().unwrap()])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mount --bind (needs root)");
    undo.0
        .push(vec!["umount".into(), mnt.to_str().unwrap().to_string()]);
    std::fs::copy(f.dir.join("d.img"), f.dir.join("subdir/c.img")).unwrap();

    let pmem_whole = format!("path={whole}");
    // The loop device and its file as two DIMMs, in either order.
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={d.img}",
            "--pmem",
            &pmem_whole,
        ],
        &[&whole, "shares bytes with the backing {d.img}"],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            &pmem_whole,
            "--pmem",
            "path={d-hard}",
        ],
        &["{d-hard}", "shares bytes"],
    );
    // Outputs onto the loop device's file.
    for out in ["{d.img}", "{d-hard}", "{d-soft}"] {
        f.expect_usage_error(
            &[
                "--kernel",
                "{bzImage}",
                "--pmem",
                &pmem_whole,
                "--report",
                out,
            ],
            &["--report", "same file as --pmem path="],
        );
        let serial = format!("file={out}");
        f.expect_usage_error(
            &[
                "--kernel",
                "{bzImage}",
                "--pmem",
                &pmem_whole,
                "--serial",
                &serial,
            ],
            &["--serial file=", "same file as --pmem path="],
        );
    }
    // Two loop devices over one file share bytes only where their ranges overlap: head and
    // tail do not, so that pair passes every check and stops only at the host or later.
    let pmem_head = format!("path={head}");
    let pmem_tail = format!("path={tail}");
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            &pmem_head,
            "--pmem",
            "path={e.img}",
        ],
        &["{e.img}", "shares bytes"],
    );
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            &pmem_head,
            "--pmem",
            &pmem_tail,
            "--report",
            "{e.img}",
        ],
        &["--report {e.img}", "same file as --pmem"],
    );
    // A bind mount: mnt/c.img is subdir/c.img.
    f.expect_usage_error(
        &[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={subdir}/c.img",
            "--report",
            "{mnt}/c.img",
        ],
        &[
            "--report {mnt}/c.img",
            "same file as --pmem path={subdir}/c.img",
        ],
    );
    drop(undo);
}

/// Defect 3: the stop signals are handled from the first instruction of `main`: a SIGTERM while
/// the monitor opens its backings (injected by strace at the backing's `flock`) stops it with
/// status 143 and one line, with nothing written and no `size=` file left behind.
#[test]
fn a_signal_during_setup_stops_cleanly() {
    let f = Fixtures::new("bad-signal");
    for (signal, status) in [("SIGTERM", 143), ("SIGINT", 130), ("SIGHUP", 129)] {
        let args = f.args(&[
            "--kernel",
            "{bzImage}",
            "--pmem",
            "path={d.img}",
            "--pmem",
            "path={new.img},size=8M",
            "--report",
            "{r.json}",
        ]);
        let before = snapshot(&f.dir);
        let inject = format!("inject=flock:signal={signal}:when=1");
        let o = run_traced_with(&args, &f.traces, &["-e", &inject]);
        assert_eq!(o.status, Some(status), "{signal}: stderr: {}", o.stderr);
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{signal}: one line: {}", o.stderr);
        assert!(lines[0].contains("stopped by signal"), "{}", lines[0]);
        assert!(!o.opened_kvm, "{signal}: /dev/kvm opened");
        assert_eq!(before, snapshot(&f.dir), "{signal}: the fixtures changed");
    }
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
        "1    the monitor failed",
        "2    bad command line or configuration",
        "3    the guest rebooted",
        "4    the guest triple-faulted",
        "5    a host flush of guest data failed",
        "128+N",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
