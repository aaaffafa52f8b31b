//! SMART health of one DIMM: what the Intel SMART functions report and the alarm thresholds
//! the guest sets.
//!
//! | function | revision | input | output |
//! | --- | --- | --- | --- |
//! | 1 SMART (`ND_CMD_SMART`) | 1 | none | status, `struct nd_intel_smart` (128 bytes) |
//! | 2 get threshold (`ND_CMD_SMART_THRESHOLD`) | 1 | none | status, `struct nd_intel_smart_threshold` (8 bytes) |
//! | 17 set threshold (`NVDIMM_INTEL_SET_THRESHOLD`) | 2 | alarm control, spares, media and controller temperature (7 bytes) | status |
//!
//! Linux calls function 17 with revision 2 (`nfit_dsm_revid()`), the others with revision 1.
//! `ndctl monitor` needs all three: it enables the alarms through 17 and then waits for the
//! DIMM's health notification (`Notify (NVxx, 0x81)`), re-reading SMART when it comes. The
//! state changes at run time through the control API (`vm.set-pmem-health`); each change that
//! the guest could see is an event ([`Smart::update`] says so), which the monitor passes on as
//! that notification (`crate::nvdimm_events`).
//!
//! Temperatures are in the structures' unit, 1/16 °C, bit 15 the sign; we only report values
//! of 0 °C and more.

use super::HealthState;

/// `struct nd_intel_smart` after its status word (Linux drivers/acpi/nfit/intel.h, ndctl
/// ndctl/lib/intel.h).
pub const SMART_PAYLOAD_LEN: usize = 128;
/// `struct nd_intel_smart_threshold` after its status word.
pub const THRESHOLD_PAYLOAD_LEN: usize = 8;
/// The input of set threshold (`struct nd_intel_smart_set_threshold` before its status).
pub const SET_THRESHOLD_INPUT_LEN: usize = 7;

/// `alarm_control` / `alarm_flags` bits.
pub const ALARM_SPARES: u16 = 1 << 0;
pub const ALARM_MEDIA_TEMPERATURE: u16 = 1 << 1;
pub const ALARM_CTRL_TEMPERATURE: u16 = 1 << 2;
const ALARMS: u16 = ALARM_SPARES | ALARM_MEDIA_TEMPERATURE | ALARM_CTRL_TEMPERATURE;

/// Hottest temperature the API takes, in °C (the field holds up to 2047 °C).
pub const MAX_TEMPERATURE_C: u16 = 200;

/// °C in the structures' 1/16 °C unit.
const fn sixteenths(celsius: u16) -> u16 {
    celsius * 16
}

/// What the guest sets with function 17 and reads with function 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub alarm_control: u16,
    pub spares: u8,
    pub media_temperature: u16,
    pub ctrl_temperature: u16,
}

impl Default for Thresholds {
    /// No alarm enabled; trip points at 10 % spares and 80 °C (what an administrator would set
    /// on a real DIMM; the guest changes them).
    fn default() -> Self {
        Thresholds {
            alarm_control: 0,
            spares: 10,
            media_temperature: sixteenths(80),
            ctrl_temperature: sixteenths(80),
        }
    }
}

/// A change of the reported state through the API; `None` leaves a value as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmartUpdate {
    pub health: Option<HealthState>,
    /// Spare blocks remaining, percent (0-100).
    pub spares: Option<u8>,
    /// Media and controller temperature, °C (0-[`MAX_TEMPERATURE_C`]).
    pub temperature: Option<u16>,
}

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmartUpdateError {
    #[error("spares={0}: expected a percentage, 0 to 100")]
    Spares(u8),
    #[error("temperature={0}: expected degrees Celsius, 0 to {MAX_TEMPERATURE_C}")]
    Temperature(u16),
}

/// One DIMM's SMART state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Smart {
    pub health: HealthState,
    pub spares: u8,
    /// Media and controller temperature, 1/16 °C.
    pub temperature: u16,
    pub thresholds: Thresholds,
}

impl Smart {
    /// A DIMM started with `health=`: 100 % spares, 25 °C, no alarm enabled.
    pub fn new(health: HealthState) -> Self {
        Smart {
            health,
            spares: 100,
            temperature: sixteenths(25),
            thresholds: Thresholds::default(),
        }
    }

