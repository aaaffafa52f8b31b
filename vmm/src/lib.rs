//! The `vmm` monitor as a library: the binary in `main.rs` parses the command line and calls
//! [`run`]; benchmarks and tests can reuse the pieces.
//!
//! A run goes one way (see docs/architecture.md) in two phases. First every check, writing
//! nothing: configuration → inputs, outputs and backings (by identity) → pmem layout and format
//! plans → guest memory with the kernel, boot structures and ACPI tables → host check → what only
//! KVM can answer. Then the writes: new `size=` files and info blocks → KVM VM → outputs → vCPU
//! threads and the event loop → a stop reason. [`VmmError::exit_status`] is the one rule from an
//! error to an exit status.

pub mod api;
pub mod boot;
pub mod config;
pub mod cpu;
pub mod events;
mod fault_watch;
pub mod host;
mod hot_remove;
pub mod identity;
mod irq_report;
pub mod kvm_stats;
pub mod layout;
pub mod output;
pub mod pmem;
pub mod pmem_option;
pub mod seccomp;
pub mod sigbus;
pub mod size;
pub mod terminal;
pub mod vcpu;
pub mod vm;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::bus::PioBus;
use devices::i8042::I8042;
use devices::lifecycle::{StopReason, StopSignal};
use devices::power::{ResetControl, SleepControl};
use devices::serial::SerialPort;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use log::{info, warn};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{SerialMode, VmConfig};
use crate::identity::{Claim, Extents, Role};
use crate::output::{Output, OutputOption};

/// I/O ports of the platform devices; the ACPI tables describe the same values.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const SLEEP_CONTROL_PORT: u16 = 0x3c0;
pub const SLEEP_STATUS_PORT: u16 = 0x3c1;
pub const RESET_PORT: u16 = 0xcf9;
pub const RESET_VALUE: u8 = 0x06;
pub const I8042_PORT: u16 = 0x60;
/// The interrupt of the ACPI Generic Event Device that signals the power button
/// (`vm.power-button`): an ISA line nothing else uses.
pub const GED_GSI: u32 = 5;
/// The Generic Event Device's second interrupt: the NVDIMM set changed (re-read `_FIT`).
pub const NVDIMM_HOTPLUG_GSI: u32 = 6;
/// The Generic Event Device's third interrupt: release the NVDIMM in the eject request register
/// (docs/hot-remove.md).
pub const NVDIMM_EJECT_GSI: u32 = 7;
/// The GED interrupt for NVDIMM health events (`devices::nvdimm_events`). Not 7 (NVDIMM eject),
/// 8 (the ISA RTC's) or 9 (the PC's SCI).
pub const NVDIMM_HEALTH_GSI: u32 = 10;

/// The monitor's exit statuses (`vmm --help` and the README list them).
pub mod exit {
    /// The guest powered off.
    pub const POWEROFF: u8 = 0;
    /// The monitor failed: a host or KVM error, a failed host flush, an I/O error.
    pub const FAILURE: u8 = 1;
    /// Bad command line or configuration: nothing was written, nothing was started.
    pub const USAGE: u8 = 2;
    /// The guest rebooted.
    pub const REBOOT: u8 = 3;
    /// The guest triple-faulted.
    pub const TRIPLE_FAULT: u8 = 4;
    /// A host flush of guest data failed (a guest flush through the NFIT flush hint, or the
    /// flush at exit): the guest was stopped; what it wrote since its last successful flush may
    /// not be durable.
    pub const FLUSH_FAILED: u8 = 5;
    /// A backing failed under the guest: the host could not supply a page of it (its file
    /// system is full, the device returns I/O errors, the device-dax was removed). The guest was
    /// stopped at the access; what it flushed before is on the backing.
    pub const BACKING_FAULT: u8 = 6;
    /// Stopped by signal N: 128 + N.
    pub const SIGNAL_BASE: u8 = 128;
}

