//! The documents instance metadata serves and their parsers (pure: no I/O, property-tested in
//! `tests/it/fuzz_parsers.rs`).

use std::fmt;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ParseError;

/// What EC2 will do to a Spot instance at the interruption time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpotAction {
    /// The instance will be terminated.
    Terminate,
    /// The instance will be stopped.
    Stop,
    /// The instance will be hibernated.
    Hibernate,
}

impl SpotAction {
    /// The value as IMDS spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpotAction::Terminate => "terminate",
            SpotAction::Stop => "stop",
            SpotAction::Hibernate => "hibernate",
        }
    }
}

impl fmt::Display for SpotAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Spot interruption notice (`spot/instance-action`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceAction {
    /// What will happen.
    pub action: SpotAction,
    /// When it will happen (about two minutes after the notice appears).
    pub time: OffsetDateTime,
}

/// A rebalance recommendation (`events/recommendations/rebalance`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rebalance {
    /// When EC2 emitted the recommendation.
    pub notice_time: OffsetDateTime,
}

/// The Auto Scaling target lifecycle state (`autoscaling/target-lifecycle-state`): what the group intends for
/// this instance. Only [`LifecycleState::Terminated`] calls for a drain; the others are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleState {
    InService,
    Terminated,
    Standby,
    Detached,
    WarmedRunning,
    WarmedStopped,
    WarmedHibernated,
    WarmedTerminated,
}

impl LifecycleState {
    /// Every state, in the order of [`LIFECYCLE_STATES`].
    pub const ALL: [LifecycleState; 8] = [
        LifecycleState::InService,
        LifecycleState::Terminated,
        LifecycleState::Standby,
        LifecycleState::Detached,
        LifecycleState::WarmedRunning,
        LifecycleState::WarmedStopped,
        LifecycleState::WarmedHibernated,
        LifecycleState::WarmedTerminated,
    ];

    /// The value as IMDS spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::InService => "InService",
            LifecycleState::Terminated => "Terminated",
            LifecycleState::Standby => "Standby",
            LifecycleState::Detached => "Detached",
            LifecycleState::WarmedRunning => "Warmed:Running",
            LifecycleState::WarmedStopped => "Warmed:Stopped",
            LifecycleState::WarmedHibernated => "Warmed:Hibernated",
            LifecycleState::WarmedTerminated => "Warmed:Terminated",
        }
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The target lifecycle states as IMDS spells them; anything else is malformed.
pub const LIFECYCLE_STATES: [&str; 8] = [
    "InService",
    "Terminated",
    "Standby",
    "Detached",
    "Warmed:Running",
    "Warmed:Stopped",
    "Warmed:Hibernated",
    "Warmed:Terminated",
];

fn parse_time(field: &str, value: &str) -> Result<OffsetDateTime, ParseError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
        ParseError(format!(
            "field {field:?}: {value:?} is not an RFC 3339 time: {e}"
        ))
    })
}

/// Parses `{"action":"terminate"|"stop"|"hibernate","time":"2026-11-25T08:22:00Z"}`. Unknown
/// extra fields are ignored (AWS may add some); an unknown action is an error.
pub fn parse_instance_action(body: &str) -> Result<InstanceAction, ParseError> {
    #[derive(Deserialize)]
    struct Raw {
        action: String,
        time: String,
    }
    let raw: Raw =
        serde_json::from_str(body).map_err(|e| ParseError(format!("invalid JSON: {e}")))?;
    let action = match raw.action.as_str() {
        "terminate" => SpotAction::Terminate,
        "stop" => SpotAction::Stop,
        "hibernate" => SpotAction::Hibernate,
        other => {
            return Err(ParseError(format!(
                "unknown action {:?}",
                crate::order::truncate(other, 64)
            )))
        }
    };
    Ok(InstanceAction {
        action,
        time: parse_time("time", &raw.time)?,
    })
}

/// Parses `{"noticeTime":"2026-11-25T08:17:00Z"}`.
pub fn parse_rebalance(body: &str) -> Result<Rebalance, ParseError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "noticeTime")]
        notice_time: String,
    }
    let raw: Raw =
        serde_json::from_str(body).map_err(|e| ParseError(format!("invalid JSON: {e}")))?;
    Ok(Rebalance {
        notice_time: parse_time("noticeTime", &raw.notice_time)?,
    })
}

