//! The simulated region as plain state and transitions: no sockets, no processes, no HTTP types. Every
//! transition takes the present ([`Now`]) and returns the [`Effect`]s the runtime must carry out (start an IMDS
//! server, spawn a worker, send a signal), so the rules the worker's guarantees rest on are unit-tested here
//! without HTTP, and the runtime can carry the effects out after it has released the state lock.
//!
//! - `fleet`: the group, its instances, the lifecycle hook, Spot interruptions, rebalancing, the event log
//!   (`fleet/states`: the states as enums and the records; `fleet/termination`: how an instance leaves).
//! - `scaling`: the target-tracking policy (its alarms' datapoints, warmup, the ratio), run by the fleet at each
//!   one-minute period with the queue's backlog the runtime read.
//! - `fis`: FIS templates and experiments; resolves targets against the fleet and schedules its interruptions.
//!
//! `fis` depends on `fleet`, never the reverse; [`Region`] holds both and runs what involves both (the tick).

pub mod fis;
pub mod fleet;
pub mod scaling;

use crate::clock::{Clock, Deadline, Now};

pub use fis::Fis;
pub use fleet::{Fleet, Settings};

/// What the runtime must do after a transition, in order. The model has already recorded the new state; an
/// effect that fails is reported back (`Fleet::imds_failed`, `Fleet::worker_failed`, `Fleet::record_signal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Bind a 127.0.0.1 port and serve this instance's IMDS on it, then report the URL (`Fleet::imds_bound`).
    StartImds { instance: String },
    /// Start this instance's worker process (after its IMDS server, whose URL it is given), then report the pid
    /// (`Fleet::worker_started`). Only for instances that are not external.
    SpawnWorker { instance: String },
    /// Signal the worker's process group, then record `note` with the outcome (`Fleet::record_signal`).
    Signal {
        instance: String,
        pid: u32,
        signal: Signal,
        note: String,
    },
}

/// The signals spot-sim sends (Term, Kill) or lets the control API send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
    Int,
    Hup,
}

impl Signal {
    /// The names the control API accepts (`TERM`, `SIGTERM`, `term`, ...).
    pub fn parse(name: &str) -> Option<Signal> {
        Some(
            match name.trim_start_matches("SIG").to_ascii_uppercase().as_str() {
                "TERM" => Signal::Term,
                "KILL" => Signal::Kill,
                "STOP" => Signal::Stop,
                "CONT" => Signal::Cont,
                "INT" => Signal::Int,
                "HUP" => Signal::Hup,
                _ => return None,
            },
        )
    }
}

/// A request the model refuses. Each API maps it to its own wire error (Auto Scaling: `ValidationError` with the
/// message; control API: 404 / 409 / 400; FIS: `ResourceNotFoundException` / `ValidationException`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The named group, hook, instance, template or experiment does not exist.
    NotFound(String),
    /// It exists but is in the wrong state for the request.
    WrongState(String),
    /// The request is not acceptable as such (e.g. above the group's max size).
    Invalid(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::NotFound(m) | Refusal::WrongState(m) | Refusal::Invalid(m) => m,
        }
    }
}

/// The whole region behind the state lock: one group and the FIS experiments acting on it.
#[derive(Debug)]
pub struct Region {
    pub fleet: Fleet,
    pub fis: Fis,
}

impl Region {
    pub fn new(settings: Settings, clock: Clock, desired: u32) -> Region {
        Region {
            fleet: Fleet::new(settings, clock, desired),
            fis: Fis::default(),
        }
    }

    /// One pass over every deadline: the fleet's, then the experiments that have run their course.
    pub fn tick(&mut self, now: Now) -> Vec<Effect> {
        let effects = self.fleet.tick(now);
        self.fis.tick(&mut self.fleet, now);
        effects
    }

    /// A direct Spot interruption (control API): notice at once, reclaimed at `end`. Applied at once rather than
    /// on the next tick, so the caller can read the notice as soon as the call returns.
    pub fn interrupt(
        &mut self,
        now: Now,
        id: &str,
        end: Deadline,
        rebalance: bool,
    ) -> Result<Vec<Effect>, Refusal> {
        let mut effects = self.fleet.interrupt(now, id, end, rebalance)?;
        effects.extend(self.tick(now));
        Ok(effects)
    }
}
