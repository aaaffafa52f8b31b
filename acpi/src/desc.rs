//! The plain platform description the tables are built from.
//!
//! These types carry only what the guest must be told; they know nothing about KVM or host
//! files. [`PlatformDesc::validate`] rejects descriptions that would produce tables Linux
//! refuses or misreads, so that [`crate::build_tables`] can stay a straight serialisation.

use crate::error::AcpiError;

/// Highest CPU count (the guest geometry's; 8-bit APIC ids below the broadcast id 0xff).
pub use geometry::MAX_CPUS;

/// Highest NVDIMM count: the monitor's [`geometry::MAX_PMEM_DEVICES`] (64). The tables could
/// name up to 256 (child devices `NV00`..`NVFF`, two hex digits); they are never asked for more
/// than the command line accepts.
pub use geometry::MAX_PMEM_DEVICES as MAX_NVDIMMS;

const _: () = assert!(MAX_NVDIMMS <= 256, "NVDIMM child names have two hex digits");

/// Highest serial port count: devices are named `COM1`..`COM9`.
pub const MAX_SERIAL_PORTS: usize = 9;

/// Highest NVDIMM proximity domain. Linux sizes its proximity-domain map as
/// `MAX_PXM_DOMAINS` = max(256, `MAX_NUMNODES`) (include/acpi/acpi_numa.h); a larger domain
/// in the SRAT makes `acpi_map_pxm_to_node()` fail, and `acpi_parse_memory_affinity()` then
/// drops the whole SRAT (`bad_srat()`). 255 is accepted by every kernel configuration.
pub const MAX_PROXIMITY_DOMAIN: u32 = 255;

/// Linux builds a pmem region only when every mapping's DPA and size are multiples of
/// PAGE_SIZE (`nd_region_create()` in drivers/nvdimm/region_devs.c); we use the same unit for
/// the SPA base so the namespace starts on a page.
pub const NVDIMM_ALIGN: u64 = 4096;

/// Everything the ACPI tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformDesc {
    /// 1..=[`MAX_CPUS`]. CPU `i` gets APIC id `i` and ACPI processor UID `i`, as one enabled
    /// Local APIC (MADT type 0) entry each. No x2APIC entries: a kernel built without
    /// `CONFIG_X86_X2APIC` ignores those and would see a single CPU.
    pub num_cpus: u32,
    pub ioapic: IoApicDesc,
    /// Each becomes a `PNP0501` device (`COM1`, `COM2`, ...) in the DSDT with `_CRS` = IO + IRQ.
    pub serial: Vec<SerialDesc>,
    pub power: PowerDesc,
    /// May be empty: then neither the NFIT nor the `ACPI0012` root device is emitted.
    pub nvdimms: Vec<NvdimmDesc>,
    /// Guest RAM regions as `(start, length)`, e.g. `[(0, 3 GiB), (4 GiB, 512 MiB)]`: the KVM
    /// memory slots, holes included (the SRAT may cover the E820 holes below 1 MiB; Linux only
    /// counts what is E820 RAM). Used only for the SRAT (see [`PlatformDesc::needs_srat`]), where
    /// each region becomes a Memory Affinity structure in proximity domain 0. They must cover
    /// every E820 RAM range: Linux rejects its SRAT-based NUMA setup if more than 1 MiB of RAM
    /// has no node (`memblock_validate_numa_coverage()`) and falls back to a single fake node,
    /// losing the NVDIMMs' nodes. Non-empty, non-overlapping, disjoint from every NVDIMM; may
    /// be empty only while no SRAT is needed.
    pub ram: Vec<(u64, u64)>,
    /// NVDIMM hot-add: the root device gets a `_FIT` method and a child for every possible
    /// DIMM, and the Generic Event Device an interrupt that notifies the root device. None: a
    /// fixed set of NVDIMMs described by the NFIT alone.
    pub nvdimm_hotplug: Option<NvdimmHotplugDesc>,
    /// The NVDIMM `_DSM` mailbox: every DIMM device gets a `_DSM` that hands its request to the
    /// monitor through it (see [`NvdimmDsmDesc`]). None: no `_DSM`, the DIMMs are label-less.
    pub nvdimm_dsm: Option<NvdimmDsmDesc>,
}

