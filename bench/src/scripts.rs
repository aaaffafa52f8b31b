//! The host scripts of the phases: POSIX sh run by [`testbed::run_on_kvm_host`] on the KVM host
//! (L1 in nested mode), where `bench-probe` launches each monitor and measures it.
//!
//! Every script keeps going after a failed measurement (the probe reports it as a
//! `@@BENCH-FAIL@@` line) and exits 0, so one broken case never hides the others.

use std::path::Path;

use testbed::shell::sh_quote;

use crate::settings::{size_label, PeerKind, Phase, Settings, MIB};

/// The guest script of the memmap phase (installed as [`GUEST_MEMMAP`]).
pub const MEMMAP_SH: &str = include_str!("../guest/memmap.sh");
/// The guest script of the boot phase (installed as [`GUEST_BOOT`]): the guest kernel's boot
/// milestones from its dmesg, then sleep.
pub const BOOT_SH: &str = include_str!("../guest/boot.sh");
/// Where `boot.sh` is in the guest.
pub const GUEST_BOOT: &str = "/bench/boot.sh";
/// The line `boot.sh` prints once it has printed its figures.
pub const BOOT_DONE: &str = "@@BOOT-BREAKDOWN-DONE@@";
/// The guest script of the bandwidth phase (installed as [`GUEST_BW`]).
pub const BW_SH: &str = include_str!("../guest/bw.sh");
/// Where the probe is in the guest.
pub const GUEST_PROBE: &str = "/bench/bench-probe";
/// Where `memmap.sh` is in the guest.
pub const GUEST_MEMMAP: &str = "/bench/memmap.sh";
/// Where `bw.sh` is in the guest.
pub const GUEST_BW: &str = "/bench/bw.sh";
/// `mke2fs` in the guest (Debian's, with its libraries), for the ext4 `-o dax` file.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";

/// The line our init prints when it starts: "launch to guest init" ends here.
pub const INIT_MARKER: &str = "@@GUEST-INIT@@";
/// The boot case of our monitor with `--api-socket` and no device.
pub const API_CASE: &str = "vmm-api-0";
/// The name of the monitor's API thread (`vmm/src/api/server.rs`).
pub const API_THREAD: &str = "api";
/// Seconds the API thread is watched while the guest idles.
pub const API_IDLE_S: u64 = 5;
/// The line our init prints after the guest command.
pub const EXIT_MARKER: &str = "@@GUEST-EXIT";
/// What our vmm logs once its vCPUs run: "start-up" ends here.
pub const STARTED_LOG: &str = "guest started";
/// What our vmm logs for a device once it is opened, mapped and formatted.
pub const PMEM_READY_LOG: &str = " at guest 0x";

/// The boot case of our monitor booting the bzImage (every other boot case boots the ELF
/// vmlinux through PVH, as the peers do): `vmm-bzimage-N`.
pub const BZIMAGE_CASE: &str = "vmm-bzimage";
/// The guest kernel as an ELF vmlinux (PVH entry): what every monitor boots in the boot phase.
pub const VMLINUX: &str = "\"$VMLINUX\"";
/// The guest kernel as a bzImage: our monitor's second boot case, and the other phases.
pub const BZIMAGE: &str = "\"$KERNEL\"";

/// Guest kernel parameters for every monitor (the guest command follows `--`).
pub const GUEST_PARAMS: &str = "console=ttyS0 quiet panic=-1";

/// Wrapped in double quotes for sh, leaving `$VAR` expansions live (for `$WORK/...`).
pub fn dq(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The guest kernel command line with `command` run by init.
pub fn guest_cmdline(command: &str) -> String {
    format!("{GUEST_PARAMS} -- \"{command}\"")
}

/// One `bench-probe launch` invocation.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Tag of its samples.
    pub tag: String,
    /// The line that ends the measurement (the monitor is then killed).
    pub until: String,
    /// Metric for the time from exec to `until` (empty: not reported).
    pub until_name: String,
    /// `(metric, substring)`: time from exec to the first line containing it.
    pub ats: Vec<(String, String)>,
    /// Read resident memory after `until`.
    pub rss: bool,
    /// Guest RAM size (for the resident-memory rule).
    pub ram_bytes: u64,
    /// Path prefixes of pmem backings (shell words, may use `$WORK`).
    pub exclude: Vec<String>,
    /// Wait before reading resident memory.
    pub settle_ms: u64,
    /// Give up after this long.
    pub timeout_s: u64,
    /// After resident memory: `(thread name, seconds)` whose wakeups and CPU to count.
    pub idle: Option<(String, u64)>,
    /// Our vmm's API socket, to read KVM's stage-2 counts at each `@@STAGE2 case@@` line.
    pub api_socket: Option<String>,
    /// After `until`, go on reading the guest's lines until one holds this.
    pub collect_until: Option<String>,
    /// The monitor command, as shell words.
    pub command: Vec<String>,
}

impl Launch {
    /// A launch that ends at guest init, with resident memory.
    pub fn to_init(tag: String, s: &Settings, exclude: &str, command: Vec<String>) -> Launch {
        Launch {
            tag,
            until: INIT_MARKER.into(),
            until_name: "launch_ms".into(),
            ats: Vec::new(),
            rss: true,
            ram_bytes: s.guest_ram,
            exclude: vec![dq(exclude)],
            settle_ms: s.settle_ms,
            timeout_s: 300,
            idle: None,
            api_socket: None,
            collect_until: None,
            command,
        }
    }

