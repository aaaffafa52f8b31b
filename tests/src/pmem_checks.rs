//! Helpers for the NVDIMM integration tests (`tests/tests/pmem.rs`): a shell library the guest
//! sources to report what libnvdimm made of our NFIT and to move test patterns through
//! `/dev/pmemN`, the same patterns generated in Rust and in the host's shell, the parsing of
//! the guest's reports, and the documented window placement rule the tests check addresses
//! against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::artifacts::InitramfsSpec;
use crate::error::{Error, IoContext, Result};
use crate::markers::{marker_values, parse_iomem, IomemEntry};

pub use geometry::{GIB, MIB};

/// pmem windows start on 128 MiB boundaries, one x86-64 memory section, so no two devices (and
/// no device and RAM) share a section.
pub use geometry::MEMORY_SECTION_SIZE as SECTION;
/// Guest RAM stops at 3 GiB below 4 GiB and continues at 4 GiB (the monitor's geometry).
pub use geometry::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Where the guest library lives in the guest initramfs.
pub const GUEST_LIB: &str = "/pmem-lib.sh";

/// The pattern generator, as a shell function: `pat TAG BYTES` prints `TAG:1\nTAG:2\n...` cut
/// to BYTES bytes. Every line differs, so a shifted or truncated copy does not compare equal.
/// Busybox only (`seq`, `sed`, `head`); the same text runs in the guest and on the host.
pub const PATTERN_SH: &str =
    r#"pat() { seq 1 $(( $2 / 4 + 1 )) | sed "s/^/$1:/" | head -c "$2"; }"#;

