//! The `bench` package: benchmarks of the vmm on the testbed (see `bench/README.md`).
//!
//! Two programs share this library:
//!
//! * `bench` (on the machine you run it on) plans the phases, turns each into one host script
//!   for [`testbed::run_on_kvm_host`], parses what came back, and writes the table, the JSON
//!   file and the PNG plot;
//! * `bench-probe` runs *on the KVM host* (L1 in nested mode, so TCG's L1 boot does not pollute
//!   the figures) and in the guest: it launches a monitor and timestamps its output lines with
//!   `CLOCK_MONOTONIC`, reads its resident memory from `/proc/PID/smaps`, times `mmap` copies and
//!   sysfs writes. It reports `@@BENCH tag metric value@@` lines that `bench` collects.

pub mod density;
pub mod lines;
pub mod machine;
pub mod plot;
pub mod report;
pub mod scripts;
pub mod settings;
pub mod smaps;
pub mod stage2;
pub mod stats;
pub mod summary;
pub mod timefmt;
