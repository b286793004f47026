//! Trusted time for manifest expiry when the wall clock may be wrong.
//!
//! Owns the rule only (pure); the high-water mark is persisted by the store.
//!
//! Rule: trusted time = max(floor, high-water mark, wall clock if sane),
//! where the floor is [`TRUSTED_TIME_FLOOR_UNIX`] (no device running this
//! build can be earlier), the high-water mark is the largest `issued_at` of
//! any manifest this device verified (persisted), and the wall clock is
//! "sane" when it is at or after the floor. A clock before the floor (a Pi 5
//! with no RTC battery boots in 1970 or at a stale fake-hwclock date) is
//! "unknown" and ignored. A manifest is expired when `expires_at` is before
//! the trusted time.
//!
//! The wall clock is never persisted into the high-water mark: a clock set
//! years ahead once would otherwise make every later manifest "expired"
//! until that date. Only signed `issued_at` values move the mark.

use serde::{Deserialize, Serialize};

/// 2026-11-01T00:00:00Z: no earlier than this build. Raise it with each release.
pub const TRUSTED_TIME_FLOOR_UNIX: u64 = 1_793_491_200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeBasis {
    /// The device's wall clock (sane and the latest of the three).
    WallClock,
    /// The largest `issued_at` of a manifest verified here.
    HighWaterMark,
    /// The build's floor: the clock is unknown and nothing newer was seen.
    BuildFloor,
}

impl TimeBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeBasis::WallClock => "wall clock",
            TimeBasis::HighWaterMark => "latest verified issued_at",
            TimeBasis::BuildFloor => "build date (clock unknown)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedNow {
    pub secs: u64,
    pub basis: TimeBasis,
}

/// The time expiry is judged against; see the module documentation.
pub fn trusted_now(high_water: u64, wall_clock: u64) -> TrustedNow {
    let mut t = TrustedNow { secs: TRUSTED_TIME_FLOOR_UNIX, basis: TimeBasis::BuildFloor };
    if high_water > t.secs {
        t = TrustedNow { secs: high_water, basis: TimeBasis::HighWaterMark };
    }
    if wall_clock >= TRUSTED_TIME_FLOOR_UNIX && wall_clock > t.secs {
        t = TrustedNow { secs: wall_clock, basis: TimeBasis::WallClock };
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u64 = TRUSTED_TIME_FLOOR_UNIX;

    #[test]
    fn clock_before_the_floor_is_ignored() {
        assert_eq!(trusted_now(0, 0), TrustedNow { secs: F, basis: TimeBasis::BuildFloor });
        assert_eq!(trusted_now(F + 10, 5), TrustedNow { secs: F + 10, basis: TimeBasis::HighWaterMark });
    }

    #[test]
    fn a_sane_clock_behind_the_mark_does_not_turn_time_back() {
        assert_eq!(trusted_now(F + 100, F + 50).secs, F + 100);
        assert_eq!(trusted_now(F + 100, F + 500), TrustedNow { secs: F + 500, basis: TimeBasis::WallClock });
    }
}
