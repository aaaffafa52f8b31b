//! A vCPU thread: runs KVM_RUN and hands port I/O and MMIO to the buses until the VM is told to
//! stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::bus::DeviceFault;
use devices::bus::{MmioBus, PioBus};
use devices::flush_hint::FlushFailed;
use devices::lifecycle::{StopReason, StopSignal};
use kvm_bindings::{kvm_lapic_state, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, warn};
use seccompiler::BpfProgram;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::seccomp::{self, ThreadKind};

/// The signal used to pull a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal; KVM_RUN returns EINTR when it arrives.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

impl From<DeviceFault> for VcpuFailure {
    /// A flush hint's fault keeps its type (the monitor names the DIMM and exits with its own
    /// status); any other device's fault stays a device fault.
    fn from(fault: DeviceFault) -> Self {
        match fault.0.downcast::<FlushFailed>() {
            Ok(flush) => VcpuFailure::Flush(*flush),
            Err(other) => VcpuFailure::Device(DeviceFault(other)),
        }
    }
}

/// Why a vCPU stopped the guest.
#[derive(Debug, thiserror::Error)]
pub enum VcpuFailure {
    /// A guest flush could not be made durable on the host; the guest's write to the flush
    /// hint was never completed.
    #[error(transparent)]
    Flush(#[from] FlushFailed),
    /// Another device could not complete a guest write.
    #[error("device fault: {0}")]
    Device(DeviceFault),
    /// The vCPU thread could not install its seccomp filter.
    #[error("vCPU {id}: {source}")]
    Seccomp {
        id: u32,
        source: seccomp::SeccompError,
    },
    /// KVM could not map guest memory: the host's page fault on the memory behind a guest
    /// address failed (`KVM_RUN` returned `EFAULT` or `EHWPOISON`). `gpa` is the guest address
    /// when KVM said (`KVM_EXIT_MEMORY_FAULT`); Linux 6.12 does not for file or device memory.
    /// The monitor asks the backings which one failed and why (`PmemDevices::diagnose_fault`).
    #[error(
        "vCPU {id}: KVM could not map guest memory{} ({source}); no backing reported a fault",
        .gpa.map(|a| format!(" at {a:#x}")).unwrap_or_default()
    )]
    MemoryFault {
        id: u32,
        gpa: Option<u64>,
        source: kvm_ioctls::Error,
    },
    /// `KVM_RUN` itself failed.
    #[error("vCPU {id}: KVM_RUN failed: {source}")]
    Run { id: u32, source: kvm_ioctls::Error },
    /// A HLT reached the monitor although the local APIC is in the kernel: nothing will wake
    /// this vCPU.
    #[error("vCPU {id} halted with no interrupt source")]
    HaltedForever { id: u32 },
    /// KVM could not emulate the guest's instructions.
    #[error(
        "KVM could not execute vCPU {id}'s instructions (internal error, suberror {suberror}, \
         RIP {rip:#x}, after {exits} exits); if this host has no hardware virtualization, run \
         the guest in the nested testbed (see the README)"
    )]
    Internal {
        id: u32,
        suberror: u32,
        rip: u64,
        exits: u64,
    },
    /// VM entry failed.
    #[error("KVM failed to enter vCPU {id} (hardware reason {reason:#x}, cpu {cpu})")]
    FailEntry { id: u32, reason: u64, cpu: u32 },
    /// The monitor's event loop failed while the guest ran.
    #[error("event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
}

/// The first error a vCPU hit, for the monitor's exit message.
pub type ErrorSlot = Arc<Mutex<Option<VcpuFailure>>>;

pub struct VcpuThread {
    pub id: u32,
    /// Yields the vCPU's local APIC as the guest left it (for [`crate::irq_report`]), when the
    /// vCPU ran and KVM gave it.
    pub handle: JoinHandle<Option<kvm_lapic_state>>,
    pub done: Arc<AtomicBool>,
}

/// What a vCPU thread dispatches exits to.
pub struct Devices {
    pub pio: PioBus,
    pub mmio: MmioBus,
}

/// Held shut by the main thread until it has installed its own seccomp filter; vCPU threads
/// wait here (after installing theirs) before their first `KVM_RUN`.
#[derive(Default)]
pub struct StartGate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl StartGate {
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    /// Waits until the gate opens (true) or a stop is requested (false).
    fn wait(&self, stop: &StopSignal) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            if stop.reason().is_some() {
                return false;
            }
            open = self
                .opened
                .wait_timeout(open, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// How a vCPU thread starts: its seccomp filter, the gate, and whether to run the
/// `--seccomp-selftest vcpu` hook.
#[derive(Clone)]
pub struct Start {
    pub filter: Arc<Option<BpfProgram>>,
    pub gate: Arc<StartGate>,
    pub selftest: bool,
}

pub fn spawn(
    id: u32,
    mut vcpu: VcpuFd,
    bus: Arc<Devices>,
    stop: Arc<StopSignal>,
    error: ErrorSlot,
    start: Start,
) -> std::io::Result<VcpuThread> {
    let done = Arc::new(AtomicBool::new(false));
    let done_in_thread = done.clone();
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            let mut lapic = None;
            match seccomp::apply(ThreadKind::Vcpu, start.filter.as_ref().as_ref()) {
                Ok(()) => {
                    if start.gate.wait(&stop) {
                        if start.selftest {
                            seccomp::selftest_violation();
                        }
                        run(id, &mut vcpu, &bus, &stop, &error);
                        lapic = vcpu.get_lapic().ok();
                    }
                }
                Err(source) => fail(&stop, &error, VcpuFailure::Seccomp { id, source }),
            }
            done_in_thread.store(true, Ordering::SeqCst);
            lapic
        })?;
    Ok(VcpuThread { id, handle, done })
}

