//! Step 4 of a run: give each namespace its personality before the guest starts.
//!
//! A label-less NFIT namespace is raw to the guest (no struct pages, no DAX) until namespace
//! bytes [4096, 8192) hold a valid pfn/dax info block ([`super::infoblock`]); the guest's
//! `nd_pmem_probe()` autodetects one and then gives the guest `/dev/pmemN` with DAX (fsdax) or
//! `/dev/daxN.M` (devdax), with the memmap in guest RAM or in a reserve at the start of the
//! device (`nd_pfn_validate()` and `nd_pfn_init()` in `drivers/nvdimm/pfn_devs.c`,
//! `pmem_attach_disk()` in `drivers/nvdimm/pmem.c`). This module decides, per device, what the guest should
//! get and whether that needs a write, and performs that one 4 KiB write safely.
//!
//! * [`plan`] reads the 4 KiB at [`INFO_BLOCK_OFFSET`] (and, when it might write there, checks
//!   that the area the new layout would take over is blank) and applies the rules below. It never
//!   writes; every refusal is a [`FormatError`] whose `Display` is one line naming what is there
//!   and what was asked.
//! * [`apply`] performs the plan's write, if any: it writes, flushes, reads back and verifies the
//!   block, and restores the old bytes if any of that fails.
//! * [`BackingAccess`] (in [`super::namespace_io`]) is the [`NamespaceAccess`] over an opened
//!   [`Backing`](super::backing::Backing) and its [`PmemMapping`](super::mapping::PmemMapping):
//!   `pread`/`pwrite` + `fdatasync` for files and block devices (a sparse file skips holes with
//!   `SEEK_DATA`), the mapping with cache-line flushes for device-dax.
//! * The values of `memmap=`, `mode=`, `align=` and `format=` are parsed in [`super::options`];
//!   the outcome is a typed [`NamespaceReport`] ([`super::report`]).
//!
//! # Rules
//!
//! `--pmem ...,memmap=ram|pmem|none|auto[,mode=fsdax|devdax|raw][,align=4K|2M|1G][,format=keep|init|force]`
//!
//! What the device holds at offset 4096 is one of: a block the guest would use on this namespace
//! ("a valid block"); a pfn/dax signature the guest would refuse outright, so the namespace gets
//! no device at all (e.g. a block laid out for another guest physical address: `dataoff` and
//! `end_trunc` depend on the base when `align=1G`); or nothing the guest acts on (no signature,
//! or a bad checksum, which the guest ignores).
//!
//! * `memmap=none` or `mode=raw`: no info block, a raw namespace. The guest would still detect a
//!   valid (or refused) block, so such a block is an error under `keep`/`init`, and is erased
//!   (4 KiB of zeros) under `force`.
//! * `memmap=ram|pmem` (mode default fsdax, align default 2M). "Matches" means same mode, same
//!   memmap location, and same alignment when `align=` is given.
//!   * `format=keep` never writes: a matching valid block is used; anything else is an error.
//!   * `format=init` (default): a matching valid block is used; a different or refused block is an
//!     error; with no block the new block is written only when `[0, dataoff)` of the new layout
//!     (the block, the memmap reserve and the alignment padding: what the guest stops showing as
//!     data) is all zeros, or the monitor created the file in this run.
//!   * `format=force`: writes the requested block (and notes what it replaces) unless the device
//!     already holds exactly that block (same fields; the uuid is kept).
//! * `memmap=auto` (default): a valid block is kept whatever its mode, memmap and align (unless
//!   `format=force`). Otherwise the memmap goes in RAM while its RAM cost is at most
//!   1/[`AUTO_RAM_FRACTION_DENOMINATOR`] of guest RAM, else in the device; a blank device is
//!   formatted that way (under `init`/`force`); one holding other data is exposed raw with a note
//!   saying how to format it (`force` formats it anyway). A device the guest would refuse is an
//!   error (it can be neither kept nor hidden). `auto` also exposes raw, with a note, a blank
//!   device it may not write (`format=keep`, `readonly=on`) and a device too small for any info
//!   block (when `align=` is not given).
//! * `readonly=on`: any needed write is an error; and a block with the memmap in the device is an
//!   error too, because the guest writes its struct pages into the device's reserve, which a
//!   read-only mapping drops.
//!
//! # Labels
//!
//! With `labels=on` ([`super::labels`]) the guest lays out its own namespaces once the label
//! area is initialised (`ndctl init-labels`, `ndctl create-namespace`), each with its info block
//! at its own start. So:
//!
//! * label area not initialised: the guest sees one label-less namespace over the region, and
//!   every rule above applies to it unchanged (a note says so);
//! * label area initialised (a valid index block): the monitor writes nothing. `memmap=auto`
//!   (the default) with `format=init` or `keep` keeps what the labels and the namespaces' own
//!   info blocks say, and the report says the labels decide; `format=force`, and any explicit
//!   `memmap=`, `mode=` or `align=`, are refused, because they ask for a write the labels forbid
//!   or for a layout the guest would not use.
//!
//! Every number the guest sees is in [`NamespaceReport`].