#[derive(Debug, Error)]
pub enum VmmError {
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Pmem(#[from] pmem::PmemError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error(transparent)]
    Alias(#[from] identity::AliasError),
    #[error(transparent)]
    ApiSocket(#[from] api::socket::ApiSocketError),
    #[error("--memory: cannot map {size} bytes of guest RAM: {detail}")]
    GuestMemory { size: u64, detail: String },
    #[error("building ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    HostUnsuitable(#[from] host::HostUnsuitable),
    #[error("device layout: {0}")]
    Bus(#[from] devices::bus::BusError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// A vCPU stopped the guest (KVM could not run it, a device fault, ...).
    #[error(transparent)]
    Vcpu(vcpu::VcpuFailure),
    /// The guest stopped with an error no vCPU recorded.
    #[error("the guest stopped after an error")]
    StoppedAfterError,
    /// The event loop could not be set up.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// The API thread went away while the monitor waited for its commands.
    #[error("the API thread stopped")]
    ApiThreadStopped,
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The guest asked for a flush the host could not make durable; the guest was stopped
    /// before its flush completed.
    #[error("{id} ({}): the host could not make a guest flush durable, so the guest was stopped before its flush completed; data written since its last successful flush may be lost: {}", .path.display(), .source.source)]
    GuestFlushFailed {
        id: String,
        path: std::path::PathBuf,
        source: Box<devices::pmem::flush_hint::FlushFailed>,
    },
    /// A backing could not supply a page the guest touched; the guest was stopped at the access.
    #[error("{id} ({}): the backing failed under the guest, which was stopped at the access: {cause}", .path.display())]
    BackingFault {
        id: String,
        path: std::path::PathBuf,
        cause: devices::pmem::fault::BackingFault,
    },
    /// Flushing a backing on the way out failed.
    #[error(transparent)]
    ExitFlushFailed(#[from] pmem::FlushError),
    /// A stop signal arrived before the guest started; what this run created was removed.
    #[error("stopped by signal {0} before the guest started; nothing this run created was kept")]
    Signal(i32),
}

impl VmmError {
    /// The one rule from an error to the monitor's exit status. Usage errors (2) are mistakes in
    /// what the user asked for, found before anything was written; everything else that fails is
    /// the host's or the monitor's (1).
    pub fn exit_status(&self) -> u8 {
        let usage = match self {
            VmmError::Boot(e) => !matches!(e, boot::BootError::GuestMemory(_)),
            VmmError::Pmem(e) => match e {
                pmem::PmemError::Backing(e) => e.is_usage(),
                pmem::PmemError::Format { source, .. } => source.is_usage(),
                pmem::PmemError::Layout { .. }
                | pmem::PmemError::Aliases { .. }
                | pmem::PmemError::Labels { .. } => true,
                pmem::PmemError::Uuid { .. }
                | pmem::PmemError::Appeared { .. }
                | pmem::PmemError::LabelRead { .. } => false,
            },
            VmmError::Output(e) => !matches!(e, output::OutputError::Write { .. }),
            VmmError::ApiSocket(e) => e.is_usage(),
            VmmError::Alias(_) | VmmError::GuestMemory { .. } => true,
            VmmError::Vm(vm::VmError::TooManyCpus { .. } | vm::VmError::NoReadonlySlots) => true,
            VmmError::Signal(n) => return exit::SIGNAL_BASE.saturating_add(*n as u8),
            VmmError::GuestFlushFailed { .. } | VmmError::ExitFlushFailed(_) => {
                return exit::FLUSH_FAILED
            }
            VmmError::BackingFault { .. } => return exit::BACKING_FAULT,
            VmmError::Acpi(_)
            | VmmError::Seccomp(_)
            | VmmError::HostUnsuitable(_)
            | VmmError::Bus(_)
            | VmmError::Vm(_)
            | VmmError::Io { .. }
            | VmmError::Vcpu(_)
            | VmmError::StoppedAfterError
            | VmmError::EventLoop(_)
            | VmmError::ApiThreadStopped => false,
        };
        if usage {
            exit::USAGE
        } else {
            exit::FAILURE
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// The platform description the ACPI tables are built from.
fn platform(cfg: &VmConfig, nvdimms: Vec<acpi::NvdimmDesc>) -> acpi::PlatformDesc {
    acpi::PlatformDesc {
        num_cpus: cfg.cpus,
        ioapic: acpi::IoApicDesc {
            id: 0,
            address: layout::IOAPIC_ADDR,
            gsi_base: 0,
        },
        serial: vec![acpi::SerialDesc {
            io_base: COM1_PORT,
            irq: COM1_IRQ as u8,
        }],
        power: acpi::PowerDesc {
            sleep_control_port: SLEEP_CONTROL_PORT,
            sleep_status_port: SLEEP_STATUS_PORT,
            reset_port: RESET_PORT,
            reset_value: RESET_VALUE,
            power_button_gsi: Some(GED_GSI),
        },
        ram: layout::ram_regions(cfg.memory),
        nvdimms,
        nvdimm_hotplug: Some(acpi::NvdimmHotplugDesc {
            fit_addr: layout::FIT_ADDR,
            fit_max: layout::FIT_MAX,
            gsi: NVDIMM_HOTPLUG_GSI,
            eject: Some(acpi::NvdimmEjectDesc {
                port: geometry::nvdimm_eject::PORT,
                gsi: NVDIMM_EJECT_GSI,
            }),
        }),
        nvdimm_dsm: Some(acpi::NvdimmDsmDesc {
            page_addr: layout::DSM_PAGE_ADDR,
            doorbell_port: geometry::dsm_mailbox::DOORBELL_PORT,
            health_events: Some(acpi::HealthEventsDesc {
                gsi: NVDIMM_HEALTH_GSI,
                port: geometry::nvdimm_events::PORT,
            }),
        }),
    }
}

/// The NVDIMM `_DSM` mailbox page in guest memory (`layout::DSM_PAGE_ADDR`), for the doorbell
/// device on the vCPU threads. Guest memory stays mapped while the vCPUs run.
struct GuestMailbox(GuestMemoryMmap);

impl devices::nvdimm_dsm::MailboxPage for GuestMailbox {
    fn read_page(&self, buf: &mut [u8]) -> Result<(), String> {
        use vm_memory::Bytes;
        self.0
            .read_slice(buf, GuestAddress(layout::DSM_PAGE_ADDR))
            .map_err(|e| e.to_string())
    }

    fn write_page(&self, offset: u64, data: &[u8]) -> Result<(), String> {
        use vm_memory::Bytes;
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > geometry::dsm_mailbox::PAGE_SIZE) {
            return Err(format!("{offset:#x}+{:#x} is outside the page", data.len()));
        }
        self.0
            .write_slice(data, GuestAddress(layout::DSM_PAGE_ADDR + offset))
            .map_err(|e| e.to_string())
    }
}

/// Guest memory with everything the boot vCPU needs already in place. No KVM object exists yet.
pub fn prepare_guest_memory(
    cfg: &VmConfig,
    nvdimms: Vec<acpi::NvdimmDesc>,
    legacy_pmem: &[layout::Region],
) -> Result<(GuestMemoryMmap, boot::Entry), VmmError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(cfg.memory)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::GuestMemory {
        size: cfg.memory,
        detail: e.to_string(),
    })?;
    write_fit(&mem, &nvdimms)?;
    let tables = acpi::build_tables(
        &platform(cfg, nvdimms),
        layout::ACPI_ADDR,
        layout::ACPI_TABLES_MAX_SIZE,
    )?;
    boot::write_bytes(&mem, tables.base, &tables.bytes)?;
    cpu::write_boot_tables(&mem)?;
    let entry = boot::load(
        &mem,
        cfg.memory,
        &cfg.kernel,
        cfg.initramfs.as_deref(),
        &cfg.cmdline,
        tables.rsdp_addr,
        legacy_pmem,
    )?;
    Ok((mem, entry))
}

/// Writes the FIT buffer `_FIT` returns (see `layout::FIT_ADDR`): the structures first, then
/// their byte count, so a guest reading the count sees complete structures.
pub fn write_fit(mem: &GuestMemoryMmap, nvdimms: &[acpi::NvdimmDesc]) -> Result<(), VmmError> {
    let fit = acpi::nfit_structures(nvdimms);
    debug_assert!(fit.len() <= layout::FIT_MAX as usize);
    boot::write_bytes(mem, layout::FIT_ADDR + 4, &fit)?;
    boot::write_bytes(mem, layout::FIT_ADDR, &(fit.len() as u32).to_le_bytes())?;
    Ok(())
}

/// Stops the run at a step boundary when a stop signal is pending.
fn stop_if_signalled() -> Result<(), VmmError> {
    match events::take_pending_stop_signal() {
        Some(n) => Err(VmmError::Signal(n)),
        None => Ok(()),
    }
}

/// Everything checked and planned, nothing written: the result of [`check`].
struct Checked {
    pmem: pmem::PmemPlan,
    /// Every path of the run that is not a pmem backing (kernel, initramfs, outputs, API
    /// socket), kept for the identity checks of devices hot-added later.
    claims: Vec<(Role, PathBuf, Extents)>,
    report: Option<Output>,
    serial: Option<Output>,
    mem: GuestMemoryMmap,
    entry: boot::Entry,
    kvm: kvm_ioctls::Kvm,
}

/// Every check of the run, in an order that finds all usage errors before anything is written:
/// inputs, outputs, backings (opened, locked and mapped, new files only checked), identities,
/// format plans, guest memory with the kernel; then the host check and what only KVM can answer.
/// Nothing is created, truncated or written to a backing here. `api_socket` is the checked
/// `--api-socket` path, one more output the identities are compared with. The command line and
/// the API's `vm.create` both come through here.
fn check(cfg: &VmConfig, api_socket: Option<&api::socket::ApiSocket>) -> Result<Checked, VmmError> {
    stop_if_signalled()?;
    let sysfs = std::path::Path::new(identity::SYSFS_ROOT);
    let input = |option, path: &std::path::Path| -> Result<Extents, VmmError> {
        let file = boot::open_input(option, path)?;
        let meta = file.metadata().map_err(|source| match option {
            boot::InputOption::Kernel => boot::BootError::KernelUnreadable {
                path: path.to_path_buf(),
                source,
            },
            boot::InputOption::Initramfs => boot::BootError::InitramfsUnreadable {
                path: path.to_path_buf(),
                source,
            },
        })?;
        Ok(Extents::of(&meta, sysfs))
    };
    let kernel = input(boot::InputOption::Kernel, &cfg.kernel)?;
    let initramfs = match &cfg.initramfs {
        Some(p) => Some((p, input(boot::InputOption::Initramfs, p)?)),
        None => None,
    };
    let report = match &cfg.report {
        Some(p) => Some(Output::prepare(OutputOption::Report, p)?),
        None => None,
    };
    let serial = match &cfg.serial {
        SerialMode::File(p) => Some(Output::prepare(OutputOption::SerialFile, p)?),
        _ => None,
    };
    stop_if_signalled()?;
    let mut pmem = pmem::PmemPlan::open(&cfg.pmem, cfg.memory)?;
    let rest = (|| {
        let mut claims = vec![Claim {
            role: Role::Kernel,
            path: &cfg.kernel,
            extents: &kernel,
        }];
        if let Some((path, extents)) = &initramfs {
            claims.push(Claim {
                role: Role::Initramfs,
                path,
                extents,
            });
        }
        for (path, writable, extents) in pmem.claims() {
            claims.push(Claim {
                role: Role::Pmem { writable },
                path,
                extents,
            });
        }
        for (out, role) in [(&report, Role::Report), (&serial, Role::SerialFile)] {
            if let Some(out) = out {
                claims.push(Claim {
                    role,
                    path: out.path(),
                    extents: out.extents(),
                });
            }
        }
        if let Some(sock) = api_socket {
            if let (Some(path), Some(extents)) = (sock.path(), sock.extents()) {
                claims.push(Claim {
                    role: Role::ApiSocket,
                    path,
                    extents,
                });
            }
        }
        identity::check_claims(&claims)?;
        let kept: Vec<(Role, PathBuf, Extents)> = claims
            .iter()
            .filter(|c| !matches!(c.role, Role::Pmem { .. }))
            .map(|c| (c.role, c.path.to_path_buf(), c.extents.clone()))
            .collect();
        stop_if_signalled()?;
        pmem.plan(cfg.memory)?;
        stop_if_signalled()?;
        let (mem, entry) =
            prepare_guest_memory(cfg, pmem.nvdimm_descs(), &pmem.legacy_e820_ranges())?;
        host::HostInfo::get().check_kvm()?;
        let kvm = vm::Vm::probe(cfg.cpus, cfg.pmem.iter().any(|p| p.readonly))?;
        stop_if_signalled()?;
        Ok((mem, entry, kvm, kept))
    })();
    match rest {
        Ok((mem, entry, kvm, claims)) => Ok(Checked {
            pmem,
            claims,
            report,
            serial,
            mem,
            entry,
            kvm,
        }),
        Err(e) => {
            pmem.abandon();
            Err(e)
        }
    }
}

/// Boots the configured guest and runs it until it stops; returns why it stopped.
pub fn run(cfg: &VmConfig, sandbox: &seccomp::Sandbox) -> Result<StopReason, VmmError> {
    let checked = check(cfg, None)?;
    let jail = Jail {
        sandbox,
        main: MainFilter::Install(seccomp::ThreadKind::Main),
    };
    run_checked(cfg, checked, Around { hooks: None, jail })
}

/// The seccomp filter of the thread that runs a guest's event loop.
#[derive(Debug, Clone, Copy)]
enum MainFilter {
    /// Installed (after the vCPU threads are started, before they enter the guest).
    Install(seccomp::ThreadKind),
    /// API mode: the thread is already under `ThreadKind::Vmm`'s, which allows the run.
    Installed,
}

/// What surrounds a run: the API's hooks (None without the API) and the sandbox.
struct Around<'a> {
    hooks: Option<RunHooks<'a>>,
    jail: Jail<'a>,
}

/// How a run is sandboxed: the monitor's settings and the main thread's filter.
#[derive(Debug, Clone, Copy)]
struct Jail<'a> {
    sandbox: &'a seccomp::Sandbox,
    main: MainFilter,
}

/// What a run tells the API: the state to keep current, and a call once the guest runs.
pub struct RunHooks<'a> {
    pub api: &'a api::ApiState,
    pub on_started: &'a mut dyn FnMut(),
}

/// Starts the monitor as `launch` says: a command-line VM (with or without the API), or an
/// empty monitor that waits for `vm.create`. Returns the exit status.
pub fn launch(launch: config::Launch) -> Result<u8, VmmError> {
    sigbus::install().map_err(io_err("installing the SIGBUS handler"))?;
    let socket = match &launch.api_socket {
        Some(option) => Some(api::socket::ApiSocket::prepare(option)?),
        None => None,
    };
    let sandbox = launch.sandbox;
    match (launch.vm, socket) {
        (Some(cfg), None) => run(&cfg, &sandbox).map(exit_status),
        (Some(cfg), Some(socket)) => {
            let checked = check(&cfg, Some(&socket))?;
            let bound = match socket.bind() {
                Ok(b) => b,
                Err(e) => {
                    checked.pmem.abandon();
                    return Err(e.into());
                }
            };
            let state = api::ApiState::new(false);
            // No command is served: the monitor exits when the command line's guest stops.
            let (commands, _) = std::sync::mpsc::channel();
            let commands_wake =
                Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?);
            let mut listener = Some(bound.listener.try_clone().map_err(io_err("API socket"))?);
            let mut spawn_failed = None;
            let mut on_started = || {
                if let Some(l) = listener.take() {
                    let controller = api::Controller {
                        state: state.clone(),
                        commands: commands.clone(),
                        commands_wake: commands_wake.clone(),
                        host_memory: config::host_memory_bytes(),
                    };
                    if let Err(e) = api::server::spawn(l, controller, sandbox) {
                        spawn_failed = Some(e);
                    }
                }
            };
            let result = run_checked(
                &cfg,
                checked,
                Around {
                    hooks: Some(RunHooks {
                        api: &state,
                        on_started: &mut on_started,
                    }),
                    jail: Jail {
                        sandbox: &sandbox,
                        main: MainFilter::Install(seccomp::ThreadKind::MainWithApi),
                    },
                },
            );
            if let Some(e) = spawn_failed {
                log::error!("the API thread could not start: {e}");
            }
            state.stopped(describe_stop(&result));
            state.drain();
            drop(bound);
            result.map(exit_status)
        }
        (None, Some(socket)) => serve_api(socket, &sandbox),
        (None, None) => unreachable!("clap requires --kernel without --api-socket"),
    }
}

/// One line on why a guest stopped, for the log and `vm.info`'s `last_stop`.
fn describe_stop(result: &Result<StopReason, VmmError>) -> String {
    match result {
        Ok(reason) => format!("{reason:?}"),
        Err(e) => format!("Error: {e}"),
    }
}

/// The monitor started without `--kernel`: serves the API until `vmm.shutdown` or a stop
/// signal. `vm.create` runs the check phase ([`check`], as for the command line) and holds
/// what it opened; `vm.boot` runs the guest on this thread; a guest reboot boots it again
/// (re-checked from its configuration); anything else that stops it leaves the VM `Shutdown`.
/// This thread runs under `ThreadKind::Vmm`'s filter from the moment the API thread (which
/// installs its own) is started.
fn serve_api(socket: api::socket::ApiSocket, sandbox: &seccomp::Sandbox) -> Result<u8, VmmError> {
    use api::{AfterStop, CommandKind, VmState};
    use std::os::fd::AsRawFd;
    use std::sync::mpsc::TryRecvError;
    let bound = socket.bind()?;
    // The check of later vm.create calls compares their paths with the socket's.
    let checked_socket = api::socket::ApiSocket::prepare_bound(&bound);
    let state = api::ApiState::new(true);
    let (commands, incoming) = std::sync::mpsc::channel::<api::Command>();
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?);
    let signals = events::stop_signalfd().map_err(io_err("creating a signalfd"))?;
    api::server::spawn(
        bound.listener.try_clone().map_err(io_err("API socket"))?,
        api::Controller {
            state: state.clone(),
            commands,
            commands_wake: wake.clone(),
            host_memory: config::host_memory_bytes(),
        },
        *sandbox,
    )
    .map_err(io_err("starting the API thread"))?;
    // Every later step of this thread, and the vCPU threads each boot starts, under the one
    // filter that covers API mode's lifecycle.
    sandbox.install(seccomp::ThreadKind::Vmm)?;
    info!(
        "API ready; waiting for vm.create (seccomp {})",
        sandbox.mode
    );
    let mut created: Option<(VmConfig, Checked)> = None;
    let signalled = |n: i32| exit::SIGNAL_BASE.saturating_add(n as u8);
    loop {
        if let Some(n) = events::take_pending_stop_signal() {
            if let Some((_, c)) = created.take() {
                c.pmem.abandon();
            }
            return Ok(signalled(n));
        }
        let cmd = match incoming.try_recv() {
            Ok(cmd) => cmd,
            Err(TryRecvError::Empty) => {
                // Sleep until a command or a stop signal: no wake-ups while idle.
                events::wait_readable(&[signals.as_raw_fd(), wake.as_raw_fd()])
                    .map_err(io_err("waiting for API commands"))?;
                let _ = wake.read();
                continue;
            }
            Err(TryRecvError::Disconnected) => return Err(VmmError::ApiThreadStopped),
        };
        match cmd.kind {
            CommandKind::ExitVmm => {
                if let Some((_, c)) = created.take() {
                    c.pmem.abandon();
                }
                return Ok(exit::POWEROFF);
            }
            CommandKind::Delete => {
                if let Some((_, c)) = created.take() {
                    c.pmem.abandon();
                }
                state.update(|s| {
                    s.state = VmState::NotCreated;
                    s.config = None;
                });
                let _ = cmd.reply.send(Ok(()));
            }
            CommandKind::Create(cfg) => match check(&cfg, Some(&checked_socket)) {
                Ok(c) => {
                    state.update(|s| {
                        s.state = VmState::Created;
                        s.config = Some((*cfg).clone());
                    });
                    created = Some((*cfg, c));
                    let _ = cmd.reply.send(Ok(()));
                }
                Err(VmmError::Signal(n)) => {
                    let _ = cmd
                        .reply
                        .send(Err(api::ApiError::new(500, "stopped by a signal")));
                    return Ok(signalled(n));
                }
                Err(e) => {
                    let _ = cmd.reply.send(Err(api::ApiError::from_vmm_for_api(&e)));
                }
            },
            CommandKind::Boot => {
                let mut reply = Some(cmd.reply);
                loop {
                    let (cfg, checked) = match created.take() {
                        Some(x) => x,
                        None => {
                            // Booting again (after a shutdown or a reboot): check again.
                            let Some(cfg) = state.lock().config.clone() else {
                                if let Some(r) = reply.take() {
                                    let _ =
                                        r.send(Err(api::ApiError::new(404, "no VM is created")));
                                }
                                break;
                            };
                            match check(&cfg, Some(&checked_socket)) {
                                Ok(c) => (cfg, c),
                                Err(e) => {
                                    log::error!("booting again: {e}");
                                    if let Some(r) = reply.take() {
                                        let _ = r.send(Err(api::ApiError::from_vmm_for_api(&e)));
                                    }
                                    state.update(|s| {
                                        s.state = VmState::Shutdown;
                                        s.last_stop = Some(format!("Error: {e}"));
                                    });
                                    break;
                                }
                            }
                        }
                    };
                    let mut on_started = || {
                        if let Some(r) = reply.take() {
                            let _ = r.send(Ok(()));
                        }
                    };
                    let result = run_checked(
                        &cfg,
                        checked,
                        Around {
                            hooks: Some(RunHooks {
                                api: &state,
                                on_started: &mut on_started,
                            }),
                            jail: Jail {
                                sandbox,
                                main: MainFilter::Installed,
                            },
                        },
                    );
                    if let Some(r) = reply.take() {
                        // It never started: nothing was left behind (see run_checked).
                        let e = match &result {
                            Err(e) => api::ApiError::from_vmm_for_api(e),
                            Ok(reason) => api::ApiError::new(
                                500,
                                format!("the guest stopped before it started: {reason:?}"),
                            ),
                        };
                        let _ = r.send(Err(e));
                        state.update(|s| {
                            s.state = VmState::Shutdown;
                            s.last_stop = Some(describe_stop(&result));
                        });
                        break;
                    }
                    let why = describe_stop(&result);
                    if let Err(e) = &result {
                        log::error!("guest stopped: {e}");
                    }
                    let after = state.stopped(why);
                    if after == AfterStop::ExitVmm {
                        state.drain();
                    }
                    match (after, &result) {
                        (AfterStop::ExitVmm, Ok(_)) => return Ok(exit::POWEROFF),
                        (AfterStop::ExitVmm, Err(e)) => return Ok(e.exit_status()),
                        (_, Ok(StopReason::Signal(n))) => return Ok(signalled(*n)),
                        (AfterStop::Nothing, Ok(StopReason::Reboot)) => {
                            info!("the guest rebooted; booting it again");
                            continue;
                        }
                        _ => break,
                    }
                }
            }
        }
    }
}

