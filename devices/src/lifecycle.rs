//! How devices and vCPU threads tell the monitor that the guest wants to stop.
//!
//! The first request wins: a guest that powers off while another vCPU triple-faults ends with the
//! reason that arrived first, and later ones are ignored. Waiters learn about it through an
//! `EventFd`, so the main event loop can sleep in epoll rather than poll.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the guest stopped running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// ACPI S5 through the sleep control register.
    PowerOff,
    /// ACPI reset register, the PCI reset control port or the i8042 reset line.
    Reboot,
    /// The CPU hit a triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// The host asked the monitor to stop (SIGTERM, SIGINT); the value is the signal number.
    Signal(i32),
    /// The host asked through the control API (`vm.shutdown`, `vm.delete`, `vmm.shutdown`).
    Shutdown,
    /// A vCPU failed in a way the guest cannot recover from; the text says how.
    Error,
}

/// A one-shot, thread-safe "the VM should stop" flag with an eventfd to wake the event loop.
#[derive(Debug)]
pub struct StopSignal {
    reason: Mutex<Option<StopReason>>,
    event: EventFd,
}

impl StopSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(StopSignal {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless another one was recorded first. Returns whether it was recorded.
    pub fn request(&self, reason: StopReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        drop(slot);
        // A failed eventfd write can only mean the counter is saturated, which still wakes the
        // waiter; nothing else to do about it.
        let _ = self.event.write(1);
        true
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd that becomes readable once a reason is recorded.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins() {
        let s = StopSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        assert!(s.request(StopReason::PowerOff));
        assert!(!s.request(StopReason::TripleFault));
        assert_eq!(s.reason(), Some(StopReason::PowerOff));
        assert_eq!(s.event().read().unwrap(), 1);
    }
}
