//! spot-sim's integration tests, one binary (`cargo test -p spot-sim --test it`; one module: `... --test it fis::`):
//! the real binary on port 0, driven over HTTP and through the real aws-sdk-autoscaling client. One binary links
//! the SDK once and keeps both test threads busy to the end. Each test starts its own spot-sim in its own scratch
//! folder and sets no process-wide state, so any two may run at the same time.
//!
//! # Layout
//! - `common`: the harness (`SimProc`: start, status, control calls, the Auto Scaling client; IMDS helpers).
//! - `imds`: IMDSv2 as a Spot instance sees it.
//! - `autoscaling`: the Auto Scaling lifecycle.
//! - `fis`: FIS templates, experiments, target selection and the timing of the interruption.
//! - `process`: real worker processes (environment, SIGTERM, replacements, no orphans).
//! - `refresh`: instance refresh.
//! - `scaling`: the scaling policy wired to its queue.

mod common;

mod autoscaling;
mod fis;
mod imds;
mod process;
mod refresh;
mod scaling;