/// The run phase of a checked configuration: writes, builds the VM and runs it until it stops.
fn run_checked(cfg: &VmConfig, checked: Checked, around: Around) -> Result<StopReason, VmmError> {
    let Checked {
        pmem,
        claims,
        report,
        serial,
        mem,
        entry,
        kvm,
    } = checked;
    // From here on the run writes: new files, info blocks, outputs.
    let mut pmem = pmem.commit()?;
    // Outputs this run creates, removed again if the guest never starts.
    let mut created: Vec<std::path::PathBuf> = Vec::new();
    let started = (|| {
        stop_if_signalled()?;
        let halt = if cfg.halt_in_guest {
            vm::HaltExits::InGuest
        } else {
            vm::HaltExits::ToHost
        };
        let vm = vm::Vm::create(&kvm, &mem, cfg.cpus, entry, &pmem, halt)?;
        let serial: devices::serial::Output = match (&cfg.serial, serial) {
            (SerialMode::File(_), Some(out)) => {
                let new = out.is_new().then(|| out.path().to_path_buf());
                let file = out.commit()?;
                created.extend(new);
                Box::new(file)
            }
            (SerialMode::Off, _) => Box::new(io::sink()),
            _ => Box::new(io::stdout()),
        };
        if let Some(out) = report {
            let mut json = pmem.report_json();
            json["memory"] = cfg.memory.into();
            json["cpus"] = cfg.cpus.into();
            out.commit_with(format!("{json:#}\n").as_bytes())?;
        }
        Ok::<_, VmmError>((vm, serial))
    })();
    let (vm, serial) = match started {
        Ok(v) => v,
        Err(e) => {
            // The guest never ran: leave no file behind that this run created.
            pmem.abandon();
            for path in created {
                if let Err(e) = std::fs::remove_file(&path) {
                    log::warn!(
                        "{}: cannot remove the file this run created: {e}",
                        path.display()
                    );
                }
            }
            return Err(e);
        }
    };
    let result = run_with_pmem(cfg, &mut pmem, vm, mem, serial, &claims, around);
    // Every way out, guest poweroff, signal or error, leaves file-backed pmem on disk; a flush
    // that fails here turns any other outcome into a failure (the first error is kept).
    let flushed = pmem.flush();
    match (result, flushed) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
        (Ok(reason), Ok(())) => Ok(reason),
    }
}

