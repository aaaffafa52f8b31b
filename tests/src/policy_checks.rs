//! Helpers for the memmap policy tests (`tests/tests/memmap_policy.rs`): a guest shell library
//! that reports what the guest made of each namespace (sysfs, `ndctl list -N`) and proves DAX
//! works on it (ext4 `-o dax` with `STATX_ATTR_DAX` and a `MAP_SYNC` mapping on fsdax, an `mmap`
//! of `/dev/daxN.M` on devdax), a tiny static C helper for what busybox cannot do (`mmap`,
//! `statx`; `resources/guest-agent/daxio.c`), a host shell library that finds the guest's patterns in the backings at the
//! offsets `vmm --report` predicted, and the wrapping and parsing of several vmm runs in one
//! host script.
//!
//! Every guest fact is a `@@POL-...@@` marker; the assertions are made in Rust.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::artifacts::InitramfsSpec;
use crate::error::{Error, IoContext, Result};
use crate::guest::GuestOpts;
use crate::markers::{has_marker, marker_values, tail_lines};
use crate::pmem_checks::{Record, PATTERN_SH};
use crate::shell::sh_quote;

/// Where the guest library lives in the guest initramfs.
pub const POLICY_LIB: &str = "/policy-lib.sh";
/// The C helper in the guest.
pub const DAXIO: &str = "/usr/bin/daxio";
/// e2fsprogs' mkfs.ext4 (Debian: `/sbin/mkfs.ext4`, a copy of mke2fs that makes ext4 by its
/// name); busybox has none.
pub const MKFS_EXT4: &str = "/sbin/mkfs.ext4";
/// ndctl, in the guest and (for the cross-tool and bad-input tests) in the nested host.
pub const NDCTL: &str = "/usr/bin/ndctl";

/// The source of the guest helpers `daxio` and `dax-touch` (one multi-call program; the pfn
/// checker tests install the same binary as `dax-touch`).
pub const DAXIO_C: &str = include_str!("../../resources/guest-agent/daxio.c");

/// Bytes of the patterns the guest writes at the start (devdax) and in the last 4 KiB (every
/// mode) of each namespace's data; the host finds them at `data_offset` and
/// `data_offset + capacity - 4096` of the backing.
pub const EDGE_LEN: u64 = 4096;

