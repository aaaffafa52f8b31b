//! What one `bench` run measures: phases, sizes, run counts, peer monitors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// GiB.
pub const GIB: u64 = 1 << 30;
/// MiB.
pub const MIB: u64 = 1 << 20;

/// One part of the benchmark; each is one host run (one L1 boot in nested mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Launch to guest init and resident memory: our monitor with 0, 1 and 8 pmem devices, and
    /// each peer the same way.
    Boot,
    /// Our monitor's start-up cost against pmem size (sparse backings).
    Startup,
    /// Guest RAM per GiB of pmem and namespace bring-up time per memmap policy and size.
    Memmap,
    /// Guest DAX bandwidth against the host's memcpy on the same backing.
    Bandwidth,
    /// Host memory of N guests booting one read-only root image with `rootflags=dax`: shared
    /// by ours, shared by cloud-hypervisor (virtio-pmem, `discard_writes=on`), and one copy per
    /// guest with ours.
    Density,
}

impl Phase {
    /// All phases, in run order.
    pub const ALL: [Phase; 5] = [
        Phase::Boot,
        Phase::Startup,
        Phase::Memmap,
        Phase::Bandwidth,
        Phase::Density,
    ];

    /// The name used in tags, `--only` and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Boot => "boot",
            Phase::Startup => "startup",
            Phase::Memmap => "memmap",
            Phase::Bandwidth => "bandwidth",
            Phase::Density => "density",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// A peer monitor measured next to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKind {
    /// cloud-hypervisor (`--pmem file=...`: virtio-pmem).
    CloudHypervisor,
    /// Firecracker (`"pmem"` in its config file: virtio-pmem).
    Firecracker,
    /// QEMU with `-machine q35,nvdimm=on` and `-device nvdimm` (ACPI NFIT, like ours).
    Qemu,
}

impl PeerKind {
    /// All peers, in table order.
    pub const ALL: [PeerKind; 3] = [
        PeerKind::CloudHypervisor,
        PeerKind::Firecracker,
        PeerKind::Qemu,
    ];

    /// Short name, used in case names (`qemu-8`).
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::CloudHypervisor => "cloud-hypervisor",
            PeerKind::Firecracker => "firecracker",
            PeerKind::Qemu => "qemu",
        }
    }

    /// Its binary's name in the prebuilt peers' folder ([`testbed::config::peers_dir`]), used
    /// when its variable is not set; QEMU is not there.
    pub fn default_binary(self) -> Option<&'static str> {
        match self {
            PeerKind::CloudHypervisor => Some("cloud-hypervisor"),
            PeerKind::Firecracker => Some("firecracker"),
            PeerKind::Qemu => None,
        }
    }

    /// The environment variable naming its binary.
    pub fn env_var(self) -> &'static str {
        match self {
            PeerKind::CloudHypervisor => "PMEMVMM_BENCH_CLOUD_HYPERVISOR",
            PeerKind::Firecracker => "PMEMVMM_BENCH_FIRECRACKER",
            PeerKind::Qemu => "PMEMVMM_BENCH_QEMU",
        }
    }
}

/// What became of a peer before anything ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    /// The variable is set to the empty string, or not set for a peer without a default: the
    /// peer is not part of this run.
    NotGiven,
    /// Set, but unusable: reported as missing with the reason; the run goes on.
    Missing(String),
    /// An executable file.
    Ready(PathBuf),
}

/// Checks a peer path: it must exist, be a regular file and be executable.
pub fn check_peer_path(value: &str) -> PeerState {
    if value.trim().is_empty() {
        return PeerState::NotGiven;
    }
    let path = Path::new(value);
    if !path.is_absolute() {
        // A bare name is looked up in PATH, as a shell would.
        if !value.contains('/') {
            return match testbed::config::which(value) {
                Some(p) => PeerState::Ready(p),
                None => PeerState::Missing(format!("{value}: not found in PATH")),
            };
        }
    }
    match std::fs::metadata(path) {
        Err(e) => PeerState::Missing(format!("{value}: {e}")),
        Ok(m) if !m.is_file() => PeerState::Missing(format!("{value}: not a regular file")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            PeerState::Missing(format!("{value}: not executable"))
        }
        Ok(_) => match path.canonicalize() {
            Ok(p) => PeerState::Ready(p),
            Err(e) => PeerState::Missing(format!("{value}: {e}")),
        },
    }
}

