//! `order-worker`: thin wiring. Parse flags, start logging and metrics, build clients, run, exit.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use order_worker::config::{Cli, Command, Config, LogFormat, VerifyArgs};
use order_worker::dispatch::{Control, Dispatcher};
use order_worker::drain::{self, supervise, HookContext, HookOutcome};
use order_worker::health::Health;
use order_worker::imds::{self, ImdsClient};
use order_worker::instance::InstanceId;
use order_worker::queue::Queue;
use order_worker::store::{Store, TableError};
use order_worker::telemetry::{self, init_logging};
use order_worker::{aws, emf, retry, verify};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Some(Command::Verify(args)) => {
            init_logging(LogFormat::Text);
            runtime.block_on(run_verify(args))
        }
        Some(Command::Repair(args)) => {
            init_logging(LogFormat::Text);
            runtime.block_on(order_worker::repair::run(args))
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
    let mut signals = shutdown_signals()?;
    // One try per SDK call: every retry is ours, under a budget (see `retry`).
    let sdk = aws::load(cfg.wait_time, 1).await?;
    let health = Arc::new(Health::default());
    let queue = Queue::new(
        aws_sdk_sqs::Client::new(&sdk),
        cfg.queue_url.clone(),
        health.clone(),
    );
    let store = Arc::new(Store::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        cfg.orders_table.clone(),
        cfg.groups_table.clone(),
    ));
    let stop_metrics = CancellationToken::new();
    tokio::spawn(telemetry::upkeep(stop_metrics.clone()));
    if let Some(addr) = cfg.metrics_addr {
        let bound = order_worker::http::serve(addr, health.clone(), stop_metrics.clone())
            .await
            .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
        tracing::info!(addr = %bound, "metrics on /metrics, /healthz, /readyz");
    }
    let instance_id = Arc::new(InstanceId::new(cfg.instance_id.as_deref()));
    // One metadata client (one token) for the id probe, the watcher and the hook.
    let imds_client = match &cfg.imds_endpoint {
        Some(endpoint) => Some(ImdsClient::new(endpoint).context("--imds-endpoint")?),
        None => None,
    };
    // Metadata is watched from the start: an instance can be interrupted while it still waits for SQS or
    // DynamoDB (an IAM mistake, an outage), and its hook must be completed all the same (measured in a soak: a
    // worker that started during a DynamoDB denial never saw its notice and held its instance for the hook's
    // timeout).
    let (tx, mut early_notices) = mpsc::channel(16);
    let stop_watch = CancellationToken::new();
    match &imds_client {
        Some(client) => {
            tokio::spawn(imds::watch(
                client.clone(),
                cfg.imds_poll,
                tx,
                stop_watch.clone(),
            ));
        }
        None => drop(tx),
    }
    let autoscaling =
        (cfg.lifecycle_hook.is_some()).then(|| aws_sdk_autoscaling::Client::new(&sdk));
    let hooks = HookContext {
        autoscaling,
        imds: imds_client.clone(),
        instance_id: instance_id.clone(),
    };

    // A queue or table that does not exist fails now, naming it; an outage is waited out. A signal or a
    // termination notice ends the wait (nothing is held yet); other notices are kept for the supervisor.
    let mut kept = Vec::new();
    {
        let checks = startup_checks(&queue, &store);
        tokio::pin!(checks);
        let mut open = true;
        loop {
            tokio::select! {
                checked = &mut checks => { checked?; break; }
                Some(s) = signals.recv() => {
                    tracing::info!(signal = s, "stopped while waiting for SQS/DynamoDB; nothing was held");
                    return Ok(ExitCode::SUCCESS);
                }
                n = early_notices.recv(), if open => match n {
                    None => open = false,
                    Some(n) => match drain::terminal(&n) {
                        Some(trigger) => {
                            let report = drain::without_work(&cfg, &hooks, trigger).await;
                            if let Some(why) = report.hook_failure() {
                                tracing::warn!(cause = %why, "exiting without a completed hook");
                            }
                            return Ok(ExitCode::SUCCESS);
                        }
                        None => kept.push(n),
                    },
                },
            }
        }
    }
    // The supervisor sees the notices kept during the wait first, then the watcher's.
    let (tx, notices) = mpsc::channel(16);
    tokio::spawn(async move {
        for n in kept {
            if tx.send(n).await.is_err() {
                return;
            }
        }
        while let Some(n) = early_notices.recv().await {
            if tx.send(n).await.is_err() {
                return;
            }
        }
    });

    // Records name their instance: ask metadata briefly before taking work (it answers in milliseconds on
    // EC2); if it is down, start anyway and learn the id in the background.
    if let (None, Some(client)) = (instance_id.known(), &imds_client) {
        if let Ok(Ok(Some(id))) =
            tokio::time::timeout(Duration::from_secs(3), client.instance_id()).await
        {
            tracing::info!(instance_id = %id, "instance id from metadata");
            instance_id.learn(&id);
        }
    }
    let dispatcher = Dispatcher::start(
        cfg.clone(),
        queue,
        store,
        health,
        instance_id.clone(),
        Control::default(),
    );
    if let Some(client) = &imds_client {
        if instance_id.known().is_none() {
            tokio::spawn(learn_instance_id(
                client.clone(),
                instance_id.clone(),
                stop_watch.clone(),
            ));
        }
    }
    // EMF records in the JSON log: every --emf-interval, one at exit, one per drain (src/emf.rs).
    let emitter = cfg.emf_interval.map(|every| {
        let e = emf::Emitter::new(
            &cfg.emf_namespace,
            &cfg.queue_url,
            instance_id.clone(),
            dispatcher.health().clone(),
        );
        tokio::spawn(e.clone().run(every, stop_watch.clone()));
        e
    });
    tracing::info!(queue = %cfg.queue_url, orders_table = %cfg.orders_table, groups_table = %cfg.groups_table, max_groups = cfg.max_groups, "order-worker running");
    let report = supervise(&cfg, dispatcher, notices, signals, hooks, |report| {
        // The drain is over: stop watching metadata and the interval records, and get the last figures out
        // before the wait for the last long poll (the instance may be gone by then).
        stop_watch.cancel();
        if let Some(e) = &emitter {
            e.emit_interval();
            e.emit_drain(report);
        }
    })
    .await;
    stop_watch.cancel();
    stop_metrics.cancel();
    if let HookOutcome::Failed(why) = &report.hook {
        tracing::warn!(cause = %why, "exiting after the drain without a completed hook");
    }
    Ok(ExitCode::SUCCESS)
}

