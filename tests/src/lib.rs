//! The testbed: run scripts and guests on "a host with usable KVM" for the vmm's integration
//! tests and benchmarks.
//!
//! Where KVM comes from is decided once per process ([`mode()`]): directly on this machine when
//! it has VT-x/AMD-V, or inside a nested L1 VM (our own kernel under QEMU TCG, which provides
//! KVM with nested paging) when it does not — as on the `kvm_pvm` development machines. Tests
//! are written once against [`run_on_kvm_host`] and [`boot_guest`] and run the same way in
//! both modes; they fail, never skip, when neither mode is available.
//!
//! Environment variables are listed in [`config`] and in `tests/README.md`.

pub mod artifacts;
pub mod config;
pub mod cpio;
mod error;
pub mod guest;
pub mod host;
mod l1_probe;
pub mod ldd;
pub mod markers;
pub mod mode;
pub mod nested;
pub mod nvdimm;
pub mod pmem_checks;
pub mod policy_checks;
mod process;
pub mod scratch;
pub mod shell;
pub mod slots;

pub use artifacts::{
    initramfs, kernel, stock_initramfs, stock_kernel, vmm, InitramfsSpec, Kernel, StockKernel,
};
pub use error::{
    Error, Result, EARLY_HANG_MARKER, GUEST_CRASH_MARKER, L1_CRASH_MARKER, L1_STUCK_MARKER,
    LOST_INTERRUPT_MARKER,
};
pub use guest::{
    boot_and_check, boot_guest, boot_guests, parse_guest_report, GuestCase, GuestKernel, GuestOpts,
    GuestReport, GuestRun, KernelImage,
};
pub use host::{run_on_kvm_host, HostOpts, HostRun, StockStaging};
pub use markers::{
    host_section, marker_values, parse_iomem, tail_lines, word_value, HostSection, IomemEntry,
};
pub use mode::{mode, Mode};
pub use nvdimm::{Nvdimm, NvdimmKind};
pub use scratch::ScratchDir;
