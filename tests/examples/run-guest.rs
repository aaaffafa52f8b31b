//! Boots one guest through the testbed and prints its console: a debugging aid for the vmm.
//!
//! ```text
//! cargo run -p testbed --example run-guest -- [--cpus N] [--memory SIZE] [--vmlinux] [--stock] [--loud]
//!     [--param WORD]... [--vmm-arg ARG]... [--timeout SECS] [--host-bin PATH]
//!     [--before SCRIPT] [--after SCRIPT] [--qemu-arg ARG]... [-- GUEST COMMAND...]
//! ```
//! `--stock` boots the stock distribution kernel (`guest-kernel/stock.sh`) instead of ours.
//! `--loud` drops `quiet` from the guest kernel command line. `--before`/`--after` are host shell
//! commands around the vmm (the host script's `$VMM` may be redefined in `--before`, e.g. to
//! run it under strace staged with `--host-bin /usr/bin/strace`). `--qemu-arg` adds an argument
//! to L1's QEMU in nested mode (e.g. `--qemu-arg -cpu --qemu-arg max,phys-bits=48` for a 1 TiB
//! device). Prints the guest console, or with `--after` the whole host output. Exits with the
//! vmm's status.

use std::time::Duration;

use testbed::{boot_guest, GuestKernel, GuestOpts, KernelImage};

fn main() {
    let mut opts = GuestOpts::default();
    let mut args = std::env::args().skip(1);
    let mut command: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("run-guest: {arg} needs a value");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--cpus" => opts.cpus = value().parse().expect("--cpus takes a number"),
            "--memory" => opts.memory = value(),
            "--vmlinux" => opts.kernel = KernelImage::Vmlinux,
            "--stock" => opts.guest_kernel = GuestKernel::Stock,
            "--loud" => opts.kernel_params.retain(|p| p != "quiet"),
            "--param" => opts.kernel_params.push(value()),
            "--vmm-arg" => opts.vmm_args.push(value()),
            "--host-bin" => opts.host.host_bins.push(value().into()),
            "--qemu-arg" => opts.host.qemu_args.push(value()),
            "--before" => opts.before = value(),
            "--after" => opts.after = value(),
            "--timeout" => {
                let secs = value().parse().expect("--timeout takes seconds");
                opts.host.timeout = Duration::from_secs(secs);
            }
            "--" => {
                command.extend(args.by_ref());
            }
            other => {
                eprintln!("run-guest: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    if !command.is_empty() {
        opts.command = Some(command.join(" "));
    }
    match boot_guest(&opts) {
        Ok(run) => {
            if opts.after.is_empty() {
                print!("{}", run.console());
            } else {
                print!("{}", run.host.output);
            }
            eprintln!(
                "run-guest: {} host, run {:.2?}, host ready after {:?}, vmm {:?}, vmm exit {}, \
                 guest exit {:?}, cpus {:?}, MemTotal {:?} kB",
                run.host.mode,
                run.host.duration,
                run.host.host_ready,
                run.report.vmm_time,
                run.vmm_exit,
                run.report.guest_exit,
                run.report.cpus,
                run.report.memtotal_kb
            );
            std::process::exit(run.vmm_exit);
        }
        Err(e) => {
            eprintln!("run-guest: {e}");
            std::process::exit(1);
        }
    }
}