fn fail(stop: &StopSignal, error: &ErrorSlot, failure: VcpuFailure) {
    fail_with(stop, error, failure);
}

/// Records the first failure and stops the guest; the calling vCPU leaves its loop without
/// entering the guest again.
fn fail_with(stop: &StopSignal, error: &ErrorSlot, failure: VcpuFailure) {
    let mut slot = error.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(failure);
    }
    drop(slot);
    stop.request(StopReason::Error);
}

fn run(id: u32, vcpu: &mut VcpuFd, bus: &Devices, stop: &StopSignal, error: &ErrorSlot) {
    let mut exits: u64 = 0;
    let mut unknown_mmio_logged = false;
    while stop.reason().is_none() {
        match vcpu.run() {
            Ok(exit) => {
                exits += 1;
                match exit {
                    VcpuExit::IoIn(port, data) => {
                        bus.pio.read(port, data);
                    }
                    VcpuExit::IoOut(port, data) => {
                        bus.pio.write(port, data);
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        if !bus.mmio.read(addr, data) && !unknown_mmio_logged {
                            debug!("vCPU {id}: read of unmapped MMIO {addr:#x}");
                            unknown_mmio_logged = true;
                        }
                    }
                    VcpuExit::MmioWrite(addr, data) => match bus.mmio.write(addr, data) {
                        Ok(true) => {}
                        Ok(false) => {
                            if !unknown_mmio_logged {
                                debug!("vCPU {id}: write to unmapped MMIO {addr:#x}");
                                unknown_mmio_logged = true;
                            }
                        }
                        // The vCPU never re-enters the guest, so the guest's write (a flush
                        // and the fsync waiting on it) never completes.
                        Err(fault) => fail_with(stop, error, VcpuFailure::from(fault)),
                    },
                    VcpuExit::Shutdown => {
                        // A guest that meant to reset uses the reset register or the i8042; a
                        // triple fault is a crash, so say where the vCPU was.
                        warn!("vCPU {id}: triple fault: {}", describe_state(vcpu));
                        stop.request(StopReason::TripleFault);
                    }
                    VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => {
                        stop.request(StopReason::PowerOff);
                    }
                    VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => {
                        stop.request(StopReason::Reboot);
                    }
                    VcpuExit::Hlt => {
                        // The in-kernel local APIC handles HLT; seeing it means nothing else
                        // will wake this vCPU.
                        fail(stop, error, VcpuFailure::HaltedForever { id });
                    }
                    VcpuExit::InternalError => {
                        let suberror = internal_suberror(vcpu);
                        let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                        fail(
                            stop,
                            error,
                            VcpuFailure::Internal {
                                id,
                                suberror,
                                rip,
                                exits,
                            },
                        );
                    }
                    VcpuExit::FailEntry(reason, cpu) => {
                        fail(stop, error, VcpuFailure::FailEntry { id, reason, cpu })
                    }
                    VcpuExit::MemoryFault { gpa, .. } => fail(
                        stop,
                        error,
                        VcpuFailure::MemoryFault {
                            id,
                            gpa: Some(gpa),
                            source: kvm_ioctls::Error::new(libc::EFAULT),
                        },
                    ),
                    other => {
                        warn!("vCPU {id}: unhandled exit {other:?}");
                    }
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(source) if source.errno() == libc::EFAULT || source.errno() == libc::EHWPOISON => {
                fail(
                    stop,
                    error,
                    VcpuFailure::MemoryFault {
                        id,
                        gpa: None,
                        source,
                    },
                )
            }
            Err(source) => fail(stop, error, VcpuFailure::Run { id, source }),
        }
    }
}

fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which KVM fills the `internal`
    // member of the exit union; reading a u32 from it cannot be out of bounds.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

/// Pulls every thread out of KVM_RUN and joins it. A signal can land just before a thread
/// enters KVM_RUN and be lost, so the kick repeats until the thread has left its loop.
/// Returns the local APIC of each vCPU that ran, by vCPU number.
pub fn stop_all(threads: Vec<VcpuThread>) -> Vec<(u32, kvm_lapic_state)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lapics = Vec::new();
    for t in threads {
        while !t.done.load(Ordering::SeqCst) && Instant::now() < deadline {
            if t.handle.kill(kick_signal()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if t.done.load(Ordering::SeqCst) {
            if let Ok(Some(lapic)) = t.handle.join() {
                lapics.push((t.id, lapic));
            }
        } else {
            warn!("a vCPU thread did not stop within 5 s; leaving it behind");
        }
    }
    lapics
}

/// The vCPU's registers in one line, for a crash report: instruction and stack pointers, flags,
/// control registers, EFER and the descriptor tables.
fn describe_state(vcpu: &VcpuFd) -> String {
    let regs = match vcpu.get_regs() {
        Ok(r) => format!(
            "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x}",
            r.rip, r.rsp, r.rflags, r.rax
        ),
        Err(e) => format!("registers unreadable: {e}"),
    };
    let sregs = match vcpu.get_sregs() {
        Ok(s) => format!(
            "cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} idt {:#x}+{:#x} gdt {:#x}+{:#x}",
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.idt.base,
            s.idt.limit,
            s.gdt.base,
            s.gdt.limit
        ),
        Err(e) => format!("special registers unreadable: {e}"),
    };
    format!("{regs}; {sregs}")
}
