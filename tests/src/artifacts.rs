//! The files every run needs — kernel, guest initramfs, vmm binary — and those of the guests
//! that boot a stock distribution kernel, resolved once per process.
//!
//! Each comes from an environment variable when set (to test a specific build, or to skip the
//! slow builds on CI) and otherwise from the project's own build entry points, which cache their
//! results across processes. Failures are cached too, so fifty tests do not rebuild a kernel
//! that failed to build fifty times.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::config::{
    self, ENV_INITRAMFS, ENV_KERNEL, ENV_STOCK_KERNEL, ENV_STOCK_MODULES, ENV_STOCK_VMLINUX,
    ENV_VMLINUX, ENV_VMM,
};
use crate::error::{Error, IoContext, Result};
use crate::markers::tail_lines;
use crate::shell::parse_assignments;

/// The one kernel image, used both as the L1 host kernel and as the L2 guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The compressed, bootable image.
    pub bzimage: PathBuf,
    /// The matching ELF image, if known.
    pub vmlinux: Option<PathBuf>,
    /// Everything `guest-kernel/build.sh` printed (`KERNEL_VERSION`, `SOURCE_VERSION`, ...).
    pub info: BTreeMap<String, String>,
}

/// A stock distribution kernel (Debian's, fetched by `guest-kernel/stock.sh`) with the NVDIMM
/// drivers as modules: a guest kernel only, never the nested host's.
#[derive(Debug, Clone)]
pub struct StockKernel {
    /// The package's bzImage (`vmlinuz`).
    pub bzimage: PathBuf,
    /// The ELF image unpacked from it, for PVH boot, if known.
    pub vmlinux: Option<PathBuf>,
    /// Its `lib/modules/<release>` tree with `modules.dep`.
    pub modules: PathBuf,
    /// Everything `guest-kernel/stock.sh` printed (`STOCK_RELEASE`, `STOCK_VERSION`,
    /// `STOCK_PVH`, ...); empty with [`ENV_STOCK_KERNEL`].
    pub info: BTreeMap<String, String>,
}

/// Extra contents for the guest initramfs, passed to `resources/build-initramfs.sh`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct InitramfsSpec {
    /// `PATH[:DEST]` executables copied in with their `ldd` libraries (e.g. `/usr/bin/ndctl`).
    pub add_bins: Vec<String>,
    /// `SRC:DEST` plain files.
    pub add_files: Vec<String>,
}

impl InitramfsSpec {
    /// Adds an executable (with its libraries) at the same path in the guest.
    pub fn with_bin(mut self, path: impl Into<String>) -> Self {
        self.add_bins.push(path.into());
        self
    }

    /// Adds a file `src` on the host as `dest` in the guest.
    pub fn with_file(mut self, src: impl AsRef<Path>, dest: &str) -> Self {
        self.add_files
            .push(format!("{}:{dest}", src.as_ref().display()));
        self
    }

    fn is_default(&self) -> bool {
        self.add_bins.is_empty() && self.add_files.is_empty()
    }
}

fn cached_err(msg: &str) -> Error {
    Error::Earlier(msg.to_string())
}

/// Runs a build helper, returning its stdout; on failure the error carries the output tail.
fn run_helper(mut cmd: Command, what: &str) -> Result<String> {
    let shown = format!("{cmd:?}");
    eprintln!("testbed: {what}: {shown}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .ctx(|| format!("starting {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // Our helpers (and cargo with JSON messages) report on stderr; stdout is data.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = if stderr.trim().is_empty() {
            stdout.as_str()
        } else {
            &stderr
        };
        return Err(Error::Command {
            cmd: shown,
            status: out.status.to_string(),
            output: tail_lines(text, 60),
        });
    }
    Ok(stdout)
}

/// Runs a build script (`cmd` runs `script`) that prints `KEY=path` on stdout, and returns that
/// path; a script that printed none is an error with its output's tail.
fn printed_path(cmd: Command, script: &Path, key: &str, what: &str) -> Result<PathBuf> {
    let stdout = run_helper(cmd, what)?;
    parse_assignments(&stdout)
        .get(key)
        .map(PathBuf::from)
        .ok_or_else(|| Error::Command {
            cmd: script.display().to_string(),
            status: format!("printed no {key}="),
            output: tail_lines(&stdout, 20),
        })
}

