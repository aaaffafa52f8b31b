//! The NVDIMM eject registers (docs/hot-remove.md): how the monitor asks the guest to release a
//! DIMM, and how the guest answers.
//!
//! The monitor's main thread puts the NFIT handle of the DIMM it wants into the request
//! register ([`EjectState::request`]) and raises the Generic Event Device's eject interrupt; the
//! guest's `_EVT` reads the register and notifies that DIMM's ACPI device with 3 (eject
//! request). A guest that released the DIMM evaluates its `_EJ0`, which writes the handle to
//! [`reg::EJECT`]; a guest that will not release it reports so through `_OST` (handle, event 3,
//! the status information byte by byte, then the status code). Both land on a vCPU thread here
//! ([`EjectRegisters`]); the first answer about the DIMM asked for is kept for the main thread
//! ([`EjectState::take_answer`]) and wakes it.
//!
//! Everything here is guest input: writes about a DIMM nobody asked for, a second answer, an
//! `_OST` that is not about an eject request, "success" or "in progress" without `_EJ0`, and
//! reasons longer than [`reg::MAX_REASON_LEN`] are ignored (at debug level, so a guest writing
//! in a loop cannot flood the log).

use std::sync::{Arc, Mutex, MutexGuard};

use geometry::nvdimm_eject as reg;
use log::debug;

use crate::bus::PioDevice;

/// The guest's answer to an eject request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EjectAnswer {
    /// `_EJ0`: the guest released the DIMM.
    Released,
    /// `_OST` with a failure status: the guest keeps the DIMM.
    Refused {
        /// The `_OST` status code (e.g. [`reg::OST_DEVICE_IN_USE`]).
        status: u32,
        /// The status information the guest passed, printable ASCII only (anything else is
        /// dropped), at most [`reg::MAX_REASON_LEN`] bytes; empty when it passed none.
        reason: String,
    },
}

impl EjectAnswer {
    /// What an `_OST` status code means for an eject request (ACPI 6.5 §6.3.5).
    pub fn status_text(status: u32) -> &'static str {
        match status {
            reg::OST_NON_SPECIFIC_FAILURE => "non-specific failure",
            reg::OST_EJECT_NOT_SUPPORTED => "eject not supported",
            reg::OST_DEVICE_IN_USE => "device in use",
            reg::OST_DEVICE_BUSY => "device busy",
            reg::OST_EJECT_DEPENDENCY_BUSY => "eject dependency busy",
            _ => "unknown status",
        }
    }
}

#[derive(Default)]
struct Pending {
    /// The handle asked for, 0 when nothing is asked.
    handle: u32,
    answer: Option<EjectAnswer>,
}

/// The request and its answer, shared by the main thread and the register block.
pub struct EjectState {
    pending: Mutex<Pending>,
    /// Called (on the vCPU thread) once an answer is in: wakes the main thread.
    wake: Box<dyn Fn() + Send + Sync>,
}

