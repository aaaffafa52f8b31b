//! Persistent memory exposed to the guest as NFIT NVDIMM namespaces.
//!
//! [`infoblock`] is the pfn/dax info block (`struct nd_pfn_sb`) that tells the guest's libnvdimm
//! which personality a namespace has (fsdax or devdax) and where its memmap lives.

pub mod backing;
pub mod flush_hint;
pub mod format;
pub mod infoblock;
#[cfg(test)]
mod test_support;