/// Where the DIMMs' `_DSM` methods pass requests to the monitor: a page of guest memory laid
/// out as [`geometry::dsm_mailbox`] says and a 32-bit doorbell port whose write the monitor
/// serves before the write completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvdimmDsmDesc {
    /// Guest-physical address of the page; page-aligned, in memory the guest does not use as
    /// RAM (an E820 reserved range).
    pub page_addr: u64,
    /// The doorbell I/O port.
    pub doorbell_port: u16,
    /// How the monitor tells the guest a DIMM's health changed; None: it never does.
    pub health_events: Option<HealthEventsDesc>,
}

/// DIMM health notifications (`Notify (NVxx, 0x81)`, Linux `NFIT_NOTIFY_DIMM_HEALTH`): the
/// monitor raises a Generic Event Device interrupt, and the GED's `_EVT` reads which DIMMs
/// changed from a register of two read-to-clear 32-bit halves (bit *i*: DIMM *i*, the DIMM
/// with NFIT handle *i* + 1) and notifies each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthEventsDesc {
    /// The GED interrupt that means "look at the register".
    pub gsi: u32,
    /// The register's I/O port ([`geometry::nvdimm_events`]).
    pub port: u16,
}

/// How the guest finds the current NVDIMM set while it runs (Linux: `acpi_nfit_notify()` →
/// `acpi_nfit_update_notify()` evaluates `_FIT` on `Notify (NVDR, 0x80)`; at boot
/// `acpi_nfit_add()` prefers `_FIT` over the static NFIT when it exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvdimmHotplugDesc {
    /// Guest-physical address of the FIT buffer the monitor keeps current: a little-endian
    /// u32 byte count, then that many bytes of NFIT structures ([`crate::nfit_structures`]).
    /// It must lie in memory the guest does not use as RAM (an E820 reserved range).
    pub fit_addr: u64,
    /// Bytes after the count that `_FIT` may read: at least the FIT of [`MAX_NVDIMMS`] DIMMs.
    pub fit_max: u32,
    /// The Generic Event Device interrupt that means "the NVDIMM set changed".
    pub gsi: u32,
    /// NVDIMM hot-remove: the monitor's eject request and the guest's answer. None: DIMMs are
    /// only ever added.
    pub eject: Option<NvdimmEjectDesc>,
}

/// How the monitor asks the guest to release a DIMM and hears its answer (docs/hot-remove.md):
/// a Generic Event Device interrupt whose `_EVT` reads the DIMM to release from the eject
/// registers ([`geometry::nvdimm_eject`]) and notifies its device with 3 (eject request); every
/// DIMM device gets `_EJ0` (the guest released it) and `_OST` (the guest's status, a refusal
/// with its reason), both of which write the registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvdimmEjectDesc {
    /// First I/O port of the eject registers ([`geometry::nvdimm_eject::LEN`] ports).
    pub port: u16,
    /// The Generic Event Device interrupt that means "release the DIMM in the request register".
    pub gsi: u32,
}

/// The single IOAPIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicDesc {
    pub id: u8,
    /// MMIO base, normally 0xFEC0_0000.
    pub address: u32,
    /// First GSI served by this IOAPIC, normally 0.
    pub gsi_base: u32,
}

impl Default for IoApicDesc {
    /// KVM's in-kernel IOAPIC: its ID register resets to 0 (`kvm_ioapic_reset()`), its window is
    /// the PC default 0xFEC0_0000 and it serves GSIs 0..24.
    fn default() -> Self {
        IoApicDesc {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
        }
    }
}