/// The guest library (`. /policy-lib.sh`). Namespaces are named by their region's guest
/// physical base in decimal (`$((base))`), which the tests match with the report's
/// `guest_base`; pattern tags carry it too (`end-4294967296`).
pub fn policy_lib() -> String {
    format!(
        r#"# policy-lib.sh: sourced by the memmap policy tests' guest commands.
{PATTERN_SH}
ND=/sys/bus/nd/devices
# check NAME COMMAND...: run it; @@POL-CHECK NAME ok@@ or @@POL-CHECK NAME fail RC@@
check() {{
    name=$1; shift
    if "$@"; then echo "@@POL-CHECK $name ok@@"; else echo "@@POL-CHECK $name fail $?@@"; fi
}}
# ready: namespaces that are fully up: a pmem disk each (raw and fsdax; fsdax adds its disk
# after the memmap is built), or a dax device bound to its driver (device_dax builds the memmap
# in its probe, after /dev/daxN.M exists)
ready() {{
    n=0
    for b in /sys/block/pmem*; do [ -e "$b" ] && n=$((n + 1)); done
    for d in /sys/bus/dax/devices/*; do [ -e "$d/driver" ] && n=$((n + 1)); done
    echo $n
}}
# settle N: wait (up to 300 s) until N namespaces are up; libnvdimm probes asynchronously
settle() {{
    i=0
    while [ "$(ready)" -lt "$1" ]; do
        i=$((i + 1))
        if [ $i -gt 3000 ]; then echo "@@POL-SETTLE timeout ready=$(ready) want=$1@@"; return 1; fi
        sleep 0.1
    done
    echo "@@POL-SETTLE ok ready=$(ready) waited_ds=$i@@"
}}
# nsinfo NS: sets name region base mode size holder map hsize hres halign blk bytes cdev cbytes
# calign for namespace NS (holder: the pfn or dax device claiming it; map: its memmap location)
nsinfo() {{
    n=$ND/$1
    name=$1
    region=$(basename "$(readlink -f "$n/..")")
    base=$(( $(cat "$ND/$region/resource") ))
    mode=$(cat "$n/mode")
    size=$(cat "$n/size")
    holder=$(cat "$n/holder" 2>/dev/null)
    map=none hsize=0 hres=0 halign=0 blk=none bytes=0 cdev=none cbytes=0 calign=0
    dir=$n
    if [ -n "$holder" ]; then
        dir=$ND/$holder
        map=$(cat "$dir/mode"); hsize=$(cat "$dir/size"); hres=$(( $(cat "$dir/resource") ))
        halign=$(cat "$dir/align")
        for d in /sys/bus/dax/devices/*; do
            [ -e "$d" ] || continue
            case "$(readlink -f "$d")" in
                */$holder/*) cdev=${{d##*/}}; cbytes=$(cat "$d/size"); calign=$(cat "$d/align") ;;
            esac
        done
    fi
    for b in "$dir"/block/*; do
        [ -e "$b/size" ] && {{ blk=${{b##*/}}; bytes=$(( $(cat "$b/size") * 512 )); }}
    done
}}
# namespaces: the names of all namespaces
namespaces() {{ for n in $ND/namespace*; do [ -e "$n/mode" ] && echo "${{n##*/}}"; done; }}
# nsfacts: one @@POL-NS@@ line per namespace
nsfacts() {{
    for ns in $(namespaces); do
        nsinfo $ns
        echo "@@POL-NS $name region=$region base=$base mode=$mode size=$size \
holder=${{holder:-none}} map=$map hsize=$hsize hres=$hres halign=$halign block=$blk \
bytes=$bytes chardev=$cdev cbytes=$cbytes calign=$calign@@"
    done
}}
# ndctl_list: `ndctl list -N` between markers
ndctl_list() {{
    echo "@@POL-NDCTL-BEGIN@@"
    ndctl list -N
    rc=$?
    echo "@@POL-NDCTL-END $rc@@"
}}
# blkend BLK TAG: pattern TAG in the last {EDGE_LEN} bytes of /dev/BLK, fsync'ed
blkend() {{
    pat $2 {EDGE_LEN} > /tmp/$2
    last=$(( $(cat /sys/block/$1/size) * 512 / {EDGE_LEN} - 1 ))
    dd if=/tmp/$2 of=/dev/$1 bs={EDGE_LEN} seek=$last conv=fsync 2>/dev/null
}}
# fsdax_check BLK B: ext4 on all but the last MiB of /dev/BLK, mounted -o dax: mount options,
# a file written and read back, its STATX_ATTR_DAX, a MAP_SYNC mapping; unmounted again
fsdax_check() {{
    dev=/dev/$1; mnt=/mnt/$1
    blocks=$(( ($(cat /sys/block/$1/size) * 512 - 1048576) / 4096 ))
    check $2-mkfs mkfs.ext4 -q -F -b 4096 $dev $blocks || return 1
    mkdir -p $mnt
    check $2-mount mount -t ext4 -o dax $dev $mnt || return 1
    echo "@@POL-MOUNT $2 $(grep " $mnt " /proc/mounts | cut -d' ' -f4)@@"
    pat file-$2 100000 > /tmp/file-$2
    check $2-write cp /tmp/file-$2 $mnt/data
    check $2-sync sync
    echo "@@POL-STATX $2 $(daxio statx $mnt/data)@@"
    pat mapsync-$2 8192 > /tmp/ms-$2
    pat other-$2 8192 > $mnt/ms
    check $2-mapsync daxio put $mnt/ms 8192 0 /tmp/ms-$2 sync
    check $2-mapsync-read cmp /tmp/ms-$2 $mnt/ms
    echo 3 > /proc/sys/vm/drop_caches
    check $2-readback cmp /tmp/file-$2 $mnt/data
    check $2-umount umount $mnt
}}
# devdax_check CDEV BYTES B: the start and end patterns through an mmap of /dev/CDEV
devdax_check() {{
    pat start-$3 {EDGE_LEN} > /tmp/start-$3
    pat end-$3 {EDGE_LEN} > /tmp/end-$3
    check $3-mmap-start daxio put /dev/$1 $2 0 /tmp/start-$3
    check $3-mmap-end daxio put /dev/$1 $2 $(( $2 - {EDGE_LEN} )) /tmp/end-$3
}}
# daxcheck_all: for every namespace, by what the guest made of it: fsdax_check and the end
# pattern (fsdax), devdax_check (devdax), the end pattern (raw)
daxcheck_all() {{
    for ns in $(namespaces); do
        nsinfo $ns
        case "$holder" in
            pfn*) fsdax_check $blk $base; check $base-end blkend $blk end-$base ;;
            dax*) devdax_check $cdev $cbytes $base ;;
            *) check $base-end blkend $blk end-$base ;;
        esac
    done
}}
# persist_write / persist_check: a file in the ext4 -o dax file system of each fsdax namespace
# (made here), a pattern 2 MiB into each devdax namespace; then, in a later boot, both read back
persist_write() {{
    for ns in $(namespaces); do
        nsinfo $ns
        case "$holder" in
            pfn*)
                mkdir -p /mnt/$blk
                check $base-mkfs mkfs.ext4 -q -F -b 4096 /dev/$blk
                check $base-mount mount -t ext4 -o dax /dev/$blk /mnt/$blk
                pat persist-$base 300000 > /mnt/$blk/persist
                check $base-sync sync
                echo "@@POL-STATX $base $(daxio statx /mnt/$blk/persist)@@"
                check $base-umount umount /mnt/$blk ;;
            dax*)
                pat persist-$base 65536 > /tmp/persist-$base
                check $base-mmap-persist daxio put /dev/$cdev $cbytes 2097152 /tmp/persist-$base ;;
        esac
    done
}}
persist_check() {{
    for ns in $(namespaces); do
        nsinfo $ns
        case "$holder" in
            pfn*)
                mkdir -p /mnt/$blk
                check $base-mount mount -t ext4 -o dax /dev/$blk /mnt/$blk
                echo "@@POL-MOUNT $base $(grep " /mnt/$blk " /proc/mounts | cut -d' ' -f4)@@"
                pat persist-$base 300000 > /tmp/persist-$base
                check $base-persisted cmp /tmp/persist-$base /mnt/$blk/persist
                echo "@@POL-STATX $base $(daxio statx /mnt/$blk/persist)@@"
                check $base-umount umount /mnt/$blk ;;
            dax*)
                pat persist-$base 65536 > /tmp/persist-$base
                daxio get /dev/$cdev $cbytes 2097152 65536 /tmp/got-$base
                check $base-persisted cmp /tmp/persist-$base /tmp/got-$base ;;
        esac
    done
}}
# meminfo KEY: the value in kB
meminfo() {{ sed -n "s/^$1: *\([0-9]*\) kB/\1/p" /proc/meminfo; }}
# memfree_stable: MemFree once two readings 0.5 s apart (after dropping caches) differ by less
# than 256 kB (at most 20 tries)
memfree_stable() {{
    prev=0; i=0
    while [ $i -lt 20 ]; do
        sync; echo 3 > /proc/sys/vm/drop_caches
        now=$(meminfo MemFree)
        d=$(( now - prev )); [ $d -lt 0 ] && d=$(( -d ))
        [ $d -lt 256 ] && break
        prev=$now; i=$((i + 1)); sleep 0.5
    done
    echo $now
}}
# memcost: unbinds every namespace (the device carrying it: holder or the namespace) from its
# driver, which frees its memmap; then binds them back one at a time, and reports MemFree and
# MemTotal before and after each bind
memcost() {{
    list=""
    for ns in $(namespaces); do
        nsinfo $ns
        dev=${{holder:-$ns}}
        drv=$(readlink -f $ND/$dev/driver)
        list="$list $dev:$drv:$base"
        echo $dev > $drv/unbind || echo "@@POL-MEMCOST-FAIL unbind $dev@@"
    done
    echo "@@POL-MEMCOST-UNBOUND ready=$(ready)@@"
    for item in $list; do
        dev=${{item%%:*}}; rest=${{item#*:}}; drv=${{rest%:*}}; base=${{rest##*:}}
        free0=$(memfree_stable); total0=$(meminfo MemTotal)
        want=$(( $(ready) + 1 ))
        echo $dev > $drv/bind || echo "@@POL-MEMCOST-FAIL bind $dev@@"
        settle $want >/dev/null || echo "@@POL-MEMCOST-FAIL settle $dev@@"
        free1=$(memfree_stable); total1=$(meminfo MemTotal)
        echo "@@POL-MEMCOST $base dev=$dev free_before=$free0 free_after=$free1 \
total_before=$total0 total_after=$total1@@"
    done
}}
"#
    )
}

