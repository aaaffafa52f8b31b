//! Steps 2 and 3 for persistent memory: open every `--pmem` backing, place its window in guest
//! physical memory, map it, and describe it for the NFIT. The result is held for the life of
//! the guest; [`PmemDevices::flush`] runs on every way out of the monitor.

use std::sync::Arc;

use devices::bus::{BusError, MmioBus};
use devices::pmem::backing::{Backing, BackingError, BackingKind, BackingRequest, PmemMapping};
use devices::pmem::flush_hint::FlushHints;
use devices::pmem::format::{self, BackingAccess, FormatError, FormatRequest, NamespaceReport};
use log::{info, warn};
use thiserror::Error;

use crate::layout::{self, PmemLayoutError, PmemWindow};
use crate::pmem_option::PmemConfig;

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
}

impl PmemError {
    pub fn is_usage(&self) -> bool {
        match self {
            PmemError::Backing(e) => e.is_usage(),
            PmemError::Layout { .. } => true,
            PmemError::Format { source, .. } => source.is_usage(),
            PmemError::Uuid { .. } => false,
        }
    }
}

/// One NVDIMM as the guest will see it.
pub struct PmemDevice {
    pub config: PmemConfig,
    pub window: PmemWindow,
    pub kind: BackingKind,
    /// Held (with its lock) for the life of the guest.
    pub backing: Backing,
    /// What the guest will make of the namespace (mode, memmap, capacity); raw until
    /// [`PmemDevices::format`] has run.
    pub report: NamespaceReport,
    /// Whether this run wrote (or erased) the info block.
    pub wrote_info_block: bool,
    /// Shared with the flush-hint device, which flushes it from vCPU threads.
    pub mapping: Arc<PmemMapping>,
}

#[derive(Default)]
pub struct PmemDevices {
    pub devices: Vec<PmemDevice>,
}

/// Plans one device's info block without writing anything.
fn plan_namespace(d: &PmemDevice, memory: u64) -> Result<format::Plan, PmemError> {
    let path = || d.config.path.display().to_string();
    let uuid = format::random_uuid().map_err(|source| PmemError::Uuid {
        path: path(),
        source,
    })?;
    let request = FormatRequest {
        memmap: d.config.memmap,
        mode: d.config.mode,
        align: d.config.align,
        format: d.config.format,
        phys_addr: d.window.base,
        size: d.window.size,
        guest_ram: memory,
        readonly: d.config.readonly,
        created_this_run: matches!(d.kind, BackingKind::File { created: true }),
        uuid,
    };
    format::plan(&request, &BackingAccess::new(&d.backing, &d.mapping)).map_err(|source| {
        PmemError::Format {
            path: path(),
            source,
        }
    })
}