/// [`PATTERN_SH`] in Rust: the bytes `pat TAG LEN` prints.
pub fn pattern(tag: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 1u64;
    while out.len() < len {
        out.extend_from_slice(format!("{tag}:{i}\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Bytes of the patterns the round-trip tests move (host's at offset 0, guest's at
/// [`GUEST_OFFSET`]).
pub const PATTERN_LEN: u64 = 256 * 1024;
/// Where the guest writes its pattern.
pub const GUEST_OFFSET: u64 = MIB;
/// Bytes of the pattern the guest writes at the very end of the device (proves the whole size
/// is backed, not just its start).
pub const END_LEN: u64 = 64 * 1024;

/// The library the guest sources (`. /pmem-lib.sh`). Everything it reports is a marker line
/// (`@@PMEM-... @@`), parsed by [`GuestFacts::parse`].
pub fn guest_lib() -> String {
    format!(
        r#"# pmem-lib.sh: sourced by the pmem integration tests' guest commands.
{PATTERN_SH}
# check NAME COMMAND...: run it; @@PMEM-CHECK NAME ok@@ or @@PMEM-CHECK NAME fail RC@@
check() {{
    name=$1; shift
    if "$@"; then echo "@@PMEM-CHECK $name ok@@"; else echo "@@PMEM-CHECK $name fail $?@@"; fi
}}
# readat DEV OFFSET BYTES FILE, writeat DEV FILE OFFSET (4 KiB multiples). Writes stay in the
# guest's page cache until `sync DEV` (fsync: the pages reach pmem, then REQ_PREFLUSH makes the
# pmem driver write the NFIT flush hint)
readat() {{ dd if="$1" of="$4" bs=4096 skip=$(( $2 / 4096 )) count=$(( $3 / 4096 )) 2>/dev/null; }}
writeat() {{ dd if="$2" of="$1" bs=4096 seek=$(( $3 / 4096 )) conv=notrunc 2>/dev/null; }}
devbytes() {{ echo $(( $(cat /sys/block/${{1#/dev/}}/size) * 512 )); }}
# mark NAME: @@PMEM-MARK NAME@@, for a host waiting on the console (the marker itself never
# appears on the kernel command line)
mark() {{ echo "@@PMEM-MARK $1@@"; }}
# report: what libnvdimm made of the NFIT, as markers, plus /proc/iomem
report() {{
    for r in /sys/bus/nd/devices/region*; do
        [ -e "$r" ] || continue
        echo "@@PMEM-REGION ${{r##*/}} resource=$(cat $r/resource) size=$(cat $r/size) \
target_node=$(cat $r/target_node 2>/dev/null) numa_node=$(cat $r/numa_node) \
read_only=$(cat $r/read_only)@@"
    done
    for n in /sys/bus/nd/devices/namespace*; do
        [ -e "$n" ] || continue
        blk=$(ls "$n/block" 2>/dev/null | head -n 1)
        echo "@@PMEM-NS ${{n##*/}} mode=$(cat $n/mode) size=$(cat $n/size) block=${{blk:-none}}@@"
    done
    for b in /sys/block/pmem*; do
        [ -e "$b" ] || continue
        echo "@@PMEM-BLOCK ${{b##*/}} bytes=$(( $(cat $b/size) * 512 )) ro=$(cat $b/ro) \
fua=$(cat $b/queue/fua) write_cache=$(tr ' ' _ < $b/queue/write_cache)@@"
    done
    echo "@@PMEM-IOMEM-BEGIN@@"
    cat /proc/iomem
    echo "@@PMEM-IOMEM-END@@"
}}
# ndctl_list: `ndctl list -RND` between markers
ndctl_list() {{
    echo "@@PMEM-NDCTL-BEGIN@@"
    ndctl list -RND
    rc=$?
    echo "@@PMEM-NDCTL-END $rc@@"
}}
# roundtrip_write DEV: the host's pattern must be at offset 0; writes the guest's pattern at
# {GUEST_OFFSET} and a shorter one in the last {END_LEN} bytes (not yet flushed)
roundtrip_write() {{
    end=$(( $(devbytes $1) - {END_LEN} ))
    pat host {PATTERN_LEN} > /tmp/want-host
    readat $1 0 {PATTERN_LEN} /tmp/got-host
    check host-pattern cmp /tmp/want-host /tmp/got-host
    pat guest {PATTERN_LEN} > /tmp/guest
    pat guest-end {END_LEN} > /tmp/guest-end
    check guest-write writeat $1 /tmp/guest {GUEST_OFFSET}
    check guest-end-write writeat $1 /tmp/guest-end $end
}}
# roundtrip DEV: roundtrip_write, then fsync the device
roundtrip() {{
    roundtrip_write $1
    check guest-sync sync $1
}}
"#
    )
}

/// Host-side (L1 or direct) shell for the round trip: `host_pattern FILE` writes the host's
/// pattern at offset 0 of a file; `verify_guest NAME FILE BYTES` checks the guest's patterns in a
/// backing of BYTES bytes and prints `@@PMEM-HOSTCHECK NAME ok|fail@@`.
pub fn host_lib() -> String {
    format!(
        r#"{PATTERN_SH}
host_pattern() {{ pat host {PATTERN_LEN} | dd of="$1" conv=notrunc 2>/dev/null; }}
verify_guest() {{
    pat guest {PATTERN_LEN} > /tmp/pmem-want-guest
    pat guest-end {END_LEN} > /tmp/pmem-want-end
    dd if="$2" of=/tmp/pmem-got-guest bs=4096 skip=$(( {GUEST_OFFSET} / 4096 )) \
        count=$(( {PATTERN_LEN} / 4096 )) 2>/dev/null
    dd if="$2" of=/tmp/pmem-got-end bs=4096 skip=$(( ($3 - {END_LEN}) / 4096 )) \
        count=$(( {END_LEN} / 4096 )) 2>/dev/null
    if cmp /tmp/pmem-want-guest /tmp/pmem-got-guest &&
        cmp /tmp/pmem-want-end /tmp/pmem-got-end; then
        echo "@@PMEM-HOSTCHECK $1 ok@@"
    else
        echo "@@PMEM-HOSTCHECK $1 fail@@"
    fi
}}
"#
    )
}

/// The guest initramfs of the pmem tests: Debian's ndctl (with its libraries) and [`guest_lib`]
/// at [`GUEST_LIB`]. Fails, with what to install, when ndctl is missing.
pub fn guest_initramfs() -> Result<InitramfsSpec> {
    let ndctl = Path::new("/usr/bin/ndctl");
    if !ndctl.is_file() {
        return Err(Error::setup(
            "the pmem tests put ndctl into the guest and need /usr/bin/ndctl on this machine \
             (apt-get install ndctl)",
        ));
    }
    let lib = write_guest_lib()?;
    Ok(InitramfsSpec::default()
        .with_bin(ndctl.display().to_string())
        .with_file(lib, GUEST_LIB))
}

/// Writes [`guest_lib`] under the cache directory (atomically: concurrent test processes write
/// the same bytes) and returns its path.
fn write_guest_lib() -> Result<PathBuf> {
    let dir = crate::config::cache_dir().join("pmem-tests");
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let path = dir.join("pmem-lib.sh");
    let text = guest_lib();
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(path);
    }
    let tmp = dir.join(format!("pmem-lib.sh.{}", std::process::id()));
    std::fs::write(&tmp, &text).ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).ctx(|| format!("renaming {}", tmp.display()))?;
    Ok(path)
}

/// One `@@NAME key=value ...@@` report: the first word and the `key=value` pairs after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub fields: BTreeMap<String, String>,
}

impl Record {
    pub fn parse(value: &str) -> Record {
        let mut words = value.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Record { name, fields }
    }

    /// A field as text ("" when absent).
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }

    /// A field as a number, decimal or `0x` hex.
    pub fn num(&self, key: &str) -> Option<u64> {
        parse_num(self.get(key))
    }
}

/// Decimal or `0x`-prefixed hex.
pub fn parse_num(text: &str) -> Option<u64> {
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// Everything the guest library reported.
#[derive(Debug, Clone, Default)]
pub struct GuestFacts {
    /// `regionN`: resource, size, target_node, numa_node, read_only.
    pub regions: Vec<Record>,
    /// `namespaceN.M`: mode, size, block.
    pub namespaces: Vec<Record>,
    /// `pmemN`: bytes, ro, fua, write_cache (spaces as `_`).
    pub blocks: Vec<Record>,
    /// `/proc/iomem` as printed by `report`.
    pub iomem: Vec<IomemEntry>,
    /// `check` results: name -> "ok" or "fail RC" (the last one of each name).
    pub checks: BTreeMap<String, String>,
    /// `ndctl list -RND`: its exit status and output.
    pub ndctl: Option<(i32, String)>,
}

/// The text between `@@BEGIN@@` and `@@END ...@@` and the END marker's value.
fn section<'a>(text: &'a str, begin: &str, end: &str) -> Option<(&'a str, &'a str)> {
    let open = format!("@@{begin}@@");
    let start = text.find(&open)? + open.len();
    let rest = &text[start..];
    let close = format!("@@{end}");
    let stop = rest.find(&close)?;
    let value = rest[stop + close.len()..]
        .split("@@")
        .next()
        .unwrap_or("")
        .trim();
    Some((&rest[..stop], value))
}

impl GuestFacts {
    pub fn parse(console: &str) -> GuestFacts {
        let records = |name: &str| -> Vec<Record> {
            marker_values(console, name)
                .into_iter()
                .map(Record::parse)
                .collect()
        };
        let checks = marker_values(console, "PMEM-CHECK")
            .into_iter()
            .filter_map(|v| v.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let iomem = section(console, "PMEM-IOMEM-BEGIN", "PMEM-IOMEM-END")
            .map(|(text, _)| parse_iomem(text))
            .unwrap_or_default();
        let ndctl = section(console, "PMEM-NDCTL-BEGIN", "PMEM-NDCTL-END")
            .map(|(text, rc)| (rc.parse().unwrap_or(-1), text.to_string()));
        GuestFacts {
            regions: records("PMEM-REGION"),
            namespaces: records("PMEM-NS"),
            blocks: records("PMEM-BLOCK"),
            iomem,
            checks,
            ndctl,
        }
    }

    /// The region whose `resource` (guest physical start) is `base`.
    pub fn region_at(&self, base: u64) -> Option<&Record> {
        self.regions
            .iter()
            .find(|r| r.num("resource") == Some(base))
    }

    /// The namespaces of region `regionN` (`namespaceN.*`).
    pub fn namespaces_of(&self, region: &str) -> Vec<&Record> {
        let n = region.trim_start_matches("region");
        let prefix = format!("namespace{n}.");
        self.namespaces
            .iter()
            .filter(|ns| ns.name.starts_with(&prefix))
            .collect()
    }

    /// The block device `pmemN`.
    pub fn block(&self, name: &str) -> Option<&Record> {
        self.blocks.iter().find(|b| b.name == name)
    }

    /// `/proc/iomem` entries named `Persistent Memory` (any nesting depth).
    pub fn persistent_memory(&self) -> Vec<&IomemEntry> {
        self.iomem
            .iter()
            .filter(|e| e.name.eq_ignore_ascii_case("Persistent Memory"))
            .collect()
    }

    /// Names of failed or missing checks among `names`.
    pub fn failed_checks(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|n| self.checks.get(**n).map(String::as_str) != Some("ok"))
            .map(|n| format!("{n}: {}", self.checks.get(*n).map_or("missing", |v| v)))
            .collect()
    }
}

/// The documented placement rule (vmm/src/layout.rs `place_pmem`): guest RAM fills 0..3 GiB and
/// continues at 4 GiB; windows are stacked upwards from the end of RAM or 4 GiB, whichever is
/// higher, in command-line order, each starting on the next 128 MiB boundary. Returns the bases.
pub fn expected_bases(memory: u64, sizes: &[u64]) -> Vec<u64> {
    let ram_end = if memory <= MMIO_HOLE_START {
        memory
    } else {
        MMIO_HOLE_END + (memory - MMIO_HOLE_START)
    };
    let mut next = ram_end.max(MMIO_HOLE_END);
    sizes
        .iter()
        .map(|&size| {
            let base = next.div_ceil(SECTION) * SECTION;
            next = base + size;
            base
        })
        .collect()
}

/// Pairs of windows `(base, size)` that touch a common 128 MiB section.
pub fn shared_sections(windows: &[(u64, u64)]) -> Vec<((u64, u64), (u64, u64))> {
    let sections = |(base, size): (u64, u64)| (base / SECTION, (base + size - 1) / SECTION);
    let mut out = Vec::new();
    for (i, &a) in windows.iter().enumerate() {
        for &b in &windows[i + 1..] {
            let (a0, a1) = sections(a);
            let (b0, b1) = sections(b);
            if a0 <= b1 && b0 <= a1 {
                out.push((a, b));
            }
        }
    }
    out
}

/// The DIMM `id` Linux shows for our NFIT's DIMM `index` (`vendor-serial`, both read
/// big-endian from the control region: vendor 0x8086, serial number index + 1).
pub fn dimm_id(index: usize) -> String {
    format!(
        "{:04x}-{:08x}",
        0x8086u16.swap_bytes(),
        (index as u32 + 1).swap_bytes()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_shell_function() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{PATTERN_SH}\npat host 5000"))
            .output()
            .unwrap();
        assert_eq!(out.stdout, pattern("host", 5000));
        assert_eq!(&pattern("g", 9), b"g:1\ng:2\ng");
    }

    /// Both shell libraries parse (`sh -n`), so a quoting slip fails here, not in a guest.
    #[test]
    fn shell_libraries_parse() {
        for (name, text) in [("guest", guest_lib()), ("host", host_lib())] {
            crate::shell::assert_sh_parses(name, &text);
        }
    }

    #[test]
    fn layout_rule() {
        assert_eq!(
            expected_bases(256 * MIB, &[130 * MIB, GIB, 4 * GIB]),
            vec![4 * GIB, 4 * GIB + 256 * MIB, 5 * GIB + 256 * MIB]
        );
        assert_eq!(expected_bases(3 * GIB, &[2 * MIB]), vec![4 * GIB]);
        assert_eq!(
            expected_bases(3584 * MIB, &[2 * MIB]),
            vec![4 * GIB + 512 * MIB]
        );
        assert_eq!(
            expected_bases(4 * GIB + 4096, &[2 * MIB]),
            vec![5 * GIB + 128 * MIB]
        );
        let w = [(4 * GIB, 130 * MIB), (4 * GIB + 128 * MIB, MIB)];
        assert_eq!(shared_sections(&w).len(), 1);
        let w = [(4 * GIB, 128 * MIB), (4 * GIB + 128 * MIB, MIB)];
        assert!(shared_sections(&w).is_empty());
    }

    #[test]
    fn facts_from_a_console() {
        let console = "noise\n@@PMEM-REGION region0 resource=0x100000000 size=136314880 \
            target_node=0 numa_node=0 read_only=0@@\n\
            @@PMEM-NS namespace0.0 mode=raw size=136314880 block=pmem0@@\n\
            @@PMEM-BLOCK pmem0 bytes=136314880 ro=0 fua=1 write_cache=write_back@@\n\
            @@PMEM-CHECK host-pattern ok@@\n@@PMEM-CHECK guest-write fail 1@@\n\
            @@PMEM-IOMEM-BEGIN@@\n00100000-0fffffff : System RAM\n\
            100000000-1081fffff : Persistent Memory\n  100000000-1081fffff : namespace0.0\n\
            @@PMEM-IOMEM-END@@\n@@PMEM-NDCTL-BEGIN@@\n{\"regions\":[]}\n@@PMEM-NDCTL-END 0@@\n";
        let f = GuestFacts::parse(console);
        let r = f.region_at(4 * GIB).unwrap();
        assert_eq!(r.num("size"), Some(130 * MIB));
        assert_eq!(f.namespaces_of("region0")[0].get("mode"), "raw");
        assert_eq!(f.block("pmem0").unwrap().get("write_cache"), "write_back");
        assert_eq!(
            f.failed_checks(&["host-pattern", "guest-write", "x"]),
            vec!["guest-write: fail 1", "x: missing"]
        );
        let pm = f.persistent_memory();
        assert_eq!((pm.len(), pm[0].start), (1, 4 * GIB));
        assert_eq!(f.ndctl, Some((0, "\n{\"regions\":[]}\n".to_string())));
    }

    #[test]
    fn dimm_ids() {
        assert_eq!(dimm_id(0), "8680-01000000");
        assert_eq!(dimm_id(2), "8680-03000000");
    }
}
