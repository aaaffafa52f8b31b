//! Every refusal of the controller: status, one-line message naming what was wrong, and
//! nothing changed (no command reached the main thread, the state is as before).

use std::sync::{Arc, Mutex};

use super::*;
use crate::config::{SerialMode, VmConfig};

struct Fixture {
    controller: Controller,
    /// The commands the fake main thread received.
    seen: Arc<Mutex<Vec<&'static str>>>,
    /// The running guest's `_DSM` state: three NFIT DIMMs without label areas.
    dsm: Arc<NvdimmDsm>,
    /// The running VM's KVM statistics: a recorded file whose page counts a test may change.
    stats_file: tempfile::NamedTempFile,
}

/// A statistics reader over `file`, which starts as the recorded file with 300 4K, 64 2M and
/// one 1G page.
fn recorded_stats(file: &tempfile::NamedTempFile) -> crate::kvm_stats::VmStats {
    set_recorded_pages(file, [300, 64, 1]);
    crate::kvm_stats::VmStats::from_file(file.reopen().unwrap()).unwrap()
}

fn set_recorded_pages(file: &tempfile::NamedTempFile, pages: [u64; 3]) {
    use std::os::unix::fs::FileExt;
    let blob = crate::kvm_stats::recorded::with_pages(pages);
    file.as_file().write_all_at(&blob, 0).unwrap();
}

fn fixture() -> Fixture {
    let state = ApiState::new(true);
    let (commands, incoming) = mpsc::channel::<Command>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_in_thread = seen.clone();
    let main_state = state.clone();
    std::thread::spawn(move || {
        for cmd in incoming {
            let name = match cmd.kind {
                CommandKind::Create(cfg) => {
                    main_state.update(|s| {
                        s.state = VmState::Created;
                        s.config = Some(*cfg);
                    });
                    "create"
                }
                CommandKind::Boot => "boot",
                CommandKind::Delete => {
                    main_state.update(|s| {
                        s.state = VmState::NotCreated;
                        s.config = None;
                    });
                    "delete"
                }
                CommandKind::ExitVmm => "exit",
            };
            seen_in_thread.lock().unwrap().push(name);
            let _ = cmd.reply.send(Ok(()));
        }
    });
    Fixture {
        controller: Controller {
            state,
            commands,
            commands_wake: Arc::new(
                vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
            ),
            host_memory: Some(8 << 30),
        },
        seen,
        dsm: Arc::new(NvdimmDsm::new(vec![None, None, None])),
        stats_file: tempfile::NamedTempFile::new().unwrap(),
    }
}

fn request(method: &str, path: &str, body: &str) -> http::Request {
    http::Request {
        method: match method {
            "GET" => http::Method::Get,
            "PUT" => http::Method::Put,
            _ => http::Method::Other,
        },
        method_text: method.into(),
        path: path.into(),
        body: body.as_bytes().to_vec(),
    }
}

impl Fixture {
    fn call(&self, method: &str, endpoint: &str, body: &str) -> (u16, Value) {
        let (r, _) = self
            .controller
            .handle(&request(method, &format!("/api/v1/{endpoint}"), body));
        let value = r
            .body
            .as_deref()
            .map_or(Value::Null, |b| serde_json::from_str(b).unwrap());
        (r.status, value)
    }

    /// A refusal: the status, and the one message, which must contain `needle`.
    fn refused(&self, method: &str, endpoint: &str, body: &str, status: u16, needle: &str) {
        let before = self.seen.lock().unwrap().len();
        let state_before = self.controller.state.lock().state;
        let (got, value) = self.call(method, endpoint, body);
        assert_eq!(got, status, "{method} {endpoint} {body}: {value}");
        let message = value[0].as_str().expect("an array with one message");
        assert!(message.contains(needle), "{method} {endpoint}: {message}");
        assert!(!message.contains('\n'));
        assert_eq!(
            self.seen.lock().unwrap().len(),
            before,
            "nothing reached the VM"
        );
        assert_eq!(self.controller.state.lock().state, state_before);
    }

    /// Pretends the main thread booted the VM; its run loop answers `vm.add-pmem` with
    /// `answer` (or, with None, stops before answering).
    fn set_running(&self) -> Arc<StopSignal> {
        self.set_running_with(Some(Ok(json!({ "id": "x", "bdf": "0000:00:00.0" }))))
    }

