//! The control API (`--api-socket`) driven by real clients: cloud-hypervisor's own `ch-remote`
//! and Debian's `curl --unix-socket`.
//!
//! `ch-remote` is `PMEMVMM_CH_REMOTE` when set (a path that does not exist fails the test), else
//! `../shared/peers/ch-remote` beside the repository (`testbed::config::ch_remote`); without it
//! the tests fail and say so.
//!
//! - `refusals_on_this_machine` boots nothing: the monitor starts empty on this machine (no KVM
//!   is needed until a VM boots) and every malformed request gets a 4xx and changes nothing.
//! - `boot_through_the_api` boots a guest on the testbed with `vm.create` and `vm.boot` and
//!   stops it with `vm.shutdown` and `vmm.shutdown`, after checking `vm.info`'s pmem report,
//!   `vm.counters` (the guest's fsync reached the flush hint, the host flushed) and that
//!   `vm.power-button` raised the Generic Event Device's interrupt in the guest.
//! - `stage2_counters_follow_the_guest` boots a command-line guest with `--api-socket` and one
//!   raw 256 MiB device, reads `vm.counters`' `kvm.stage2` (KVM's `pages_4k/2m/1g`) before and
//!   after the guest reads the whole device, and checks the counts against what the guest did:
//!   non-zero, never more than the VM's memory, and grown by at least the device once the guest
//!   touched all of it; the exit log reports them too.
//! - `file_on_huge_tmpfs_maps_stage2_huge`: the same read from a file on a `huge=always` tmpfs
//!   maps at least 90 % of the device with 2 MiB stage-2 leaves (KVM's `pages_2m`), the host
//!   mapping being PMD-mapped (smaps).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed::markers::marker_values;
use testbed::shell::sh_quote;
use testbed::{run_on_kvm_host, vmm, HostOpts, ScratchDir};

fn curl() -> PathBuf {
    let p = PathBuf::from("/usr/bin/curl");
    assert!(
        p.is_file(),
        "curl is needed (apt-get install curl; scripts/install-deps.sh installs it)"
    );
    p
}

/// What a directory holds: name → (size, mtime, content).
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, i64, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let content = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000, content),
            )
        })
        .collect()
}

struct Monitor {
    child: Child,
    socket: PathBuf,
}