/// The host-side shell (L1, or this machine in direct mode): `devs REPORT` lists the devices
/// of a `vmm --report` file as `path guest_base data_offset capacity mode` lines (serde_json's
/// pretty printing puts one key per line, objects at 4 spaces); `hostcheck_all REPORT` finds
/// the guest's edge patterns in each backing at the offsets the report predicted and prints
/// `@@POL-HOSTCHECK path base=... data_offset=... capacity=... end=ok|bad start=ok|bad|-@@`;
/// `sig PATH` prints what must not change about a backing (its md5, or `absent`).
pub fn host_lib() -> String {
    format!(
        r#"{PATTERN_SH}
devs() {{
    awk -F': ' '
        function v(s) {{ gsub(/[",[:space:]]/, "", s); return s }}
        /"capacity":/ {{ c = v($2) }}
        /"data_offset":/ {{ d = v($2) }}
        /"guest_base":/ {{ g = v($2) }}
        /"mode":/ {{ m = v($2) }}
        /"path":/ {{ p = v($2) }}
        /^    }}/ {{ print p, g, d, c, m; p = g = d = c = m = "" }}' "$1"
}}
hostcheck_all() {{
    devs "$1" | while read -r path base off cap mode; do
        pat end-$base {EDGE_LEN} > /tmp/hc-want
        last=$(( (off + cap) / {EDGE_LEN} - 1 ))
        dd if="$path" of=/tmp/hc-got bs={EDGE_LEN} skip=$last count=1 2>/dev/null
        end=bad; cmp -s /tmp/hc-want /tmp/hc-got && end=ok
        start=-
        if [ "$mode" = devdax ]; then
            pat start-$base {EDGE_LEN} > /tmp/hc-want
            dd if="$path" of=/tmp/hc-got bs={EDGE_LEN} skip=$(( off / {EDGE_LEN} )) count=1 \
                2>/dev/null
            start=bad; cmp -s /tmp/hc-want /tmp/hc-got && start=ok
        fi
        echo "@@POL-HOSTCHECK $path base=$base data_offset=$off capacity=$cap end=$end \
start=$start@@"
    done
}}
sig() {{ if [ -e "$1" ]; then md5sum < "$1" | cut -d' ' -f1; else echo absent; fi; }}
"#
    )
}

/// The shell text of one labelled vmm run inside a host script: the guest console (and the
/// vmm's log) between `@@RUN-BEGIN label@@` and `@@RUN-END label rc@@`, then the `--report`
/// file (written to `label.json` in `$WORK`) between `@@REPORT-BEGIN/END label@@`. The guest
/// runs `command` after sourcing the policy library; `args` are further vmm words (`--pmem`
/// ...), quoted here.
pub fn vmm_run(label: &str, memory: &str, command: &str, args: &[String]) -> Result<String> {
    vmm_run_of(GuestImages::OURS, label, memory, command, args)
}

/// Which kernel and initramfs a [`vmm_run_of`] boots: the host script's variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestImages {
    pub kernel: &'static str,
    pub initramfs: &'static str,
}

impl GuestImages {
    /// Our guest kernel and initramfs.
    pub const OURS: GuestImages = GuestImages {
        kernel: "$KERNEL",
        initramfs: "$INITRAMFS",
    };
    /// The stock distribution kernel and its initramfs with the NVDIMM modules (the host needs
    /// `HostOpts::stock_kernel` set).
    pub const STOCK: GuestImages = GuestImages {
        kernel: "$STOCK_KERNEL",
        initramfs: "$STOCK_INITRAMFS",
    };
}

/// [`vmm_run`] of the kernel and initramfs `images` names.
pub fn vmm_run_of(
    images: GuestImages,
    label: &str,
    memory: &str,
    command: &str,
    args: &[String],
) -> Result<String> {
    let cmdline = GuestOpts::default()
        .with_command(format!(". {POLICY_LIB}; {command}"))
        .guest_cmdline()?;
    let words: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
    Ok(format!(
        r#"echo "@@RUN-BEGIN {label}@@"
rm -f {label}.json
"$VMM" --kernel "{kernel}" --initramfs "{initramfs}" --cpus 1 --memory {memory} --serial stdio \
    --cmdline {cmdline} --report {label}.json {args} </dev/null
rc=$?
echo "@@RUN-END {label} $rc@@"
echo "@@REPORT-BEGIN {label}@@"
cat {label}.json 2>/dev/null
echo "@@REPORT-END {label}@@"
"#,
        cmdline = sh_quote(&cmdline),
        args = words.join(" "),
        kernel = images.kernel,
        initramfs = images.initramfs,
    ))
}

/// One labelled vmm run, parsed from the host output.
#[derive(Debug, Clone, Default)]
pub struct VmmRun {
    pub label: String,
    /// The vmm's exit status; `None` when the run never ended (the host died or timed out).
    pub rc: Option<i32>,
    /// Everything between the begin and end markers: the vmm's log and the guest console.
    pub console: String,
    /// The `--report` JSON text (empty when the vmm wrote none).
    pub report: String,
}

impl VmmRun {
    /// Finds run `label` in a host's output.
    pub fn parse(output: &str, label: &str) -> Option<VmmRun> {
        let begin = format!("@@RUN-BEGIN {label}@@");
        let start = output.find(&begin)? + begin.len();
        let rest = &output[start..];
        let end_marker = format!("@@RUN-END {label} ");
        let (console, rc) = match rest.find(&end_marker) {
            Some(stop) => {
                let rc = rest[stop + end_marker.len()..]
                    .split("@@")
                    .next()
                    .and_then(|v| v.trim().parse().ok());
                (&rest[..stop], rc)
            }
            None => (rest, None),
        };
        let report = section(
            output,
            &format!("REPORT-BEGIN {label}"),
            &format!("REPORT-END {label}"),
        )
        .unwrap_or("")
        .trim()
        .to_string();
        Some(VmmRun {
            label: label.to_string(),
            rc,
            console: console.to_string(),
            report,
        })
    }

    /// Whether the guest init ran, and the guest command's exit status.
    pub fn guest_exit(&self) -> (bool, Option<i32>) {
        (
            has_marker(&self.console, crate::guest::GUEST_INIT),
            crate::markers::last_marker(&self.console, crate::guest::GUEST_EXIT),
        )
    }

    /// The last `n` lines of this run's console, for messages.
    pub fn tail(&self, n: usize) -> String {
        tail_lines(&self.console, n)
    }

    /// The guest's reports.
    pub fn facts(&self) -> PolicyFacts {
        PolicyFacts::parse(&self.console)
    }
}

/// The text between `@@begin@@` and `@@end@@`.
pub fn section<'a>(text: &'a str, begin: &str, end: &str) -> Option<&'a str> {
    let open = format!("@@{begin}@@");
    let start = text.find(&open)? + open.len();
    let close = format!("@@{end}");
    let stop = text[start..].find(&close)?;
    Some(&text[start..start + stop])
}

