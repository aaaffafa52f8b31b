//! Sizes as users write them (`512M`, `2G`, `4096K`, `1T`, a bare number): one parser for the
//! command line (`--memory`, `--pmem size=`) and the API's VmConfig strings.

use thiserror::Error;

/// Why a size did not parse; the caller names the option and the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    #[error("expected a number with an optional K, M, G or T suffix")]
    NotANumber,
    #[error("the number is too large")]
    NumberTooLarge,
    #[error("unknown size suffix {0:?}; use K, M, G or T")]
    UnknownSuffix(String),
    #[error("the size is too large")]
    SizeTooLarge,
}

/// Parses a size such as `512M`, `2G`, `4096K`, `1T` or a bare number of `bare_unit` bytes.
/// Suffixes are binary (K = 1024); `KiB`, `MiB`, ... and `B` are accepted too.
pub fn parse_size(text: &str, bare_unit: u64) -> Result<u64, SizeError> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NotANumber);
    }
    let number: u64 = digits.parse().map_err(|_| SizeError::NumberTooLarge)?;
    let unit = match suffix.to_ascii_uppercase().as_str() {
        "" => bare_unit,
        "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(SizeError::UnknownSuffix(suffix.to_string())),
    };
    number.checked_mul(unit).ok_or(SizeError::SizeTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M", 1), Ok(512 << 20));
        assert_eq!(parse_size("2G", 1), Ok(2 << 30));
        assert_eq!(parse_size("3584MiB", 1), Ok(3584 << 20));
        assert_eq!(parse_size("64k", 1), Ok(64 << 10));
        assert_eq!(parse_size("1T", 1), Ok(1 << 40));
        assert_eq!(parse_size("256", MIB), Ok(256 << 20));
        assert_eq!(parse_size("", 1), Err(SizeError::NotANumber));
        assert_eq!(
            parse_size("12Q", 1),
            Err(SizeError::UnknownSuffix("Q".into()))
        );
        assert!(parse_size("-1G", 1).is_err());
        assert_eq!(
            parse_size("99999999999999999999", 1),
            Err(SizeError::NumberTooLarge)
        );
        assert_eq!(parse_size("99999999999T", 1), Err(SizeError::SizeTooLarge));
    }
}
