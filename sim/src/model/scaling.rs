//! Target tracking as EC2 Auto Scaling runs it for terraform/compute.tf's `backlog-per-instance` policy: the
//! metric (visible messages / instances in service) is one datapoint per one-minute period; Auto Scaling's two
//! alarms watch it; a breach sets the desired capacity from the ratio of the metric to the target, counting only
//! instances past their warmup. Pure: the runtime reads the queue and hands the numbers in.
//!
//! The alarms AWS creates for a target-tracking policy (and owns: they cannot be edited):
//! - `AlarmHigh`: metric > target for 3 datapoints within 3 minutes -> scale out.
//! - `AlarmLow`: metric < 90 % of the target for 15 datapoints within 15 minutes -> scale in.
//!
//! While an alarm stays in ALARM the policy runs again every period, so a metric that keeps rising keeps adding
//! capacity. The new capacity is `ceil(counted * metric / target)`, where `counted` is the InService instances
//! whose warmup is over: an instance still warming up is part of the desired capacity but not of the base the
//! ratio multiplies, so repeated breaches during a warmup do not stack launches. Scale-in waits until no
//! instance is warming up (AWS blocks dynamic scale-in during a warmup), never goes below `min_size`, and a
//! scale-out never goes above `max_size`. A period with no instance in service has no datapoint (the metric
//! math divides by zero): it breaks both runs, as missing data leaves the alarms without their datapoints.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

/// Datapoints above the target that fire AlarmHigh (within as many one-minute periods).
pub const SCALE_OUT_DATAPOINTS: usize = 3;
/// Datapoints below the low threshold that fire AlarmLow.
pub const SCALE_IN_DATAPOINTS: usize = 15;
/// AlarmLow's threshold as a share of the target.
pub const SCALE_IN_THRESHOLD: f64 = 0.9;
/// CloudWatch's period for these metrics (sim time).
pub const PERIOD: Duration = Duration::from_secs(60);

/// The policy's numbers (terraform: `backlog_per_instance_target`, `min_size`, `max_size`,
/// `default_instance_warmup`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Visible messages per instance in service.
    pub target: f64,
    pub min_size: u32,
    pub max_size: u32,
    pub metric: MetricKind,
}

/// What the policy tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// terraform/compute.tf's: visible messages / instances in service.
    Backlog,
    /// The backlog, but never more than "one spare worker" while some worker holds no message group although
    /// messages are waiting: then the backlog sits in groups others hold, and another instance would find
    /// nothing to take (see [`fifo_aware`]).
    FifoAware,
}

/// The FIFO-aware metric. `busy`: workers holding at least one message group (what each worker publishes as
/// `order_worker_groups_in_flight`). With messages visible and an idle worker, a FIFO queue's backlog is in
/// groups other workers hold: more instances cannot help, so the metric is `target * (busy + 1) / in_service`
/// (neutral with exactly one spare worker, low with more: scale in towards busy + 1), capped by the plain
/// backlog per instance. With no idle worker it is the plain metric.
pub fn fifo_aware(target: f64, visible: u64, in_service: f64, busy: u32) -> Option<f64> {
    if in_service <= 0.0 {
        return None;
    }
    let plain = visible as f64 / in_service;
    let idle = in_service - f64::from(busy);
    if visible > 0 && idle >= 1.0 {
        Some(plain.min(target * (f64::from(busy) + 1.0) / in_service))
    } else {
        Some(plain)
    }
}

/// What the group looks like when a period ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The desired capacity now.
    pub desired: u32,
    /// InService instances past their warmup: the base of the ratio.
    pub counted: u32,
    /// Pending or InService instances still inside their warmup.
    pub warming: u32,
}

/// Which alarm is in ALARM after a datapoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Alarm {
    Ok,
    High,
    Low,
}

/// The outcome of one period: the alarm state, and the new desired capacity when the policy changes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub alarm: Alarm,
    pub desired: Option<u32>,
    /// Why the alarm did not act (scale-in blocked by a warmup, at max, ...), for the event log.
    pub held: Option<&'static str>,
}