    /// Counts the wakeups and CPU of the monitor's threads named `thread` for `secs` seconds
    /// once the guest is up (and idle: the boot guests sleep after init).
    pub fn idle(mut self, thread: &str, secs: u64) -> Launch {
        self.idle = Some((thread.into(), secs));
        self
    }

    /// Adds a timed log line.
    pub fn at(mut self, metric: &str, substring: &str) -> Launch {
        self.ats.push((metric.into(), substring.into()));
        self
    }

    /// The shell line.
    pub fn render(&self) -> String {
        let mut w: Vec<String> = vec![
            "\"$P\"".into(),
            "launch".into(),
            "--tag".into(),
            sh_quote(&self.tag),
            "--until".into(),
            sh_quote(&self.until),
            "--until-name".into(),
            sh_quote(&self.until_name),
            "--timeout-s".into(),
            self.timeout_s.to_string(),
        ];
        for (m, sub) in &self.ats {
            w.push("--at".into());
            w.push(sh_quote(&format!("{m}={sub}")));
        }
        if self.rss {
            w.push("--rss".into());
            w.push("--ram-bytes".into());
            w.push(self.ram_bytes.to_string());
            w.push("--settle-ms".into());
            w.push(self.settle_ms.to_string());
            for e in &self.exclude {
                w.push("--exclude".into());
                w.push(e.clone());
            }
        }
        if let Some((thread, secs)) = &self.idle {
            w.push("--idle-thread".into());
            w.push(sh_quote(thread));
            w.push("--idle-s".into());
            w.push(secs.to_string());
        }
        if let Some(text) = &self.collect_until {
            w.push("--collect-until".into());
            w.push(sh_quote(text));
        }
        if let Some(socket) = &self.api_socket {
            w.push("--api-socket".into());
            w.push(dq(socket));
        }
        w.push("--".into());
        w.extend(self.command.iter().cloned());
        w.join(" ")
    }
}

/// Our vmm's command line; `kernel` is [`VMLINUX`] or [`BZIMAGE`].
pub fn vmm_command(
    kernel: &str,
    ram: u64,
    cmdline: &str,
    pmem: &[String],
    extra: &[String],
) -> Vec<String> {
    let mut w: Vec<String> = [
        "\"$VMM\"",
        "--kernel",
        kernel,
        "--initramfs",
        "\"$INITRAMFS\"",
        "--cpus",
        "1",
    ]
    .map(String::from)
    .to_vec();
    w.push("--memory".into());
    w.push(format!("{}M", ram / MIB));
    w.push("--serial".into());
    w.push("stdio".into());
    w.push("--cmdline".into());
    w.push(sh_quote(cmdline));
    for p in pmem {
        w.push("--pmem".into());
        w.push(dq(p));
    }
    w.extend(extra.iter().cloned());
    w
}

/// Backing file `i` of the boot phase (shared by every monitor, as `$WORK/pm<i>.img`).
fn boot_backing(i: usize) -> String {
    format!("$WORK/pm{i}.img")
}