fn existing(path: PathBuf, what: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::setup(format!(
            "{what} {} does not exist",
            path.display()
        )))
    }
}

fn resolve_kernel() -> Result<Kernel> {
    if let Some(bz) = config::var(ENV_KERNEL) {
        let bzimage = existing(PathBuf::from(bz), ENV_KERNEL)?;
        let vmlinux = match config::var(ENV_VMLINUX) {
            Some(v) => Some(existing(PathBuf::from(v), ENV_VMLINUX)?),
            None => bzimage
                .parent()
                .map(|d| d.join("vmlinux"))
                .filter(|p| p.is_file()),
        };
        return Ok(Kernel {
            bzimage,
            vmlinux,
            info: BTreeMap::new(),
        });
    }
    let script = config::workspace_root().join("guest-kernel/build.sh");
    if !script.is_file() {
        return Err(Error::setup(format!(
            "{} is missing; set {ENV_KERNEL} to a bzImage instead",
            script.display()
        )));
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script).current_dir(config::workspace_root());
    let stdout = run_helper(
        cmd,
        "building the kernel (cached after the first ~8 min build)",
    )?;
    let info = parse_assignments(&stdout);
    let bzimage = info
        .get("BZIMAGE")
        .map(PathBuf::from)
        .ok_or_else(|| Error::Command {
            cmd: script.display().to_string(),
            status: "printed no BZIMAGE=".into(),
            output: tail_lines(&stdout, 20),
        })?;
    let bzimage = existing(bzimage, "BZIMAGE")?;
    let vmlinux = match config::var(ENV_VMLINUX) {
        Some(v) => Some(existing(PathBuf::from(v), ENV_VMLINUX)?),
        None => info
            .get("VMLINUX")
            .map(PathBuf::from)
            .filter(|p| p.is_file()),
    };
    Ok(Kernel {
        bzimage,
        vmlinux,
        info,
    })
}

/// The kernel, from `PMEMVMM_KERNEL` or `guest-kernel/build.sh`.
pub fn kernel() -> Result<&'static Kernel> {
    static KERNEL: OnceLock<std::result::Result<Kernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| resolve_kernel().map_err(Error::into_message))
        .as_ref()
        .map_err(|e| cached_err(e))
}

fn build_initramfs(spec: &InitramfsSpec, modules: Option<&Path>) -> Result<PathBuf> {
    // PMEMVMM_INITRAMFS stands for the image of our own kernel only.
    if let (Some(path), None) = (config::var(ENV_INITRAMFS), modules) {
        if !spec.is_default() {
            return Err(Error::setup(format!(
                "{ENV_INITRAMFS} is set but this test needs extra initramfs contents ({:?}); \
                 unset it so the testbed can run resources/build-initramfs.sh",
                spec
            )));
        }
        return existing(PathBuf::from(path), ENV_INITRAMFS);
    }
    let script = config::workspace_root().join("resources/build-initramfs.sh");
    if !script.is_file() {
        return Err(Error::setup(format!(
            "{} is missing; set {ENV_INITRAMFS} instead",
            script.display()
        )));
    }
    // Without -o the script writes a content-addressed cache entry atomically (temp file and
    // rename), so concurrent test processes asking for the same contents share one image and
    // never see a half-written one.
    let mut cmd = Command::new("bash");
    cmd.arg(&script).current_dir(config::workspace_root());
    for bin in &spec.add_bins {
        cmd.arg("--add-bin").arg(bin);
    }
    for file in &spec.add_files {
        cmd.arg("--add").arg(file);
    }
    if let Some(dir) = modules {
        cmd.arg("--kernel-modules").arg(dir);
    }
    let built = printed_path(cmd, &script, "INITRAMFS", "building the guest initramfs")?;
    existing(built, "INITRAMFS")
}

/// The guest initramfs with `spec`'s extras, built once per process and spec.
pub fn initramfs(spec: &InitramfsSpec) -> Result<PathBuf> {
    cached_initramfs(spec, None)
}

