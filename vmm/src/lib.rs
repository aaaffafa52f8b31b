//! The `vmm` monitor as a library: the binary in `main.rs` parses the command line and calls
//! [`run`]; benchmarks and tests can reuse the pieces.
//!
//! A run goes one way (see docs/architecture.md): configuration → guest memory with the kernel,
//! boot structures and ACPI tables → KVM VM → vCPU threads and the event loop → a stop reason.

pub mod boot;
pub mod config;
pub mod cpu;
pub mod events;
pub mod host;
pub mod layout;
pub mod pmem;
pub mod pmem_option;
pub mod seccomp;
pub mod terminal;
pub mod vcpu;
pub mod vm;

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use devices::bus::PioBus;
use devices::i8042::I8042;
use devices::lifecycle::{StopReason, StopSignal};
use devices::power::{ResetControl, SleepControl};
use devices::serial::{Output, SerialPort};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use log::info;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{SerialMode, VmConfig};

/// I/O ports of the platform devices; the ACPI tables describe the same values.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const SLEEP_CONTROL_PORT: u16 = 0x3c0;
pub const SLEEP_STATUS_PORT: u16 = 0x3c1;
pub const RESET_PORT: u16 = 0xcf9;
pub const RESET_VALUE: u8 = 0x06;
pub const I8042_PORT: u16 = 0x60;

#[derive(Debug, Error)]
pub enum VmmError {
    /// The user's input cannot work; reported with exit status 2.
    #[error(transparent)]
    Usage(#[from] boot::BootError),
    #[error(transparent)]
    Pmem(#[from] pmem::PmemError),
    #[error("--memory: cannot map {size} bytes of guest RAM: {detail}")]
    GuestMemory { size: u64, detail: String },
    #[error("building ACPI tables: {0}")]
    Acpi(String),
    #[error("{0}")]
    HostUnsuitable(String),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("{0}")]
    Guest(String),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("--report {path:?}: {source}")]
    Report {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

impl VmmError {
    pub fn is_usage(&self) -> bool {
        match self {
            VmmError::Pmem(e) => e.is_usage(),
            VmmError::Usage(_)
            | VmmError::GuestMemory { .. }
            | VmmError::Report { .. }
            | VmmError::Vm(vm::VmError::TooManyCpus { .. }) => true,
            _ => false,
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// The platform description the ACPI tables are built from.
fn platform(cfg: &VmConfig, pmem: &pmem::PmemDevices) -> acpi::PlatformDesc {
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
        },
        ram: layout::ram_regions(cfg.memory),
        nvdimms: pmem.nvdimm_descs(),
    }
}

/// Guest memory with everything the boot vCPU needs already in place. No KVM object exists yet,
/// so every error here is the user's input.
pub fn prepare_guest_memory(
    cfg: &VmConfig,
    pmem: &pmem::PmemDevices,
) -> Result<(GuestMemoryMmap, boot::Entry), VmmError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(cfg.memory)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::GuestMemory {
        size: cfg.memory,
        detail: e.to_string(),
    })?;
    let tables = acpi::build_tables(
        &platform(cfg, pmem),
        layout::ACPI_ADDR,
        layout::ACPI_MAX_SIZE,
    )
    .map_err(|e| VmmError::Acpi(e.to_string()))?;
    boot::write_bytes(&mem, tables.base, &tables.bytes)?;
    cpu::write_boot_tables(&mem)?;
    let entry = boot::load(
        &mem,
        cfg.memory,
        &cfg.kernel,
        cfg.initramfs.as_deref(),
        &cfg.cmdline,
        tables.rsdp_addr,
    )?;
    Ok((mem, entry))
}

fn serial_output(mode: &SerialMode) -> Result<Output, VmmError> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(io::stdout()),
        SerialMode::Off => Box::new(io::sink()),
        SerialMode::File(path) => Box::new(File::create(path).map_err(io_err("--serial file"))?),
    })
}

/// Boots the configured guest and runs it until it stops; returns why it stopped.
pub fn run(cfg: &VmConfig) -> Result<StopReason, VmmError> {
    let mut pmem = pmem::PmemDevices::open(&cfg.pmem, cfg.memory)?;
    let setup = prepare(cfg, &mut pmem);
    let (mem, entry) = match setup {
        Ok(ready) => ready,
        Err(e) => {
            // The guest never ran: leave no file behind that this run created.
            pmem.abandon();
            return Err(e);
        }
    };
    let result = run_with_pmem(cfg, &pmem, mem, entry);
    // Every way out, guest poweroff, signal or error, leaves file-backed pmem on disk.
    pmem.flush();
    result
}

/// Everything between reading the configuration and creating the VM. User errors (kernel,
/// initramfs, layout) come first; the host check comes before anything is written to a backing.
fn prepare(
    cfg: &VmConfig,
    pmem: &mut pmem::PmemDevices,
) -> Result<(GuestMemoryMmap, boot::Entry), VmmError> {
    let (mem, entry) = prepare_guest_memory(cfg, pmem)?;
    if let Some(reason) = host::check_host() {
        return Err(VmmError::HostUnsuitable(reason));
    }
    pmem.format(cfg.memory)?;
    if let Some(path) = &cfg.report {
        let mut json = pmem.report_json();
        json["memory"] = cfg.memory.into();
        json["cpus"] = cfg.cpus.into();
        std::fs::write(path, format!("{json:#}\n")).map_err(|source| VmmError::Report {
            path: path.clone(),
            source,
        })?;
    }
    Ok((mem, entry))
}