/// Who boots a boot-phase guest.
#[derive(Debug, Clone, Copy)]
pub enum BootMonitor<'a> {
    /// Ours, with [`VMLINUX`] or [`BZIMAGE`].
    Vmm { kernel: &'static str },
    /// A peer: always [`VMLINUX`].
    Peer(PeerKind, &'a Path),
}

/// The command that boots the boot-phase guest with `n` devices on `monitor`.
pub fn boot_command(
    s: &Settings,
    monitor: BootMonitor<'_>,
    n: usize,
    qemu_firmware: Option<&str>,
) -> Vec<String> {
    let cmdline = guest_cmdline(&boot_guest_command());
    let ram_mib = s.guest_ram / MIB;
    let (kind, path) = match monitor {
        BootMonitor::Vmm { kernel } => {
            let pmem: Vec<String> = (0..n)
                .map(|i| format!("path={},memmap=none", boot_backing(i)))
                .collect();
            return vmm_command(kernel, s.guest_ram, &cmdline, &pmem, &[]);
        }
        BootMonitor::Peer(kind, path) => (kind, path),
    };
    let bin = sh_quote(&path.to_string_lossy());
    match kind {
        PeerKind::Qemu => {
            let mem = if n == 0 {
                format!("{ram_mib}M")
            } else {
                let devices_mib = n as u64 * s.boot_pmem_size / MIB;
                format!(
                    "{ram_mib}M,slots={n},maxmem={}M",
                    ram_mib + devices_mib + 1024
                )
            };
            let mut w: Vec<String> = vec![
                bin,
                "-machine".into(),
                "q35,nvdimm=on".into(),
                "-accel".into(),
                "kvm".into(),
                "-cpu".into(),
                "host".into(),
                "-smp".into(),
                "1".into(),
                "-m".into(),
                mem,
                "-nodefaults".into(),
                "-no-user-config".into(),
                "-display".into(),
                "none".into(),
                "-serial".into(),
                "stdio".into(),
                "-no-reboot".into(),
            ];
            if let Some(fw) = qemu_firmware {
                w.push("-L".into());
                w.push(dq(fw));
            }
            // An ELF vmlinux with a PVH note: QEMU boots it through its pvh.bin option ROM.
            w.extend([
                "-kernel".into(),
                VMLINUX.into(),
                "-initrd".into(),
                "\"$INITRAMFS\"".into(),
                "-append".into(),
                sh_quote(&cmdline),
            ]);
            for i in 0..n {
                w.push("-object".into());
                w.push(dq(&format!(
                    "memory-backend-file,id=m{i},share=on,mem-path={},size={}",
                    boot_backing(i),
                    s.boot_pmem_size
                )));
                w.push("-device".into());
                w.push(format!("nvdimm,memdev=m{i},id=nv{i}"));
            }
            w
        }
        PeerKind::CloudHypervisor => {
            let mut w = cloud_hypervisor_words(bin, &sh_quote(&cmdline), ram_mib);
            w.push("--initramfs".into());
            w.push("\"$INITRAMFS\"".into());
            if n > 0 {
                w.push("--pmem".into());
                for i in 0..n {
                    w.push(dq(&format!("file={}", boot_backing(i))));
                }
            }
            w
        }
        PeerKind::Firecracker => vec![
            bin,
            "--no-api".into(),
            "--config-file".into(),
            dq(&format!("$WORK/fc-{n}.json")),
        ],
    }
}

/// Firecracker's configuration file for `n` devices, as a shell here-document that expands
/// `$VMLINUX`, `$INITRAMFS` and `$WORK`.
pub fn firecracker_config(s: &Settings, n: usize) -> String {
    let pmem: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "    {{ \"id\": \"pmem{i}\", \"path_on_host\": \"{}\", \"root_device\": false, \
                 \"read_only\": false }}",
                boot_backing(i)
            )
        })
        .collect();
    // In an unquoted here-document a backslash before `"` stays, which is the JSON escape.
    let args = guest_cmdline(&boot_guest_command()).replace('"', "\\\"");
    format!(
        "cat >\"$WORK/fc-{n}.json\" <<EOF\n{{\n  \"boot-source\": {{ \"kernel_image_path\": \
         \"$VMLINUX\", \"initrd_path\": \"$INITRAMFS\", \"boot_args\": \"{args}\" }},\n  \
         \"machine-config\": {{ \"vcpu_count\": 1, \"mem_size_mib\": {} }},\n  \"drives\": [],\n  \
         \"pmem\": [\n{}\n  ]\n}}\nEOF\n",
        s.guest_ram / MIB,
        pmem.join(",\n")
    )
}

/// What the boot-phase guest runs: [`BOOT_SH`].
pub fn boot_guest_command() -> String {
    format!("sh {GUEST_BOOT}")
}

fn preamble(probe: &str, phase: Phase) -> String {
    format!(
        "# bench: {} phase\nP={}\ncd \"$WORK\" || exit 1\n\"$P\" host-info --tag machine.{}\n",
        phase.name(),
        sh_quote(probe),
        phase.name()
    )
}