impl Monitor {
    fn start(socket: &Path) -> Monitor {
        let child = Command::new(vmm().expect("build the vmm"))
            .arg("--api-socket")
            .arg(format!("path={}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while UnixStream::connect(socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the API socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Monitor {
            child,
            socket: socket.to_path_buf(),
        }
    }

    fn ch_remote(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(testbed::config::ch_remote().unwrap_or_else(|e| panic!("{e}")))
            .arg("--api-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `curl -X METHOD` with `body`: the status code and the body.
    fn curl(&self, method: &str, endpoint: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new(curl());
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&self.socket)
            .args(["-X", method])
            .arg(format!("http://localhost/api/v1/{endpoint}"));
        // Bodies go through a file elsewhere: a large one does not fit in argv.
        let bodies = ScratchDir::new("api-body").unwrap();
        if let Some(b) = body {
            let file = bodies.path().join("body.json");
            std::fs::write(&file, b).unwrap();
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()));
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A raw request, for what curl will not send.
    fn raw(&self, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    fn wait(mut self) -> (i32, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("the monitor did not exit after vmm.shutdown");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code().unwrap_or(-1), err)
    }
}

fn refused_at_start(args: &[String]) -> (i32, String) {
    let out = Command::new(vmm().expect("build the vmm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn refusals_on_this_machine() {
    let dir = ScratchDir::new("api").unwrap();
    let d = dir.path();
    let kernel = d.join("bzImage");
    std::fs::write(&kernel, vec![0u8; 4096]).unwrap();
    let backing = d.join("backing.img");
    std::fs::write(&backing, vec![0u8; 2 << 20]).unwrap();

    // The socket path is an output: an existing file there is a usage error and stays.
    let file = d.join("not-a-socket");
    std::fs::write(&file, b"keep").unwrap();
    let (code, err) =
        refused_at_start(&["--api-socket".into(), format!("path={}", file.display())]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--api-socket path=") && err.contains("a regular file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    // ... and with a command-line VM it may not be a backing.
    let (code, err) = refused_at_start(&[
        "--kernel".into(),
        kernel.display().to_string(),
        "--pmem".into(),
        format!("path={},size=2M", d.join("new.img").display()),
        "--api-socket".into(),
        format!("path={}", d.join("new.img").display()),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--api-socket path="), "{err}");
    assert!(!d.join("new.img").exists());
    // A live socket is someone else's.
    let live = d.join("live.sock");
    let _listener = UnixListener::bind(&live).unwrap();
    let (code, err) =
        refused_at_start(&["--api-socket".into(), format!("path={}", live.display())]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another process"), "{err}");

    let socket = d.join("api.sock");
    let before = snapshot(d);
    let m = Monitor::start(&socket);

    let (ok, out) = m.ch_remote(&["ping"]);
    assert!(ok, "{out}");
    assert!(out.contains("\"version\""), "{out}");
    let (ok, out) = m.ch_remote(&["info"]);
    assert!(!ok && out.contains("no VM is created"), "{out}");
    let (ok, out) = m.ch_remote(&["boot"]);
    assert!(!ok && out.contains("no VM is created"), "{out}");

    let k = kernel.display().to_string();
    let b = backing.display().to_string();
    let s = socket.display().to_string();
    let huge = format!(
        "{{\"payload\":{{\"kernel\":\"{}\"}}}}",
        "a".repeat(300 * 1024)
    );
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        (
            "PUT",
            "vm.create",
            Some("{".into()),
            400,
            "invalid JSON body",
        ),
        (
            "PUT",
            "vm.create",
            Some("[1,2]".into()),
            400,
            "invalid JSON body",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(r#"{{"payload":{{"kernel":"{k}"}},"net":[]}}"#)),
            400,
            "unknown field `net`",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}","firmware":"x"}}}}"#
            )),
            400,
            "payload.firmware",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}"}},"cpus":{{"boot_vcpus":"two"}}}}"#
            )),
            400,
            "cpus.boot_vcpus",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}"}},"memory":{{"size":1}}}}"#
            )),
            400,
            "memory.size",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}"}},"pmem":[{{"file":"{b}","size":0}}]}}"#
            )),
            400,
            "pmem[0]: size=0",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}"}},"pmem":[{{"file":"{b}","mode":"sector"}}]}}"#
            )),
            400,
            "pmem[0]: mode=sector",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}"}},"pmem":[{{"file":"{}","size":3145728}}]}}"#,
                d.join("new3m.img").display()
            )),
            400,
            "not a multiple of 2 MiB",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}"}},"pmem":[{{"file":"{b}"}},{{"file":"{b}"}}]}}"#
            )),
            400,
            "pmem",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{b}"}},"pmem":[{{"file":"{b}"}}]}}"#
            )),
            400,
            "payload.kernel",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}"}},"serial":{{"mode":"File","file":"{b}"}},"pmem":[{{"file":"{b}"}}]}}"#
            )),
            400,
            "serial.file=",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{k}"}},"serial":{{"mode":"File","file":"{s}"}}}}"#
            )),
            400,
            "serial.file=",
        ),
        (
            "PUT",
            "vm.create",
            Some(format!(
                r#"{{"payload":{{"kernel":"{}"}}}}"#,
                d.join("missing").display()
            )),
            400,
            "payload.kernel",
        ),
        ("PUT", "vm.create", Some(huge), 413, "exceeds the limit"),
        ("GET", "vm.create", None, 405, "use PUT"),
        ("POST", "vm.boot", None, 405, "use PUT"),
        ("PUT", "vm.info", None, 405, "use GET"),
        ("GET", "vm.nonsense", None, 404, "no such endpoint"),
        ("PUT", "vm.pause", None, 404, "not supported"),
        ("PUT", "vm.boot", None, 404, "no VM is created"),
        ("PUT", "vm.shutdown", None, 404, "no VM is created"),
        (
            "PUT",
            "vm.add-pmem",
            Some(format!(r#"{{"file":"{b}"}}"#)),
            404,
            "no VM is created",
        ),
        (
            "PUT",
            "vm.remove-device",
            Some(r#"{"id":"pmem0"}"#.to_string()),
            404,
            "no VM is created",
        ),
        ("PUT", "vm.remove-device", None, 400, "invalid JSON body"),
    ];
    for (method, endpoint, body, status, needle) in &cases {
        let (got, text) = m.curl(method, endpoint, body.as_deref());
        assert_eq!(got, *status, "{method} {endpoint}: {text}");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let msg = v[0].as_str().unwrap_or_else(|| panic!("{text}"));
        assert!(msg.contains(needle), "{method} {endpoint}: {msg}");
    }
    // What curl will not send: headers without end, a bad request line, chunked bodies.
    let mut long = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX: ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 9000));
    long.extend_from_slice(b"\r\n\r\n");
    assert!(m.raw(&long).starts_with("HTTP/1.1 431 "));
    assert!(m.raw(b"HELLO\r\n\r\n").starts_with("HTTP/1.1 400 "));
    assert!(m
        .raw(b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .starts_with("HTTP/1.1 411 "));
    // A client that connects and says nothing is dropped after the I/O timeout; the API
    // still answers meanwhile-queued clients afterwards.
    let _silent = UnixStream::connect(&socket).unwrap();
    let (ok, out) = m.ch_remote(&["ping"]);
    assert!(ok, "{out}");

    let mut after = snapshot(d);
    after.remove("api.sock");
    assert_eq!(
        before, after,
        "a refused request wrote or created something"
    );

    let (ok, out) = m.ch_remote(&["shutdown-vmm"]);
    assert!(ok, "{out}");
    let (code, err) = m.wait();
    assert_eq!(code, 0, "{err}");
    assert!(!socket.exists(), "the monitor removes its socket");
}

#[test]
fn boot_through_the_api() -> testbed::Result<()> {
    let ch = testbed::nested::visible_in_l1(&testbed::config::ch_remote()?, "ch-remote")
        .map_err(testbed::Error::setup)?;
    let curl = curl();
    let ch_q = sh_quote(&ch.display().to_string());
    let script = format!(
        r#"
set -u
cat > vm.json <<EOF
{{"payload":{{"kernel":"$KERNEL","initramfs":"$INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \\"ls /dev/pmem0 && printf APIMARK-5151 | dd of=/dev/pmem0 conv=fsync 2>/dev/null && echo @@GUEST-WROTE@@ && while sleep 1; do grep ACPI:Ged /proc/interrupts | tr -s ' ' | sed s/^/GEDIRQ:/; done\\""}},
 "cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":536870912}},
 "serial":{{"mode":"File","file":"$WORK/console.log"}},
 "pmem":[{{"file":"$WORK/data.img","size":268435456,"id":"data","memmap":"ram","mode":"fsdax"}}]}}
