//! Steps 2 to 4 for persistent memory, in two phases so that a refusal never leaves a trace.
//!
//! [`PmemPlan`] checks without writing: it opens, locks and maps every existing backing, checks
//! every `size=` file to create (without creating it), refuses backings that share bytes, places
//! every window in guest physical memory and plans every info block (a new file is planned as
//! the all-zero file it will be). [`PmemPlan::commit`] then creates the new files and writes the
//! planned blocks, giving [`PmemDevices`], held for the life of the guest;
//! [`PmemDevices::flush`] runs on every way out of the monitor.

use std::ops::Range;
use std::sync::Arc;

use devices::bus::{BusError, MmioBus};
use devices::pmem::backing::{Backing, BackingError, BackingKind, BackingRequest, PmemMapping};
use devices::pmem::fault::{BackingFault, FaultProbe};
use devices::pmem::flush_hint::{FlushHints, FlushTarget};
use devices::pmem::format::{
    self, BackingAccess, FormatError, FormatRequest, MemmapPlacement, NamespaceAccess,
    NamespaceReport,
};
use devices::pmem::infoblock::{InfoBlock, INFO_BLOCK_OFFSET, INFO_BLOCK_SIZE};
use devices::pmem::labels::{
    label_state, LabelGeometry, LabelState, LabelStore, MappedLabelArea, TooSmallForLabels,
};
use log::{info, warn};
use thiserror::Error;

use crate::identity::{Extents, Identity, SYSFS_ROOT};
use crate::layout::{self, PmemLayoutError, PmemSpan, PmemWindow};
use crate::pmem_option::{Firmware, PmemConfig};

#[derive(Debug, Error)]
pub enum PmemError {
    #[error("--pmem {0}")]
    Backing(#[from] BackingError),
    #[error("--pmem {path}: {source}")]
    Layout {
        path: String,
        source: PmemLayoutError,
    },
    #[error("--pmem {path}: {source}")]
    Format { path: String, source: FormatError },
    #[error("--pmem {path}: cannot make a namespace uuid: {source}")]
    Uuid {
        path: String,
        source: std::io::Error,
    },
    /// A path that did not exist when it was checked existed when the monitor created it.
    /// Two backings share bytes: a loop device or partition over another backing.
    #[error("--pmem {path}: it shares bytes with the backing {other} (a loop device or partition over it, or the other way round); give each backing once")]
    Aliases { path: String, other: String },
    #[error("--pmem {path}: {source}")]
    Labels {
        path: String,
        source: TooSmallForLabels,
    },
    #[error("--pmem {path}: cannot read the label area: {source}")]
    LabelRead {
        path: String,
        source: std::io::Error,
    },
    #[error("--pmem {path}: the file appeared while the monitor was starting (another program created it); nothing was written to it")]
    Appeared { path: String },
}

/// One NVDIMM as the guest will see it.
pub struct PmemDevice {
    pub config: PmemConfig,
    pub window: PmemWindow,
    pub kind: BackingKind,
    /// Held (with its lock) for the life of the guest.
    pub backing: Backing,
    /// What the guest will make of the namespace (mode, memmap, capacity).
    pub report: NamespaceReport,
    /// Whether this run wrote (or erased) the info block.
    pub wrote_info_block: bool,
    /// Shared with the flush-hint device, which flushes it from vCPU threads.
    pub mapping: Arc<PmemMapping>,
    /// What the backing's bytes are, for identity checks of devices added later.
    pub extents: Extents,
    /// `labels=on`: where the label area is, and what it held when the monitor started.
    pub labels: Option<(LabelGeometry, LabelState)>,
    /// What finding out why the backing failed under the guest needs, opened with it.
    pub fault_probe: FaultProbe,
    /// The mapping as the SIGBUS handler knows it (a fault in the monitor's own access names
    /// this device).
    pub sigbus: crate::sigbus::Registration,
    /// The device's slot, below `geometry::MAX_PMEM_DEVICES`: its KVM memory slot is the
    /// first pmem slot plus this, its flush hint page this one. At boot the command-line
    /// position; a hot-added device takes the lowest free one. Kept while the device exists.
    pub slot: usize,
    /// The NVDIMM's slot among the NFIT's DIMMs ([`acpi::NvdimmDesc::slot`]: its handle, its
    /// `_DSM` mailbox entry), `None` for a legacy E820 range. At boot the NVDIMMs' command-line
    /// order; a hot-added device takes the lowest free one.
    pub nfit_slot: Option<usize>,
}

impl PmemDevice {
    /// The device's label area for the `_DSM` mailbox, `None` without `labels=on`.
    pub fn label_store(&self) -> Result<Option<Arc<dyn LabelStore>>, PmemError> {
        let Some((geometry, _)) = self.labels else {
            return Ok(None);
        };
        let area = MappedLabelArea::new(self.mapping.clone(), geometry).map_err(|source| {
            PmemError::LabelRead {
                path: self.config.path.display().to_string(),
                source,
            }
        })?;
        Ok(Some(Arc::new(area)))
    }
}

#[derive(Default)]
pub struct PmemDevices {
    pub devices: Vec<PmemDevice>,
}

/// A device's backing before the guest is set up: either opened, locked and mapped already, or
/// a `size=` file that is created only once every check of the run has passed.
enum Source {
    Existing {
        backing: Backing,
        mapping: Arc<PmemMapping>,
    },
    New {
        size: u64,
    },
}

struct Planned {
    config: PmemConfig,
    window: PmemWindow,
    source: Source,
    extents: Extents,
    labels: Option<LabelGeometry>,
    /// What the label area held when planned (with `labels`).
    label_state: Option<LabelState>,
    plan: Option<format::Plan>,
}

/// Every `--pmem` device checked, placed and planned, with nothing written and no file created
/// yet; [`PmemPlan::commit`] does the writing.
#[derive(Default)]
pub struct PmemPlan {
    devices: Vec<Planned>,
}

/// The namespace of a file that does not exist yet: all zeros, as the new sparse file will be.
struct BlankNamespace;

impl NamespaceAccess for BlankNamespace {
    fn read(&self, _offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn first_nonzero(&self, _range: Range<u64>) -> std::io::Result<Option<u64>> {
        Ok(None)
    }

    fn write_durably(&self, _offset: u64, _data: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "internal error: a file not created yet was written",
        ))
    }
}