    fn set_running_with(&self, answer: Option<Result<Value, ApiError>>) -> Arc<StopSignal> {
        let (requests, queue) = mpsc::channel::<HotAddRequest>();
        let (removals, removal_queue) = mpsc::channel::<RemoveRequest>();
        let seen = self.seen.clone();
        // The run loop's removals: "data" is released, "busy" refused, anything else unknown.
        let seen_removals = self.seen.clone();
        std::thread::spawn(move || {
            for request in removal_queue {
                seen_removals.lock().unwrap().push("remove-device");
                let answer = match request.id.as_str() {
                    "data" => Ok(()),
                    _ => Err(ApiError::new(
                        409,
                        format!("guest refused to release {}: in use", request.id),
                    )),
                };
                let _ = request.reply.send(answer);
            }
        });
        std::thread::spawn(move || {
            for request in queue {
                seen.lock().unwrap().push("add-pmem");
                match &answer {
                    Some(a) => {
                        let _ = request.reply.send(a.clone());
                    }
                    None => return, // the run loop stopped: the reply is dropped
                }
            }
        });
        let stop = Arc::new(StopSignal::new().unwrap());
        let cfg = VmConfig {
            kernel: "/k".into(),
            initramfs: None,
            cmdline: "console=ttyS0".into(),
            cpus: 1,
            memory: 512 << 20,
            serial: SerialMode::Off,
            pmem: vec![crate::pmem_option::parse_pmem("path=/p,id=data", 0).unwrap()],
            report: None,
            halt_in_guest: false,
        };
        self.controller.state.started(
            &cfg,
            RunningVm {
                stop: stop.clone(),
                power_button: Arc::new(
                    vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                        .unwrap(),
                ),
                pmem_report: json!([{ "id": "data", "mode": "fsdax" }]),
                hints: Arc::new(FlushHints::new(vec![None])),
                devices: vec![
                    ApiDevice {
                        id: "data".into(),
                        slot: 0,
                        bytes_formatted: 4096,
                        nfit_slot: Some(0),
                    },
                    ApiDevice {
                        id: "busy".into(),
                        slot: 1,
                        bytes_formatted: 0,
                        nfit_slot: Some(1),
                    },
                    ApiDevice {
                        id: "plain".into(),
                        slot: 2,
                        bytes_formatted: 0,
                        nfit_slot: Some(2),
                    },
                    ApiDevice {
                        id: "legacy".into(),
                        slot: 3,
                        bytes_formatted: 0,
                        nfit_slot: None,
                    },
                ],
                dsm: self.dsm.clone(),
                hotplug: HotPlug {
                    add: requests,
                    remove: removals,
                    wake: Arc::new(
                        vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                            .unwrap(),
                    ),
                },
                stats: Some(Arc::new(recorded_stats(&self.stats_file))),
            },
        );
        stop
    }
}

#[test]
fn paths_and_methods() {
    let f = fixture();
    let (status, ping) = f.call("GET", "vmm.ping", "");
    assert_eq!(status, 200);
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    let (r, _) = f.controller.handle(&request("GET", "/v1/vmm.ping", ""));
    assert_eq!(r.status, 404);
    f.refused("GET", "vm.nonsense", "", 404, "no such endpoint");
    f.refused("PUT", "vm.pause", "", 404, "not supported");
    f.refused("PUT", "vm.snapshot", "{}", 404, "not supported");
    f.refused("PUT", "vmm.ping", "", 405, "use GET");
    f.refused("GET", "vm.boot", "", 405, "use PUT");
    f.refused("DELETE", "vm.create", "", 405, "DELETE vm.create: use PUT");
    f.refused("GET", "vm.info", "x", 400, "takes no body");
    f.refused("PUT", "vm.boot", "{}", 400, "takes no body");
}