/// A shell function that waits until the KVM host's CPUs were at least 90 % idle over half a
/// second (at most 5 s, so a host busy with other work only slows the run). The host tears a
/// killed monitor's VM down after the monitor has been reaped (KVM's deferred page-table
/// freeing, the freed guest memory), and without the wait the next case's launch shared the
/// CPUs with that: in the runs of 2026-12-03 our exec to first `KVM_RUN` took 1.7-3.1 s in
/// most cases right after the 8-device cases and 0.3-0.6 s elsewhere, 0.35 s in the very
/// first case.
const QUIET_HOST: &str = r#"quiet_host() {
    q=0
    while [ $q -lt 10 ]; do
        a=$(awk '/^cpu /{ print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
        sleep 0.5
        b=$(awk '/^cpu /{ print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat)
        set -- $a $b
        [ $(( ($3 - $1) * 100 )) -ge $(( ($4 - $2) * 90 )) ] && return 0
        q=$((q + 1))
    done
}
"#;

/// The boot phase: every case interleaved within each run, so slow periods of a loaded machine
/// spread over all cases; before each launch the host is let settle ([`QUIET_HOST`]).
///
/// One unmeasured boot comes first, and each run starts one case later than the run before.
/// Under the nested testbed the first guest a fresh L1 boots reaches init about a second
/// sooner than every later one, whatever its monitor or devices (measured 2026-12-03: 1478 ms,
/// then 2520-2596 ms for six more identical boots, not restored by dropping caches or
/// compacting memory), and other orderings shift boots by as much: a fixed order handed that
/// to whichever case came first in every run (bench/README.md, "Boot: what the order did").
pub fn boot_script(
    s: &Settings,
    probe: &str,
    peers: &[(PeerKind, &Path)],
    qemu_firmware: Option<&str>,
) -> String {
    let mut out = preamble(probe, Phase::Boot);
    out.push_str(QUIET_HOST);
    let most = s.boot_devices.iter().copied().max().unwrap_or(0);
    for i in 0..most {
        out.push_str(&format!(
            "truncate -s {} {}\n",
            s.boot_pmem_size,
            dq(&boot_backing(i))
        ));
    }
    if peers.iter().any(|(k, _)| *k == PeerKind::Firecracker) {
        for &n in &s.boot_devices {
            out.push_str(&firecracker_config(s, n));
        }
    }
    let vmlinux = BootMonitor::Vmm { kernel: VMLINUX };
    let mut cases: Vec<(String, BootMonitor<'_>)> = Vec::new();
    for &n in &s.boot_devices {
        cases.push((format!("vmm-{n}"), vmlinux));
    }
    for &n in &s.boot_devices {
        cases.push((
            format!("{BZIMAGE_CASE}-{n}"),
            BootMonitor::Vmm { kernel: BZIMAGE },
        ));
    }
    // Our monitor with the control API on and no device: what the API server costs in resident
    // memory against `vmm-0`, and how often its thread wakes while nobody calls it.
    let api = s.boot_devices.contains(&0);
    if api {
        cases.push((API_CASE.into(), vmlinux));
    }
    for &(kind, path) in peers {
        for &n in &s.boot_devices {
            cases.push((
                format!("{}-{n}", kind.name()),
                BootMonitor::Peer(kind, path),
            ));
        }
    }
    out.push_str("quiet_host\n");
    out.push_str(&warm_up(s, VMLINUX));
    for run in 1..=s.runs {
        for (case, monitor) in rotated(&cases, run) {
            let n: usize = case
                .rsplit('-')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let tag = crate::lines::Tag::format("boot", case, run);
            let mut command = boot_command(s, *monitor, n, qemu_firmware);
            if case == API_CASE {
                command.extend(["--api-socket".to_string(), dq("path=$WORK/api.sock")]);
            }
            let mut l = Launch::to_init(tag, s, "$WORK/pm", command);
            l.collect_until = Some(BOOT_DONE.into());
            if matches!(monitor, BootMonitor::Vmm { .. }) {
                l = l.at("startup_ms", STARTED_LOG);
            }
            if case == API_CASE {
                l = l.idle(API_THREAD, API_IDLE_S);
            }
            out.push_str("quiet_host\n");
            out.push_str(&l.render());
            out.push('\n');
        }
    }
    out.push_str("rm -f \"$WORK\"/pm*.img \"$WORK\"/fc-*.json \"$WORK\"/api.sock\nexit 0\n");
    out
}

/// The cases of run `run` (from 1) in order: the first run's order, started `run - 1` cases
/// later and wrapped, so that no case always follows the same one (see [`boot_script`]).
fn rotated<T>(cases: &[T], run: usize) -> impl Iterator<Item = &T> {
    let first = (run - 1) % cases.len().max(1);
    cases[first..].iter().chain(&cases[..first])
}

/// One boot of our monitor without devices, through to power-off, nothing recorded: what the
/// timed phases run first, so that none of their cases is a fresh L1's first boot (see
/// [`boot_script`]).
fn warm_up(s: &Settings, kernel: &str) -> String {
    let command = vmm_command(kernel, s.guest_ram, &guest_cmdline("true"), &[], &[]);
    format!("{} >/dev/null 2>&1 || true\n", command.join(" "))
}

/// The start-up phase: our vmm with one sparse device of each size, nothing formatted
/// (`memmap=none`), so the only work that could grow with the size is mapping it. Like the boot
/// phase, it boots once unmeasured first and starts each run one size later.
pub fn startup_script(s: &Settings, probe: &str) -> String {
    let mut out = preamble(probe, Phase::Startup);
    for (i, size) in s.startup_sizes.iter().enumerate() {
        out.push_str(&format!("truncate -s {size} \"$WORK/st{i}.img\"\n"));
    }
    out.push_str(&warm_up(s, BZIMAGE));
    let cmdline = guest_cmdline("sleep 600");
    let sizes: Vec<(usize, &u64)> = s.startup_sizes.iter().enumerate().collect();
    for run in 1..=s.runs {
        for &(i, size) in rotated(&sizes, run) {
            let tag =
                crate::lines::Tag::format("startup", &format!("vmm-{}", size_label(*size)), run);
            let pmem = [format!("path=$WORK/st{i}.img,memmap=none")];
            let l = Launch::to_init(
                tag,
                s,
                "$WORK/st",
                vmm_command(BZIMAGE, s.guest_ram, &cmdline, &pmem, &[]),
            )
            .at("startup_ms", STARTED_LOG)
            .at("open_map_ms", PMEM_READY_LOG);
            out.push_str(&l.render());
            out.push('\n');
        }
    }
    out.push_str("rm -f \"$WORK\"/st*.img\nexit 0\n");
    out
}

/// The memmap phase: for each size and policy a fresh sparse file the vmm creates and formats,
/// a guest that re-binds the namespace ([`MEMMAP_SH`]), and the vmm's `--report` for the
/// formula.
pub fn memmap_script(s: &Settings, probe: &str) -> String {
    let mut out = preamble(probe, Phase::Memmap);
    let cmdline = guest_cmdline(&format!("sh {GUEST_MEMMAP}"));
    for run in 1..=s.memmap_runs {
        for size in &s.memmap_sizes {
            for policy in &s.memmap_policies {
                let tag = crate::lines::Tag::format(
                    "memmap",
                    &format!("{policy}-{}", size_label(*size)),
                    run,
                );
                out.push_str("rm -f \"$WORK/mm.img\" \"$WORK/mm.json\"\n");
                let pmem = [format!("path=$WORK/mm.img,size={size},memmap={policy}")];
                let extra = ["--report".to_string(), dq("$WORK/mm.json")];
                let l = Launch {
                    tag: tag.clone(),
                    until: EXIT_MARKER.into(),
                    until_name: String::new(),
                    ats: vec![
                        ("open_format_ms".into(), PMEM_READY_LOG.into()),
                        ("startup_ms".into(), STARTED_LOG.into()),
                    ],
                    rss: false,
                    ram_bytes: s.memmap_guest_ram,
                    exclude: Vec::new(),
                    settle_ms: 0,
                    timeout_s: 1200,
                    idle: None,
                    api_socket: None,
                    collect_until: None,
                    command: vmm_command(BZIMAGE, s.memmap_guest_ram, &cmdline, &pmem, &extra),
                };
                out.push_str(&l.render());
                out.push('\n');
                out.push_str(&format!(
                    "\"$P\" report --tag {} \"$WORK/mm.json\"\n",
                    sh_quote(&tag)
                ));
            }
        }
    }
    out.push_str("rm -f \"$WORK/mm.img\" \"$WORK/mm.json\"\nexit 0\n");
    out
}

/// The bandwidth phase: one guest with an fsdax and a devdax device copies through both
/// ([`BW_SH`]); then the host copies through the same two backing files.
pub fn bandwidth_script(s: &Settings, probe: &str) -> String {
    let mut out = preamble(probe, Phase::Bandwidth);
    // The backings on a `huge=always` tmpfs where the host lets us mount one: KVM maps a guest
    // page 2 MiB only where the monitor's own mapping is (a plain tmpfs gives 4 KiB pages).
    out.push_str(&format!(
        "BW=\"$WORK/bw-huge\"; mkdir -p \"$BW\"\n\
         if mount -t tmpfs -o huge=always,size={} bwhuge \"$BW\" 2>/dev/null; then\n\
         \x20 echo \"@@BENCH-INFO {tag} backing_fs tmpfs huge=always@@\"\n\
         else\n\
         \x20 BW=\"$WORK\"; echo \"@@BENCH-INFO {tag} backing_fs $WORK (no huge=always tmpfs: mount failed)@@\"\n\
         fi\n\
         rm -f \"$BW/bwf.img\" \"$BW/bwd.img\"\n",
        2 * s.bw_device + 64 * MIB,
        tag = crate::lines::Tag::format("bandwidth", "host", 1),
    ));
    let cmdline = guest_cmdline(&format!(
        "sh {GUEST_BW} {} {} {} {}",
        s.bw_bytes, s.bw_chunk, s.bw_passes, s.runs
    ));
    let pmem = [
        format!(
            "path=$BW/bwf.img,size={},memmap=ram,mode=fsdax",
            s.bw_device
        ),
        format!(
            "path=$BW/bwd.img,size={},memmap=ram,mode=devdax",
            s.bw_device
        ),
    ];
    // The API socket: KVM's stage-2 counts at each of the guest's `@@STAGE2 case@@` lines.
    let socket = "$WORK/bw.sock";
    let l = Launch {
        tag: crate::lines::Tag::format("bandwidth", "guest", 1),
        until: EXIT_MARKER.into(),
        until_name: String::new(),
        ats: Vec::new(),
        rss: false,
        ram_bytes: s.bw_guest_ram,
        exclude: Vec::new(),
        settle_ms: 0,
        timeout_s: 1800,
        idle: None,
        api_socket: Some(socket.into()),
        collect_until: None,
        command: vmm_command(
            BZIMAGE,
            s.bw_guest_ram,
            &cmdline,
            &pmem,
            &["--api-socket".into(), dq(&format!("path={socket}"))],
        ),
    };
    out.push_str(&l.render());
    out.push('\n');
    // The host copies through the end of each backing, away from the info block and the
    // guest's filesystem metadata; it is the same tmpfs (or disk) file all the same.
    let offset = s.bw_device.saturating_sub(s.bw_bytes);
    for run in 1..=s.runs {
        for (case, file) in [("host-devdax", "bwd.img"), ("host-fsdax", "bwf.img")] {
            out.push_str(&format!(
                "\"$P\" bw --tag {} --path \"$BW/{file}\" --offset {offset} --bytes {} \
                 --chunk {} --passes {}\n",
                crate::lines::Tag::format("bandwidth", case, run),
                s.bw_bytes,
                s.bw_chunk,
                s.bw_passes
            ));
        }
    }
    out.push_str(
        "rm -f \"$BW/bwf.img\" \"$BW/bwd.img\" \"$WORK/bw.sock\"\n\
         if [ \"$BW\" != \"$WORK\" ]; then umount \"$BW\"; fi\nexit 0\n",
    );
    out
}

/// What the density guests' `/init` prints once it has read its root: the guest is measured
/// after this line.
pub const DENSITY_READY: &str = "@@DENSITY-READY@@";
/// The root image as `bench` hands it to the KVM host (in the share).
pub const DENSITY_ROOTFS: &str = "rootfs.ext4";
/// Prefix of the density phase's image files on the KVM host (`dens-shared.img`,
/// `dens-copy-<i>.img`).
pub const DENSITY_IMAGE_PREFIX: &str = "$WORK/dens-";

/// The `/init` of the density root image: mounts `/proc`, prints the init marker and the root
/// mount's options (the `dax=always` the guest got), reads the busybox binary through the file
/// system (the page cache the guests should share), prints [`DENSITY_READY`] and sleeps.
pub const DENSITY_INIT: &str = "#!/bin/sh\n\
mount -t proc proc /proc\n\
echo @@GUEST-INIT@@\n\
echo \"@@DENSITY-ROOT $(grep ' / ' /proc/mounts | head -n 1)@@\"\n\
cat /bin/busybox /init >/dev/null\n\
echo @@DENSITY-READY@@\n\
exec sleep 1000000\n";

/// The density guests' kernel command line: the root file system is the first pmem device,
/// mounted read-only with DAX, without an initramfs.
pub fn density_cmdline() -> String {
    format!("{GUEST_PARAMS} root=/dev/pmem0 ro rootfstype=ext4 rootflags=dax rootwait init=/init")
}

/// A density case: who runs the guests and whether they share one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DensityCase {
    /// Ours, all guests on `dens-shared.img` (`readonly=on`).
    VmmShared,
    /// cloud-hypervisor, all guests on `dens-shared.img` (virtio-pmem, `discard_writes=on`).
    CloudHypervisorShared,
    /// Ours, guest *i* on its own copy `dens-copy-<i>.img` (`readonly=on`).
    VmmCopies,
}

impl DensityCase {
    /// The case name without the guest count (`vmm-shared`).
    pub fn name(self) -> &'static str {
        match self {
            DensityCase::VmmShared => "vmm-shared",
            DensityCase::CloudHypervisorShared => "cloud-hypervisor-shared",
            DensityCase::VmmCopies => "vmm-copies",
        }
    }
}