/// Plans one device's info block without writing anything.
fn plan_namespace(
    config: &PmemConfig,
    window: PmemWindow,
    created: bool,
    memory: u64,
    labels: Option<LabelState>,
    ns: &dyn NamespaceAccess,
) -> Result<format::Plan, PmemError> {
    let path = || config.path.display().to_string();
    let uuid = format::random_uuid().map_err(|source| PmemError::Uuid {
        path: path(),
        source,
    })?;
    let request = FormatRequest {
        memmap: config.memmap,
        mode: config.mode,
        align: config.align,
        format: config.format,
        phys_addr: window.base,
        size: window.size,
        guest_ram: memory,
        readonly: config.readonly,
        created_this_run: created,
        uuid,
        labels,
    };
    let mut plan = format::plan(&request, ns).map_err(|source| PmemError::Format {
        path: path(),
        source,
    })?;
    if config.firmware == Firmware::E820 && plan.report.memmap == MemmapPlacement::None {
        // Linux maps a legacy range's raw namespace with struct pages in RAM all the same.
        plan.report = NamespaceReport::raw_with_memmap_in_ram(window.base, window.size);
    }
    Ok(plan)
}

/// The checks `Backing::open` makes on a path that does not exist, made without creating it:
/// `size=` given, not read-only, not a dangling symbolic link, a directory that exists and that
/// this process may create files in.
fn check_new_file(config: &PmemConfig) -> Result<Option<u64>, BackingError> {
    let path = config.path.as_path();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() && std::fs::metadata(path).is_err() => {
            return Err(BackingError::UnsupportedType {
                path: path.to_path_buf(),
                what: "symbolic link to a missing file".into(),
            })
        }
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(BackingError::Path {
                path: path.to_path_buf(),
                op: "cannot inspect",
                source: e,
            })
        }
    }
    if config.readonly {
        return Err(BackingError::MissingReadonly {
            path: path.to_path_buf(),
        });
    }
    let Some(size) = config.size else {
        return Err(BackingError::Missing {
            path: path.to_path_buf(),
        });
    };
    // The file is created only later; its size is checked now, as Backing::open would.
    devices::pmem::backing::check_size_option(path, size)?;
    crate::output::may_create_at(path).map_err(|source| BackingError::Path {
        path: path.to_path_buf(),
        op: "cannot create",
        source,
    })?;
    Ok(Some(size))
}

impl PmemPlan {
    /// Step 2 and 3 without writing: opens, locks and maps every existing backing, checks every
    /// new one, and places all of them in guest physical memory.
    pub fn open(configs: &[PmemConfig], memory: u64) -> Result<PmemPlan, PmemError> {
        Self::open_from(configs, memory, 0)
    }