EOF
CH={ch_q}
api() {{ "$CH" --api-socket "$WORK/api.sock" "$@"; }}
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
api ping && echo @@PING-OK@@
api create vm.json && echo @@CREATE-OK@@
echo "@@STATE-CREATED $(api info | tr -d ' \n' | grep -o '"state":"[A-Za-z]*"')@@"
api boot && echo @@BOOT-OK@@
i=0; while ! grep -q '@@GUEST-WROTE@@' console.log 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.25; i=$((i+1)); done
grep -q '@@GUEST-WROTE@@' console.log && echo @@GUEST-WROTE-SEEN@@
api info > info.json; echo "--- info ---"; cat info.json; echo
echo "@@STATE-RUNNING $(tr -d ' \n' < info.json | grep -o '"state":"[A-Za-z]*"')@@"
{curl} -s --unix-socket api.sock http://localhost/api/v1/vm.counters > counters.json
echo "--- counters ---"; cat counters.json; echo
# The power button: our guest kernel has no ACPI button driver, so it cannot power off on
# it; what it shows is that the GED's interrupt arrived (evged then ran _EVT).
i=0; while ! grep -q 'GEDIRQ:' console.log && [ $i -lt 240 ]; do sleep 0.25; i=$((i+1)); done
grep -q 'GEDIRQ: [0-9]*: 0 .*ACPI:Ged' console.log && echo @@GED-IDLE@@
api power-button && echo @@POWER-BUTTON-OK@@
i=0; while ! grep -q 'GEDIRQ: [0-9]*: 1 ' console.log && [ $i -lt 240 ]; do sleep 0.25; i=$((i+1)); done
grep -q 'GEDIRQ: [0-9]*: 1 .*ACPI:Ged' console.log && echo @@GED-FIRED@@
api shutdown && echo @@SHUTDOWN-OK@@
echo "@@STATE-AFTER $(api info | tr -d ' \n' | grep -o '"state":"[A-Za-z]*"')@@"
api shutdown-vmm && echo @@SHUTDOWN-VMM-OK@@
wait $pid
echo "@@VMM-EXIT $?@@"
grep -c APIMARK-5151 data.img | sed 's/^/@@HOST-MARK /; s/$/@@/'
echo "--- console ---"; cat console.log; echo "--- vmm ---"; cat vmm.log
"#,
        curl = curl.display(),
    );
    let agent = testbed::config::workspace_root().join("resources/guest-agent/pmem-report");
    let host = HostOpts::default()
        .with_host_bin(ch)
        .with_host_bin(curl)
        .with_initramfs(
            testbed::InitramfsSpec::default()
                .with_file(agent, "/usr/bin/pmem-report")
                .with_bin(testbed::policy_checks::NDCTL),
        )
        .with_timeout(Duration::from_secs(300));
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    run.expect_success()?;
    for marker in [
        "PING-OK",
        "CREATE-OK",
        "BOOT-OK",
        "GUEST-WROTE-SEEN",
        "GED-IDLE",
        "POWER-BUTTON-OK",
        "GED-FIRED",
        "SHUTDOWN-OK",
        "SHUTDOWN-VMM-OK",
    ] {
        if !run.output.contains(&format!("@@{marker}@@")) {
            return Err(run.error(format!("missing @@{marker}@@")));
        }
    }
    let expect = |m: &str, want: &str| run.expect_marker(m, want).map(drop);
    expect("STATE-CREATED", "\"state\":\"Created\"")?;
    expect("STATE-RUNNING", "\"state\":\"Running\"")?;
    expect("STATE-AFTER", "\"state\":\"Shutdown\"")?;
    expect("VMM-EXIT", "0")?;
    let info = section(&run.output, "--- info ---");
    let info: serde_json::Value = serde_json::from_str(info.trim())
        .map_err(|e| run.error(format!("vm.info is not JSON ({e}): {info}")))?;
    let dev = &info["pmem"][0];
    if dev["id"] != "data"
        || dev["mode"] != "fsdax"
        || dev["memmap"] != "ram"
        || dev["capacity"].as_u64().unwrap_or(0) == 0
    {
        return Err(run.error(format!("vm.info's pmem report: {dev}")));
    }
    let counters = section(&run.output, "--- counters ---");
    let counters: serde_json::Value = serde_json::from_str(counters.trim())
        .map_err(|e| run.error(format!("vm.counters is not JSON ({e}): {counters}")))?;
    let c = &counters["data"];
    if c["flush_requests"].as_u64().unwrap_or(0) == 0
        || c["host_flushes"].as_u64().unwrap_or(0) == 0
        || c["bytes_formatted"].as_u64() != Some(4096)
    {
        return Err(run.error(format!("vm.counters: {counters}")));
    }
    expect("HOST-MARK", "1")?;
    Ok(())
}

/// Bytes KVM maps in stage 2 according to a `kvm.stage2` counters entry.
fn stage2_bytes(c: &serde_json::Value) -> Option<u64> {
    let n = |k: &str| c[k].as_u64();
    Some(n("pages_4k")? * 4096 + n("pages_2m")? * (2 << 20) + n("pages_1g")? * (1 << 30))
}

/// The guest's RAM and its device in [`guest_reads_its_device`].
const RAM_MIB: u64 = 512;
const PMEM: u64 = 256 << 20;

/// What [`guest_reads_its_device`] saw: the run, KVM's `kvm.stage2` counts before and after the
/// guest read its device, and how much of the monitor's mapping of the backing the host maps
/// with PMD (2 MiB) pages (smaps' `ShmemPmdMapped`, KiB).
struct DeviceRead {
    run: testbed::HostRun,
    before: serde_json::Value,
    after: serde_json::Value,
    pmd_mapped_kib: u64,
}

