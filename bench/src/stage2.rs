//! Stage-2 huge-page coverage from KVM's own statistics: the monitor's `vm.counters`
//! (`--api-socket`) has a `kvm.stage2` entry with KVM's `pages_4k`, `pages_2m` and `pages_1g` for
//! the whole VM (`vmm/src/kvm_stats`). KVM counts per VM, not per memory slot, so the bandwidth
//! guest brackets its work on each device with `@@STAGE2 <case>@@` lines; `bench-probe launch
//! --api-socket` reads the counters at each such line, and the figures of a case are what the
//! VM's stage 2 gained between the line before and that case's line: the device the guest
//! copied through, plus what the copy's anonymous buffer (guest RAM) newly needed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::lines::sample_line;

/// What the guest prints before and after its work on a device: `@@STAGE2 <case>@@`.
pub const MARKER: &str = "@@STAGE2 ";

/// The `vm.counters` entry with KVM's counts (`vmm::api::STAGE2_COUNTERS`).
pub const COUNTERS_KEY: &str = "kvm.stage2";

/// The case a `@@STAGE2 <case>@@` line names.
pub fn marker_case(line: &str) -> Option<&str> {
    let rest = &line[line.find(MARKER)? + MARKER.len()..];
    let case = rest.split("@@").next()?.trim();
    (!case.is_empty() && !case.contains(char::is_whitespace)).then_some(case)
}

/// KVM's stage-2 leaf counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pages {
    pub pages_4k: u64,
    pub pages_2m: u64,
    pub pages_1g: u64,
}

impl Pages {
    /// From a `vm.counters` document.
    pub fn from_counters(counters: &Value) -> Result<Pages, String> {
        let c = &counters[COUNTERS_KEY];
        let n = |k: &str| {
            c[k].as_u64().ok_or_else(|| {
                format!("vm.counters has no {COUNTERS_KEY}.{k} (KVM without binary statistics?): {counters}")
            })
        };
        Ok(Pages {
            pages_4k: n("pages_4k")?,
            pages_2m: n("pages_2m")?,
            pages_1g: n("pages_1g")?,
        })
    }
}

/// KiB per leaf of each size.
const KIB: [f64; 3] = [4.0, 2048.0, 1024.0 * 1024.0];

/// The figures of each case: for snapshot `i > 0` (named by its case), what stage 2 gained
/// since snapshot `i - 1`, as sample lines tagged `<phase>.<case>.<run>`:
/// `stage2_4k_kib`, `stage2_2m_kib`, `stage2_1g_kib` (signed: KVM may also split or drop
/// leaves), `stage2_mapped_kib` (their sum) and `stage2_huge_pct`, the share of the newly mapped
/// KiB (the sizes that grew) mapped with 2 MiB or 1 GiB leaves.
pub fn gained(phase: &str, run: usize, snapshots: &[(String, Pages)]) -> Vec<String> {
    let mut out = Vec::new();
    for pair in snapshots.windows(2) {
        let (before, after) = (&pair[0].1, &pair[1].1);
        let case = &pair[1].0;
        let tag = format!("{phase}.{case}.{run}");
        let d = |a: u64, b: u64| a as f64 - b as f64;
        let kib = [
            d(after.pages_4k, before.pages_4k) * KIB[0],
            d(after.pages_2m, before.pages_2m) * KIB[1],
            d(after.pages_1g, before.pages_1g) * KIB[2],
        ];
        for (metric, v) in ["stage2_4k_kib", "stage2_2m_kib", "stage2_1g_kib"]
            .into_iter()
            .zip(kib)
        {
            out.push(sample_line(&tag, metric, v));
        }
        out.push(sample_line(&tag, "stage2_mapped_kib", kib.iter().sum()));
        let grown = kib.map(|v| v.max(0.0));
        let total: f64 = grown.iter().sum();
        if total > 0.0 {
            let pct = (grown[1] + grown[2]) * 100.0 / total;
            out.push(sample_line(
                &tag,
                "stage2_huge_pct",
                (pct * 10.0).round() / 10.0,
            ));
        }
    }
    out
}

/// `GET /api/v1/vm.counters` on the monitor's API socket.
pub fn query(socket: &Path) -> Result<Value, String> {
    let what = |e: std::io::Error| format!("vm.counters on {}: {e}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(what)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(what)?;
    s.write_all(
        b"GET /api/v1/vm.counters HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .map_err(what)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(what)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("vm.counters: not an HTTP response: {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "vm.counters: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("vm.counters: {e}: {body:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn markers() {
        assert_eq!(
            marker_case("[  3.1] @@STAGE2 guest-devdax@@"),
            Some("guest-devdax")
        );
        assert_eq!(marker_case("@@STAGE2 @@"), None);
        assert_eq!(marker_case("@@BENCH x y 1@@"), None);
    }

    /// The figures are KVM's counts as `vm.counters` reports them, differenced between the
    /// markers: the 256 MiB a guest copied through with 2 MiB leaves and the 64 MiB buffer
    /// with 4 KiB ones give 80 % huge.
    #[test]
    fn coverage_from_kvm_counts() {
        let doc = |k4: u64, m2: u64, g1: u64| {
            json!({
                "kvm.stage2": { "pages_4k": k4, "pages_2m": m2, "pages_1g": g1 },
                "pmem0": { "flush_requests": 0 },
            })
        };
        let snaps: Vec<(String, Pages)> = [
            ("start", doc(100, 20, 0)),
            ("guest-devdax", doc(100 + 16384, 20 + 128, 0)),
            ("guest-fsdax", doc(100 + 16384 + 65536, 148, 0)),
        ]
        .into_iter()
        .map(|(c, d)| (c.to_string(), Pages::from_counters(&d).unwrap()))
        .collect();
        let lines = gained("bandwidth", 1, &snaps).join("\n");
        let p = crate::lines::parse(&lines);
        let get = |case: &str, m: &str| {
            p.samples
                .iter()
                .find(|s| s.tag.case == case && s.metric == m)
                .map(|s| s.value)
        };
        assert_eq!(get("guest-devdax", "stage2_2m_kib"), Some(256.0 * 1024.0));
        assert_eq!(get("guest-devdax", "stage2_4k_kib"), Some(64.0 * 1024.0));
        assert_eq!(get("guest-devdax", "stage2_huge_pct"), Some(80.0));
        assert_eq!(get("guest-fsdax", "stage2_huge_pct"), Some(0.0));
        assert_eq!(
            get("guest-fsdax", "stage2_mapped_kib"),
            Some(256.0 * 1024.0)
        );
        assert_eq!(get("start", "stage2_4k_kib"), None);
        // No counts (a KVM without statistics): an error naming what is missing.
        let e = Pages::from_counters(&json!({ "pmem0": {} })).unwrap_err();
        assert!(e.contains("kvm.stage2.pages_4k"), "{e}");
    }
}
