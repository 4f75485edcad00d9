//! order-worker: apply orders from an SQS FIFO queue to DynamoDB exactly once and in group order, on EC2 Spot
//! instances that can be interrupted at any time.
//!
//! # Layout
//! - [`config`]: flags and environment, validated at start (a bad setting fails naming itself).
//! - [`aws`]: one AWS configuration for every client (one try per SDK call: every retry is ours).
//! - [`retry`]: the one retry vocabulary and driver: error classes (transient, throttled, this request,
//!   account-wide), named paces of the one backoff, the budget every AWS call runs under (until it works, or a
//!   drain's deadline), and `Retry`, the only place that counts failures, sleeps and tells them in the log.
//! - [`admission`]: whether the worker takes work: readiness (owned by the drain) and the services an
//!   account-wide error blocks.
//! - [`order`]: parse, validate and total one order body (pure).
//! - [`queue`]: SQS receive / delete / change visibility (knows SQS, nothing about orders).
//! - [`schema`]: the items in the tables: attribute names, statuses, the record and marker builders.
//! - [`store`]: the exactly-once, ordered apply to DynamoDB (knows DynamoDB and a message's SequenceNumber):
//!   `protocol` (the commit protocol of a run as a pure state machine, with its argument), `model` (its
//!   randomized model test on a simulated queue and table, with planted wrong variants), `dynamo` (the calls:
//!   claims, PartiQL inserts, consistent reads).
//! - [`dispatch`]: the engine, a struct per loop: `held` (the pure held-message state, and `SharedHeld`, the
//!   only lock of it), `receive` (`ReceiveLoop`), `group` (a `GroupTask` per held group), `commit` (the
//!   `Committer` handle and the `CommitLoop` batching runs into store commits, deletes in the background),
//!   `visibility` (the `Heartbeat` and the `Releaser`).
//! - [`instance`]: this instance's id, in one place: from the flag or metadata, a fallback name until known.
//! - [`imds`]: instance metadata, cut by its parts: `errors`, `documents` (pure parsers; wire states as enums),
//!   `client` (IMDSv2 tokens, retries), `watcher` (polls into notices, each once), `fake` (tests' scripted server).
//! - [`supervisor`]: the one listener from start-up to exit (signals and notices in one `Inbox`): waits for SQS
//!   and DynamoDB at start, follows the rebalance policy, turns a signal or a notice into a drain
//!   (`Trigger::from_notice`, the one mapping).
//! - [`drain`]: one drain path for every trigger (signal, interruption, lifecycle, rebalance); returns its report.
//! - [`lifecycle`]: our own Auto Scaling lifecycle hook: heartbeats, and `finish`, the one call that completes it.
//! - [`telemetry`]: logging, and every metric's name, help and unit (the `metrics` crate, exported by
//!   `metrics-exporter-prometheus`); `snapshot` reads the figures back for EMF.
//! - [`http`]: the one port: `/metrics` (the recorder, with readiness read from [`admission`]), `/healthz`, `/readyz`.
//! - [`emf`]: the same figures as CloudWatch Embedded Metric Format records in the JSON log.
//! - [`repair`]: `order-worker repair`: rebuild a group's row from its records (a dry run by default).
//! - [`verify`]: the auditor: reads the table and a manifest, fails every state the guarantees forbid.
//!
//! Data flows one way: queue -> dispatch -> order -> store -> queue (delete); imds -> supervisor -> drain ->
//! lifecycle. `main.rs` wires them: it builds the clients, starts the metadata watcher (whose notices reach the
//! supervisor's inbox, the one channel from metadata to the drain), the dispatcher and the EMF emitter, and
//! emits the drain's report when the supervisor returns it.

pub mod admission;
pub mod aws;
pub mod config;
pub mod dispatch;
pub mod drain;
pub mod emf;
pub mod http;
pub mod imds;
pub mod instance;
pub mod lifecycle;
pub mod order;
pub mod queue;
pub mod repair;
pub mod retry;
pub mod schema;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod verify;
