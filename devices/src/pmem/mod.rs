//! Persistent memory exposed to the guest as NFIT NVDIMM namespaces: the host side of each
//! device, one concern per module.
//!
//! | module | concern |
//! | --- | --- |
//! | [`backing`] | open, lock, identify and size a backing (file, device-dax, block device) |
//! | [`dax_sysfs`] | device-dax size and alignment from sysfs |
//! | [`mapping`] | [`mapping::PmemMapping`], the RAII owner of a backing's mmap; flush |
//! | [`infoblock`] | the pfn/dax info block (`struct nd_pfn_sb`) and the layout it implies |
//! | [`format`] | the memmap policy planner: what the guest gets, and the one write it needs |
//! | [`flush_hint`] | the NFIT flush-hint MMIO device (guest-facing) |
//! | [`bytes`] | byte counts in messages |

pub mod backing;
pub mod bytes;
pub mod dax_sysfs;
pub mod flush_hint;
pub mod format;
pub mod infoblock;
pub mod mapping;
#[cfg(test)]
mod test_support;