fn run_with_pmem(
    cfg: &VmConfig,
    pmem: &mut pmem::PmemDevices,
    mut vm: vm::Vm,
    mem: GuestMemoryMmap,
    serial_out: devices::serial::Output,
    claims: &[(Role, PathBuf, Extents)],
    around: Around,
) -> Result<StopReason, VmmError> {
    let Around { hooks, jail } = around;
    let stop = Arc::new(StopSignal::new().map_err(io_err("creating an eventfd"))?);
    let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?;
    let input_ready = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?;
    vm.fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(|source| vm::VmError::Kvm {
            what: "register the COM1 irqfd",
            source,
        })?;
    // The power button's interrupt: a write to this eventfd is an edge on GED_GSI.
    let power_button = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?);
    vm.fd
        .register_irqfd(&power_button, GED_GSI)
        .map_err(|source| vm::VmError::Kvm {
            what: "register the power button's irqfd",
            source,
        })?;
    // NVDIMM hot-add: a write is an edge on NVDIMM_HOTPLUG_GSI (the guest re-reads _FIT).
    let hotplug_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?;
    vm.fd
        .register_irqfd(&hotplug_irq, NVDIMM_HOTPLUG_GSI)
        .map_err(|source| vm::VmError::Kvm {
            what: "register the NVDIMM hot-add irqfd",
            source,
        })?;
    // NVDIMM hot-remove: a write is an edge on NVDIMM_EJECT_GSI (the guest reads the eject
    // request register and notifies that DIMM's device).
    let eject_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?;
    vm.fd
        .register_irqfd(&eject_irq, NVDIMM_EJECT_GSI)
        .map_err(|source| vm::VmError::Kvm {
            what: "register the NVDIMM eject irqfd",
            source,
        })?;
    // NVDIMM health events: a write is an edge on NVDIMM_HEALTH_GSI (the guest reads which
    // DIMMs changed and notifies them).
    let health_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?;
    vm.fd
        .register_irqfd(&health_irq, NVDIMM_HEALTH_GSI)
        .map_err(|source| vm::VmError::Kvm {
            what: "register the NVDIMM health irqfd",
            source,
        })?;
    let health_events = Arc::new(devices::nvdimm_events::HealthEvents::new(health_irq));
    let (hot_add_requests, hot_add_queue) = std::sync::mpsc::channel::<api::HotAddRequest>();
    let (remove_requests, remove_queue) = std::sync::mpsc::channel::<api::RemoveRequest>();
    // Wakes the run loop for a hot-add or hot-remove request, and when the guest answers an
    // eject request.
    let hotplug_wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?);
    let eject = devices::nvdimm_eject::EjectState::new(Box::new({
        let wake = hotplug_wake.clone();
        move || {
            let _ = wake.write(1);
        }
    }));
    let serial = Arc::new(Mutex::new(SerialPort::new(
        irq,
        input_ready
            .try_clone()
            .map_err(io_err("cloning an eventfd"))?,
        serial_out,
    )));

    let mut bus = PioBus::new();
    bus.insert(COM1_PORT, 8, serial.clone())?;
    bus.insert(
        SLEEP_CONTROL_PORT,
        2,
        Arc::new(Mutex::new(SleepControl::new(
            acpi::S5_SLEEP_TYPE,
            stop.clone(),
        ))),
    )?;
    bus.insert(
        RESET_PORT,
        1,
        Arc::new(Mutex::new(ResetControl::new(stop.clone()))),
    )?;
    bus.insert(
        I8042_PORT,
        5,
        Arc::new(Mutex::new(I8042::new(stop.clone()))),
    )?;
    let pci = devices::pci::PciConfigIo::new();
    bus.insert(
        devices::pci::CONFIG_ADDRESS_PORT,
        1,
        Arc::new(Mutex::new(pci.address_port())),
    )?;
    bus.insert(
        devices::pci::CONFIG_DATA_PORT,
        devices::pci::CONFIG_DATA_LEN,
        Arc::new(Mutex::new(pci.data_port())),
    )?;
    // The NVDIMM _DSM mailbox (label areas): served on the vCPU thread that rings it.
    let dsm = Arc::new(
        devices::nvdimm_dsm::NvdimmDsm::new(pmem.label_stores()?)
            .with_health_events(health_events.clone()),
    );
    for (i, d) in pmem.nfit_devices().enumerate() {
        dsm.set_health(i, d.config.health);
    }
    bus.insert(
        geometry::nvdimm_events::PORT,
        geometry::nvdimm_events::LEN,
        Arc::new(Mutex::new(devices::nvdimm_events::HealthEventRegister(
            health_events,
        ))),
    )?;
    bus.insert(
        geometry::dsm_mailbox::DOORBELL_PORT,
        geometry::dsm_mailbox::DOORBELL_LEN,
        Arc::new(Mutex::new(devices::nvdimm_dsm::DsmDoorbell::new(
            Box::new(GuestMailbox(mem.clone())),
            dsm.clone(),
        ))),
    )?;
    // The NVDIMM eject registers (hot-remove): answered on the vCPU thread, acted on here.
    bus.insert(
        geometry::nvdimm_eject::PORT,
        geometry::nvdimm_eject::LEN,
        Arc::new(Mutex::new(devices::nvdimm_eject::EjectRegisters::new(
            eject.clone(),
        ))),
    )?;
    let (mmio, hints) = pmem.mmio_bus()?;
    let bus = Arc::new(vcpu::Devices { pio: bus, mmio });

    // Signals: stop signals only through the signalfd, in every thread spawned from here on.
    events::block_stop_signals().map_err(io_err("blocking signals"))?;
    vcpu::install_kick_handler().map_err(io_err("installing the vCPU kick handler"))?;
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(VmmError::EventLoop)?;
    manager.add_subscriber(Arc::new(Mutex::new(
        events::SignalWatcher::new(stop.clone()).map_err(io_err("creating a signalfd"))?,
    )));
    manager.add_subscriber(Arc::new(Mutex::new(events::Waker::new(
        hotplug_wake.clone(),
    ))));
    // Console input only makes sense when a person is typing at the console.
    let _raw_terminal = if cfg.serial == SerialMode::Stdio {
        let raw = terminal::RawTerminal::enter(libc::STDIN_FILENO)
            .map_err(io_err("setting the terminal to raw mode"))?;
        if raw.is_some() {
            manager.add_subscriber(Arc::new(Mutex::new(events::ConsoleInput::new(
                libc::STDIN_FILENO,
                serial.clone(),
                input_ready,
            ))));
        }
        raw
    } else {
        None
    };

    // Seccomp: compiled here, installed by each vCPU thread before it waits at `gate`; the API
    // thread (command line with --api-socket, started below) installs its own before it
    // accepts; this thread installs its own (or already runs under API mode's) before it opens
    // the gate. No guest instruction runs and no request is served before every filter is in.
    let sandbox = jail.sandbox;
    let vcpu_filter = Arc::new(seccomp::filter(seccomp::ThreadKind::Vcpu, sandbox.mode)?);
    let main_filter = match jail.main {
        MainFilter::Install(kind) => Some((kind, seccomp::filter(kind, sandbox.mode)?)),
        MainFilter::Installed => None,
    };
    let gate = Arc::new(vcpu::StartGate::default());
    let start = vcpu::Start {
        filter: vcpu_filter,
        gate: gate.clone(),
        selftest: sandbox.selftest == Some(seccomp::SelftestThread::Vcpu),
    };

    let error: vcpu::ErrorSlot = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    for (id, fd) in std::mem::take(&mut vm.vcpus).into_iter().enumerate() {
        match vcpu::spawn(
            id as u32,
            fd,
            bus.clone(),
            stop.clone(),
            error.clone(),
            start.clone(),
        ) {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.request(StopReason::Error);
                let _ = vcpu::stop_all(threads);
                return Err(VmmError::Io {
                    what: "starting a vCPU thread",
                    source: e,
                });
            }
        }
    }
    let api_state = hooks.as_ref().map(|h| h.api);
    if let Some(hooks) = hooks {
        hooks.api.started(
            cfg,
            api::RunningVm {
                stop: stop.clone(),
                power_button: power_button.clone(),
                pmem_report: pmem.report_json()["pmem"].clone(),
                hints: hints.clone(),
                devices: pmem.devices.iter().map(api_device).collect(),
                dsm: dsm.clone(),
                hotplug: api::HotPlug {
                    add: hot_add_requests.clone(),
                    remove: remove_requests.clone(),
                    wake: hotplug_wake.clone(),
                },
                stats: vm.stats.clone(),
            },
        );
        // Before this thread's filter: a thread started now does not inherit it (the command
        // line's API thread installs the API list, which this thread's does not include).
        (hooks.on_started)();
    }
    if let Some((kind, program)) = &main_filter {
        if let Err(e) = seccomp::apply(*kind, program.as_ref()) {
            stop.request(StopReason::Error);
            let _ = vcpu::stop_all(threads);
            return Err(e.into());
        }
    }
    gate.open();
    info!(
        "guest started with {} vCPUs and {} MiB (seccomp {})",
        cfg.cpus,
        cfg.memory >> 20,
        sandbox.mode
    );
    sandbox.selftest(seccomp::SelftestThread::Main);
    drop(hot_add_requests);
    drop(remove_requests);
    let mut hot = HotPlugContext {
        cfg,
        claims,
        mem: &mem,
        hints: &hints,
        dsm: &dsm,
        irq: &hotplug_irq,
        eject: &eject,
        eject_irq: &eject_irq,
        removal: None,
        api: api_state,
    };

    // With HLT exits, a backing failing under the guest shows only in KVM's fault counts.
    let mut fault_watch = fault_watch::FaultWatch::new(
        std::mem::take(&mut vm.vcpu_stats),
        std::time::Instant::now(),
    );
    let mut watched_fault = None;
    let reason = loop {
        if let Some(reason) = stop.reason() {
            break reason;
        }
        // At least once a second, sooner when a removal's time is up.
        if let Err(e) = manager.run_with_timeout(hot.wait_ms(1000)) {
            stop.request(StopReason::Error);
            *error.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(vcpu::VcpuFailure::EventLoop(e));
        }
        while let Ok(request) = hot_add_queue.try_recv() {
            let result = if stop.reason().is_some() {
                Err(api::ApiError::new(
                    409,
                    "vm.add-pmem: the guest is stopping; nothing was added",
                ))
            } else {
                hot.add(pmem, &mut vm, request.config)
            };
            let _ = request.reply.send(result);
        }
        while let Ok(request) = remove_queue.try_recv() {
            if stop.reason().is_some() {
                let _ = request.reply.send(Err(api::ApiError::new(
                    409,
                    "vm.remove-device: the guest is stopping; nothing was removed",
                )));
            } else {
                hot.request_removal(pmem, request);
            }
        }
        hot.poll_removal(pmem, &mut vm);
        if let Some(suspect) = fault_watch.poll(std::time::Instant::now()) {
            match pmem.diagnose_fault(None) {
                Some((d, cause)) => {
                    info!(
                        "vCPU {}: KVM retried {} page faults without mapping them",
                        suspect.vcpu, suspect.retries
                    );
                    watched_fault = Some(VmmError::BackingFault {
                        id: d.config.id.clone(),
                        path: d.config.path.clone(),
                        cause,
                    });
                    stop.request(StopReason::Error);
                }
                None => fault_watch.cleared(suspect, std::time::Instant::now()),
            }
        }
    };
    // Requests still queued are answered "not added" / "not removed" as their senders see the
    // queues go; a removal the guest has not answered yet is answered the same way.
    drop(hot_add_queue);
    drop(remove_queue);
    drop(hot);
    let lapics = vcpu::stop_all(threads);
    info!("guest stopped: {reason:?}");
    if let Some(stall) = irq_report::console_stall(&vm.fd, &serial, COM1_IRQ, &lapics) {
        warn!("{stall}");
    }
    if let Some(stats) = &vm.stats {
        match stats.read() {
            Ok(pages) => info!("stage-2 mappings (KVM, RAM and pmem): {pages}"),
            Err(e) => warn!("{e}"),
        }
    }
    for d in &pmem.devices {
        let s = hints.stats(d.slot);
        info!(
            "{}: {} guest flush requests, {} host flushes ({} failed, at most {} requests per flush)",
            d.config.id,
            s.requests,
            s.host_flushes,
            s.failed_host_flushes,
            s.largest_batch
        );
    }
    let failure = error.lock().unwrap_or_else(|e| e.into_inner()).take();
    // A failed flush wins over any stop reason recorded first (a poweroff racing with it): the
    // guest's data is not durable, whatever else happened.
    if reason == StopReason::Error || matches!(failure, Some(vcpu::VcpuFailure::Flush(_))) {
        return Err(match failure {
            // The failed hint is the device's slot. A device removed since cannot have failed:
            // its hint lost its target before the removal, and a failure stops the guest.
            Some(vcpu::VcpuFailure::Flush(f)) => {
                match pmem.devices.iter().find(|d| d.slot == f.index) {
                    Some(d) => VmmError::GuestFlushFailed {
                        id: d.config.id.clone(),
                        path: d.config.path.clone(),
                        source: Box::new(f),
                    },
                    None => VmmError::Vcpu(vcpu::VcpuFailure::Flush(f)),
                }
            }
            Some(vcpu::VcpuFailure::MemoryFault { id, gpa, source }) => {
                match pmem.diagnose_fault(gpa) {
                    Some((d, cause)) => VmmError::BackingFault {
                        id: d.config.id.clone(),
                        path: d.config.path.clone(),
                        cause,
                    },
                    None => VmmError::Vcpu(vcpu::VcpuFailure::MemoryFault { id, gpa, source }),
                }
            }
            Some(other) => VmmError::Vcpu(other),
            None => watched_fault.unwrap_or(VmmError::StoppedAfterError),
        });
    }
    drop(vm.fd);
    drop(mem);
    Ok(reason)
}

