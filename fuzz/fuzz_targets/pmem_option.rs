//! cargo-fuzz target; the logic is [`pmem_vmm_fuzz::pmem_option`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pmem_vmm_fuzz::pmem_option(data));