/// A 16550-compatible UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialDesc {
    /// First of its 8 I/O ports, e.g. 0x3f8.
    pub io_base: u16,
    /// ISA IRQ, e.g. 4. Described in `_CRS` so that Linux maps it through the IOAPIC: on a
    /// hardware-reduced platform Linux has no legacy PIC and does not pre-map ISA IRQs 0-15
    /// (`acpi_generic_reduced_hw_init()` installs `null_legacy_pic`), so the 8250 driver only gets
    /// a working interrupt through the PNP0501 device.
    pub irq: u8,
}

impl SerialDesc {
    /// The first PC serial port.
    pub const COM1: SerialDesc = SerialDesc {
        io_base: 0x3f8,
        irq: 4,
    };
}

/// The hardware-reduced ACPI power registers (FADT `SLEEP_CONTROL_REG`, `SLEEP_STATUS_REG`,
/// `RESET_REG`), all 8-bit system I/O ports.
///
/// What the guest writes (Linux 6.12, drivers/acpi/acpica/hwesleep.c `acpi_hw_extended_sleep()`
/// and drivers/acpi/reboot.c `acpi_reboot()`):
///
/// * **Power off**: first [`crate::WAK_STS`] (0x80) to `sleep_status_port` (write-1-to-clear;
///   ignore it), then `(SLP_TYP << 2) | SLP_EN` to `sleep_control_port`, where SLP_TYP is the
///   first element of the DSDT's `\_S5_` package, i.e. [`crate::S5_SLEEP_TYPE`] (5). The byte is
///   therefore [`crate::S5_SLEEP_CONTROL`] = 0x34; [`crate::decode_sleep_control`] turns it back
///   into `Some(5)`. After the write the guest spins reading `sleep_status_port` until bit 7
///   (WAK_STS) is set, so the monitor must stop the vCPU rather than return.
/// * **Reboot**: `reset_value` to `reset_port` (written directly as one byte by `acpi_reset()`).
///   If the monitor does not stop, Linux falls back to writing 0xfe to the i8042 command port
///   0x64 (arch/x86/kernel/reboot.c, `BOOT_KBD`), then retries ACPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerDesc {
    pub sleep_control_port: u16,
    pub sleep_status_port: u16,
    pub reset_port: u16,
    pub reset_value: u8,
    /// The ACPI power button, on a hardware-reduced platform (which has no fixed power-button
    /// event): a Generic Event Device (`GED0`, `_HID "ACPI0013"`) whose `_CRS` is this
    /// edge-triggered, active-high GSI and whose `_EVT` does `Notify (\_SB.PWRB, 0x80)`, and
    /// `PWRB` (`_HID "PNP0C0C"`), the power button device. None: neither is emitted.
    pub power_button_gsi: Option<u32>,
}

impl Default for PowerDesc {
    /// Sleep registers at 0x3c0/0x3c1 (VGA attribute-controller ports, free because there is
    /// no VGA and the FADT says so); reset register at the PC reset control register 0xcf9 with
    /// value 0x06 (bit 1 SYS_RST + bit 2 RST_CPU, a hard reset on PC chipsets).
    fn default() -> Self {
        PowerDesc {
            sleep_control_port: 0x3c0,
            sleep_status_port: 0x3c1,
            reset_port: 0xcf9,
            reset_value: 0x06,
            power_button_gsi: None,
        }
    }
}