/// Parses the plain-text target lifecycle state (surrounding whitespace ignored); only the values
/// in [`LIFECYCLE_STATES`] are accepted.
pub fn parse_lifecycle_state(body: &str) -> Result<LifecycleState, ParseError> {
    let state = body.trim();
    if let Some(known) = LifecycleState::ALL
        .into_iter()
        .find(|s| s.as_str() == state)
    {
        Ok(known)
    } else {
        // Bounded so a garbage body cannot produce a giant log line.
        let shown: String = state.chars().take(64).collect();
        Err(ParseError(format!("unknown lifecycle state {shown:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parses_instance_action() {
        let a = parse_instance_action(r#"{"action":"terminate","time":"2026-11-25T08:22:00Z"}"#)
            .unwrap();
        assert_eq!(a.action, SpotAction::Terminate);
        assert_eq!(a.time, datetime!(2026-11-25 08:22:00 UTC));
        let a = parse_instance_action(
            r#" {"time":"2026-11-25T08:22:00Z", "action":"hibernate", "extra": 1} "#,
        )
        .unwrap();
        assert_eq!(a.action, SpotAction::Hibernate);
        assert_eq!(
            parse_instance_action(r#"{"action":"stop","time":"2026-11-25T08:22:00+01:00"}"#)
                .unwrap()
                .time,
            datetime!(2026-11-25 07:22:00 UTC)
        );
    }

    #[test]
    fn rejects_bad_instance_actions() {
        for body in [
            "",
            "null",
            "[]",
            "{",
            r#"{"action":"terminate"}"#,
            r#"{"time":"2026-11-25T08:22:00Z"}"#,
            r#"{"action":"reboot","time":"2026-11-25T08:22:00Z"}"#,
            r#"{"action":"Terminate","time":"2026-11-25T08:22:00Z"}"#,
            r#"{"action":"terminate","time":"tomorrow"}"#,
            r#"{"action":"terminate","time":"2026-11-25 08:22:00"}"#,
            r#"{"action":"terminate","time":1764058920}"#,
            r#"{"action":7,"time":"2026-11-25T08:22:00Z"}"#,
        ] {
            assert!(parse_instance_action(body).is_err(), "accepted {body:?}");
        }
    }

    #[test]
    fn parses_rebalance() {
        let r = parse_rebalance(r#"{"noticeTime":"2026-11-25T08:17:00Z"}"#).unwrap();
        assert_eq!(r.notice_time, datetime!(2026-11-25 08:17:00 UTC));
        for body in [
            "",
            "{}",
            r#"{"notice_time":"2026-11-25T08:17:00Z"}"#,
            r#"{"noticeTime":"soon"}"#,
        ] {
            assert!(parse_rebalance(body).is_err(), "accepted {body:?}");
        }
    }

    #[test]
    fn parses_lifecycle_states() {
        // The enum and the documented spellings agree, one for one.
        for (state, spelled) in LifecycleState::ALL.into_iter().zip(LIFECYCLE_STATES) {
            assert_eq!(state.as_str(), spelled);
            assert_eq!(parse_lifecycle_state(spelled).unwrap(), state);
        }
        assert_eq!(
            parse_lifecycle_state("Terminated\n").unwrap(),
            LifecycleState::Terminated
        );
        assert_eq!(
            parse_lifecycle_state("  InService ").unwrap(),
            LifecycleState::InService
        );
        for bad in [
            "",
            "terminated",
            "Warmed:",
            "Warmed:Pending",
            "Pending:Wait",
            "In Service",
        ] {
            assert!(parse_lifecycle_state(bad).is_err(), "accepted {bad:?}");
        }
        let long = "x".repeat(10_000);
        assert!(parse_lifecycle_state(&long).unwrap_err().0.len() < 200);
    }

    #[test]
    fn parsers_never_panic_on_odd_input() {
        // A cheap property test: random bytes and mutated valid documents must give Ok or Err.
        let seeds = [
            r#"{"action":"terminate","time":"2026-11-25T08:22:00Z"}"#,
            r#"{"noticeTime":"2026-11-25T08:17:00Z"}"#,
            "Warmed:Hibernated",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5_000 {
            let mut bytes = seeds[rng.usize(..seeds.len())].as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..bytes.len());
                match rng.u8(..3) {
                    0 => bytes[i] = rng.u8(..),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, rng.u8(..)),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse_instance_action(&s);
            let _ = parse_rebalance(&s);
            let _ = parse_lifecycle_state(&s);
        }
    }
}
