//! The HTTP control API on a Unix socket (`--api-socket`), with cloud-hypervisor's endpoints,
//! methods, JSON field names and status codes for what this monitor supports.
//!
//! Threads: one API thread ([`server::spawn`]) accepts connections one at a time and answers
//! each request; it never runs on a vCPU thread and never blocks one. It reads what it reports
//! (`vm.info`, `vm.counters`) from [`ApiState`], which the main thread keeps current, and acts
//! on a running guest only through its [`StopSignal`] (the same one-shot stop the guest's own
//! poweroff uses). What has to happen on the main thread, where the run lives (`vm.create`'s
//! check phase, `vm.boot`, `vm.delete`, `vmm.shutdown` while no guest runs), is sent to it as a
//! [`Command`] and answered through a channel.

pub mod http;
pub mod server;
pub mod socket;
pub mod vm_config;

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use devices::flush_hint::FlushHints;
use devices::lifecycle::{StopReason, StopSignal};
use devices::nvdimm_dsm::{NvdimmDsm, SmartError};
use serde_json::{json, Value};

use crate::config::VmConfig;

/// cloud-hypervisor's `VmState` values this monitor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// No VM: before `vm.create`, after `vm.delete`.
    NotCreated,
    /// Created (checked, nothing written yet), not booted.
    Created,
    Running,
    /// The guest stopped (powered off, `vm.shutdown`, a failure); `vm.boot` boots it again
    /// from the same configuration.
    Shutdown,
}

impl VmState {
    fn name(self) -> &'static str {
        match self {
            VmState::NotCreated => "NotCreated",
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Shutdown => "Shutdown",
        }
    }
}

/// A running guest as the API sees it.
pub struct RunningVm {
    pub stop: Arc<StopSignal>,
    /// The irqfd of the ACPI Generic Event Device: a write presses the power button.
    pub power_button: Arc<vmm_sys_util::eventfd::EventFd>,
    /// `PmemDevices::report_json()["pmem"]`: per device mode, memmap, bytes, capacity, base.
    pub pmem_report: Value,
    pub hints: Arc<FlushHints>,
    /// The devices the guest has, in the order they came.
    pub devices: Vec<ApiDevice>,
    /// The DIMMs' `_DSM` state: `vm.set-pmem-health` changes SMART there.
    pub dsm: Arc<NvdimmDsm>,
    /// Where `vm.add-pmem` and `vm.remove-device` requests go: the main thread's run loop.
    pub hotplug: HotPlug,
    /// KVM's statistics of the VM (stage-2 page sizes), when this KVM has them.
    pub stats: Option<Arc<crate::kvm_stats::VmStats>>,
}

/// A device of the running guest as `vm.counters`, `vm.remove-device` and `vm.set-pmem-health`
/// need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiDevice {
    pub id: String,
    /// Its slot (`PmemDevice::slot`): which flush hint's counters are its.
    pub slot: usize,
    /// The bytes the monitor wrote to format it.
    pub bytes_formatted: u64,
    /// Its NFIT slot (`PmemDevice::nfit_slot`), which indexes its `_DSM` state (health); None
    /// for a legacy E820 range.
    pub nfit_slot: Option<usize>,
}

/// A `vm.add-pmem` for the run loop, which owns the devices, the VM and guest memory.
pub struct HotAddRequest {
    pub config: crate::pmem_option::PmemConfig,
    /// `{id, bdf}` once the guest has been notified, or why nothing was added.
    pub reply: mpsc::Sender<Result<Value, ApiError>>,
}

/// A `vm.remove-device` for the run loop: ask the guest to release device `id` and, once it
/// has, take the device away (docs/hot-remove.md).
pub struct RemoveRequest {
    pub id: String,
    /// How long the guest has to answer.
    pub timeout: Duration,
    /// `Ok` once the device is gone, or why it is still there.
    pub reply: mpsc::Sender<Result<(), ApiError>>,
}

/// The run loop's end of hot-add and hot-remove: two queues and the eventfd that wakes the loop.
#[derive(Clone)]
pub struct HotPlug {
    pub add: mpsc::Sender<HotAddRequest>,
    pub remove: mpsc::Sender<RemoveRequest>,
    pub wake: Arc<vmm_sys_util::eventfd::EventFd>,
}

/// What happens once the running guest has stopped, when the API asked for more than a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterStop {
    #[default]
    Nothing,
    /// `vm.delete`: forget the configuration.
    Delete,
    /// `vmm.shutdown`: the monitor exits.
    ExitVmm,
}