    /// The alarms that have tripped: enabled, and the value at or past its trip point.
    pub fn alarm_flags(&self) -> u16 {
        let t = &self.thresholds;
        let mut flags = 0;
        if self.spares <= t.spares {
            flags |= ALARM_SPARES;
        }
        if self.temperature >= t.media_temperature {
            flags |= ALARM_MEDIA_TEMPERATURE;
        }
        if self.temperature >= t.ctrl_temperature {
            flags |= ALARM_CTRL_TEMPERATURE;
        }
        flags & t.alarm_control
    }

    /// Applies an API update (all values checked first: on an error nothing changes). `true`
    /// when the guest should be notified: the health state or a tripped alarm changed, or any
    /// reported value did (a real DIMM raises the event on health changes and alarm trips; a
    /// host that changes spares or temperature means the guest to look).
    pub fn update(&mut self, u: SmartUpdate) -> Result<bool, SmartUpdateError> {
        if let Some(s) = u.spares.filter(|&s| s > 100) {
            return Err(SmartUpdateError::Spares(s));
        }
        if let Some(t) = u.temperature.filter(|&t| t > MAX_TEMPERATURE_C) {
            return Err(SmartUpdateError::Temperature(t));
        }
        let before = *self;
        if let Some(h) = u.health {
            self.health = h;
        }
        if let Some(s) = u.spares {
            self.spares = s;
        }
        if let Some(t) = u.temperature {
            self.temperature = sixteenths(t);
        }
        Ok(*self != before)
    }

    /// Function 17's input: the new thresholds (exactly [`SET_THRESHOLD_INPUT_LEN`] bytes,
    /// checked by the caller). `true` when an alarm newly tripped, which notifies the guest as
    /// a real DIMM does when a threshold is crossed. Unknown alarm bits are refused (`None`).
    pub fn set_thresholds(&mut self, input: &[u8; SET_THRESHOLD_INPUT_LEN]) -> Option<bool> {
        let alarm_control = u16::from_le_bytes([input[0], input[1]]);
        let spares = input[2];
        if alarm_control & !ALARMS != 0 || spares > 100 {
            return None;
        }
        let tripped_before = self.alarm_flags();
        self.thresholds = Thresholds {
            alarm_control,
            spares,
            media_temperature: u16::from_le_bytes([input[3], input[4]]),
            ctrl_temperature: u16::from_le_bytes([input[5], input[6]]),
        };
        Some(self.alarm_flags() & !tripped_before != 0)
    }

    /// Function 1's payload.
    pub fn payload(&self) -> [u8; SMART_PAYLOAD_LEN] {
        const HEALTH_VALID: u32 = 1 << 0;
        const SPARES_VALID: u32 = 1 << 1;
        const USED_VALID: u32 = 1 << 2;
        const MTEMP_VALID: u32 = 1 << 3;
        const CTEMP_VALID: u32 = 1 << 4;
        const SHUTDOWN_COUNT_VALID: u32 = 1 << 5;
        const ALARM_VALID: u32 = 1 << 9;
        const SHUTDOWN_VALID: u32 = 1 << 10;
        let mut p = [0u8; SMART_PAYLOAD_LEN];
        let flags = HEALTH_VALID
            | SPARES_VALID
            | USED_VALID
            | MTEMP_VALID
            | CTEMP_VALID
            | SHUTDOWN_COUNT_VALID
            | ALARM_VALID
            | SHUTDOWN_VALID;
        p[0..4].copy_from_slice(&flags.to_le_bytes());
        // 4..8 reserved.
        p[8] = match self.health {
            HealthState::Ok => 0,
            HealthState::NonCritical => 1 << 0,
            HealthState::Critical => 1 << 1,
            HealthState::Fatal => 1 << 2,
        };
        p[9] = self.spares;
        p[10] = 0; // life used
        p[11] = self.alarm_flags() as u8;
        p[12..14].copy_from_slice(&self.temperature.to_le_bytes());
        p[14..16].copy_from_slice(&self.temperature.to_le_bytes());
        // shutdown_count (16..20) 0, shutdown_state (31) 0: clean.
        p
    }

