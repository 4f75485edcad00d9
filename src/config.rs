//! Command line and environment: every flag has an environment variable, durations are humantime, and every
//! rule that can be checked before touching AWS is checked here, so a bad setting fails at start with its name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Interruption-aware SQS FIFO -> DynamoDB order worker for EC2 Spot.
///
/// Long-polls the FIFO queue, applies every order exactly once and in group order to DynamoDB, and drains
/// itself on a Spot interruption notice, a lifecycle termination, a rebalance recommendation or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "order-worker", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Audit the orders table against a manifest of what was sent: lost, applied twice, out of order.
    Verify(VerifyArgs),
    /// Inspect groups and rebuild their rows in the groups table from their records (a dry run unless --apply):
    /// the fix for a row the worker will not write on, and the one-time upgrade of a transactional row.
    Repair(RepairArgs),
}

/// Flags of `order-worker repair`.
#[derive(Debug, Clone, Args)]
pub struct RepairArgs {
    /// The orders table (read: one Scan).
    #[arg(long, env = "ORDER_WORKER_ORDERS_TABLE", default_value = "orders")]
    pub table: String,
    /// The per-group state table (the rows rebuilt).
    #[arg(
        long,
        env = "ORDER_WORKER_GROUPS_TABLE",
        default_value = "order-groups"
    )]
    pub groups_table: String,
    /// A group to inspect (repeatable).
    #[arg(long = "group", required_unless_present = "all")]
    pub groups: Vec<String>,
    /// Every group whose row the worker will not write on (a transactional row, a malformed one).
    #[arg(long, conflicts_with = "groups")]
    pub all: bool,
    /// Write the rebuilt rows (default: print the plan only).
    #[arg(long)]
    pub apply: bool,
}

