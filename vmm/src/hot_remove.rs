//! NVDIMM hot-remove on the run loop (`vm.remove-device`, docs/hot-remove.md): ask the guest
//! to release the DIMM, wait for its answer without blocking the loop, and take the device away
//! only once the guest has released it.
//!
//! 1. [`HotPlugContext::request_removal`]: the device must be an NVDIMM of the running guest
//!    and no other removal may be waiting. Its NFIT handle goes into the eject request register
//!    and the eject GSI fires; the guest's `_EVT` notifies the DIMM's device with 3.
//! 2. [`HotPlugContext::poll_removal`], after every wake of the loop: the guest's answer
//!    (`_EJ0`: released; `_OST` with a failure status: refused, with its reason) or the
//!    request's timeout. Refused or timed out: the request is withdrawn and nothing changes.
//! 3. Released ([`HotPlugContext::remove`]): the KVM slot is deleted (no guest access reaches
//!    the backing any more), the flush hint and the `_DSM` mailbox let go of the device, the
//!    device leaves `PmemDevices`, its mapping is flushed (`msync`: whatever the guest wrote is
//!    on the host before the API answers) and dropped with the backing (`munmap`, `close`,
//!    which releases the `flock`), the FIT loses the DIMM's structures and the guest is told to
//!    re-read it.

use std::time::{Duration, Instant};

use devices::nvdimm_eject::EjectAnswer;
use log::{info, warn};

use crate::api::{self, ApiError};
use crate::pmem::PmemDevices;
use crate::{api_device, vm, write_fit, HotPlugContext};

/// A removal waiting for the guest.
pub(crate) struct PendingRemoval {
    id: String,
    handle: u32,
    timeout: Duration,
    deadline: Instant,
    reply: std::sync::mpsc::Sender<Result<(), ApiError>>,
}

fn conflict(message: String) -> Result<(), ApiError> {
    Err(ApiError::new(409, message))
}

