//! Booting the guest through the vmm: vCPU counts, memory sizes (and the 32-bit hole), both
//! kernel image formats, and the vmm's exit status for each way a guest can stop.
//!
//! Exit-status contract of the vmm: 0 guest powered off, 3 guest reboot, 4 triple fault.
//! These need KVM (direct) or QEMU (nested) and fail, never skip, when neither is available.
//! All shapes share one host and boot at once (`boot_guests`): one L1 boot instead of ten.

use testbed::markers::{parse_iomem, system_ram_overlapping};
use testbed::{boot_and_check, GuestCase, GuestOpts, GuestRun, HostOpts, KernelImage, Result};

/// The 32-bit MMIO hole that must hold no guest RAM.
const HOLE: (u64, u64) = (0xC000_0000, 0xFFFF_FFFF);

/// One guest shape of this file and what its run must show.
fn cases() -> Vec<GuestCase> {
    vec![
        GuestCase {
            name: "1 vCPU",
            opts: GuestOpts::default().with_cpus(1).with_command("true"),
            check: |run| expect_cpus(run, 1),
        },
        GuestCase {
            name: "4 vCPUs",
            opts: GuestOpts::default().with_cpus(4).with_command("true"),
            check: |run| expect_cpus(run, 4),
        },
        GuestCase {
            name: "256 MiB",
            opts: GuestOpts::default()
                .with_memory("256M")
                .with_command("cat /proc/iomem"),
            check: |run| expect_memory(run, 256),
        },
        GuestCase {
            name: "3.5 GiB skips the 32-bit hole",
            opts: GuestOpts::default()
                .with_memory("3584M")
                .with_command("cat /proc/iomem"),
            check: |run| expect_memory(run, 3584),
        },
        GuestCase {
            name: "bzImage",
            opts: GuestOpts::default()
                .with_kernel(KernelImage::BzImage)
                .with_command("true"),
            check: |run| run.expect_success().map(drop),
        },
        GuestCase {
            name: "vmlinux (PVH)",
            opts: GuestOpts::default()
                .with_kernel(KernelImage::Vmlinux)
                .with_command("true"),
            check: |run| run.expect_success().map(drop),
        },
        GuestCase {
            name: "guest poweroff exits 0",
            opts: GuestOpts::default().with_command("poweroff -f"),
            check: |run| {
                run.expect_booted()?;
                run.expect_vmm_exit(0).map(drop)
            },
        },
        GuestCase {
            name: "guest reboot exits 3",
            opts: GuestOpts::default().with_command("reboot -f"),
            check: |run| {
                run.expect_booted()?;
                run.expect_vmm_exit(3).map(drop)
            },
        },
        GuestCase {
            name: "loud boot prints no WARNING, BUG or Fatal line",
            opts: loud_boot(),
            check: expect_no_warning_bug_or_fatal_line,
        },
        // `reboot=t` makes Linux reboot by triple fault (empty IDT, then an interrupt).
        GuestCase {
            name: "guest triple fault exits 4",
            opts: GuestOpts::default()
                .with_kernel_param("reboot=t")
                .with_command("reboot -f"),
            check: |run| {
                run.expect_booted()?;
                run.expect_vmm_exit(4)?;
                // The monitor says where the vCPU was (under the default seccomp filter).
                run.check(
                    run.console().contains("triple fault: rip 0x")
                        && run.console().contains(" cr3 0x"),
                    || "no register line for the triple fault".to_string(),
                )
            },
        },
    ]
}

fn expect_cpus(run: &GuestRun, cpus: u32) -> Result<()> {
    run.expect_success()?;
    run.check(run.report.cpus == Some(cpus), || {
        format!("guest saw {:?} CPUs, expected {cpus}", run.report.cpus)
    })
}

/// The guest gets the RAM it asked for, and none of it in the 32-bit hole.
///
/// Checked two ways: the `System RAM` ranges in `/proc/iomem` (what the vmm's e820 gave, minus
/// the legacy hole below 1 MiB) add up to within 1% of the request; MemTotal (that minus what
/// the kernel reserves for itself) is within 5% of it — except that at 256 MiB this kernel's
/// own image, page tables and struct pages already take ~20 MiB (7.5%; `Memory: ...
/// reserved` in dmesg), so small guests get a fixed 24 MiB allowance instead.
fn expect_memory(run: &GuestRun, mib: u64) -> Result<()> {
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

/// Every shape above, booted at once in one host (one nested L1 boot for all guests). Each
/// shape is checked; the test fails listing every shape that failed, each with its console tail.
#[test]
fn every_boot_shape_in_one_shared_host() -> Result<()> {
    let cases = cases();
    // Room for all at once: 3.5 GiB + 9 x 256 MiB of guests plus L1's own needs.
    let host = HostOpts::default().with_memory_mib(8192);
    boot_and_check(&host, &cases, true, "boot shapes")
}

/// A stock boot, with `quiet` dropped from the kernel command line so every kernel message
/// reaches the console, prints no warning, bug or fatal line (the CPUID the vmm gives must be
/// consistent, e.g. leaf 0xD's XSAVE sizes, and PCI config access must be found).
fn loud_boot() -> GuestOpts {
    let mut opts = GuestOpts::default().with_cpus(2).with_command("true");
    opts.kernel_params.retain(|p| p != "quiet");
    opts
}

fn expect_no_warning_bug_or_fatal_line(run: &GuestRun) -> Result<()> {
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