/// One NVDIMM: a single persistent-memory range backed by one device, not interleaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvdimmDesc {
    /// Guest-physical base of the whole device window (the NFIT SPA range), 4 KiB aligned.
    pub base: u64,
    /// Window size in bytes; non-zero, multiple of 4 KiB.
    pub size: u64,
    /// `numa=NODE`: when set, the SPA range carries this proximity domain and marks it valid,
    /// and the tables gain an SRAT that declares the domain (Linux's `pxm_to_node()` only knows
    /// domains an SRAT declared). At most [`MAX_PROXIMITY_DOMAIN`]. The guest shows the domain
    /// as its own node id only if the domains in use are dense (0, 1, 2, ...); see the `srat`
    /// module docs for the numbering and for `numa_node` (0) versus `target_node` (this node).
    pub proximity_domain: Option<u32>,
    /// Sets "not armed" in the region mapping's state flags, which makes Linux mark the region
    /// read-only (`NDD_UNARMED` -> `nd_region_create()` sets `ro`).
    pub readonly: bool,
    /// Control-region serial number; part of the DIMM `id` Linux and ndctl show, so it must be
    /// distinct per DIMM.
    pub serial_number: u32,
    /// The DIMM's place among the platform's possible DIMMs, below [`MAX_NVDIMMS`]: its NFIT
    /// device handle is [`crate::nfit_handle`]`(slot)`, its structure indexes `slot + 1`, its
    /// ACPI device `\_SB.NVDR.NVxx` with `xx` = `slot` in hex. A DIMM keeps its slot while it
    /// exists, so removing one at runtime changes nothing the guest knows of the others; slots
    /// are distinct.
    pub slot: usize,
    /// Guest-physical address of the DIMM's flush hint: an uncached MMIO location the guest
    /// writes after its own cache write-back whenever it needs data durable (fsync, REQ_FLUSH,
    /// REQ_FUA: `generic_nvdimm_flush()`). The monitor traps the write and makes the host side
    /// durable. `None` leaves the structure out; Linux then assumes the platform (ADR) persists
    /// everything that left the CPU caches and never tells the monitor.
    pub flush_hint: Option<u64>,
}

impl NvdimmDesc {
    /// One past the last byte, or `None` when `base + size` overflows.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size)
    }
}

impl PlatformDesc {
    /// Whether the tables include an SRAT: exactly when some NVDIMM has a proximity domain.
    ///
    /// Without one, no domain needs declaring: a guest without NUMA configuration puts all RAM
    /// and CPUs on a fake node 0 anyway, so we keep the tables minimal. The cost of leaving it
    /// out: an NVDIMM's `target_node` is then -1 in the guest (the pmem range is in no NUMA
    /// block), so `daxctl reconfigure-device --mode=system-ram` (dax kmem) refuses the device;
    /// its `numa_node` is 0 either way. The cost of adding it: see the `srat` module docs
    /// (SWIOTLB in guests without RAM above 4 GiB).
    pub fn needs_srat(&self) -> bool {
        self.nvdimms.iter().any(|d| d.proximity_domain.is_some())
    }

    /// Checks every rule the table builders rely on. Called by [`crate::build_tables`].
    pub fn validate(&self) -> Result<(), AcpiError> {
        if self.num_cpus == 0 {
            return Err(AcpiError::NoCpus);
        }
        if self.num_cpus > MAX_CPUS {
            return Err(AcpiError::TooManyCpus {
                count: self.num_cpus,
                max: MAX_CPUS,
            });
        }
        if self.serial.len() > MAX_SERIAL_PORTS {
            return Err(AcpiError::TooManySerialPorts {
                count: self.serial.len(),
                max: MAX_SERIAL_PORTS,
            });
        }
        for s in &self.serial {
            if s.io_base.checked_add(7).is_none() {
                return Err(AcpiError::SerialPortRange { io_base: s.io_base });
            }
            if s.irq > 15 {
                return Err(AcpiError::SerialIrq { irq: s.irq });
            }
        }
        self.validate_nvdimms()?;
        if let Some(e) = self.nvdimm_hotplug.and_then(|h| h.eject) {
            if e.port
                .checked_add(geometry::nvdimm_eject::LEN - 1)
                .is_none()
            {
                return Err(AcpiError::EjectPort { port: e.port });
            }
        }
        if let Some(d) = &self.nvdimm_dsm {
            let page = geometry::dsm_mailbox::PAGE_SIZE;
            if !d.page_addr.is_multiple_of(page)
                || d.page_addr.checked_add(page).is_none()
                || d.doorbell_port.checked_add(3).is_none()
            {
                return Err(AcpiError::DsmMailbox {
                    page_addr: d.page_addr,
                    doorbell_port: d.doorbell_port,
                });
            }
        }
        self.validate_ram()
    }

