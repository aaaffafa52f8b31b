//! ACPI tables for a KVM guest with persistent memory, as pure functions of a plain platform
//! description: no KVM, no guest memory, just bytes.
//!
//! [`build_tables`] turns a [`PlatformDesc`] into one blob (RSDP, XSDT, FADT, DSDT, MADT,
//! with NVDIMMs an NFIT, and with NVDIMMs on NUMA nodes an SRAT) that the monitor copies to
//! guest memory, normally at 0xE0000 where Linux scans for the RSDP. The platform is ACPI
//! "hardware-reduced": no PM1/GPE blocks, no SCI, no FACS; power off and reset go through the
//! registers in [`PowerDesc`], whose guest-written values [`decode_sleep_control`] decodes.
//!
//! NVDIMMs follow what Linux 6.12's NFIT driver needs (drivers/acpi/nfit/core.c): an NFIT with
//! a SPA range, region mapping and control region per DIMM, an `ACPI0012` root device in the
//! DSDT, and one child device per DIMM whose `_ADR` equals the DIMM's [`nfit_handle`]. An
//! NVDIMM's proximity domain also needs an SRAT declaring it, with all CPUs and RAM in domain
//! 0; the `srat` module documents what the guest then shows (`numa_node` 0, `target_node` the
//! NVDIMM's node).
//!
//! ```
//! use acpi::*;
//!
//! let desc = PlatformDesc {
//!     num_cpus: 2,
//!     ioapic: IoApicDesc::default(),
//!     serial: vec![SerialDesc::COM1],
//!     power: PowerDesc::default(),
//!     nvdimms: vec![NvdimmDesc {
//!         base: 0x1_0000_0000,
//!         size: 1 << 30,
//!         proximity_domain: Some(1),
//!         readonly: false,
//!         serial_number: 1,
//!         slot: 0,
//!         flush_hint: Some(0xfe00_0000),
//!     }],
//!     ram: vec![(0, 2 << 30)],
//!     nvdimm_hotplug: None,
//!     nvdimm_dsm: None,
//! };
//! let tables = build_tables(&desc, 0xe0000, 0x20000)?;
//! assert_eq!(tables.rsdp_addr, 0xe0000);
//! assert_eq!(&tables.bytes[..8], b"RSD PTR ");
//! assert!(tables.table(b"NFIT").is_some());
//! // The DIMM is on proximity domain 1, so the guest also needs an SRAT.
//! assert!(desc.needs_srat() && tables.table(b"SRAT").is_some());
//! // The guest's power-off write to the sleep control port:
//! assert_eq!(decode_sleep_control(0x34), Some(S5_SLEEP_TYPE));
//! # Ok::<(), AcpiError>(())
//! ```

mod desc;
mod dsdt;
mod error;
mod fadt;
mod madt;
mod nfit;
mod power;
mod sdt;
mod srat;
mod tables;

pub use desc::{
    HealthEventsDesc, IoApicDesc, NvdimmDesc, NvdimmDsmDesc, NvdimmEjectDesc, NvdimmHotplugDesc,
    PlatformDesc, PowerDesc, SerialDesc, MAX_CPUS, MAX_NVDIMMS, MAX_PROXIMITY_DOMAIN,
    MAX_SERIAL_PORTS, NVDIMM_ALIGN,
};
pub use dsdt::NVDIMM_ROOT;
pub use error::AcpiError;
pub use fadt::IAPC_BOOT_ARCH;
pub use madt::LOCAL_APIC_ADDRESS;
pub use nfit::{nfit_handle, nfit_structures, MAX_FIT_LEN};
pub use power::{
    decode_sleep_control, sleep_control_value, S5_SLEEP_CONTROL, S5_SLEEP_TYPE, SLP_EN, WAK_STS,
};
pub use sdt::{oem_table_id, OEM_ID, OEM_REVISION};
pub use tables::{build_tables, AcpiTables, TableInfo};
