//! cargo-fuzz target; the logic is [`pmem_vmm_fuzz::acpi_tables`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pmem_vmm_fuzz::acpi_tables(data));
