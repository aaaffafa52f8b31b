//! Tests for the format step: every rule over an in-memory namespace, then real sparse files
//! through [`crate::pmem::backing`], cross-checked against `ndctl write-infoblock`.

use super::*;
use crate::pmem::test_support::require_ndctl;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::pmem::backing::{Backing, BackingKind, BackingRequest};
use crate::pmem::infoblock::{InfoBlockRequest, PAGE_SIZE};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Device A of the info block's worked examples lives at 5 GiB (1 GiB aligned).
const BASE: u64 = 0x1_4000_0000;
const UUID: [u8; 16] = [
    0x6a, 0x0f, 0x1c, 0x3e, 0x7b, 0x4d, 0x4e, 0x2a, 0x9c, 0x5b, 0x1d, 0x2e, 0x3f, 0x40, 0x51, 0x62,
];
const UUID_STR: &str = "6a0f1c3e-7b4d-4e2a-9c5b-1d2e3f405162";
const OTHER_UUID: [u8; 16] = [7; 16];

// ---------------------------------------------------------------------------------------------
// An in-memory namespace: sparse 4 KiB pages, with fault injection
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct MemNs {
    size: u64,
    pages: RefCell<BTreeMap<u64, Box<[u8; 4096]>>>,
    /// The next this many writes fail with EIO before writing anything.
    fail_writes: Cell<u32>,
    /// The next this many writes land with their first byte flipped.
    corrupt_writes: Cell<u32>,
    writes: Cell<u32>,
    first_nonzero_calls: Cell<u32>,
}

impl MemNs {
    fn new(size: u64) -> MemNs {
        MemNs {
            size,
            ..MemNs::default()
        }
    }

    fn put(&self, offset: u64, data: &[u8]) {
        assert!(offset + data.len() as u64 <= self.size);
        let mut pages = self.pages.borrow_mut();
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i as u64;
            let page = pages
                .entry(at / 4096)
                .or_insert_with(|| Box::new([0; 4096]));
            page[(at % 4096) as usize] = b;
        }
    }

    fn get(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(offset, &mut v).unwrap();
        v
    }

    fn block(&self) -> [u8; 4096] {
        self.get(INFO_BLOCK_OFFSET, 4096).try_into().unwrap()
    }

    /// A digest of every byte outside [4096, 8192).
    fn digest_outside_block(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for (&page, bytes) in self.pages.borrow().iter() {
            if page != 1 && bytes.iter().any(|&b| b != 0) {
                h.write_u64(page);
                h.write(&bytes[..]);
            }
        }
        h.finish()
    }
}

