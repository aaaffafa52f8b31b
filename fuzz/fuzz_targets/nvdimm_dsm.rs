//! cargo-fuzz target; the logic is [`pmem_vmm_fuzz::nvdimm_dsm`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pmem_vmm_fuzz::nvdimm_dsm(data));
