//! The `--pmem` option: `path=PATH[,size=SIZE][,readonly=on|off][,id=NAME][,numa=NODE]...`.
//!
//! Like cloud-hypervisor's device options it is a comma-separated list of `key=value` pairs;
//! every error names the option, the key and what was expected.

use std::collections::HashSet;
use std::path::PathBuf;

use devices::nvdimm_dsm::HealthState;
use devices::pmem::format::{parse_align, FormatPolicy, Memmap, NsMode};
use devices::pmem::labels::{check_label_size, LabelSizeError, LABEL_SIZE_MIN};
use devices::pmem::options::OptionValueError;
use thiserror::Error;

use crate::size::{parse_size, SizeError};

/// The `--pmem` grammar, as a macro so `--help` (`config.rs`, which needs a literal) and the
/// parser's messages ([`PMEM_SYNTAX`]) use the one text.
macro_rules! pmem_syntax {
    () => {
        "path=PATH[,size=SIZE][,readonly=on|off][,id=NAME][,numa=NODE]\
[,memmap=ram|pmem|none|auto][,mode=fsdax|devdax|raw][,align=4K|2M|1G][,format=keep|init|force]\
[,labels=on|off][,label-size=SIZE][,health=ok|non-critical|critical|fatal][,firmware=nfit|e820]"
    };
}
pub(crate) use pmem_syntax;

pub const PMEM_SYNTAX: &str = pmem_syntax!();

/// What is wrong with one `--pmem` value (or an API `pmem` entry, through the same keys).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PmemOptionError {
    #[error("{item:?} is not key=value; expected {PMEM_SYNTAX}")]
    NotKeyValue { item: String },
    #[error("unknown key {key:?}; expected one of {}", KEYS.join(", "))]
    UnknownKey { key: String },
    #[error("key {key:?} given twice")]
    Duplicate { key: String },
    #[error("{key}= needs a value; expected {PMEM_SYNTAX}")]
    Empty { key: String },
    #[error("size={value}: {source}")]
    Size { value: String, source: SizeError },
    #[error("size=0: the device needs a size above zero")]
    ZeroSize,
    #[error("{key}={value}: expected on or off")]
    NotOnOff { key: String, value: String },
    #[error("id={value}: expected letters, digits, '-' or '_'")]
    BadId { value: String },
    #[error("numa={value}: expected a node number from 0 to {MAX_NUMA_NODE}")]
    BadNuma { value: String },
    #[error(transparent)]
    Value(#[from] OptionValueError),
    #[error("path= is required; expected {PMEM_SYNTAX}")]
    NoPath,
    #[error("firmware={value}: expected nfit or e820")]
    BadFirmware { value: String },
    /// A setting the legacy E820 description cannot carry.
    #[error("firmware=e820 with {key}: {why}; use firmware=nfit for it")]
    NotWithE820 {
        key: &'static str,
        why: &'static str,
    },
    #[error(transparent)]
    LabelSize(#[from] LabelSizeError),
    #[error("label-size={value}: {source}")]
    LabelSizeValue { value: String, source: SizeError },
}

/// How the guest learns about the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Firmware {
    /// An ACPI NFIT NVDIMM: flush hints, read-only regions, NUMA nodes, hot-add.
    #[default]
    Nfit,
    /// A legacy persistent-memory range (E820 type 12), as the kernel's `memmap=ss!nn` makes:
    /// Linux's `nd_e820` driver turns each range into one label-less region. Nothing else
    /// describes it, so the guest has no flush hint (guest flushes never reach the monitor),
    /// cannot be told the range is read-only, and puts it on the node of the memory below it.
    E820,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Nfit => "nfit",
            Firmware::E820 => "e820",
        }
    }
}

impl std::str::FromStr for Firmware {
    type Err = PmemOptionError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "nfit" => Ok(Firmware::Nfit),
            "e820" => Ok(Firmware::E820),
            _ => Err(PmemOptionError::BadFirmware {
                value: value.into(),
            }),
        }
    }
}