impl HotPlugContext<'_> {
    /// How long the run loop may wait for events: `limit`, or less when a removal's time runs
    /// out sooner.
    pub(crate) fn wait_ms(&self, limit: i32) -> i32 {
        match &self.removal {
            Some(r) => {
                let left = r.deadline.saturating_duration_since(Instant::now());
                // Rounded up, so the loop does not spin just before the deadline.
                let ms = left.as_millis().saturating_add(1);
                i32::try_from(ms).unwrap_or(limit).min(limit)
            }
            None => limit,
        }
    }

    /// Step 1: asks the guest to release the device, or answers at once why it cannot.
    pub(crate) fn request_removal(&mut self, pmem: &PmemDevices, request: api::RemoveRequest) {
        let api::RemoveRequest { id, timeout, reply } = request;
        let refused = if let Some(r) = &self.removal {
            Some(conflict(format!(
                "vm.remove-device: the removal of {} is in progress; try again when it is answered",
                r.id
            )))
        } else {
            match pmem.devices.iter().find(|d| d.config.id == id) {
                None => Some(Err(ApiError::new(
                    404,
                    format!("vm.remove-device: no device with id {id:?}"),
                ))),
                Some(d) => match d.nfit_slot {
                    None => Some(conflict(format!(
                        "vm.remove-device: {id} is a legacy E820 range, fixed at boot; only NVDIMMs (firmware=nfit) can be removed"
                    ))),
                    Some(n) => {
                        let handle = acpi::nfit_handle(n);
                        self.eject.request(handle);
                        match self.eject_irq.write(1) {
                            Ok(()) => {
                                info!(
                                    "{id}: asking the guest to release it (NFIT handle {handle:#x}, {timeout:?} to answer)"
                                );
                                self.removal = Some(PendingRemoval {
                                    id,
                                    handle,
                                    timeout,
                                    deadline: Instant::now() + timeout,
                                    reply,
                                });
                                return;
                            }
                            Err(e) => {
                                self.eject.cancel();
                                Some(Err(ApiError::new(
                                    500,
                                    format!("vm.remove-device: notifying the guest: {e}"),
                                )))
                            }
                        }
                    }
                },
            }
        };
        if let Some(answer) = refused {
            let _ = reply.send(answer);
        }
    }

    /// Step 2: answers the waiting removal once the guest has answered or its time is up.
    pub(crate) fn poll_removal(&mut self, pmem: &mut PmemDevices, vm: &mut vm::Vm) {
        let Some(r) = &self.removal else {
            return;
        };
        let answer = self.eject.take_answer();
        if answer.is_none() && Instant::now() < r.deadline {
            return;
        }
        self.eject.cancel();
        let Some(r) = self.removal.take() else {
            return;
        };
        let result = match answer {
            Some(EjectAnswer::Released) => {
                info!("{}: the guest released it (handle {:#x})", r.id, r.handle);
                self.remove(pmem, vm, &r.id)
            }
            Some(EjectAnswer::Refused { status, reason }) => {
                let why = if reason.is_empty() {
                    EjectAnswer::status_text(status).to_string()
                } else {
                    reason
                };
                info!(
                    "{}: the guest refused to release it: {why} (_OST status {status:#x})",
                    r.id
                );
                conflict(format!(
                    "guest refused to release {}: {why} (_OST status {status:#x}); the device stays",
                    r.id
                ))
            }
            None => {
                warn!(
                    "{}: the guest did not answer the eject request within {:?}; the device stays",
                    r.id, r.timeout
                );
                conflict(format!(
                    "guest did not release {} within {:?} (a guest kernel without NVDIMM hot-remove support does not answer); the device stays",
                    r.id, r.timeout
                ))
            }
        };
        let _ = r.reply.send(result);
    }

    /// Step 3: takes away a device the guest has released.
    fn remove(
        &mut self,
        pmem: &mut PmemDevices,
        vm: &mut vm::Vm,
        id: &str,
    ) -> Result<(), ApiError> {
        let failed = |what: String| Err(ApiError::new(500, format!("vm.remove-device: {what}")));
        let Some(index) = pmem.devices.iter().position(|d| d.config.id == id) else {
            return failed(format!("{id} vanished"));
        };
        let dev = &pmem.devices[index];
        // First the slot: from here on no guest access reaches the mapping. If KVM refuses,
        // everything stays as it is (the guest has let go of the DIMM; a later request asks
        // again).
        if let Err(e) = vm.remove_pmem_slot(dev) {
            return failed(format!("{id}: {e}; the device stays"));
        }
        self.hints.set_target(dev.slot, None);
        if let Some(n) = dev.nfit_slot {
            self.dsm.set_dimm(n, None);
            self.dsm.set_health(n, None);
        }
        let dev = pmem.devices.remove(index);
        let flushed = if dev.config.readonly {
            Ok(())
        } else {
            dev.mapping.flush()
        };
        let path = dev.config.path.clone();
        // Unmaps (the last reference to the mapping: the VM, the flush hint and the mailbox let
        // go above) and closes the backing, which releases its lock.
        drop(dev);
        info!("{id}: removed; {} released", path.display());
        let fit = write_fit(self.mem, &pmem.nvdimm_descs());
        if let Some(api) = self.api {
            let report = pmem.report_json()["pmem"].clone();
            let devices: Vec<api::ApiDevice> = pmem.devices.iter().map(api_device).collect();
            api.update(|s| {
                if let Some(c) = &mut s.config {
                    c.pmem.retain(|p| p.id != id);
                }
                if let Some(r) = &mut s.running {
                    r.pmem_report = report;
                    r.devices = devices;
                }
            });
        }
        if let Err(e) = fit {
            return failed(format!("{id} was removed, but writing the FIT failed: {e}"));
        }
        // The guest re-reads _FIT and drops the DIMM's structures (a guest that released the
        // DIMM accepts an NFIT without them).
        if let Err(e) = self.irq.write(1) {
            warn!("{id}: notifying the guest of the new FIT: {e}");
        }
        if let Err(e) = flushed {
            return failed(format!(
                "{id} was removed, but flushing {} failed, so data the guest wrote may not be durable: {e}",
                path.display()
            ));
        }
        Ok(())
    }
}
