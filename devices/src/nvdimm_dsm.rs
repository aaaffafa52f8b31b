//! The NVDIMM `_DSM` mailbox: the Intel DIMM functions Linux uses for namespace labels.
//!
//! The DSDT's `_DSM` under each DIMM device (`acpi` crate, `dsdt.rs`) copies its arguments into
//! one page of reserved guest memory ([`geometry::dsm_mailbox`] gives the layout) and writes the
//! doorbell port; [`DsmDoorbell`] reads the page, [`NvdimmDsm::call`] answers, and the answer is
//! written back into the page before the guest's port write completes; the AML then returns it.
//! This is QEMU's design (hw/acpi/nvdimm.c: a page and port 0x0a18), with the page at a fixed
//! reserved address since there is no firmware to allocate one, and with the UUID and the input
//! length passed too so that every check is made here, in tested code, rather than in AML.
//!
//! Functions (Intel "NVDIMM DSM Interface" v1.x, UUID 4309AC30-0D11-11E4-9191-0800200C9A66,
//! revision 1; Linux `NVDIMM_FAMILY_INTEL`, `ND_CMD_*` in include/uapi/linux/ndctl.h):
//!
//! | function | input | output |
//! | --- | --- | --- |
//! | 0 query | ignored | bit mask of the functions supported, 8 bytes |
//! | 1 SMART health (`ND_CMD_SMART`) | none | status, `struct nd_intel_smart` (128 bytes) |
//! | 2 get SMART threshold | none | status, `struct nd_intel_smart_threshold` (8 bytes) |
//! | 4 get config size | none | status, config size, max transfer (3 × u32) |
//! | 5 get config data | offset, length (2 × u32) | status, `length` bytes |
//! | 6 set config data | offset, length, `length` bytes | status |
//! | 17 set SMART threshold (revision 2) | 7 bytes | status |
//!
//! Functions 1, 2 and 17 are offered by a DIMM with a `health=` state ([`HealthState`]; the
//! state and thresholds are [`smart`]'s), functions 4-6 by one with a label area; a DIMM with
//! neither answers function 0 with bit 0 alone (the Intel family, no function: see `call` for
//! why), so Linux finds no label functions and treats it as label-less, as before the mailbox
//! existed. Every other request gets a
//! 4-byte status: [`DsmStatus`]. The guest controls every byte of the page: each length and
//! offset is checked in `u64` arithmetic against the area, the page and the transfer limit
//! before anything is read or written, and nothing a request says can make the monitor read or
//! write outside the label area or the page.

pub mod smart;

use std::sync::{Arc, RwLock};

use geometry::dsm_mailbox as page;
use log::{debug, warn};

use crate::bus::PioDevice;
use crate::nvdimm_events::HealthEvents;
use crate::pmem::labels::{LabelIoError, LabelStore};
pub use smart::{Smart, SmartUpdate, SmartUpdateError, SMART_PAYLOAD_LEN};

pub use geometry::dsm_mailbox::{INTEL_DSM_UUID, REVISION, REVISION_2};

pub const FUNC_QUERY: u32 = 0;
pub const FUNC_SMART: u32 = 1;
pub const FUNC_SMART_THRESHOLD: u32 = 2;
pub const FUNC_SET_SMART_THRESHOLD: u32 = 17;
pub const FUNC_GET_CONFIG_SIZE: u32 = 4;
pub const FUNC_GET_CONFIG_DATA: u32 = 5;
pub const FUNC_SET_CONFIG_DATA: u32 = 6;

/// The most label bytes one get or set moves ("max transfer"): what both the request page
/// (offset + length + data) and the answer page (status + data) hold.
pub const MAX_TRANSFER: u32 = {
    let get = page::MAX_OUT_DATA - 4;
    let set = page::MAX_IN_PAYLOAD - 8;
    (if get < set { get } else { set }) as u32
};