const KEYS: &[&str] = &[
    "path",
    "size",
    "readonly",
    "id",
    "numa",
    "memmap",
    "mode",
    "align",
    "format",
    "labels",
    "label-size",
    "health",
    "firmware",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmemConfig {
    pub path: PathBuf,
    /// Size of a file to create; for an existing backing it must match.
    pub size: Option<u64>,
    pub readonly: bool,
    /// A name for logs and reports; defaults to `pmemN` in command-line order.
    pub id: String,
    /// ACPI proximity domain of the range (guest NUMA node of the device).
    pub numa: Option<u32>,
    /// Where the guest's struct pages for the namespace live (or no info block).
    pub memmap: Memmap,
    /// The namespace personality; None = fsdax for a new block, whatever is there for `auto`.
    pub mode: Option<NsMode>,
    /// Mapping alignment; None = 2 MiB.
    pub align: Option<u64>,
    /// What the monitor may write into the backing.
    pub format: FormatPolicy,
    /// How the guest learns about the device (NFIT NVDIMM or legacy E820 range).
    pub firmware: Firmware,
    /// `labels=on`: the size of the namespace label area at the end of the backing
    /// (`label-size=`, default [`LABEL_SIZE_MIN`]); None: no label area, a label-less DIMM.
    pub label_size: Option<u64>,
    /// `health=`: the health the DIMM reports through its `_DSM` SMART function (`ndctl list
    /// -DH`); None: no SMART function.
    pub health: Option<HealthState>,
}

/// Largest proximity domain we accept: Linux discards an SRAT that names a larger one.
pub const MAX_NUMA_NODE: u32 = acpi::MAX_PROXIMITY_DOMAIN;

fn on_off(key: &str, value: &str) -> Result<bool, PmemOptionError> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(PmemOptionError::NotOnOff {
            key: key.into(),
            value: value.into(),
        }),
    }
}

/// Parses one `--pmem` value; `index` numbers the default id.
pub fn parse_pmem(text: &str, index: usize) -> Result<PmemConfig, PmemOptionError> {
    let mut pairs = Vec::new();
    for item in text.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| PmemOptionError::NotKeyValue { item: item.into() })?;
        pairs.push((key, value));
    }
    pmem_from_pairs(&pairs, index)
}

/// The id of the `index`th device (from 0) when none is given: `pmem<index>`.
pub fn default_id(index: usize) -> String {
    format!("pmem{index}")
}

