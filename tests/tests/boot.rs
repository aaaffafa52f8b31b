//! Booting the guest through the vmm: vCPU counts, memory sizes (and the 32-bit hole), both
//! kernel image formats, and the vmm's exit status for each way a guest can stop.
//!
//! Exit-status contract of the vmm: 0 guest powered off, 3 guest reboot, 4 triple fault.
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.

use testbed::markers::{parse_iomem, system_ram_overlapping};
use testbed::{boot_guest, GuestOpts, GuestRun, KernelImage, Result};

/// The 32-bit MMIO hole that must hold no guest RAM.
const HOLE: (u64, u64) = (0xC000_0000, 0xFFFF_FFFF);

fn boot(opts: GuestOpts) -> Result<GuestRun> {
    let run = boot_guest(&opts)?;
    eprintln!(
        "{} host: run {:.2?}, host ready {:?}, vmm {:?}, vmm exit {}",
        run.host.mode, run.host.duration, run.host.host_ready, run.report.vmm_time, run.vmm_exit
    );
    Ok(run)
}

fn expect_cpus(cpus: u32) -> Result<()> {
    let run = boot(GuestOpts::default().with_cpus(cpus).with_command("true"))?;
    run.expect_success()?;
    run.check(run.report.cpus == Some(cpus), || {
        format!("guest saw {:?} CPUs, expected {cpus}", run.report.cpus)
    })
}

#[test]
fn boots_to_init_with_1_vcpu() -> Result<()> {
    expect_cpus(1)
}

#[test]
fn boots_to_init_with_4_vcpus() -> Result<()> {
    expect_cpus(4)
}

/// The guest gets the RAM it asked for, and none of it in the 32-bit hole.
///
/// Checked two ways: the `System RAM` ranges in `/proc/iomem` (what the vmm's e820 gave, minus
/// the legacy hole below 1 MiB) add up to within 1% of the request; MemTotal (that minus what
/// the kernel reserves for itself) is within 5% of it — except that at 256 MiB this kernel's
/// own image, page tables and struct pages already take ~20 MiB (7.5%; `Memory: ...
/// reserved` in dmesg), so small guests get a fixed 24 MiB allowance instead.
fn expect_memory(memory: &str, mib: u64) -> Result<()> {
    let run = boot(
        GuestOpts::default()
            .with_memory(memory)
            .with_command("cat /proc/iomem"),
    )?;
    run.expect_success()?;
    let requested_kb = mib * 1024;
    let memtotal = run.report.memtotal_kb.unwrap_or(0);
    let allowance_kb = (requested_kb / 20).max(24 * 1024);
    eprintln!("MemTotal {memtotal} kB for {requested_kb} kB requested");
    run.check(
        memtotal <= requested_kb && memtotal + allowance_kb >= requested_kb,
        || format!("MemTotal {memtotal} kB is not within {allowance_kb} kB of {requested_kb} kB"),
    )?;
    let iomem = parse_iomem(run.console());
    let ram: Vec<_> = iomem.iter().filter(|e| e.name == "System RAM").collect();
    let ram_kb: u64 = ram.iter().map(|e| (e.end + 1 - e.start) / 1024).sum();
    run.check(
        ram_kb <= requested_kb && ram_kb * 100 >= requested_kb * 99,
        || format!("System RAM in /proc/iomem adds up to {ram_kb} kB, not {requested_kb} kB"),
    )?;
    let bad = system_ram_overlapping(&iomem, HOLE.0, HOLE.1);
    run.check(bad.is_empty(), || {
        format!("System RAM inside {:#x}-{:#x}: {bad:x?}", HOLE.0, HOLE.1)
    })?;
    // Above 3 GiB of RAM the rest must be above 4 GiB.
    if mib > 3072 {
        run.check(
            iomem
                .iter()
                .any(|e| e.name == "System RAM" && e.start >= 0x1_0000_0000),
            || "3.5 GiB guest has no System RAM above 4 GiB".into(),
        )?;
    }
    Ok(())
}

#[test]
fn memory_256_mib() -> Result<()> {
    expect_memory("256M", 256)
}

#[test]
fn memory_3_5_gib_skips_the_32_bit_hole() -> Result<()> {
    expect_memory("3584M", 3584)
}

#[test]
fn boots_bzimage() -> Result<()> {
    let run = boot(
        GuestOpts::default()
            .with_kernel(KernelImage::BzImage)
            .with_command("true"),
    )?;
    run.expect_success().map(drop)
}

#[test]
fn boots_vmlinux() -> Result<()> {
    let run = boot(
        GuestOpts::default()
            .with_kernel(KernelImage::Vmlinux)
            .with_command("true"),
    )?;
    run.expect_success().map(drop)
}

#[test]
fn guest_poweroff_exits_0() -> Result<()> {
    let run = boot(GuestOpts::default().with_command("poweroff -f"))?;
    run.expect_booted()?;
    run.expect_vmm_exit(0).map(drop)
}

#[test]
fn guest_reboot_exits_3() -> Result<()> {
    let run = boot(GuestOpts::default().with_command("reboot -f"))?;
    run.expect_booted()?;
    run.expect_vmm_exit(3).map(drop)
}

/// `reboot=t` makes Linux reboot by triple fault (empty IDT, then an interrupt).
#[test]
fn guest_triple_fault_exits_4() -> Result<()> {
    let run = boot(
        GuestOpts::default()
            .with_kernel_param("reboot=t")
            .with_command("reboot -f"),
    )?;
    run.expect_booted()?;
    run.expect_vmm_exit(4).map(drop)
}

/// A stock boot, with `quiet` dropped from the kernel command line so every kernel message
/// reaches the console, prints no warning, bug or fatal line (the CPUID the vmm gives must be
/// consistent, e.g. leaf 0xD's XSAVE sizes, and PCI config access must be found).
#[test]
fn loud_boot_prints_no_warning_bug_or_fatal_line() -> Result<()> {
    let mut opts = GuestOpts::default().with_cpus(2).with_command("true");
    opts.kernel_params.retain(|p| p != "quiet");
    let run = boot(opts)?;
    run.expect_success()?;
    let console = run.console();
    run.check(console.contains("Linux version"), || {
        "the console holds no kernel messages: was `quiet` dropped?".into()
    })?;
    let bad: Vec<&str> = console
        .lines()
        .filter(|l| {
            ["WARNING", "BUG", "Fatal", "XSAVE consistency"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    run.check(bad.is_empty(), || {
        format!("the guest printed warnings:\n{}", bad.join("\n"))
    })
}