/// The alarm state after the latest datapoint (`points` oldest first; None: no datapoint that period).
pub fn alarm(target: f64, points: &VecDeque<Option<f64>>) -> Alarm {
    let last = |n: usize| -> Option<Vec<f64>> {
        if points.len() < n {
            return None;
        }
        points.iter().skip(points.len() - n).copied().collect()
    };
    if last(SCALE_OUT_DATAPOINTS).is_some_and(|p| p.iter().all(|&v| v > target)) {
        Alarm::High
    } else if last(SCALE_IN_DATAPOINTS)
        .is_some_and(|p| p.iter().all(|&v| v < target * SCALE_IN_THRESHOLD))
    {
        Alarm::Low
    } else {
        Alarm::Ok
    }
}

/// The capacity the ratio asks for: `ceil(counted * metric / target)`.
pub fn ratio_capacity(target: f64, metric: f64, counted: u32) -> u32 {
    // A tiny tolerance so 300 / 100 * 1 is 3, not 4 from a rounding error.
    let want = (f64::from(counted) * metric / target - 1e-9).ceil();
    want.clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Run the policy on the datapoints after a period ends.
pub fn decide(policy: &Policy, points: &VecDeque<Option<f64>>, cap: Capacity) -> Decision {
    let alarm = alarm(policy.target, points);
    let metric = points.back().copied().flatten();
    let (desired, held) = match (alarm, metric) {
        (Alarm::High, Some(m)) => {
            if cap.counted == 0 {
                (None, Some("every instance is still warming up"))
            } else {
                let want = ratio_capacity(policy.target, m, cap.counted).min(policy.max_size);
                if want > cap.desired {
                    (Some(want), None)
                } else if cap.desired >= policy.max_size {
                    (None, Some("at max_size"))
                } else {
                    (None, Some("instances warming up already cover it"))
                }
            }
        }
        (Alarm::Low, Some(m)) => {
            if cap.warming > 0 {
                (None, Some("scale-in waits for the warmup to end"))
            } else {
                let want = ratio_capacity(policy.target, m, cap.counted).max(policy.min_size);
                if want < cap.desired {
                    (Some(want), None)
                } else {
                    (None, Some("at min_size"))
                }
            }
        }
        _ => (None, None),
    };
    Decision {
        alarm,
        desired,
        held,
    }
}

/// One period's datapoint, for the status document.
#[derive(Debug, Clone)]
pub struct Datapoint {
    pub at: OffsetDateTime,
    /// ApproximateNumberOfMessagesVisible read at the end of the period (None: the read failed).
    pub visible: Option<u64>,
    /// GroupInServiceInstances, averaged over the period's ticks.
    pub in_service: f64,
    /// visible / in_service; None without a datapoint.
    pub metric: Option<f64>,
    pub alarm: Alarm,
    /// The desired capacity after the policy ran.
    pub desired: u32,
    pub counted: u32,
    pub warming: u32,
    /// Workers holding a message group (FIFO-aware metric only).
    pub busy: Option<u32>,
}

/// The policy's state between periods: the datapoints the alarms look back over, the in-service average being
/// built, and the history for the status document.
#[derive(Debug)]
pub struct Tracker {
    pub policy: Policy,
    points: VecDeque<Option<f64>>,
    in_service_sum: f64,
    in_service_samples: u32,
    pub history: Vec<Datapoint>,
}

/// History kept in the status document (a day of one-minute periods).
const MAX_HISTORY: usize = 1440;

impl Tracker {
    pub fn new(policy: Policy) -> Tracker {
        Tracker {
            policy,
            points: VecDeque::new(),
            in_service_sum: 0.0,
            in_service_samples: 0,
            history: Vec::new(),
        }
    }

    /// One tick's GroupInServiceInstances sample.
    pub fn sample_in_service(&mut self, n: u32) {
        self.in_service_sum += f64::from(n);
        self.in_service_samples += 1;
    }

    /// The period ended with `visible` messages (and `busy` workers holding a group, for the FIFO-aware
    /// metric): record the datapoint and run the policy.
    pub fn close_period(
        &mut self,
        wall: OffsetDateTime,
        visible: Option<u64>,
        busy: Option<u32>,
        in_service_now: u32,
        cap: Capacity,
    ) -> Decision {
        let in_service = if self.in_service_samples == 0 {
            f64::from(in_service_now)
        } else {
            self.in_service_sum / f64::from(self.in_service_samples)
        };
        self.in_service_sum = 0.0;
        self.in_service_samples = 0;
        let metric = match (visible, self.policy.metric, busy) {
            (Some(v), MetricKind::FifoAware, Some(b)) => {
                fifo_aware(self.policy.target, v, in_service, b)
            }
            // Without the workers' figures the FIFO-aware metric falls back to the plain one.
            (Some(v), _, _) if in_service > 0.0 => Some(v as f64 / in_service),
            _ => None,
        };
        self.points.push_back(metric);
        while self.points.len() > SCALE_IN_DATAPOINTS {
            self.points.pop_front();
        }
        let d = decide(&self.policy, &self.points, cap);
        self.history.push(Datapoint {
            at: wall,
            visible,
            in_service,
            metric,
            alarm: d.alarm,
            desired: d.desired.unwrap_or(cap.desired),
            counted: cap.counted,
            warming: cap.warming,
            busy,
        });
        if self.history.len() > MAX_HISTORY {
            self.history.drain(..MAX_HISTORY / 10);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        target: 100.0,
        min_size: 1,
        max_size: 10,
        metric: MetricKind::Backlog,
    };

    fn pts(v: &[f64]) -> VecDeque<Option<f64>> {
        v.iter().map(|&x| Some(x)).collect()
    }

    fn cap(desired: u32, counted: u32, warming: u32) -> Capacity {
        Capacity {
            desired,
            counted,
            warming,
        }
    }

    #[test]
    fn scale_out_needs_three_datapoints_above_the_target() {
        // Two above: no alarm yet, however high.
        assert_eq!(alarm(100.0, &pts(&[50.0, 900.0, 900.0])), Alarm::Ok);
        // Equal to the target is not above it.
        assert_eq!(alarm(100.0, &pts(&[101.0, 100.0, 500.0])), Alarm::Ok);
        assert_eq!(alarm(100.0, &pts(&[101.0, 150.0, 500.0])), Alarm::High);
        // A missing datapoint breaks the run.
        let mut p = pts(&[200.0, 200.0, 200.0]);
        p[1] = None;
        assert_eq!(alarm(100.0, &p), Alarm::Ok);
    }

    #[test]
    fn scale_in_needs_fifteen_datapoints_below_ninety_percent() {
        assert_eq!(alarm(100.0, &pts(&[10.0; 14])), Alarm::Ok);
        assert_eq!(alarm(100.0, &pts(&[10.0; 15])), Alarm::Low);
        // 90 is not below 90 % of 100.
        let mut v = [10.0; 15];
        v[7] = 90.0;
        assert_eq!(alarm(100.0, &pts(&v)), Alarm::Ok);
        v[7] = 89.9;
        assert_eq!(alarm(100.0, &pts(&v)), Alarm::Low);
    }

    #[test]
    fn the_new_capacity_is_the_ratio_rounded_up() {
        assert_eq!(ratio_capacity(100.0, 300.0, 1), 3);
        assert_eq!(ratio_capacity(100.0, 301.0, 1), 4);
        assert_eq!(ratio_capacity(100.0, 150.0, 4), 6);
        assert_eq!(ratio_capacity(100.0, 0.0, 4), 0);
        // 3 datapoints at 2,000 per instance on 2 instances: 40 wanted, capped at max 10.
        let d = decide(&POLICY, &pts(&[2000.0; 3]), cap(2, 2, 0));
        assert_eq!((d.alarm, d.desired), (Alarm::High, Some(10)));
        let d = decide(&POLICY, &pts(&[150.0; 3]), cap(4, 4, 0));
        assert_eq!(d.desired, Some(6));
    }

    #[test]
    fn warming_instances_are_in_the_desired_capacity_but_not_in_the_ratio_base() {
        // 4 warmed + 1 warming (desired 5); the metric still says +1 on the 4: 5, already desired.
        let d = decide(&POLICY, &pts(&[120.0; 3]), cap(5, 4, 1));
        assert_eq!(d.alarm, Alarm::High);
        assert_eq!(d.desired, None);
        // The metric went up: +2 on the 4 warmed = 6.
        let d = decide(&POLICY, &pts(&[120.0, 120.0, 150.0]), cap(5, 4, 1));
        assert_eq!(d.desired, Some(6));
        // Nothing warmed yet: no base to multiply.
        let d = decide(&POLICY, &pts(&[900.0; 3]), cap(3, 0, 3));
        assert_eq!(d.desired, None);
    }

    #[test]
    fn scale_in_waits_for_warmups_and_stops_at_min_size() {
        let low = pts(&[20.0; 15]);
        let d = decide(&POLICY, &low, cap(5, 4, 1));
        assert_eq!((d.alarm, d.desired), (Alarm::Low, None));
        // 5 instances at 20 per instance = 100 visible: one instance is enough.
        let d = decide(&POLICY, &low, cap(5, 5, 0));
        assert_eq!(d.desired, Some(1));
        // An empty queue: down to min_size, never below.
        let d = decide(&POLICY, &pts(&[0.0; 15]), cap(5, 5, 0));
        assert_eq!(d.desired, Some(1));
        let d = decide(&POLICY, &pts(&[0.0; 15]), cap(1, 1, 0));
        assert_eq!(d.desired, None);
        // 50 per instance on 6: 300 visible -> 3 instances.
        let d = decide(&POLICY, &pts(&[50.0; 15]), cap(6, 6, 0));
        assert_eq!(d.desired, Some(3));
    }

    #[test]
    fn the_tracker_averages_in_service_and_keeps_acting_while_the_alarm_stays() {
        let mut t = Tracker::new(POLICY);
        let now = OffsetDateTime::now_utc();
        // Half the period with 1 instance, half with 3: the average is 2.
        for n in [1, 1, 3, 3] {
            t.sample_in_service(n);
        }
        let d = t.close_period(now, Some(1000), None, 3, cap(3, 3, 0));
        assert_eq!(t.history[0].metric, Some(500.0));
        assert_eq!(d.alarm, Alarm::Ok);
        t.close_period(now, Some(1500), None, 3, cap(3, 3, 0));
        // Third datapoint above: scale out from the ratio (3 counted * 500 / 100 = 15, capped at 10).
        let d = t.close_period(now, Some(1500), None, 3, cap(3, 3, 0));
        assert_eq!(d.desired, Some(10));
        // Still above next period: the policy runs again (nothing more to add at max).
        let d = t.close_period(now, Some(1500), None, 3, cap(10, 3, 7));
        assert_eq!((d.alarm, d.desired), (Alarm::High, None));
        // No instance in service: no datapoint.
        let d = t.close_period(now, Some(1500), None, 0, cap(10, 0, 0));
        assert_eq!(t.history.last().unwrap().metric, None);
        assert_eq!(d.alarm, Alarm::Ok);
    }

    #[test]
    fn the_fifo_aware_metric_holds_one_spare_worker_when_the_backlog_sits_in_held_groups() {
        // 2,000 waiting, 10 instances, 2 of them holding groups: the plain metric (200) would keep all 10; the
        // FIFO-aware one is 100 * 3 / 10 = 30, low: scale in towards 3.
        assert_eq!(fifo_aware(100.0, 2000, 10.0, 2), Some(30.0));
        let d = decide(
            &Policy {
                metric: MetricKind::FifoAware,
                ..POLICY
            },
            &pts(&[30.0; 15]),
            cap(10, 10, 0),
        );
        assert_eq!(d.desired, Some(3));
        // At busy + 1 it is the target itself: neither alarm fires.
        assert_eq!(fifo_aware(100.0, 2000, 3.0, 2), Some(100.0));
        assert_eq!(alarm(100.0, &pts(&[100.0; 15])), Alarm::Ok);
        // Every worker busy: the plain backlog per instance (scale out as usual).
        assert_eq!(fifo_aware(100.0, 2000, 4.0, 4), Some(500.0));
        // Never above the plain metric, and nothing waiting is nothing.
        assert_eq!(fifo_aware(100.0, 10, 10.0, 2), Some(1.0));
        assert_eq!(fifo_aware(100.0, 0, 10.0, 0), Some(0.0));
        assert_eq!(fifo_aware(100.0, 10, 0.0, 0), None);
        // The tracker uses it when it has the workers' figure, the plain metric when it has none.
        let mut t = Tracker::new(Policy {
            metric: MetricKind::FifoAware,
            ..POLICY
        });
        let now = OffsetDateTime::now_utc();
        t.close_period(now, Some(2000), Some(2), 10, cap(10, 10, 0));
        assert_eq!(t.history[0].metric, Some(30.0));
        t.close_period(now, Some(2000), None, 10, cap(10, 10, 0));
        assert_eq!(t.history[1].metric, Some(200.0));
    }
}
