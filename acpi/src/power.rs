//! The values a guest writes to the hardware-reduced sleep registers, so that the monitor can
//! decode them without knowing ACPI. Bit layout from ACPI 6.x §4.8.3.7/§4.8.3.8 and Linux
//! include/acpi/actbl.h (`ACPI_X_SLEEP_TYPE_POSITION` 2, `ACPI_X_SLEEP_TYPE_MASK` 0x1c,
//! `ACPI_X_SLEEP_ENABLE` 0x20, `ACPI_X_WAKE_STATUS` 0x80).

/// SLP_TYP for S5 (soft off): the first element of the DSDT's `\_S5_` package. Linux's
/// `acpi_hw_extended_sleep()` uses only that first value ("SleepTypeA"). Any 3-bit value would
/// do; 5 reads naturally as "S5".
pub const S5_SLEEP_TYPE: u8 = 5;

/// SLP_EN, bit 5 of the sleep control register: "enter the sleep state in SLP_TYP now".
pub const SLP_EN: u8 = 1 << 5;

/// WAK_STS, bit 7 of the sleep status register. Linux writes it (to clear it) right before
/// entering a sleep state and then polls for it to become set.
pub const WAK_STS: u8 = 1 << 7;

const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

/// The byte Linux writes to the sleep control register to power off: `(5 << 2) | SLP_EN`.
pub const S5_SLEEP_CONTROL: u8 = sleep_control_value(S5_SLEEP_TYPE);

/// The sleep control byte that requests sleep type `sleep_type` (only its low 3 bits count).
pub const fn sleep_control_value(sleep_type: u8) -> u8 {
    ((sleep_type & SLP_TYP_MASK) << SLP_TYP_SHIFT) | SLP_EN
}

/// Decodes a byte written to the sleep control register: the requested SLP_TYP when SLP_EN is
/// set, `None` otherwise (a write without SLP_EN only stages a value and changes nothing).
/// Power off is `decode_sleep_control(v) == Some(S5_SLEEP_TYPE)`.
pub const fn decode_sleep_control(value: u8) -> Option<u8> {
    if value & SLP_EN == 0 {
        None
    } else {
        Some((value >> SLP_TYP_SHIFT) & SLP_TYP_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_off_byte_is_0x34() {
        // (5 << 2) | 0x20, as acpi_hw_extended_sleep() computes it.
        assert_eq!(S5_SLEEP_CONTROL, 0x34);
        assert_eq!(decode_sleep_control(0x34), Some(S5_SLEEP_TYPE));
    }

    #[test]
    fn decode_needs_slp_en() {
        assert_eq!(decode_sleep_control(5 << 2), None);
        assert_eq!(decode_sleep_control(0), None);
        assert_eq!(decode_sleep_control(SLP_EN), Some(0));
        // Reserved bits (0, 1, 6, 7) do not leak into the sleep type.
        assert_eq!(decode_sleep_control(0xff), Some(7));
        for t in 0..8 {
            assert_eq!(decode_sleep_control(sleep_control_value(t)), Some(t));
        }
    }
}