#[test]
fn wrong_states() {
    let f = fixture();
    f.refused("GET", "vm.info", "", 404, "no VM is created");
    f.refused("GET", "vm.counters", "", 404, "no VM is created");
    f.refused("PUT", "vm.boot", "", 404, "no VM is created");
    f.refused("PUT", "vm.shutdown", "", 404, "no VM is created");
    f.refused("PUT", "vm.reboot", "", 404, "no VM is created");
    f.refused("PUT", "vm.power-button", "", 404, "no VM is created");
    // Deleting nothing is not an error (and asks the main thread nothing).
    assert_eq!(f.call("PUT", "vm.delete", "").0, 204);
    assert!(f.seen.lock().unwrap().is_empty());

    assert_eq!(
        f.call("PUT", "vm.create", r#"{"payload":{"kernel":"/k"}}"#)
            .0,
        204
    );
    assert_eq!(*f.seen.lock().unwrap(), ["create"]);
    f.refused(
        "PUT",
        "vm.create",
        r#"{"payload":{"kernel":"/k"}}"#,
        409,
        "already created",
    );
    f.refused("PUT", "vm.shutdown", "", 405, "not running");
    f.refused("PUT", "vm.reboot", "", 405, "not running");
    f.refused("PUT", "vm.power-button", "", 405, "not running");
    let (status, info) = f.call("GET", "vm.info", "");
    assert_eq!(status, 200);
    assert_eq!(info["state"], "Created");
    assert_eq!(info["config"]["payload"]["kernel"], "/k");
    assert_eq!(f.call("PUT", "vm.delete", "").0, 204);
    assert_eq!(*f.seen.lock().unwrap(), ["create", "delete"]);
    f.refused("GET", "vm.info", "", 404, "no VM is created");
}

#[test]
fn bad_configurations_change_nothing() {
    let f = fixture();
    for (body, needle) in [
        ("", "invalid JSON body"),
        ("{", "invalid JSON body"),
        ("null", "invalid JSON body"),
        (
            r#"{"payload":{"kernel":"/k"},"net":[]}"#,
            "unknown field `net`",
        ),
        (
            r#"{"payload":{"kernel":3}}"#,
            "payload.kernel: invalid type",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"memory":{"size":"1G"}}"#,
            "memory.size",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"pmem":[{"file":"/a","size":0}]}"#,
            "pmem[0]: size=0",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"pmem":{"file":"/a"}}"#,
            "pmem: invalid type",
        ),
    ] {
        f.refused("PUT", "vm.create", body, 400, needle);
    }
}

#[test]
fn a_running_vm() {
    let f = fixture();
    let stop = f.set_running();
    f.refused(
        "PUT",
        "vm.create",
        r#"{"payload":{"kernel":"/k"}}"#,
        409,
        "already created (state Running)",
    );
    f.refused("PUT", "vm.boot", "", 409, "already running");
    let (status, info) = f.call("GET", "vm.info", "");
    assert_eq!(status, 200);
    assert_eq!(info["state"], "Running");
    assert_eq!(info["pmem"][0]["mode"], "fsdax");
    assert_eq!(info["config"]["pmem"][0]["id"], "data");
    let (status, counters) = f.call("GET", "vm.counters", "");
    assert_eq!(status, 200);
    assert_eq!(
        counters["data"],
        json!({
            "flush_requests": 0,
            "host_flushes": 0,
            "failed_host_flushes": 0,
            "largest_flush_batch": 0,
            "bytes_formatted": 4096
        })
    );
    // KVM's stage-2 counts, read from the statistics file at each request.
    assert_eq!(
        counters[STAGE2_COUNTERS],
        json!({ "pages_4k": 300, "pages_2m": 64, "pages_1g": 1 })
    );
    set_recorded_pages(&f.stats_file, [5, 6, 0]);
    let (_, counters) = f.call("GET", "vm.counters", "");
    assert_eq!(
        counters[STAGE2_COUNTERS],
        json!({ "pages_4k": 5, "pages_2m": 6, "pages_1g": 0 })
    );
    // vm.power-button raises the GED's interrupt.
    assert_eq!(f.call("PUT", "vm.power-button", "").0, 204);
    let pressed = f
        .controller
        .state
        .lock()
        .running
        .as_ref()
        .unwrap()
        .power_button
        .read();
    assert_eq!(pressed.unwrap(), 1);
    // vm.reboot asks for a reboot and does not wait.
    assert_eq!(f.call("PUT", "vm.reboot", "").0, 204);
    assert_eq!(stop.reason(), Some(StopReason::Reboot));
    assert!(f.seen.lock().unwrap().is_empty());
}