pub struct Shared {
    pub state: VmState,
    pub config: Option<VmConfig>,
    pub running: Option<RunningVm>,
    pub after_stop: AfterStop,
    /// Why the last guest stopped (`vm.info`'s `last_stop`), e.g. "PowerOff".
    pub last_stop: Option<String>,
    /// Whether the main thread takes [`Command`]s (started without `--kernel`). With a
    /// command-line VM the monitor exits when its guest stops, as without the API.
    pub serves_commands: bool,
    /// A request is being answered (so the monitor does not exit under it).
    pub in_flight: bool,
}

/// What the API thread and the main thread share: the state, and a condition variable that
/// is signalled on every change.
pub struct ApiState {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl ApiState {
    pub fn new(serves_commands: bool) -> Arc<Self> {
        Arc::new(ApiState {
            shared: Mutex::new(Shared {
                state: VmState::NotCreated,
                config: None,
                running: None,
                after_stop: AfterStop::Nothing,
                last_stop: None,
                serves_commands,
                in_flight: false,
            }),
            changed: Condvar::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state under the lock and wakes waiters.
    pub fn update(&self, f: impl FnOnce(&mut Shared)) {
        let mut s = self.lock();
        f(&mut s);
        drop(s);
        self.changed.notify_all();
    }

    /// Waits (at most `limit`) until `done` holds.
    fn wait_until(&self, limit: Duration, done: impl Fn(&Shared) -> bool) -> bool {
        let guard = self.lock();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, limit, |s| !done(s))
            .unwrap_or_else(|e| e.into_inner());
        done(&guard)
    }

    /// The main thread, before the monitor exits: lets a request being answered (the
    /// `vm.shutdown` that stopped the guest, say) finish writing, for at most a second.
    pub fn drain(&self) {
        self.wait_until(Duration::from_secs(1), |s| !s.in_flight);
    }

    /// The main thread: the command-line VM is running (or a booted one).
    pub fn started(&self, config: &VmConfig, running: RunningVm) {
        self.update(|s| {
            s.state = VmState::Running;
            s.config = Some(config.clone());
            s.running = Some(running);
        });
    }

    /// The main thread: the guest stopped for `why`. Returns what the API asked for after it.
    pub fn stopped(&self, why: String) -> AfterStop {
        let mut after = AfterStop::Nothing;
        self.update(|s| {
            s.running = None;
            s.last_stop = Some(why);
            after = std::mem::take(&mut s.after_stop);
            if after == AfterStop::Delete {
                s.state = VmState::NotCreated;
                s.config = None;
            } else {
                s.state = VmState::Shutdown;
            }
        });
        after
    }
}

/// An error answer: a 4xx or 5xx status and a one-line message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// A monitor error from the check or the run: the user's mistake (exit status 2 on the
    /// command line) is a 400, anything else a 500.
    pub fn from_vmm(e: &crate::VmmError) -> Self {
        let status = if e.exit_status() == crate::exit::USAGE {
            400
        } else {
            500
        };
        ApiError::new(status, e.to_string())
    }

    /// As [`from_vmm`](Self::from_vmm), for a configuration that came from `vm.create`: the
    /// check's messages name command-line options, which become the JSON fields.
    pub fn from_vmm_for_api(e: &crate::VmmError) -> Self {
        let mut err = Self::from_vmm(e);
        for (cli, json) in [
            ("--kernel ", "payload.kernel "),
            ("--initramfs ", "payload.initramfs "),
            ("--pmem path=", "pmem file="),
            ("--pmem ", "pmem "),
            ("--serial file=", "serial.file="),
            ("--memory", "memory.size"),
            ("--cpus", "cpus.boot_vcpus"),
        ] {
            err.message = err.message.replace(cli, json);
        }
        err
    }
}

/// Work only the main thread can do.
pub enum CommandKind {
    /// Run the check phase for this configuration and hold what it opened.
    Create(Box<VmConfig>),
    Boot,
    Delete,
    ExitVmm,
}

pub struct Command {
    pub kind: CommandKind,
    pub reply: mpsc::Sender<Result<(), ApiError>>,
}

/// How long a request waits for the main thread (a boot includes writing info blocks).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `vm.shutdown` and `vm.delete` wait for a running guest to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Routes requests; owned by the API thread.
pub struct Controller {
    pub state: Arc<ApiState>,
    pub commands: mpsc::Sender<Command>,
    /// Written after each command, so the main thread can sleep without a timeout.
    pub commands_wake: Arc<vmm_sys_util::eventfd::EventFd>,
    pub host_memory: Option<u64>,
}

/// What the API thread does after it has written the response.
pub enum Then {
    Nothing,
    /// `vmm.shutdown`: tell the main thread to exit (after the client has its answer).
    ExitVmm,
}

const ENDPOINTS: &[(&str, http::Method)] = &[
    ("vmm.ping", http::Method::Get),
    ("vmm.shutdown", http::Method::Put),
    ("vm.info", http::Method::Get),
    ("vm.counters", http::Method::Get),
    ("vm.create", http::Method::Put),
    ("vm.boot", http::Method::Put),
    ("vm.shutdown", http::Method::Put),
    ("vm.reboot", http::Method::Put),
    ("vm.power-button", http::Method::Put),
    ("vm.delete", http::Method::Put),
    ("vm.add-pmem", http::Method::Put),
    ("vm.remove-device", http::Method::Put),
    // Ours (cloud-hypervisor has no NVDIMM health): the SMART state a DIMM reports.
    ("vm.set-pmem-health", http::Method::Put),
];

/// cloud-hypervisor endpoints this monitor does not have (404 with a message saying so).
const NOT_SUPPORTED: &[&str] = &[
    "vm.pause",
    "vm.resume",
    "vm.snapshot",
    "vm.restore",
    "vm.coredump",
    "vm.resize",
    "vm.resize-zone",
    "vm.resize-disk",
    "vm.add-device",
    "vm.add-user-device",
    "vm.add-disk",
    "vm.add-fs",
    "vm.add-net",
    "vm.add-vsock",
    "vm.add-vdpa",
    "vm.receive-migration",
    "vm.send-migration",
    "vm.nmi",
    "vmm.nmi",
];

/// The run loop's answer to a hot-plug request: 409 when the run loop went away without one (the
/// guest stopped "before `stopped_before`"), 500 when none came within `timeout`.
fn run_loop_answer<T>(
    answer: &mpsc::Receiver<Result<T, ApiError>>,
    timeout: Duration,
    what: &str,
    stopped_before: &str,
) -> Result<T, ApiError> {
    match answer.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ApiError::new(
            409,
            format!("{what}: the guest stopped before {stopped_before}"),
        )),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ApiError::new(
            500,
            format!("{what}: the monitor did not answer in time"),
        )),
    }
}