use std::fs::File;
use std::io::{self, Read};

use thiserror::Error;

use super::backing::Bytes;
use super::infoblock::{
    GuestOutcome, InfoBlock, InfoBlockError, InfoBlockRequest, InfoMode, MemmapLocation, Namespace,
    DEFAULT_ALIGN, INFO_BLOCK_OFFSET, INFO_BLOCK_RESERVE, INFO_BLOCK_SIZE, SUPPORTED_ALIGNMENTS,
};
use super::labels::LabelState;
use super::options::bad_value;

// Re-exported where callers have always found them.
pub use super::namespace_io::{BackingAccess, NamespaceAccess};
pub use super::options::{parse_align, AlignName, FormatPolicy, Memmap, NsMode, OptionValueError};
pub use super::report::{MemmapPlacement, NamespaceReport};

/// `memmap=auto` puts the memmap in guest RAM while that costs at most `1 /
/// AUTO_RAM_FRACTION_DENOMINATOR` of the guest's RAM (RAM cost as
/// [`MemmapFootprint::ram_total`](super::infoblock::MemmapFootprint::ram_total) of the
/// `memmap=ram` layout: struct pages plus vmemmap page tables), and in the device otherwise. With
/// 64-byte struct pages per 4 KiB page an fsdax memmap costs 1/64 of the device, so with 16 the
/// memmap goes to the device once the device is larger than 4 times guest RAM. A devdax namespace
/// with 2 MiB alignment has a deduplicated memmap in RAM (8 KiB per 2 MiB page, 1/256 of the
/// device), so it stays in RAM up to about 16 times guest RAM; with 1 GiB alignment practically
/// always.
pub const AUTO_RAM_FRACTION_DENOMINATOR: u64 = 16;

/// `BTT_SIG` (`drivers/nvdimm/btt.h`, compared over `BTT_SIG_LEN` = 16 bytes): a BTT arena at
/// offset 4096, which the guest probes before pfn/dax. Only used to name what a device holds.
const BTT_SIG: [u8; 16] = *b"BTT_ARENA_INFO\0\0";

/// Everything the format step needs to know about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatRequest {
    pub memmap: Memmap,
    /// `mode=`, `None` when not given: fsdax for a block to write; under `memmap=auto` an existing
    /// block is kept whatever its mode, and a given mode that differs is only noted.
    pub mode: Option<NsMode>,
    /// `align=` in bytes (one of [`SUPPORTED_ALIGNMENTS`]), `None` when not given: [`DEFAULT_ALIGN`]
    /// (2 MiB) for a block to write, and an existing block matches whatever its alignment.
    pub align: Option<u64>,
    pub format: FormatPolicy,
    /// Guest physical address of namespace offset 0 (the window the layout gives the device).
    pub phys_addr: u64,
    /// Namespace size: the backing's size.
    pub size: u64,
    /// Guest RAM in bytes, for `memmap=auto`.
    pub guest_ram: u64,
    /// `readonly=on`.
    pub readonly: bool,
    /// The monitor created the backing file in this run (it is all zeros).
    pub created_this_run: bool,
    /// Identity of a block written by this run (see [`random_uuid`]); an existing block keeps its
    /// own.
    pub uuid: [u8; 16],
    /// `labels=on`: what the DIMM's label area holds ([`super::labels::label_state`]); `None`
    /// with `labels=off`. An initialised label area means the guest's namespaces are what its
    /// labels say: see "Labels" in the module docs.
    pub labels: Option<LabelState>,
}

/// A random (version 4) uuid for a new info block, as the kernel and ndctl make them.
pub fn random_uuid() -> io::Result<[u8; 16]> {
    let mut u = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

// ---------------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------------

/// What the guest will get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No info block the guest would act on: a raw namespace.
    Raw,
    /// This block (existing, or written by [`apply`]).
    Block(InfoBlock),
    /// The label area decides the namespaces (the guest's, with `ndctl create-namespace`); the
    /// monitor writes nothing.
    Labels,
}

/// The one write a plan may need, at [`INFO_BLOCK_OFFSET`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAction {
    None,
    Write {
        /// The block to write; `None` erases (4 KiB of zeros) a block `memmap=none` must hide.
        block: Option<InfoBlock>,
        /// What the write replaces, for `format=force` (a block, or non-blank bytes), in words.
        replaces: Option<String>,
        /// The 4 KiB that were at [`INFO_BLOCK_OFFSET`] when planned: [`apply`] refuses to write if
        /// they have changed since, and puts them back if the write fails.
        old: Box<[u8; INFO_BLOCK_SIZE]>,
    },
}

impl WriteAction {
    /// The bytes to write, if any.
    pub fn bytes(&self) -> Option<[u8; INFO_BLOCK_SIZE]> {
        match self {
            WriteAction::None => None,
            WriteAction::Write { block, .. } => {
                Some(block.map_or([0; INFO_BLOCK_SIZE], |b| b.to_bytes()))
            }
        }
    }
}

