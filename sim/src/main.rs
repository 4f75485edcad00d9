//! spot-sim: a local Spot region on 127.0.0.1 — per-instance IMDSv2, the Auto Scaling lifecycle with a
//! termination hook, and FIS Spot interruptions that act — each over its real wire protocol, so the worker and
//! the chaos scripts run unchanged against it and against AWS.
//!
//! # Layout
//!
//! - `config`: the command line (clap; every run flag also from a `SPOT_SIM_*` variable).
//! - `clock`: the time scale, the present (`Now`), deadlines as `Instant` and wall-clock UTC, AWS time formats.
//! - `model`: the region as state and transitions, no I/O: `model::fleet` (group, instances, hook,
//!   interruptions, events, termination policy, instance refresh), `model::scaling` (target tracking) and
//!   `model::fis` (templates, experiments); transitions return `Effect`s.
//! - `process`: the real worker process behind an instance (spawn with its endpoints, signal, no orphans).
//! - `runtime`: owns the state lock; runs a model step, drops the lock, carries out the effects; the ticker;
//!   the scaler (reads the queue's backlog from SQS once per simulated minute for the scaling policy).
//! - `imds`: one IMDSv2 server per instance, with fault injection.
//! - `autoscaling`: the Auto Scaling Query API (XML) the SDK speaks.
//! - `fis`: the FIS REST-JSON API (parsing templates, rendering experiments).
//! - `control`: the `/_sim/` JSON control API (interrupt, rebalance, scale in, faults, signals, status).
//! - `scaler`: the scaling policy's inputs each period (the queue's backlog from SQS, the workers' busy count).
//! - `status`: the human-readable instance table.
//!
//! Dependencies point one way, so the model is tested without HTTP (`grep '^use crate' src/**/*.rs`):
//! `clock` <- `model` (`fis` -> `fleet`) <- `process` <- `runtime` <- `imds`, `autoscaling`, `fis`, `control`,
//! `scaler` <- `main`. The runtime starts IMDS servers through a function `main` hands it (`imds::app`), not an import.
//!
//! `main` only parses flags, binds, writes the ready file, and waits for SIGTERM/SIGINT or `/_sim/shutdown`.

mod autoscaling;
mod clock;
mod config;
mod control;
mod fis;
mod imds;
mod model;
mod process;
mod runtime;
mod scaler;
mod status;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::post;
use axum::Router;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::config::{Cli, Command, RunArgs};
use crate::runtime::{Sim, Workers};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPOT_SIM_LOG")
                .unwrap_or_else(|_| "spot_sim=info".into()),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Status(a)) => rt.block_on(async {
            let table = status::fetch_table(&a.api).await?;
            print!("{table}");
            Ok(())
        }),
        None => rt.block_on(run(cli.run)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.min_size <= args.desired,
        "--desired {} is below --min-size {}",
        args.desired,
        args.min_size
    );
    anyhow::ensure!(
        args.desired <= args.max_size,
        "--desired {} is above --max-size {}",
        args.desired,
        args.max_size
    );
    let log_dir = match &args.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("spot-sim-{}", std::process::id())),
    };
    let sim = new_sim(&args, &log_dir)?;
    let api = serve_api(&sim, &args).await?;

    // The first tick launches the initial capacity; the API is already up so workers can reach it.
    runtime::start_ticker(sim.clone());
    if let Some(url) = &args.scaling_queue_url {
        scaler::start(sim.clone(), url.clone(), args.scaling_metric.kind());
    }
    if let Some(every) = args.status_every {
        print_status_every(sim.clone(), every);
    }
    if let Some(path) = &args.ready_file {
        write_ready_file(path, &api)?;
    }
    println!("spot-sim listening on {api}");
    info!(
        api = %api,
        group = %args.group_name,
        desired = args.desired,
        time_scale = args.time_scale,
        log_dir = %log_dir.display(),
        "spot-sim ready"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
        _ = sim.shutdown.notified() => info!("shutdown requested"),
    }
    sim.stop_all().await;
    info!("spot-sim stopped");
    Ok(())
}

/// The simulator: its settings, clock, workers and (with a queue to watch) target tracking.
fn new_sim(args: &RunArgs, log_dir: &Path) -> anyhow::Result<Arc<Sim>> {
    if args.worker_cmd.is_some() {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating log dir {}", log_dir.display()))?;
    }
    let workers = Workers {
        cmd: args.worker_cmd.clone(),
        args: args.worker_args.clone(),
        log_dir: log_dir.to_path_buf(),
        auto_scaling_endpoint: args.worker_auto_scaling_endpoint.clone(),
    };
    Ok(Sim::new(
        runtime::settings_from_args(args),
        clock::Clock::new(args.time_scale),
        args.desired,
        workers,
        imds::app,
        args.scaling_queue_url
            .as_ref()
            .map(|_| model::scaling::Policy {
                target: args.target_value,
                min_size: args.min_size,
                max_size: args.max_size,
                metric: args.scaling_metric.kind(),
            }),
    ))
}

/// Bind the API (Auto Scaling, FIS, control) and serve it in the background; returns its URL.
async fn serve_api(sim: &Arc<Sim>, args: &RunArgs) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let api = format!("http://{}", listener.local_addr()?);
    sim.api_url.set(api.clone()).expect("set once");
    if let Some(url) = &args.authorizer {
        sim.authorizer.set(url.clone()).expect("set once");
    }
    let app = Router::new()
        .route("/", post(autoscaling::handle).get(autoscaling::handle))
        .merge(fis::routes())
        .merge(control::routes())
        .with_state(sim.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(cause = %e, "API server stopped");
        }
    });
    Ok(api)
}

/// The fleet's status on stderr every `every` (--status-every).
fn print_status_every(sim: Arc<Sim>, every: Duration) {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(every);
        loop {
            iv.tick().await;
            let doc = control::status_json(&sim);
            let orders = status::scrape_orders(&doc).await;
            eprint!("{}", status::render(&doc, &orders));
        }
    });
}

/// Write the ready file atomically (temp file + rename) so a watcher never reads half of it.
fn write_ready_file(path: &Path, api: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::json!({"api": api}).to_string())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