fn not_created() -> ApiError {
    ApiError::new(404, "no VM is created; PUT /api/v1/vm.create first")
}

fn not_booted(what: &str) -> ApiError {
    ApiError::new(
        405,
        format!("{what}: the VM is not running; PUT /api/v1/vm.boot first"),
    )
}

impl Controller {
    /// Answers one request.
    pub fn handle(&self, req: &http::Request) -> (http::Response, Then) {
        match self.route(req) {
            Ok((response, then)) => (response, then),
            Err(e) => (http::Response::error(e.status, &e.message), Then::Nothing),
        }
    }

    fn route(&self, req: &http::Request) -> Result<(http::Response, Then), ApiError> {
        let Some(name) = req.path.strip_prefix("/api/v1/") else {
            return Err(ApiError::new(
                404,
                format!(
                    "{}: not an API path; endpoints are under /api/v1/",
                    req.path
                ),
            ));
        };
        let Some(&(_, method)) = ENDPOINTS.iter().find(|(n, _)| *n == name) else {
            if NOT_SUPPORTED.contains(&name) {
                return Err(ApiError::new(
                    404,
                    format!("{name}: not supported by this monitor"),
                ));
            }
            return Err(ApiError::new(404, format!("{name}: no such endpoint")));
        };
        if req.method != method {
            let want = if method == http::Method::Get {
                "GET"
            } else {
                "PUT"
            };
            return Err(ApiError::new(
                405,
                format!("{} {name}: use {want}", req.method_text),
            ));
        }
        if method == http::Method::Get && !req.body.is_empty() {
            return Err(ApiError::new(400, format!("GET {name}: takes no body")));
        }
        let takes_body = matches!(
            name,
            "vm.create" | "vm.add-pmem" | "vm.remove-device" | "vm.set-pmem-health"
        );
        if !takes_body && !req.body.is_empty() {
            return Err(ApiError::new(400, format!("PUT {name}: takes no body")));
        }
        let done = |r| Ok((r, Then::Nothing));
        match name {
            "vmm.ping" => done(http::Response::json(200, &ping())),
            "vmm.shutdown" => self.vmm_shutdown(),
            "vm.info" => done(http::Response::json(200, &self.info()?)),
            "vm.counters" => done(http::Response::json(200, &self.counters()?)),
            "vm.create" => {
                self.create(&req.body)?;
                done(http::Response::no_content())
            }
            "vm.boot" => {
                self.boot()?;
                done(http::Response::no_content())
            }
            "vm.shutdown" => {
                self.stop_running(
                    "vm.shutdown",
                    StopReason::Shutdown,
                    AfterStop::Nothing,
                    true,
                )?;
                done(http::Response::no_content())
            }
            "vm.reboot" => {
                self.stop_running("vm.reboot", StopReason::Reboot, AfterStop::Nothing, false)?;
                done(http::Response::no_content())
            }
            "vm.power-button" => {
                self.power_button()?;
                done(http::Response::no_content())
            }
            "vm.delete" => {
                self.delete()?;
                done(http::Response::no_content())
            }
            "vm.add-pmem" => done(http::Response::json(200, &self.add_pmem(&req.body)?)),
            "vm.set-pmem-health" => {
                self.set_pmem_health(&req.body)?;
                done(http::Response::no_content())
            }
            "vm.remove-device" => {
                self.remove_device(&req.body)?;
                done(http::Response::no_content())
            }
            _ => Err(ApiError::new(404, format!("{name}: no such endpoint"))),
        }
    }

