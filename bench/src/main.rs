//! `bench`: measures the vmm (and peer monitors) on the testbed and writes a table (stdout),
//! `results.json` and `plot.png`. See `bench/README.md` and `bench --help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use bench::lines::{self, Failure, Tag};
use bench::machine;
use bench::plot;
use bench::report::{self, Results};
use bench::scripts::{self, GUEST_BOOT, GUEST_BW, GUEST_MEMMAP, GUEST_PROBE, MKE2FS};
use bench::settings::MIB;
use bench::settings::{parse_size, PeerKind, PeerState, Phase, Settings};
use bench::summary;
use bench::timefmt;
use testbed::{run_on_kvm_host, HostOpts, InitramfsSpec, Mode};

const HELP: &str = "\
bench: boot time, resident memory, start-up cost against pmem size, memmap cost, DAX
bandwidth and guest density from one shared root image of the vmm on the testbed (nested or direct, see tests/README.md), next to peer
monitors named by environment variables.

Usage: bench [--runs N] [--memmap-runs N] [--quick] [--only PHASES] [--density-guests L]
             [--density-runs N] [--out DIR]

  --runs N          runs of every figure (default 5)
  --memmap-runs N   runs of every memmap figure (default min(N, 3): a 64 GiB memmap is slow
                    to initialise under TCG)
  --quick           N=1 and tiny sizes, density with 2 guests (the smoke test; a few minutes
                    nested, the density phase about 40 s of it)
  --only PHASES     comma-separated subset of boot,startup,memmap,bandwidth,density
  --startup-sizes L comma-separated pmem sizes of the start-up phase (default 1G,64G,1T)
  --memmap-sizes L  comma-separated pmem sizes of the memmap phase (default 1G,4G,16G,64G)
  --density-guests L  comma-separated guest counts of the density phase (default 1,4,8;
                    --quick: 2)
  --density-runs N  runs of every density figure (default 1: memory, not time)
  --out DIR         output directory (default <workspace>/target/bench/<UTC yyyymmdd-hhmmss>)
  -h, --help        this text

Output: a table on stdout; DIR/results.json (machine, settings, every sample, summaries,
failures, missing figures); DIR/summary.md (the headline figures as Markdown tables);
DIR/plot.png; DIR/<phase>.sh and DIR/<phase>.log (the host script
and console of each phase).

Peers (a path that does not exist or is not executable is reported as missing and the run
goes on; a peer that runs but fails is a FAILED line; an empty value leaves the peer out):
  PMEMVMM_BENCH_CLOUD_HYPERVISOR  cloud-hypervisor binary (virtio-pmem, boots $VMLINUX);
                                  default ../shared/peers/cloud-hypervisor beside the repository
  PMEMVMM_BENCH_FIRECRACKER       firecracker binary (virtio-pmem, boots $VMLINUX);
                                  default ../shared/peers/firecracker beside the repository
  PMEMVMM_BENCH_QEMU              qemu-system-x86_64 (-machine q35,nvdimm=on, -device nvdimm,
                                  boots $VMLINUX through PVH); no default
Every monitor boots the ELF vmlinux through PVH; ours also boots the bzImage (vmm-bzimage-N).

Exit status: 0 when every figure of our monitor is there, 1 when some are missing (the table
says which), 2 on bad usage.";

struct Args {
    settings: Settings,
    out: Option<PathBuf>,
}

fn parse_sizes(v: &str) -> Result<Vec<u64>, String> {
    v.split(',')
        .map(|s| parse_size(s).ok_or_else(|| format!("bad size {s:?}")))
        .collect()
}