/// What the guest library reported.
#[derive(Debug, Clone, Default)]
pub struct PolicyFacts {
    /// `@@POL-NS@@` records by region base (decimal guest physical address).
    pub namespaces: BTreeMap<u64, Record>,
    /// `check` results: name -> "ok" or "fail RC" (the last of each name).
    pub checks: BTreeMap<String, String>,
    /// `@@POL-MOUNT base options@@`.
    pub mounts: BTreeMap<String, String>,
    /// `@@POL-STATX base dax=N@@`.
    pub statx: BTreeMap<String, String>,
    /// `@@POL-MEMCOST base ...@@` records by base.
    pub memcost: BTreeMap<u64, Record>,
    /// `ndctl list -N`: its exit status and output.
    pub ndctl: Option<(i32, String)>,
    /// `@@POL-SETTLE ...@@` values.
    pub settle: Vec<String>,
}

fn by_first_word(values: Vec<&str>) -> BTreeMap<String, String> {
    values
        .into_iter()
        .filter_map(|v| v.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

impl PolicyFacts {
    pub fn parse(console: &str) -> PolicyFacts {
        let records = |name: &str, key: &str| -> BTreeMap<u64, Record> {
            marker_values(console, name)
                .into_iter()
                .map(Record::parse)
                .filter_map(|r| {
                    let k = if key.is_empty() {
                        r.name.parse().ok()
                    } else {
                        r.num(key)
                    };
                    k.map(|k| (k, r))
                })
                .collect()
        };
        let ndctl = console.find("@@POL-NDCTL-BEGIN@@").and_then(|p| {
            let rest = &console[p + "@@POL-NDCTL-BEGIN@@".len()..];
            let stop = rest.find("@@POL-NDCTL-END ")?;
            let rc = rest[stop + "@@POL-NDCTL-END ".len()..]
                .split("@@")
                .next()?
                .trim()
                .parse()
                .unwrap_or(-1);
            Some((rc, rest[..stop].to_string()))
        });
        PolicyFacts {
            namespaces: records("POL-NS", "base"),
            checks: by_first_word(marker_values(console, "POL-CHECK")),
            mounts: by_first_word(marker_values(console, "POL-MOUNT")),
            statx: by_first_word(marker_values(console, "POL-STATX")),
            memcost: records("POL-MEMCOST", ""),
            ndctl,
            settle: marker_values(console, "POL-SETTLE")
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }

    /// Names of failed or missing checks among `names`.
    pub fn failed_checks(&self, names: &[String]) -> Vec<String> {
        names
            .iter()
            .filter(|n| self.checks.get(*n).map(String::as_str) != Some("ok"))
            .map(|n| format!("{n}: {}", self.checks.get(n).map_or("missing", |v| v)))
            .collect()
    }
}

/// The guest checks `fsdax_check` and the end pattern report for the namespace at `base`.
pub fn fsdax_checks(base: u64) -> Vec<String> {
    [
        "mkfs",
        "mount",
        "write",
        "sync",
        "mapsync",
        "mapsync-read",
        "readback",
        "umount",
        "end",
    ]
    .iter()
    .map(|c| format!("{base}-{c}"))
    .collect()
}

/// `@@POL-HOSTCHECK path ...@@` records by backing path.
pub fn host_checks(output: &str) -> BTreeMap<String, Record> {
    marker_values(output, "POL-HOSTCHECK")
        .into_iter()
        .map(Record::parse)
        .map(|r| (r.name.clone(), r))
        .collect()
}

/// Writes `bytes` to `<cache>/policy-tests/<name>` unless it is already there with these
/// contents (atomically: concurrent test processes write the same bytes); returns the path.
fn cached_file(name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let dir = crate::config::cache_dir().join("policy-tests");
    std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    if std::fs::read(&path).ok().as_deref() == Some(bytes) {
        return Ok(path);
    }
    let tmp = dir.join(format!("{name}.{}", std::process::id()));
    std::fs::write(&tmp, bytes).ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).ctx(|| format!("renaming {}", tmp.display()))?;
    Ok(path)
}

/// A guest script for an initramfs (`InitramfsSpec::with_file`), cached under a name made of
/// `stem` and a hash of `text`, so a changed script is a new initramfs.
pub fn cached_script(stem: &str, text: &str) -> Result<PathBuf> {
    cached_file(
        &format!("{stem}-{}.sh", content_hash(text.as_bytes())),
        text.as_bytes(),
    )
}

/// FNV-1a of `bytes`, as hex: names cache entries by their contents.
fn content_hash(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// Compiles [`DAXIO_C`] statically (`$CC`, default `gcc`; glibc's `libc.a` is Debian's
/// libc6-dev) into the cache, once per content and per process.
pub fn daxio_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_daxio().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::setup)
}

fn build_daxio() -> Result<PathBuf> {
    let hash = content_hash(DAXIO_C.as_bytes());
    let src = cached_file(&format!("daxio-{hash}.c"), DAXIO_C.as_bytes())?;
    let out = src.with_extension("bin");
    if out.is_file() {
        return Ok(out);
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let tmp = out.with_extension(format!("bin.{}", std::process::id()));
    let o = Command::new(&cc)
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|e| {
            Error::setup(format!(
                "the memmap policy tests compile a static guest helper and need a C compiler \
                 ({cc}: {e}); apt-get install gcc libc6-dev"
            ))
        })?;
    if !o.status.success() {
        return Err(Error::setup(format!(
            "{cc} -static {} failed (a static glibc needs Debian's libc6-dev): {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    std::fs::rename(&tmp, &out).ctx(|| format!("renaming {}", tmp.display()))?;
    Ok(out)
}

/// Fails, saying what to install, unless `path` is an executable file.
pub fn require_tool(path: &str, package: &str) -> Result<()> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(Error::setup(format!(
            "the memmap policy tests need {path} on this machine (apt-get install {package}; \
             scripts/install-deps.sh lists it)"
        )))
    }
}

/// The guest initramfs of the policy tests: ndctl and mkfs.ext4 (with their libraries), the
/// static `daxio`, and [`policy_lib`] at [`POLICY_LIB`]. Fails with what to install when a tool
/// is missing.
pub fn guest_initramfs() -> Result<InitramfsSpec> {
    require_tool(NDCTL, "ndctl")?;
    require_tool(MKFS_EXT4, "e2fsprogs")?;
    let lib = cached_file(
        &format!("policy-lib-{}.sh", content_hash(policy_lib().as_bytes())),
        policy_lib().as_bytes(),
    )?;
    Ok(InitramfsSpec::default()
        .with_bin(NDCTL)
        .with_bin(MKFS_EXT4)
        .with_file(daxio_binary()?, DAXIO)
        .with_file(lib, POLICY_LIB))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> std::process::Output {
        Command::new("sh").arg("-c").arg(script).output().unwrap()
    }

    /// Both shell libraries parse (`sh -n`), so a quoting slip fails here, not in a guest.
    #[test]
    fn shell_libraries_parse() {
        for (name, text) in [("guest", policy_lib()), ("host", host_lib())] {
            crate::shell::assert_sh_parses(name, &text);
        }
    }

    /// `devs` reads the report the way the vmm writes it (serde_json pretty printing, keys
    /// sorted), with busybox awk when available, as in L1.
    #[test]
    fn devs_reads_a_pretty_report() {
        let report = r#"{
  "cpus": 1,
  "memory": 536870912,
  "pmem": [
    {
      "align": 2097152,
      "backing": "file",
      "capacity": 262144000,
      "data_offset": 6291456,
      "guest_base": 4294967296,
      "mode": "fsdax",
      "path": "fp.img",
      "size": 268435456
    },
    {
      "align": 0,
      "capacity": 268435456,
      "data_offset": 0,
      "guest_base": 4563402752,
      "mode": "raw",
      "path": "raw.img"
    }
  ]
}
"#;
        let dir = crate::scratch::ScratchDir::new("devs").unwrap();
        let file = dir.path().join("r.json");
        std::fs::write(&file, report).unwrap();
        let want = "fp.img 4294967296 6291456 262144000 fsdax\n\
                    raw.img 4563402752 0 268435456 raw\n";
        let lib = host_lib();
        let plain = sh(&format!("{lib}\ndevs {}", file.display()));
        assert_eq!(String::from_utf8_lossy(&plain.stdout), want);
        if Path::new("/bin/busybox").exists() {
            let bb = sh(&format!(
                "awk() {{ /bin/busybox awk \"$@\"; }}\n{lib}\ndevs {}",
                file.display()
            ));
            assert_eq!(String::from_utf8_lossy(&bb.stdout), want);
        }
    }

    #[test]
    fn runs_and_facts_from_a_console() {
        let out = "x\n@@RUN-BEGIN one@@\nboot\n@@GUEST-INIT@@\n\
            @@POL-NS namespace0.0 region=region0 base=4294967296 mode=memory size=268435456 \
            holder=pfn0.1 map=pmem hsize=262144000 hres=4301258752 halign=2097152 block=pmem0 \
            bytes=262144000 chardev=none cbytes=0 calign=0@@\n\
            @@POL-CHECK 4294967296-mount ok@@\n@@POL-CHECK 4294967296-end fail 1@@\n\
            @@POL-MOUNT 4294967296 rw,relatime,dax=always@@\n@@POL-STATX 4294967296 dax=1@@\n\
            @@POL-NDCTL-BEGIN@@\n{\"dev\":\"namespace0.0\"}\n@@POL-NDCTL-END 0@@\n\
            @@POL-MEMCOST 4294967296 dev=pfn0.1 free_before=1 free_after=2 total_before=3 \
            total_after=3@@\n@@GUEST-EXIT 0@@\n@@RUN-END one 0@@\n@@REPORT-BEGIN one@@\n{}\n\
            @@REPORT-END one@@\n@@RUN-BEGIN two@@\nvmm: bad\n";
        let one = VmmRun::parse(out, "one").unwrap();
        assert_eq!((one.rc, one.report.as_str()), (Some(0), "{}"));
        assert_eq!(one.guest_exit(), (true, Some(0)));
        let f = one.facts();
        let ns = &f.namespaces[&4294967296];
        assert_eq!((ns.get("map"), ns.num("bytes")), ("pmem", Some(262144000)));
        assert_eq!(
            f.failed_checks(&["4294967296-mount".into(), "4294967296-end".into()]),
            vec!["4294967296-end: fail 1"]
        );
        assert_eq!(f.mounts["4294967296"], "rw,relatime,dax=always");
        assert_eq!(f.statx["4294967296"], "dax=1");
        assert_eq!(f.ndctl, Some((0, "\n{\"dev\":\"namespace0.0\"}\n".into())));
        assert_eq!(f.memcost[&4294967296].num("free_after"), Some(2));
        let two = VmmRun::parse(out, "two").unwrap();
        assert_eq!((two.rc, two.console.trim()), (None, "vmm: bad"));
        assert!(VmmRun::parse(out, "three").is_none());
    }

    /// The helper compiles where the tests would build it (needs gcc and libc6-dev, as the
    /// tests themselves do).
    #[test]
    fn daxio_compiles_and_round_trips_a_file() {
        let bin = daxio_binary().unwrap();
        let dir = crate::scratch::ScratchDir::new("daxio").unwrap();
        let d = dir.path().display();
        let out = sh(&format!(
            "cd {d} && head -c 5000 /dev/urandom > src && truncate -s 65536 f && \
             {bin} put f 65536 4096 src && {bin} get f 65536 4096 5000 back && cmp src back && \
             {bin} put f 65536 0 src sync; echo rc=$?",
            bin = bin.display()
        ));
        let text = String::from_utf8_lossy(&out.stdout);
        // The last put asks for MAP_SYNC on a file that is not on a DAX file system.
        assert_eq!(
            text,
            "ok\nrc=1\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