    /// As [`open`](Self::open), placing the windows at or above guest address `start` (for a
    /// device hot-added above the windows in use).
    pub fn open_from(
        configs: &[PmemConfig],
        memory: u64,
        start: u64,
    ) -> Result<PmemPlan, PmemError> {
        if configs.is_empty() {
            return Ok(PmemPlan::default());
        }
        let mut new_sizes = Vec::with_capacity(configs.len());
        for c in configs {
            new_sizes.push(check_new_file(c)?);
        }
        // Two spellings of one new path.
        let mut planned_ids: Vec<(Identity, &PmemConfig)> = Vec::new();
        for (c, new) in configs.iter().zip(&new_sizes) {
            if new.is_none() {
                continue;
            }
            let id = Identity::planned(&c.path).map_err(|source| BackingError::Path {
                path: c.path.clone(),
                op: "cannot create",
                source,
            })?;
            if let Some((_, first)) = planned_ids.iter().find(|(other, _)| *other == id) {
                return Err(BackingError::SameBacking {
                    path: c.path.clone(),
                    first: first.path.clone(),
                }
                .into());
            }
            planned_ids.push((id, c));
        }
        let requests: Vec<BackingRequest> = configs
            .iter()
            .zip(&new_sizes)
            .filter(|(_, new)| new.is_none())
            .map(|(c, _)| BackingRequest {
                path: c.path.clone(),
                // Never create here: the path existed a moment ago.
                size: c.size,
                readonly: c.readonly,
            })
            .collect();
        let mut opened = Backing::open_all(&requests)?.into_iter();
        let mut sources = Vec::with_capacity(configs.len());
        let mut failure = None;
        let mut planned_ids = planned_ids.into_iter();
        for (c, new) in configs.iter().zip(&new_sizes) {
            if let Some(size) = new {
                let (id, _) = planned_ids.next().expect("one identity per new file");
                sources.push((Extents::planned(id), Either::New(*size)));
                continue;
            }
            let b = opened.next().expect("one backing per existing path");
            if b.kind() == &(BackingKind::File { created: true }) && failure.is_none() {
                failure = Some(PmemError::Appeared {
                    path: c.path.display().to_string(),
                });
            }
            let extents = match b.file().metadata() {
                Ok(m) => Extents::of(&m, std::path::Path::new(SYSFS_ROOT)),
                Err(e) => {
                    failure.get_or_insert(PmemError::Backing(BackingError::Io {
                        path: c.path.clone(),
                        op: "fstat",
                        source: e,
                    }));
                    Extents(Vec::new())
                }
            };
            sources.push((extents, Either::Existing(b)));
        }
        let abandon = |sources: Vec<(Extents, Either)>| {
            for (_, s) in sources {
                if let Either::Existing(b) = s {
                    b.abandon();
                }
            }
        };
        if let Some(e) = failure {
            abandon(sources);
            return Err(e);
        }
        // Aliasing DIMMs: a loop device (or partition) over another backing's bytes.
        for i in 0..sources.len() {
            for j in 0..i {
                if sources[i].0.aliases(&sources[j].0) {
                    let e = PmemError::Aliases {
                        path: configs[i].path.display().to_string(),
                        other: configs[j].path.display().to_string(),
                    };
                    abandon(sources);
                    return Err(e);
                }
            }
        }
        // Map every existing backing (nothing is written), so its info block can be read.
        let mut mapped: Vec<(Extents, Source)> = Vec::with_capacity(sources.len());
        let mut rest = sources.into_iter();
        while let Some((extents, s)) = rest.next() {
            let source = match s {
                Either::New(size) => Source::New { size },
                Either::Existing(backing) => match backing.map() {
                    Ok(m) => Source::Existing {
                        backing,
                        mapping: Arc::new(m),
                    },
                    Err(e) => {
                        backing.abandon();
                        abandon(rest.collect());
                        abandon_sources(mapped);
                        return Err(e.into());
                    }
                },
            };
            mapped.push((extents, source));
        }
        // The label area at the end of each labelled backing, and the capacity it leaves.
        let mut labels = Vec::with_capacity(mapped.len());
        for ((_, s), c) in mapped.iter().zip(configs) {
            let geometry = match c.label_size {
                None => None,
                Some(label_size) => match LabelGeometry::new(source_size(s), label_size) {
                    Ok(g) => Some(g),
                    Err(source) => {
                        abandon_sources(mapped);
                        return Err(PmemError::Labels {
                            path: c.path.display().to_string(),
                            source,
                        });
                    }
                },
            };
            labels.push(geometry);
        }
        let spans: Vec<PmemSpan> = mapped
            .iter()
            .zip(configs)
            .zip(&labels)
            .map(|(((_, s), c), l)| span(c, s, l.map(|g| g.capacity)))
            .collect();
        let limit = crate::host::HostInfo::get().guest_phys_limit();
        let windows = match layout::place_pmem_from(memory, start, &spans, limit) {
            Ok(w) => w,
            Err(source) => {
                let path = configs[source.index()].path.display().to_string();
                abandon_sources(mapped);
                return Err(PmemError::Layout { path, source });
            }
        };
        let devices = configs
            .iter()
            .zip(windows)
            .zip(mapped)
            .zip(labels)
            .map(|(((config, window), (extents, source)), labels)| Planned {
                config: config.clone(),
                window,
                source,
                extents,
                labels,
                label_state: None,
                plan: None,
            })
            .collect();
        Ok(PmemPlan { devices })
    }