/// What NVDIMM hot-add and hot-remove (`hot_remove`) need from the run loop.
struct HotPlugContext<'a> {
    cfg: &'a VmConfig,
    claims: &'a [(Role, PathBuf, Extents)],
    mem: &'a GuestMemoryMmap,
    hints: &'a devices::flush_hint::FlushHints,
    dsm: &'a devices::nvdimm_dsm::NvdimmDsm,
    /// The hot-add GSI's irqfd: the guest re-reads `_FIT`.
    irq: &'a EventFd,
    /// The eject request register and the guest's answer.
    eject: &'a devices::nvdimm_eject::EjectState,
    /// The eject GSI's irqfd: the guest reads the eject request.
    eject_irq: &'a EventFd,
    /// The removal waiting for the guest's answer, if any.
    removal: Option<hot_remove::PendingRemoval>,
    api: Option<&'a api::ApiState>,
}

/// A device as the API's `vm.counters`, `vm.remove-device` and `vm.set-pmem-health` see it.
fn api_device(d: &pmem::PmemDevice) -> api::ApiDevice {
    api::ApiDevice {
        id: d.config.id.clone(),
        slot: d.slot,
        nfit_slot: d.nfit_slot,
        bytes_formatted: if d.wrote_info_block {
            devices::pmem::infoblock::INFO_BLOCK_SIZE as u64
        } else {
            0
        },
    }
}