/// Validates one device given as `key=value` pairs with the keys of `--pmem`: the one
/// validation of a pmem device, used by the command line and by the API (`vm.create`'s `pmem`
/// entries and `vm.add-pmem`, whose JSON fields are translated to these keys).
pub fn pmem_from_pairs(
    pairs: &[(&str, &str)],
    index: usize,
) -> Result<PmemConfig, PmemOptionError> {
    let mut seen = HashSet::new();
    let (mut path, mut size, mut readonly, mut id, mut numa) = (None, None, false, None, None);
    let (mut memmap, mut mode, mut align, mut format) =
        (Memmap::default(), None, None, FormatPolicy::default());
    let mut firmware = Firmware::default();
    let (mut labels, mut label_size, mut health) = (false, None, None);
    for &(key, value) in pairs {
        if !KEYS.contains(&key) {
            return Err(PmemOptionError::UnknownKey { key: key.into() });
        }
        if !seen.insert(key) {
            return Err(PmemOptionError::Duplicate { key: key.into() });
        }
        if value.is_empty() {
            return Err(PmemOptionError::Empty { key: key.into() });
        }
        match key {
            "path" => path = Some(PathBuf::from(value)),
            "size" => {
                let bytes = parse_size(value, 1).map_err(|source| PmemOptionError::Size {
                    value: value.into(),
                    source,
                })?;
                if bytes == 0 {
                    return Err(PmemOptionError::ZeroSize);
                }
                size = Some(bytes);
            }
            "readonly" => readonly = on_off(key, value)?,
            "id" => {
                if !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(PmemOptionError::BadId {
                        value: value.into(),
                    });
                }
                id = Some(value.to_string());
            }
            "numa" => {
                let node: u32 = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_NUMA_NODE)
                    .ok_or_else(|| PmemOptionError::BadNuma {
                        value: value.into(),
                    })?;
                numa = Some(node);
            }
            "memmap" => memmap = value.parse()?,
            "mode" => mode = Some(value.parse()?),
            "align" => align = Some(parse_align(value)?),
            "format" => format = value.parse()?,
            "firmware" => firmware = value.parse()?,
            "labels" => labels = on_off(key, value)?,
            "health" => health = Some(value.parse()?),
            "label-size" => {
                let bytes =
                    parse_size(value, 1).map_err(|source| PmemOptionError::LabelSizeValue {
                        value: value.into(),
                        source,
                    })?;
                label_size = Some(check_label_size(bytes)?);
            }
            _ => unreachable!("key checked against KEYS"),
        }
    }
    let path = path.ok_or(PmemOptionError::NoPath)?;
    if firmware == Firmware::E820 {
        if readonly {
            return Err(PmemOptionError::NotWithE820 {
                key: "readonly=on",
                why: "an E820 range cannot be marked read-only, so the guest would write to it",
            });
        }
        if numa.is_some() {
            return Err(PmemOptionError::NotWithE820 {
                key: "numa=",
                why: "an E820 range has no proximity domain",
            });
        }
        if labels || health.is_some() {
            return Err(PmemOptionError::NotWithE820 {
                key: if labels { "labels=on" } else { "health=" },
                why: "labels and health are NVDIMM _DSM functions, and an E820 range has no _DSM",
            });
        }
    }
    if label_size.is_some() && !labels {
        return Err(LabelSizeError::WithoutLabels.into());
    }
    let label_size = labels.then(|| label_size.unwrap_or(LABEL_SIZE_MIN));
    Ok(PmemConfig {
        path,
        size,
        readonly,
        id: id.unwrap_or_else(|| default_id(index)),
        numa,
        memmap,
        mode,
        align,
        format,
        firmware,
        label_size,
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_minimal() {
        let p = parse_pmem("path=/tmp/a,size=1G,readonly=on,id=data,numa=1", 0).unwrap();
        assert_eq!(p.path, PathBuf::from("/tmp/a"));
        assert_eq!(p.size, Some(1 << 30));
        assert!(p.readonly);
        assert_eq!(p.id, "data");
        assert_eq!(p.numa, Some(1));
        let p = parse_pmem("path=/dev/dax0.0", 3).unwrap();
        assert_eq!(
            (p.size, p.readonly, p.id.as_str(), p.numa, p.firmware),
            (None, false, "pmem3", None, Firmware::Nfit)
        );
        let p = parse_pmem("path=/a,firmware=e820,memmap=pmem", 0).unwrap();
        assert_eq!(p.firmware, Firmware::E820);
    }

    #[test]
    fn labels() {
        assert_eq!(parse_pmem("path=/a", 0).unwrap().label_size, None);
        assert_eq!(
            parse_pmem("path=/a,labels=off", 0).unwrap().label_size,
            None
        );
        assert_eq!(
            parse_pmem("path=/a,labels=on", 0).unwrap().label_size,
            Some(128 << 10)
        );
        assert_eq!(
            parse_pmem("path=/a,labels=on,label-size=1M", 0)
                .unwrap()
                .label_size,
            Some(1 << 20)
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (text, needle) in [
            ("size=1G", "path= is required"),
            ("path=/a,colour=red", "unknown key \"colour\""),
            ("path=/a,size=0", "size=0"),
            ("path=/a,size=12Q", "size=12Q"),
            (
                "path=/a,readonly=maybe",
                "readonly=maybe: expected on or off",
            ),
            ("path=/a,numa=x", "numa=x"),
            ("path=/a,numa=256", "numa=256"),
            ("path=/a,path=/b", "given twice"),
            ("path=/a,size", "not key=value"),
            ("path=", "path= needs a value"),
            ("path=/a,id=a b", "id=a b"),
            ("path=/a,memmap=dev", "memmap=dev"),
            ("path=/a,mode=sector", "mode=sector"),
            ("path=/a,align=3M", "align=3M"),
            ("path=/a,format=always", "format=always"),
            (
                "path=/a,firmware=acpi",
                "firmware=acpi: expected nfit or e820",
            ),
            (
                "path=/a,firmware=e820,readonly=on",
                "firmware=e820 with readonly=on",
            ),
            ("path=/a,numa=1,firmware=e820", "firmware=e820 with numa="),
            (
                "path=/a,labels=on,firmware=e820",
                "firmware=e820 with labels=on",
            ),
            (
                "path=/a,firmware=e820,health=ok",
                "firmware=e820 with health=",
            ),
            ("path=/a,labels=maybe", "labels=maybe: expected on or off"),
            ("path=/a,health=sick", "health=sick: unknown value"),
            ("path=/a,label-size=128K", "label-size= needs labels=on"),
            (
                "path=/a,labels=on,label-size=64K",
                "label-size=65536: expected a multiple of 4 KiB from 128K to 2M",
            ),
            ("path=/a,labels=on,label-size=4M", "label-size=4194304"),
            ("path=/a,labels=on,label-size=129K", "label-size=132096"),
            ("path=/a,labels=on,label-size=x", "label-size=x"),
        ] {
            let e = parse_pmem(text, 0).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