    /// Function 2's payload.
    pub fn threshold_payload(&self) -> [u8; THRESHOLD_PAYLOAD_LEN] {
        let t = &self.thresholds;
        let mut p = [0u8; THRESHOLD_PAYLOAD_LEN];
        p[0..2].copy_from_slice(&t.alarm_control.to_le_bytes());
        p[2] = t.spares;
        p[3..5].copy_from_slice(&t.media_temperature.to_le_bytes());
        p[5..7].copy_from_slice(&t.ctrl_temperature.to_le_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_layout_matches_nd_intel_smart() {
        let mut s = Smart::new(HealthState::Critical);
        s.update(SmartUpdate {
            spares: Some(7),
            temperature: Some(91),
            ..Default::default()
        })
        .unwrap();
        let p = s.payload();
        assert_eq!(p[8], 1 << 1, "health: critical");
        assert_eq!(p[9], 7, "spares");
        assert_eq!(
            u16::from_le_bytes([p[12], p[13]]),
            91 * 16,
            "media temperature"
        );
        assert_eq!(
            u16::from_le_bytes([p[14], p[15]]),
            91 * 16,
            "controller temperature"
        );
        assert_eq!(p[11], 0, "no alarm enabled, none tripped");
        let flags = u32::from_le_bytes(p[0..4].try_into().unwrap());
        assert_eq!(
            flags & (1 << 9),
            1 << 9,
            "alarm flags valid (ndctl monitor needs it)"
        );
    }

    #[test]
    fn alarms_trip_only_when_enabled_and_crossed() {
        let mut s = Smart::new(HealthState::Ok);
        let set = |s: &mut Smart, control: u16, spares: u8, temp_c: u16| {
            let mut b = [0u8; SET_THRESHOLD_INPUT_LEN];
            b[0..2].copy_from_slice(&control.to_le_bytes());
            b[2] = spares;
            b[3..5].copy_from_slice(&(temp_c * 16).to_le_bytes());
            b[5..7].copy_from_slice(&(temp_c * 16).to_le_bytes());
            s.set_thresholds(&b)
        };
        // Enabling alarms at trip points the DIMM is far from: nothing trips, no event.
        assert_eq!(set(&mut s, ALARMS, 10, 80), Some(false));
        assert_eq!(s.alarm_flags(), 0);
        assert_eq!(s.threshold_payload()[0], ALARMS as u8);
        // Lowering the temperature trip point below 25 °C trips both temperature alarms.
        assert_eq!(set(&mut s, ALARMS, 10, 20), Some(true));
        assert_eq!(
            s.alarm_flags(),
            ALARM_MEDIA_TEMPERATURE | ALARM_CTRL_TEMPERATURE
        );
        // The same again: already tripped, no new event.
        assert_eq!(set(&mut s, ALARMS, 10, 20), Some(false));
        // Disabled alarms do not trip.
        assert_eq!(set(&mut s, 0, 100, 0), Some(false));
        assert_eq!(s.alarm_flags(), 0);
        // Unknown alarm bits and spares past 100 % are refused, nothing changed.
        let before = s;
        assert_eq!(set(&mut s, 1 << 3, 10, 80), None);
        assert_eq!(set(&mut s, ALARMS, 101, 80), None);
        assert_eq!(s, before);
        // Spares at the trip point trip the spares alarm.
        set(&mut s, ALARM_SPARES, 10, 80).unwrap();
        assert!(s
            .update(SmartUpdate {
                spares: Some(10),
                ..Default::default()
            })
            .unwrap());
        assert_eq!(s.alarm_flags(), ALARM_SPARES);
    }

    #[test]
    fn updates_are_checked_before_anything_changes() {
        let mut s = Smart::new(HealthState::Ok);
        let before = s;
        let bad = SmartUpdate {
            health: Some(HealthState::Fatal),
            spares: Some(101),
            temperature: Some(30),
        };
        assert_eq!(s.update(bad), Err(SmartUpdateError::Spares(101)));
        assert_eq!(
            s.update(SmartUpdate {
                temperature: Some(201),
                ..Default::default()
            })
            .unwrap_err()
            .to_string(),
            "temperature=201: expected degrees Celsius, 0 to 200"
        );
        assert_eq!(s, before);
        // No change, no event; a change, an event.
        assert_eq!(
            s.update(SmartUpdate {
                health: Some(HealthState::Ok),
                ..Default::default()
            }),
            Ok(false)
        );
        assert_eq!(
            s.update(SmartUpdate {
                health: Some(HealthState::Critical),
                ..Default::default()
            }),
            Ok(true)
        );
    }
}