/// What the worker does on a rebalance recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebalancePolicy {
    /// Keep working as if nothing happened.
    Ignore,
    /// Take no new message groups; finish the ones in hand; back to normal if no interruption follows.
    Soft,
    /// Drain now (release what is not started) and wait for the termination, or for the recovery time.
    Drain,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of the worker itself.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// URL of the SQS FIFO queue (must end in .fifo).
    #[arg(long, env = "ORDER_WORKER_QUEUE_URL")]
    pub queue_url: Option<String>,

    /// DynamoDB table of order records (partition key OrderID).
    #[arg(long, env = "ORDER_WORKER_ORDERS_TABLE", default_value = "orders")]
    pub orders_table: String,

    /// DynamoDB table of per-group state (partition key MessageGroupId): the last applied position.
    #[arg(
        long,
        env = "ORDER_WORKER_GROUPS_TABLE",
        default_value = "order-groups"
    )]
    pub groups_table: String,

    /// Most message groups held at once (receiving pauses at this many).
    #[arg(long, env = "ORDER_WORKER_MAX_GROUPS", default_value_t = 64)]
    pub max_groups: usize,

    /// Most store commits in flight at once (each commits runs of several groups: their claims and inserts).
    #[arg(long, env = "ORDER_WORKER_MAX_COMMITS", default_value_t = 4)]
    pub max_commits: usize,

    /// Visibility timeout requested on receive; held messages are extended before half of it has passed.
    #[arg(long, env = "ORDER_WORKER_VISIBILITY_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub visibility_timeout: Duration,

    /// Long-poll wait of one receive (0-20 s). A drain never abandons the poll in flight (a dropped poll can
    /// hide messages for a whole visibility timeout): the worker exits up to this long after its hook.
    #[arg(long, env = "ORDER_WORKER_WAIT_TIME", default_value = "20s", value_parser = humantime::parse_duration)]
    pub wait_time: Duration,

    /// Longest a drain may take before in-flight orders are abandoned and released.
    #[arg(long, env = "ORDER_WORKER_DRAIN_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// On an interruption notice, finish this long before the interruption time.
    #[arg(long, env = "ORDER_WORKER_DRAIN_MARGIN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_margin: Duration,

    /// Instance metadata endpoint (IMDSv2).
    #[arg(
        long,
        env = "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        default_value = "http://169.254.169.254"
    )]
    pub imds_endpoint: String,

    /// How often instance metadata is polled for Spot and lifecycle notices (with jitter).
    #[arg(long, env = "ORDER_WORKER_IMDS_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub imds_poll: Duration,

    /// Do not use instance metadata at all (off-EC2 development): no notices, no lifecycle hook.
    #[arg(long, env = "ORDER_WORKER_IMDS_DISABLED")]
    pub imds_disabled: bool,

    /// What to do on a rebalance recommendation.
    #[arg(
        long,
        env = "ORDER_WORKER_ON_REBALANCE",
        value_enum,
        default_value = "soft"
    )]
    pub on_rebalance: RebalancePolicy,

    /// After a rebalance recommendation with no interruption following, go back to normal after this long.
    #[arg(long, env = "ORDER_WORKER_REBALANCE_RECOVERY", default_value = "10m", value_parser = humantime::parse_duration)]
    pub rebalance_recovery: Duration,

    /// Auto Scaling group name for the lifecycle hook (default: the instance tag aws:autoscaling:groupName).
    #[arg(long, env = "ORDER_WORKER_ASG_NAME")]
    pub asg_name: Option<String>,

    /// Termination lifecycle hook this worker completes after draining (empty: never complete a hook).
    #[arg(
        long,
        env = "ORDER_WORKER_LIFECYCLE_HOOK",
        default_value = "order-worker-drain"
    )]
    pub lifecycle_hook: String,

    /// Interval of RecordLifecycleActionHeartbeat while a drain outlasts it.
    #[arg(long, env = "ORDER_WORKER_HOOK_HEARTBEAT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub hook_heartbeat: Duration,

    /// Instance id to record and to complete the hook with (default: from instance metadata).
    #[arg(long, env = "ORDER_WORKER_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Address of the Prometheus /metrics, /healthz and /readyz endpoint, or `off`.
    #[arg(
        long,
        env = "ORDER_WORKER_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: String,

    /// Log format.
    #[arg(
        long,
        env = "ORDER_WORKER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Interval of the CloudWatch Embedded Metric Format records in the JSON log (`0`: none). Only with
    /// `--log-format json`; one more record is written at exit, and one per drain.
    #[arg(long, env = "ORDER_WORKER_EMF_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub emf_interval: Duration,

    /// CloudWatch namespace of the EMF metrics.
    #[arg(
        long,
        env = "ORDER_WORKER_EMF_NAMESPACE",
        default_value = "OrderWorker"
    )]
    pub emf_namespace: String,

    /// Simulated work per order (tests and benchmarks: makes orders "in flight" for a while).
    #[arg(long, env = "ORDER_WORKER_WORK_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub work_delay: Duration,
}

/// Flags of `order-worker verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The orders table to audit.
    #[arg(long, env = "ORDER_WORKER_ORDERS_TABLE", default_value = "orders")]
    pub table: String,
    /// The per-group state table (its LastPosition must equal the number of records of the group).
    #[arg(
        long,
        env = "ORDER_WORKER_GROUPS_TABLE",
        default_value = "order-groups"
    )]
    pub groups_table: String,
    /// JSON lines, one per message sent, in send order: {"order_id": "...", "group": "...", "expect": "accepted|rejected"}.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Write the report as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only audit the groups named in the manifest (a shared table may hold other runs' groups).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub only_manifest_groups: bool,
}

/// A validated worker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub queue_url: String,
    pub orders_table: String,
    pub groups_table: String,
    pub max_groups: usize,
    pub max_commits: usize,
    pub visibility_timeout: Duration,
    pub wait_time: Duration,
    pub drain_timeout: Duration,
    pub drain_margin: Duration,
    /// None when instance metadata is disabled.
    pub imds_endpoint: Option<String>,
    pub imds_poll: Duration,
    pub on_rebalance: RebalancePolicy,
    pub rebalance_recovery: Duration,
    pub asg_name: Option<String>,
    /// None when hooks are disabled.
    pub lifecycle_hook: Option<String>,
    pub hook_heartbeat: Duration,
    pub instance_id: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub work_delay: Duration,
    /// EMF records every this often; None when off (`0`, or a text log).
    pub emf_interval: Option<Duration>,
    pub emf_namespace: String,
}

