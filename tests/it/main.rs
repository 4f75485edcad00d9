//! The integration tests, one binary (`cargo test --test it`; one module: `cargo test --test it spot::`).
//! One binary links the AWS SDKs and compiles `common` once, and `--test-threads` keeps both threads busy to
//! the end of the suite instead of idling at the end of each file. Every test starts its own servers on free
//! ports with its own queue, tables and log folder (`target/test-logs/<test>/`), and sets no environment
//! variable or other process-wide state, so any two of them may run at the same time.
//!
//! # Layout
//! - `common`: the harness: the emulator behind the IAM gate, fixtures, the real binaries, spot-sim, the fault
//!   proxy (`common::proxy`) and DynamoDB Local (`common::dynamodb_local`).
//! - `worker`: exactly once, in exact order, nothing lost, against the emulator.
//! - `store`: the store on both DynamoDB engines (ministack and DynamoDB Local).
//! - `protocols`: two store protocols on the same tables (the protocol fence).
//! - `spot`: Spot interruptions and the lifecycle hook, against spot-sim.
//! - `faults`: the guarantees under service faults (chaos/proxy.py).
//! - `service_errors`: a service's error is not an order's fault.
//! - `proxy`: chaos/proxy.py's faults as the real SDK sees them.
//! - `emf`: the CloudWatch Embedded Metric Format records of the worker's log.
//! - `verify`: the oracle (`order-worker verify`) on planted forbidden states.
//! - `fuzz_parsers`: seeded property and mutation tests of the untrusted-input parsers.

mod common;

mod emf;
mod faults;
mod fuzz_parsers;
mod protocols;
mod proxy;
mod service_errors;
mod spot;
mod store;
mod verify;
mod worker;
