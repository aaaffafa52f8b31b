//! Floods nested hosts' consoles with guest output and reports every host that went silent: the
//! reproducer for a nested run whose console stops while everything idles (tests/README.md,
//! "L1 stops taking interrupts").
//!
//! ```text
//! cargo run --release -p testbed --example console_flood -- [--hosts K] [--rounds R]
//!     [--lines N] [--silence SECS] [--l1-param WORD]... [--qemu-arg ARG]...
//! ```
//! Each of K hosts (one per testbed slot at a time) boots our guest R times in a row; each guest
//! prints N lines through its serial port to the vmm's stdout, which is L1's console, and L1
//! then prints N lines of its own. A host whose console stays silent for SECS while idle, or
//! whose L1 stopped taking interrupts, is stopped by the testbed's watchdog, whose report (L1's
//! CPUs, local APICs and console UART as QEMU sees them) is printed. Exits 1 when any host
//! failed.

use std::time::{Duration, Instant};

use testbed::guest::GuestOpts;
use testbed::HostOpts;

fn main() {
    let mut hosts = 2u32;
    let mut rounds = 10u32;
    let mut lines = 3000u32;
    let mut silence = 60u64;
    let mut l1_params: Vec<String> = Vec::new();
    let mut qemu_args: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("console_flood: {arg} needs a value");
                std::process::exit(2)
            })
        };
        let number = |v: String| -> u64 {
            v.parse().unwrap_or_else(|_| {
                eprintln!("console_flood: expected a number, got {v:?}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--hosts" => hosts = number(value()) as u32,
            "--rounds" => rounds = number(value()) as u32,
            "--lines" => lines = number(value()) as u32,
            "--silence" => silence = number(value()),
            "--l1-param" => l1_params.push(value()),
            "--qemu-arg" => qemu_args.push(value()),
            other => {
                eprintln!("console_flood: unknown argument {other:?}");
                std::process::exit(2)
            }
        }
    }
    let flood = format!(
        "i=0; while [ $i -lt {lines} ]; do echo flood $i abcdefghijklmnopqrstuvwxyz \
         0123456789 abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done"
    );
    let guest = GuestOpts::default().with_command(flood).with_after(format!(
        "i=0; while [ $i -lt {lines} ]; do echo \"l1 $i abcdefghijklmnopqrstuvwxyz\"; \
         i=$((i+1)); done"
    ));
    let one = guest.host_script().expect("guest script");
    let script = format!(
        "r=0\nwhile [ $r -lt {rounds} ]; do\n{one}\necho \"@@ROUND $r $rc@@\"\n\
         r=$((r+1))\ndone\n"
    );
    let mut host = HostOpts::default()
        .with_timeout(Duration::from_secs(60 * u64::from(rounds) + 120))
        .with_silence(Some(Duration::from_secs(silence)))
        .with_qemu_args(qemu_args);
    host.l1_cmdline = l1_params;
    let started = Instant::now();
    let results: Vec<(u32, Duration, Result<u32, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..hosts)
            .map(|h| {
                let (script, host) = (&script, &host);
                s.spawn(move || {
                    let t = Instant::now();
                    let r = testbed::run_on_kvm_host(script, host)
                        .map(|run| testbed::marker_values(&run.output, "ROUND").len() as u32)
                        .map_err(|e| e.to_string());
                    (h, t.elapsed(), r)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("host thread"))
            .collect()
    });
    let mut failed = 0;
    for (h, took, r) in &results {
        match r {
            Ok(n) if *n == rounds => println!("host {h}: {n} rounds in {took:.0?}"),
            Ok(n) => {
                failed += 1;
                println!("host {h}: only {n} of {rounds} rounds in {took:.0?}")
            }
            Err(e) => {
                failed += 1;
                println!("host {h}: FAILED after {took:.0?}:\n{e}")
            }
        }
    }
    println!(
        "{} of {hosts} hosts failed; {:.0?} in all",
        failed,
        started.elapsed()
    );
    std::process::exit(i32::from(failed > 0));
}
