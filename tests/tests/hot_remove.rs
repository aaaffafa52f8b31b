//! NVDIMM hot-remove (`PUT /api/v1/vm.remove-device`, docs/hot-remove.md) driven with
//! `curl --unix-socket` against guests on the testbed.
//!
//! - `stock_guest_keeps_what_it_does_not_release`: a stock distribution kernel knows nothing of
//!   the eject request; the request times out with 409 "guest did not release pmem0", the device
//!   stays (`vm.info`), the guest keeps running and keeps writing to it, and what it wrote is on
//!   the backing after the run. An unknown id is a 404 and changes nothing.
//!
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use std::path::PathBuf;
use std::time::Duration;

use testbed::markers::marker_values;
use testbed::{run_on_kvm_host, HostOpts, StockStaging};

fn curl() -> PathBuf {
    let p = PathBuf::from("/usr/bin/curl");
    assert!(
        p.is_file(),
        "curl is needed (apt-get install curl; scripts/install-deps.sh installs it)"
    );
    p
}

/// The shell functions every script here uses: `req NAME ENDPOINT [BODY]` prints the status
/// code of a PUT and leaves the answer in NAME.out; `get ENDPOINT` prints a GET's answer;
/// `waitfor PATTERN FILE TRIES` polls FILE for PATTERN every 0.25 s.
fn script_lib(curl: &std::path::Path) -> String {
    format!(
        r#"
req() {{ {curl} -s -o "$1.out" -w '%{{http_code}}' --unix-socket "$WORK/api.sock" -X PUT -H 'Content-Type: application/json' --data-binary "${{3:-}}" "http://localhost/api/v1/$2"; }}
get() {{ {curl} -s --unix-socket "$WORK/api.sock" "http://localhost/api/v1/$1"; }}
waitfor() {{ i=0; while ! grep -q "$1" "$2" 2>/dev/null && [ $i -lt $3 ]; do sleep 0.25; i=$((i+1)); done; grep -q "$1" "$2" 2>/dev/null; }}
"#,
        curl = curl.display()
    )
}

/// A stock kernel does not answer the eject request: 409 after the timeout, nothing lost.
#[test]
fn stock_guest_keeps_what_it_does_not_release() -> testbed::Result<()> {
    let curl = curl();
    // The guest writes a numbered beat to the start of the raw namespace every second and
    // makes it durable (the flush hint), and prints it with the pmem devices it sees.
    let script = format!(
        r#"
set -u
{lib}
cat > vm.json <<EOF
{{"payload":{{"kernel":"$STOCK_KERNEL","initramfs":"$STOCK_INITRAMFS",
  "cmdline":"console=ttyS0 quiet panic=-1 -- \"n=0; while sleep 1; do n=\$((n+1)); printf BEAT-%06d \$n | dd of=/dev/pmem0 conv=fsync 2>/dev/null; echo BEAT \$n DEVS: \$(ls /dev | grep pmem) END; done\""}},
 "cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":1073741824}},
 "pmem":[{{"file":"$WORK/a.img","size":268435456,"id":"pmem0","mode":"raw"}}],
 "serial":{{"mode":"File","file":"$WORK/console.log"}}}}
EOF
"$VMM" --api-socket path="$WORK/api.sock" 2> vmm.log &
pid=$!
i=0; while [ ! -S api.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "@@CREATE $(req create vm.create "$(cat vm.json)")@@"
echo "@@BOOT $(req boot vm.boot)@@"
waitfor 'DEVS: pmem0 END' console.log 1200 || echo "@@NO-BEAT@@"
echo "@@UNKNOWN $(req unknown vm.remove-device '{{"id":"pmem9"}}') $(cat unknown.out)@@"
t0=$(cut -d' ' -f1 /proc/uptime)
echo "@@REMOVE $(req remove vm.remove-device '{{"id":"pmem0","timeout_ms":3000}}') $(cat remove.out)@@"
t1=$(cut -d' ' -f1 /proc/uptime)
echo "@@REMOVE-SECONDS $(echo "$t0 $t1" | awk '{{print $2 - $1}}')@@"
last=$(grep -o 'BEAT [0-9]*' console.log | tail -n 1 | cut -d' ' -f2)
echo "@@BEAT-AT-REMOVE $last@@"
want=$((last + 3))
waitfor "BEAT $want DEVS: pmem0 END" console.log 1200 && echo "@@ALIVE-AFTER@@"
echo "@@INFO $(get vm.info)@@"
echo "@@EXIT-VMM $(req exit vmm.shutdown)@@"
wait $pid
echo "@@VMM-EXIT $?@@"
echo "@@ON-HOST $(head -c 11 a.img)@@"
echo "--- console ---"; tail -n 5 console.log; echo "--- vmm ---"; cat vmm.log
"#,
        lib = script_lib(&curl),
    );
    let mut host = HostOpts::default()
        .with_host_bin(curl)
        .with_timeout(Duration::from_secs(300));
    host.stock_kernel = StockStaging::BzImage;
    let run = run_on_kvm_host(&script, &host)?;
    eprintln!(
        "{} host: run {:.2?}\n{}",
        run.mode, run.duration, run.output
    );
    run.expect_success()?;
    let value = |m: &str| marker_values(&run.output, m).first().map(|s| s.to_string());
    for (m, want) in [
        ("CREATE", "204"),
        ("BOOT", "204"),
        (
            "UNKNOWN",
            "404 [\"vm.remove-device: no device with id \\\"pmem9\\\"",
        ),
        ("REMOVE", "409 [\"guest did not release pmem0 within 3s"),
        ("EXIT-VMM", "204"),
        ("VMM-EXIT", "0"),
    ] {
        match value(m) {
            Some(s) if s.contains(want) => {}
            other => return Err(run.error(format!("{m}: {other:?}, expected {want}"))),
        }
    }
    if run.output.contains("@@NO-BEAT@@") || !run.output.contains("@@ALIVE-AFTER@@") {
        return Err(run.error("the guest did not keep writing to pmem0 after the request"));
    }
    // The request waited for its timeout, not much longer.
    let seconds: f64 = value("REMOVE-SECONDS")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| run.error("no REMOVE-SECONDS"))?;
    if !(2.9..8.0).contains(&seconds) {
        return Err(run.error(format!("the refusal took {seconds} s, expected about 3")));
    }
    // vm.info still lists the device.
    let info: serde_json::Value = serde_json::from_str(value("INFO").unwrap_or_default().trim())
        .map_err(|e| run.error(format!("vm.info is not JSON: {e}")))?;
    if info["state"] != "Running" || info["pmem"][0]["id"] != "pmem0" {
        return Err(run.error(format!("vm.info after the refusal: {info}")));
    }
    // The guest's last beat (written after the refusal) is on the host backing.
    let at_remove: u64 = value("BEAT-AT-REMOVE")
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| run.error("no BEAT-AT-REMOVE"))?;
    let on_host: u64 = value("ON-HOST")
        .and_then(|s| s.trim().strip_prefix("BEAT-").and_then(|n| n.parse().ok()))
        .ok_or_else(|| run.error("no beat on the host backing"))?;
    if on_host < at_remove + 3 {
        return Err(run.error(format!(
            "the backing holds beat {on_host}, the guest had written {} after the refusal",
            at_remove + 3
        )));
    }
    Ok(())
}