/// A count option's value: a number above 0.
fn positive(name: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{name}: expected N > 0"))
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut runs: Option<usize> = None;
    let mut memmap_runs: Option<usize> = None;
    let mut quick = false;
    let mut only: Option<Vec<Phase>> = None;
    let mut out = None;
    let mut startup_sizes = None;
    let mut memmap_sizes = None;
    let mut density_guests: Option<Vec<usize>> = None;
    let mut density_runs: Option<usize> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--quick" => quick = true,
            "--runs" => runs = Some(positive("--runs", &value("--runs")?)?),
            "--memmap-runs" => {
                memmap_runs = Some(positive("--memmap-runs", &value("--memmap-runs")?)?)
            }
            "--only" => {
                let v = value("--only")?;
                only = Some(
                    v.split(',')
                        .map(|p| {
                            Phase::parse(p.trim()).ok_or_else(|| {
                                format!(
                                    "--only: unknown phase {p:?} \
                                     (boot, startup, memmap, bandwidth, density)"
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?,
                );
            }
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--startup-sizes" => startup_sizes = Some(parse_sizes(&value("--startup-sizes")?)?),
            "--memmap-sizes" => memmap_sizes = Some(parse_sizes(&value("--memmap-sizes")?)?),
            "--density-guests" => {
                let v = value("--density-guests")?;
                density_guests = Some(
                    v.split(',')
                        .map(|n| n.trim().parse().ok().filter(|n| *n > 0))
                        .collect::<Option<Vec<usize>>>()
                        .ok_or("--density-guests: expected counts > 0, comma-separated")?,
                );
            }
            "--density-runs" => {
                density_runs = Some(positive("--density-runs", &value("--density-runs")?)?)
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut s = if quick {
        Settings::quick()
    } else {
        Settings::standard(runs.unwrap_or(5))
    };
    if let Some(n) = runs {
        s.runs = n;
        s.memmap_runs = n.min(3);
    }
    if let Some(n) = memmap_runs {
        s.memmap_runs = n;
    }
    if let Some(p) = only {
        s.phases = Phase::ALL.into_iter().filter(|x| p.contains(x)).collect();
    }
    if let Some(v) = startup_sizes {
        s.startup_sizes = v;
    }
    if let Some(v) = memmap_sizes {
        s.memmap_sizes = v;
    }
    if let Some(v) = density_guests {
        s.density_guests = v;
    }
    if let Some(n) = density_runs {
        s.density_runs = n;
    }
    Ok(Args {
        settings: s.with_peers_from_env(),
        out,
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// `bench-probe`, built next to this binary.
fn probe_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let probe = exe
        .parent()
        .map(|d| d.join("bench-probe"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "bench-probe is not next to {} (build both: cargo build --release -p bench)",
                exe.display()
            )
        })?;
    Ok(probe)
}

/// QEMU's firmware for a QEMU peer inside L1 (copied into the share; `-L $SHARE`).
fn qemu_firmware(qemu: &Path, dir: &Path) -> Result<(), String> {
    const FILES: [&str; 8] = [
        "bios-256k.bin",
        "bios.bin",
        "linuxboot_dma.bin",
        "linuxboot.bin",
        "kvmvapic.bin",
        "multiboot_dma.bin",
        "pvh.bin",
        "vgabios-stdvga.bin",
    ];
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(prefix) = qemu.parent().and_then(Path::parent) {
        dirs.push(prefix.join("share/qemu"));
        dirs.push(prefix.join("share/seabios"));
    }
    dirs.extend(["/usr/share/qemu", "/usr/share/seabios"].map(PathBuf::from));
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut found = false;
    for f in FILES {
        if let Some(src) = dirs.iter().map(|d| d.join(f)).find(|p| p.is_file()) {
            std::fs::copy(&src, dir.join(f))
                .map_err(|e| format!("copying {}: {e}", src.display()))?;
            found |= f == "bios-256k.bin";
        }
    }
    if found {
        Ok(())
    } else {
        Err("no bios-256k.bin in /usr/share/qemu or /usr/share/seabios".into())
    }
}

fn host_opts(spec: &InitramfsSpec, probe: &Path, timeout_s: u64) -> HostOpts {
    HostOpts::default()
        .with_initramfs(spec.clone())
        .with_host_bin(probe)
        .with_timeout(Duration::from_secs(timeout_s))
}

fn phase_failure(phase: Phase, reason: &str) -> Failure {
    Failure {
        tag: Tag::parse(&format!("{}.phase", phase.name())),
        reason: lines::one_line(reason),
    }
}

/// Runs one phase's script; its output (or the error) goes to `<out>/<phase>.log`.
fn run_phase(
    phase: Phase,
    script: &str,
    opts: &HostOpts,
    out: &Path,
    results: &mut Results,
) -> Result<(), String> {
    let _ = std::fs::write(out.join(format!("{}.sh", phase.name())), script);
    eprintln!(
        "bench: {} phase (timeout {} s)...",
        phase.name(),
        opts.timeout.as_secs()
    );
    let log = out.join(format!("{}.log", phase.name()));
    match run_on_kvm_host(script, opts) {
        Ok(run) => {
            let _ = std::fs::write(&log, &run.full_console);
            let p = lines::parse(&run.output);
            eprintln!(
                "bench: {} phase done in {:.0?}: {} samples, {} failures",
                phase.name(),
                run.duration,
                p.samples.len(),
                p.failures.len()
            );
            results.samples.extend(p.samples);
            results.infos.extend(p.infos);
            results.failures.extend(p.failures);
            if run.rc != 0 {
                results.failures.push(phase_failure(
                    phase,
                    &format!("the host script exited {}", run.rc),
                ));
            }
            Ok(())
        }
        Err(e) => {
            let text = format!("{e:?}");
            let _ = std::fs::write(&log, &text);
            Err(text)
        }
    }
}

/// The density phase: builds the root image here, hands it to the KVM host through the share,
/// runs [`scripts::density_script`] with cloud-hypervisor when it is ready (a peer that cannot
/// be set up is a failure of its cases, and the rest runs).
fn density_phase(
    s: &Settings,
    spec: &InitramfsSpec,
    probe: &Path,
    probe_s: &str,
    mode: Mode,
    out: &Path,
    results: &mut Results,
) -> Result<(), String> {
    let share = out.join("density-share");
    std::fs::create_dir_all(&share).map_err(|e| format!("creating {}: {e}", share.display()))?;
    // The file system fills the image but for the info block's room (4 MiB is more than the
    // 2 MiB data offset of a `memmap=ram` block).
    let fs_size = s.density_image.saturating_sub(4 * MIB);
    bench::density::build_rootfs(
        &share,
        Path::new("/bin/busybox"),
        Path::new(MKE2FS),
        fs_size,
    )?;
    let mut ch = None;
    for (kind, path) in s.ready_peers() {
        if kind != PeerKind::CloudHypervisor {
            continue;
        }
        if mode == Mode::Direct {
            ch = Some(path);
            continue;
        }
        match testbed::nested::visible_in_l1(&path, kind.name()) {
            Ok(p) => ch = Some(p),
            Err(e) => {
                for n in &s.density_guests {
                    results.failures.push(Failure {
                        tag: Tag::parse(&format!(
                            "density.{}-{n}.1",
                            scripts::DensityCase::CloudHypervisorShared.name()
                        )),
                        reason: lines::one_line(&e),
                    });
                }
            }
        }
    }
    let guests: usize = s.density_guests.iter().sum();
    let timeout = 600 + (s.density_runs * guests) as u64 * 3 * 60;
    let mut opts = host_opts(spec, probe, timeout).with_share(&share);
    if let (Mode::Nested, Some(p)) = (mode, &ch) {
        opts = opts.with_host_bin(p);
    }
    let script = scripts::density_script(s, probe_s, ch.as_deref());
    let result = run_phase(Phase::Density, &script, &opts, out, results);
    let _ = std::fs::remove_dir_all(&share);
    result
}

fn run(args: Args) -> Result<bool, String> {
    let s = args.settings;
    let root = testbed::config::workspace_root();
    let started = timefmt::now_secs();
    let out = args
        .out
        .unwrap_or_else(|| root.join("target/bench").join(timefmt::compact(started)));
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let out = out.canonicalize().map_err(|e| e.to_string())?;
    let probe = probe_path()?;
    let mode = testbed::mode().map_err(|e| format!("{e:?}"))?;

    for (kind, state) in &s.peers {
        if let PeerState::Missing(reason) = state {
            eprintln!("bench: peer {} missing: {reason}", kind.name());
        }
    }

    // The guest initramfs: the probe, the two guest scripts and mke2fs.
    let guest_dir = out.join("guest");
    std::fs::create_dir_all(&guest_dir).map_err(|e| e.to_string())?;
    let memmap_sh = guest_dir.join("memmap.sh");
    let bw_sh = guest_dir.join("bw.sh");
    let boot_sh = guest_dir.join("boot.sh");
    std::fs::write(&boot_sh, scripts::BOOT_SH).map_err(|e| e.to_string())?;
    std::fs::write(&memmap_sh, scripts::MEMMAP_SH).map_err(|e| e.to_string())?;
    std::fs::write(&bw_sh, scripts::BW_SH).map_err(|e| e.to_string())?;
    let mut spec = InitramfsSpec::default()
        .with_bin(format!("{}:{GUEST_PROBE}", probe.display()))
        .with_file(&memmap_sh, GUEST_MEMMAP)
        .with_file(&bw_sh, GUEST_BW)
        .with_file(&boot_sh, GUEST_BOOT);
    if Path::new(MKE2FS).is_file() {
        spec = spec.with_bin(MKE2FS);
    }

    // The machine, before anything runs.
    let mut m = machine::this_machine();
    m.insert("testbed_mode".into(), json!(mode.to_string()));
    m.insert("nested".into(), json!(mode == Mode::Nested));
    m.insert("date".into(), json!(timefmt::iso(started)));
    m.insert("git".into(), json!(machine::git_commit(&root)));
    let kernel = testbed::kernel().map_err(|e| format!("{e:?}"))?;
    m.insert(
        "guest_kernel".into(),
        json!(kernel
            .info
            .get("KERNEL_VERSION")
            .cloned()
            .unwrap_or_else(|| kernel.bzimage.display().to_string())),
    );
    let vmm = testbed::vmm().map_err(|e| format!("{e:?}"))?;
    m.insert(
        "vmm".into(),
        json!(machine::first_line_of(vmm, &["--version"]).unwrap_or_else(|e| e)),
    );
    if mode == Mode::Nested {
        let qemu = std::env::var(testbed::config::ENV_QEMU)
            .ok()
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| testbed::config::which("qemu-system-x86_64"));
        if let Some(qemu) = qemu {
            m.insert(
                "l0_qemu".into(),
                json!(machine::first_line_of(&qemu, &["--version"]).unwrap_or_else(|e| e)),
            );
        }
    }
    let mut peer_versions = serde_json::Map::new();
    for (kind, state) in &s.peers {
        let v = match state {
            PeerState::Ready(p) => machine::first_line_of(p, &["--version"]).unwrap_or_else(|e| e),
            PeerState::Missing(r) => format!("missing: {r}"),
            PeerState::NotGiven => format!("not given ({})", kind.env_var()),
        };
        peer_versions.insert(kind.name().into(), json!(v));
    }
    m.insert("peers".into(), Value::Object(peer_versions));

    // Where the probe is on the KVM host (the guest gets its own copy at GUEST_PROBE).
    let probe = if mode == Mode::Nested {
        testbed::nested::visible_in_l1(&probe, "probe")?
    } else {
        probe
    };
    let probe_s = probe.display().to_string();
    let mut results = Results::default();
    for phase in s.phases.clone() {
        match phase {
            Phase::Boot => {
                let mut peers = Vec::new();
                for (kind, path) in s.ready_peers() {
                    if mode == Mode::Direct {
                        peers.push((kind, path));
                        continue;
                    }
                    match testbed::nested::visible_in_l1(&path, kind.name()) {
                        Ok(p) => peers.push((kind, p)),
                        Err(e) => results.failures.push(Failure {
                            tag: Tag::parse(&format!("boot.{}.0", kind.name())),
                            reason: lines::one_line(&e),
                        }),
                    }
                }
                let cases = s.boot_devices.len() * (1 + peers.len());
                let timeout = 180 + (s.runs * cases) as u64 * 90;
                let mut opts = host_opts(&spec, &probe, timeout);
                let mut fw: Option<String> = None;
                if mode == Mode::Nested {
                    for (kind, path) in &peers {
                        opts = opts.with_host_bin(path);
                        if *kind == PeerKind::Qemu {
                            let dir = out.join("qemu-fw");
                            match qemu_firmware(path, &dir) {
                                Ok(()) => {
                                    opts = opts.with_share(&dir);
                                    fw = Some("$SHARE".into());
                                }
                                Err(e) => eprintln!("bench: QEMU peer: {e}"),
                            }
                        }
                    }
                }
                let peer_refs: Vec<(PeerKind, &Path)> =
                    peers.iter().map(|(k, p)| (*k, p.as_path())).collect();
                let script = scripts::boot_script(&s, &probe_s, &peer_refs, fw.as_deref());
                if let Err(e) = run_phase(phase, &script, &opts, &out, &mut results) {
                    if peers.is_empty() {
                        results.failures.push(phase_failure(phase, &e));
                    } else {
                        // A peer can break the host setup (say, a library ldd cannot find):
                        // report it against the peers and measure our monitor alone.
                        eprintln!("bench: boot phase with peers failed, retrying without: {e}");
                        for (kind, _) in &peers {
                            results.failures.push(Failure {
                                tag: Tag::parse(&format!("boot.{}.0", kind.name())),
                                reason: lines::one_line(&format!(
                                    "the host run with this peer failed: {e}"
                                )),
                            });
                        }
                        let script = scripts::boot_script(&s, &probe_s, &[], None);
                        let opts = host_opts(&spec, &probe, timeout);
                        if let Err(e) = run_phase(phase, &script, &opts, &out, &mut results) {
                            results.failures.push(phase_failure(phase, &e));
                        }
                    }
                }
            }
            Phase::Startup => {
                let timeout = 180 + (s.runs * s.startup_sizes.len()) as u64 * 90;
                let mut opts = host_opts(&spec, &probe, timeout);
                if mode == Mode::Nested {
                    // TCG's default of 40 address bits cannot place 1 TiB above 4 GiB; the
                    // later -cpu wins over the testbed's.
                    opts = opts.with_qemu_args(["-cpu", "max,phys-bits=48"]);
                }
                let script = scripts::startup_script(&s, &probe_s);
                if let Err(e) = run_phase(phase, &script, &opts, &out, &mut results) {
                    results.failures.push(phase_failure(phase, &e));
                }
            }
            Phase::Memmap => {
                let cases = s.memmap_sizes.len() * s.memmap_policies.len();
                let timeout = 300 + (s.memmap_runs * cases) as u64 * 300;
                let opts = host_opts(&spec, &probe, timeout);
                let script = scripts::memmap_script(&s, &probe_s);
                if let Err(e) = run_phase(phase, &script, &opts, &out, &mut results) {
                    results.failures.push(phase_failure(phase, &e));
                }
            }
            Phase::Density => {
                if let Err(e) = density_phase(&s, &spec, &probe, &probe_s, mode, &out, &mut results)
                {
                    results.failures.push(phase_failure(phase, &e));
                }
            }
            Phase::Bandwidth => {
                let timeout = 600 + s.runs as u64 * 300;
                let opts = host_opts(&spec, &probe, timeout);
                let script = scripts::bandwidth_script(&s, &probe_s);
                if let Err(e) = run_phase(phase, &script, &opts, &out, &mut results) {
                    results.failures.push(phase_failure(phase, &e));
                }
            }
        }
    }
    results.finish();

    // What the hosts said about themselves (L1 in nested mode).
    let mut hosts = serde_json::Map::new();
    for i in results.infos.iter().filter(|i| i.tag.phase == "machine") {
        let entry = hosts.entry(i.tag.case.clone()).or_insert_with(|| json!({}));
        entry[&i.key] = json!(i.text);
    }
    m.insert("kvm_hosts".into(), Value::Object(hosts));
    m.insert(
        "loadavg_at_end".into(),
        json!(std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()),
    );
    m.insert("duration_s".into(), json!(timefmt::now_secs() - started));

    let expected = report::expected_figures(&s);
    println!("{}", report::table(&results, &s, &expected));
    let doc = report::to_json(&results, &s, Value::Object(m.clone()), &expected);
    let json_path = out.join("results.json");
    std::fs::write(&json_path, format!("{doc:#}\n"))
        .map_err(|e| format!("writing {}: {e}", json_path.display()))?;
    let summary_path = out.join("summary.md");
    // The 1-minute load average of a `/proc/loadavg` line.
    let load = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    let heading = format!(
        "{}, `bench {}`, git {}, load average at start / end {} / {}; medians",
        timefmt::iso(started),
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        m.get("git").and_then(Value::as_str).unwrap_or("?"),
        load("loadavg_at_start"),
        load("loadavg_at_end"),
    );
    std::fs::write(&summary_path, summary::markdown(&results, &s, &heading))
        .map_err(|e| format!("writing {}: {e}", summary_path.display()))?;
    let png = out.join("plot.png");
    let subtitle = format!(
        "{} | {} | {} runs | {}",
        m.get("cpu_model").and_then(Value::as_str).unwrap_or("?"),
        if mode == Mode::Nested {
            "nested (vmm in a TCG L1)"
        } else {
            "direct"
        },
        s.runs,
        timefmt::iso(started)
    );
    let panel = |phase: Phase| s.has(phase);
    let bars = if panel(Phase::Boot) {
        plot::Panel::Ran(plot::boot_bars(&results))
    } else {
        plot::Panel::NotRun
    };
    let lines = if panel(Phase::Memmap) {
        plot::Panel::Ran(plot::memmap_lines(&results, &s.memmap_policies))
    } else {
        plot::Panel::NotRun
    };
    let density = if panel(Phase::Density) {
        plot::Panel::Ran(plot::density_bars(&results))
    } else {
        plot::Panel::NotRun
    };
    if let Err(e) = plot::draw(&png, &bars, &lines, &density, &subtitle) {
        eprintln!("bench: {e}");
    }
    println!(
        "results: {}\nplot:    {}",
        json_path.display(),
        png.display()
    );
    let complete = expected.iter().all(|k| results.summaries.contains_key(k));
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn cli() {
        let a = args(&["--quick", "--only", "boot,memmap"]).unwrap();
        assert!(a.settings.quick);
        assert_eq!(a.settings.phases, vec![Phase::Boot, Phase::Memmap]);
        let a = args(&["--runs", "10", "--out", "/tmp/x"]).unwrap();
        assert_eq!((a.settings.runs, a.settings.memmap_runs), (10, 3));
        assert_eq!(a.out, Some(PathBuf::from("/tmp/x")));
        let a = args(&["--memmap-sizes", "1G,2G", "--memmap-runs", "1"]).unwrap();
        assert_eq!(a.settings.memmap_sizes, vec![1 << 30, 2 << 30]);
        assert_eq!(a.settings.memmap_runs, 1);
        let a = args(&[
            "--only",
            "density",
            "--density-guests",
            "1,4,8",
            "--density-runs",
            "2",
        ])
        .unwrap();
        assert_eq!(a.settings.phases, vec![Phase::Density]);
        assert_eq!(a.settings.density_guests, vec![1, 4, 8]);
        assert_eq!(a.settings.density_runs, 2);
        assert_eq!(args(&["--quick"]).unwrap().settings.density_guests, vec![2]);
        assert!(args(&["--density-guests", "1,0"]).is_err());
        assert!(args(&["--runs", "0"]).is_err());
        assert!(args(&["--only", "nope"]).is_err());
        assert!(args(&["--bogus"]).is_err());
        assert_eq!(args(&["--help"]).err(), Some(String::new()));
    }
}
