//! Boots many small guests at once in nested hosts, round after round, and reports every guest
//! whose init output never reached the console although it powered off: the reproducer for
//! tests/README.md's "Console output that never came".
//!
//! ```text
//! cargo run --release -p testbed --example boot_storm -- [--hosts K] [--rounds R] [--guests N]
//! ```
//! Each of K hosts (in parallel, one per testbed slot) runs R rounds; a round is one L1 boot
//! with N guests (1 vCPU, 256 MiB, command `true`) started together, as the boot test does.
//! A guest that exited 0 without `@@GUEST-INIT@@` is printed with its console (the vmm's
//! console-stall warning included), and so is any guest whose monitor printed that warning.
//! Exits 1 when any was seen or a host failed.

use std::time::{Duration, Instant};

use testbed::guest::GuestOpts;
use testbed::markers::CONSOLE_STALL;
use testbed::{boot_guests, HostOpts};

fn main() {
    let (mut hosts, mut rounds, mut guests) = (2u32, 10u32, 10u32);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value: u32 = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("boot_storm: {arg} needs a number");
            std::process::exit(2)
        });
        match arg.as_str() {
            "--hosts" => hosts = value,
            "--rounds" => rounds = value,
            "--guests" => guests = value,
            other => {
                eprintln!("boot_storm: unknown argument {other:?}");
                std::process::exit(2)
            }
        }
    }
    let opts: Vec<GuestOpts> = (0..guests)
        .map(|_| GuestOpts::default().with_command("true"))
        .collect();
    // Room for every guest at once, as the boot test gives.
    let host = HostOpts::default()
        .with_memory_mib(1024 + 384 * u64::from(guests))
        .with_timeout(Duration::from_secs(600));
    let started = Instant::now();
    let totals: Vec<(u32, u32, u32)> =
        std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..hosts)
                    .map(|h| {
                        let (opts, host) = (&opts, &host);
                        s.spawn(move || {
                            let (mut booted, mut lost, mut failed) = (0, 0, 0);
                            for r in 0..rounds {
                                match boot_guests(host, opts, true) {
                                    Ok(runs) => {
                                        for (g, run) in runs.iter().enumerate() {
                                            if run.report.init_seen
                                                && !run.console().contains(CONSOLE_STALL)
                                            {
                                                booted += 1;
                                            } else {
                                                lost += 1;
                                                println!(
                                            "host {h} round {r} guest {g}: init output {}, \
                                             vmm exit {}; console:\n{}",
                                            if run.report.init_seen { "seen" } else { "missing" },
                                            run.vmm_exit,
                                            run.console()
                                        );
                                            }
                                        }
                                    }
                                    Err(e) => {
                                        failed += 1;
                                        println!("host {h} round {r}: FAILED: {e}");
                                    }
                                }
                                println!(
                                    "host {h}: round {r} done at {:.0?} ({booted} booted, {lost} \
                             without init output or with a console stall, {failed} host \
                             failures)",
                                    started.elapsed()
                                );
                            }
                            (booted, lost, failed)
                        })
                    })
                    .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("host thread"))
                .collect()
        });
    let (booted, lost, failed) = totals
        .iter()
        .fold((0, 0, 0), |a, t| (a.0 + t.0, a.1 + t.1, a.2 + t.2));
    println!(
        "{booted} guests booted, {lost} without init output or with a console stall, {failed} \
         host runs failed; {:.0?} in all",
        started.elapsed()
    );
    std::process::exit(i32::from(lost + failed > 0));
}
