//! The supervisor: from start-up to exit it alone listens to what can end the worker (signals and metadata
//! notices, one channel each), decides when to drain, and starts the one drain path ([`crate::drain`]).
//!
//! - Start-up ([`Supervisor::start`]): while the worker waits for SQS and DynamoDB, a signal ends the wait
//!   (nothing is held yet) and a termination notice completes the hook without work; other notices are kept.
//! - Running ([`Supervisor::run`]): a signal, an interruption or the `Terminated` target state drains; a
//!   rebalance recommendation follows `--on-rebalance`.
//!
//! | rebalance policy | what happens |
//! |------------------|--------------|
//! | `ignore`         | logged |
//! | `soft`           | pause receiving, finish what is held |
//! | `drain`          | pause and release what is not started |
//!
//! Back to normal after `--rebalance-recovery` if no interruption follows.

use std::collections::VecDeque;
use std::future::Future;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, RebalancePolicy};
use crate::dispatch::Dispatcher;
use crate::drain::{self, Drain, Drained, HookContext, Trigger};
use crate::imds::{LifecycleState, Notice, Rebalance};
use crate::queue::Queue;
use crate::retry::{Class, Pace, Retry};
use crate::store::{Store, TableError};
use crate::telemetry::NOTICES;

/// What one wait of the [`Inbox`] heard.
#[derive(Debug)]
pub enum Heard {
    Signal(&'static str),
    Notice(Notice),
}

/// Everything that can end the worker, in one place: the signals and the metadata notices.
pub struct Inbox {
    /// SIGTERM / SIGINT, from [`signals`].
    signals: mpsc::Receiver<&'static str>,
    /// Notices from the metadata watcher (closed at once when metadata is off).
    notices: mpsc::Receiver<Notice>,
    /// False once the watcher has stopped: its channel is not polled again.
    notices_open: bool,
    /// Notices heard while the worker waited to start that called for no drain: heard again first.
    kept: VecDeque<Notice>,
}

impl Inbox {
    pub fn new(signals: mpsc::Receiver<&'static str>, notices: mpsc::Receiver<Notice>) -> Self {
        Inbox {
            signals,
            notices,
            notices_open: true,
            kept: VecDeque::new(),
        }
    }

    /// The next signal or notice (kept notices first). Cancel-safe: nothing is lost when another branch of a
    /// `select!` wins. Pending forever once both channels are closed.
    pub async fn next(&mut self) -> Heard {
        match self.kept.pop_front() {
            Some(n) => Heard::Notice(n),
            None => self.listen().await,
        }
    }

    /// The next signal or notice from the channels (kept notices wait for [`Inbox::next`]).
    async fn listen(&mut self) -> Heard {
        loop {
            tokio::select! {
                Some(s) = self.signals.recv() => return Heard::Signal(s),
                n = self.notices.recv(), if self.notices_open => match n {
                    Some(n) => return Heard::Notice(n),
                    None => self.notices_open = false,
                },
                else => return std::future::pending().await,
            }
        }
    }
}

/// How start-up ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// SQS and DynamoDB answer: take work.
    Ready,
    /// A signal or a termination came first (its hook, if due, is done): exit.
    Stopped,
}

/// The one listener from start-up to exit.
pub struct Supervisor<'a> {
    cfg: &'a Config,
    inbox: Inbox,
    hooks: HookContext,
    /// A termination was seen (a later SIGTERM drain completes the hook too).
    termination_seen: bool,
}

impl<'a> Supervisor<'a> {
    pub fn new(cfg: &'a Config, inbox: Inbox, hooks: HookContext) -> Self {
        Supervisor {
            cfg,
            inbox,
            hooks,
            termination_seen: false,
        }
    }