    fn validate_ram(&self) -> Result<(), AcpiError> {
        if self.ram.is_empty() && self.needs_srat() {
            return Err(AcpiError::SratWithoutRam);
        }
        for (index, &(start, len)) in self.ram.iter().enumerate() {
            if len == 0 || start.checked_add(len).is_none() {
                return Err(AcpiError::RamRegionInvalid { index, start, len });
            }
        }
        // Ends exist: checked above and in validate_nvdimms().
        let overlaps = |a: u64, a_len: u64, b: u64, b_len: u64| a < b + b_len && b < a + a_len;
        for (i, &(a, a_len)) in self.ram.iter().enumerate() {
            for (j, &(b, b_len)) in self.ram.iter().enumerate().skip(i + 1) {
                if overlaps(a, a_len, b, b_len) {
                    return Err(AcpiError::RamOverlap {
                        first: i,
                        second: j,
                    });
                }
            }
            for (n, d) in self.nvdimms.iter().enumerate() {
                if overlaps(a, a_len, d.base, d.size) {
                    return Err(AcpiError::RamOverlapsNvdimm { ram: i, nvdimm: n });
                }
            }
        }
        Ok(())
    }

    fn validate_nvdimms(&self) -> Result<(), AcpiError> {
        if self.nvdimms.len() > MAX_NVDIMMS {
            return Err(AcpiError::TooManyNvdimms {
                count: self.nvdimms.len(),
                max: MAX_NVDIMMS,
            });
        }
        for (index, d) in self.nvdimms.iter().enumerate() {
            if d.size == 0 {
                return Err(AcpiError::NvdimmEmpty { index });
            }
            if d.end().is_none() {
                return Err(AcpiError::NvdimmOverflow {
                    index,
                    base: d.base,
                    size: d.size,
                });
            }
            if !d.base.is_multiple_of(NVDIMM_ALIGN) || !d.size.is_multiple_of(NVDIMM_ALIGN) {
                return Err(AcpiError::NvdimmMisaligned {
                    index,
                    base: d.base,
                    size: d.size,
                });
            }
            if d.slot >= MAX_NVDIMMS {
                return Err(AcpiError::NvdimmSlot {
                    index,
                    slot: d.slot,
                    max: MAX_NVDIMMS,
                });
            }
            if let Some(domain) = d.proximity_domain.filter(|&p| p > MAX_PROXIMITY_DOMAIN) {
                return Err(AcpiError::NvdimmProximityDomain {
                    index,
                    domain,
                    max: MAX_PROXIMITY_DOMAIN,
                });
            }
        }
        for (i, a) in self.nvdimms.iter().enumerate() {
            for (j, b) in self.nvdimms.iter().enumerate().skip(i + 1) {
                // Both ends exist: checked above.
                let (a_end, b_end) = (a.base + a.size, b.base + b.size);
                if a.base < b_end && b.base < a_end {
                    return Err(AcpiError::NvdimmOverlap {
                        first: i,
                        second: j,
                    });
                }
                if a.slot == b.slot {
                    return Err(AcpiError::NvdimmDuplicateSlot {
                        first: i,
                        second: j,
                        slot: a.slot,
                    });
                }
                if a.serial_number == b.serial_number {
                    return Err(AcpiError::NvdimmDuplicateSerial {
                        first: i,
                        second: j,
                        serial_number: a.serial_number,
                    });
                }
            }
        }
        Ok(())
    }
}