/// The command of density guest `{i}` (the probe replaces `{i}`).
pub fn density_command(s: &Settings, case: DensityCase, ch: Option<&Path>) -> Vec<String> {
    let cmdline = sh_quote(&density_cmdline());
    let ram_mib = s.density_ram / MIB;
    match case {
        DensityCase::VmmShared | DensityCase::VmmCopies => {
            let image = if case == DensityCase::VmmShared {
                "shared".to_string()
            } else {
                "copy-{i}".to_string()
            };
            vec![
                "\"$VMM\"".into(),
                "--kernel".into(),
                VMLINUX.into(),
                "--cpus".into(),
                "1".into(),
                "--memory".into(),
                format!("{ram_mib}M"),
                "--serial".into(),
                "stdio".into(),
                "--cmdline".into(),
                cmdline,
                "--pmem".into(),
                dq(&format!(
                    "path={DENSITY_IMAGE_PREFIX}{image}.img,readonly=on,memmap=ram,format=keep"
                )),
            ]
        }
        DensityCase::CloudHypervisorShared => {
            let bin = sh_quote(&ch.map_or(String::new(), |p| p.to_string_lossy().into_owned()));
            let mut w = cloud_hypervisor_words(bin, &cmdline, ram_mib);
            w.push("--pmem".into());
            w.push(dq(&format!(
                "file={DENSITY_IMAGE_PREFIX}shared.img,discard_writes=on"
            )));
            w
        }
    }
}