fn run_with_pmem(
    cfg: &VmConfig,
    pmem: &pmem::PmemDevices,
    mem: GuestMemoryMmap,
    entry: boot::Entry,
) -> Result<StopReason, VmmError> {
    let vm = vm::Vm::create(&mem, cfg.cpus, entry, pmem)?;

    let stop = Arc::new(StopSignal::new().map_err(io_err("creating an eventfd"))?);
    let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?;
    let input_ready = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?;
    vm.fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(|source| vm::VmError::Kvm {
            what: "register the COM1 irqfd",
            source,
        })?;
    let serial = Arc::new(Mutex::new(SerialPort::new(
        irq,
        input_ready
            .try_clone()
            .map_err(io_err("cloning an eventfd"))?,
        serial_output(&cfg.serial)?,
    )));

    let mut bus = PioBus::new();
    let bus_err = |e: devices::bus::BusError| VmmError::Guest(format!("device layout: {e}"));
    bus.insert(COM1_PORT, 8, serial.clone()).map_err(bus_err)?;
    bus.insert(
        SLEEP_CONTROL_PORT,
        2,
        Arc::new(Mutex::new(SleepControl::new(
            acpi::S5_SLEEP_TYPE,
            stop.clone(),
        ))),
    )
    .map_err(bus_err)?;
    bus.insert(
        RESET_PORT,
        1,
        Arc::new(Mutex::new(ResetControl::new(stop.clone()))),
    )
    .map_err(bus_err)?;
    bus.insert(
        I8042_PORT,
        5,
        Arc::new(Mutex::new(I8042::new(stop.clone()))),
    )
    .map_err(bus_err)?;
    let pci = devices::pci::PciConfigIo::new();
    bus.insert(
        devices::pci::CONFIG_ADDRESS_PORT,
        1,
        Arc::new(Mutex::new(pci.address_port())),
    )
    .map_err(bus_err)?;
    bus.insert(
        devices::pci::CONFIG_DATA_PORT,
        devices::pci::CONFIG_DATA_LEN,
        Arc::new(Mutex::new(pci.data_port())),
    )
    .map_err(bus_err)?;
    let bus = Arc::new(vcpu::Devices {
        pio: bus,
        mmio: pmem.mmio_bus().map_err(bus_err)?,
    });

    // Signals: stop signals only through the signalfd, in every thread spawned from here on.
    events::block_stop_signals().map_err(io_err("blocking signals"))?;
    vcpu::install_kick_handler().map_err(io_err("installing the vCPU kick handler"))?;
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(|e| VmmError::Guest(format!("event loop: {e:?}")))?;
    manager.add_subscriber(Arc::new(Mutex::new(
        events::SignalWatcher::new(stop.clone()).map_err(io_err("creating a signalfd"))?,
    )));
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

    // Seccomp: compiled here, installed by each vCPU thread before it waits at `gate`, and by
    // this thread below before it opens the gate; no guest instruction runs before both.
    let main_filter = seccomp::filter(seccomp::ThreadKind::Main, cfg.seccomp)?;
    let vcpu_filter = Arc::new(seccomp::filter(seccomp::ThreadKind::Vcpu, cfg.seccomp)?);
    let gate = Arc::new(vcpu::StartGate::default());
    let start = vcpu::Start {
        filter: vcpu_filter,
        gate: gate.clone(),
        selftest: cfg.seccomp_selftest == Some(seccomp::SelftestThread::Vcpu),
    };

    let error: vcpu::ErrorSlot = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    for (id, fd) in vm.vcpus.into_iter().enumerate() {
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
                vcpu::stop_all(threads);
                return Err(VmmError::Io {
                    what: "starting a vCPU thread",
                    source: e,
                });
            }
        }
    }
    if let Err(e) = seccomp::apply(seccomp::ThreadKind::Main, main_filter.as_ref()) {
        stop.request(StopReason::Error);
        vcpu::stop_all(threads);
        return Err(e.into());
    }
    gate.open();
    info!(
        "guest started with {} vCPUs and {} MiB (seccomp {})",
        cfg.cpus,
        cfg.memory >> 20,
        cfg.seccomp
    );
    if cfg.seccomp_selftest == Some(seccomp::SelftestThread::Main) {
        seccomp::selftest_violation();
    }

    let reason = loop {
        if let Some(reason) = stop.reason() {
            break reason;
        }
        if let Err(e) = manager.run_with_timeout(1000) {
            stop.request(StopReason::Error);
            *error.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("event loop failed: {e:?}"));
        }
    };
    vcpu::stop_all(threads);
    info!("guest stopped: {reason:?}");
    if reason == StopReason::Error {
        let message = error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "the guest stopped after an error".into());
        return Err(VmmError::Guest(message));
    }
    drop(vm.fd);
    drop(mem);
    Ok(reason)
}

/// The monitor's exit status for a stop reason (see `vmm --help`).
pub fn exit_status(reason: StopReason) -> i32 {
    match reason {
        StopReason::PowerOff => 0,
        StopReason::Reboot => 3,
        StopReason::TripleFault => 4,
        StopReason::Signal(n) => 128 + n,
        StopReason::Error => 1,
    }
}
