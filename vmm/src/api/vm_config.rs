//! cloud-hypervisor's `VmConfig` JSON (the subset this monitor supports) ⇄ [`VmConfig`].
//!
//! The JSON is only translated: its fields become the same text the command line gives
//! (`--cpus`, `--memory`, `--serial`, the `--pmem` keys) and go through the same validation,
//! [`VmConfig::validate`] and [`pmem_from_pairs`]; `vm.create` then runs the same check phase
//! as a command-line start (`crate::check`). Unknown fields are refused by serde
//! (`deny_unknown_fields`), and every error names the JSON field (`pmem[1].size`,
//! `memory.size`, ...).

use std::path::PathBuf;

use devices::nvdimm_dsm::{HealthState, SmartUpdate};
use devices::pmem::options::AlignName;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{SerialMode, VmConfig, VmSpec, DEFAULT_CMDLINE, MAX_PMEM_DEVICES};
use crate::pmem_option::{pmem_from_pairs, PmemConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmConfigJson {
    payload: PayloadJson,
    #[serde(default)]
    cpus: Option<CpusJson>,
    #[serde(default)]
    memory: Option<MemoryJson>,
    #[serde(default)]
    serial: Option<SerialJson>,
    #[serde(default)]
    pmem: Option<Vec<PmemJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayloadJson {
    kernel: Option<String>,
    initramfs: Option<String>,
    cmdline: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CpusJson {
    boot_vcpus: u32,
    max_vcpus: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryJson {
    size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialJson {
    mode: String,
    file: Option<String>,
    iommu: Option<bool>,
}

/// One `pmem` entry of `vm.create`, and the body of `vm.add-pmem`. `iommu` and `pci_segment`
/// are accepted with their default values because `ch-remote add-pmem` always sends them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemJson {
    file: String,
    size: Option<u64>,
    discard_writes: Option<bool>,
    id: Option<String>,
    iommu: Option<bool>,
    pci_segment: Option<u16>,
    memmap: Option<String>,
    mode: Option<String>,
    align: Option<String>,
    format: Option<String>,
    /// `nfit` (default) or `e820`, as `--pmem ...,firmware=`.
    firmware: Option<String>,
    numa: Option<u32>,
    /// `labels=on|off`.
    labels: Option<bool>,
    /// `label-size=` in bytes.
    label_size: Option<u64>,
    /// `health=`.
    health: Option<String>,
}

/// A request body that is not a valid configuration: the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadConfig(pub String);

fn deserialize<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BadConfig> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(BadConfig(
            "invalid JSON body: expected a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" || path.is_empty() || inner.is_syntax() || inner.is_eof() {
            BadConfig(format!("invalid JSON body: {inner}"))
        } else {
            BadConfig(format!("{path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| BadConfig(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

impl PmemJson {
    /// The device as `--pmem` keys, validated by the command line's own validation.
    pub fn to_config(&self, field: &str, index: usize) -> Result<PmemConfig, BadConfig> {
        if self.iommu == Some(true) {
            return Err(BadConfig(format!(
                "{field}.iommu: an NVDIMM is not behind an IOMMU; expected false"
            )));
        }
        if self.pci_segment.is_some_and(|s| s != 0) {
            return Err(BadConfig(format!(
                "{field}.pci_segment: NVDIMMs are not PCI devices; expected 0"
            )));
        }
        let size = self.size.map(|s| format!("{s}B"));
        let numa = self.numa.map(|n| n.to_string());
        let readonly = self.discard_writes.map(|d| if d { "on" } else { "off" });
        let labels = self.labels.map(|d| if d { "on" } else { "off" });
        let label_size = self.label_size.map(|s| format!("{s}B"));
        let mut pairs: Vec<(&str, &str)> = vec![("path", self.file.as_str())];
        for (key, value) in [
            ("size", size.as_deref()),
            ("readonly", readonly),
            ("id", self.id.as_deref()),
            ("numa", numa.as_deref()),
            ("memmap", self.memmap.as_deref()),
            ("mode", self.mode.as_deref()),
            ("align", self.align.as_deref()),
            ("format", self.format.as_deref()),
            ("firmware", self.firmware.as_deref()),
            ("labels", labels),
            ("label-size", label_size.as_deref()),
            ("health", self.health.as_deref()),
        ] {
            if let Some(v) = value {
                pairs.push((key, v));
            }
        }
        pmem_from_pairs(&pairs, index).map_err(|reason| {
            // The --pmem keys that are named differently in the JSON.
            let reason = reason.to_string().replacen("path=", "file=", 1).replacen(
                "readonly=",
                "discard_writes=",
                1,
            );
            let reason = reason.replace("label-size=", "label_size=");
            BadConfig(format!("{field}: {reason}"))
        })
    }
}

/// The body of `vm.remove-device`: cloud-hypervisor's `VmRemoveDeviceData` (`id`), and our
/// `timeout_ms`, how long the guest has to release the device (default
/// [`REMOVE_TIMEOUT_DEFAULT`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveDeviceJson {
    id: String,
    timeout_ms: Option<u64>,
}

/// How long the guest has to answer an eject request when the request names no time.
pub const REMOVE_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest `timeout_ms` accepted: the API thread serves nothing else meanwhile.
pub const REMOVE_TIMEOUT_MAX_MS: u64 = 120_000;

/// Parses the body of `vm.remove-device`: the device's id and how long the guest has.
pub fn parse_remove_body(body: &[u8]) -> Result<(String, std::time::Duration), BadConfig> {
    let json: RemoveDeviceJson = deserialize(body)?;
    if json.id.is_empty() {
        return Err(BadConfig("id: expected the id of a device".into()));
    }
    let timeout = match json.timeout_ms {
        None => REMOVE_TIMEOUT_DEFAULT,
        Some(ms) if (1..=REMOVE_TIMEOUT_MAX_MS).contains(&ms) => {
            std::time::Duration::from_millis(ms)
        }
        Some(ms) => {
            return Err(BadConfig(format!(
                "timeout_ms: {ms} is not between 1 and {REMOVE_TIMEOUT_MAX_MS}"
            )))
        }
    };
    Ok((json.id, timeout))
}

/// Parses the body of `vm.add-pmem`; `index` numbers the default id.
pub fn parse_pmem_body(body: &[u8], index: usize) -> Result<PmemConfig, BadConfig> {
    let json: PmemJson = deserialize(body)?;
    json.to_config("pmem", index)
}

/// `vm.set-pmem-health`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthJson {
    id: String,
    health: Option<String>,
    spares: Option<u8>,
    temperature: Option<u16>,
}

/// Parses the body of `vm.set-pmem-health`: the device id and the change (at least one value).
pub fn parse_health_body(body: &[u8]) -> Result<(String, SmartUpdate), BadConfig> {
    let json: HealthJson = deserialize(body)?;
    let health = match &json.health {
        None => None,
        Some(h) => Some(
            h.parse::<HealthState>()
                .map_err(|e| BadConfig(e.to_string().replacen("health=", "health: ", 1)))?,
        ),
    };
    let update = SmartUpdate {
        health,
        spares: json.spares,
        temperature: json.temperature,
    };
    if update == SmartUpdate::default() {
        return Err(BadConfig(
            "nothing to change: expected health, spares or temperature".into(),
        ));
    }
    Ok((json.id, update))
}

/// Parses and validates the body of `vm.create`.
pub fn parse_vm_config(body: &[u8], host_memory: Option<u64>) -> Result<VmConfig, BadConfig> {
    let json: VmConfigJson = deserialize(body)?;
    let kernel = json
        .payload
        .kernel
        .filter(|k| !k.is_empty())
        .ok_or_else(|| BadConfig("payload.kernel: a kernel is required".into()))?;
    let (boot, max) = match &json.cpus {
        Some(c) => (c.boot_vcpus, c.max_vcpus.unwrap_or(c.boot_vcpus)),
        None => (1, 1),
    };
    if max != boot {
        return Err(BadConfig(format!(
            "cpus.max_vcpus: {max} differs from boot_vcpus {boot}; vCPU hotplug is not supported"
        )));
    }
    let memory = json.memory.as_ref().map_or(512 << 20, |m| m.size);
    let serial = match &json.serial {
        None => "off".to_string(),
        Some(s) => {
            if s.iommu == Some(true) {
                return Err(BadConfig("serial.iommu: expected false".into()));
            }
            match (s.mode.as_str(), &s.file) {
                ("Off" | "Null", None) => "off".into(),
                ("Tty", None) => "stdio".into(),
                ("File", Some(f)) if !f.is_empty() => format!("file={f}"),
                ("File", _) => {
                    return Err(BadConfig("serial.file: mode File needs a file path".into()))
                }
                ("Off" | "Null" | "Tty", Some(_)) => {
                    return Err(BadConfig(format!(
                        "serial.file: only mode File takes a file, not mode {}",
                        s.mode
                    )))
                }
                (other, _) => {
                    return Err(BadConfig(format!(
                        "serial.mode: {other:?} is not supported; expected Off, Null, Tty or File"
                    )))
                }
            }
        }
    };
    let entries = json.pmem.unwrap_or_default();
    if entries.len() > MAX_PMEM_DEVICES {
        return Err(BadConfig(format!(
            "pmem: {} devices; at most {MAX_PMEM_DEVICES} per guest",
            entries.len()
        )));
    }
    let mut pmem = Vec::with_capacity(entries.len());
    for (i, p) in entries.iter().enumerate() {
        let field = format!("pmem[{i}]");
        let config = p.to_config(&field, i)?;
        pmem.push((field, config));
    }
    let spec = VmSpec {
        kernel: PathBuf::from(kernel),
        initramfs: json.payload.initramfs.map(PathBuf::from),
        cmdline: json
            .payload
            .cmdline
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
        cpus: boot.to_string(),
        memory: format!("{memory}B"),
        serial,
        report: None,
        pmem,
        // cloud-hypervisor's VmConfig has no such setting: API-created VMs keep HLT exits.
        halt_in_guest: false,
    };
    VmConfig::validate(spec, host_memory).map_err(|e| {
        let crate::config::ConfigError::Invalid {
            option,
            value,
            reason,
        } = e;
        let field = match option {
            "cpus" => "cpus.boot_vcpus",
            "memory" => "memory.size",
            "cmdline" => "payload.cmdline",
            other => other,
        };
        if option == "pmem" {
            // value is already the field, pmem[i]
            BadConfig(format!("{value}: {reason}"))
        } else {
            BadConfig(format!("{field} {value:?}: {reason}"))
        }
    })
}

/// The configuration as applied, in cloud-hypervisor's shape plus our pmem keys.
pub fn config_json(cfg: &VmConfig) -> Value {
    let serial = match &cfg.serial {
        SerialMode::Stdio => json!({ "mode": "Tty" }),
        SerialMode::Off => json!({ "mode": "Off" }),
        SerialMode::File(p) => json!({ "mode": "File", "file": p.display().to_string() }),
    };
    let pmem: Vec<Value> = cfg.pmem.iter().map(pmem_json).collect();
    json!({
        "payload": {
            "kernel": cfg.kernel.display().to_string(),
            "initramfs": cfg.initramfs.as_ref().map(|p| p.display().to_string()),
            "cmdline": cfg.cmdline,
        },
        "cpus": { "boot_vcpus": cfg.cpus, "max_vcpus": cfg.cpus },
        "memory": { "size": cfg.memory },
        "serial": serial,
        "pmem": pmem,
    })
}

/// One device's configuration in the `pmem` entry shape.
pub fn pmem_json(p: &PmemConfig) -> Value {
    json!({
        "file": p.path.display().to_string(),
        "size": p.size,
        "discard_writes": p.readonly,
        "id": p.id,
        "memmap": p.memmap.to_string(),
        "mode": p.mode.map(|m| m.to_string()),
        "align": p.align.map(|a| AlignName(a).to_string()),
        "format": p.format.to_string(),
        "firmware": p.firmware.as_str(),
        "numa": p.numa,
        "labels": p.label_size.is_some(),
        "label_size": p.label_size,
        "health": p.health.map(|h| h.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse_vm_config(body.as_bytes(), Some(8 << 30))
            .map(|_| ())
            .unwrap_err()
            .0
    }

    #[test]
    fn a_full_config_translates_to_the_cli_values() {
        let c = parse_vm_config(
            br#"{"payload":{"kernel":"/k","initramfs":"/i","cmdline":"console=ttyS0 quiet"},
                "cpus":{"boot_vcpus":2,"max_vcpus":2},"memory":{"size":1073741824},
                "serial":{"mode":"File","file":"/tmp/con"},
                "pmem":[{"file":"/p0","size":134217728,"discard_writes":true,"id":"a",
                         "iommu":false,"pci_segment":0,"memmap":"pmem","mode":"devdax",
                         "align":"2M","format":"keep","numa":0},
                        {"file":"/p,1=x"}]}"#,
            Some(8 << 30),
        )
        .unwrap();
        assert_eq!((c.cpus, c.memory), (2, 1 << 30));
        assert_eq!(c.serial, SerialMode::File("/tmp/con".into()));
        assert_eq!(c.pmem.len(), 2);
        assert!(c.pmem[0].readonly);
        assert_eq!(c.pmem[0].size, Some(128 << 20));
        assert_eq!(c.pmem[0].align, Some(2 << 20));
        assert_eq!(c.pmem[1].path, PathBuf::from("/p,1=x"), "no CLI splitting");
        assert_eq!(c.pmem[1].id, "pmem1");
        let back = config_json(&c);
        assert_eq!(back["pmem"][0]["mode"], "devdax");
        assert_eq!(back["serial"]["mode"], "File");
        // Minimal: defaults as on the command line, serial off.
        let c = parse_vm_config(br#"{"payload":{"kernel":"/k"}}"#, None).unwrap();
        assert_eq!((c.cpus, c.memory), (1, 512 << 20));
        assert_eq!(c.serial, SerialMode::Off);
    }

    #[test]
    fn errors_name_the_field() {
        for (body, needle) in [
            ("{", "invalid JSON body"),
            ("[]", "invalid JSON body"),
            (r#"{"payload":{"kernel":"/k"}} x"#, "invalid JSON body"),
            (r#"{"payload":{}}"#, "payload.kernel"),
            (
                r#"{"payload":{"kernel":"/k"},"disks":[]}"#,
                "unknown field `disks`",
            ),
            (
                r#"{"payload":{"kernel":"/k","firmware":"/f"}}"#,
                "payload.firmware: unknown field `firmware`",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":"2"}}"#,
                "cpus.boot_vcpus: invalid type",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":0}}"#,
                "cpus.boot_vcpus \"0\"",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":1,"max_vcpus":4}}"#,
                "cpus.max_vcpus",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"memory":{"size":1024}}"#,
                "memory.size",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"memory":{"size":-1}}"#,
                "memory.size: invalid value",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Pty"}}"#,
                "serial.mode",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"serial":{"mode":"File"}}"#,
                "serial.file",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"payload":{"kernel":"/k"}}"#,
                "duplicate field",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"size":1}]}"#,
                "pmem[0]: missing field `file`",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"file":"/a","size":0}]}"#,
                "pmem[0]: size=0",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"file":"/a","iommu":true}]}"#,
                "pmem[0].iommu",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"file":"/a","pci_segment":1}]}"#,
                "pmem[0].pci_segment",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"file":"/a","memmap":"dev"}]}"#,
                "pmem[0]: memmap=dev",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"file":"/a","numa":300}]}"#,
                "pmem[0]: numa=300",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"file":"/a","colour":"red"}]}"#,
                "pmem[0].colour: unknown field `colour`",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"file":"/a"},{"file":"/b","id":"pmem0"}]}"#,
                "pmem[1]: id=pmem0 is already used",
            ),
            (
                r#"{"payload":{"kernel":"/k"},"pmem":[{"file":""}]}"#,
                "pmem[0]: file= needs a value",
            ),
        ] {
            let e = err(body);
            assert!(e.contains(needle), "{body}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn add_pmem_bodies() {
        let p = parse_pmem_body(
            br#"{"file":"/x","size":2097152,"iommu":false,"discard_writes":false,"id":"hot","pci_segment":0}"#,
            3,
        )
        .unwrap();
        assert_eq!(
            (p.id.as_str(), p.size, p.readonly),
            ("hot", Some(2 << 20), false)
        );
        let p = parse_pmem_body(br#"{"file":"/x"}"#, 3).unwrap();
        assert_eq!(p.id, "pmem3");
        let e = parse_pmem_body(br#"{"file":"/x","mode":"sector"}"#, 0)
            .unwrap_err()
            .0;
        assert!(e.starts_with("pmem: mode=sector"), "{e}");
        let e = parse_pmem_body(br#"{"file":5}"#, 0).unwrap_err().0;
        assert!(e.starts_with("file: invalid type"), "{e}");
    }
}
