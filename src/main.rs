//! `order-worker`: thin wiring. Parse flags, start logging and metrics, build clients, run, exit.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use order_worker::admission::Admission;
use order_worker::config::{Cli, Command, Config, LogFormat};
use order_worker::dispatch::{Control, Dispatcher};
use order_worker::drain::HookContext;
use order_worker::imds::{self, ImdsClient};
use order_worker::instance::{self, InstanceId};
use order_worker::queue::Queue;
use order_worker::store::Store;
use order_worker::supervisor::{self, Inbox, Start, Supervisor};
use order_worker::telemetry::{self, init_logging};
use order_worker::{aws, emf, repair, verify};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Some(Command::Verify(args)) => {
            init_logging(LogFormat::Text);
            runtime.block_on(verify::run(args))
        }
        Some(Command::Repair(args)) => {
            init_logging(LogFormat::Text);
            runtime.block_on(repair::run(args))
        }
        None => match cli.run.validate() {
            Ok(cfg) => {
                init_logging(cfg.log_format);
                telemetry::install();
                runtime.block_on(run_worker(cfg))
            }
            Err(e) => {
                eprintln!("order-worker: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(cause = %format!("{e:#}"), "order-worker failed");
            eprintln!("order-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_worker(cfg: Config) -> anyhow::Result<ExitCode> {
    // Handlers first: from here on SIGTERM never kills the process with messages held.
    let signals = supervisor::signals()?;
    // One try per SDK call: every retry is ours, under a budget (see `retry`).
    let sdk = aws::load(cfg.wait_time, 1).await?;
    let admission = Arc::new(Admission::default());
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = Queue::new(sqs, cfg.queue_url.clone(), admission.clone());
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let store = Store::new(ddb, cfg.orders_table.clone(), cfg.groups_table.clone());
    let stop_metrics = CancellationToken::new();
    tokio::spawn(telemetry::upkeep(stop_metrics.clone()));
    if let Some(addr) = cfg.metrics_addr {
        let bound = order_worker::http::serve(addr, admission.clone(), stop_metrics.clone())
            .await
            .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
        tracing::info!(addr = %bound, "metrics on /metrics, /healthz, /readyz");
    }
    let instance_id = Arc::new(InstanceId::new(cfg.instance_id.as_deref()));
    // One metadata client (one token) for the id, the watcher and the hook.
    let imds_client = match &cfg.imds_endpoint {
        Some(endpoint) => Some(ImdsClient::new(endpoint).context("--imds-endpoint")?),
        None => None,
    };
    // Metadata is watched from the start: an instance can be interrupted while it still waits for SQS or
    // DynamoDB (an IAM mistake, an outage), and its hook must be completed all the same.
    let (tx, notices) = mpsc::channel(16);
    let stop_watch = CancellationToken::new();
    if let Some(client) = &imds_client {
        let watch = imds::watch(client.clone(), cfg.imds_poll, tx, stop_watch.clone());
        tokio::spawn(watch);
    }
    let hooks = HookContext {
        autoscaling: (cfg.lifecycle_hook.is_some()).then(|| aws_sdk_autoscaling::Client::new(&sdk)),
        imds: imds_client.clone(),
        instance_id: instance_id.clone(),
    };
    let mut supervisor = Supervisor::new(&cfg, Inbox::new(signals, notices), hooks);
    if supervisor
        .start(supervisor::ready_to_start(&queue, &store))
        .await?
        == Start::Stopped
    {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(client) = &imds_client {
        instance::learn_from_metadata(instance_id.clone(), client.clone(), stop_watch.clone())
            .await;
    }
    let store = Arc::new(store);
    let dispatcher = Dispatcher::start(
        cfg.clone(),
        queue,
        store,
        admission,
        instance_id.clone(),
        Control::default(),
    );
    // EMF records in the JSON log: every --emf-interval, one at exit, one per drain (src/emf.rs).
    let emitter = cfg.emf_interval.map(|every| {
        let admission = dispatcher.admission().clone();
        let e = emf::Emitter::new(
            &cfg.emf_namespace,
            &cfg.queue_url,
            instance_id.clone(),
            admission,
        );
        tokio::spawn(e.clone().run(every, stop_watch.clone()));
        e
    });
    tracing::info!(queue = %cfg.queue_url, orders_table = %cfg.orders_table, groups_table = %cfg.groups_table, max_groups = cfg.max_groups, "order-worker running");
    let drained = supervisor.run(dispatcher).await;
    // The drain is over: stop watching metadata and the interval records, and get the last figures out before
    // the wait for the last long poll (the instance may be gone by then).
    stop_watch.cancel();
    if let Some(e) = &emitter {
        e.emit_interval();
        e.emit_drain(&drained.report);
    }
    drained.stop_loops().await;
    stop_metrics.cancel();
    Ok(ExitCode::SUCCESS)
}