    /// Sends a command to the main thread and waits for its answer.
    fn command(&self, kind: CommandKind) -> Result<(), ApiError> {
        let (reply, answer) = mpsc::channel();
        self.send(Command { kind, reply })
            .map_err(|_| ApiError::new(500, "the monitor is shutting down"))?;
        answer
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| ApiError::new(500, "the monitor did not answer in time"))?
    }

    /// Queues a command for the main thread and wakes it.
    pub fn send(&self, command: Command) -> Result<(), mpsc::SendError<Command>> {
        self.commands.send(command)?;
        let _ = self.commands_wake.write(1);
        Ok(())
    }

    fn vmm_shutdown(&self) -> Result<(http::Response, Then), ApiError> {
        let mut s = self.state.lock();
        if let Some(stop) = s.running.as_ref().map(|r| r.stop.clone()) {
            // The main thread stops the guest (flushing its pmem) and then exits.
            s.after_stop = AfterStop::ExitVmm;
            drop(s);
            stop.request(StopReason::Shutdown);
            return Ok((http::Response::no_content(), Then::Nothing));
        }
        Ok((http::Response::no_content(), Then::ExitVmm))
    }

    fn info(&self) -> Result<Value, ApiError> {
        let s = self.state.lock();
        let Some(config) = &s.config else {
            return Err(not_created());
        };
        let pmem = s
            .running
            .as_ref()
            .map_or(Value::Array(Vec::new()), |r| r.pmem_report.clone());
        Ok(json!({
            "config": vm_config::config_json(config),
            "state": s.state.name(),
            "memory_actual_size": config.memory,
            "pmem": pmem,
            "last_stop": s.last_stop,
        }))
    }

    fn counters(&self) -> Result<Value, ApiError> {
        let s = self.state.lock();
        let Some(config) = &s.config else {
            return Err(not_created());
        };
        let mut out = serde_json::Map::new();
        match &s.running {
            Some(r) => {
                if let Some(stats) = &r.stats {
                    let pages = stats
                        .read()
                        .map_err(|e| ApiError::new(500, e.to_string()))?;
                    out.insert(STAGE2_COUNTERS.into(), stage2_json(&pages));
                }
                for d in &r.devices {
                    let s = r.hints.stats(d.slot);
                    out.insert(
                        d.id.clone(),
                        json!({
                            "flush_requests": s.requests,
                            "host_flushes": s.host_flushes,
                            "failed_host_flushes": s.failed_host_flushes,
                            "largest_flush_batch": s.largest_batch,
                            "bytes_formatted": d.bytes_formatted,
                        }),
                    );
                }
            }
            None => {
                for p in &config.pmem {
                    out.insert(
                        p.id.clone(),
                        json!({
                            "flush_requests": 0,
                            "host_flushes": 0,
                            "failed_host_flushes": 0,
                            "largest_flush_batch": 0,
                            "bytes_formatted": 0,
                        }),
                    );
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn create(&self, body: &[u8]) -> Result<(), ApiError> {
        {
            let s = self.state.lock();
            if s.state != VmState::NotCreated {
                return Err(ApiError::new(
                    409,
                    format!(
                        "a VM is already created (state {}); PUT /api/v1/vm.delete first",
                        s.state.name()
                    ),
                ));
            }
        }
        let config = vm_config::parse_vm_config(body, self.host_memory)
            .map_err(|e| ApiError::new(400, e.0))?;
        self.command(CommandKind::Create(Box::new(config)))
    }

    fn boot(&self) -> Result<(), ApiError> {
        {
            let s = self.state.lock();
            match s.state {
                VmState::NotCreated => return Err(not_created()),
                VmState::Running => {
                    return Err(ApiError::new(409, "vm.boot: the VM is already running"))
                }
                VmState::Created | VmState::Shutdown => {}
            }
        }
        self.command(CommandKind::Boot)
    }

    /// Stops the running guest for `reason`; `wait`s until it has stopped.
    fn stop_running(
        &self,
        what: &str,
        reason: StopReason,
        after: AfterStop,
        wait: bool,
    ) -> Result<(), ApiError> {
        let mut s = self.state.lock();
        if s.state == VmState::NotCreated {
            return Err(not_created());
        }
        let Some(running) = &s.running else {
            return Err(not_booted(what));
        };
        let stop = running.stop.clone();
        if after != AfterStop::Nothing {
            s.after_stop = after;
        }
        drop(s);
        stop.request(reason);
        if wait
            && !self
                .state
                .wait_until(STOP_TIMEOUT, |s| s.state != VmState::Running)
        {
            return Err(ApiError::new(
                500,
                format!("{what}: the guest did not stop within {STOP_TIMEOUT:?}"),
            ));
        }
        Ok(())
    }

    /// Presses the ACPI power button: an edge on the GED's interrupt; the guest's `_EVT`
    /// notifies `\_SB.PWRB` (see `acpi::dsdt`). What the guest then does is its own business
    /// (acpid or systemd-logind power it off); the answer does not wait for it.
    fn power_button(&self) -> Result<(), ApiError> {
        let s = self.state.lock();
        if s.state == VmState::NotCreated {
            return Err(not_created());
        }
        let Some(running) = &s.running else {
            return Err(not_booted("vm.power-button"));
        };
        running
            .power_button
            .write(1)
            .map_err(|e| ApiError::new(500, format!("vm.power-button: {e}")))
    }

    /// NVDIMM hot-add: checked here for syntax and state, then done by the run loop, which
    /// runs the same checks as for a command-line device before anything is written.
    fn add_pmem(&self, body: &[u8]) -> Result<Value, ApiError> {
        let (hotplug, index) = {
            let s = self.state.lock();
            if s.state == VmState::NotCreated {
                return Err(not_created());
            }
            let Some(running) = &s.running else {
                return Err(ApiError::new(
                    405,
                    "vm.add-pmem: the VM is not running; put the device into vm.create's pmem list",
                ));
            };
            // The default id: the first `pmem<n>` no device has.
            let index = (0..)
                .find(|&n| {
                    let id = crate::pmem_option::default_id(n);
                    !running.devices.iter().any(|d| d.id == id)
                })
                .unwrap_or(0);
            (running.hotplug.clone(), index)
        };
        let config =
            vm_config::parse_pmem_body(body, index).map_err(|e| ApiError::new(400, e.0))?;
        let (reply, answer) = mpsc::channel();
        hotplug
            .add
            .send(HotAddRequest { config, reply })
            .map_err(|_| ApiError::new(409, "vm.add-pmem: the guest is stopping"))?;
        let _ = hotplug.wake.write(1);
        run_loop_answer(
            &answer,
            COMMAND_TIMEOUT,
            "vm.add-pmem",
            "the device was added; nothing was added",
        )
    }

    /// NVDIMM hot-remove: the id is checked here, then the run loop asks the guest to release
    /// the device and waits (at most the request's timeout) for its answer; only a guest that
    /// released it loses it. 409 when the guest refuses or does not answer: the device stays.
    fn remove_device(&self, body: &[u8]) -> Result<(), ApiError> {
        let (id, timeout) =
            vm_config::parse_remove_body(body).map_err(|e| ApiError::new(400, e.0))?;
        let hotplug = {
            let s = self.state.lock();
            if s.state == VmState::NotCreated {
                return Err(not_created());
            }
            let Some(running) = &s.running else {
                return Err(ApiError::new(
                    405,
                    "vm.remove-device: the VM is not running; take the device out of vm.create's pmem list",
                ));
            };
            if !running.devices.iter().any(|d| d.id == id) {
                let ids: Vec<&str> = running.devices.iter().map(|d| d.id.as_str()).collect();
                return Err(ApiError::new(
                    404,
                    format!(
                        "vm.remove-device: no device with id {id:?}; the guest has {}",
                        if ids.is_empty() {
                            "none".to_string()
                        } else {
                            ids.join(", ")
                        }
                    ),
                ));
            }
            running.hotplug.clone()
        };
        let (reply, answer) = mpsc::channel();
        hotplug
            .remove
            .send(RemoveRequest { id, timeout, reply })
            .map_err(|_| ApiError::new(409, "vm.remove-device: the guest is stopping"))?;
        let _ = hotplug.wake.write(1);
        // The run loop answers by the timeout (checked at least once a second) plus the time
        // the removal itself takes (an msync of the device).
        run_loop_answer(
            &answer,
            timeout + COMMAND_TIMEOUT,
            "vm.remove-device",
            "the device was removed; nothing was removed",
        )
    }

    /// `vm.set-pmem-health {"id", "health", "spares", "temperature"}`: changes what a DIMM's
    /// SMART reports and notifies the guest (`Notify (NVxx, 0x81)`) when anything changed.
    /// Served on this thread: the `_DSM` state has its own lock, and the notification is an
    /// irqfd write.
    fn set_pmem_health(&self, body: &[u8]) -> Result<(), ApiError> {
        const WHAT: &str = "vm.set-pmem-health";
        let (id, update) =
            vm_config::parse_health_body(body).map_err(|e| ApiError::new(400, e.0))?;
        let (dsm, device) = {
            let s = self.state.lock();
            if s.state == VmState::NotCreated {
                return Err(not_created());
            }
            let Some(running) = &s.running else {
                return Err(not_booted(WHAT));
            };
            let device = running.devices.iter().find(|d| d.id == id).cloned();
            (running.dsm.clone(), device)
        };
        let Some(device) = device else {
            return Err(ApiError::new(
                404,
                format!("{WHAT}: no pmem device has id {id:?}"),
            ));
        };
        let Some(index) = device.nfit_slot else {
            return Err(ApiError::new(
                409,
                format!("{WHAT}: {id} is a legacy E820 range (firmware=e820), which has no _DSM"),
            ));
        };
        match dsm.update_smart(index, update) {
            Ok(smart) => {
                log::info!(
                    "{id}: SMART health {}, spares {} %, temperature {} C",
                    smart.health,
                    smart.spares,
                    smart.temperature / 16
                );
                Ok(())
            }
            Err(SmartError::Value(e)) => Err(ApiError::new(400, format!("{WHAT}: {e}"))),
            Err(SmartError::NoSmart(_)) => Err(ApiError::new(
                409,
                format!(
                    "{WHAT}: {id} was started without health=, so its _DSM offers no SMART \
                     function (start it with health=ok to change its health later)"
                ),
            )),
            Err(e @ SmartError::NoDimm(_)) => Err(ApiError::new(500, format!("{WHAT}: {id}: {e}"))),
        }
    }

    fn delete(&self) -> Result<(), ApiError> {
        let (state, serves) = {
            let s = self.state.lock();
            (s.state, s.serves_commands)
        };
        match state {
            VmState::NotCreated => Ok(()),
            VmState::Running => self.stop_running(
                "vm.delete",
                StopReason::Shutdown,
                if serves {
                    AfterStop::Delete
                } else {
                    AfterStop::Nothing
                },
                true,
            ),
            VmState::Created | VmState::Shutdown => self.command(CommandKind::Delete),
        }
    }
}

/// `vmm.ping`'s answer (cloud-hypervisor's `VmmPingResponse`).
pub fn ping() -> Value {
    json!({
        "build_version": concat!("pmem-vmm ", env!("CARGO_PKG_VERSION")),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "features": ["nvdimm-nfit"],
    })
}

/// The `vm.counters` entry with KVM's stage-2 page counts of the running VM. A device id
/// cannot hold a '.', so no device's entry can have this name.
pub const STAGE2_COUNTERS: &str = "kvm.stage2";

/// KVM's names and counts (leaf entries of each size, for all memory slots together).
fn stage2_json(p: &crate::kvm_stats::Stage2Pages) -> Value {
    json!({
        "pages_4k": p.pages_4k,
        "pages_2m": p.pages_2m,
        "pages_1g": p.pages_1g,
    })
}

#[cfg(test)]
mod tests;
