//! Simulated time: the time scale, wall-clock deadlines, and the ISO-8601 / RFC 3339 formats the AWS APIs use.
//!
//! Every duration the simulated region "owns" (FIS durations, the two-minute notice lead, the hook heartbeat
//! timeout, the Pending -> InService delay) is a *sim* duration and is multiplied by the time scale before it is
//! waited on. Times shown to clients (IMDS `time`, `noticeTime`, FIS timestamps) are real wall-clock UTC, so a
//! notice `time` is the real instant at which the simulator will terminate the instance.

use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The time scale shared by everything that waits on a simulated duration.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Real seconds per simulated second (0.05 makes PT2M last 6 s).
    scale: f64,
}

/// A moment in the future known both as a monotonic deadline (what the simulator waits on) and as the wall-clock
/// time shown to clients. The two name the same instant.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// When the simulator acts.
    pub at: Instant,
    /// The same instant in UTC, whole seconds (AWS prints seconds).
    pub wall: OffsetDateTime,
}

/// The present as both clocks see it. Read once per step by the runtime and passed into the model, so every
/// transition is a plain function of the time it is given (unit tests pass made-up instants).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// What deadlines are compared with.
    pub at: Instant,
    /// What events, launch times and notices show.
    pub wall: OffsetDateTime,
}

impl Now {
    pub fn read() -> Now {
        Now {
            at: Instant::now(),
            wall: OffsetDateTime::now_utc(),
        }
    }

    /// The same moment `d` (real time) later: how tests move time forward.
    #[cfg(test)]
    pub fn after(self, d: Duration) -> Now {
        Now {
            at: self.at + d,
            wall: self.wall + d,
        }
    }
}

impl Clock {
    pub fn new(scale: f64) -> Self {
        Clock { scale }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Real duration of a simulated one.
    pub fn real(&self, sim: Duration) -> Duration {
        sim.mul_f64(self.scale)
    }

    /// A deadline `sim` simulated time after `now`. The wall-clock time is rounded *up* to a whole second and the
    /// monotonic deadline moved with it, so the second printed in IMDS is exactly when the simulator acts
    /// (never a second early, which a worker timing its drain against the notice would notice).
    pub fn deadline_after(&self, now: Now, sim: Duration) -> Deadline {
        let (now_i, now_w) = (now.at, now.wall);
        let real = self.real(sim);
        let exact = now_w + real;
        let rounded = round_up_to_second(exact);
        let extra: Duration = (rounded - exact).try_into().unwrap_or_default();
        Deadline {
            at: now_i + real + extra,
            wall: rounded,
        }
    }
}

/// Round a UTC time up to the next whole second (unchanged when already whole).
pub fn round_up_to_second(t: OffsetDateTime) -> OffsetDateTime {
    if t.nanosecond() == 0 {
        t
    } else {
        t.replace_nanosecond(0).expect("0 is a valid nanosecond") + time::Duration::SECOND
    }
}

/// RFC 3339 UTC with whole seconds, as IMDS prints it: `2026-11-25T08:22:00Z`.
pub fn rfc3339_seconds(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("valid");
    t.format(&Rfc3339)
        .expect("RFC 3339 formatting of a UTC time cannot fail")
}

/// ISO-8601 with milliseconds, as the Query APIs print timestamps: `2026-11-25T08:22:00.123Z`.
pub fn iso_millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Seconds since the epoch with a fraction: the REST-JSON default timestamp format (FIS).
pub fn epoch_seconds(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// Errors from [`parse_iso8601_duration`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("duration {0:?} is not an ISO-8601 duration like PT2M")]
    Syntax(String),
}

/// Parse the ISO-8601 durations FIS uses (`PT2M`, `PT90S`, `PT1H30M`, `P1D`, `PT1.5M`). Years and months are
/// refused: they have no fixed length.
pub fn parse_iso8601_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError::Syntax(s.to_string());
    let rest = s.strip_prefix('P').ok_or_else(err)?;
    if rest.is_empty() {
        return Err(err());
    }
    let (date, time_part) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return Err(err());
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut parse_units = |part: &str, units: &[(char, f64)]| -> Result<(), DurationError> {
        let mut num = String::new();
        let mut next_unit = 0usize;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
                continue;
            }
            let idx = units[next_unit..]
                .iter()
                .position(|(u, _)| *u == c)
                .ok_or_else(err)?
                + next_unit;
            let n: f64 = num.parse().map_err(|_| err())?;
            total += n * units[idx].1;
            num.clear();
            next_unit = idx + 1;
        }
        if num.is_empty() {
            Ok(())
        } else {
            Err(err())
        }
    };
    parse_units(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    if let Some(t) = time_part {
        parse_units(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn iso_durations() {
        assert_eq!(parse_iso8601_duration("PT2M"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_iso8601_duration("PT15M"),
            Ok(Duration::from_secs(900))
        );
        assert_eq!(parse_iso8601_duration("PT90S"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_iso8601_duration("PT1H30M"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_iso8601_duration("P1D"),
            Ok(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_iso8601_duration("PT1.5M"),
            Ok(Duration::from_secs(90))
        );
        for bad in [
            "", "P", "PT", "2M", "PT2", "PTM", "PT2X", "PT2S3M", "P1Y", "pt2m",
        ] {
            assert!(
                parse_iso8601_duration(bad).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn scaling() {
        let c = Clock::new(0.05);
        assert_eq!(c.real(Duration::from_secs(120)), Duration::from_secs(6));
        assert_eq!(
            Clock::new(1.0).real(Duration::from_millis(1500)),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn deadline_wall_is_whole_second_and_matches_instant() {
        let c = Clock::new(0.01);
        let before_w = OffsetDateTime::now_utc();
        let before_i = Instant::now();
        let d = c.deadline_after(Now::read(), Duration::from_secs(100)); // 1 s real
        assert_eq!(d.wall.nanosecond(), 0);
        let wall_gap = (d.wall - before_w).as_seconds_f64();
        let mono_gap = d.at.duration_since(before_i).as_secs_f64();
        assert!(
            (wall_gap - mono_gap).abs() < 0.05,
            "wall {wall_gap} vs monotonic {mono_gap}"
        );
        assert!((1.0..2.05).contains(&mono_gap));
    }

    #[test]
    fn formats() {
        let t = datetime!(2026-11-25 08:22:00.456 UTC);
        assert_eq!(rfc3339_seconds(t), "2026-11-25T08:22:00Z");
        assert_eq!(iso_millis(t), "2026-11-25T08:22:00.456Z");
        assert_eq!(round_up_to_second(t), datetime!(2026-11-25 08:22:01 UTC));
        assert_eq!(
            round_up_to_second(datetime!(2026-11-25 08:22:00 UTC)),
            datetime!(2026-11-25 08:22:00 UTC)
        );
    }
}