async fn startup_checks(queue: &Queue, store: &Store) -> anyhow::Result<()> {
    let mut attempt = 0u32;
    loop {
        let q = queue.check_fifo().await;
        let t = if q.is_ok() {
            store.check_tables().await
        } else {
            Ok(())
        };
        let problem = match (q, t) {
            (Ok(()), Ok(())) => return Ok(()),
            // A queue that does not exist is a setting to fix; an access denial may be a policy still
            // propagating, so it is waited for like an outage (and said loudly).
            (Err(e), _)
                if e.code.as_deref().is_some_and(|c| {
                    c.ends_with("QueueDoesNotExist") || c.ends_with("NonExistentQueue")
                }) =>
            {
                anyhow::bail!("queue check failed: --queue-url: {e}")
            }
            (Err(e), _) if !e.retryable() => anyhow::bail!("queue check failed: {e}"),
            (_, Err(TableError::Wrong(e))) => anyhow::bail!("table check failed: {e}"),
            (Err(e), _) => e.to_string(),
            (_, Err(TableError::Unavailable(e))) => e,
        };
        if attempt == 0 || attempt.is_power_of_two() {
            tracing::warn!(cause = %problem, attempt = attempt + 1, "waiting for SQS/DynamoDB before starting");
        }
        tokio::time::sleep(retry::backoff(
            attempt,
            Duration::from_millis(200),
            Duration::from_secs(10),
        ))
        .await;
        attempt += 1;
    }
}

/// Ask metadata for our instance id until it answers (ProcessedBy and the hook need it); never blocks work.
async fn learn_instance_id(client: ImdsClient, slot: Arc<InstanceId>, stop: CancellationToken) {
    let mut attempt = 0u32;
    loop {
        match client.instance_id().await {
            Ok(Some(id)) => {
                tracing::info!(instance_id = %id, "instance id from metadata");
                slot.learn(&id);
                return;
            }
            Ok(None) => {}
            Err(e) if attempt == 0 => {
                tracing::warn!(cause = %e, "instance id not available from metadata yet; retrying")
            }
            Err(_) => {}
        }
        attempt += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry::backoff(attempt, Duration::from_millis(500), Duration::from_secs(30))) => {}
        }
    }
}

/// SIGTERM and SIGINT as a channel. The handlers are installed once, here, so no signal can fall between
/// two waits.
fn shutdown_signals() -> anyhow::Result<mpsc::Receiver<&'static str>> {
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

async fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let sent = verify::read_manifest(&args.manifest)?;
    let sdk = aws::load(Duration::from_secs(20), 3).await?;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let (stored, last) = verify::read_table(&client, &args.table, &args.groups_table).await?;
    let report = verify::audit(&sent, &stored, &last, args.only_manifest_groups);
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