/// Everything one run measures.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runs per figure (boot, start-up, bandwidth).
    pub runs: usize,
    /// Runs per figure in the memmap phase (each 64 GiB run initialises 16 Mi struct pages).
    pub memmap_runs: usize,
    /// `--quick`: N=1 and tiny sizes.
    pub quick: bool,
    /// Phases to run.
    pub phases: Vec<Phase>,
    /// Guest RAM for the boot and start-up phases.
    pub guest_ram: u64,
    /// pmem device counts of the boot phase.
    pub boot_devices: Vec<usize>,
    /// Size of each pmem device in the boot phase.
    pub boot_pmem_size: u64,
    /// pmem sizes of the start-up phase.
    pub startup_sizes: Vec<u64>,
    /// pmem sizes of the memmap phase.
    pub memmap_sizes: Vec<u64>,
    /// memmap policies of the memmap phase.
    pub memmap_policies: Vec<String>,
    /// Guest RAM of the memmap phase (must hold the memmap of the largest size).
    pub memmap_guest_ram: u64,
    /// Size of each of the two bandwidth devices.
    pub bw_device: u64,
    /// Bytes copied per pass.
    pub bw_bytes: u64,
    /// Size of one copy (the anonymous buffer).
    pub bw_chunk: u64,
    /// Timed passes per direction per sample.
    pub bw_passes: u32,
    /// Guest RAM of the bandwidth phase.
    pub bw_guest_ram: u64,
    /// Seconds after guest init before resident memory is read.
    pub settle_ms: u64,
    /// Guest counts of the density phase (all guests of a count run at once).
    pub density_guests: Vec<usize>,
    /// Runs of every density figure (memory figures: one run is the default).
    pub density_runs: usize,
    /// Guest RAM of each density guest.
    pub density_ram: u64,
    /// Size of the density phase's root image file (info block, then the ext4 file system).
    pub density_image: u64,
    /// The peers.
    pub peers: Vec<(PeerKind, PeerState)>,
}

impl Settings {
    /// The default run: the sizes the issues name, N runs each.
    pub fn standard(runs: usize) -> Settings {
        Settings {
            runs,
            memmap_runs: runs.min(3),
            quick: false,
            phases: Phase::ALL.to_vec(),
            guest_ram: 256 * MIB,
            boot_devices: vec![0, 1, 8],
            boot_pmem_size: GIB,
            startup_sizes: vec![GIB, 64 * GIB, 1024 * GIB],
            memmap_sizes: vec![GIB, 4 * GIB, 16 * GIB, 64 * GIB],
            memmap_policies: ["ram", "pmem", "none", "auto"].map(String::from).to_vec(),
            memmap_guest_ram: 2 * GIB,
            bw_device: GIB,
            bw_bytes: 256 * MIB,
            bw_chunk: 64 * MIB,
            bw_passes: 3,
            bw_guest_ram: 512 * MIB,
            settle_ms: 500,
            density_guests: vec![1, 4, 8],
            density_runs: 1,
            density_ram: 128 * MIB,
            density_image: 64 * MIB,
            peers: Vec::new(),
        }
    }

    /// `--quick`: one run of everything with tiny sizes (the smoke test).
    pub fn quick() -> Settings {
        Settings {
            runs: 1,
            memmap_runs: 1,
            quick: true,
            boot_pmem_size: 64 * MIB,
            startup_sizes: vec![64 * MIB, 256 * MIB],
            // Not smaller: the RAM cost is measured from the guest's MemFree, which moves by
            // about a MiB either way on its own; a 64 MiB device's 1 MiB memmap once measured
            // -708 KiB. 256 MiB costs 4 MiB.
            memmap_sizes: vec![256 * MIB, 512 * MIB],
            memmap_guest_ram: 256 * MIB,
            bw_device: 64 * MIB,
            bw_bytes: 8 * MIB,
            bw_chunk: 2 * MIB,
            bw_passes: 1,
            bw_guest_ram: 256 * MIB,
            settle_ms: 300,
            // Two guests: the least that can share, and what the smoke test checks sharing on.
            density_guests: vec![2],
            ..Settings::standard(1)
        }
    }

    /// Reads the peers' environment variables; a peer whose variable is not set at all is
    /// taken from the prebuilt peers' folder (`../shared/peers` beside the repository), so a
    /// plain run measures them, and a missing default binary is reported as missing.
    pub fn with_peers_from_env(self) -> Settings {
        self.with_peers(|var| std::env::var(var).ok(), &testbed::config::peers_dir())
    }

