//! cargo-fuzz target; the logic is [`pmem_vmm_fuzz::kernel_loader`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pmem_vmm_fuzz::kernel_loader(data));