impl EjectState {
    pub fn new(wake: Box<dyn Fn() + Send + Sync>) -> Arc<Self> {
        Arc::new(EjectState {
            pending: Mutex::new(Pending::default()),
            wake,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for the DIMM with NFIT handle `handle` (non-zero); forgets any earlier answer.
    pub fn request(&self, handle: u32) {
        debug_assert_ne!(handle, 0);
        let mut p = self.lock();
        p.handle = handle;
        p.answer = None;
    }

    /// Takes the guest's answer, if it has given one; the request stays until [`Self::cancel`].
    pub fn take_answer(&self) -> Option<EjectAnswer> {
        self.lock().answer.take()
    }

    /// Asks for nothing any more: later answers are ignored.
    pub fn cancel(&self) {
        let mut p = self.lock();
        p.handle = 0;
        p.answer = None;
    }

    /// The handle asked for, 0 when none.
    pub fn requested(&self) -> u32 {
        self.lock().handle
    }

    /// Records `answer` about `handle` when it is the first answer about the DIMM asked for.
    fn answer(&self, handle: u32, answer: EjectAnswer) {
        let mut p = self.lock();
        if handle == 0 || handle != p.handle || p.answer.is_some() {
            debug!("NVDIMM eject: ignored {answer:?} about handle {handle:#x}");
            return;
        }
        p.answer = Some(answer);
        drop(p);
        (self.wake)();
    }
}

/// An `_OST` report being written.
#[derive(Default)]
struct OstReport {
    handle: u32,
    event: u32,
    reason: Vec<u8>,
}

/// The register block on the port bus ([`reg::PORT`], [`reg::LEN`] ports).
pub struct EjectRegisters {
    state: Arc<EjectState>,
    report: OstReport,
}

impl EjectRegisters {
    pub fn new(state: Arc<EjectState>) -> Self {
        EjectRegisters {
            state,
            report: OstReport::default(),
        }
    }

    fn complete_report(&mut self, status: u32) {
        let report = std::mem::take(&mut self.report);
        if report.event != reg::EVENT_EJECT_REQUEST {
            debug!("NVDIMM eject: _OST for event {:#x} ignored", report.event);
            return;
        }
        match status {
            // Success is what `_EJ0` says; "in progress" is no answer yet.
            reg::OST_SUCCESS | reg::OST_EJECT_IN_PROGRESS => {
                debug!(
                    "NVDIMM eject: _OST status {status:#x} about handle {:#x}",
                    report.handle
                );
            }
            _ => self.state.answer(
                report.handle,
                EjectAnswer::Refused {
                    status,
                    reason: printable(&report.reason),
                },
            ),
        }
    }
}

/// The printable ASCII of `bytes` up to the first NUL, trimmed.
fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take_while(|&&b| b != 0)
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .map(|&b| char::from(b))
        .collect::<String>()
        .trim()
        .to_string()
}

fn dword(data: &[u8]) -> Option<u32> {
    data.try_into().ok().map(u32::from_le_bytes)
}

impl PioDevice for EjectRegisters {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if offset == reg::REQUEST && data.len() == 4 {
            data.copy_from_slice(&self.state.requested().to_le_bytes());
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        match (offset, data.len()) {
            (reg::EJECT, 4) => {
                let handle = dword(data).unwrap_or(0);
                self.state.answer(handle, EjectAnswer::Released);
            }
            (reg::OST_HANDLE, 4) => {
                self.report = OstReport {
                    handle: dword(data).unwrap_or(0),
                    ..OstReport::default()
                };
            }
            (reg::OST_EVENT, 4) => self.report.event = dword(data).unwrap_or(0),
            (reg::OST_REASON, 1) if self.report.reason.len() < reg::MAX_REASON_LEN as usize => {
                self.report.reason.push(data[0]);
            }
            (reg::OST_STATUS, 4) => self.complete_report(dword(data).unwrap_or(0)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn setup() -> (Arc<EjectState>, EjectRegisters, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        let state = EjectState::new(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        let regs = EjectRegisters::new(state.clone());
        (state, regs, wakes)
    }

    fn ost(regs: &mut EjectRegisters, handle: u32, event: u32, reason: &[u8], status: u32) {
        regs.write(reg::OST_HANDLE, &handle.to_le_bytes());
        regs.write(reg::OST_EVENT, &event.to_le_bytes());
        for &b in reason {
            regs.write(reg::OST_REASON, &[b]);
        }
        regs.write(reg::OST_STATUS, &status.to_le_bytes());
    }

    fn read_request(regs: &mut EjectRegisters) -> u32 {
        let mut b = [0xffu8; 4];
        regs.read(reg::REQUEST, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn the_request_register_shows_what_is_asked() {
        let (state, mut regs, _) = setup();
        assert_eq!(read_request(&mut regs), 0);
        state.request(3);
        assert_eq!(read_request(&mut regs), 3);
        let mut short = [0xffu8; 2];
        regs.read(reg::REQUEST, &mut short);
        assert_eq!(short, [0, 0]);
        state.cancel();
        assert_eq!(read_request(&mut regs), 0);
    }

    #[test]
    fn ej0_of_the_dimm_asked_for_releases_it_once() {
        let (state, mut regs, wakes) = setup();
        state.request(2);
        regs.write(reg::EJECT, &1u32.to_le_bytes());
        assert_eq!(state.take_answer(), None);
        regs.write(reg::EJECT, &2u32.to_le_bytes());
        regs.write(reg::EJECT, &2u32.to_le_bytes());
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(state.take_answer(), Some(EjectAnswer::Released));
        assert_eq!(state.take_answer(), None);
    }

    #[test]
    fn a_refusal_carries_its_status_and_printable_reason() {
        let (state, mut regs, wakes) = setup();
        state.request(1);
        ost(&mut regs, 1, 3, b"namespace1.0 \x07in use\0junk", 0x81);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(
            state.take_answer(),
            Some(EjectAnswer::Refused {
                status: 0x81,
                reason: "namespace1.0 in use".into()
            })
        );
    }

    #[test]
    fn answers_nobody_asked_for_are_ignored() {
        let (state, mut regs, wakes) = setup();
        // Nothing asked: neither _EJ0 nor _OST counts, handle 0 included.
        regs.write(reg::EJECT, &0u32.to_le_bytes());
        ost(&mut regs, 0, 3, b"", 0x82);
        state.request(4);
        // Another DIMM, another event, success and "in progress": no answer.
        ost(&mut regs, 5, 3, b"", 0x82);
        ost(&mut regs, 4, 1, b"", 0x82);
        ost(&mut regs, 4, 3, b"", 0);
        ost(&mut regs, 4, 3, b"", 0x84);
        // A report whose handle was never written, and odd access sizes.
        regs.write(reg::OST_EVENT, &3u32.to_le_bytes());
        regs.write(reg::OST_STATUS, &0x82u32.to_le_bytes());
        regs.write(reg::EJECT, &[4, 0]);
        regs.write(reg::OST_STATUS, &[0x82]);
        regs.write(reg::OST_REASON, &[1, 2, 3, 4]);
        regs.write(100, &[1, 2, 3, 4]);
        assert_eq!(wakes.load(Ordering::SeqCst), 0);
        assert_eq!(state.take_answer(), None);
        // The first real answer wins; a later _EJ0 does not replace a refusal.
        ost(&mut regs, 4, 3, b"busy", 0x82);
        regs.write(reg::EJECT, &4u32.to_le_bytes());
        assert!(matches!(
            state.take_answer(),
            Some(EjectAnswer::Refused { status: 0x82, .. })
        ));
    }

    #[test]
    fn reasons_are_bounded() {
        let (state, mut regs, _) = setup();
        state.request(1);
        let long = vec![b'x'; 10_000];
        ost(&mut regs, 1, 3, &long, 0x81);
        let Some(EjectAnswer::Refused { reason, .. }) = state.take_answer() else {
            panic!("no refusal");
        };
        assert_eq!(reason.len(), reg::MAX_REASON_LEN as usize);
    }

    #[test]
    fn a_new_request_forgets_the_old_answer() {
        let (state, mut regs, _) = setup();
        state.request(1);
        regs.write(reg::EJECT, &1u32.to_le_bytes());
        state.cancel();
        regs.write(reg::EJECT, &1u32.to_le_bytes());
        state.request(1);
        assert_eq!(state.take_answer(), None);
        regs.write(reg::EJECT, &1u32.to_le_bytes());
        assert_eq!(state.take_answer(), Some(EjectAnswer::Released));
    }
}