/// An initramfs per spec and module tree (`None`: our kernel, whose drivers are built in).
fn cached_initramfs(spec: &InitramfsSpec, modules: Option<PathBuf>) -> Result<PathBuf> {
    type Key = (InitramfsSpec, Option<PathBuf>);
    type Cache = Mutex<HashMap<Key, std::result::Result<PathBuf, String>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    cache
        .entry((spec.clone(), modules.clone()))
        .or_insert_with(|| build_initramfs(spec, modules.as_deref()).map_err(Error::into_message))
        .clone()
        .map_err(|e| cached_err(&e))
}

fn resolve_stock_kernel() -> Result<StockKernel> {
    if let Some(bz) = config::var(ENV_STOCK_KERNEL) {
        let bzimage = existing(PathBuf::from(bz), ENV_STOCK_KERNEL)?;
        let modules = config::var(ENV_STOCK_MODULES).ok_or_else(|| {
            Error::setup(format!(
                "{ENV_STOCK_KERNEL} is set but {ENV_STOCK_MODULES} is not; set it to the \
                 kernel's lib/modules/<release> directory (with modules.dep)"
            ))
        })?;
        let modules = PathBuf::from(modules);
        existing(modules.join("modules.dep"), ENV_STOCK_MODULES)?;
        let vmlinux = match config::var(ENV_STOCK_VMLINUX) {
            Some(v) => Some(existing(PathBuf::from(v), ENV_STOCK_VMLINUX)?),
            None => bzimage
                .parent()
                .map(|d| d.join("vmlinux"))
                .filter(|p| p.is_file()),
        };
        return Ok(StockKernel {
            bzimage,
            vmlinux,
            modules,
            info: BTreeMap::new(),
        });
    }
    let script = config::workspace_root().join("guest-kernel/stock.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).current_dir(config::workspace_root());
    let stdout = run_helper(
        cmd,
        "fetching the stock kernel (cached after the first download)",
    )?;
    let info = parse_assignments(&stdout);
    let path = |key: &str| {
        info.get(key)
            .map(PathBuf::from)
            .ok_or_else(|| Error::Command {
                cmd: script.display().to_string(),
                status: format!("printed no {key}="),
                output: tail_lines(&stdout, 20),
            })
    };
    let bzimage = existing(path("STOCK_BZIMAGE")?, "STOCK_BZIMAGE")?;
    let modules = path("STOCK_MODULES")?;
    existing(modules.join("modules.dep"), "STOCK_MODULES")?;
    let vmlinux = match config::var(ENV_STOCK_VMLINUX) {
        Some(v) => Some(existing(PathBuf::from(v), ENV_STOCK_VMLINUX)?),
        None => Some(existing(path("STOCK_VMLINUX")?, "STOCK_VMLINUX")?),
    };
    Ok(StockKernel {
        bzimage,
        vmlinux,
        modules,
        info,
    })
}

/// The stock distribution kernel, from `PMEMVMM_STOCK_KERNEL` or `guest-kernel/stock.sh`.
pub fn stock_kernel() -> Result<&'static StockKernel> {
    static STOCK: OnceLock<std::result::Result<StockKernel, String>> = OnceLock::new();
    STOCK
        .get_or_init(|| resolve_stock_kernel().map_err(Error::into_message))
        .as_ref()
        .map_err(|e| cached_err(e))
}

/// The guest initramfs for the stock kernel: `spec`'s extras plus its NVDIMM modules, loaded by
/// `/init` (`build-initramfs.sh --kernel-modules`), built once per process and spec.
pub fn stock_initramfs(spec: &InitramfsSpec) -> Result<PathBuf> {
    let modules = stock_kernel()?.modules.clone();
    cached_initramfs(spec, Some(modules))
}

