//! Why a platform description cannot be turned into tables.

use thiserror::Error;

/// Every way [`crate::build_tables`] can refuse. Each message names the offending value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AcpiError {
    #[error("a platform needs at least one CPU")]
    NoCpus,
    #[error("{count} CPUs requested, at most {max} are supported (8-bit APIC ids)")]
    TooManyCpus { count: u32, max: u32 },
    #[error("{count} serial ports requested, at most {max} are supported")]
    TooManySerialPorts { count: usize, max: usize },
    #[error("serial port at I/O base {io_base:#x} would run past port 0xffff")]
    SerialPortRange { io_base: u16 },
    #[error("serial IRQ {irq} is not an ISA IRQ (0-15)")]
    SerialIrq { irq: u8 },
    #[error("{count} NVDIMMs requested, at most {max} are supported")]
    TooManyNvdimms { count: usize, max: usize },
    #[error("NVDIMM {index} has size 0")]
    NvdimmEmpty { index: usize },
    #[error("NVDIMM {index}: base {base:#x} + size {size:#x} overflows 64 bits")]
    NvdimmOverflow { index: usize, base: u64, size: u64 },
    #[error("NVDIMM {index}: base {base:#x} and size {size:#x} must be multiples of 4 KiB")]
    NvdimmMisaligned { index: usize, base: u64, size: u64 },
    #[error("NVDIMMs {first} and {second} overlap in guest physical memory")]
    NvdimmOverlap { first: usize, second: usize },
    #[error("NVDIMMs {first} and {second} share serial number {serial_number:#x}")]
    NvdimmDuplicateSerial {
        first: usize,
        second: usize,
        serial_number: u32,
    },
    #[error("NVDIMM eject registers at port {port:#x} run past the last I/O port")]
    EjectPort { port: u16 },
    #[error("NVDIMM {index}: slot {slot} is not below {max}")]
    NvdimmSlot {
        index: usize,
        slot: usize,
        max: usize,
    },
    #[error("NVDIMMs {first} and {second} share slot {slot}")]
    NvdimmDuplicateSlot {
        first: usize,
        second: usize,
        slot: usize,
    },
    #[error("NVDIMM {index}: proximity domain {domain} is above {max}, which Linux cannot map")]
    NvdimmProximityDomain { index: usize, domain: u32, max: u32 },
    #[error(
        "RAM region {index} (start {start:#x}, length {len:#x}) is empty or overflows 64 bits"
    )]
    RamRegionInvalid { index: usize, start: u64, len: u64 },
    #[error("RAM regions {first} and {second} overlap")]
    RamOverlap { first: usize, second: usize },
    #[error("RAM region {ram} overlaps NVDIMM {nvdimm}")]
    RamOverlapsNvdimm { ram: usize, nvdimm: usize },
    #[error("an NVDIMM has a NUMA node, so the SRAT must describe guest RAM, but no RAM regions were given")]
    SratWithoutRam,
    #[error(
        "table base {base:#x} is not 16-byte aligned (Linux scans for the RSDP in 16-byte steps)"
    )]
    MisalignedBase { base: u64 },
    #[error("ACPI tables need {needed:#x} bytes, only {max_len:#x} are available")]
    TooLarge { needed: usize, max_len: usize },
    #[error("ACPI tables of {len:#x} bytes at {base:#x} would run past the 64-bit address space")]
    AddressOverflow { base: u64, len: usize },
    #[error("the NVDIMM _DSM mailbox page {page_addr:#x} is not page-aligned or runs past the address space, or its doorbell port {doorbell_port:#x} wraps")]
    DsmMailbox { page_addr: u64, doorbell_port: u16 },
}