    /// Step 4 without writing: the memmap policy decides every namespace's info block. A
    /// refusal for one device leaves all backings as they were.
    pub fn plan(&mut self, memory: u64) -> Result<(), PmemError> {
        for d in &mut self.devices {
            let plan = match &d.source {
                Source::Existing { backing, mapping } => {
                    let access = BackingAccess::new(backing, mapping);
                    d.label_state = match d.labels {
                        None => None,
                        Some(g) => {
                            let mut area = vec![0u8; g.label_size as usize];
                            access.read(g.label_offset, &mut area).map_err(|source| {
                                PmemError::LabelRead {
                                    path: d.config.path.display().to_string(),
                                    source,
                                }
                            })?;
                            Some(label_state(&area))
                        }
                    };
                    plan_namespace(&d.config, d.window, false, memory, d.label_state, &access)?
                }
                Source::New { .. } => {
                    d.label_state = d.labels.map(|_| LabelState::Uninitialised);
                    plan_namespace(
                        &d.config,
                        d.window,
                        true,
                        memory,
                        d.label_state,
                        &BlankNamespace,
                    )?
                }
            };
            d.plan = Some(plan);
        }
        Ok(())
    }

    /// What each device's bytes are, with its path and whether the guest may write it.
    pub fn claims(&self) -> impl Iterator<Item = (&std::path::Path, bool, &Extents)> {
        self.devices
            .iter()
            .map(|d| (d.config.path.as_path(), !d.config.readonly, &d.extents))
    }

    /// The NFIT's view of the devices, in command-line order (see [`nvdimm_desc`]).
    pub fn nvdimm_descs(&self) -> Vec<acpi::NvdimmDesc> {
        let slots = boot_slots(self.devices.iter().map(|d| &d.config));
        self.devices
            .iter()
            .zip(slots)
            .filter_map(|(d, (slot, nfit_slot))| {
                nfit_slot.map(|n| nvdimm_desc(&d.config, d.window, slot, n))
            })
            .collect()
    }

    /// The legacy persistent-memory ranges for the guest's memory map.
    pub fn legacy_e820_ranges(&self) -> Vec<layout::Region> {
        legacy_e820_ranges(self.devices.iter().map(|d| (&d.config, d.window)))
    }