#[test]
fn shutdown_waits_for_the_guest_to_stop() {
    let f = fixture();
    let stop = f.set_running();
    let state = f.controller.state.clone();
    let main = std::thread::spawn(move || {
        while stop.reason().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stop.reason(), Some(StopReason::Shutdown));
        state.stopped("Shutdown".into())
    });
    assert_eq!(f.call("PUT", "vm.shutdown", "").0, 204);
    assert_eq!(main.join().unwrap(), AfterStop::Nothing);
    let (_, info) = f.call("GET", "vm.info", "");
    assert_eq!(info["state"], "Shutdown");
    assert_eq!(info["last_stop"], "Shutdown");
}

#[test]
fn vmm_shutdown_while_running_stops_the_guest_first() {
    let f = fixture();
    let stop = f.set_running();
    let (r, then) = f
        .controller
        .handle(&request("PUT", "/api/v1/vmm.shutdown", ""));
    assert_eq!(r.status, 204);
    assert!(
        matches!(then, Then::Nothing),
        "the main thread exits after the stop"
    );
    assert_eq!(stop.reason(), Some(StopReason::Shutdown));
    assert_eq!(f.controller.state.stopped("x".into()), AfterStop::ExitVmm);
    // Idle: the API thread tells the main thread after answering.
    let (r, then) = f
        .controller
        .handle(&request("PUT", "/api/v1/vmm.shutdown", ""));
    assert_eq!(r.status, 204);
    assert!(matches!(then, Then::ExitVmm));
}