impl NamespaceAccess for MemNs {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        assert!(
            offset + buf.len() as u64 <= self.size,
            "read beyond the end"
        );
        let pages = self.pages.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = pages
                .get(&(at / 4096))
                .map_or(0, |p| p[(at % 4096) as usize]);
        }
        Ok(())
    }

    fn first_nonzero(&self, range: Range<u64>) -> io::Result<Option<u64>> {
        assert!(range.end <= self.size, "scan beyond the end");
        self.first_nonzero_calls
            .set(self.first_nonzero_calls.get() + 1);
        if range.start >= range.end {
            return Ok(None);
        }
        let pages = self.pages.borrow();
        for (&page, bytes) in pages.range(range.start / 4096..=(range.end - 1) / 4096) {
            for (i, &b) in bytes.iter().enumerate() {
                let at = page * 4096 + i as u64;
                if b != 0 && range.contains(&at) {
                    return Ok(Some(at));
                }
            }
        }
        Ok(None)
    }

    fn write_durably(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.writes.set(self.writes.get() + 1);
        if self.fail_writes.get() > 0 {
            self.fail_writes.set(self.fail_writes.get() - 1);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.put(offset, data);
        if self.corrupt_writes.get() > 0 {
            self.corrupt_writes.set(self.corrupt_writes.get() - 1);
            self.put(offset, &[data[0] ^ 0xff]);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn req(memmap: Memmap, format: FormatPolicy, size: u64) -> FormatRequest {
    FormatRequest {
        memmap,
        mode: None,
        align: None,
        format,
        phys_addr: BASE,
        size,
        guest_ram: 4 * GIB,
        readonly: false,
        created_this_run: false,
        uuid: UUID,
        labels: None,
    }
}

fn with_mode(mut r: FormatRequest, mode: NsMode) -> FormatRequest {
    r.mode = Some(mode);
    r
}

fn with_align(mut r: FormatRequest, align: u64) -> FormatRequest {
    r.align = Some(align);
    r
}

fn compute(mode: InfoMode, memmap: MemmapLocation, align: u64, base: u64, size: u64) -> InfoBlock {
    compute_uuid(mode, memmap, align, base, size, OTHER_UUID)
}

fn compute_uuid(
    mode: InfoMode,
    memmap: MemmapLocation,
    align: u64,
    base: u64,
    size: u64,
    uuid: [u8; 16],
) -> InfoBlock {
    InfoBlock::compute(&InfoBlockRequest {
        mode,
        memmap,
        align,
        namespace: Namespace::io(base, size),
        uuid,
    })
    .unwrap()
}

/// A namespace of `size` at [`BASE`] holding `block` at 4096.
fn ns_with(size: u64, block: &InfoBlock) -> MemNs {
    let ns = MemNs::new(size);
    ns.put(INFO_BLOCK_OFFSET, &block.to_bytes());
    ns
}

fn err(r: &FormatRequest, ns: &MemNs) -> String {
    let e = plan(r, ns).expect_err("expected a refusal");
    let text = e.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(e.is_usage(), "{text}");
    text
}

fn ok(r: &FormatRequest, ns: &MemNs) -> Plan {
    plan(r, ns).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_contains(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{text:?} does not contain {p:?}");
    }
}

fn written_block(p: &Plan) -> InfoBlock {
    match &p.action {
        WriteAction::Write { block: Some(b), .. } => *b,
        a => panic!("expected a block write, got {a:?}"),
    }
}

fn decided_block(p: &Plan) -> InfoBlock {
    match p.decision {
        Decision::Block(b) => b,
        Decision::Raw => panic!("expected a block, got raw"),
        Decision::Labels => panic!("expected a block, got labels"),
    }
}

/// Applies a plan that writes, and checks the device now holds exactly the planned bytes and
/// nothing else changed.
fn apply_and_check(p: &Plan, ns: &MemNs) {
    let before = ns.digest_outside_block();
    apply(p, ns).unwrap();
    assert_eq!(ns.block(), p.action.bytes().unwrap());
    assert_eq!(ns.digest_outside_block(), before);
}

// ---------------------------------------------------------------------------------------------
// Options the planner refuses together
// ---------------------------------------------------------------------------------------------

#[test]
fn conflicting_options_are_refused() {
    let ns = MemNs::new(GIB);
    let r = with_mode(req(Memmap::None, FormatPolicy::Init, GIB), NsMode::Devdax);
    assert_eq!(
        err(&r, &ns),
        "memmap=none and mode=devdax conflict: memmap=none gives a raw namespace, without an info \
         block; drop mode= or use memmap=ram|pmem|auto"
    );
    let r = with_mode(req(Memmap::Ram, FormatPolicy::Init, GIB), NsMode::Raw);
    assert_eq!(
        err(&r, &ns),
        "memmap=ram and mode=raw conflict: mode=raw gives a raw namespace, without a memmap; drop \
         mode=raw or use memmap=none"
    );
    let r = with_align(req(Memmap::None, FormatPolicy::Init, GIB), 2 * MIB);
    assert_eq!(
        err(&r, &ns),
        "align=2M applies only to fsdax and devdax; a raw namespace (memmap=none or mode=raw) has \
         no mapping alignment: drop align="
    );
    let r = with_align(req(Memmap::Ram, FormatPolicy::Init, GIB), 64 * KIB);
    assert_eq!(
        err(&r, &ns),
        "align=0x10000: unknown value; expected 4K, 2M or 1G"
    );
    // mode=raw under auto (or none) is just a raw namespace.
    for memmap in [Memmap::Auto, Memmap::None] {
        let p = ok(
            &with_mode(req(memmap, FormatPolicy::Init, GIB), NsMode::Raw),
            &ns,
        );
        assert_eq!(p.decision, Decision::Raw);
    }
    assert_eq!(ns.writes.get(), 0);
}

// ---------------------------------------------------------------------------------------------
// memmap=none
// ---------------------------------------------------------------------------------------------

#[test]
fn none_on_a_blank_or_data_device_is_raw_and_writes_nothing() {
    for format in [FormatPolicy::Keep, FormatPolicy::Init, FormatPolicy::Force] {
        let ns = MemNs::new(GIB);
        ns.put(1024, b"a file system");
        let p = ok(&req(Memmap::None, format, GIB), &ns);
        assert_eq!(p.decision, Decision::Raw);
        assert_eq!(p.action, WriteAction::None);
        assert_eq!(p.report, NamespaceReport::raw(GIB));
        assert_eq!(p.report.capacity, GIB);
        assert_eq!(p.report.to_string(), "raw, no memmap, capacity 1 GiB");
        apply(&p, &ns).unwrap();
        assert_eq!(ns.writes.get(), 0);
    }
}

#[test]
fn none_cannot_hide_a_block_the_guest_detects() {
    let b = compute(InfoMode::Fsdax, MemmapLocation::Pmem, 2 * MIB, BASE, GIB);
    for format in [FormatPolicy::Keep, FormatPolicy::Init] {
        let ns = ns_with(GIB, &b);
        assert_eq!(
            err(&req(Memmap::None, format, GIB), &ns),
            format!(
                "memmap=none with format={format}: the device has an info block for \
                 mode=fsdax,memmap=pmem,align=2M (data offset 0x1200000), which the guest detects \
                 even in a raw namespace; use format=force to erase it, or memmap=ram|pmem|auto to \
                 use it"
            )
        );
    }
    // force erases it, saying what it replaces.
    let ns = ns_with(GIB, &b);
    ns.put(100 * MIB, b"data");
    let p = ok(&req(Memmap::None, FormatPolicy::Force, GIB), &ns);
    assert_eq!(p.decision, Decision::Raw);
    let WriteAction::Write {
        block: None,
        replaces: Some(r),
        ..
    } = &p.action
    else {
        panic!("{:?}", p.action)
    };
    assert!(r.contains("mode=fsdax,memmap=pmem"), "{r}");
    assert_contains(
        &p.notes.join("\n"),
        &["format=force: writing 4 KiB of zeros at offset 0x1000, replacing an info block"],
    );
    apply_and_check(&p, &ns);
    assert_eq!(ns.block(), [0; 4096]);
    // Now it is plainly raw.
    let p = ok(&req(Memmap::None, FormatPolicy::Keep, GIB), &ns);
    assert_eq!(p.decision, Decision::Raw);

    // A block the guest refuses (laid out for another base) is detected too.
    let other = compute(InfoMode::Devdax, MemmapLocation::Ram, GIB, BASE, 4 * GIB);
    let ns = ns_with(4 * GIB, &other);
    let mut r = req(Memmap::None, FormatPolicy::Init, 4 * GIB);
    r.phys_addr = BASE + 128 * MIB;
    assert_contains(
        &err(&r, &ns),
        &["a devdax info block the guest refuses", "bad offset"],
    );
}

#[test]
fn none_with_a_block_the_guest_ignores_is_raw() {
    let b = compute(InfoMode::Fsdax, MemmapLocation::Ram, 2 * MIB, BASE, GIB);
    let mut bytes = b.to_bytes();
    bytes[4000] ^= 1; // checksum no longer matches
    let ns = MemNs::new(GIB);
    ns.put(INFO_BLOCK_OFFSET, &bytes);
    let p = ok(&req(Memmap::None, FormatPolicy::Init, GIB), &ns);
    assert_eq!(p.decision, Decision::Raw);
    assert_eq!(p.action, WriteAction::None);
    assert_contains(&p.notes.join("\n"), &["checksum mismatch"]);
}

// ---------------------------------------------------------------------------------------------
// memmap=ram|pmem
// ---------------------------------------------------------------------------------------------

#[test]
fn keep_uses_a_matching_block_and_never_writes() {
    let b = compute(InfoMode::Fsdax, MemmapLocation::Pmem, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &b);
    for r in [
        req(Memmap::Pmem, FormatPolicy::Keep, GIB),
        with_mode(req(Memmap::Pmem, FormatPolicy::Keep, GIB), NsMode::Fsdax),
        with_align(req(Memmap::Pmem, FormatPolicy::Keep, GIB), 2 * MIB),
    ] {
        let p = ok(&r, &ns);
        assert_eq!(p.decision, Decision::Block(b));
        assert_eq!(p.action, WriteAction::None);
        assert_contains(
            &p.notes[0],
            &[
                "the device already has an info block for mode=fsdax,memmap=pmem",
                "using it",
            ],
        );
    }
    // Without align=, any alignment matches.
    let b1g = compute(InfoMode::Devdax, MemmapLocation::Ram, GIB, BASE, 4 * GIB);
    let ns = ns_with(4 * GIB, &b1g);
    let p = ok(
        &with_mode(
            req(Memmap::Ram, FormatPolicy::Keep, 4 * GIB),
            NsMode::Devdax,
        ),
        &ns,
    );
    assert_eq!(p.decision, Decision::Block(b1g));
    assert_eq!(p.report.align, GIB);
    assert_eq!(ns.writes.get(), 0);
}

#[test]
fn keep_names_what_is_there_and_what_was_asked() {
    let ns = MemNs::new(GIB);
    assert_eq!(
        err(&req(Memmap::Ram, FormatPolicy::Keep, GIB), &ns),
        "format=keep: the device has no info block; use format=init to write one"
    );
    let b = compute(InfoMode::Fsdax, MemmapLocation::Pmem, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &b);
    // Another memmap location.
    assert_eq!(
        err(&req(Memmap::Ram, FormatPolicy::Keep, GIB), &ns),
        "format=keep: the device has an info block for mode=fsdax,memmap=pmem,align=2M (data \
         offset 0x1200000), but mode=fsdax,memmap=ram was asked; ask for what is there, or use \
         format=force to replace it"
    );
    // Another mode (mode= not given means fsdax for memmap=ram|pmem).
    let r = with_mode(req(Memmap::Pmem, FormatPolicy::Keep, GIB), NsMode::Devdax);
    assert_contains(
        &err(&r, &ns),
        &[
            "mode=fsdax,memmap=pmem,align=2M",
            "but mode=devdax,memmap=pmem was asked",
        ],
    );
    // Another alignment.
    let r = with_align(req(Memmap::Pmem, FormatPolicy::Keep, GIB), 4 * KIB);
    assert_contains(
        &err(&r, &ns),
        &["but mode=fsdax,memmap=pmem,align=4K was asked"],
    );
    // A signature with a bad checksum is no block.
    let mut bytes = b.to_bytes();
    bytes[100] = 1;
    ns.put(INFO_BLOCK_OFFSET, &bytes);
    assert_contains(
        &err(&req(Memmap::Pmem, FormatPolicy::Keep, GIB), &ns),
        &[
            "format=keep: the device has no info block the guest uses (an fsdax signature the \
             guest ignores: info block checksum mismatch",
            "use format=init to write one",
        ],
    );
    assert_eq!(ns.writes.get(), 0);
}

#[test]
fn init_writes_on_a_blank_device_and_then_keeps_it() {
    for (mode, memmap) in [
        (NsMode::Fsdax, Memmap::Ram),
        (NsMode::Fsdax, Memmap::Pmem),
        (NsMode::Devdax, Memmap::Ram),
        (NsMode::Devdax, Memmap::Pmem),
    ] {
        let ns = MemNs::new(GIB);
        ns.put(600 * MIB, b"beyond the area to format");
        let r = with_mode(req(memmap, FormatPolicy::Init, GIB), mode);
        let p = ok(&r, &ns);
        let b = written_block(&p);
        let (im, ml) = (
            if mode == NsMode::Fsdax {
                InfoMode::Fsdax
            } else {
                InfoMode::Devdax
            },
            if memmap == Memmap::Ram {
                MemmapLocation::Ram
            } else {
                MemmapLocation::Pmem
            },
        );
        assert_eq!(b, compute_uuid(im, ml, 2 * MIB, BASE, GIB, UUID));
        assert_eq!(p.decision, Decision::Block(b));
        let WriteAction::Write { replaces, old, .. } = &p.action else {
            unreachable!()
        };
        assert_eq!(replaces, &None);
        assert_eq!(**old, [0; 4096]);
        assert_eq!(ns.first_nonzero_calls.get(), 1);
        apply_and_check(&p, &ns);
        assert_eq!(ns.writes.get(), 1);

        // Idempotent: the next run finds the block and writes nothing, under every policy.
        for format in [FormatPolicy::Keep, FormatPolicy::Init, FormatPolicy::Force] {
            let mut again = r.clone();
            again.format = format;
            again.uuid = OTHER_UUID;
            let p2 = ok(&again, &ns);
            assert_eq!(p2.decision, Decision::Block(b), "{format}");
            assert_eq!(p2.action, WriteAction::None);
            assert_eq!(p2.report, p.report);
        }
    }
}

#[test]
fn init_refuses_non_blank_bytes_and_names_them() {
    let ns = MemNs::new(GIB);
    ns.put(0x438, &[0x53, 0xef]); // an ext4 superblock magic
    assert_eq!(
        err(&req(Memmap::Pmem, FormatPolicy::Init, GIB), &ns),
        "format=init: bytes at offset 0x438 are not blank (no info block); format=init writes \
         only when [0, 0x1200000), which the info block and its reserve take over, is all zeros: \
         use format=force to overwrite it, or another backing"
    );
    // The checked area depends on the layout: 2 MiB for ram, 18 MiB for pmem on 1 GiB.
    let ns = MemNs::new(GIB);
    ns.put(2 * MIB, &[1]);
    written_block(&ok(&req(Memmap::Ram, FormatPolicy::Init, GIB), &ns));
    assert_contains(
        &err(&req(Memmap::Pmem, FormatPolicy::Init, GIB), &ns),
        &["bytes at offset 0x200000 are not blank", "[0, 0x1200000)"],
    );
    let ns2 = MemNs::new(GIB);
    ns2.put(18 * MIB, &[1]);
    written_block(&ok(&req(Memmap::Pmem, FormatPolicy::Init, GIB), &ns2));
    // A BTT arena is named.
    let ns = MemNs::new(GIB);
    ns.put(INFO_BLOCK_OFFSET, b"BTT_ARENA_INFO\0\0");
    assert_contains(
        &err(&req(Memmap::Ram, FormatPolicy::Init, GIB), &ns),
        &["bytes at offset 0x1000 are not blank (a BTT arena"],
    );
    // A file created in this run is not checked (it is all zeros by construction).
    let ns = MemNs::new(GIB);
    let mut r = req(Memmap::Pmem, FormatPolicy::Init, GIB);
    r.created_this_run = true;
    written_block(&ok(&r, &ns));
    assert_eq!(ns.first_nonzero_calls.get(), 0);
}

#[test]
fn init_never_replaces_a_block() {
    let b = compute(InfoMode::Devdax, MemmapLocation::Ram, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &b);
    assert_eq!(
        err(&req(Memmap::Pmem, FormatPolicy::Init, GIB), &ns),
        "format=init: the device has an info block for mode=devdax,memmap=ram,align=2M (data \
         offset 0x200000), but mode=fsdax,memmap=pmem was asked; format=init never replaces an \
         info block: ask for what is there, or use format=force to replace it"
    );
    // A block that parses but was laid out for another guest physical address (1G align: the
    // data offset depends on the base) is a block that does not match, not a blank device.
    let other = compute(InfoMode::Devdax, MemmapLocation::Ram, GIB, BASE, 4 * GIB);
    let ns = ns_with(4 * GIB, &other);
    let mut r = with_mode(
        req(Memmap::Ram, FormatPolicy::Init, 4 * GIB),
        NsMode::Devdax,
    );
    r.phys_addr = BASE + 128 * MIB;
    let text = err(&r, &ns);
    assert_contains(
        &text,
        &[
            "format=init: the device has a devdax info block the guest refuses",
            "was it written for another guest physical address?",
            "use format=force to replace it",
        ],
    );
    // At its own base it is fine.
    r.phys_addr = BASE;
    assert_eq!(ok(&r, &ns).decision, Decision::Block(other));
}

#[test]
fn force_rewrites_after_saying_what_it_replaces() {
    // A different block.
    let b = compute(InfoMode::Devdax, MemmapLocation::Ram, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &b);
    let p = ok(&req(Memmap::Pmem, FormatPolicy::Force, GIB), &ns);
    let new = written_block(&p);
    assert_eq!(
        new,
        compute_uuid(
            InfoMode::Fsdax,
            MemmapLocation::Pmem,
            2 * MIB,
            BASE,
            GIB,
            UUID
        )
    );
    let WriteAction::Write { replaces, .. } = &p.action else {
        unreachable!()
    };
    assert_eq!(
        replaces.as_deref(),
        Some("an info block for mode=devdax,memmap=ram,align=2M (data offset 0x200000)")
    );
    assert_eq!(
        p.notes,
        [
            "format=force: writing an info block for mode=fsdax,memmap=pmem,align=2M (data offset \
          0x1200000) at offset 0x1000, replacing an info block for mode=devdax,memmap=ram,align=2M \
          (data offset 0x200000)"
        ]
    );
    apply_and_check(&p, &ns);

    // Non-blank bytes.
    let ns = MemNs::new(GIB);
    ns.put(0x438, &[0x53, 0xef]);
    let p = ok(&req(Memmap::Ram, FormatPolicy::Force, GIB), &ns);
    let WriteAction::Write { replaces, .. } = &p.action else {
        unreachable!()
    };
    assert_eq!(
        replaces.as_deref(),
        Some("non-blank bytes from offset 0x438")
    );
    apply_and_check(&p, &ns);

    // The same block already there (other uuid): no write. Without align= the default 2M is what
    // force asks for, so a 1G block is rewritten.
    let same = compute(InfoMode::Fsdax, MemmapLocation::Ram, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &same);
    let p = ok(&req(Memmap::Ram, FormatPolicy::Force, GIB), &ns);
    assert_eq!(p.decision, Decision::Block(same));
    assert_eq!(p.action, WriteAction::None);
    assert_contains(&p.notes[0], &["already has", "not rewriting"]);
    let b1g = compute(InfoMode::Fsdax, MemmapLocation::Ram, GIB, BASE, 4 * GIB);
    let ns = ns_with(4 * GIB, &b1g);
    let p = ok(&req(Memmap::Ram, FormatPolicy::Force, 4 * GIB), &ns);
    assert_eq!(written_block(&p).align(), 2 * MIB);

    // A blank device: a plain write.
    let ns = MemNs::new(GIB);
    let p = ok(&req(Memmap::Ram, FormatPolicy::Force, GIB), &ns);
    let WriteAction::Write { replaces: None, .. } = &p.action else {
        panic!("{:?}", p.action)
    };
}

// ---------------------------------------------------------------------------------------------
// memmap=auto
// ---------------------------------------------------------------------------------------------

#[test]
fn auto_keeps_any_valid_block() {
    for (mode, memmap, align) in [
        (InfoMode::Fsdax, MemmapLocation::Ram, 2 * MIB),
        (InfoMode::Fsdax, MemmapLocation::Pmem, 4 * KIB),
        (InfoMode::Devdax, MemmapLocation::Pmem, GIB),
    ] {
        let b = compute(mode, memmap, align, BASE, 4 * GIB);
        let ns = ns_with(4 * GIB, &b);
        for format in [FormatPolicy::Keep, FormatPolicy::Init] {
            let p = ok(&req(Memmap::Auto, format, 4 * GIB), &ns);
            assert_eq!(p.decision, Decision::Block(b));
            assert_eq!(p.action, WriteAction::None);
            assert_eq!(
                p.notes,
                [format!(
                    "memmap=auto: keeping the existing {}",
                    describe_block(&b)
                )]
            );
        }
    }
    // A given mode or align that differs is noted, not applied.
    let b = compute(InfoMode::Devdax, MemmapLocation::Ram, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &b);
    let r = with_align(
        with_mode(req(Memmap::Auto, FormatPolicy::Init, GIB), NsMode::Fsdax),
        4 * KIB,
    );
    let p = ok(&r, &ns);
    assert_eq!(p.decision, Decision::Block(b));
    assert_contains(
        &p.notes[0],
        &["mode=fsdax and align=4K not applied (give memmap=ram|pmem with format=force"],
    );
}

#[test]
fn auto_formats_a_blank_device_by_the_rule() {
    // 1 GiB fsdax: the ram memmap costs 16 MiB (+ PTE pages for none: full sections).
    let ns = MemNs::new(GIB);
    let mut r = req(Memmap::Auto, FormatPolicy::Init, GIB);
    r.guest_ram = 4 * GIB;
    let p = ok(&r, &ns);
    let b = written_block(&p);
    assert_eq!(b.memmap, MemmapLocation::Ram);
    assert_eq!(b.mode, InfoMode::Fsdax);
    assert_eq!(
        p.notes[0],
        "memmap=auto: the memmap of this 1 GiB fsdax namespace costs 16777216 bytes of guest RAM \
         with memmap=ram; 1/16 of the 4 GiB guest RAM is 268435456 bytes: memmap in ram"
    );
    assert_eq!(p.report.ram_cost_bytes, 16 * MIB);
    apply_and_check(&p, &ns);

    // 16 GiB fsdax with 2 GiB of RAM: 256 MiB > 128 MiB, so pmem.
    let ns = MemNs::new(16 * GIB);
    let mut r = req(Memmap::Auto, FormatPolicy::Init, 16 * GIB);
    r.guest_ram = 2 * GIB;
    let p = ok(&r, &ns);
    let b = written_block(&p);
    assert_eq!(b.memmap, MemmapLocation::Pmem);
    assert_eq!(
        p.notes[0],
        "memmap=auto: the memmap of this 16 GiB fsdax namespace costs 268435456 bytes of guest \
         RAM with memmap=ram; 1/16 of the 2 GiB guest RAM is 134217728 bytes: memmap in pmem, \
         reserving 270524416 bytes of the device (guest RAM cost 0 bytes, capacity 16909336576 \
         bytes instead of 17177772032)"
    );
    assert_eq!(p.report.ram_cost_bytes, 0);
    assert_eq!(p.report.device_reserve_bytes, 258 * MIB - 8 * KIB);
    assert_eq!(p.report.capacity, 16909336576);

    // devdax with 2M align: the deduplicated memmap in RAM is tiny, so ram.
    let r = with_mode(r, NsMode::Devdax);
    let p = ok(&r, &ns);
    assert_eq!(written_block(&p).memmap, MemmapLocation::Ram);
    assert_eq!(p.report.memmap_bytes, 16 * GIB / 256);
    assert_eq!(p.report.ram_cost_bytes, 16 * GIB / 256 + 128 * PAGE_SIZE);
}

#[test]
fn auto_threshold_is_one_sixteenth_of_guest_ram() {
    let size = 8 * GIB;
    let ram_cost = InfoBlockRequest {
        mode: InfoMode::Fsdax,
        memmap: MemmapLocation::Ram,
        align: 2 * MIB,
        namespace: Namespace::io(BASE, size),
        uuid: UUID,
    }
    .layout()
    .unwrap()
    .memmap
    .ram_total();
    let ns = MemNs::new(size);
    let mut r = req(Memmap::Auto, FormatPolicy::Init, size);
    r.guest_ram = ram_cost * AUTO_RAM_FRACTION_DENOMINATOR;
    assert_eq!(
        written_block(&ok(&r, &ns)).memmap,
        MemmapLocation::Ram,
        "at exactly 1/16"
    );
    r.guest_ram -= 1;
    assert_eq!(written_block(&ok(&r, &ns)).memmap, MemmapLocation::Pmem);
    r.guest_ram = 0;
    assert_eq!(written_block(&ok(&r, &ns)).memmap, MemmapLocation::Pmem);
}

#[test]
fn auto_exposes_other_data_raw_and_says_how_to_format() {
    let ns = MemNs::new(GIB);
    ns.put(0x438, &[0x53, 0xef]);
    for format in [FormatPolicy::Keep, FormatPolicy::Init] {
        let p = ok(&req(Memmap::Auto, format, GIB), &ns);
        assert_eq!(p.decision, Decision::Raw);
        assert_eq!(p.action, WriteAction::None);
        assert_eq!(p.report.capacity, GIB);
        assert_eq!(
            p.notes.last().unwrap(),
            "memmap=auto: exposed raw because bytes at offset 0x438 are not blank; to use DAX \
             give memmap=ram,format=force (this overwrites the first 2097152 bytes)"
        );
    }
    // A signature the guest ignores (torn write) is other data too.
    let mut bytes = compute(InfoMode::Fsdax, MemmapLocation::Ram, 2 * MIB, BASE, GIB).to_bytes();
    bytes[100] ^= 1;
    let ns = MemNs::new(GIB);
    ns.put(INFO_BLOCK_OFFSET, &bytes);
    let p = ok(&req(Memmap::Auto, FormatPolicy::Init, GIB), &ns);
    assert_eq!(p.decision, Decision::Raw);
    assert_contains(
        p.notes.last().unwrap(),
        &["offset 0x1000", "the guest ignores"],
    );
    // force formats it by the rule.
    let p = ok(&req(Memmap::Auto, FormatPolicy::Force, GIB), &ns);
    assert_eq!(written_block(&p).memmap, MemmapLocation::Ram);
    assert_contains(
        &p.notes.join("\n"),
        &["replacing non-blank bytes from offset 0x1000"],
    );
    apply_and_check(&p, &ns);
    assert_eq!(ns.writes.get(), 1);
}

#[test]
fn auto_does_not_write_under_keep_or_readonly() {
    let ns = MemNs::new(GIB);
    let p = ok(&req(Memmap::Auto, FormatPolicy::Keep, GIB), &ns);
    assert_eq!(p.decision, Decision::Raw);
    assert_contains(
        p.notes.last().unwrap(),
        &["format=keep: the device is blank and is not formatted; exposed raw"],
    );
    let mut r = req(Memmap::Auto, FormatPolicy::Init, GIB);
    r.readonly = true;
    let p = ok(&r, &ns);
    assert_eq!(p.decision, Decision::Raw);
    assert_contains(
        p.notes.last().unwrap(),
        &["readonly=on: the device is blank and cannot be formatted; exposed raw"],
    );
    assert_eq!(ns.writes.get(), 0);
}

#[test]
fn auto_cannot_keep_or_hide_a_block_the_guest_refuses() {
    let other = compute(InfoMode::Fsdax, MemmapLocation::Ram, GIB, BASE, 4 * GIB);
    let ns = ns_with(4 * GIB, &other);
    let mut r = req(Memmap::Auto, FormatPolicy::Init, 4 * GIB);
    r.phys_addr = BASE + 128 * MIB;
    assert_contains(
        &err(&r, &ns),
        &[
            "memmap=auto: the device has an fsdax info block the guest refuses",
            "so the guest would give this namespace no device at all; use memmap=ram|pmem with \
             format=force to rewrite it, or memmap=none with format=force to erase it",
        ],
    );
    r.format = FormatPolicy::Force;
    let p = ok(&r, &ns);
    assert_eq!(written_block(&p).align(), 2 * MIB);
    assert_contains(
        &p.notes.join("\n"),
        &["replacing an fsdax info block the guest refuses"],
    );
}

#[test]
fn auto_force_rewrites_a_block_unless_it_is_what_the_rule_gives() {
    let ram = compute(InfoMode::Fsdax, MemmapLocation::Ram, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &ram);
    let p = ok(&req(Memmap::Auto, FormatPolicy::Force, GIB), &ns);
    assert_eq!(p.decision, Decision::Block(ram));
    assert_eq!(p.action, WriteAction::None);
    let pmem = compute(InfoMode::Fsdax, MemmapLocation::Pmem, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &pmem);
    let p = ok(&req(Memmap::Auto, FormatPolicy::Force, GIB), &ns);
    assert_eq!(written_block(&p).memmap, MemmapLocation::Ram);
}

// ---------------------------------------------------------------------------------------------
// readonly, align, size
// ---------------------------------------------------------------------------------------------

#[test]
fn readonly_refuses_any_write_but_uses_a_matching_block() {
    let ns = MemNs::new(GIB);
    let mut r = req(Memmap::Ram, FormatPolicy::Init, GIB);
    r.readonly = true;
    assert_eq!(
        err(&r, &ns),
        "readonly=on, but format=init needs to write an info block for \
         mode=fsdax,memmap=ram,align=2M (data offset 0x200000) at offset 0x1000; drop \
         readonly=on, or use format=keep with a device formatted as asked"
    );
    // force over a block.
    let b = compute(InfoMode::Devdax, MemmapLocation::Ram, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &b);
    r.format = FormatPolicy::Force;
    assert_contains(
        &err(&r, &ns),
        &["format=force needs to write", "over an info block"],
    );
    // A matching block is fine, under any policy.
    let r = with_mode(r, NsMode::Devdax);
    for format in [FormatPolicy::Keep, FormatPolicy::Init, FormatPolicy::Force] {
        let mut r = r.clone();
        r.format = format;
        assert_eq!(ok(&r, &ns).decision, Decision::Block(b));
    }
    // memmap=none erasing a block.
    let mut r = req(Memmap::None, FormatPolicy::Force, GIB);
    r.readonly = true;
    assert_contains(&err(&r, &ns), &["needs to write 4 KiB of zeros"]);
    assert_eq!(ns.writes.get(), 0);
}

#[test]
fn readonly_refuses_a_memmap_in_the_device() {
    let b = compute(InfoMode::Fsdax, MemmapLocation::Pmem, 2 * MIB, BASE, GIB);
    let ns = ns_with(GIB, &b);
    for memmap in [Memmap::Pmem, Memmap::Auto] {
        let mut r = req(memmap, FormatPolicy::Keep, GIB);
        r.readonly = true;
        assert_eq!(
            err(&r, &ns),
            "readonly=on with an info block for mode=fsdax,memmap=pmem,align=2M (data offset \
             0x1200000): the guest writes its struct pages into the device's memmap reserve \
             [0x2000, 0x1200000), which a read-only mapping drops; use a device formatted with \
             memmap=ram, or drop readonly=on"
        );
    }
}

#[test]
fn align_and_size_the_device_cannot_honour() {
    // 1G on a 1 GiB device: the data would start at 1 GiB.
    let ns = MemNs::new(GIB);
    let r = with_align(
        with_mode(req(Memmap::Ram, FormatPolicy::Init, GIB), NsMode::Devdax),
        GIB,
    );
    assert_eq!(
        err(&r, &ns),
        "cannot lay out mode=devdax,memmap=ram,align=1G on this device of 1 GiB at guest physical \
         address 0x140000000: align=1G needs the data to start on a 1 GiB boundary, at offset \
         0x40000000, but the device has only 0x40000000 usable bytes; use align=2M or a larger \
         device"
    );
    // Even under auto, when align= is given.
    let r = with_align(req(Memmap::Auto, FormatPolicy::Init, GIB), GIB);
    assert_contains(
        &err(&r, &ns),
        &["align=1G needs the data to start on a 1 GiB boundary"],
    );
    // ... and 1G on 2 GiB at a 1 GiB aligned base works.
    let ns2 = MemNs::new(2 * GIB);
    let r = with_align(
        with_mode(
            req(Memmap::Ram, FormatPolicy::Init, 2 * GIB),
            NsMode::Devdax,
        ),
        GIB,
    );
    let p = ok(&r, &ns2);
    assert_eq!(p.report.capacity, GIB);
    assert_eq!(p.report.align, GIB);
    assert_contains(
        &p.notes.join("\n"),
        &["writing an info block for mode=devdax,memmap=ram,align=1G"],
    );

    // A 2 MiB device has no room for the data after the 2 MiB-aligned header.
    let tiny = MemNs::new(2 * MIB);
    assert_eq!(
        err(&req(Memmap::Pmem, FormatPolicy::Init, 2 * MIB), &tiny),
        "cannot lay out mode=fsdax,memmap=pmem,align=2M on this device of 2 MiB at guest physical \
         address 0x140000000: the device is too small for its own memmap reserve: the data would \
         start at offset 0x200000 but the device has only 0x200000 usable bytes; use memmap=ram \
         or a larger device"
    );
    assert_contains(
        &err(&req(Memmap::Ram, FormatPolicy::Init, 2 * MIB), &tiny),
        &[
            "too small for an info block",
            "use memmap=none or a larger device",
        ],
    );
    // auto without align= exposes it raw, with a note.
    let p = ok(&req(Memmap::Auto, FormatPolicy::Init, 2 * MIB), &tiny);
    assert_eq!(p.decision, Decision::Raw);
    assert_contains(
        &p.notes[0],
        &["memmap=auto: the device of 2 MiB is too small for an info block"],
    );
    assert_eq!(tiny.writes.get(), 0);
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

#[test]
fn report_gives_what_the_guest_sees() {
    // The info block's worked examples: device A (1 GiB at 5 GiB) and B (16 GiB at 8 GiB).
    let cases = [
        (
            BASE,
            GIB,
            NsMode::Fsdax,
            Memmap::Pmem,
            0x1200000,
            1054867456u64,
        ),
        (BASE, GIB, NsMode::Fsdax, Memmap::Ram, 0x200000, 1071644672),
        (
            BASE,
            GIB,
            NsMode::Devdax,
            Memmap::Pmem,
            0x1200000,
            1054867456,
        ),
        (BASE, GIB, NsMode::Devdax, Memmap::Ram, 0x200000, 1071644672),
        (
            8 * GIB,
            16 * GIB,
            NsMode::Fsdax,
            Memmap::Pmem,
            0x10200000,
            16909336576,
        ),
        (
            8 * GIB,
            16 * GIB,
            NsMode::Fsdax,
            Memmap::Ram,
            0x200000,
            17177772032,
        ),
    ];
    for (base, size, mode, memmap, dataoff, capacity) in cases {
        let ns = MemNs::new(size);
        let mut r = with_mode(req(memmap, FormatPolicy::Init, size), mode);
        r.phys_addr = base;
        let p = ok(&r, &ns);
        let rep = p.report;
        assert_eq!(rep.mode, mode);
        assert_eq!(rep.memmap.to_string(), memmap.to_string());
        assert_eq!(rep.data_offset, dataoff);
        assert_eq!(rep.capacity, capacity);
        assert_eq!(rep.capacity, size - dataoff);
        assert_eq!(rep.align, 2 * MIB);
        let struct_pages = size / PAGE_SIZE;
        match (mode, memmap) {
            (_, Memmap::Pmem) => {
                assert_eq!(rep.device_reserve_bytes, dataoff - 8 * KIB);
                assert_eq!(rep.memmap_bytes, struct_pages * 64);
                assert_eq!(rep.ram_cost_bytes, 0);
            }
            (NsMode::Fsdax, Memmap::Ram) => {
                assert_eq!(rep.device_reserve_bytes, 0);
                assert_eq!(rep.memmap_bytes, struct_pages * 64);
                assert_eq!(rep.ram_cost_bytes, struct_pages * 64);
            }
            _ => {
                // devdax 2M, ram: 2 vmemmap pages per 2 MiB page + a PTE page per section.
                assert_eq!(rep.memmap_bytes, size / (2 * MIB) * 2 * PAGE_SIZE);
                assert_eq!(
                    rep.ram_cost_bytes,
                    rep.memmap_bytes + size / (128 * MIB) * PAGE_SIZE
                );
            }
        }
        assert_eq!(
            rep,
            NamespaceReport::block(
                &decided_block(&p),
                &written_block(&p).layout(&p.namespace).unwrap()
            )
        );
    }
    let ns = MemNs::new(GIB);
    let p = ok(&req(Memmap::Pmem, FormatPolicy::Init, GIB), &ns);
    assert_eq!(
        p.report.to_string(),
        "fsdax, memmap in pmem (16 MiB of struct pages: 0 bytes of guest RAM, 18424 KiB device \
         reserve), align 2M, data at offset 0x1200000, capacity 1006 MiB"
    );
}

// ---------------------------------------------------------------------------------------------
// apply: verification and restore
// ---------------------------------------------------------------------------------------------

#[test]
fn apply_restores_the_old_bytes_when_verification_fails() {
    let ns = MemNs::new(GIB);
    ns.put(INFO_BLOCK_OFFSET + 3000, &[0xaa]);
    let p = ok(&req(Memmap::Ram, FormatPolicy::Force, GIB), &ns);
    let old = ns.block();
    ns.corrupt_writes.set(1);
    let e = apply(&p, &ns).unwrap_err();
    assert!(!e.is_usage());
    assert_eq!(
        e.to_string(),
        "the info block read back after writing differs from what was written at offset 0x1000; \
         the old bytes at [0x1000, 0x2000) were restored"
    );
    assert_eq!(ns.block(), old);
    assert_eq!(ns.writes.get(), 2);

    // A failing write: restored too (the old bytes are written back).
    ns.fail_writes.set(1);
    let e = apply(&p, &ns).unwrap_err();
    assert_eq!(
        e.to_string(),
        "writing the info block at offset 0x1000: Input/output error (os error 5); the old bytes \
         at [0x1000, 0x2000) were restored"
    );
    assert_eq!(ns.block(), old);

    // Both fail.
    ns.fail_writes.set(2);
    let e = apply(&p, &ns).unwrap_err();
    assert!(matches!(e, FormatError::RestoreFailed { .. }), "{e}");
    assert!(e.to_string().ends_with("may be damaged"), "{e}");

    // Then it works.
    apply_and_check(&p, &ns);
}

#[test]
fn apply_refuses_when_the_bytes_changed_since_planning() {
    let ns = MemNs::new(GIB);
    let p = ok(&req(Memmap::Ram, FormatPolicy::Init, GIB), &ns);
    ns.put(INFO_BLOCK_OFFSET + 17, &[1]);
    let e = apply(&p, &ns).unwrap_err();
    assert!(matches!(e, FormatError::Changed));
    assert!(!e.is_usage());
    assert_eq!(ns.writes.get(), 0);
}

#[test]
fn apply_verifies_the_guest_accepts_the_block() {
    // A plan whose block is not valid for its namespace (tampered with) is not left behind.
    let ns = MemNs::new(GIB);
    let mut p = ok(&req(Memmap::Ram, FormatPolicy::Init, GIB), &ns);
    p.namespace.phys_addr += MIB;
    let e = apply(&p, &ns).unwrap_err();
    assert_contains(
        &e.to_string(),
        &["is not one the guest accepts", "were restored"],
    );
    assert_eq!(ns.block(), [0; 4096]);
}

// ---------------------------------------------------------------------------------------------
// Real backings
// ---------------------------------------------------------------------------------------------

fn open(path: &Path, size: Option<u64>, readonly: bool) -> Backing {
    Backing::open(&BackingRequest {
        path: path.to_path_buf(),
        size,
        readonly,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn file_digest_outside_block(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut h = DefaultHasher::new();
    h.write(&bytes[..INFO_BLOCK_OFFSET as usize]);
    h.write(&bytes[INFO_BLOCK_OFFSET as usize + INFO_BLOCK_SIZE..]);
    h.finish()
}

fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap();
    let mut v = vec![0; len];
    f.read_exact_at(&mut v, offset).unwrap();
    v
}

/// A 64 MiB sparse file with data past the area to format.
fn data_file(path: &Path) {
    let f = File::create(path).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(b"some user data", 40 * MIB).unwrap();
    f.write_all_at(&[0x5a; 4096], 64 * MIB - 4096).unwrap();
}

#[test]
fn file_init_writes_what_ndctl_writes_and_nothing_else() {
    require_ndctl();
    let dir = tempfile::tempdir().unwrap();
    for (mode, memmap) in [
        (NsMode::Fsdax, Memmap::Pmem),
        (NsMode::Fsdax, Memmap::Ram),
        (NsMode::Devdax, Memmap::Pmem),
        (NsMode::Devdax, Memmap::Ram),
    ] {
        let ours = dir.path().join(format!("ours-{mode}-{memmap}.img"));
        let theirs = dir.path().join(format!("ndctl-{mode}-{memmap}.img"));
        data_file(&ours);
        data_file(&theirs);
        let before = file_digest_outside_block(&ours);

        let backing = open(&ours, None, false);
        let mapping = backing.map().unwrap();
        let access = BackingAccess::new(&backing, &mapping);
        let r = with_mode(req(memmap, FormatPolicy::Init, 64 * MIB), mode);
        let p = ok(&r, &MemNs::new(64 * MIB)); // the same plan as on a blank namespace ...
        let p2 = plan(&r, &access).unwrap(); // ... as on the file
        assert_eq!(p2, p);
        apply(&p2, &access).unwrap();
        // The guest's view (the mapping) sees the block at once.
        // SAFETY: the mapping is live and 64 MiB long; nothing else writes it.
        let seen = unsafe { std::slice::from_raw_parts(mapping.as_ptr().add(4096), 4096) };
        assert_eq!(seen, &p.action.bytes().unwrap()[..]);
        drop(mapping);
        drop(backing);

        assert_eq!(
            file_digest_outside_block(&ours),
            before,
            "only [4096, 8192) changed"
        );
        assert_eq!(
            file_bytes(&ours, INFO_BLOCK_OFFSET, 4096),
            written_block(&p).to_bytes().to_vec()
        );

        let ndctl_map = if memmap == Memmap::Ram { "mem" } else { "dev" };
        let out = Command::new("ndctl")
            .arg("write-infoblock")
            .arg("-o")
            .arg(&theirs)
            .args(["--mode", &mode.to_string(), "--map", ndctl_map])
            .args(["--align", "2M", "--size", &(64 * MIB).to_string()])
            .args(["--offset", &format!("{BASE:#x}")])
            .args(["--uuid", UUID_STR])
            .args(["--parent-uuid", "00000000-0000-0000-0000-000000000000"])
            .output()
            .expect("run ndctl write-infoblock");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
            "{mode} {memmap}: our file differs from ndctl's"
        );
    }
}

#[test]
fn file_with_other_data_is_refused_or_exposed_raw_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rootfs.img");
    let f = File::create(&path).unwrap();
    f.set_len(256 * MIB).unwrap();
    f.write_all_at(&[0x53, 0xef], 0x438).unwrap(); // ext4 magic
    f.write_all_at(&[1; 8192], 3 * MIB).unwrap();
    drop(f);
    let before = std::fs::read(&path).unwrap();
    let backing = open(&path, None, false);
    let mapping = backing.map().unwrap();
    let access = BackingAccess::new(&backing, &mapping);
    assert_eq!(access.first_nonzero(0..256 * MIB).unwrap(), Some(0x438));
    assert_eq!(
        access.first_nonzero(0x43a..256 * MIB).unwrap(),
        Some(3 * MIB)
    );
    assert_eq!(access.first_nonzero(0x43a..3 * MIB).unwrap(), None);
    assert_eq!(
        access.first_nonzero(3 * MIB + 8192..256 * MIB).unwrap(),
        None
    );
    assert_eq!(access.first_nonzero(5..5).unwrap(), None);
    assert!(access.first_nonzero(0..256 * MIB + 1).is_err());

    let e = plan(&req(Memmap::Pmem, FormatPolicy::Init, 256 * MIB), &access).unwrap_err();
    assert_contains(&e.to_string(), &["bytes at offset 0x438 are not blank"]);
    let p = plan(&req(Memmap::Auto, FormatPolicy::Init, 256 * MIB), &access).unwrap();
    assert_eq!(p.decision, Decision::Raw);
    apply(&p, &access).unwrap();
    drop(mapping);
    drop(backing);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn file_created_this_run_is_formatted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.img");
    let backing = open(&path, Some(128 * MIB), false);
    assert_eq!(backing.kind(), &BackingKind::File { created: true });
    let mapping = backing.map().unwrap();
    let access = BackingAccess::new(&backing, &mapping);
    let mut r = req(Memmap::Auto, FormatPolicy::Init, 128 * MIB);
    r.created_this_run = true;
    let p = plan(&r, &access).unwrap();
    apply(&p, &access).unwrap();
    // Read back through a fresh open, as the next run would.
    drop(mapping);
    drop(backing);
    let backing = open(&path, None, true);
    let mapping = backing.map().unwrap();
    let access = BackingAccess::new(&backing, &mapping);
    let mut r = req(Memmap::Auto, FormatPolicy::Keep, 128 * MIB);
    r.readonly = true;
    let again = plan(&r, &access).unwrap();
    assert_eq!(again.decision, p.decision);
    assert_eq!(again.action, WriteAction::None);
    // A read-only backing refuses writes outright.
    let e = access.write_durably(4096, &[0; 16]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
}

#[test]
fn sparse_64g_file_plans_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.img");
    let f = File::create(&path).unwrap();
    f.set_len(64 * GIB).unwrap();
    // Data far past the area to format, so SEEK_DATA has something to skip to.
    f.write_all_at(&[0x77; 4096], 63 * GIB).unwrap();
    drop(f);
    let backing = open(&path, None, false);
    let mapping = backing.map().unwrap();
    let access = BackingAccess::new(&backing, &mapping);
    let mut r = req(Memmap::Pmem, FormatPolicy::Init, 64 * GIB);
    r.guest_ram = GIB;
    let start = Instant::now();
    let p = plan(&r, &access).unwrap();
    let elapsed = start.elapsed();
    println!(
        "planning a 64 GiB sparse file (checked [0, {:#x})): {elapsed:?}",
        written_block(&p).dataoff
    );
    assert!(written_block(&p).dataoff > GIB);
    let start = Instant::now();
    assert_eq!(access.first_nonzero(0..64 * GIB).unwrap(), Some(63 * GIB));
    println!("scanning all 64 GiB: {:?}", start.elapsed());
    apply(&p, &access).unwrap();
    let start = Instant::now();
    let p = plan(
        &with_mode(
            req(Memmap::Auto, FormatPolicy::Init, 64 * GIB),
            NsMode::Fsdax,
        ),
        &access,
    )
    .unwrap();
    println!("planning it again (auto keeps it): {:?}", start.elapsed());
    assert_eq!(p.action, WriteAction::None);
    assert_eq!(p.report.memmap, MemmapPlacement::Pmem);
}

#[test]
fn mapping_path_writes_flushes_and_reads_through_the_mapping() {
    // The device-dax path (memcpy into the mapping, clflush, sfence; reads from the mapping),
    // exercised on a regular file mapping, which behaves the same for these operations.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dax-like.img");
    data_file(&path);
    let before = file_digest_outside_block(&path);
    let backing = open(&path, None, false);
    let mapping = backing.map().unwrap();
    let mut access = BackingAccess::new(&backing, &mapping);
    access.via_mapping = true;
    assert_eq!(access.first_nonzero(0..64 * MIB).unwrap(), Some(40 * MIB));
    assert_eq!(access.first_nonzero(0..40 * MIB).unwrap(), None);
    let p = plan(
        &with_mode(
            req(Memmap::Ram, FormatPolicy::Init, 64 * MIB),
            NsMode::Devdax,
        ),
        &access,
    )
    .unwrap();
    apply(&p, &access).unwrap();
    mapping.flush().unwrap();
    drop(mapping);
    drop(backing);
    assert_eq!(file_digest_outside_block(&path), before);
    assert_eq!(
        file_bytes(&path, INFO_BLOCK_OFFSET, 4096),
        written_block(&p).to_bytes().to_vec()
    );
}

#[test]
fn random_uuids_are_version_4() {
    let a = random_uuid().unwrap();
    let b = random_uuid().unwrap();
    assert_ne!(a, b);
    assert_eq!(a[6] >> 4, 4);
    assert_eq!(a[8] >> 6, 0b10);
}

// ---------------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------------

const LABELLED: LabelState = LabelState::Initialised {
    labels_in_use: 2,
    slots: 510,
};

#[test]
fn an_initialised_label_area_means_no_write_whatever_the_device_holds() {
    for format in [FormatPolicy::Init, FormatPolicy::Keep] {
        // A blank region that init would format, and one with other data.
        for data in [false, true] {
            let ns = MemNs::new(GIB);
            if data {
                ns.put(2 * MIB, &[0xab; 64]);
            }
            let mut r = req(Memmap::Auto, format, GIB);
            r.labels = Some(LABELLED);
            let p = ok(&r, &ns);
            assert_eq!(p.decision, Decision::Labels);
            assert_eq!(p.action, WriteAction::None);
            assert_eq!(p.report.label_namespaces, Some(2));
            assert_eq!(p.report.capacity, GIB);
            assert_contains(
                &p.report.to_string(),
                &["labelled region of 1 GiB", "2 namespace labels"],
            );
            assert_contains(
                &p.notes.join("\n"),
                &["2 of 510 label slots", "nothing is written"],
            );
            apply(&p, &ns).unwrap();
            assert_eq!(ns.writes.get(), 0);
        }
    }
}

#[test]
fn an_initialised_label_area_refuses_what_needs_a_write() {
    let ns = MemNs::new(GIB);
    let mut cases = vec![
        (req(Memmap::Auto, FormatPolicy::Force, GIB), "format=force"),
        (req(Memmap::Ram, FormatPolicy::Init, GIB), "memmap=ram"),
        (req(Memmap::None, FormatPolicy::Keep, GIB), "memmap=none"),
        (
            with_mode(req(Memmap::Auto, FormatPolicy::Init, GIB), NsMode::Devdax),
            "mode=devdax",
        ),
        (
            with_align(req(Memmap::Auto, FormatPolicy::Init, GIB), GIB),
            "align=1G",
        ),
    ];
    for (r, asked) in &mut cases {
        r.labels = Some(LABELLED);
        assert_contains(
            &err(r, &ns),
            &[
                asked,
                "the label area holds namespace labels",
                "ndctl destroy-namespace",
            ],
        );
    }
    assert_eq!(ns.writes.get(), 0);
}

#[test]
fn an_uninitialised_label_area_leaves_the_label_less_rules() {
    let ns = MemNs::new(GIB);
    let mut r = req(Memmap::Ram, FormatPolicy::Init, GIB);
    r.labels = Some(LabelState::Uninitialised);
    let p = ok(&r, &ns);
    assert!(matches!(p.decision, Decision::Block(_)));
    assert_contains(&p.notes.join("\n"), &["label area not initialised"]);
}
