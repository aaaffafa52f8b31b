//! The values of the pmem keys the planner reads: `memmap=`, `mode=`, `align=` and `format=`.
//! Parsing a value is all this module does; what the values mean is [`super::format`]'s.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::infoblock::SUPPORTED_ALIGNMENTS;

/// A value that is not one of the key's values. Always a usage error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{option}={value}: unknown value; expected {expected}")]
pub struct OptionValueError {
    pub option: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// `memmap=`: where the guest keeps the struct pages of the namespace, or no info block at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Memmap {
    /// No info block: a raw namespace.
    None,
    /// An info block with the memmap in guest RAM (`PFN_MODE_RAM`, ndctl `--map=mem`).
    Ram,
    /// An info block with the memmap in the device's reserve (`PFN_MODE_PMEM`, ndctl `--map=dev`).
    Pmem,
    /// Keep a valid block, else choose by
    /// [`AUTO_RAM_FRACTION_DENOMINATOR`](super::format::AUTO_RAM_FRACTION_DENOMINATOR) (see
    /// [`super::format`]).
    #[default]
    Auto,
}

/// `mode=`: the personality the guest gives the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NsMode {
    /// `/dev/pmemN` with DAX (`NVDIMM_PFN_INFO`).
    Fsdax,
    /// `/dev/daxN.M` (`NVDIMM_DAX_INFO`).
    Devdax,
    /// No info block; the same as `memmap=none`.
    Raw,
}

/// `format=`: what the monitor may write into the backing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FormatPolicy {
    /// Never write.
    Keep,
    /// Write only onto a blank area (or a file created in this run).
    #[default]
    Init,
    /// Write whatever is there, after stating what is replaced.
    Force,
}

pub(crate) fn bad_value(
    option: &'static str,
    value: &str,
    expected: &'static str,
) -> OptionValueError {
    OptionValueError {
        option,
        value: value.to_string(),
        expected,
    }
}

impl FromStr for Memmap {
    type Err = OptionValueError;
    fn from_str(s: &str) -> Result<Memmap, OptionValueError> {
        match s {
            "none" => Ok(Memmap::None),
            "ram" => Ok(Memmap::Ram),
            "pmem" => Ok(Memmap::Pmem),
            "auto" => Ok(Memmap::Auto),
            _ => Err(bad_value("memmap", s, "ram, pmem, none or auto")),
        }
    }
}

impl FromStr for NsMode {
    type Err = OptionValueError;
    fn from_str(s: &str) -> Result<NsMode, OptionValueError> {
        match s {
            "fsdax" => Ok(NsMode::Fsdax),
            "devdax" => Ok(NsMode::Devdax),
            "raw" => Ok(NsMode::Raw),
            _ => Err(bad_value("mode", s, "fsdax, devdax or raw")),
        }
    }
}

impl FromStr for FormatPolicy {
    type Err = OptionValueError;
    fn from_str(s: &str) -> Result<FormatPolicy, OptionValueError> {
        match s {
            "keep" => Ok(FormatPolicy::Keep),
            "init" => Ok(FormatPolicy::Init),
            "force" => Ok(FormatPolicy::Force),
            _ => Err(bad_value("format", s, "keep, init or force")),
        }
    }
}

/// Parses `align=`: `4K`, `2M` or `1G` (case-insensitive, optionally with `iB`), or the same
/// number of bytes in decimal: the alignments the guest kernel supports
/// ([`SUPPORTED_ALIGNMENTS`]).
pub fn parse_align(s: &str) -> Result<u64, OptionValueError> {
    let lower = s.to_ascii_lowercase();
    let unit = lower.strip_suffix("ib").unwrap_or(&lower);
    let value = match unit {
        "4k" => Some(4 << 10),
        "2m" => Some(2 << 20),
        "1g" => Some(1 << 30),
        _ => unit.parse::<u64>().ok(),
    };
    value
        .filter(|v| SUPPORTED_ALIGNMENTS.contains(v))
        .ok_or_else(|| bad_value("align", s, "4K, 2M or 1G"))
}

impl fmt::Display for Memmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Memmap::None => "none",
            Memmap::Ram => "ram",
            Memmap::Pmem => "pmem",
            Memmap::Auto => "auto",
        })
    }
}

impl fmt::Display for NsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NsMode::Fsdax => "fsdax",
            NsMode::Devdax => "devdax",
            NsMode::Raw => "raw",
        })
    }
}

impl fmt::Display for FormatPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FormatPolicy::Keep => "keep",
            FormatPolicy::Init => "init",
            FormatPolicy::Force => "force",
        })
    }
}

/// An alignment as the option spells it (`4K`, `2M`, `1G`), else in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlignName(pub u64);

impl fmt::Display for AlignName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0x1000 => f.write_str("4K"),
            0x20_0000 => f.write_str("2M"),
            0x4000_0000 => f.write_str("1G"),
            a => write!(f, "{a:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn parses_option_values_and_lists_the_valid_ones() {
        assert_eq!("none".parse::<Memmap>().unwrap(), Memmap::None);
        assert_eq!("ram".parse::<Memmap>().unwrap(), Memmap::Ram);
        assert_eq!("pmem".parse::<Memmap>().unwrap(), Memmap::Pmem);
        assert_eq!("auto".parse::<Memmap>().unwrap(), Memmap::Auto);
        assert_eq!("fsdax".parse::<NsMode>().unwrap(), NsMode::Fsdax);
        assert_eq!("devdax".parse::<NsMode>().unwrap(), NsMode::Devdax);
        assert_eq!("raw".parse::<NsMode>().unwrap(), NsMode::Raw);
        assert_eq!("keep".parse::<FormatPolicy>().unwrap(), FormatPolicy::Keep);
        assert_eq!("init".parse::<FormatPolicy>().unwrap(), FormatPolicy::Init);
        assert_eq!(
            "force".parse::<FormatPolicy>().unwrap(),
            FormatPolicy::Force
        );
        assert_eq!(Memmap::default(), Memmap::Auto);
        assert_eq!(FormatPolicy::default(), FormatPolicy::Init);
        for m in [Memmap::None, Memmap::Ram, Memmap::Pmem, Memmap::Auto] {
            assert_eq!(m.to_string().parse::<Memmap>().unwrap(), m);
        }

        let e = "dev".parse::<Memmap>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "memmap=dev: unknown value; expected ram, pmem, none or auto"
        );
        assert_eq!(
            "sector".parse::<NsMode>().unwrap_err().to_string(),
            "mode=sector: unknown value; expected fsdax, devdax or raw"
        );
        assert_eq!(
            "always".parse::<FormatPolicy>().unwrap_err().to_string(),
            "format=always: unknown value; expected keep, init or force"
        );

        for (s, v) in [
            ("4K", 4 * KIB),
            ("4k", 4 * KIB),
            ("4KiB", 4 * KIB),
            ("2M", 2 * MIB),
            ("2m", 2 * MIB),
            ("2MiB", 2 * MIB),
            ("1G", GIB),
            ("1GiB", GIB),
            ("2097152", 2 * MIB),
        ] {
            assert_eq!(parse_align(s).unwrap(), v, "{s}");
        }
        for s in ["8K", "64K", "4M", "", "2097153", "0"] {
            assert_eq!(
                parse_align(s).unwrap_err().to_string(),
                format!("align={s}: unknown value; expected 4K, 2M or 1G")
            );
        }
    }
}