/// A setting that cannot work, named.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

impl RunArgs {
    /// Check every rule that needs no AWS call.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let queue_url = self.checked_queue_url()?;
        self.check_tables()?;
        self.check_limits()?;
        self.check_timings()?;
        let (imds_endpoint, metrics_addr) = self.checked_endpoints()?;
        let lifecycle_hook = Some(self.lifecycle_hook.trim().to_string()).filter(|h| !h.is_empty());
        if let Some(hook) = &lifecycle_hook {
            if hook.len() > 255 {
                return Err(bad("--lifecycle-hook", "at most 255 characters"));
            }
        }
        let (emf_interval, emf_namespace) = self.checked_emf()?;
        Ok(Config {
            queue_url,
            orders_table: self.orders_table.clone(),
            groups_table: self.groups_table.clone(),
            max_groups: self.max_groups,
            max_commits: self.max_commits,
            visibility_timeout: self.visibility_timeout,
            wait_time: self.wait_time,
            drain_timeout: self.drain_timeout,
            drain_margin: self.drain_margin,
            imds_endpoint,
            imds_poll: self.imds_poll,
            on_rebalance: self.on_rebalance,
            rebalance_recovery: self.rebalance_recovery,
            asg_name: self.asg_name.clone().filter(|s| !s.trim().is_empty()),
            lifecycle_hook,
            hook_heartbeat: self.hook_heartbeat,
            instance_id: self.instance_id.clone().filter(|s| !s.trim().is_empty()),
            metrics_addr,
            log_format: self.log_format,
            work_delay: self.work_delay,
            emf_interval,
            emf_namespace,
        })
    }

    /// A FIFO queue's URL: ordering needs FIFO.
    fn checked_queue_url(&self) -> Result<String, ConfigError> {
        let queue_url = self
            .queue_url
            .clone()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| bad("--queue-url / ORDER_WORKER_QUEUE_URL", "is required"))?;
        if !queue_url.starts_with("http://") && !queue_url.starts_with("https://") {
            return Err(bad("--queue-url", format!("{queue_url:?} is not a URL")));
        }
        if !queue_url.trim_end_matches('/').ends_with(".fifo") {
            return Err(bad(
                "--queue-url",
                format!("{queue_url:?} is not a FIFO queue (the name must end in .fifo): ordering needs FIFO"),
            ));
        }
        Ok(queue_url)
    }

    /// Two valid, different DynamoDB table names.
    fn check_tables(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("--orders-table", &self.orders_table),
            ("--groups-table", &self.groups_table),
        ] {
            let ok = (3..=255).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok {
                return Err(bad(
                    name,
                    format!("{value:?} is not a valid DynamoDB table name"),
                ));
            }
        }
        if self.orders_table == self.groups_table {
            return Err(bad("--groups-table", "must differ from --orders-table"));
        }
        Ok(())
    }

    /// The counts: groups and commits in flight.
    fn check_limits(&self) -> Result<(), ConfigError> {
        if self.max_groups == 0 || self.max_groups > 10_000 {
            return Err(bad("--max-groups", "must be 1-10000"));
        }
        if self.max_commits == 0 || self.max_commits > 64 {
            return Err(bad("--max-commits", "must be 1-64"));
        }
        Ok(())
    }

    /// Every duration flag within its bounds, and the visibility timeout longer than a drain.
    fn check_timings(&self) -> Result<(), ConfigError> {
        let secs = |d: Duration| d.as_secs_f64();
        if self.visibility_timeout < Duration::from_secs(2)
            || self.visibility_timeout > Duration::from_secs(12 * 3600)
        {
            return Err(bad(
                "--visibility-timeout",
                "must be 2s-12h (SQS allows 0-12h; under 2s nothing can finish)",
            ));
        }
        if self.visibility_timeout.subsec_nanos() != 0 {
            return Err(bad("--visibility-timeout", "SQS takes whole seconds"));
        }
        // 0 s would be a short poll: on an empty queue the worker would receive back to back, a hot loop of
        // billed requests.
        if self.wait_time < Duration::from_secs(1)
            || self.wait_time > Duration::from_secs(20)
            || self.wait_time.subsec_nanos() != 0
        {
            return Err(bad(
                "--wait-time",
                "must be whole seconds, 1-20s (a long poll; 0 would receive back to back on an empty queue)",
            ));
        }
        if self.drain_timeout.is_zero() || self.drain_timeout > Duration::from_secs(12 * 3600) {
            return Err(bad(
                "--drain-timeout",
                "must be more than 0 and at most 12h",
            ));
        }
        // A message must not come back to another worker while we are still allowed to be finishing it.
        if self.visibility_timeout <= self.drain_timeout {
            return Err(bad(
                "--visibility-timeout",
                format!(
                    "{}s must be longer than --drain-timeout {}s, or a drained order could be redelivered while it is still being applied",
                    secs(self.visibility_timeout),
                    secs(self.drain_timeout)
                ),
            ));
        }
        if self.drain_margin >= Duration::from_secs(120) {
            return Err(bad(
                "--drain-margin",
                "must be under the two-minute Spot notice",
            ));
        }
        if self.imds_poll < Duration::from_millis(100) || self.imds_poll > Duration::from_secs(60) {
            return Err(bad(
                "--imds-poll",
                "must be 100ms-60s (a notice gives two minutes)",
            ));
        }
        // Lifecycle hooks take a heartbeat timeout of at most 7200 s: a longer interval would never beat in time.
        if self.hook_heartbeat < Duration::from_secs(1)
            || self.hook_heartbeat > Duration::from_secs(7200)
        {
            return Err(bad("--hook-heartbeat", "must be 1s-2h"));
        }
        // Added to an Instant at the first rebalance recommendation: an unbounded value overflows there (a panic
        // while holding work).
        if self.rebalance_recovery > Duration::from_secs(7 * 24 * 3600) {
            return Err(bad("--rebalance-recovery", "must be at most 7 days"));
        }
        if self.work_delay > Duration::from_secs(3600) {
            return Err(bad("--work-delay", "must be at most 1h"));
        }
        Ok(())
    }

    /// The metadata endpoint (none when disabled) and the metrics address (none when `off`).
    fn checked_endpoints(&self) -> Result<(Option<String>, Option<SocketAddr>), ConfigError> {
        let imds_endpoint = if self.imds_disabled {
            None
        } else {
            let e = self.imds_endpoint.trim().trim_end_matches('/').to_string();
            if !e.starts_with("http://") && !e.starts_with("https://") {
                return Err(bad(
                    "--imds-endpoint / AWS_EC2_METADATA_SERVICE_ENDPOINT",
                    format!("{e:?} is not a URL"),
                ));
            }
            Some(e)
        };
        let metrics_addr =
            match self.metrics_addr.trim() {
                "off" | "" => None,
                a => Some(a.parse().map_err(|_| {
                    bad("--metrics-addr", format!("{a:?} is not host:port or `off`"))
                })?),
            };
        Ok((imds_endpoint, metrics_addr))
    }

    /// The EMF interval (none when off or the log is not JSON) and namespace.
    fn checked_emf(&self) -> Result<(Option<Duration>, String), ConfigError> {
        let emf_interval = if self.emf_interval.is_zero() || self.log_format != LogFormat::Json {
            None
        } else if self.emf_interval < Duration::from_secs(1)
            || self.emf_interval > Duration::from_secs(3600)
        {
            return Err(bad("--emf-interval", "must be 0 (off) or 1s-1h"));
        } else {
            Some(self.emf_interval)
        };
        let ns = self.emf_namespace.trim();
        if ns.is_empty()
            || ns.len() > 255
            || ns.starts_with("AWS/")
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/#:".contains(&b))
        {
            return Err(bad(
                "--emf-namespace",
                format!("{ns:?} is not a CloudWatch custom namespace (1-255 of A-Za-z0-9._-/#:, not AWS/...)"),
            ));
        }
        Ok((emf_interval, ns.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec![
            "order-worker",
            "--queue-url",
            "http://127.0.0.1:1/000000000000/orders.fifo",
        ];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("clap parse").run.validate()
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.orders_table, "orders");
        assert_eq!(c.groups_table, "order-groups");
        assert_eq!(c.visibility_timeout, Duration::from_secs(120));
        assert_eq!(c.drain_timeout, Duration::from_secs(90));
        assert_eq!(c.lifecycle_hook.as_deref(), Some("order-worker-drain"));
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--visibility-timeout", "60s", "--drain-timeout", "90s"],
                "--visibility-timeout",
            ),
            (&["--wait-time", "21s"], "--wait-time"),
            (&["--wait-time", "0s"], "--wait-time"),
            (&["--max-groups", "0"], "--max-groups"),
            (&["--orders-table", "x"], "--orders-table"),
            (&["--groups-table", "orders"], "--groups-table"),
            (&["--metrics-addr", "nowhere"], "--metrics-addr"),
            (&["--imds-poll", "10ms"], "--imds-poll"),
            (&["--drain-margin", "3m"], "--drain-margin"),
            (
                &["--log-format", "json", "--emf-interval", "100ms"],
                "--emf-interval",
            ),
            (&["--emf-namespace", "AWS/SQS"], "--emf-namespace"),
        ];
        for (args, setting) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.to_string().contains(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn every_duration_flag_has_an_upper_bound_named_at_start() {
        // The largest value humantime reads: each one must fail validation naming its flag, not panic later.
        let huge = "18446744073709551615s";
        for flag in [
            "--visibility-timeout",
            "--wait-time",
            "--drain-timeout",
            "--drain-margin",
            "--imds-poll",
            "--rebalance-recovery",
            "--hook-heartbeat",
            "--work-delay",
        ] {
            let err = parse(&[flag, huge]).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
        let err = parse(&["--log-format", "json", "--emf-interval", huge]).unwrap_err();
        assert!(err.to_string().contains("--emf-interval"), "{err}");
        assert!(parse(&["--rebalance-recovery", "7d"]).is_ok());
    }

    #[test]
    fn queue_must_be_fifo() {
        let err = Cli::try_parse_from([
            "order-worker",
            "--queue-url",
            "https://sqs.eu-west-1.amazonaws.com/1/orders",
        ])
        .unwrap()
        .run
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = Cli::try_parse_from(["order-worker"])
            .unwrap()
            .run
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("--queue-url"), "{err}");
    }

    #[test]
    fn off_switches() {
        let c = parse(&[
            "--metrics-addr",
            "off",
            "--lifecycle-hook",
            "",
            "--imds-disabled",
        ])
        .unwrap();
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.lifecycle_hook, None);
        assert_eq!(c.imds_endpoint, None);
    }

    #[test]
    fn emf_only_with_json_logs() {
        assert_eq!(parse(&[]).unwrap().emf_interval, None);
        let c = parse(&["--log-format", "json"]).unwrap();
        assert_eq!(c.emf_interval, Some(Duration::from_secs(60)));
        assert_eq!(c.emf_namespace, "OrderWorker");
        let c = parse(&["--log-format", "json", "--emf-interval", "0"]).unwrap();
        assert_eq!(c.emf_interval, None);
    }

    #[test]
    fn verify_subcommand_parses() {
        let cli = Cli::try_parse_from(["order-worker", "verify", "--manifest", "m.jsonl"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Verify(_))));
    }
}