/// The status word of an answer (Intel DSM spec "Status"; QEMU's `NVDIMM_DSM_RET_STATUS_*`).
/// Linux turns any non-zero status into `-EIO` for these commands (`xlat_nvdimm_status()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DsmStatus {
    Success = 0,
    /// Unknown function, UUID or revision, or a function this DIMM lacks.
    Unsupported = 1,
    /// The handle names no DIMM.
    NoMemoryDevice = 2,
    /// A length or offset out of range, a truncated or oversized input.
    InvalidInput = 3,
    /// The host could not make a label write durable.
    HardwareError = 4,
}

/// `health=`: the health a DIMM reports through SMART (`ndctl list -DH` shows it as
/// `health_state`); the control API changes it at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    Ok,
    NonCritical,
    Critical,
    Fatal,
}

impl std::str::FromStr for HealthState {
    type Err = crate::pmem::options::OptionValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(HealthState::Ok),
            "non-critical" => Ok(HealthState::NonCritical),
            "critical" => Ok(HealthState::Critical),
            "fatal" => Ok(HealthState::Fatal),
            _ => Err(crate::pmem::options::bad_value(
                "health",
                s,
                "ok, non-critical, critical or fatal",
            )),
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthState::Ok => "ok",
            HealthState::NonCritical => "non-critical",
            HealthState::Critical => "critical",
            HealthState::Fatal => "fatal",
        })
    }
}

/// One decoded request, as the page holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsmRequest<'a> {
    pub handle: u32,
    pub revision: u32,
    pub function: u32,
    pub uuid: [u8; 16],
    /// The input buffer's length as the AML measured it (may exceed `payload.len()`).
    pub declared_len: u32,
    /// The input bytes the page holds (at most [`page::MAX_IN_PAYLOAD`]).
    pub payload: &'a [u8],
}

