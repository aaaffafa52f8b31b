//! A monitor's resident memory without guest RAM and pmem, from `/proc/PID/smaps`.
//!
//! Rules (the same for every monitor): a mapping is *guest memory* and left out when
//!
//! * its pathname starts with one of the pmem backing paths (file or device mappings of the
//!   pmem devices), or is a `/dev/dax*` node; or
//! * it is at least as large as the guest RAM (`ram_bytes`): guest RAM is one anonymous (or
//!   memfd) mapping per RAM region, and nothing else a monitor maps comes near 256 MiB (glibc's
//!   malloc arenas reserve 64 MiB).
//!
//! Everything else (text, data, heap, stacks, arenas, firmware ROMs a monitor keeps outside
//! guest RAM, the page-table-free bookkeeping) is the monitor's own.

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Length in bytes.
    pub size: u64,
    /// Pathname (empty for anonymous memory; `[heap]`, `[stack]`, ...).
    pub path: String,
    /// Resident KiB.
    pub rss_kib: u64,
    /// Proportional set size in KiB: resident pages divided by the number of processes
    /// mapping each.
    pub pss_kib: u64,
}

/// Parses smaps text.
pub fn parse(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // start-end perms offset dev inode [pathname]
                let path = words.skip(4).collect::<Vec<_>>().join(" ");
                out.push(Mapping {
                    size: b.saturating_sub(a),
                    path,
                    rss_kib: 0,
                    pss_kib: 0,
                });
                continue;
            }
        }
        if first == "Rss:" || first == "Pss:" {
            if let (Some(m), Some(kib)) = (out.last_mut(), words.next()) {
                let kib = kib.parse().unwrap_or(0);
                if first == "Rss:" {
                    m.rss_kib = kib;
                } else {
                    m.pss_kib = kib;
                }
            }
        }
    }
    out
}

/// Whether `m` is guest memory under the rules above.
pub fn is_guest_memory(m: &Mapping, ram_bytes: u64, pmem_paths: &[String]) -> bool {
    (ram_bytes > 0 && m.size >= ram_bytes)
        || m.path.starts_with("/dev/dax")
        || pmem_paths
            .iter()
            .any(|p| !p.is_empty() && m.path.starts_with(p.as_str()))
}

/// `(total resident KiB, resident KiB that is not guest memory)`.
pub fn monitor_rss(text: &str, ram_bytes: u64, pmem_paths: &[String]) -> (u64, u64) {
    let maps = parse(text);
    let total = maps.iter().map(|m| m.rss_kib).sum();
    let own = maps
        .iter()
        .filter(|m| !is_guest_memory(m, ram_bytes, pmem_paths))
        .map(|m| m.rss_kib)
        .sum();
    (total, own)
}

/// `(resident KiB, proportional KiB)` of the mappings that are not guest memory.
pub fn monitor_rss_pss(text: &str, ram_bytes: u64, pmem_paths: &[String]) -> (u64, u64) {
    parse(text)
        .iter()
        .filter(|m| !is_guest_memory(m, ram_bytes, pmem_paths))
        .fold((0, 0), |(r, p), m| (r + m.rss_kib, p + m.pss_kib))
}

/// Resident KiB of the guest-RAM mappings (at least `ram_bytes` long, not pmem).
pub fn guest_ram_rss(text: &str, ram_bytes: u64, pmem_paths: &[String]) -> u64 {
    parse(text)
        .iter()
        .filter(|m| is_guest_memory(m, ram_bytes, &[]) && !is_guest_memory(m, 0, pmem_paths))
        .map(|m| m.rss_kib)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r-xp 00000000 00:1f 1234    /testbed/bin/vmm
Size:               2048 kB
Rss:                1500 kB
Pss:                1500 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:              120000 kB
7f0010000000-7f0050000000 rw-s 00000000 00:1f 99   /work/pm0.img
Size:            1048576 kB
Rss:                  64 kB
7f0050000000-7f0050021000 rw-p 00000000 00:00 0    [heap]
Size:                132 kB
Rss:                 100 kB
7f0060000000-7f0060200000 rw-s 00000000 00:05 7    /dev/dax0.0
Rss:                2048 kB
VmFlags: rd wr sh mr mw me ms
";

    #[test]
    fn parses_and_excludes() {
        let maps = parse(SMAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[1].size, 256 << 20);
        assert_eq!(maps[1].path, "");
        assert_eq!(maps[2].path, "/work/pm0.img");
        let (total, own) = monitor_rss(SMAPS, 256 << 20, &["/work/pm".into()]);
        assert_eq!(total, 1500 + 120_000 + 64 + 100 + 2048);
        assert_eq!(own, 1600);
        // Without rules everything counts.
        assert_eq!(monitor_rss(SMAPS, 0, &[]).1, total - 2048);
        assert_eq!(maps[0].pss_kib, 1500);
        assert_eq!(
            monitor_rss_pss(SMAPS, 256 << 20, &["/work/pm".into()]),
            (1600, 1500)
        );
        // The 256 MiB anonymous mapping; the 1 GiB pmem file and /dev/dax are not guest RAM.
        assert_eq!(
            guest_ram_rss(SMAPS, 256 << 20, &["/work/pm".into()]),
            120_000
        );
    }
}
