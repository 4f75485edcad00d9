//! The scaling policy's inputs, once per (scaled) one-minute period: the queue's ApproximateNumberOfMessagesVisible
//! read from SQS at that moment (CloudWatch's one-minute datapoint) and, for the FIFO-aware metric, how many
//! workers hold a message group (each worker's `order_worker_groups_in_flight`, what it would publish as an EMF
//! metric on AWS). The model decides (`Fleet::close_period`).

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::clock::Now;
use crate::model::fleet::Lifecycle;
use crate::model::scaling::{MetricKind, PERIOD};
use crate::runtime::Sim;
use crate::status;

/// Run the policy every period until the process exits. A failed read is a missing datapoint, never a zero: it
/// cannot scale anything in.
pub fn start(sim: Arc<Sim>, queue_url: String, metric: MetricKind) {
    tokio::spawn(async move {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            loader = loader.region(aws_config::Region::new(sim.settings.region.clone()));
        }
        // On AWS nobody of ours reads this figure: SQS publishes it to CloudWatch and Auto Scaling's alarms read
        // it there. A local region that enforces IAM in front of SQS points the scaler past its gate.
        if let Some(url) = std::env::var_os("SPOT_SIM_METRICS_SQS_ENDPOINT") {
            loader = loader.endpoint_url(url.to_string_lossy());
        }
        let sqs = aws_sdk_sqs::Client::new(&loader.load().await);
        let period = sim.clock.real(PERIOD);
        let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            iv.tick().await;
            let visible = match visible(&sqs, &queue_url).await {
                Ok(v) => {
                    failing = false;
                    v
                }
                Err(e) => {
                    if !failing {
                        warn!(cause = %e, "reading the queue backlog failed: no datapoint");
                    }
                    failing = true;
                    None
                }
            };
            let busy = match metric {
                MetricKind::FifoAware => busy_workers(&sim).await,
                MetricKind::Backlog => None,
            };
            sim.step(|st, now: Now| {
                st.fleet.close_period(now, visible, busy);
                ((), Vec::new())
            });
        }
    });
}

async fn visible(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<Option<u64>, String> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
    Ok(out
        .attributes()
        .and_then(|a| a.get(&A::ApproximateNumberOfMessages))
        .and_then(|v| v.parse::<u64>().ok()))
}

/// InService workers holding at least one message group; None when no InService worker answered.
async fn busy_workers(sim: &Arc<Sim>) -> Option<u32> {
    let addrs: Vec<String> = {
        let st = sim.lock();
        st.fleet
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::InService && i.pid.is_some())
            .filter_map(|i| i.metrics_addr.clone())
            .collect()
    };
    let mut answered = 0;
    let mut busy = 0;
    for a in addrs {
        if let Ok((200, body)) =
            status::http_get(&format!("http://{a}/metrics"), Duration::from_millis(500)).await
        {
            answered += 1;
            if status::gauge(&body, "order_worker_groups_in_flight").unwrap_or(0.0) > 0.0 {
                busy += 1;
            }
        }
    }
    (answered > 0).then_some(busy)
}