/// The outcome of [`plan`]: what the guest gets, the write that needs (if any), and log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The namespace the decision is for (an io namespace at the request's address and size).
    pub namespace: Namespace,
    pub decision: Decision,
    pub action: WriteAction,
    pub report: NamespaceReport,
    /// Lines to log: auto's numbers, what force replaces, how to format a device exposed raw.
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a device cannot be formatted as asked. `Display` is one line; the caller prefixes the
/// device. All variants are usage errors (exit status 2, backing unchanged) except the I/O ones,
/// see [`FormatError::is_usage`].
#[derive(Debug, Error)]
pub enum FormatError {
    #[error(transparent)]
    BadValue(#[from] OptionValueError),

    #[error("memmap={memmap} and mode={mode} conflict: {why}")]
    Conflict {
        memmap: Memmap,
        mode: NsMode,
        why: &'static str,
    },

    #[error(
        "align={} applies only to fsdax and devdax; a raw namespace (memmap=none or mode=raw) has \
         no mapping alignment: drop align=", AlignName(*.align)
    )]
    AlignOnRaw { align: u64 },

    #[error(
        "cannot lay out {asked} on this device of {} at guest physical address {phys_addr:#x}: \
         {reason}", Bytes(*.size)
    )]
    Layout {
        asked: String,
        size: u64,
        phys_addr: u64,
        reason: String,
    },

    #[error("format=keep: the device has {found}; use format=init to write one")]
    KeepNoBlock { found: String },

    #[error(
        "format=keep: the device has {found}, but {asked} was asked; ask for what is there, or use \
         format=force to replace it"
    )]
    KeepMismatch { found: String, asked: String },

    #[error(
        "format=init: the device has {found}, but {asked} was asked; format=init never replaces an \
         info block: ask for what is there, or use format=force to replace it"
    )]
    InitMismatch { found: String, asked: String },

    #[error(
        "format=init: bytes at offset {offset:#x} are not blank ({found}); format=init writes only \
         when [0, {end:#x}), which the info block and its reserve take over, is all zeros: use \
         format=force to overwrite it, or another backing"
    )]
    NotBlank {
        offset: u64,
        end: u64,
        found: String,
    },

    #[error(
        "memmap=none with format={format}: the device has {found}, which the guest detects even in \
         a raw namespace; use format=force to erase it, or memmap=ram|pmem|auto to use it"
    )]
    BlockHidesRaw { found: String, format: FormatPolicy },

    #[error(
        "memmap=auto: the device has {found}, so the guest would give this namespace no device at \
         all; use memmap=ram|pmem with format=force to rewrite it, or memmap=none with \
         format=force to erase it"
    )]
    AutoRefusedBlock { found: String },

    #[error(
        "readonly=on, but {need}; drop readonly=on, or use format=keep with a device formatted as \
         asked"
    )]
    Readonly { need: String },

    #[error(
        "{asked}: the label area holds namespace labels ({state}), so the guest's namespaces are \
         what the labels say and an info block written at the region's start would land in the \
         first labelled namespace; drop {asked} (memmap=auto with format=init or keep leaves \
         the labels and their namespaces as they are), or destroy the namespaces in the guest \
         (ndctl destroy-namespace, ndctl init-labels --force)"
    )]
    Labelled { asked: String, state: LabelState },

    #[error(
        "readonly=on with {found}: the guest writes its struct pages into the device's memmap \
         reserve [0x2000, {dataoff:#x}), which a read-only mapping drops; use a device formatted \
         with memmap=ram, or drop readonly=on"
    )]
    ReadonlyDeviceMemmap { found: String, dataoff: u64 },

    // --- Host failures (not usage errors) ---
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error(
        "the info block area [0x1000, 0x2000) changed between reading and writing it (another \
         program is writing the backing?); nothing was written"
    )]
    Changed,

    #[error("the info block read back after writing {reason}")]
    Verify { reason: String },

    #[error("{error}; the old bytes at [0x1000, 0x2000) were restored")]
    Restored { error: Box<FormatError> },

    #[error(
        "{error}; restoring the old bytes failed too ({restore}): bytes [0x1000, 0x2000) of the \
         backing may be damaged"
    )]
    RestoreFailed {
        error: Box<FormatError>,
        restore: Box<FormatError>,
    },
}

impl FormatError {
    /// True for mistakes in what the user asked for (exit status 2, backing unchanged); false
    /// for host failures while reading or writing the backing.
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            FormatError::Io { .. }
                | FormatError::Changed
                | FormatError::Verify { .. }
                | FormatError::Restored { .. }
                | FormatError::RestoreFailed { .. }
        )
    }
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> FormatError {
    move |source| FormatError::Io { op, source }
}

// ---------------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------------