    /// [`Settings::with_peers_from_env`] with the environment and the peers' folder given.
    pub fn with_peers(
        mut self,
        env: impl Fn(&str) -> Option<String>,
        peers_dir: &Path,
    ) -> Settings {
        self.peers = PeerKind::ALL
            .into_iter()
            .map(|k| {
                let state = match (env(k.env_var()), k.default_binary()) {
                    (Some(v), _) => check_peer_path(&v),
                    (None, Some(bin)) => {
                        match check_peer_path(&peers_dir.join(bin).to_string_lossy()) {
                            PeerState::Missing(r) => PeerState::Missing(format!(
                                "{r} (the default when {} is not set)",
                                k.env_var()
                            )),
                            other => other,
                        }
                    }
                    (None, None) => PeerState::NotGiven,
                };
                (k, state)
            })
            .collect();
        self
    }

    /// The peers ready to run.
    pub fn ready_peers(&self) -> Vec<(PeerKind, PathBuf)> {
        self.peers
            .iter()
            .filter_map(|(k, s)| match s {
                PeerState::Ready(p) => Some((*k, p.clone())),
                _ => None,
            })
            .collect()
    }

    /// Whether `phase` is selected.
    pub fn has(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

/// `1G`, `64M`, `1T`: the size in the largest unit that divides it (case names, tables).
pub fn size_label(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (GIB, "G"), (MIB, "M"), (1 << 10, "K")];
    for (unit, suffix) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Parses `1G`, `64M`, `1T`, `512K` or a byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], MIB),
        'G' | 'g' => (&s[..s.len() - 1], GIB),
        'T' | 't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size_label(GIB), "1G");
        assert_eq!(size_label(1 << 40), "1T");
        assert_eq!(size_label(64 * MIB), "64M");
        assert_eq!(size_label(1536 * MIB), "1536M");
        assert_eq!(parse_size("64G"), Some(64 * GIB));
        assert_eq!(parse_size("1t"), Some(1 << 40));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn peer_paths() {
        assert_eq!(check_peer_path(""), PeerState::NotGiven);
        match check_peer_path("/nonexistent/firecracker") {
            PeerState::Missing(r) => assert!(r.contains("No such file"), "{r}"),
            s => panic!("{s:?}"),
        }
        let dir = testbed::ScratchDir::new("peer").unwrap();
        let plain = dir.path().join("firecracker");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        match check_peer_path(&plain.to_string_lossy()) {
            PeerState::Missing(r) => assert!(r.contains("not executable"), "{r}"),
            s => panic!("{s:?}"),
        }
        match check_peer_path("/etc") {
            PeerState::Missing(r) => assert!(r.contains("not a regular file"), "{r}"),
            s => panic!("{s:?}"),
        }
        assert!(matches!(check_peer_path("/bin/sh"), PeerState::Ready(_)));
        assert!(matches!(check_peer_path("sh"), PeerState::Ready(_)));
        assert!(matches!(
            check_peer_path("no-such-monitor-xyz"),
            PeerState::Missing(_)
        ));
    }

    /// Unset variables take the peers' folder; an empty one leaves the peer out; a set one
    /// wins.
    #[test]
    fn default_peers() {
        let dir = testbed::ScratchDir::new("peers").unwrap();
        let fc = dir.path().join("firecracker");
        std::fs::write(&fc, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Settings::quick().with_peers(|_| None, dir.path());
        let state =
            |s: &Settings, k: PeerKind| s.peers.iter().find(|p| p.0 == k).unwrap().1.clone();
        assert_eq!(
            state(&s, PeerKind::Firecracker),
            PeerState::Ready(fc.canonicalize().unwrap())
        );
        match state(&s, PeerKind::CloudHypervisor) {
            PeerState::Missing(r) => assert!(
                r.contains("cloud-hypervisor")
                    && r.contains("PMEMVMM_BENCH_CLOUD_HYPERVISOR is not set"),
                "{r}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(state(&s, PeerKind::Qemu), PeerState::NotGiven);
        let s = Settings::quick().with_peers(
            |v| (v == "PMEMVMM_BENCH_FIRECRACKER").then(String::new),
            dir.path(),
        );
        assert_eq!(state(&s, PeerKind::Firecracker), PeerState::NotGiven);
        let s = Settings::quick().with_peers(
            |v| (v == "PMEMVMM_BENCH_QEMU").then(|| "/bin/sh".to_string()),
            dir.path(),
        );
        assert!(matches!(state(&s, PeerKind::Qemu), PeerState::Ready(_)));
    }

    #[test]
    fn phases() {
        assert_eq!(Phase::parse("memmap"), Some(Phase::Memmap));
        assert_eq!(Phase::parse("x"), None);
        let q = Settings::quick();
        assert_eq!(q.runs, 1);
        assert!(q.memmap_sizes.iter().all(|s| *s < GIB));
    }
}
