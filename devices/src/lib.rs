//! Device models for the monitor. None of them sees a KVM file descriptor: the vCPU threads
//! dispatch guest accesses to them through the buses in [`bus`] (port I/O for COM1, the i8042,
//! the ACPI sleep/reset ports and an empty PCI bus's configuration ports; MMIO for the NFIT flush hints), and they report guest
//! requests (power off, reset) through [`lifecycle`]. [`pmem`] is the host side of persistent
//! memory: backings, their mappings, the info block and the memmap policy.

pub mod bus;
pub mod flush_hint;
pub mod i8042;
pub mod lifecycle;
pub mod nvdimm_dsm;
pub mod nvdimm_eject;
pub mod nvdimm_events;
pub mod pci;
pub mod pmem;
pub mod power;
pub mod serial;