#[test]
fn add_pmem_refusals() {
    let f = fixture();
    let body = r#"{"file":"/x","size":2097152}"#;
    f.refused("PUT", "vm.add-pmem", body, 404, "no VM is created");
    f.refused("GET", "vm.add-pmem", "", 405, "use PUT");
    assert_eq!(
        f.call("PUT", "vm.create", r#"{"payload":{"kernel":"/k"}}"#)
            .0,
        204
    );
    f.seen.lock().unwrap().clear();
    f.refused("PUT", "vm.add-pmem", body, 405, "not running");
    f.set_running();
    for (bad, needle) in [
        ("", "invalid JSON body"),
        ("{", "invalid JSON body"),
        (r#"{"size":2097152}"#, "missing field `file`"),
        (r#"{"file":"/x","colour":1}"#, "colour: unknown field"),
        (r#"{"file":"/x","size":"2M"}"#, "size: invalid type"),
        (r#"{"file":"/x","size":0}"#, "pmem: size=0"),
        (r#"{"file":"/x","mode":"sector"}"#, "pmem: mode=sector"),
        (r#"{"file":"/x","iommu":true}"#, "pmem.iommu"),
        (r#"{"file":"/x","id":"a b"}"#, "pmem: id=a b"),
    ] {
        f.refused("PUT", "vm.add-pmem", bad, 400, needle);
    }
    // A valid body reaches the run loop, whose answer is passed on.
    let (status, v) = f.call("PUT", "vm.add-pmem", body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({ "id": "x", "bdf": "0000:00:00.0" }));
    assert_eq!(*f.seen.lock().unwrap(), ["add-pmem"]);
}

#[test]
fn add_pmem_passes_on_the_run_loops_refusal_and_a_stop() {
    let f = fixture();
    f.set_running_with(Some(Err(ApiError::new(
        409,
        "pmem file=/x: it is the backing of data",
    ))));
    let (status, v) = f.call("PUT", "vm.add-pmem", r#"{"file":"/x"}"#);
    assert_eq!(status, 409);
    assert!(v[0].as_str().unwrap().contains("backing of data"), "{v}");
    let f = fixture();
    f.set_running_with(None);
    let (status, v) = f.call("PUT", "vm.add-pmem", r#"{"file":"/x"}"#);
    assert_eq!(status, 409, "{v}");
    assert!(v[0].as_str().unwrap().contains("nothing was added"), "{v}");
}

#[test]
fn set_pmem_health() {
    use devices::nvdimm_dsm::HealthState;
    let f = fixture();
    let body = r#"{"id":"data","health":"critical"}"#;
    f.refused("PUT", "vm.set-pmem-health", body, 404, "no VM is created");
    f.set_running();
    // "data" was started with health=ok; "plain" without; "legacy" is an E820 range.
    f.dsm.set_health(0, Some(HealthState::Ok));
    for (body, status, says) in [
        ("", 400, "invalid JSON body"),
        ("[]", 400, "expected a JSON object"),
        (r#"{"health":"ok"}"#, 400, "missing field `id`"),
        (r#"{"id":"data"}"#, 400, "nothing to change"),
        (
            r#"{"id":"data","health":"sick"}"#,
            400,
            "health: sick: unknown value",
        ),
        (
            r#"{"id":"data","spares":101}"#,
            400,
            "spares=101: expected a percentage",
        ),
        (r#"{"id":"data","spares":-1}"#, 400, "spares: invalid value"),
        (r#"{"id":"data","temperature":500}"#, 400, "temperature=500"),
        (
            r#"{"id":"data","colour":"red"}"#,
            400,
            "unknown field `colour`",
        ),
        (
            r#"{"id":"nope","health":"ok"}"#,
            404,
            "no pmem device has id \"nope\"",
        ),
        (
            r#"{"id":"plain","health":"ok"}"#,
            409,
            "plain was started without health=",
        ),
        (r#"{"id":"legacy","health":"ok"}"#, 409, "legacy E820 range"),
    ] {
        f.refused("PUT", "vm.set-pmem-health", body, status, says);
    }
    assert_eq!(
        f.dsm.smart(0).unwrap().health,
        HealthState::Ok,
        "nothing changed"
    );
    assert_eq!(f.call("PUT", "vm.set-pmem-health", body).0, 204);
    assert_eq!(
        f.call(
            "PUT",
            "vm.set-pmem-health",
            r#"{"id":"data","spares":3,"temperature":70}"#
        )
        .0,
        204
    );
    let smart = f.dsm.smart(0).unwrap();
    assert_eq!(
        (smart.health, smart.spares, smart.temperature),
        (HealthState::Critical, 3, 70 * 16)
    );
    f.refused("GET", "vm.set-pmem-health", "", 405, "use PUT");
}

#[test]
fn remove_device_refusals_and_answers() {
    let f = fixture();
    let body = r#"{"id":"data"}"#;
    f.refused("PUT", "vm.remove-device", body, 404, "no VM is created");
    f.refused("GET", "vm.remove-device", "", 405, "use PUT");
    assert_eq!(
        f.call("PUT", "vm.create", r#"{"payload":{"kernel":"/k"}}"#)
            .0,
        204
    );
    f.seen.lock().unwrap().clear();
    f.refused("PUT", "vm.remove-device", body, 405, "not running");
    f.set_running();
    for (bad, status, needle) in [
        ("", 400, "invalid JSON body"),
        ("[]", 400, "invalid JSON body"),
        (r#"{}"#, 400, "missing field `id`"),
        (r#"{"id":""}"#, 400, "id: expected the id of a device"),
        (r#"{"id":5}"#, 400, "id: invalid type"),
        (r#"{"id":"data","force":true}"#, 400, "force: unknown field"),
        (
            r#"{"id":"data","timeout_ms":0}"#,
            400,
            "timeout_ms: 0 is not between",
        ),
        (
            r#"{"id":"data","timeout_ms":120001}"#,
            400,
            "timeout_ms: 120001",
        ),
        (
            r#"{"id":"pmem7"}"#,
            404,
            "no device with id \"pmem7\"; the guest has data, busy, plain, legacy",
        ),
    ] {
        f.refused("PUT", "vm.remove-device", bad, status, needle);
    }
    // A known id reaches the run loop, whose answer is passed on: 204, or its refusal.
    let (status, v) = f.call(
        "PUT",
        "vm.remove-device",
        r#"{"id":"data","timeout_ms":500}"#,
    );
    assert_eq!(status, 204, "{v}");
    let (status, v) = f.call("PUT", "vm.remove-device", r#"{"id":"busy"}"#);
    assert_eq!(status, 409, "{v}");
    assert_eq!(v[0], "guest refused to release busy: in use");
    assert_eq!(*f.seen.lock().unwrap(), ["remove-device", "remove-device"]);
}