/// What the device holds at [`INFO_BLOCK_OFFSET`], as the guest would take it.
#[derive(Debug, Clone)]
enum Found {
    /// A block the guest uses on this namespace.
    Valid(InfoBlock),
    /// A pfn/dax signature whose block the guest refuses in a way that leaves the namespace with
    /// no device at all (`-EOPNOTSUPP` from `nd_pfn_validate()`, or a failure when enabling).
    Refused {
        mode: InfoMode,
        error: InfoBlockError,
    },
    /// A pfn/dax signature the guest ignores (bad checksum, foreign parent uuid, bad mode).
    Ignored {
        mode: InfoMode,
        error: InfoBlockError,
    },
    /// A BTT arena signature (the guest may attach the namespace as a BTT sector device).
    Btt,
    /// Nothing the guest looks at.
    Nothing,
}

impl Found {
    fn classify(bytes: &[u8; INFO_BLOCK_SIZE], ns: &Namespace) -> Found {
        let mode = if bytes[..16] == *InfoMode::Fsdax.signature() {
            InfoMode::Fsdax
        } else if bytes[..16] == *InfoMode::Devdax.signature() {
            InfoMode::Devdax
        } else if bytes[..16] == BTT_SIG {
            return Found::Btt;
        } else {
            return Found::Nothing;
        };
        match InfoBlock::parse_for(bytes, ns) {
            Ok(b) => Found::Valid(b),
            Err(error) => match error.guest_outcome() {
                Some(GuestOutcome::RawNamespace) => Found::Ignored { mode, error },
                _ => Found::Refused { mode, error },
            },
        }
    }

    /// Whether the guest acts on it in a raw namespace (`memmap=none` cannot hide it).
    fn guest_detects(&self) -> bool {
        matches!(self, Found::Valid(_) | Found::Refused { .. })
    }

    fn describe(&self) -> String {
        match self {
            Found::Valid(b) => describe_block(b),
            Found::Refused { mode, error } => {
                let hint = if matches!(
                    error,
                    InfoBlockError::BadOffset { .. }
                        | InfoBlockError::ResourceStartMisaligned { .. }
                        | InfoBlockError::ResourceEndMisaligned { .. }
                        | InfoBlockError::DaxRegionMisaligned { .. }
                ) {
                    "; was it written for another guest physical address?"
                } else {
                    ""
                };
                format!(
                    "{} info block the guest refuses ({error}{hint})",
                    article(*mode)
                )
            }
            Found::Ignored { mode, error } => format!(
                "no info block the guest uses ({} signature the guest ignores: {error})",
                article(*mode)
            ),
            Found::Btt => "a BTT arena (BTT_ARENA_INFO signature) at offset 0x1000".to_string(),
            Found::Nothing => "no info block".to_string(),
        }
    }
}

fn article(mode: InfoMode) -> &'static str {
    match mode {
        InfoMode::Fsdax => "an fsdax",
        InfoMode::Devdax => "a devdax",
    }
}

/// "an info block for mode=fsdax,memmap=pmem,align=2M (data offset 0x1200000)".
fn describe_block(b: &InfoBlock) -> String {
    format!(
        "an info block for mode={},memmap={},align={} (data offset {:#x})",
        b.mode,
        b.memmap,
        AlignName(b.align()),
        b.dataoff
    )
}

fn ns_mode(m: InfoMode) -> NsMode {
    match m {
        InfoMode::Fsdax => NsMode::Fsdax,
        InfoMode::Devdax => NsMode::Devdax,
    }
}

/// What the options ask for, after the conflicts between them are ruled out.
#[derive(Debug, Clone, Copy)]
enum Target {
    Raw,
    Block(InfoMode, MemmapLocation),
    Auto(InfoMode),
}

fn target(req: &FormatRequest) -> Result<Target, FormatError> {
    let info_mode = |m: Option<NsMode>| match m {
        Some(NsMode::Devdax) => InfoMode::Devdax,
        _ => InfoMode::Fsdax,
    };
    let t = match (req.memmap, req.mode) {
        (Memmap::None, None | Some(NsMode::Raw)) | (Memmap::Auto, Some(NsMode::Raw)) => Target::Raw,
        (Memmap::None, Some(mode)) => {
            return Err(FormatError::Conflict {
                memmap: req.memmap,
                mode,
                why: "memmap=none gives a raw namespace, without an info block; drop mode= or use \
                      memmap=ram|pmem|auto",
            })
        }
        (Memmap::Ram | Memmap::Pmem, Some(NsMode::Raw)) => {
            return Err(FormatError::Conflict {
                memmap: req.memmap,
                mode: NsMode::Raw,
                why: "mode=raw gives a raw namespace, without a memmap; drop mode=raw or use \
                      memmap=none",
            })
        }
        (Memmap::Ram, m) => Target::Block(info_mode(m), MemmapLocation::Ram),
        (Memmap::Pmem, m) => Target::Block(info_mode(m), MemmapLocation::Pmem),
        (Memmap::Auto, m) => Target::Auto(info_mode(m)),
    };
    if let Some(align) = req.align {
        if matches!(t, Target::Raw) {
            return Err(FormatError::AlignOnRaw { align });
        }
        if !SUPPORTED_ALIGNMENTS.contains(&align) {
            return Err(bad_value("align", &format!("{align:#x}"), "4K, 2M or 1G").into());
        }
    }
    Ok(t)
}

