//! Persistent memory exposed to the guest as NFIT NVDIMM namespaces: the host side of each
//! device, one concern per module. (The guest-facing flush-hint device is [`crate::flush_hint`].)
//!
//! | module | concern |
//! | --- | --- |
//! | [`backing`] | open, lock, identify and size a backing (file, device-dax, block device) |
//! | [`dax_sysfs`] | device-dax size and alignment from sysfs |
//! | [`fault`] | why a backing could not supply a page of its mapping (full file system, I/O error, removed device-dax) |
//! | [`mapping`] | [`mapping::PmemMapping`], the RAII owner of a backing's mmap; flush |
//! | [`infoblock`] | the pfn/dax info block (`struct nd_pfn_sb`) and the layout it implies |
//! | [`labels`] | the label area: where it lives, the capacity it leaves, what it holds, its bytes for the `_DSM` mailbox |
//! | [`options`] | the values of `memmap=`, `mode=`, `align=`, `format=` |
//! | [`namespace_io`] | reading and durably writing a namespace's bytes (file I/O or the mapping) |
//! | [`format`](mod@format) | the memmap policy planner: what the guest gets, and the one write it needs |
//! | [`report`] | the typed report of what the guest gets (mode, memmap, sizes) |
//! | [`bytes`] | byte counts in messages |

pub mod backing;
pub mod bytes;
pub mod dax_sysfs;
pub mod fault;
pub mod format;
pub mod infoblock;
pub mod labels;
pub mod mapping;
pub mod namespace_io;
pub mod options;
pub mod report;
#[cfg(test)]
mod test_support;

/// The flush hints are a guest-facing device now at [`crate::flush_hint`]; this is the path
/// callers have always used.
pub use crate::flush_hint;