/// A path's identity as it is now: what it resolves to, or the planned identity of a new file.
fn current_extents(path: &std::path::Path) -> io::Result<Extents> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Extents::of(&m, std::path::Path::new(identity::SYSFS_ROOT))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Extents::planned(identity::Identity::planned(path)?))
        }
        Err(e) => Err(e),
    }
}

impl HotPlugContext<'_> {
    /// `vm.add-pmem` on the running guest: the checks of a command-line device (the `--pmem`
    /// validation already ran in the API thread; here: identity against every backing, input
    /// and output, the layout above the windows in use, the format plan), all before anything
    /// is written; then the file is created and the info block written (`PmemPlan::commit`),
    /// the KVM slot and the flush hint added, the FIT rewritten and the guest notified. Any
    /// refusal before the commit leaves nothing behind; a failed commit removes what it created.
    fn add(
        &mut self,
        pmem: &mut pmem::PmemDevices,
        vm: &mut vm::Vm,
        config: pmem_option::PmemConfig,
    ) -> Result<serde_json::Value, api::ApiError> {
        let bad = |status, message: String| Err(api::ApiError::new(status, message));
        let Some((slot, nfit_slot)) = pmem.free_slots() else {
            return bad(
                409,
                format!(
                    "vm.add-pmem: the guest has {} devices, the most it can have",
                    pmem.devices.len()
                ),
            );
        };
        if let Some(d) = pmem.devices.iter().find(|d| d.config.id == config.id) {
            return bad(
                409,
                format!(
                    "pmem id={}: already used by file={}",
                    config.id,
                    d.config.path.display()
                ),
            );
        }
        if config.numa.is_some() {
            return bad(
                400,
                "pmem numa: a hot-added device cannot have a NUMA node (the SRAT is fixed at boot)"
                    .into(),
            );
        }
        if config.firmware == pmem_option::Firmware::E820 {
            return bad(
                400,
                "pmem firmware=e820: a legacy E820 range is fixed at boot; hot-add needs firmware=nfit"
                    .into(),
            );
        }
        let extents = current_extents(&config.path).map_err(|e| {
            api::ApiError::new(400, format!("pmem file={}: {e}", config.path.display()))
        })?;
        if let Some(d) = pmem.devices.iter().find(|d| d.extents.aliases(&extents)) {
            return bad(
                409,
                format!(
                    "pmem file={}: it is the backing of {} (file={}), compared by identity; give each backing once",
                    config.path.display(),
                    d.config.id,
                    d.config.path.display()
                ),
            );
        }
        let mut all: Vec<Claim> = self
            .claims
            .iter()
            .map(|(role, path, extents)| Claim {
                role: *role,
                path,
                extents,
            })
            .collect();
        all.push(Claim {
            role: Role::Pmem {
                writable: !config.readonly,
            },
            path: &config.path,
            extents: &extents,
        });
        identity::check_claims(&all)
            .map_err(|e| api::ApiError::from_vmm_for_api(&VmmError::Alias(e)))?;
        let start = pmem
            .devices
            .iter()
            .map(|d| d.window.base + d.window.size)
            .max()
            .unwrap_or(0);
        let memory = self.cfg.memory;
        let mut plan = pmem::PmemPlan::open_from(std::slice::from_ref(&config), memory, start)
            .map_err(|e| api::ApiError::from_vmm_for_api(&VmmError::Pmem(e)))?;
        if let Err(e) = plan.plan(memory) {
            plan.abandon();
            return Err(api::ApiError::from_vmm_for_api(&VmmError::Pmem(e)));
        }
        // From here on the add writes.
        let mut committed = plan
            .commit()
            .map_err(|e| api::ApiError::from_vmm_for_api(&VmmError::Pmem(e)))?;
        let Some(mut dev) = committed.devices.pop() else {
            return bad(500, "vm.add-pmem: the device vanished".into());
        };
        // Hot-added devices are NVDIMMs, in the lowest free slots.
        dev.slot = slot;
        dev.nfit_slot = Some(nfit_slot);
        let label_store = match dev.label_store() {
            Ok(store) => store,
            Err(e) => {
                pmem::PmemDevices { devices: vec![dev] }.abandon();
                return bad(500, format!("vm.add-pmem: {e}"));
            }
        };
        if let Err(e) = vm.add_pmem_slot(&dev) {
            pmem::PmemDevices { devices: vec![dev] }.abandon();
            return bad(500, format!("vm.add-pmem: {e}"));
        }
        let target = (!dev.config.readonly)
            .then(|| dev.mapping.clone() as Arc<dyn devices::flush_hint::FlushTarget>);
        self.hints.set_target(slot, target);
        self.dsm.set_dimm(nfit_slot, label_store);
        self.dsm.set_health(nfit_slot, dev.config.health);
        let id = dev.config.id.clone();
        let device = api_device(&dev);
        pmem.devices.push(dev);
        if let Err(e) = write_fit(self.mem, &pmem.nvdimm_descs()) {
            return bad(500, format!("vm.add-pmem: writing the FIT: {e}"));
        }
        if let Some(api) = self.api {
            let report = pmem.report_json()["pmem"].clone();
            api.update(|s| {
                if let Some(c) = &mut s.config {
                    c.pmem.push(config.clone());
                }
                if let Some(r) = &mut s.running {
                    r.pmem_report = report;
                    r.devices.push(device);
                }
            });
        }
        info!("{id}: hot-added; notifying the guest");
        self.irq.write(1).map_err(|e| {
            api::ApiError::new(500, format!("vm.add-pmem: notifying the guest: {e}"))
        })?;
        // NVDIMMs are not PCI devices: the bdf is a placeholder in cloud-hypervisor's shape.
        Ok(serde_json::json!({ "id": id, "bdf": "0000:00:00.0" }))
    }
}