    /// Creates the new files, maps them and writes every planned info block. On failure every
    /// file this run created is removed again and every write already made stays as verified
    /// (the format step restores a block whose write failed).
    pub fn commit(self) -> Result<PmemDevices, PmemError> {
        let mut done = PmemDevices::default();
        let slots = boot_slots(self.devices.iter().map(|d| &d.config));
        let mut rest = self.devices.into_iter().zip(slots);
        while let Some((d, (slot, nfit_slot))) = rest.next() {
            match commit_one(d, slot, nfit_slot) {
                Ok(dev) => done.devices.push(dev),
                Err(e) => {
                    PmemPlan {
                        devices: rest.map(|(d, _)| d).collect(),
                    }
                    .abandon();
                    done.abandon();
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    /// Gives up: unmaps and closes everything (nothing was created yet).
    pub fn abandon(self) {
        for d in self.devices {
            if let Source::Existing { backing, mapping } = d.source {
                drop(mapping);
                backing.abandon();
            }
        }
    }
}

fn abandon_sources(sources: Vec<(Extents, Source)>) {
    for (_, s) in sources {
        if let Source::Existing { backing, mapping } = s {
            drop(mapping);
            backing.abandon();
        }
    }
}

/// The size of a backing, or of the file to create.
fn source_size(source: &Source) -> u64 {
    match source {
        Source::New { size } => *size,
        Source::Existing { backing, .. } => backing.size(),
    }
}

/// What the layout needs of one device: its size (the backing's, or with labels the capacity
/// `region` the label area leaves) and the alignment its data will have in the guest. That is `align=` when given; otherwise, for a backing that already holds an info
/// block (which `memmap=auto`, `format=keep` and a matching `format=init` keep), the block's
/// alignment; and at least a device-dax backing's own alignment, so KVM can map it with pages
/// of that size.
fn span(config: &PmemConfig, source: &Source, region: Option<u64>) -> PmemSpan {
    let (size, host_align, block_align) = match source {
        Source::New { size } => (*size, 0, 0),
        Source::Existing { backing, mapping } => {
            let host_align = match backing.kind() {
                BackingKind::DevDax { align } => *align,
                _ => 0,
            };
            let mut bytes = vec![0u8; INFO_BLOCK_SIZE];
            let block_align = if backing.size() >= INFO_BLOCK_OFFSET + INFO_BLOCK_SIZE as u64
                && BackingAccess::new(backing, mapping)
                    .read(INFO_BLOCK_OFFSET, &mut bytes)
                    .is_ok()
            {
                InfoBlock::parse(&bytes).map_or(0, |b| b.align())
            } else {
                0
            };
            (backing.size(), host_align, block_align)
        }
    };
    PmemSpan {
        size: region.unwrap_or(size),
        align: config.align.unwrap_or(block_align).max(host_align),
        legacy_e820: config.firmware == Firmware::E820,
    }
}

/// Either an opened backing or the size of a file to create (while [`PmemPlan::open`] runs).
enum Either {
    Existing(Backing),
    New(u64),
}

fn commit_one(d: Planned, slot: usize, nfit_slot: Option<usize>) -> Result<PmemDevice, PmemError> {
    let plan = d.plan.expect("PmemPlan::plan ran before commit");
    let path = || d.config.path.display().to_string();
    let (backing, mapping) = match d.source {
        Source::Existing { backing, mapping } => (backing, mapping),
        Source::New { size } => {
            let backing = Backing::open(&BackingRequest {
                path: d.config.path.clone(),
                size: Some(size),
                readonly: false,
            })?;
            if backing.kind() != &(BackingKind::File { created: true }) {
                return Err(PmemError::Appeared { path: path() });
            }
            match backing.map() {
                Ok(m) => (backing, Arc::new(m)),
                Err(e) => {
                    backing.abandon();
                    return Err(e.into());
                }
            }
        }
    };
    let kind = *backing.kind();
    // A file created just now had only its planned identity; devices added later compare
    // against what it is now.
    let extents = match (&d.extents.0[..], backing.file().metadata()) {
        ([e], Ok(m)) if matches!(e.id, Identity::Planned(_)) => {
            Extents::of(&m, std::path::Path::new(SYSFS_ROOT))
        }
        _ => d.extents,
    };
    for note in &plan.notes {
        info!("{}: {note}", d.config.id);
    }
    if let Err(source) = format::apply(&plan, &BackingAccess::new(&backing, &mapping)) {
        drop(mapping);
        backing.abandon();
        return Err(PmemError::Format {
            path: path(),
            source,
        });
    }
    let labels = d.labels.zip(d.label_state);
    let label_note = match labels {
        None => String::new(),
        Some((g, state)) => format!(
            ", label area {} at backing offset {:#x} ({state})",
            devices::pmem::bytes::Bytes(u64::from(g.label_size)),
            g.label_offset
        ),
    };
    info!(
        "{}: {} ({:?}{}{}) at guest {:#x}+{:#x}{label_note}: {}",
        d.config.id,
        d.config.path.display(),
        kind,
        if d.config.readonly { ", read-only" } else { "" },
        match d.config.firmware {
            Firmware::Nfit => "",
            Firmware::E820 => ", legacy E820 range: no flush hint",
        },
        d.window.base,
        d.window.size,
        plan.report
    );
    let sigbus = crate::sigbus::register(
        mapping.as_ptr(),
        mapping.len() as usize,
        &d.config.id,
        &d.config.path,
    );
    Ok(PmemDevice {
        config: d.config,
        window: d.window,
        kind,
        fault_probe: FaultProbe::new(&backing),
        sigbus,
        backing,
        wrote_info_block: plan.action.bytes().is_some(),
        report: plan.report,
        mapping,
        extents,
        labels,
        slot,
        nfit_slot,
    })
}

/// The slots of the devices of a command line ([`PmemDevice::slot`], [`PmemDevice::nfit_slot`]):
/// device *i* has slot *i*; the NVDIMMs are numbered densely in order, the E820 ranges have none.
fn boot_slots<'a>(configs: impl Iterator<Item = &'a PmemConfig>) -> Vec<(usize, Option<usize>)> {
    let mut nfit = 0;
    configs
        .enumerate()
        .map(|(i, c)| match c.firmware {
            Firmware::Nfit => {
                nfit += 1;
                (i, Some(nfit - 1))
            }
            Firmware::E820 => (i, None),
        })
        .collect()
}

/// The NFIT's view of an NVDIMM in device slot `slot` and NFIT slot `nfit_slot`: its flush hint
/// is the device slot's page, its serial number (unique, part of the DIMM id Linux shows)
/// `nfit_slot + 1`.
fn nvdimm_desc(
    config: &PmemConfig,
    window: PmemWindow,
    slot: usize,
    nfit_slot: usize,
) -> acpi::NvdimmDesc {
    acpi::NvdimmDesc {
        base: window.base,
        size: window.size,
        proximity_domain: config.numa,
        readonly: config.readonly,
        serial_number: nfit_slot as u32 + 1,
        slot: nfit_slot,
        flush_hint: Some(FlushHints::address(layout::FLUSH_HINT_BASE, slot)),
    }
}

/// The windows of the `firmware=e820` devices: legacy persistent-memory ranges in the
/// guest's memory map.
fn legacy_e820_ranges<'a>(
    devices: impl Iterator<Item = (&'a PmemConfig, PmemWindow)>,
) -> Vec<layout::Region> {
    devices
        .filter(|(config, _)| config.firmware == Firmware::E820)
        .map(|(_, w)| (w.base, w.size))
        .collect()
}

impl PmemDevices {
    /// Gives up before the guest ran: unmaps everything and removes the files this run created.
    pub fn abandon(self) {
        for d in self.devices {
            drop(d.mapping);
            d.backing.abandon();
        }
    }

    /// The NFIT's view of the devices (see [`nvdimm_desc`]).
    pub fn nvdimm_descs(&self) -> Vec<acpi::NvdimmDesc> {
        self.devices
            .iter()
            .filter_map(|d| {
                d.nfit_slot
                    .map(|n| nvdimm_desc(&d.config, d.window, d.slot, n))
            })
            .collect()
    }

    /// The lowest device slot and the lowest NFIT slot no device holds, for a device added
    /// now; `None` when every slot is taken.
    pub fn free_slots(&self) -> Option<(usize, usize)> {
        let free =
            |taken: &dyn Fn(usize) -> bool| (0..geometry::MAX_PMEM_DEVICES).find(|&s| !taken(s));
        let slot = free(&|s| self.devices.iter().any(|d| d.slot == s))?;
        let nfit = free(&|s| self.devices.iter().any(|d| d.nfit_slot == Some(s)))?;
        Some((slot, nfit))
    }

    /// The machine-readable report (`vmm --report`): one object per device, in command-line
    /// order, with the numbers the log gives.
    pub fn report_json(&self) -> serde_json::Value {
        let devices: Vec<serde_json::Value> = self
            .devices
            .iter()
            .map(|d| {
                let r = &d.report;
                serde_json::json!({
                    "id": d.config.id,
                    "path": d.config.path.display().to_string(),
                    "backing": match d.kind {
                        BackingKind::File { .. } => "file",
                        BackingKind::DevDax { .. } => "devdax",
                        BackingKind::BlockDevice => "block",
                    },
                    "firmware": d.config.firmware.as_str(),
                    "nfit_handle": d.nfit_slot.map(acpi::nfit_handle),
                    "guest_base": d.window.base,
                    "size": d.window.size,
                    "readonly": d.config.readonly,
                    "numa": d.config.numa,
                    "mode": if r.label_namespaces.is_some() {
                        "labels".to_string()
                    } else {
                        r.mode.to_string()
                    },
                    "memmap": r.memmap.to_string(),
                    "memmap_bytes": r.memmap_bytes,
                    "ram_cost_bytes": r.ram_cost_bytes,
                    "device_reserve_bytes": r.device_reserve_bytes,
                    "data_offset": r.data_offset,
                    "capacity": r.capacity,
                    "align": r.align,
                    "info_block_written": d.wrote_info_block,
                    "backing_size": d.backing.size(),
                    "health": d.config.health.map(|h| h.to_string()),
                    "labels": d.labels.map(|(g, state)| serde_json::json!({
                        "offset": g.label_offset,
                        "size": g.label_size,
                        "initialised": matches!(state, LabelState::Initialised { .. }),
                        "labels_in_use": match state {
                            LabelState::Initialised { labels_in_use, .. } => Some(labels_in_use),
                            LabelState::Uninitialised => None,
                        },
                    })),
                    "flush_hint": (d.config.firmware == Firmware::Nfit)
                        .then(|| FlushHints::address(layout::FLUSH_HINT_BASE, d.slot)),
                })
            })
            .collect();
        serde_json::json!({ "pmem": devices })
    }

    /// The label area of each device (`None` without `labels=on`), for the `_DSM` mailbox.
    pub fn label_stores(&self) -> Result<Vec<Option<Arc<dyn LabelStore>>>, PmemError> {
        self.nfit_devices().map(PmemDevice::label_store).collect()
    }

    /// The NVDIMMs (`firmware=nfit`) in NFIT order: the DIMM with NFIT handle *h* is item
    /// *h* − 1, which is what the `_DSM` mailbox is indexed by.
    pub fn nfit_devices(&self) -> impl Iterator<Item = &PmemDevice> {
        self.devices
            .iter()
            .filter(|d| d.config.firmware == Firmware::Nfit)
    }

    /// The MMIO bus with the NFIT flush hints of these devices at `layout::FLUSH_HINT_BASE`,
    /// and the hints themselves (their counters are the API's `vm.counters`).
    pub fn mmio_bus(&self) -> Result<(MmioBus, Arc<FlushHints>), BusError> {
        let targets = self
            .devices
            .iter()
            .map(|d| {
                // A legacy E820 range has no flush hint the guest knows of.
                (!d.config.readonly && d.config.firmware == Firmware::Nfit)
                    .then(|| d.mapping.clone() as Arc<dyn FlushTarget>)
            })
            .collect();
        let hints = Arc::new(FlushHints::with_capacity(
            targets,
            geometry::MAX_PMEM_DEVICES,
        ));
        let mut bus = MmioBus::new();
        bus.insert(layout::FLUSH_HINT_BASE, hints.len(), hints.clone())?;
        Ok((bus, hints))
    }

    /// Which backing failed under the guest, and why, after KVM could not map guest memory
    /// (`gpa` when KVM said where). The device whose window holds `gpa` is asked first (with the
    /// offset); then every device, in order; the first with a fault is the answer.
    pub fn diagnose_fault(&self, gpa: Option<u64>) -> Option<(&PmemDevice, BackingFault)> {
        let hit = gpa.and_then(|a| {
            self.devices
                .iter()
                .find(|d| (d.window.base..d.window.base + d.window.size).contains(&a))
                .map(|d| (d, a - d.window.base))
        });
        if let Some((d, offset)) = hit {
            if let Some(fault) = d.fault_probe.diagnose(&d.backing, &d.mapping, Some(offset)) {
                return Some((d, fault));
            }
        }
        self.devices.iter().find_map(|d| {
            d.fault_probe
                .diagnose(&d.backing, &d.mapping, None)
                .map(|fault| (d, fault))
        })
    }

    /// Writes every dirty page of file and block-device backings to the host's storage.
    /// Device-dax needs nothing (see `PmemMapping::flush`). Runs on the way out: every device is
    /// flushed even when one fails; each failure is logged and the first is returned.
    pub fn flush(&self) -> Result<(), FlushError> {
        let mut first = None;
        for d in &self.devices {
            if d.config.readonly {
                continue;
            }
            if let Err(source) = d.mapping.flush() {
                let e = FlushError {
                    id: d.config.id.clone(),
                    source,
                };
                if first.is_none() {
                    first = Some(e);
                } else {
                    warn!("{e}");
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Flushing a device's backing at exit failed.
#[derive(Debug, Error)]
#[error("{id}: flushing the backing at exit failed, so data the guest wrote may not be durable: {source}")]
pub struct FlushError {
    pub id: String,
    pub source: BackingError,
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pmem_option::parse_pmem;

    #[test]
    fn new_files_are_created_only_by_commit() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.img");
        let existing = dir.path().join("old.img");
        std::fs::write(&existing, vec![0u8; 4 << 20]).unwrap();
        let configs = vec![
            parse_pmem(&format!("path={},size=8M,memmap=ram", new.display()), 0).unwrap(),
            parse_pmem(&format!("path={},memmap=none", existing.display()), 1).unwrap(),
        ];
        let mut plan = PmemPlan::open(&configs, 512 << 20).unwrap();
        plan.plan(512 << 20).unwrap();
        assert!(!new.exists(), "planning must not create the file");
        plan.abandon();
        assert!(!new.exists());

        let mut plan = PmemPlan::open(&configs, 512 << 20).unwrap();
        plan.plan(512 << 20).unwrap();
        let devices = plan.commit().unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().len(), 8 << 20);
        assert!(devices.devices[0].wrote_info_block);
        assert!(!devices.devices[1].wrote_info_block);
        devices.abandon();
        assert!(!new.exists(), "abandon removes what the run created");
        assert!(existing.exists());
    }

    #[test]
    fn a_refused_plan_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.img");
        let configs = vec![
            parse_pmem(&format!("path={},size=8M", new.display()), 0).unwrap(),
            parse_pmem(
                &format!("path={},size=8M,align=1G", dir.path().join("b").display()),
                1,
            )
            .unwrap(),
        ];
        let mut plan = PmemPlan::open(&configs, 512 << 20).unwrap();
        let e = plan.plan(512 << 20).unwrap_err();
        assert!(e.to_string().contains("align=1G"), "{e}");
        plan.abandon();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn align_1g_devices_get_1g_aligned_windows() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.img");
        let big = dir.path().join("big.img");
        let configs = vec![
            parse_pmem(
                &format!("path={},size=130M,memmap=none", small.display()),
                0,
            )
            .unwrap(),
            parse_pmem(
                &format!(
                    "path={},size=2G,mode=devdax,memmap=ram,align=1G",
                    big.display()
                ),
                1,
            )
            .unwrap(),
        ];
        let mut plan = PmemPlan::open(&configs, 512 << 20).unwrap();
        plan.plan(512 << 20).unwrap();
        let descs = plan.nvdimm_descs();
        assert_eq!(descs[0].base, 4 << 30);
        assert_eq!(descs[1].base % (1 << 30), 0, "{:#x}", descs[1].base);
        assert_eq!(descs[1].base, 5 << 30);
        plan.abandon();
    }

    /// `firmware=e820` devices are left out of the NFIT (whose handles and serial numbers stay
    /// dense), appear as legacy ranges instead, and report no handle and no flush hint; two
    /// e820 windows never touch.
    #[test]
    fn e820_devices_are_memory_map_ranges_not_nfit_dimms() {
        let dir = tempfile::tempdir().unwrap();
        let arg = |name: &str, rest: &str, i| {
            let path = dir.path().join(name);
            parse_pmem(&format!("path={},size=128M,{rest}", path.display()), i).unwrap()
        };
        let configs = vec![
            arg("a.img", "firmware=e820", 0),
            arg("b.img", "firmware=e820,mode=devdax", 1),
            arg("c.img", "firmware=nfit", 2),
            arg("d.img", "firmware=e820,memmap=none", 3),
            arg("e.img", "memmap=none", 4),
        ];
        let mut plan = PmemPlan::open(&configs, 512 << 20).unwrap();
        plan.plan(512 << 20).unwrap();
        let g = 1u64 << 30;
        let m = 1u64 << 20;
        assert_eq!(
            plan.legacy_e820_ranges(),
            vec![
                (4 * g, 128 * m),
                (4 * g + 256 * m, 128 * m),
                (4 * g + 512 * m, 128 * m)
            ]
        );
        let descs = plan.nvdimm_descs();
        let nfit: Vec<(u64, u32)> = descs.iter().map(|d| (d.base, d.serial_number)).collect();
        assert_eq!(nfit, vec![(4 * g + 384 * m, 1), (4 * g + 640 * m, 2)]);
        // The flush hints keep the device's own slot.
        assert_eq!(
            descs[1].flush_hint,
            Some(FlushHints::address(layout::FLUSH_HINT_BASE, 4))
        );
        assert_eq!(descs.iter().map(|d| d.slot).collect::<Vec<_>>(), vec![0, 1]);
        let devices = plan.commit().unwrap();
        let slots: Vec<(usize, Option<usize>)> = devices
            .devices
            .iter()
            .map(|d| (d.slot, d.nfit_slot))
            .collect();
        assert_eq!(
            slots,
            vec![(0, None), (1, None), (2, Some(0)), (3, None), (4, Some(1))]
        );
        // The devices' own view agrees with the plan's.
        assert_eq!(devices.nvdimm_descs(), descs);
        assert_eq!(devices.free_slots(), Some((5, 2)));
        let report = devices.report_json();
        assert_eq!(report["pmem"][0]["firmware"], "e820");
        assert!(report["pmem"][0]["nfit_handle"].is_null());
        assert!(report["pmem"][0]["flush_hint"].is_null());
        assert_eq!(report["pmem"][2]["firmware"], "nfit");
        assert_eq!(report["pmem"][2]["nfit_handle"], acpi::nfit_handle(0));
        // Linux maps a raw legacy range with struct pages in RAM: 64 bytes per 4 KiB page.
        assert_eq!(report["pmem"][3]["mode"], "raw");
        assert_eq!(report["pmem"][3]["memmap"], "ram");
        assert_eq!(report["pmem"][3]["memmap_bytes"], 128 * m / 4096 * 64);
        assert_eq!(report["pmem"][4]["memmap"], "none");
        devices.abandon();
    }

    #[test]
    fn an_existing_1g_block_gets_a_1g_aligned_window() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.img");
        let big = dir.path().join("big.img");
        // Format big.img with a 1 GiB-aligned devdax block in a first run (alone, at 4 GiB).
        let first = vec![parse_pmem(
            &format!(
                "path={},size=2G,mode=devdax,memmap=ram,align=1G",
                big.display()
            ),
            0,
        )
        .unwrap()];
        let mut plan = PmemPlan::open(&first, 512 << 20).unwrap();
        plan.plan(512 << 20).unwrap();
        let devices = plan.commit().unwrap();
        assert!(devices.devices[0].wrote_info_block);
        drop(devices);
        // Then after a small device, without align=: the block's alignment places it.
        let configs = vec![
            parse_pmem(
                &format!("path={},size=130M,memmap=none", small.display()),
                0,
            )
            .unwrap(),
            parse_pmem(&format!("path={},format=keep", big.display()), 1).unwrap(),
        ];
        let mut plan = PmemPlan::open(&configs, 512 << 20).unwrap();
        plan.plan(512 << 20).unwrap();
        assert_eq!(plan.nvdimm_descs()[1].base, 5 << 30);
        plan.abandon();
    }

    #[test]
    fn labels_shrink_the_window_and_keep_the_label_area_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.img");
        let size = (1 << 30) + (2 << 20); // not a multiple of 16 MiB
        let configs =
            vec![parse_pmem(&format!("path={},size={size},labels=on", path.display()), 0).unwrap()];
        let mut plan = PmemPlan::open(&configs, 512 << 20).unwrap();
        plan.plan(512 << 20).unwrap();
        let descs = plan.nvdimm_descs();
        assert_eq!(
            descs[0].size,
            1 << 30,
            "the region is the backing less 2 MiB"
        );
        let devices = plan.commit().unwrap();
        let d = &devices.devices[0];
        let (g, state) = d.labels.unwrap();
        assert_eq!(g.label_offset, size - (128 << 10));
        assert_eq!(state, LabelState::Uninitialised);
        assert!(d.window.size <= g.label_offset);
        let json = devices.report_json();
        assert_eq!(json["pmem"][0]["labels"]["size"], 128 << 10);
        assert_eq!(json["pmem"][0]["size"], 1u64 << 30);
        assert_eq!(json["pmem"][0]["backing_size"], size);

        // A label write through the store lands at the end of the file, durably.
        let store = d.label_store().unwrap().unwrap();
        store.write_durably(4, b"labl").unwrap();
        drop(store);
        drop(devices);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[g.label_offset as usize + 4..][..4], b"labl");
    }

    #[test]
    fn a_backing_too_small_for_labels_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.img");
        let configs =
            vec![parse_pmem(&format!("path={},size=2M,labels=on", path.display()), 0).unwrap()];
        let e = PmemPlan::open(&configs, 512 << 20).err().unwrap();
        assert!(
            e.to_string()
                .contains("with labels=on the backing needs at least 4 MiB"),
            "{e}"
        );
        assert!(!path.exists());
    }
}