fn le32(b: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl<'a> DsmRequest<'a> {
    /// Decodes a page (exactly [`page::PAGE_SIZE`] bytes; anything else is refused).
    pub fn decode(bytes: &'a [u8]) -> Option<DsmRequest<'a>> {
        if bytes.len() as u64 != page::PAGE_SIZE {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes[page::IN_UUID as usize..page::IN_UUID as usize + 16]);
        let declared_len = le32(bytes, page::IN_PAYLOAD_LEN);
        let held = u64::from(declared_len).min(page::MAX_IN_PAYLOAD) as usize;
        let start = page::IN_PAYLOAD as usize;
        Some(DsmRequest {
            handle: le32(bytes, page::IN_HANDLE),
            revision: le32(bytes, page::IN_REVISION),
            function: le32(bytes, page::IN_FUNCTION),
            uuid,
            declared_len,
            payload: &bytes[start..start + held],
        })
    }

    /// The whole input, or `None` when it did not fit in the page.
    fn input(&self) -> Option<&'a [u8]> {
        (u64::from(self.declared_len) <= page::MAX_IN_PAYLOAD).then_some(self.payload)
    }
}

/// The revision function `function` is served at.
fn revision_of(function: u32) -> u32 {
    if function == FUNC_SET_SMART_THRESHOLD {
        REVISION_2
    } else {
        REVISION
    }
}

/// Why the control API could not change a DIMM's SMART state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmartError {
    #[error("DIMM {0} does not exist")]
    NoDimm(usize),
    #[error("DIMM {0} was started without health=, so its _DSM offers no SMART function")]
    NoSmart(usize),
    #[error(transparent)]
    Value(#[from] SmartUpdateError),
}

/// The `_DSM` answers for every DIMM: the label store of each (by NFIT handle − 1), or none.
#[derive(Default)]
pub struct NvdimmDsm {
    dimms: RwLock<Vec<Option<Arc<dyn LabelStore>>>>,
    smart: RwLock<Vec<Option<Smart>>>,
    /// Where health changes go (the GED's health interrupt); none in unit tests and fuzzing.
    events: Option<Arc<HealthEvents>>,
}

fn status(s: DsmStatus) -> Vec<u8> {
    (s as u32).to_le_bytes().to_vec()
}

impl NvdimmDsm {
    /// Label stores of DIMMs 0, 1, ... (NFIT handles 1, 2, ...); `None` for a DIMM without labels.
    pub fn new(dimms: Vec<Option<Arc<dyn LabelStore>>>) -> Self {
        NvdimmDsm {
            smart: RwLock::new(vec![None; dimms.len()]),
            dimms: RwLock::new(dimms),
            events: None,
        }
    }

    /// Health changes (from the API, or alarms the guest's thresholds trip) notify the guest
    /// through `events`.
    pub fn with_health_events(mut self, events: Arc<HealthEvents>) -> Self {
        self.events = Some(events);
        self
    }

    /// Sets DIMM `index`'s `health=` at start or hot-add (None: no SMART function).
    pub fn set_health(&self, index: usize, health: Option<HealthState>) {
        let mut all = self.smart.write().unwrap_or_else(|e| e.into_inner());
        if all.len() <= index {
            all.resize(index + 1, None);
        }
        all[index] = health.map(Smart::new);
    }

    /// DIMM `index`'s SMART state, if it has one.
    pub fn smart(&self, index: usize) -> Option<Smart> {
        let all = self.smart.read().unwrap_or_else(|e| e.into_inner());
        all.get(index).copied().flatten()
    }

    /// Changes DIMM `index`'s reported state (the control API) and notifies the guest when
    /// that changed anything. On an error nothing changed.
    pub fn update_smart(&self, index: usize, update: SmartUpdate) -> Result<Smart, SmartError> {
        if self.dimm(index as u32 + 1).is_err() {
            return Err(SmartError::NoDimm(index));
        }
        let mut all = self.smart.write().unwrap_or_else(|e| e.into_inner());
        let smart = all
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or(SmartError::NoSmart(index))?;
        let changed = smart.update(update)?;
        let now = *smart;
        drop(all);
        if changed {
            self.notify(index);
        }
        Ok(now)
    }

    fn notify(&self, index: usize) {
        if let Some(events) = &self.events {
            events.notify(index);
        }
    }

    /// Sets DIMM `index`'s label store (a hot-added DIMM).
    pub fn set_dimm(&self, index: usize, store: Option<Arc<dyn LabelStore>>) {
        let mut dimms = self.dimms.write().unwrap_or_else(|e| e.into_inner());
        if dimms.len() <= index {
            dimms.resize_with(index + 1, || None);
        }
        dimms[index] = store;
    }

    /// The DIMM an NFIT handle names: `Err(())` for no DIMM, `Ok(None)` for one without labels.
    fn dimm(&self, handle: u32) -> Result<Option<Arc<dyn LabelStore>>, ()> {
        let dimms = self.dimms.read().unwrap_or_else(|e| e.into_inner());
        let index = (handle as usize).checked_sub(1).ok_or(())?;
        dimms.get(index).cloned().ok_or(())
    }

    /// The answer to `req`: the bytes `_DSM` returns (at most [`page::MAX_OUT_DATA`]).
    pub fn call(&self, req: &DsmRequest<'_>) -> Vec<u8> {
        let intel = req.uuid == INTEL_DSM_UUID;
        let dimm = self.dimm(req.handle);
        let index = (req.handle as usize).wrapping_sub(1);
        let has_smart = dimm.is_ok() && self.smart(index).is_some();
        if req.function == FUNC_QUERY {
            // ACPI 6.x §9.1.1: function 0 answers for any UUID and revision, with the functions
            // of that revision; a mask without bit 0 means "nothing supported".
            let mut mask: u64 = 0;
            // Every DIMM is of the Intel family, even one with no function: Linux keeps one
            // bus-wide family bit that each DIMM's probe clears and sets again only if that
            // DIMM answers this query (`acpi_nfit_add_dimm()`), and refuses every Intel
            // `ND_CMD_CALL` on the bus without it, so a last-probed DIMM outside the family
            // would cost the others their SMART (`ndctl list -DH`: "unknown").
            if let (true, REVISION, Ok(_)) = (intel, req.revision, &dimm) {
                mask |= 1;
            }
            if let (true, REVISION, Ok(Some(store))) = (intel, req.revision, &dimm) {
                mask |= 1 | 1 << FUNC_GET_CONFIG_SIZE | 1 << FUNC_GET_CONFIG_DATA;
                if !store.readonly() {
                    mask |= 1 << FUNC_SET_CONFIG_DATA;
                }
            }
            if intel && has_smart {
                match req.revision {
                    REVISION => mask |= 1 | 1 << FUNC_SMART | 1 << FUNC_SMART_THRESHOLD,
                    REVISION_2 => mask |= 1 | 1 << FUNC_SET_SMART_THRESHOLD,
                    _ => {}
                }
            }
            return mask.to_le_bytes().to_vec();
        }
        if !intel || req.revision != revision_of(req.function) {
            return status(DsmStatus::Unsupported);
        }
        if matches!(
            req.function,
            FUNC_SMART | FUNC_SMART_THRESHOLD | FUNC_SET_SMART_THRESHOLD
        ) {
            return match (&dimm, has_smart) {
                (Err(()), _) => status(DsmStatus::NoMemoryDevice),
                (Ok(_), false) => status(DsmStatus::Unsupported),
                (Ok(_), true) => self.smart_call(req, index),
            };
        }
        let store = match dimm {
            Err(()) => return status(DsmStatus::NoMemoryDevice),
            Ok(None) => return status(DsmStatus::Unsupported),
            Ok(Some(store)) => store,
        };
        match req.function {
            FUNC_GET_CONFIG_SIZE => get_config_size(req, &*store),
            FUNC_GET_CONFIG_DATA => get_config_data(req, &*store),
            FUNC_SET_CONFIG_DATA if !store.readonly() => set_config_data(req, &*store),
            _ => status(DsmStatus::Unsupported),
        }
    }
}

impl NvdimmDsm {
    /// Functions 1, 2 and 17 for DIMM `index`, which has a SMART state.
    fn smart_call(&self, req: &DsmRequest<'_>, index: usize) -> Vec<u8> {
        let mut all = self.smart.write().unwrap_or_else(|e| e.into_inner());
        let Some(Some(smart)) = all.get_mut(index) else {
            return status(DsmStatus::Unsupported);
        };
        let mut out = status(DsmStatus::Success);
        match req.function {
            FUNC_SMART | FUNC_SMART_THRESHOLD if req.declared_len != 0 => {
                return status(DsmStatus::InvalidInput)
            }
            FUNC_SMART => out.extend_from_slice(&smart.payload()),
            FUNC_SMART_THRESHOLD => out.extend_from_slice(&smart.threshold_payload()),
            _ => {
                let input = req
                    .input()
                    .and_then(|i| <&[u8; smart::SET_THRESHOLD_INPUT_LEN]>::try_from(i).ok());
                let Some(tripped) = input.and_then(|i| smart.set_thresholds(i)) else {
                    return status(DsmStatus::InvalidInput);
                };
                drop(all);
                if tripped {
                    self.notify(index);
                }
            }
        }
        out
    }
}

fn get_config_size(req: &DsmRequest<'_>, store: &dyn LabelStore) -> Vec<u8> {
    if req.declared_len != 0 {
        return status(DsmStatus::InvalidInput);
    }
    let mut out = status(DsmStatus::Success);
    out.extend_from_slice(&store.size().to_le_bytes());
    out.extend_from_slice(&MAX_TRANSFER.min(store.size()).to_le_bytes());
    out
}

/// `offset` and `length` of a get/set, checked against the area and [`MAX_TRANSFER`].
fn range(input: &[u8], store: &dyn LabelStore) -> Result<(u32, u32), DsmStatus> {
    if input.len() < 8 {
        return Err(DsmStatus::InvalidInput);
    }
    let (offset, length) = (le32(input, 0), le32(input, 4));
    let end = u64::from(offset) + u64::from(length);
    if length > MAX_TRANSFER || end > u64::from(store.size()) {
        return Err(DsmStatus::InvalidInput);
    }
    Ok((offset, length))
}

fn get_config_data(req: &DsmRequest<'_>, store: &dyn LabelStore) -> Vec<u8> {
    let Some(input) = req.input().filter(|i| i.len() == 8) else {
        return status(DsmStatus::InvalidInput);
    };
    let (offset, length) = match range(input, store) {
        Ok(r) => r,
        Err(s) => return status(s),
    };
    let mut out = status(DsmStatus::Success);
    out.resize(4 + length as usize, 0);
    match store.read(offset, &mut out[4..]) {
        Ok(()) => out,
        Err(e) => {
            warn!("NVDIMM handle {}: label read failed: {e}", req.handle);
            status(DsmStatus::HardwareError)
        }
    }
}

fn set_config_data(req: &DsmRequest<'_>, store: &dyn LabelStore) -> Vec<u8> {
    let Some(input) = req.input() else {
        return status(DsmStatus::InvalidInput);
    };
    let (offset, length) = match range(input, store) {
        Ok(r) => r,
        Err(s) => return status(s),
    };
    // The data must be exactly `length` bytes: shorter is truncated, longer is malformed.
    if input.len() as u64 != 8 + u64::from(length) {
        return status(DsmStatus::InvalidInput);
    }
    match store.write_durably(offset, &input[8..]) {
        Ok(()) => status(DsmStatus::Success),
        Err(e) => {
            // Rare (host I/O failure); each failed call is one guest request, so at most one
            // line per guest `_DSM` call, which the guest pays a port exit for.
            warn!("NVDIMM handle {}: label write not durable: {e}", req.handle);
            match e {
                LabelIoError::ReadOnly => status(DsmStatus::Unsupported),
                _ => status(DsmStatus::HardwareError),
            }
        }
    }
}

/// Guest memory holding the mailbox page.
pub trait MailboxPage: Send {
    /// Copies the whole page into `buf` (exactly [`page::PAGE_SIZE`] bytes).
    fn read_page(&self, buf: &mut [u8]) -> Result<(), String>;
    /// Writes `data` at `offset` in the page (the caller keeps it inside the page).
    fn write_page(&self, offset: u64, data: &[u8]) -> Result<(), String>;
}

/// The doorbell port: a 4-byte write serves the request in the page. Reads return zero. Any
/// other access is ignored.
pub struct DsmDoorbell {
    page: Box<dyn MailboxPage>,
    dsm: Arc<NvdimmDsm>,
    /// Requests served, for tests and the log.
    pub calls: u64,
}

impl DsmDoorbell {
    pub fn new(page: Box<dyn MailboxPage>, dsm: Arc<NvdimmDsm>) -> Self {
        DsmDoorbell {
            page,
            dsm,
            calls: 0,
        }
    }

    /// Serves the request in the page: reads a snapshot (so a vCPU rewriting the page meanwhile
    /// cannot change what was checked), answers, writes the answer's data and then its length.
    fn ring(&mut self) {
        let mut snapshot = vec![0u8; page::PAGE_SIZE as usize];
        if let Err(e) = self.page.read_page(&mut snapshot) {
            warn!("NVDIMM _DSM mailbox unreadable: {e}");
            return;
        }
        let req = DsmRequest::decode(&snapshot).expect("a whole page");
        let out = self.dsm.call(&req);
        debug_assert!(out.len() as u64 <= page::MAX_OUT_DATA);
        self.calls += 1;
        debug!(
            "NVDIMM _DSM call {}: handle {:#x} function {} revision {}, {} bytes answered",
            self.calls,
            req.handle,
            req.function,
            req.revision,
            out.len()
        );
        let written = self.page.write_page(page::OUT_DATA, &out).and_then(|()| {
            self.page
                .write_page(page::OUT_LEN, &(out.len() as u32).to_le_bytes())
        });
        if let Err(e) = written {
            warn!("NVDIMM _DSM mailbox unwritable: {e}");
        }
    }
}

impl PioDevice for DsmDoorbell {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            self.ring();
        }
    }
}

#[cfg(test)]
mod tests;