fn build_vmm() -> Result<PathBuf> {
    if let Some(path) = config::var(ENV_VMM) {
        return existing(PathBuf::from(path), ENV_VMM);
    }
    // The suite tests the binary users run: scripts/build-vmm.sh's (dist profile, static).
    // The inherited CARGO_TARGET_DIR (if any) is kept on purpose: it is where the developer
    // wants build output, and a relative one is relative to the workspace root we run in.
    let script = config::workspace_root().join("scripts/build-vmm.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).current_dir(config::workspace_root());
    let exe = printed_path(cmd, &script, "VMM", "building the vmm")?;
    existing(exe, "vmm binary")
}

/// The vmm binary, from `PMEMVMM_VMM` or `scripts/build-vmm.sh`.
pub fn vmm() -> Result<&'static Path> {
    static VMM: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    VMM.get_or_init(|| build_vmm().map_err(Error::into_message))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| cached_err(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `build-initramfs.sh --kernel-modules` on a made-up module tree: every module of
    /// `resources/guest-modules` and its dependencies (followed through modules.dep, however
    /// deep) land in the image with a modules.dep of just their lines, the load list goes to
    /// `/etc/guest-modules`, modules nobody needs stay out, and a listed module missing from
    /// the tree is an error naming it.
    #[test]
    fn kernel_modules_closure_in_the_image() {
        let dir = crate::scratch::ScratchDir::new("modtree").unwrap();
        let release = dir.path().join("lib/modules/9.9.9-test");
        let list =
            std::fs::read_to_string(config::workspace_root().join("resources/guest-modules"))
                .unwrap();
        let wanted: Vec<&str> = list
            .lines()
            .map(|l| l.split('#').next().unwrap().trim())
            .filter(|l| !l.is_empty())
            .collect();
        // nd_pmem -> nd_btt -> libnvdimm -> dep-deep (a chain), plus an unneeded module.
        let deps = |m: &str| match m {
            "nd_pmem" => "kernel/nd_btt.ko",
            "nd_btt" => "kernel/libnvdimm.ko",
            "libnvdimm" => "kernel/dep-deep.ko",
            _ => "",
        };
        let mut dep = String::new();
        for m in wanted
            .iter()
            .copied()
            .chain(["libnvdimm", "dep-deep", "unneeded"])
        {
            let file = release.join(format!("kernel/{m}.ko"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, m).unwrap();
            dep.push_str(&format!("kernel/{m}.ko: {}\n", deps(m)));
        }
        std::fs::write(release.join("modules.dep"), &dep).unwrap();
        let build = |out: &Path| {
            Command::new("bash")
                .arg(config::workspace_root().join("resources/build-initramfs.sh"))
                .arg("-o")
                .arg(out)
                .arg("--kernel-modules")
                .arg(&release)
                .output()
                .unwrap()
        };
        let image = dir.path().join("img.cpio.gz");
        let out = build(&image);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let unpacked = dir.path().join("root");
        std::fs::create_dir(&unpacked).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "gzip -dc {} | cpio -id --quiet",
                crate::shell::sh_quote(&image.display().to_string())
            ))
            .current_dir(&unpacked)
            .status()
            .unwrap();
        assert!(status.success());
        let mdir = unpacked.join("lib/modules/9.9.9-test");
        for m in wanted.iter().copied().chain(["libnvdimm", "dep-deep"]) {
            assert!(mdir.join(format!("kernel/{m}.ko")).is_file(), "{m} missing");
        }
        assert!(!mdir.join("kernel/unneeded.ko").exists());
        let image_dep = std::fs::read_to_string(mdir.join("modules.dep")).unwrap();
        assert!(
            image_dep.contains("kernel/nd_btt.ko: kernel/libnvdimm.ko\n"),
            "{image_dep}"
        );
        assert!(!image_dep.contains("unneeded"), "{image_dep}");
        let loads = std::fs::read_to_string(unpacked.join("etc/guest-modules")).unwrap();
        assert_eq!(loads.lines().collect::<Vec<_>>(), wanted);

        // A listed module the tree lacks.
        let dep_without_nfit: String = dep
            .lines()
            .filter(|l| !l.starts_with("kernel/nfit.ko"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(release.join("modules.dep"), dep_without_nfit).unwrap();
        let out = build(&dir.path().join("bad.cpio.gz"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("'nfit'"), "{err}");
        assert!(!dir.path().join("bad.cpio.gz").exists());
    }

    #[test]
    fn spec_builders() {
        let s = InitramfsSpec::default()
            .with_bin("/usr/bin/ndctl")
            .with_file("/etc/hosts", "/etc/hosts");
        assert_eq!(s.add_bins, vec!["/usr/bin/ndctl"]);
        assert_eq!(s.add_files, vec!["/etc/hosts:/etc/hosts"]);
        assert!(!s.is_default());
    }
}