/// Decides what the guest gets and whether that needs a write; reads, never writes.
pub fn plan(req: &FormatRequest, ns: &dyn NamespaceAccess) -> Result<Plan, FormatError> {
    if let Some(state @ LabelState::Initialised { labels_in_use, .. }) = req.labels {
        return plan_labelled(req, state, labels_in_use);
    }
    let target = target(req)?;
    let namespace = Namespace::io(req.phys_addr, req.size);
    let mut old = Box::new([0u8; INFO_BLOCK_SIZE]);
    if req.size >= INFO_BLOCK_RESERVE {
        ns.read(INFO_BLOCK_OFFSET, &mut old[..])
            .map_err(io_err("reading the info block at offset 0x1000"))?;
    }
    let found = Found::classify(&old, &namespace);
    let mut p = Planner {
        req,
        ns,
        namespace,
        found,
        old,
        notes: Vec::new(),
    };
    let (decision, action) = match target {
        Target::Raw => p.raw()?,
        Target::Block(mode, memmap) => p.block(mode, memmap)?,
        Target::Auto(mode) => p.auto(mode)?,
    };
    if let Some(LabelState::Uninitialised) = req.labels {
        p.notes.push(
            "labels=on, label area not initialised: the guest sees one label-less namespace \
             over the region, as below; `ndctl init-labels` in the guest (region disabled) \
             starts labelling it"
                .to_string(),
        );
    }
    let report = match &decision {
        Decision::Raw | Decision::Labels => NamespaceReport::raw(req.size),
        Decision::Block(b) => {
            if req.readonly && b.memmap == MemmapLocation::Pmem {
                return Err(FormatError::ReadonlyDeviceMemmap {
                    found: describe_block(b),
                    dataoff: b.dataoff,
                });
            }
            let layout = b.layout(&namespace).map_err(|e| p.layout_error(b, e))?;
            NamespaceReport::block(b, &layout)
        }
    };
    Ok(Plan {
        namespace,
        decision,
        action,
        report,
        notes: p.notes,
    })
}

/// A DIMM whose label area holds a valid index: write nothing, and refuse what would need a
/// write or would not apply (see "Labels" in the module docs).
fn plan_labelled(
    req: &FormatRequest,
    state: LabelState,
    labels_in_use: u32,
) -> Result<Plan, FormatError> {
    let asked = if req.format == FormatPolicy::Force {
        Some("format=force".to_string())
    } else if req.memmap != Memmap::Auto {
        Some(format!("memmap={}", req.memmap))
    } else if let Some(mode) = req.mode {
        Some(format!("mode={mode}"))
    } else {
        req.align.map(|a| format!("align={}", AlignName(a)))
    };
    if let Some(asked) = asked {
        return Err(FormatError::Labelled { asked, state });
    }
    Ok(Plan {
        namespace: Namespace::io(req.phys_addr, req.size),
        decision: Decision::Labels,
        action: WriteAction::None,
        report: NamespaceReport::labelled(req.size, labels_in_use),
        notes: vec![format!(
            "{state}: the guest's namespaces are what the labels say; nothing is written"
        )],
    })
}

struct Planner<'a> {
    req: &'a FormatRequest,
    ns: &'a dyn NamespaceAccess,
    namespace: Namespace,
    found: Found,
    old: Box<[u8; INFO_BLOCK_SIZE]>,
    notes: Vec<String>,
}

type Outcome = (Decision, WriteAction);

