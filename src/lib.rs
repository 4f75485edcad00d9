//! order-worker: apply orders from an SQS FIFO queue to DynamoDB exactly once and in group order, on EC2 Spot
//! instances that can be interrupted at any time.
//!
//! # Layout
//! - [`config`]: flags and environment, validated at start (a bad setting fails naming itself).
//! - [`aws`]: one AWS configuration for every client.
//! - [`retry`]: the one retry vocabulary: error classes (transient, throttled, this request, account-wide),
//!   the backoff, and the budget every AWS call runs under (until it works, or a drain's deadline).
//! - [`admission`]: readiness (owned by the drain) and the services an account-wide error blocks.
//! - [`order`]: parse, validate and total one order body (pure).
//! - [`queue`]: SQS receive / delete / change visibility (knows SQS, nothing about orders).
//! - [`schema`]: the items in the tables: attribute names, statuses, the record and marker builders.
//! - [`store`]: the exactly-once, ordered apply to DynamoDB (knows DynamoDB and a message's SequenceNumber):
//!   `claim` (the commit protocol as a pure state machine, its argument, and a randomized model test with
//!   planted wrong variants), `dynamo` (the calls: claim, PartiQL inserts, consistent reads).
//! - [`dispatch`]: the worker engine, cut by its steps: `held` (the pure held-message state), `receive`,
//!   `group` (per-group ordered tasks), `commit` (group-commit batching, background deletes), `visibility`
//!   (heartbeats, release).
//! - [`instance`]: this instance's id, in one place: from the flag or metadata, a fallback name until known.
//! - [`imds`]: instance metadata, cut by its parts: `errors`, `documents` (pure parsers; wire states as enums),
//!   `client` (IMDSv2 tokens, retries), `watcher` (polls into notices, each once), `fake` (tests' scripted server).
//! - [`lifecycle`]: completing our own Auto Scaling lifecycle hook, with heartbeats.
//! - [`supervisor`]: the one listener from start-up to exit (signals and notices in one inbox): waits for SQS and
//!   DynamoDB at start, follows the rebalance policy, turns a signal or a termination into the drain.
//! - [`drain`]: one drain path for every trigger (signal, interruption, lifecycle) and its report.
//! - [`telemetry`]: logging, and every metric's name, help and unit (the `metrics` crate, exported by
//!   `metrics-exporter-prometheus`); `snapshot` reads the figures back for EMF.
//! - [`http`]: the one port: `/metrics` (the recorder, with readiness read from [`admission`]), `/healthz`, `/readyz`.
//! - [`emf`]: the same figures as CloudWatch Embedded Metric Format records in the JSON log.
//! - [`repair`]: `order-worker repair`: rebuild a group's row from its records (a dry run by default).
//! - [`verify`]: the auditor: reads the table and a manifest, reports lost / twice / out-of-order orders.
//!
//! Data flows one way: queue -> dispatch -> order -> store -> queue (delete); imds -> drain -> lifecycle.
//! `main.rs` wires them together.

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