    /// Wait for `checks` while listening: a signal ends the wait (nothing is held yet); a termination completes
    /// the hook with nothing to drain (measured in a soak: a worker that started during a DynamoDB denial never
    /// saw its notice and held its instance for the hook's timeout); other notices are kept for [`Self::run`].
    pub async fn start(
        &mut self,
        checks: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<Start> {
        tokio::pin!(checks);
        loop {
            let heard = tokio::select! {
                checked = &mut checks => return checked.map(|()| Start::Ready),
                heard = self.inbox.listen() => heard,
            };
            match heard {
                Heard::Signal(s) => {
                    tracing::info!(
                        signal = s,
                        "stopped while waiting for SQS/DynamoDB; nothing was held"
                    );
                    return Ok(Start::Stopped);
                }
                Heard::Notice(n) => match Trigger::from_notice(&n) {
                    Some(trigger) => {
                        tell(&n);
                        drain::without_work(self.cfg, &self.hooks, trigger).await;
                        return Ok(Start::Stopped);
                    }
                    None => self.inbox.kept.push_back(n),
                },
            }
        }
    }

    /// Run the policy until a signal or a termination, then drain; the drain's report comes back at once.
    /// Never waits on AWS before the drain: the supervisor must keep hearing notices and signals whatever SQS
    /// does.
    pub async fn run(mut self, dispatcher: Dispatcher) -> Drained {
        dispatcher.admission().set_ready(true);
        let mut recover_at: Option<Instant> = None;
        let trigger = loop {
            let recovery = async {
                match recover_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                heard = self.inbox.next() => match heard {
                    Heard::Signal(s) => break Trigger::Signal(s),
                    Heard::Notice(n) => {
                        tell(&n);
                        if let Some(trigger) = Trigger::from_notice(&n) {
                            break trigger;
                        }
                        if let Notice::Rebalance(r) = n {
                            recover_at = self.rebalance(&dispatcher, &r).or(recover_at);
                        }
                    }
                },
                _ = recovery => {
                    recover_at = None;
                    dispatcher.set_paused(false);
                    dispatcher.admission().set_ready(true);
                    tracing::info!("no interruption followed the rebalance recommendation; taking new work again");
                }
            }
        };
        self.termination_seen |= !matches!(trigger, Trigger::Signal(_));
        Drain {
            cfg: self.cfg,
            dispatcher,
            inbox: &mut self.inbox,
            hooks: &self.hooks,
            termination_seen: self.termination_seen,
        }
        .run(trigger)
        .await
    }

    /// Follow `--on-rebalance`; the time to take work again, if it paused.
    fn rebalance(&self, dispatcher: &Dispatcher, r: &Rebalance) -> Option<Instant> {
        let cfg = self.cfg;
        if cfg.on_rebalance == RebalancePolicy::Ignore {
            tracing::info!(notice_time = %r.notice_time, "rebalance recommendation ignored (--on-rebalance ignore)");
            return None;
        }
        dispatcher.set_paused(true);
        dispatcher.admission().set_ready(false);
        if cfg.on_rebalance == RebalancePolicy::Drain {
            dispatcher.release_pending();
        }
        tracing::warn!(
            notice_time = %r.notice_time,
            policy = ?cfg.on_rebalance,
            recovery = %humantime::format_duration(cfg.rebalance_recovery),
            "rebalance recommendation: taking no new message groups"
        );
        Some(Instant::now() + cfg.rebalance_recovery)
    }
}

/// Count and log a notice (the Spot interruption and the `Terminated` state as warnings).
fn tell(notice: &Notice) {
    match notice {
        Notice::Interruption(a) => {
            metrics::counter!(NOTICES, "kind" => "interruption").increment(1);
            tracing::warn!(action = %a.action, time = %a.time, "Spot interruption notice");
        }
        Notice::TargetLifecycle(LifecycleState::Terminated) => {
            metrics::counter!(NOTICES, "kind" => "target_lifecycle").increment(1);
            tracing::warn!("target lifecycle state Terminated (scale-in or rebalancing replaces this instance)");
        }
        Notice::TargetLifecycle(state) => tracing::info!(state = %state, "target lifecycle state"),
        Notice::Rebalance(_) => metrics::counter!(NOTICES, "kind" => "rebalance").increment(1),
    }
}

/// Wait until the queue and the tables answer. A queue or table that does not exist (or a check that cannot
/// succeed) fails now, naming it; an outage, and an access denial (a policy may still be propagating), are
/// waited out.
pub async fn ready_to_start(queue: &Queue, store: &Store) -> anyhow::Result<()> {
    let checked = Retry::new("start-up")
        .says("waiting for SQS/DynamoDB before starting")
        .pace(Pace::STARTUP)
        .run(
            async |_| {
                queue.check_fifo().await.map_err(|e| {
                    let missing = e.code.as_deref().is_some_and(|c| {
                        c.ends_with("QueueDoesNotExist") || c.ends_with("NonExistentQueue")
                    });
                    match (missing, e.retryable()) {
                        (true, _) => {
                            Problem::Fatal(format!("queue check failed: --queue-url: {e}"))
                        }
                        (false, false) => Problem::Fatal(format!("queue check failed: {e}")),
                        (false, true) => Problem::Wait(e.to_string()),
                    }
                })?;
                store.check_tables().await.map_err(|e| match e {
                    TableError::Wrong(e) => Problem::Fatal(format!("table check failed: {e}")),
                    TableError::Unavailable(e) => Problem::Wait(e),
                })
            },
            Problem::class,
        )
        .await;
    checked.map_err(|gave_up| match gave_up.last {
        Some(problem) => anyhow::anyhow!("{problem}"),
        None => anyhow::anyhow!("{gave_up}"),
    })
}

/// Why start-up cannot go on yet.
#[derive(Debug, thiserror::Error)]
enum Problem {
    /// A setting to fix: fails the start.
    #[error("{0}")]
    Fatal(String),
    /// Waited out, at the start-up pace whatever its kind (as before the one driver: the account-wide pace
    /// would wait up to 30 s between checks, and a start-up is watched by whoever deployed it).
    #[error("{0}")]
    Wait(String),
}

impl Problem {
    fn class(&self) -> Class {
        match self {
            Problem::Fatal(_) => Class::Request,
            Problem::Wait(_) => Class::Transient,
        }
    }
}

/// SIGTERM and SIGINT as a channel. The handlers are installed once, here, so no signal can fall between
/// two waits.
pub fn signals() -> anyhow::Result<mpsc::Receiver<&'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            if tx.send(name).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn notices_kept_at_start_up_are_heard_again_only_once_the_worker_runs() {
        let (_signal, signals) = mpsc::channel(1);
        let (watcher, notices) = mpsc::channel(4);
        let mut inbox = Inbox::new(signals, notices);
        inbox
            .kept
            .push_back(Notice::TargetLifecycle(LifecycleState::InService));
        watcher
            .send(Notice::TargetLifecycle(LifecycleState::Terminated))
            .await
            .unwrap();
        // Start-up listens to the channels: a kept notice is not heard again (it would spin).
        assert!(matches!(
            inbox.listen().await,
            Heard::Notice(Notice::TargetLifecycle(LifecycleState::Terminated))
        ));
        assert!(matches!(
            inbox.next().await,
            Heard::Notice(Notice::TargetLifecycle(LifecycleState::InService))
        ));
        // The watcher gone and no signal: nothing more, and no busy loop.
        drop(watcher);
        let quiet = tokio::time::timeout(Duration::from_millis(20), inbox.next()).await;
        assert!(quiet.is_err());
    }
}