impl Planner<'_> {
    fn keep(&mut self, b: InfoBlock, note: String) -> Result<Outcome, FormatError> {
        self.notes.push(note);
        Ok((Decision::Block(b), WriteAction::None))
    }

    fn raw_as_is(&mut self, note: Option<String>) -> Result<Outcome, FormatError> {
        self.notes.extend(note);
        Ok((Decision::Raw, WriteAction::None))
    }

    /// A write of `block` (or an erase), refused under `readonly=on`.
    fn write(
        &mut self,
        block: Option<InfoBlock>,
        replaces: Option<String>,
    ) -> Result<Outcome, FormatError> {
        let what = match &block {
            Some(b) => describe_block(b),
            None => "4 KiB of zeros".to_string(),
        };
        if self.req.readonly {
            let need = match &replaces {
                Some(r) => format!(
                    "format={} needs to write {what} at offset 0x1000 over {r}",
                    self.req.format
                ),
                None => format!(
                    "format={} needs to write {what} at offset 0x1000",
                    self.req.format
                ),
            };
            return Err(FormatError::Readonly { need });
        }
        self.notes.push(match &replaces {
            Some(r) => format!("format=force: writing {what} at offset 0x1000, replacing {r}"),
            None => format!("writing {what} at offset 0x1000"),
        });
        let decision = block.map_or(Decision::Raw, Decision::Block);
        Ok((
            decision,
            WriteAction::Write {
                block,
                replaces,
                old: self.old.clone(),
            },
        ))
    }

    /// First non-zero byte in `[0, end)`, `None` for a file created in this run.
    fn nonblank(&self, end: u64) -> Result<Option<u64>, FormatError> {
        if self.req.created_this_run {
            return Ok(None);
        }
        self.ns
            .first_nonzero(0..end.min(self.req.size))
            .map_err(io_err("checking that the area to format is blank"))
    }

    /// What non-blank bytes at `offset` are, for messages.
    fn nonblank_words(&self, offset: u64) -> String {
        match &self.found {
            Found::Nothing => format!("non-blank bytes from offset {offset:#x}"),
            f => format!("non-blank bytes from offset {offset:#x}: {}", f.describe()),
        }
    }

    fn asked(&self, mode: InfoMode, memmap: MemmapLocation) -> String {
        match self.req.align {
            Some(a) => format!("mode={mode},memmap={memmap},align={}", AlignName(a)),
            None => format!("mode={mode},memmap={memmap}"),
        }
    }

    fn compute(
        &self,
        mode: InfoMode,
        memmap: MemmapLocation,
        uuid: [u8; 16],
    ) -> Result<InfoBlock, InfoBlockError> {
        InfoBlock::compute(&InfoBlockRequest {
            mode,
            memmap,
            align: self.req.align.unwrap_or(DEFAULT_ALIGN),
            namespace: self.namespace,
            uuid,
        })
    }

    fn layout_error(&self, b: &InfoBlock, e: InfoBlockError) -> FormatError {
        self.layout_error_for(b.mode, b.memmap, b.align(), e)
    }

    /// A request the layout rules cannot satisfy, in the user's terms.
    fn layout_error_for(
        &self,
        mode: InfoMode,
        memmap: MemmapLocation,
        align: u64,
        e: InfoBlockError,
    ) -> FormatError {
        let reason = match e {
            InfoBlockError::AlignmentUnsatisfiable {
                dataoff, usable, ..
            } if align > DEFAULT_ALIGN => format!(
                "align={} needs the data to start on a {} boundary, at offset {dataoff:#x}, but \
                 the device has only {usable:#x} usable bytes; use align=2M or a larger device",
                AlignName(align),
                Bytes(align)
            ),
            InfoBlockError::AlignmentUnsatisfiable {
                dataoff, usable, ..
            } if memmap == MemmapLocation::Pmem => format!(
                "the device is too small for its own memmap reserve: the data would start at \
                 offset {dataoff:#x} but the device has only {usable:#x} usable bytes; use \
                 memmap=ram or a larger device"
            ),
            InfoBlockError::AlignmentUnsatisfiable {
                dataoff, usable, ..
            } => format!(
                "the device is too small for an info block: the data would start at offset \
                 {dataoff:#x} but the device has only {usable:#x} usable bytes; use memmap=none \
                 or a larger device"
            ),
            e => e.to_string(),
        };
        FormatError::Layout {
            asked: format!("mode={mode},memmap={memmap},align={}", AlignName(align)),
            size: self.req.size,
            phys_addr: self.req.phys_addr,
            reason,
        }
    }

    /// `memmap=none` / `mode=raw`.
    fn raw(&mut self) -> Result<Outcome, FormatError> {
        if self.found.guest_detects() {
            let found = self.found.describe();
            return match self.req.format {
                FormatPolicy::Force => self.write(None, Some(found)),
                format => Err(FormatError::BlockHidesRaw { found, format }),
            };
        }
        let note = match &self.found {
            Found::Btt => Some(
                "the device holds a BTT arena at offset 0x1000: the guest may attach it as a BTT \
                 sector device instead of a raw one"
                    .to_string(),
            ),
            Found::Ignored { .. } => Some(format!(
                "raw namespace; the device has {}",
                self.found.describe()
            )),
            _ => None,
        };
        self.raw_as_is(note)
    }

    /// `memmap=ram|pmem`.
    fn block(&mut self, mode: InfoMode, memmap: MemmapLocation) -> Result<Outcome, FormatError> {
        let align = self.req.align.unwrap_or(DEFAULT_ALIGN);
        let new = self
            .compute(mode, memmap, self.req.uuid)
            .map_err(|e| self.layout_error_for(mode, memmap, align, e))?;
        let asked = self.asked(mode, memmap);
        let found_words = self.found.describe();
        match (&self.found, self.req.format) {
            (Found::Valid(b), FormatPolicy::Force) => {
                let b = *b;
                if self.compute(mode, memmap, b.uuid).ok() == Some(b) {
                    self.keep(
                        b,
                        format!(
                            "format=force: the device already has {found_words}; not rewriting it"
                        ),
                    )
                } else {
                    self.write(Some(new), Some(found_words))
                }
            }
            (Found::Valid(b), policy) => {
                let b = *b;
                let matches = b.mode == mode
                    && b.memmap == memmap
                    && self.req.align.is_none_or(|a| a == b.align());
                match policy {
                    _ if matches => self.keep(
                        b,
                        format!("format={policy}: the device already has {found_words}; using it"),
                    ),
                    FormatPolicy::Keep => Err(FormatError::KeepMismatch {
                        found: found_words,
                        asked,
                    }),
                    _ => Err(FormatError::InitMismatch {
                        found: found_words,
                        asked,
                    }),
                }
            }
            (Found::Refused { .. }, FormatPolicy::Keep) => Err(FormatError::KeepMismatch {
                found: found_words,
                asked,
            }),
            (Found::Refused { .. }, FormatPolicy::Init) => Err(FormatError::InitMismatch {
                found: found_words,
                asked,
            }),
            (Found::Refused { .. }, FormatPolicy::Force) => {
                self.write(Some(new), Some(found_words))
            }
            (_, FormatPolicy::Keep) => Err(FormatError::KeepNoBlock { found: found_words }),
            (_, FormatPolicy::Init) => match self.nonblank(new.dataoff)? {
                Some(offset) => Err(FormatError::NotBlank {
                    offset,
                    end: new.dataoff,
                    found: found_words,
                }),
                None => self.write(Some(new), None),
            },
            (_, FormatPolicy::Force) => {
                let replaces = self.nonblank(new.dataoff)?.map(|o| self.nonblank_words(o));
                self.write(Some(new), replaces)
            }
        }
    }

    /// `memmap=auto`.
    fn auto(&mut self, mode: InfoMode) -> Result<Outcome, FormatError> {
        let force = self.req.format == FormatPolicy::Force;
        match &self.found {
            Found::Valid(b) if !force => {
                let b = *b;
                let mut note = format!("memmap=auto: keeping the existing {}", describe_block(&b));
                let mut ignored = Vec::new();
                if let Some(m) = self.req.mode.filter(|&m| m != ns_mode(b.mode)) {
                    ignored.push(format!("mode={m}"));
                }
                if let Some(a) = self.req.align.filter(|&a| a != b.align()) {
                    ignored.push(format!("align={}", AlignName(a)));
                }
                if !ignored.is_empty() {
                    note += &format!(
                        "; {} not applied (give memmap=ram|pmem with format=force to rewrite it)",
                        ignored.join(" and ")
                    );
                }
                return self.keep(b, note);
            }
            Found::Refused { .. } if !force => {
                return Err(FormatError::AutoRefusedBlock {
                    found: self.found.describe(),
                });
            }
            _ => {}
        }

        let Some(new) = self.auto_choice(mode)? else {
            return self.raw_as_is(None);
        };
        if force {
            if let Found::Valid(b) = self.found {
                if self.compute(new.mode, new.memmap, b.uuid).ok() == Some(b) {
                    let note = format!(
                        "format=force: the device already has {}; not rewriting it",
                        describe_block(&b)
                    );
                    return self.keep(b, note);
                }
            }
            let replaces = match &self.found {
                Found::Valid(_) | Found::Refused { .. } => Some(self.found.describe()),
                _ => self.nonblank(new.dataoff)?.map(|o| self.nonblank_words(o)),
            };
            return self.write(Some(new), replaces);
        }
        if let Some(offset) = self.nonblank(new.dataoff)? {
            let there = match &self.found {
                Found::Nothing => String::new(),
                f => format!(" ({})", f.describe()),
            };
            let note = format!(
                "memmap=auto: exposed raw because bytes at offset {offset:#x} are not \
                 blank{there}; to use DAX give memmap={},format=force (this overwrites the first \
                 {} bytes)",
                new.memmap, new.dataoff
            );
            return self.raw_as_is(Some(note));
        }
        match (self.req.format, self.req.readonly) {
            (FormatPolicy::Keep, _) => self.raw_as_is(Some(format!(
                "memmap=auto with format=keep: the device is blank and is not formatted; exposed \
                 raw (drop format=keep to give it {})",
                describe_block(&new)
            ))),
            (_, true) => self.raw_as_is(Some(format!(
                "memmap=auto with readonly=on: the device is blank and cannot be formatted; \
                 exposed raw (drop readonly=on to give it {})",
                describe_block(&new)
            ))),
            _ => self.write(Some(new), None),
        }
    }

    /// The block `memmap=auto` writes on this device: the memmap in RAM while it costs at most
    /// 1/16 of guest RAM, else in the device. `None` (raw, with a note) when the device is too
    /// small for any info block and `align=` was not given.
    fn auto_choice(&mut self, mode: InfoMode) -> Result<Option<InfoBlock>, FormatError> {
        let align = self.req.align.unwrap_or(DEFAULT_ALIGN);
        let uuid = self.req.uuid;
        let ram = match self.compute(mode, MemmapLocation::Ram, uuid) {
            Ok(b) => b,
            Err(e) if self.req.align.is_none() => {
                self.notes.push(format!(
                    "memmap=auto: the device of {} is too small for an info block ({e}); \
                     exposed raw",
                    Bytes(self.req.size)
                ));
                return Ok(None);
            }
            Err(e) => return Err(self.layout_error_for(mode, MemmapLocation::Ram, align, e)),
        };
        let ram_layout = ram
            .layout(&self.namespace)
            .map_err(|e| self.layout_error(&ram, e))?;
        let cost = ram_layout.memmap.ram_total();
        let budget = self.req.guest_ram / AUTO_RAM_FRACTION_DENOMINATOR;
        let within = cost.saturating_mul(AUTO_RAM_FRACTION_DENOMINATOR) <= self.req.guest_ram;
        let size = Bytes(self.req.size);
        let ram_words = format!(
            "memmap=auto: the memmap of this {size} {mode} namespace costs {cost} bytes of guest \
             RAM with memmap=ram; 1/{AUTO_RAM_FRACTION_DENOMINATOR} of the {} guest RAM is {budget} \
             bytes",
            Bytes(self.req.guest_ram)
        );
        if within {
            self.notes.push(format!("{ram_words}: memmap in ram"));
            return Ok(Some(ram));
        }
        match self.compute(mode, MemmapLocation::Pmem, uuid) {
            Ok(pmem) => {
                let l = pmem
                    .layout(&self.namespace)
                    .map_err(|e| self.layout_error(&pmem, e))?;
                self.notes.push(format!(
                    "{ram_words}: memmap in pmem, reserving {} bytes of the device (guest RAM \
                     cost {} bytes, capacity {} bytes instead of {})",
                    l.memmap.device_reserve_bytes,
                    l.memmap.ram_total(),
                    l.data_size,
                    ram_layout.data_size
                ));
                Ok(Some(pmem))
            }
            Err(e) => {
                self.notes.push(format!(
                    "{ram_words}, but the memmap does not fit in the device ({e}): memmap in ram"
                ));
                Ok(Some(ram))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Performs the plan's write, if any: checks that the 4 KiB at [`INFO_BLOCK_OFFSET`] are still
/// what [`plan`] read, writes the new bytes durably, reads them back and verifies them (the same
/// bytes, and for a block, one the guest accepts on this namespace:
/// [`InfoBlock::parse_for`] gives the planned block). On any failure after the write started it
/// writes the old bytes back the same way and returns the error ([`FormatError::Restored`], or
/// [`FormatError::RestoreFailed`] if even that failed).
///
/// A host crash in the middle of the 4 KiB write can leave a torn block; its checksum then fails,
/// the guest ignores it, and `format=init` refuses the non-blank bytes on the next run, so nothing
/// is ever used half-written.
pub fn apply(plan: &Plan, ns: &dyn NamespaceAccess) -> Result<(), FormatError> {
    let WriteAction::Write { block, old, .. } = &plan.action else {
        return Ok(());
    };
    let new = plan.action.bytes().expect("a write has bytes");
    let mut now = [0u8; INFO_BLOCK_SIZE];
    ns.read(INFO_BLOCK_OFFSET, &mut now)
        .map_err(io_err("re-reading the info block at offset 0x1000"))?;
    if now != **old {
        return Err(FormatError::Changed);
    }
    let expect = block.map(|b| (b, &plan.namespace));
    let Err(error) = write_verified(ns, &new, expect) else {
        return Ok(());
    };
    match write_verified(ns, old, None) {
        Ok(()) => Err(FormatError::Restored {
            error: Box::new(error),
        }),
        Err(restore) => Err(FormatError::RestoreFailed {
            error: Box::new(error),
            restore: Box::new(restore),
        }),
    }
}

/// Writes `bytes` at [`INFO_BLOCK_OFFSET`] durably and checks what reads back.
fn write_verified(
    ns: &dyn NamespaceAccess,
    bytes: &[u8; INFO_BLOCK_SIZE],
    expect: Option<(InfoBlock, &Namespace)>,
) -> Result<(), FormatError> {
    ns.write_durably(INFO_BLOCK_OFFSET, bytes)
        .map_err(io_err("writing the info block at offset 0x1000"))?;
    let mut back = [0u8; INFO_BLOCK_SIZE];
    ns.read(INFO_BLOCK_OFFSET, &mut back)
        .map_err(io_err("reading back the info block at offset 0x1000"))?;
    if let Some(i) = back.iter().zip(bytes.iter()).position(|(a, b)| a != b) {
        return Err(FormatError::Verify {
            reason: format!(
                "differs from what was written at offset {:#x}",
                INFO_BLOCK_OFFSET + i as u64
            ),
        });
    }
    if let Some((block, namespace)) = expect {
        match InfoBlock::parse_for(&back, namespace) {
            Ok(parsed) if parsed == block => {}
            Ok(parsed) => {
                return Err(FormatError::Verify {
                    reason: format!("parses as {parsed:?}, not the planned {block:?}"),
                })
            }
            Err(e) => {
                return Err(FormatError::Verify {
                    reason: format!("is not one the guest accepts: {e}"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