/// Boots a 1-vCPU guest with `RAM_MIB` of RAM and one raw device of `PMEM` bytes on
/// `$WORK/<dir>/data.img` (after the host ran `setup`), lets it settle, then has it read the whole
/// device with `dd <dd_flags>`, reading `vm.counters` before and after.
fn guest_reads_its_device(setup: &str, dir: &str, dd_flags: &str) -> testbed::Result<DeviceRead> {
    let curl = curl();
    let script = format!(
        r#"
set -u
mkdir -p {dir}
{setup}
truncate -s {PMEM} {dir}/data.img
"$VMM" --kernel "$KERNEL" --initramfs "$INITRAMFS" --cpus 1 --memory {RAM_MIB}M \
  --serial file="$WORK/console.log" --api-socket path="$WORK/api.sock" \
  --pmem path="$WORK/{dir}/data.img",memmap=none \
  --cmdline 'console=ttyS0 quiet panic=-1 -- "echo @@GUEST-UP@@; sleep 8; dd if=/dev/pmem0 of=/dev/null bs=1M {dd_flags} 2>/dev/null && echo @@GUEST-TOUCHED@@; sleep 600"' \
  2> vmm.log < /dev/null &
pid=$!
counters() {{ {curl} -s --unix-socket api.sock http://localhost/api/v1/vm.counters; }}
i=0; while ! grep -q '@@GUEST-UP@@' console.log 2>/dev/null && kill -0 $pid 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.25; i=$((i+1)); done
echo "--- before ---"; counters; echo
i=0; while ! grep -q '@@GUEST-TOUCHED@@' console.log 2>/dev/null && kill -0 $pid 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.25; i=$((i+1)); done
grep -q '@@GUEST-TOUCHED@@' console.log && echo @@TOUCHED-SEEN@@
echo "--- after ---"; counters; echo
echo "@@PMD-MAPPED-KB $(grep -A 30 '{dir}/data.img' /proc/$pid/smaps | grep -m1 '^ShmemPmdMapped:' | awk '{{print $2}}')@@"
kill -TERM $pid; wait $pid
if grep -q " $WORK/{dir} " /proc/mounts; then umount "$WORK/{dir}"; fi
echo "--- vmm ---"; cat vmm.log; echo "--- console ---"; cat console.log
"#,
        curl = curl.display(),
    );
    let host = HostOpts::default()
        .with_host_bin(curl)
        .with_timeout(Duration::from_secs(300));
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    run.expect_success()?;
    if !run.output.contains("@@TOUCHED-SEEN@@") {
        return Err(run.error("the guest did not read its pmem device"));
    }
    let stage2 = |header: &str| -> testbed::Result<serde_json::Value> {
        let text = section(&run.output, header);
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .map_err(|e| run.error(format!("vm.counters is not JSON ({e}): {text}")))?;
        Ok(v["kvm.stage2"].clone())
    };
    let (before, after) = (stage2("--- before ---")?, stage2("--- after ---")?);
    let pmd_mapped_kib = marker_values(&run.output, "PMD-MAPPED-KB")
        .last()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| run.error("no ShmemPmdMapped figure for the backing's mapping"))?;
    Ok(DeviceRead {
        run,
        before,
        after,
        pmd_mapped_kib,
    })
}

#[test]
fn stage2_counters_follow_the_guest() -> testbed::Result<()> {
    const RAM: u64 = RAM_MIB << 20;
    let read = guest_reads_its_device("", "plain", "")?;
    let run = &read.run;
    let bytes = |c: &serde_json::Value| {
        stage2_bytes(c)
            .ok_or_else(|| run.error(format!("no kvm.stage2 page counts in vm.counters: {c}")))
    };
    let (before_c, after_c) = (&read.before, &read.after);
    let (before, after) = (bytes(before_c)?, bytes(after_c)?);
    eprintln!("stage 2 before: {before_c} ({before} bytes); after: {after_c} ({after} bytes)");
    // The guest booted from RAM: something is mapped; and never more than the VM has.
    if before == 0 || after > RAM + PMEM {
        return Err(run.error(format!(
            "stage-2 counts out of range: before {before_c}, after {after_c}, the VM has {} MiB",
            (RAM + PMEM) >> 20
        )));
    }
    // Reading the whole device maps all of it (RAM the read used only adds to that).
    // (Minus what the guest touched at boot: its partition scan read the first pages.)
    if after < before + PMEM / 10 * 9 {
        return Err(run.error(format!(
            "after the guest read its {} MiB device stage 2 grew by {} MiB only ({before_c} -> \
             {after_c})",
            PMEM >> 20,
            after.saturating_sub(before) >> 20
        )));
    }
    let log = section(&run.output, "--- vmm ---");
    if !log.contains("stage-2 mappings (KVM, RAM and pmem): ") {
        return Err(run.error("the exit log has no stage-2 mappings line"));
    }
    Ok(())
}

/// Huge stage-2 pages for a file backing: a raw 256 MiB device whose file lives on a
/// `huge=always` tmpfs in the KVM host. Once the guest has read all of it (with O_DIRECT, so
/// its page cache in RAM adds no 2 MiB leaves of its own), the monitor's mapping of the file is
/// PMD-mapped (the host's smaps) and KVM's `pages_2m` grew by 90-100 % of the device: the
/// window and the host mapping are 2 MiB aligned, so nothing on our side splits what the host
/// gives. (`MADV_HUGEPAGE`, which a `huge=advise` mount needs, is checked by the devices crate's
/// unit test: the nested host's tinyconfig kernel has no madvise system call.)
#[test]
fn file_on_huge_tmpfs_maps_stage2_huge() -> testbed::Result<()> {
    let read = guest_reads_its_device(
        "mount -t tmpfs -o huge=always,size=512M hugetmp \"$WORK/huge\" || \
         { echo \"@@NO-HUGE-TMPFS@@\"; exit 1; }",
        "huge",
        "iflag=direct",
    )?;
    let run = &read.run;
    let pages_2m = |c: &serde_json::Value| {
        c["pages_2m"]
            .as_u64()
            .ok_or_else(|| run.error(format!("no kvm.stage2 pages_2m in vm.counters: {c}")))
    };
    let grown = pages_2m(&read.after)?.saturating_sub(pages_2m(&read.before)?) << 21;
    let pmd_kib = read.pmd_mapped_kib;
    eprintln!(
        "2 MiB stage-2 leaves grew by {} MiB; host mapping PMD-mapped: {pmd_kib} KiB of {} KiB",
        grown >> 20,
        PMEM >> 10
    );
    if pmd_kib << 10 < PMEM / 10 * 9 {
        return Err(run.error(format!(
            "the monitor's mapping of the huge tmpfs file is PMD-mapped for {pmd_kib} KiB of {} \
             KiB only",
            PMEM >> 10
        )));
    }
    if !(PMEM / 10 * 9..=PMEM + (32 << 20)).contains(&grown) {
        return Err(run.error(format!(
            "after the guest read its {} MiB device KVM's 2 MiB stage-2 leaves grew by {} MiB, \
             expected 90-100 % of it",
            PMEM >> 20,
            grown >> 20
        )));
    }
    Ok(())
}

/// NVDIMM hot-add: a guest booted through the API without pmem gets four devices at runtime,
/// one through `ch-remote add-pmem` and three through curl with our keys (fsdax with its memmap
/// in the device, devdax with its memmap in RAM, raw); the guest finds each namespace in its
/// mode, `vm.info` reports them, and adding a backing again is refused with nothing changed.
#[test]
fn hot_add_through_the_api() -> testbed::Result<()> {
    let ch = testbed::nested::visible_in_l1(&testbed::config::ch_remote()?, "ch-remote")
        .map_err(testbed::Error::setup)?;
    let curl = curl();
    let script = format!(
        r#"
set -u
cat > vm.json <<EOF
{{"payload":{{"kernel":"$KERNEL","initramfs":"$INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \\"echo @@GUEST-UP@@; while sleep 1; do [ -e /dev/pmem3 ] && [ ! -e /tmp/w ] && printf HOTMARK-77 | dd of=/dev/pmem3 conv=fsync 2>/dev/null && touch /tmp/w && echo @@GUEST-WROTE-HOT@@; m=\$(cat /sys/bus/nd/devices/namespace*/mode 2>/dev/null | sort); [ ! -e /tmp/r ] && echo \$m | grep -qx dax.memory.memory.raw && touch /tmp/r && pmem-report --label hot --check && echo @@NDCTL-BEGIN@@ && ndctl list -N && echo @@NDCTL-END@@; echo GUESTDEV: \$(ls /dev | grep -e pmem -e dax) MODES: \$(cat /sys/bus/nd/devices/namespace*/mode 2>/dev/null | sort) END; echo MEMMAP: \$(cat /sys/bus/nd/devices/pfn*/memmap_location /sys/bus/nd/devices/dax*/memmap_location 2>/dev/null | sort) END; done\\""}},
 "cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":536870912}},
 "serial":{{"mode":"File","file":"$WORK/console.log"}}}}
EOF
CH={ch}
api() {{ "$CH" --api-socket "$WORK/api.sock" "$@"; }}
add() {{ {curl} -s -o add.out -w '%{{http_code}}' --unix-socket api.sock -X PUT -H 'Content-Type: application/json' --data-binary "$1" http://localhost/api/v1/vm.add-pmem; echo " $(cat add.out)"; }}
# Every wait below shares one deadline inside the run's timeout, so a guest that never gets
# there (e.g. the nested testbed's guest crash, which the vmm log names) still reaches the
# console and vmm dump at the end.
deadline=$(( $(date +%s) + 200 ))
until_ok() {{ until eval "$1" || [ "$(date +%s)" -ge "$deadline" ]; do sleep 0.25; done; }}
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
api create vm.json && api boot && echo @@BOOT-OK@@
until_ok "grep -q 'GUESTDEV:' console.log 2>/dev/null"
api add-pmem file=$WORK/a.img,size=268435456,id=hot-a && echo @@ADD-A-OK@@
echo "@@ADD-B $(add '{{"file":"'$WORK'/b.img","size":268435456,"id":"hot-b","mode":"fsdax","memmap":"pmem"}}')@@"
echo "@@ADD-C $(add '{{"file":"'$WORK'/c.img","size":268435456,"id":"hot-c","mode":"devdax","memmap":"ram"}}')@@"
echo "@@ADD-D $(add '{{"file":"'$WORK'/d.img","size":134217728,"id":"hot-d","mode":"raw"}}')@@"
echo "@@ADD-AGAIN $(add '{{"file":"'$WORK'/b.img","id":"hot-e"}}')@@"
echo "@@ADD-SAMEID $(add '{{"file":"'$WORK'/e.img","size":134217728,"id":"hot-a"}}')@@"
echo "@@ADD-KERNEL $(add '{{"file":"'$KERNEL'","id":"hot-k"}}')@@"
ls e.img 2>/dev/null && echo @@E-CREATED@@
until_ok "tail -n 1 console.log | grep -q 'MODES: dax memory memory raw END'"
echo "@@GUEST-LAST $(grep GUESTDEV: console.log | tail -n 1)@@"
until_ok "grep -q '@@GUEST-WROTE-HOT@@' console.log"
until_ok "grep -q '@@PMEM-REPORT-END hot@@' console.log"
sleep 2; echo "@@GUEST-MEMMAP $(grep MEMMAP: console.log | tail -n 1)@@"
{curl} -s --unix-socket api.sock http://localhost/api/v1/vm.counters | sed 's/^/@@COUNTERS /; s/$/@@/'; echo
# Malformed requests against the running guest: each a 4xx, nothing changed.
sums() {{ for f in a.img b.img c.img d.img; do head -c 8388608 $f | md5sum; done | tr -s ' \n' ' '; ls | tr '\n' ' '; }}
before="$(sums)"
raw() {{ {curl} -s -o /dev/null -w '%{{http_code}}' --unix-socket api.sock "$@"; }}
big=$(head -c 300000 /dev/zero | tr '\0' 'a')
printf '{{"file":"%s"}}' "$big" > big.json
codes=""
for body in '{{' '[]' 'null' '{{"file":"x","colour":1}}' '{{"file":5}}' '{{"file":"x","size":"1G"}}' \
    '{{"file":"x","size":0}}' '{{"file":"x","mode":"sector"}}' '{{"file":"x","memmap":"dev"}}' \
    '{{"file":"x","align":"3M"}}' '{{"file":"x","numa":1,"size":134217728}}' '{{"file":"x","iommu":true}}' \
    '{{"file":"'$WORK'/a.img"}}' '{{"file":"'$WORK'/console.log","id":"con"}}' \
    '{{"file":"'$WORK'/api.sock","id":"sock"}}' '{{"file":"'$WORK'/new.img","size":3145728}}'; do
  codes="$codes $(raw -X PUT -H 'Content-Type: application/json' --data-binary "$body" http://localhost/api/v1/vm.add-pmem)"
done
codes="$codes $(raw -X PUT --data-binary @big.json http://localhost/api/v1/vm.add-pmem)"
codes="$codes $(raw -X GET http://localhost/api/v1/vm.add-pmem)"
codes="$codes $(raw -X PUT -d '{{}}' http://localhost/api/v1/vm.create)"
codes="$codes $(raw -X PUT http://localhost/api/v1/vm.boot)"
codes="$codes $(raw -X PUT http://localhost/api/v1/vm.resize)"
rm -f big.json
echo "@@BAD-CODES$codes@@"
after="$(sums)"
[ "$before" = "$after" ] && echo @@BACKINGS-UNCHANGED@@ || echo "@@BACKINGS-CHANGED $before / $after@@"
api info > info.json; echo "--- info ---"; cat info.json; echo
api shutdown-vmm && echo @@SHUTDOWN-VMM-OK@@
wait $pid
echo "@@VMM-EXIT $?@@"
grep -c HOTMARK-77 d.img | sed 's/^/@@HOST-MARK /; s/$/@@/'
echo "--- console ---"; grep -v -e GUESTDEV: -e MEMMAP: console.log; grep GUESTDEV: console.log | tail -n 3; echo "--- vmm ---"; cat vmm.log
"#,
        ch = sh_quote(&ch.display().to_string()),
        curl = curl.display(),
    );
    let agent = testbed::config::workspace_root().join("resources/guest-agent/pmem-report");
    let host = HostOpts::default()
        .with_host_bin(ch)
        .with_host_bin(curl)
        .with_initramfs(
            testbed::InitramfsSpec::default()
                .with_file(agent, "/usr/bin/pmem-report")
                .with_bin(testbed::policy_checks::NDCTL),
        )
        .with_timeout(Duration::from_secs(300));
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    run.expect_success()?;
    for marker in [
        "BOOT-OK",
        "ADD-A-OK",
        "BACKINGS-UNCHANGED",
        "SHUTDOWN-VMM-OK",
    ] {
        if !run.output.contains(&format!("@@{marker}@@")) {
            return Err(run.error(format!("missing @@{marker}@@")));
        }
    }
    let value = |m: &str| marker_values(&run.output, m).first().map(|s| s.to_string());
    let expect = |m: &str, want: &str| run.expect_marker(m, want).map(drop);
    expect("ADD-B", "200 {\"bdf\":\"0000:00:00.0\",\"id\":\"hot-b\"}")?;
    expect("ADD-C", "200 ")?;
    expect("ADD-D", "200 ")?;
    expect("ADD-AGAIN", "409 ")?;
    expect("ADD-KERNEL", "400 [\"pmem file=")?;
    // 21 malformed requests: bad JSON, wrong types, unknown fields, bad values, numa on
    // hot-add, backings in use, an output and the socket as backings, a bad size, a huge body,
    // a wrong method, wrong states, an endpoint not supported.
    let codes: Vec<u16> = value("BAD-CODES")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    if codes.len() != 21 || codes.iter().any(|c| !(400..500).contains(c)) {
        return Err(run.error(format!("malformed requests answered {codes:?}")));
    }
    expect("ADD-SAMEID", "409 ")?;
    if run.output.contains("@@E-CREATED@@") {
        return Err(run.error("a refused add created its file"));
    }
    expect("GUEST-LAST", "MODES: dax memory memory raw END")?;
    // The guest kernel's own account of where each memmap lives (pfnX.Y and daxX.Y
    // memmap_location, from our patch series) matches vm.info: hot-a and hot-c in RAM, hot-b
    // in the device.
    expect("GUEST-MEMMAP", "MEMMAP: pmem ram ram END")?;
    let last = value("GUEST-LAST").unwrap_or_default();
    let devs = last.split("MODES:").next().unwrap_or("");
    let pmems = devs.matches("pmem").count();
    let daxes = devs.matches("dax").count();
    if pmems != 3 || daxes != 1 {
        return Err(run.error(format!("guest devices: {last}")));
    }
    expect("VMM-EXIT", "0")?;
    // The guest's write to the hot-added raw device reached the host file, through a flush
    // hint that was added with the device.
    expect("HOST-MARK", "1")?;
    let counters = value("COUNTERS").unwrap_or_default();
    let counters: serde_json::Value = serde_json::from_str(counters.trim())
        .map_err(|e| run.error(format!("vm.counters is not JSON ({e}): {counters}")))?;
    let d = &counters["hot-d"];
    if d["flush_requests"].as_u64().unwrap_or(0) == 0
        || d["host_flushes"].as_u64().unwrap_or(0) == 0
        || d["bytes_formatted"].as_u64() != Some(0)
        || counters["hot-b"]["bytes_formatted"].as_u64() != Some(4096)
    {
        return Err(run.error(format!("vm.counters: {counters}")));
    }
    let info = section(&run.output, "--- info ---");
    let info: serde_json::Value = serde_json::from_str(info.trim())
        .map_err(|e| run.error(format!("vm.info is not JSON ({e}): {info}")))?;
    // vm.info is read after the malformed requests: the guest is still running. (Its console
    // is no witness: under a loaded nested testbed its one-second loop can stall for minutes.)
    if info["state"] != "Running" {
        return Err(run.error(format!("after the malformed requests: {}", info["state"])));
    }
    let report: Vec<(String, String, String)> = info["pmem"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["id"].as_str().unwrap_or("").to_string(),
                        d["mode"].as_str().unwrap_or("").to_string(),
                        d["memmap"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let want =
        |id: &str, mode: &str, memmap: &str| (id.to_string(), mode.to_string(), memmap.to_string());
    if report.len() != 4
        || report[1] != want("hot-b", "fsdax", "pmem")
        || report[2] != want("hot-c", "devdax", "ram")
        || report[3].1 != "raw"
        || report[0].0 != "hot-a"
    {
        return Err(run.error(format!("vm.info's pmem report: {report:?}")));
    }
    checker_agrees_with_vm_info(&run, &info)
}

/// The guest kernel's pfn checker ran on every hot-added namespace (the agent's `--check` after
/// the adds) and found each memmap where `vm.info` says the monitor put it (`ram`, `pmem`, or
/// `none` for the raw one), with no bad pfn, and the guest's `ndctl list -N` shows each
/// namespace in `vm.info`'s mode with its memmap there: the namespace is the one whose range
/// starts at the device's `guest_base`.
fn checker_agrees_with_vm_info(
    run: &testbed::HostRun,
    info: &serde_json::Value,
) -> testbed::Result<()> {
    let body = section_between(
        &run.output,
        "@@PMEM-REPORT-BEGIN hot@@",
        "@@PMEM-REPORT-END hot@@",
    )
    .ok_or_else(|| run.error("no pmem-report from the guest after the adds"))?;
    let kv: BTreeMap<&str, &str> = body
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .collect();
    let num = |v: &str| {
        let v = v.trim();
        v.strip_prefix("0x")
            .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
    };
    let ndctl = section_between(&run.output, "@@NDCTL-BEGIN@@", "@@NDCTL-END@@")
        .ok_or_else(|| run.error("no ndctl list -N from the guest after the adds"))?;
    let ndctl: Vec<serde_json::Value> = serde_json::from_str(ndctl.trim())
        .map_err(|e| run.error(format!("ndctl list -N is not JSON ({e}): {ndctl}")))?;
    let mut checked = 0;
    for dev in info["pmem"].as_array().into_iter().flatten() {
        let memmap = dev["memmap"].as_str().unwrap_or("");
        let base = dev["guest_base"].as_u64().unwrap_or(u64::MAX);
        let ns = kv
            .iter()
            .filter_map(|(k, v)| {
                let ns = k.strip_prefix("check.")?.strip_suffix(".range_start")?;
                (num(v) == Some(base)).then_some(ns)
            })
            .next()
            .ok_or_else(|| {
                run.error(format!(
                    "the checker reported on no namespace at {base:#x}: {dev}"
                ))
            })?;
        let get = |key: &str| kv.get(format!("check.{ns}.{key}").as_str()).copied();
        if get("result") != Some("pass")
            || get("failed_pfns") != Some("0")
            || get("memmap_location") != Some(memmap)
        {
            return Err(run.error(format!(
                "{}: checker on {ns}: result {:?}, failed_pfns {:?}, memmap_location {:?}; \
                 vm.info says memmap {memmap}",
                dev["id"],
                get("result"),
                get("failed_pfns"),
                get("memmap_location")
            )));
        }
        // ndctl's view of the same namespace: its mode, and where it says the memmap is
        // ("mem" in RAM, "dev" in the device; a raw namespace has no map).
        let listed = ndctl
            .iter()
            .find(|n| n["dev"] == ns)
            .ok_or_else(|| run.error(format!("ndctl list -N lacks {ns}: {ndctl:?}")))?;
        let want_map = match memmap {
            "ram" => Some("mem"),
            "pmem" => Some("dev"),
            _ => None,
        };
        if listed["mode"] != dev["mode"] || listed["map"].as_str() != want_map {
            return Err(run.error(format!(
                "{}: ndctl lists {listed}; vm.info says mode {} memmap {memmap}",
                dev["id"], dev["mode"]
            )));
        }
        checked += 1;
    }
    if checked != 4 {
        return Err(run.error(format!(
            "the checker verdict was compared for {checked} devices, expected all 4"
        )));
    }
    Ok(())
}

/// The text between `open` and `close` markers (the last such section).
fn section_between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.rfind(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

/// Two devices added at once, while the guest is still booting: both adds answer 200 (the API
/// thread takes them one after the other), and the guest finds both: a notify that comes
/// before its NFIT driver is up is not needed, because the driver reads `_FIT` when it starts.
#[test]
fn hot_add_while_the_guest_boots() -> testbed::Result<()> {
    let curl = curl();
    let script = format!(
        r#"
set -u
cat > vm.json <<EOF
{{"payload":{{"kernel":"$KERNEL","initramfs":"$INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \\"i=0; while [ \$i -lt 120 ]; do [ -e /dev/pmem0 ] && [ -e /dev/pmem1 ] && break; sleep 1; i=\$((i+1)); done; echo GUESTDEV: \$(ls /dev | grep pmem) END\\""}},
 "memory":{{"size":536870912}},"serial":{{"mode":"File","file":"$WORK/console.log"}}}}
EOF
# req NAME ENDPOINT [BODY]: the status code; the answer goes to NAME.out
req() {{ {curl} -s -o "$1.out" -w '%{{http_code}}' --unix-socket api.sock -X PUT -H 'Content-Type: application/json' --data-binary "${{3:-}}" "http://localhost/api/v1/$2"; }}
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "@@CREATE $(req create vm.create "$(cat vm.json)")@@"
echo "@@BOOT $(req boot vm.boot)@@"
req x vm.add-pmem '{{"file":"'$WORK'/x.img","size":134217728,"id":"x"}}' > x.code &
ax=$!
req y vm.add-pmem '{{"file":"'$WORK'/y.img","size":134217728,"id":"y"}}' > y.code &
ay=$!
wait $ax; wait $ay
echo "@@ADD-X $(cat x.code) $(cat x.out)@@"
echo "@@ADD-Y $(cat y.code) $(cat y.out)@@"
i=0; while ! grep -q GUESTDEV: console.log && [ $i -lt 600 ]; do sleep 0.25; i=$((i+1)); done
echo "@@GUEST-SAW $(grep GUESTDEV: console.log)@@"
echo "@@EXIT-VMM $(req exit vmm.shutdown)@@"
wait $pid
echo "@@VMM-EXIT $?@@"
echo "--- console ---"; cat console.log; echo "--- vmm ---"; cat vmm.log
"#,
        curl = curl.display(),
    );
    let host = HostOpts::default()
        .with_host_bin(curl)
        .with_timeout(Duration::from_secs(300));
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    run.expect_success()?;
    run.expect_markers(&[
        ("CREATE", "204"),
        ("BOOT", "204"),
        ("ADD-X", "200 {"),
        ("ADD-Y", "200 {"),
        ("GUEST-SAW", "GUESTDEV: pmem0 pmem1 END"),
        ("EXIT-VMM", "204"),
        ("VMM-EXIT", "0"),
    ])?;
    Ok(())
}

/// The text after `header` up to the next line starting with `---` or `@@`.
fn section<'a>(output: &'a str, header: &str) -> &'a str {
    let Some(start) = output.find(header) else {
        return "";
    };
    let rest = &output[start + header.len()..];
    let end = rest
        .find("\n---")
        .into_iter()
        .chain(rest.find("\n@@"))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The guest side of `health_changes_reach_ndctl_monitor_in_the_guest`, `/health.sh`.
const HEALTH_GUEST: &str = r#"
for b in /sys/bus/nd/devices/ndbus*/wait_probe; do cat "$b" > /dev/null 2>&1; done
echo "@@HEALTH-BEFORE $(ndctl list -DH | tr -d ' \n')@@"
ndctl monitor -d nmem0 -D dimm-health-state -l /tmp/mon.log 2> /tmp/mon.err &
sleep 3
echo @@MONITOR-UP@@
i=0
while ! grep -q critical /tmp/mon.log 2>/dev/null && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done
echo "@@MON $(tr -d ' \n' < /tmp/mon.log 2>/dev/null) ERR $(cat /tmp/mon.err)@@"
echo "@@HEALTH-AFTER $(ndctl list -DH | tr -d ' \n')@@"
echo @@GUEST-DONE@@
while sleep 1; do :; done
"#;

/// `vm.set-pmem-health` reaches the guest as a real DIMM's health event would: `ndctl monitor`
/// (which arms the SMART alarms through the `_DSM` set-threshold function and then waits on
/// the DIMM's `nfit/flags` for `Notify (NVxx, 0x81)`) logs the change to "critical", and
/// `ndctl list -DH` shows the new state, spares and temperature. A DIMM started without
/// `health=`, an unknown id and a bad value are refused, and the guest keeps running.
#[test]
fn health_changes_reach_ndctl_monitor_in_the_guest() -> testbed::Result<()> {
    let curl = curl();
    let script = format!(
        r#"
set -u
cat > vm.json <<EOF
{{"payload":{{"kernel":"$KERNEL","initramfs":"$INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \\"sh /health.sh\\""}},
 "memory":{{"size":536870912}},"serial":{{"mode":"File","file":"$WORK/console.log"}},
 "pmem":[{{"file":"$WORK/a.img","size":134217728,"id":"dimm0","mode":"raw","health":"ok"}},
         {{"file":"$WORK/b.img","size":134217728,"id":"plain","mode":"raw"}}]}}
EOF
# req NAME ENDPOINT [BODY]: the status code; the answer goes to NAME.out
req() {{ {curl} -s -o "$1.out" -w '%{{http_code}}' --unix-socket api.sock -X PUT -H 'Content-Type: application/json' --data-binary "${{3:-}}" "http://localhost/api/v1/$2"; }}
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "@@CREATE $(req create vm.create "$(cat vm.json)")@@"
echo "@@BOOT $(req boot vm.boot)@@"
i=0; while ! grep -q '@@MONITOR-UP@@' console.log 2>/dev/null && [ $i -lt 2400 ]; do sleep 0.25; i=$((i+1)); done
echo "@@PLAIN $(req plain vm.set-pmem-health '{{"id":"plain","health":"fatal"}}') $(cat plain.out)@@"
echo "@@UNKNOWN $(req unknown vm.set-pmem-health '{{"id":"nope","health":"fatal"}}') $(cat unknown.out)@@"
echo "@@BAD $(req bad vm.set-pmem-health '{{"id":"dimm0","spares":101}}') $(cat bad.out)@@"
echo "@@SET $(req set vm.set-pmem-health '{{"id":"dimm0","health":"critical","spares":4,"temperature":61}}')@@"
i=0; while ! grep -q '@@GUEST-DONE@@' console.log && [ $i -lt 1400 ]; do sleep 0.25; i=$((i+1)); done
echo "@@EXIT-VMM $(req exit vmm.shutdown)@@"
wait $pid
echo "@@VMM-EXIT $?@@"
echo "--- console ---"; cat console.log; echo "--- vmm ---"; cat vmm.log
"#,
        curl = curl.display(),
    );
    let guest = testbed::policy_checks::cached_script("health", HEALTH_GUEST)?;
    let host = HostOpts::default()
        .with_host_bin(curl)
        .with_initramfs(
            testbed::InitramfsSpec::default()
                .with_bin(testbed::policy_checks::NDCTL)
                .with_file(guest, "/health.sh"),
        )
        .with_timeout(Duration::from_secs(400));
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    run.expect_success()?;
    run.expect_markers(&[
        ("CREATE", "204"),
        ("BOOT", "204"),
        ("HEALTH-BEFORE", r#""health_state":"ok""#),
        ("PLAIN", "409 "),
        ("PLAIN", "started without health="),
        ("UNKNOWN", "404 "),
        ("BAD", "400 "),
        ("SET", "204"),
        // ndctl monitor saw the event: its log line carries the new health.
        ("MON", r#""dimm-health-state":true"#),
        ("MON", r#""health_state":"critical""#),
        ("HEALTH-AFTER", r#""health_state":"critical""#),
        ("HEALTH-AFTER", r#""spares_percentage":4"#),
        ("HEALTH-AFTER", r#""temperature_celsius":61"#),
        ("EXIT-VMM", "204"),
        ("VMM-EXIT", "0"),
    ])?;
    Ok(())
}
