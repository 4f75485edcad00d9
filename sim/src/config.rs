//! Command line: `spot-sim [run flags]` runs the region, `spot-sim status --api URL` prints its table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "spot-sim",
    version,
    about = "Local Spot region: IMDSv2 per instance, the Auto Scaling lifecycle and FIS interruptions on 127.0.0.1",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the instance table of a running spot-sim.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The spot-sim API URL (as written to the ready file).
    #[arg(long, env = "SPOT_SIM_API")]
    pub api: String,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Address of the AWS APIs (Auto Scaling, FIS) and the /_sim control API. Port 0 picks a free port.
    #[arg(long, env = "SPOT_SIM_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Write `{"api": "http://127.0.0.1:PORT"}` here once listening.
    #[arg(long, env = "SPOT_SIM_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Auto Scaling group name.
    #[arg(long, env = "SPOT_SIM_GROUP_NAME", default_value = "order-workers")]
    pub group_name: String,

    /// Desired capacity at start.
    #[arg(long, env = "SPOT_SIM_DESIRED", default_value_t = 3)]
    pub desired: u32,

    /// Maximum size of the group (SetDesiredCapacity above it is refused).
    #[arg(long, env = "SPOT_SIM_MAX_SIZE", default_value_t = 10)]
    pub max_size: u32,

    /// Minimum size of the group: SetDesiredCapacity below it is refused, scale-in stops at it (terraform:
    /// `min_size`).
    #[arg(long, env = "SPOT_SIM_MIN_SIZE", default_value_t = 0)]
    pub min_size: u32,

    /// The group's default instance warmup (simulated time; terraform: `default_instance_warmup`): how long
    /// after InService an instance counts in the scaling ratio and as healthy for an instance refresh.
    #[arg(long, env = "SPOT_SIM_INSTANCE_WARMUP", default_value = "120s", value_parser = humantime::parse_duration)]
    pub instance_warmup: Duration,

    /// Scale the group by target tracking on this queue's backlog per instance in service
    /// (ApproximateNumberOfMessagesVisible / GroupInServiceInstances), read once per simulated minute from the
    /// SQS endpoint of the environment (AWS_ENDPOINT_URL_SQS). Without it the desired capacity only changes
    /// through the APIs.
    #[arg(long, env = "SPOT_SIM_SCALING_QUEUE_URL")]
    pub scaling_queue_url: Option<String>,

    /// The target-tracking policy's target value: visible messages per instance in service (terraform:
    /// `backlog_per_instance_target`).
    #[arg(long, env = "SPOT_SIM_TARGET_VALUE", default_value_t = 100.0, value_parser = parse_target)]
    pub target_value: f64,

    /// What the policy tracks: `backlog` (terraform's: visible / in service) or `fifo-aware` (the backlog, held
    /// at one spare worker while some worker holds no message group although messages wait).
    #[arg(
        long,
        env = "SPOT_SIM_SCALING_METRIC",
        value_enum,
        default_value = "backlog"
    )]
    pub scaling_metric: ScalingMetric,

    /// Termination lifecycle hook name.
    #[arg(long, env = "SPOT_SIM_HOOK_NAME", default_value = "order-worker-drain")]
    pub hook_name: String,

    /// Hook heartbeat timeout (simulated time).
    #[arg(long, env = "SPOT_SIM_HOOK_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub hook_timeout: Duration,

    /// How long after an interruption notice the group starts the termination lifecycle action (simulated
    /// time). AWS starts it at about the notice; a late start is what a worker that completes its hook quickly
    /// must survive (CompleteLifecycleAction answers "no active lifecycle action" until then).
    #[arg(long, env = "SPOT_SIM_HOOK_START_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub hook_start_delay: Duration,

    /// Pending -> InService delay (simulated time).
    #[arg(long, env = "SPOT_SIM_LAUNCH_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub launch_delay: Duration,

    /// Real time between SIGTERM and SIGKILL when an instance is terminated (not scaled).
    #[arg(long, env = "SPOT_SIM_KILL_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub kill_grace: Duration,

    /// Capacity rebalancing: launch a replacement on a rebalance recommendation.
    #[arg(long, env = "SPOT_SIM_CAPACITY_REBALANCE", default_value_t = true, action = ArgAction::Set)]
    pub capacity_rebalance: bool,

    /// Real seconds per simulated second (0.05 makes PT2M last 6 s).
    #[arg(long, env = "SPOT_SIM_TIME_SCALE", default_value_t = 1.0, value_parser = parse_scale)]
    pub time_scale: f64,

    /// Command to run on each instance (the worker). Without it instances are external (IMDS only).
    #[arg(long, env = "SPOT_SIM_WORKER_CMD")]
    pub worker_cmd: Option<PathBuf>,

    /// An argument for the worker command (repeat for more).
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,

    /// Directory for the worker logs (`<instance-id>.log`). Default: a fresh directory under the temp dir.
    #[arg(long, env = "SPOT_SIM_LOG_DIR")]
    pub log_dir: Option<PathBuf>,

    /// Print the instance table to stderr this often (off when absent).
    #[arg(long, env = "SPOT_SIM_STATUS_EVERY", value_parser = humantime::parse_duration)]
    pub status_every: Option<Duration>,

    /// Region shown in ARNs and availability zones.
    #[arg(long, env = "SPOT_SIM_REGION", default_value = "us-east-1")]
    pub region: String,

    /// Account id shown in ARNs.
    #[arg(long, env = "SPOT_SIM_ACCOUNT", default_value = "123456789012")]
    pub account: String,

    /// The Auto Scaling endpoint the workers are given (AWS_ENDPOINT_URL_AUTO_SCALING). Default: this
    /// simulator's own API; the local region gives its IAM gate, which authorises and forwards here.
    #[arg(long, env = "SPOT_SIM_WORKER_AUTO_SCALING_ENDPOINT")]
    pub worker_auto_scaling_endpoint: Option<String>,

    /// Where a FIS experiment's role is authorised for its actions on the instances (the IAM gate's
    /// `POST /iam/authorize`, chaos/iamgate): an experiment whose role may not interrupt a target fails, as FIS
    /// does. Default: no authorisation (every role may do everything).
    #[arg(long, env = "SPOT_SIM_AUTHORIZER")]
    pub authorizer: Option<String>,

    /// Instance type shown in metadata and Describe calls.
    #[arg(long, env = "SPOT_SIM_INSTANCE_TYPE", default_value = "c7g.large")]
    pub instance_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScalingMetric {
    Backlog,
    FifoAware,
}

