use super::recorded::{with_faults, with_pages, DATA as NEW_VM_DATA, NEW_VCPU, NEW_VM};
use super::*;

#[test]
fn recorded_file_layout() {
    let h = StatsHeader::parse(NEW_VM).unwrap();
    assert_eq!((h.name_size, h.num_desc), (48, 16));
    assert_eq!(h.data_offset, NEW_VM_DATA as u64);
    let (layout, pages) = StatsLayout::parse_file(NEW_VM, &PAGE_STATS).unwrap();
    assert_eq!(layout.offsets, [72, 80, 88]);
    assert_eq!(layout.data_len, 96);
    let pages = Stage2Pages::from(pages);
    assert_eq!(pages, Stage2Pages::default());
    assert_eq!(pages.huge_percent(), None);
}

/// The counts come from the data block at the offsets the descriptors name, and nowhere else.
#[test]
fn values_come_from_the_named_offsets() {
    let mut blob = with_pages([300, 64, 1]);
    // Neighbours (mmu_unsync before, nx_lpage_splits after) must not leak in.
    blob[NEW_VM_DATA + 64..NEW_VM_DATA + 72].copy_from_slice(&7u64.to_le_bytes());
    blob[NEW_VM_DATA + 96..NEW_VM_DATA + 104].copy_from_slice(&9u64.to_le_bytes());
    let (_, p) = StatsLayout::parse_file(&blob, &PAGE_STATS).unwrap();
    let p = Stage2Pages::from(p);
    assert_eq!(
        p,
        Stage2Pages {
            pages_4k: 300,
            pages_2m: 64,
            pages_1g: 1
        }
    );
    assert_eq!(p.bytes(), [300 * 4096, 64 << 21, 1 << 30]);
    let huge = ((64u64 << 21) + (1 << 30)) as f64 * 100.0 / p.total_bytes() as f64;
    assert_eq!(p.huge_percent(), Some(huge));
    assert!(p.to_string().contains("64 x 2M (128 MiB)"), "{p}");
}

#[test]
fn refuses_what_is_not_a_page_count() {
    // A header that is cut short, or claims absurd sizes.
    assert!(matches!(
        StatsHeader::parse(&NEW_VM[..20]),
        Err(KvmStatsError::Malformed(_))
    ));
    let mut big = NEW_VM.to_vec();
    big[8..12].copy_from_slice(&1_000_000u32.to_le_bytes());
    assert!(matches!(
        StatsLayout::parse_file(&big, &PAGE_STATS),
        Err(KvmStatsError::Malformed(_))
    ));
    // Descriptors cut short.
    assert!(matches!(
        StatsLayout::parse_file(&NEW_VM[..200], &PAGE_STATS),
        Err(KvmStatsError::Malformed(_))
    ));
    // A data block too short for the last count.
    assert!(matches!(
        StatsLayout::parse_file(&NEW_VM[..NEW_VM_DATA + 90], &PAGE_STATS),
        Err(KvmStatsError::Malformed(_))
    ));
    // pages_2m renamed: missing.
    let h = StatsHeader::parse(NEW_VM).unwrap();
    let stride = 16 + h.name_size;
    let mut renamed = NEW_VM.to_vec();
    let desc_2m = h.desc_offset as usize + 10 * stride;
    assert_eq!(&renamed[desc_2m + 16..desc_2m + 24], b"pages_2m");
    renamed[desc_2m + 16] = b'P';
    assert!(matches!(
        StatsLayout::parse_file(&renamed, &PAGE_STATS),
        Err(KvmStatsError::Missing("pages_2m"))
    ));
    // pages_1g as a two-value statistic or with a unit: not a count.
    let desc_1g = h.desc_offset as usize + 11 * stride;
    let mut sized = NEW_VM.to_vec();
    sized[desc_1g + 6..desc_1g + 8].copy_from_slice(&2u16.to_le_bytes());
    assert!(matches!(
        StatsLayout::parse_file(&sized, &PAGE_STATS),
        Err(KvmStatsError::Malformed(_))
    ));
    let mut unit = NEW_VM.to_vec();
    unit[desc_1g..desc_1g + 4].copy_from_slice(&0x11u32.to_le_bytes());
    assert!(matches!(
        StatsLayout::parse_file(&unit, &PAGE_STATS),
        Err(KvmStatsError::Malformed(_))
    ));
}

/// A statistics file read through its descriptor: the layout once, the values at each read.
#[test]
fn reads_through_a_file() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, &with_pages([1, 2, 3])).unwrap();
    let stats = VmStats::from_file(f.reopen().unwrap()).unwrap();
    assert_eq!(stats.read().unwrap().pages_2m, 2);
    f.as_file().write_all_at(&with_pages([4, 5, 6]), 0).unwrap();
    let p = stats.read().unwrap();
    assert_eq!((p.pages_4k, p.pages_2m, p.pages_1g), (4, 5, 6));
}

/// The vCPU file: the four fault counts from their named offsets, and what is unresolved.
#[test]
fn vcpu_fault_counts() {
    let (layout, counts) = StatsLayout::parse_file(NEW_VCPU, &FAULT_STATS).unwrap();
    assert_eq!(layout.offsets, [832, 840, 848, 856]);
    assert_eq!(FaultCounts::from(counts), FaultCounts::default());
    let (_, counts) =
        StatsLayout::parse_file(&with_faults([1000, 900, 60, 10]), &FAULT_STATS).unwrap();
    let c = FaultCounts::from(counts);
    assert_eq!(
        (c.taken, c.fixed, c.emulated, c.spurious),
        (1000, 900, 60, 10)
    );
    assert_eq!(c.unresolved(), 30);
    // Asynchronous page faults fixed when their page is ready count as fixed, never as taken:
    // the figure may go below zero.
    assert_eq!(FaultCounts::from([5, 7, 0, 0]).unresolved(), -2);
    // The VM's page counts are not in a vCPU's file.
    assert!(matches!(
        StatsLayout::parse_file(NEW_VCPU, &PAGE_STATS),
        Err(KvmStatsError::Missing("pages_4k"))
    ));
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, &with_faults([3, 1, 0, 0])).unwrap();
    let stats = VcpuStats::from_file(f.reopen().unwrap()).unwrap();
    assert_eq!(stats.read().unwrap().unresolved(), 2);
}