/// The monitor's exit status for a stop reason (see `vmm --help`).
pub fn exit_status(reason: StopReason) -> u8 {
    match reason {
        StopReason::PowerOff => exit::POWEROFF,
        StopReason::Reboot => exit::REBOOT,
        StopReason::TripleFault => exit::TRIPLE_FAULT,
        StopReason::Signal(n) => exit::SIGNAL_BASE.saturating_add(n as u8),
        StopReason::Shutdown => exit::POWEROFF,
        StopReason::Error => exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::pmem::backing::BackingError;
    use devices::pmem::flush_hint::FlushFailed;

    fn eio() -> io::Error {
        io::Error::from_raw_os_error(libc::EIO)
    }

    #[test]
    fn one_rule_from_errors_to_exit_statuses() {
        let flush = VmmError::GuestFlushFailed {
            id: "pmem0".into(),
            path: "/dev/pmem0".into(),
            source: Box::new(FlushFailed {
                index: 0,
                source: std::sync::Arc::new(BackingError::Io {
                    path: "/dev/pmem0".into(),
                    op: "msync",
                    source: eio(),
                }),
            }),
        };
        assert_eq!(flush.exit_status(), exit::FLUSH_FAILED);
        let text = flush.to_string();
        assert!(
            text.starts_with("pmem0 (/dev/pmem0): the host could not make a guest flush durable"),
            "{text}"
        );
        assert!(
            text.contains("msync") && text.contains("Input/output error"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        let at_exit = VmmError::from(pmem::FlushError {
            id: "pmem1".into(),
            source: BackingError::Io {
                path: "/x".into(),
                op: "msync",
                source: eio(),
            },
        });
        assert_eq!(at_exit.exit_status(), exit::FLUSH_FAILED);
        let fault = VmmError::BackingFault {
            id: "pmem2".into(),
            path: "/dev/dax0.0".into(),
            cause: devices::pmem::fault::BackingFault::DaxRemoved,
        };
        assert_eq!(fault.exit_status(), exit::BACKING_FAULT);
        let text = fault.to_string();
        assert!(
            text.starts_with("pmem2 (/dev/dax0.0): the backing failed under the guest")
                && text.contains("device-dax was removed")
                && !text.contains('\n'),
            "{text}"
        );
        // Writing into guest memory is the monitor's failure, not the user's.
        let internal = VmmError::Boot(boot::BootError::GuestMemory("at 0x7000: x".into()));
        assert_eq!(internal.exit_status(), exit::FAILURE);
        let kernel = VmmError::Boot(boot::BootError::NotRegular {
            option: boot::InputOption::Kernel,
            path: "/k".into(),
            what: "a FIFO",
        });
        assert_eq!(kernel.exit_status(), exit::USAGE);
        let cpus = VmmError::Vm(vm::VmError::TooManyCpus {
            wanted: 254,
            max: 16,
        });
        assert_eq!(cpus.exit_status(), exit::USAGE);
        assert_eq!(VmmError::Signal(libc::SIGTERM).exit_status(), 143);
        assert_eq!(
            VmmError::HostUnsuitable(host::HostUnsuitable::PvmWithoutVirtualization).exit_status(),
            exit::FAILURE
        );
        assert_eq!(exit_status(StopReason::Signal(libc::SIGINT)), 130);
        assert_eq!(exit_status(StopReason::Reboot), exit::REBOOT);
    }
}