/// The first guest physical address the guest's CPUs cannot address: KVM gives guests the
/// host's physical address width, which /proc/cpuinfo reports as "address sizes".
pub fn guest_phys_limit(cpuinfo: &str) -> u64 {
    let bits = cpuinfo
        .lines()
        .find(|l| l.starts_with("address sizes"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|b| (32..=52).contains(b))
        .unwrap_or(36);
    1u64 << bits
}

impl PmemDevices {
    /// Opens, places and maps every device. Nothing is written to any backing; a file this run
    /// created is removed again when a later device fails.
    pub fn open(configs: &[PmemConfig], memory: u64) -> Result<PmemDevices, PmemError> {
        if configs.is_empty() {
            return Ok(PmemDevices::default());
        }
        let requests: Vec<BackingRequest> = configs
            .iter()
            .map(|c| BackingRequest {
                path: c.path.clone(),
                size: c.size,
                readonly: c.readonly,
            })
            .collect();
        let backings = Backing::open_all(&requests)?;
        let sizes: Vec<u64> = backings.iter().map(Backing::size).collect();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let windows = match layout::place_pmem(memory, &sizes, guest_phys_limit(&cpuinfo)) {
            Ok(w) => w,
            Err(source) => {
                let path = configs[source.index()].path.display().to_string();
                backings.into_iter().for_each(Backing::abandon);
                return Err(PmemError::Layout { path, source });
            }
        };
        let mut mappings = Vec::with_capacity(backings.len());
        for b in &backings {
            match b.map() {
                Ok(m) => mappings.push(Arc::new(m)),
                Err(e) => {
                    drop(mappings);
                    backings.into_iter().for_each(Backing::abandon);
                    return Err(e.into());
                }
            }
        }
        let devices = configs
            .iter()
            .zip(backings)
            .zip(windows)
            .zip(mappings)
            .map(|(((config, backing), window), mapping)| PmemDevice {
                config: config.clone(),
                window,
                kind: *backing.kind(),
                backing,
                report: NamespaceReport::raw(window.size),
                wrote_info_block: false,
                mapping,
            })
            .collect();
        Ok(PmemDevices { devices })
    }

    /// Step 4: the memmap policy decides each namespace's info block and writes it only where
    /// the format rules allow. Every plan is made and applied before the guest runs.
    pub fn format(&mut self, memory: u64) -> Result<(), PmemError> {
        // Plan every device before writing to any: a refusal for one device must leave all
        // backings as they were (and print nothing but the refusal).
        let plans = self
            .devices
            .iter()
            .map(|d| plan_namespace(d, memory))
            .collect::<Result<Vec<_>, _>>()?;
        for (d, plan) in self.devices.iter_mut().zip(plans) {
            for note in &plan.notes {
                info!("{}: {note}", d.config.id);
            }
            format::apply(&plan, &BackingAccess::new(&d.backing, &d.mapping)).map_err(
                |source| PmemError::Format {
                    path: d.config.path.display().to_string(),
                    source,
                },
            )?;
            info!(
                "{}: {} ({:?}{}) at guest {:#x}+{:#x}: {}",
                d.config.id,
                d.config.path.display(),
                d.kind,
                if d.config.readonly { ", read-only" } else { "" },
                d.window.base,
                d.window.size,
                plan.report
            );
            d.wrote_info_block = plan.action.bytes().is_some();
            d.report = plan.report;
        }
        Ok(())
    }

    /// Gives up before the guest ran: unmaps everything and removes the files this run created.
    pub fn abandon(self) {
        for d in self.devices {
            drop(d.mapping);
            d.backing.abandon();
        }
    }

    /// The NFIT's view of the devices, in command-line order (NFIT handle = index + 1).
    pub fn nvdimm_descs(&self) -> Vec<acpi::NvdimmDesc> {
        self.devices
            .iter()
            .enumerate()
            .map(|(i, d)| acpi::NvdimmDesc {
                base: d.window.base,
                size: d.window.size,
                proximity_domain: d.config.numa,
                readonly: d.config.readonly,
                serial_number: i as u32 + 1,
                flush_hint: Some(FlushHints::address(layout::FLUSH_HINT_BASE, i)),
            })
            .collect()
    }

    /// The machine-readable report (`vmm --report`): one object per device, in command-line
    /// order, with the numbers the log gives.
    pub fn report_json(&self) -> serde_json::Value {
        let devices: Vec<serde_json::Value> = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let r = &d.report;
                serde_json::json!({
                    "id": d.config.id,
                    "path": d.config.path.display().to_string(),
                    "backing": match d.kind {
                        BackingKind::File { .. } => "file",
                        BackingKind::DevDax { .. } => "devdax",
                        BackingKind::BlockDevice => "block",
                    },
                    "nfit_handle": acpi::nfit_handle(i),
                    "guest_base": d.window.base,
                    "size": d.window.size,
                    "readonly": d.config.readonly,
                    "numa": d.config.numa,
                    "mode": r.mode.to_string(),
                    "memmap": r.memmap.to_string(),
                    "memmap_bytes": r.memmap_bytes,
                    "ram_cost_bytes": r.ram_cost_bytes,
                    "device_reserve_bytes": r.device_reserve_bytes,
                    "data_offset": r.data_offset,
                    "capacity": r.capacity,
                    "align": r.align,
                    "info_block_written": d.wrote_info_block,
                    "flush_hint": FlushHints::address(layout::FLUSH_HINT_BASE, i),
                })
            })
            .collect();
        serde_json::json!({ "pmem": devices })
    }

    /// The MMIO bus with the NFIT flush hints of these devices at `layout::FLUSH_HINT_BASE`.
    pub fn mmio_bus(&self) -> Result<MmioBus, BusError> {
        let targets = self
            .devices
            .iter()
            .map(|d| (!d.config.readonly).then(|| d.mapping.clone()))
            .collect();
        let hints = FlushHints::new(targets);
        let mut bus = MmioBus::new();
        if !hints.is_empty() {
            bus.insert(layout::FLUSH_HINT_BASE, hints.len(), Arc::new(hints))?;
        }
        Ok(bus)
    }

    /// Writes every dirty page of file and block-device backings to the host's storage.
    /// Device-dax needs nothing (see `PmemMapping::flush`). Errors are logged, not returned:
    /// this runs on the way out and one failing device must not keep the others unflushed.
    pub fn flush(&self) -> bool {
        let mut ok = true;
        for d in &self.devices {
            if d.config.readonly {
                continue;
            }
            if let Err(e) = d.mapping.flush() {
                warn!(
                    "{}: flushing {} failed: {e}",
                    d.config.id,
                    d.config.path.display()
                );
                ok = false;
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phys_limit_from_cpuinfo() {
        let c = "processor\t: 0\naddress sizes\t: 40 bits physical, 48 bits virtual\n";
        assert_eq!(guest_phys_limit(c), 1 << 40);
        assert_eq!(guest_phys_limit("nothing"), 1 << 36);
    }
}