/// cloud-hypervisor booting our vmlinux with one vCPU, `ram_mib` of RAM and the serial port on
/// its standard output (`cmdline` already quoted for the shell); the caller adds the disks.
fn cloud_hypervisor_words(bin: String, cmdline: &str, ram_mib: u64) -> Vec<String> {
    vec![
        bin,
        "--kernel".into(),
        VMLINUX.into(),
        "--cmdline".into(),
        cmdline.to_string(),
        "--cpus".into(),
        "boot=1".into(),
        "--memory".into(),
        format!("size={ram_mib}M"),
        "--serial".into(),
        "tty".into(),
        "--console".into(),
        "off".into(),
    ]
}

/// The density phase: our vmm writes an fsdax info block (`memmap=ram`, no labels) into a fresh
/// image file (written out in full, so it and each copy cost the page cache their whole size
/// alike) and the root file system (`$SHARE/rootfs.ext4`, built by `bench`) goes in at the
/// block's data offset; one copy of that file per guest for the copies case. Then for each
/// guest count every case boots that many guests at once (`bench-probe density`).
pub fn density_script(s: &Settings, probe: &str, ch: Option<&Path>) -> String {
    let mut out = preamble(probe, Phase::Density);
    let fmt = crate::lines::Tag::format("density", "format", 1);
    let shared = format!("{DENSITY_IMAGE_PREFIX}shared.img");
    let most = s.density_guests.iter().copied().max().unwrap_or(1);
    let format_cmd = vmm_command(
        BZIMAGE,
        s.density_ram,
        &guest_cmdline("sleep 600"),
        &[format!("path={shared},memmap=ram")],
        &["--report".to_string(), dq("$WORK/dens-fmt.json")],
    );
    let l = Launch {
        tag: fmt.clone(),
        until: STARTED_LOG.into(),
        until_name: "format_ms".into(),
        ats: Vec::new(),
        rss: false,
        ram_bytes: s.density_ram,
        exclude: Vec::new(),
        settle_ms: 0,
        timeout_s: 300,
        idle: None,
        api_socket: None,
        collect_until: None,
        command: format_cmd,
    };
    out.push_str(&format!(
        "rm -f \"$WORK\"/dens-*\n\
         cp \"$SHARE/{DENSITY_ROOTFS}\" \"$WORK/rootfs.ext4\" || exit 1\n\
         dd if=/dev/zero of={} bs=1048576 count={} 2>/dev/null || exit 1\n\
         {}\n\
         OFF=$(sed -n 's/.*\"data_offset\": *\\([0-9][0-9]*\\).*/\\1/p' \"$WORK/dens-fmt.json\" | head -n 1)\n\
         if [ -z \"$OFF\" ]; then\n\
         \x20 echo \"@@BENCH-FAIL {fmt} no data_offset in the vmm report@@\"\n\
         elif ! dd if=\"$WORK/rootfs.ext4\" of={} bs=4096 seek=$((OFF / 4096)) conv=notrunc 2>/dev/null; then\n\
         \x20 echo \"@@BENCH-FAIL {fmt} writing the root file system at $OFF failed@@\"\n\
         else\n\
         \x20 echo \"@@BENCH-INFO {fmt} data_offset $OFF@@\"\n\
         fi\n\
         rm -f \"$WORK/rootfs.ext4\"\n\
         i=0; while [ $i -lt {most} ]; do cp {} \"{DENSITY_IMAGE_PREFIX}copy-$i.img\"; i=$((i + 1)); done\n",
        dq(&shared),
        s.density_image / MIB,
        l.render(),
        dq(&shared),
        dq(&shared),
    ));
    let mut cases = vec![DensityCase::VmmShared];
    if ch.is_some() {
        cases.push(DensityCase::CloudHypervisorShared);
    }
    cases.push(DensityCase::VmmCopies);
    for run in 1..=s.density_runs {
        for &n in &s.density_guests {
            for &case in &cases {
                let tag =
                    crate::lines::Tag::format("density", &format!("{}-{n}", case.name()), run);
                let mut w: Vec<String> = [
                    "\"$P\"",
                    "density",
                    "--tag",
                    &sh_quote(&tag),
                    "--count",
                    &n.to_string(),
                    "--until",
                    INIT_MARKER,
                    "--ready",
                    DENSITY_READY,
                    "--ram-bytes",
                    &s.density_ram.to_string(),
                    "--image",
                    &dq(DENSITY_IMAGE_PREFIX),
                    "--settle-ms",
                    &s.settle_ms.to_string(),
                    "--timeout-s",
                    &(240 + 60 * n).to_string(),
                    "--",
                ]
                .map(String::from)
                .to_vec();
                w.extend(density_command(s, case, ch));
                out.push_str(&w.join(" "));
                out.push('\n');
            }
        }
    }
    out.push_str("rm -f \"$WORK\"/dens-*\nexit 0\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::GIB;

    fn sh_n(script: &str) {
        let st = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(script)
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    }

    #[test]
    fn scripts_are_valid_sh() {
        let s = Settings::standard(2);
        let peers = [
            (PeerKind::CloudHypervisor, Path::new("/opt/ch")),
            (PeerKind::Firecracker, Path::new("/opt/fc")),
            (PeerKind::Qemu, Path::new("/usr/bin/qemu-system-x86_64")),
        ];
        for script in [
            boot_script(&s, "/p/bench-probe", &peers, Some("$SHARE/qemu-fw")),
            startup_script(&s, "/p/bench-probe"),
            memmap_script(&s, "/p/bench-probe"),
            bandwidth_script(&s, "/p/bench-probe"),
            density_script(&s, "/p/bench-probe", Some(Path::new("/opt/ch"))),
            density_script(&s, "/p/bench-probe", None),
            DENSITY_INIT.to_string(),
            MEMMAP_SH.to_string(),
            BW_SH.to_string(),
            BOOT_SH.to_string(),
        ] {
            sh_n(&script);
        }
    }

    #[test]
    fn boot_script_shape() {
        let s = Settings::standard(2);
        let q = [(PeerKind::Qemu, Path::new("/usr/bin/qemu-system-x86_64"))];
        let b = boot_script(&s, "/p", &q, None);
        // 3 vmm cases (vmlinux), 3 with the bzImage, the API case and 3 qemu cases, 2 runs each.
        assert_eq!(b.matches(" launch ").count(), 20, "{b}");
        assert!(b.contains("--tag boot.vmm-bzimage-1.2 "), "{b}");
        // Every monitor boots the vmlinux, but the bzImage cases.
        for line in b.lines().filter(|l| l.contains(" launch ")) {
            let bz = line.contains("--tag boot.vmm-bzimage-");
            assert_eq!(line.contains("\"$KERNEL\""), bz, "{line}");
            assert_eq!(line.contains("\"$VMLINUX\""), !bz, "{line}");
        }
        // One unmeasured boot first; run 2 starts with the second case.
        let warm_up = b.find(">/dev/null 2>&1 || true").expect("a warm-up boot");
        assert!(warm_up < b.find(" launch ").unwrap(), "{b}");
        let launches: Vec<&str> = b.lines().filter(|l| l.contains(" launch ")).collect();
        assert!(
            launches[0].contains("--tag boot.vmm-0.1 "),
            "{}",
            launches[0]
        );
        assert!(
            launches[10].contains("--tag boot.vmm-1.2 "),
            "{}",
            launches[10]
        );
        assert!(
            launches[19].contains("--tag boot.vmm-0.2 "),
            "{}",
            launches[19]
        );
        assert!(b.contains("--tag boot.vmm-api-0.1 "), "{b}");
        assert!(b.contains("--idle-thread api --idle-s 5"));
        assert!(b.contains("--api-socket \"path=$WORK/api.sock\""), "{b}");
        assert!(b.contains("--tag boot.vmm-8.2"));
        assert!(b.contains("--tag boot.qemu-1.1"));
        assert!(b.contains("\"path=$WORK/pm7.img,memmap=none\""));
        assert!(b.contains("q35,nvdimm=on"));
        assert!(b.contains("slots=8,maxmem=9472M"), "{b}");
        assert_eq!(b.matches("truncate -s 1073741824").count(), 8);
        assert!(b.contains("--cmdline 'console=ttyS0 quiet panic=-1 -- \"sh /bench/boot.sh\"'"));
        assert!(
            b.contains("--collect-until @@BOOT-BREAKDOWN-DONE@@ "),
            "{b}"
        );
    }

    #[test]
    fn startup_script_warms_up_and_rotates() {
        let s = Settings::standard(2);
        let st = startup_script(&s, "/p");
        let warm_up = st.find(">/dev/null 2>&1 || true").expect("a warm-up boot");
        assert!(warm_up < st.find(" launch ").unwrap(), "{st}");
        let tags: Vec<&str> = st
            .lines()
            .filter(|l| l.contains(" launch "))
            .filter_map(|l| l.split("--tag ").nth(1)?.split(' ').next())
            .collect();
        assert_eq!(
            tags,
            [
                "startup.vmm-1G.1",
                "startup.vmm-64G.1",
                "startup.vmm-1T.1",
                "startup.vmm-64G.2",
                "startup.vmm-1T.2",
                "startup.vmm-1G.2"
            ]
        );
    }

    /// The here-document expands to JSON that parses, with the boot arguments intact.
    #[test]
    fn firecracker_config_is_json() {
        let s = Settings::standard(1);
        let script = format!(
            "WORK=/w VMLINUX=/k/vmlinux INITRAMFS=/k/i.img\n{}cat /w/fc-2.json\n",
            firecracker_config(&s, 2).replace("$WORK/", "/tmp/bench-fc-test-")
        );
        let _ = std::fs::create_dir_all("/tmp");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script.replace("/w/fc-2.json", "/tmp/bench-fc-test-fc-2.json"))
            .output()
            .unwrap();
        let _ = std::fs::remove_file("/tmp/bench-fc-test-fc-2.json");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["boot-source"]["kernel_image_path"], "/k/vmlinux");
        assert_eq!(
            v["boot-source"]["boot_args"],
            "console=ttyS0 quiet panic=-1 -- \"sh /bench/boot.sh\""
        );
        assert_eq!(v["pmem"].as_array().unwrap().len(), 2);
        assert_eq!(v["machine-config"]["mem_size_mib"], 256);
    }

    #[test]
    fn memmap_and_bandwidth_shape() {
        let mut s = Settings::standard(1);
        s.memmap_sizes = vec![GIB];
        let m = memmap_script(&s, "/p");
        assert_eq!(m.matches(" launch ").count(), 4);
        assert!(m.contains("\"path=$WORK/mm.img,size=1073741824,memmap=auto\""));
        assert!(m.contains("--memory 2048M"));
        assert!(m.contains("report --tag memmap.pmem-1G.1"));
        let b = bandwidth_script(&s, "/p");
        assert!(b.contains("sh /bench/bw.sh 268435456 67108864 3 1"));
        assert!(b.contains("--offset 805306368"));
        assert!(b.contains("--api-socket \"$WORK/bw.sock\" -- "), "{b}");
        assert!(b.contains("--api-socket \"path=$WORK/bw.sock\""), "{b}");
    }

    #[test]
    fn density_shape() {
        let s = Settings::standard(1);
        let d = density_script(&s, "/p", Some(Path::new("/opt/ch")));
        // 3 guest counts x 3 cases, and the format run.
        assert_eq!(d.matches(" density --tag ").count(), 9, "{d}");
        assert_eq!(d.matches(" launch ").count(), 1, "{d}");
        assert!(d.contains("--tag density.vmm-copies-8.1 --count 8 "), "{d}");
        assert!(d.contains("\"path=$WORK/dens-copy-{i}.img,readonly=on,memmap=ram,format=keep\""));
        assert!(d.contains("\"path=$WORK/dens-shared.img,readonly=on,memmap=ram,format=keep\""));
        assert!(
            d.contains("\"file=$WORK/dens-shared.img,discard_writes=on\""),
            "{d}"
        );
        assert!(
            d.contains("\"path=$WORK/dens-shared.img,memmap=ram\""),
            "{d}"
        );
        assert!(
            d.contains("dd if=/dev/zero of=\"$WORK/dens-shared.img\" bs=1048576 count=64"),
            "{d}"
        );
        assert!(d.contains("rootflags=dax"));
        // No initramfs for the density guests (the format run has one).
        for line in d.lines().filter(|l| l.contains(" density --tag ")) {
            assert!(!line.contains("--initramfs"), "{line}");
            assert!(
                line.contains("--memory 128M") || line.contains("size=128M"),
                "{line}"
            );
        }
        let without = density_script(&s, "/p", None);
        assert_eq!(without.matches(" density --tag ").count(), 6);
    }

    #[test]
    fn double_quoting() {
        assert_eq!(dq("a$WORK\"b`c\\"), "\"a$WORK\\\"b\\`c\\\\\"");
    }
}