impl ScalingMetric {
    pub fn kind(self) -> crate::model::scaling::MetricKind {
        match self {
            ScalingMetric::Backlog => crate::model::scaling::MetricKind::Backlog,
            ScalingMetric::FifoAware => crate::model::scaling::MetricKind::FifoAware,
        }
    }
}

fn parse_target(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("target value must be a number > 0".into())
    }
}

fn parse_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err("time scale must be > 0 and <= 100".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_shared_values() {
        let cli = Cli::try_parse_from(["spot-sim"]).unwrap();
        assert_eq!(cli.run.group_name, "order-workers");
        assert_eq!(cli.run.hook_name, "order-worker-drain");
        assert_eq!(cli.run.hook_timeout, Duration::from_secs(120));
        assert_eq!(cli.run.desired, 3);
        assert!(cli.run.capacity_rebalance);
        assert_eq!(cli.run.min_size, 0);
        assert_eq!(cli.run.instance_warmup, Duration::from_secs(120));
        assert_eq!(cli.run.target_value, 100.0);
        assert!(cli.run.scaling_queue_url.is_none());
        assert!(Cli::try_parse_from(["spot-sim", "--target-value", "0"]).is_err());
    }

    #[test]
    fn worker_args_and_scale() {
        let cli = Cli::try_parse_from([
            "spot-sim",
            "--worker-cmd",
            "/bin/sleep",
            "--worker-arg",
            "1000",
            "--worker-arg",
            "--x",
            "--time-scale",
            "0.05",
            "--capacity-rebalance",
            "false",
        ])
        .unwrap();
        assert_eq!(cli.run.worker_args, vec!["1000", "--x"]);
        assert_eq!(cli.run.time_scale, 0.05);
        assert!(!cli.run.capacity_rebalance);
        assert!(Cli::try_parse_from(["spot-sim", "--time-scale", "0"]).is_err());
    }

    #[test]
    fn status_subcommand() {
        let cli =
            Cli::try_parse_from(["spot-sim", "status", "--api", "http://127.0.0.1:1"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Status(_))));
    }
}
