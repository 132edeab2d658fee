//! How many replicas one resource metric asks for: kube's `ReplicaCalculator`
//! (`GetResourceReplicas` for Utilization targets, `GetRawResourceReplicas` for
//! AverageValue), as pure functions over the pods' usage and requests.
//!
//! desired = ceil(pods with metrics × usage / target), unless usage is within the tolerance
//! (10%) of the target. Pods without metrics, and not-ready pods when scaling up, are then
//! taken into account conservatively, as upstream does: a missing pod counts as using its
//! whole request (or the target value) when scaling down and nothing when scaling up, a
//! not-ready pod counts as using nothing; and if that changes the direction, or brings usage
//! within tolerance, the replicas stay as they are.

/// kube-controller-manager's `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;

use std::time::{Duration, Instant};

/// How a pod counts, as kube's `groupPods` sorts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Running and (for cpu) ready: its usage counts.
    Ready,
    /// Pending, or not ready for cpu: its usage is not trusted (start-up spikes).
    Unready,
    /// Being deleted or failed: left out altogether.
    Ignored,
}

/// One pod matching the target's selector. Amounts are milli-units (millicores, or
/// thousandths of a byte) so that cpu and memory share the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSample {
    pub state: PodState,
    /// The metric's usage summed over the pod's containers; `None` when the pod has no
    /// metrics (yet).
    pub usage: Option<i64>,
    /// The pod's request of the resource (sum over containers); `None` when a container
    /// requests none.
    pub request: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Milli-units per pod.
    AverageValue(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    pub replicas: i32,
    /// Usage as a percentage of requests over the ready pods with metrics (Utilization only).
    pub utilization: Option<i32>,
    /// Average usage per ready pod with metrics, milli-units.
    pub average_value: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalcError {
    /// No pod has metrics (kube: "did not receive metrics for targeted pods").
    NoMetrics,
    /// A pod without a request of the resource makes a utilization meaningless.
    MissingRequest,
}

impl std::fmt::Display for CalcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalcError::NoMetrics => write!(f, "did not receive metrics for targeted pods (pods might be unready)"),
            CalcError::MissingRequest => write!(f, "missing request for the resource"),
        }
    }
}

/// The recommendation for one metric, given the current replicas (the scale's spec).
pub fn recommend(current: i32, pods: &[PodSample], target: Target) -> Result<Recommendation, CalcError> {
    let measured: Vec<&PodSample> = pods.iter().filter(|p| p.state == PodState::Ready && p.usage.is_some()).collect();
    // As kube's groupPods: an unready pod is unready whether it has metrics or not; missing
    // are the ready pods without metrics.
    let missing: Vec<&PodSample> = pods.iter().filter(|p| p.state == PodState::Ready && p.usage.is_none()).collect();
    let unready = pods.iter().filter(|p| p.state == PodState::Unready).count();
    if measured.is_empty() {
        return Err(CalcError::NoMetrics);
    }
    let usage_sum: i64 = measured.iter().filter_map(|p| p.usage).sum();
    let average_value = usage_sum / measured.len() as i64;
    // The ratio of usage to target over the measured pods, and what it means for a pod whose
    // usage has to be assumed (its "full" figure when scaling down).
    let (ratio, utilization) = match target {
        Target::Utilization(percent) => {
            let mut request_sum = 0i64;
            for p in &measured {
                request_sum += p.request.filter(|r| *r > 0).ok_or(CalcError::MissingRequest)?;
            }
            let utilization = (usage_sum as f64 * 100.0 / request_sum as f64) as i32;
            (utilization as f64 / f64::from(percent.max(1)), Some(utilization))
        }
        Target::AverageValue(value) => (average_value as f64 / value.max(1) as f64, None),
    };
    let rebalance_unready = unready > 0 && ratio > 1.0;
    if !rebalance_unready && missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(Recommendation { replicas: current, utilization, average_value });
        }
        let replicas = (ratio * measured.len() as f64).ceil() as i32;
        return Ok(Recommendation { replicas, utilization, average_value });
    }
    // Assume figures for the pods without trustworthy ones, then compute again.
    let mut usage = usage_sum;
    let mut requests: i64 = measured.iter().filter_map(|p| p.request).sum();
    let mut counted = measured.len() as i64;
    for p in &missing {
        let request = p.request.unwrap_or(0);
        if ratio < 1.0 {
            usage += match target {
                Target::Utilization(_) => request,
                Target::AverageValue(value) => value,
            };
        }
        requests += request;
        counted += 1;
    }
    if rebalance_unready {
        for p in pods.iter().filter(|p| p.state == PodState::Unready) {
            requests += p.request.unwrap_or(0);
            counted += 1;
        }
    }
    let new_ratio = match target {
        Target::Utilization(percent) => {
            let utilization = (usage as f64 * 100.0 / requests.max(1) as f64) as i32;
            utilization as f64 / f64::from(percent.max(1))
        }
        Target::AverageValue(value) => (usage as f64 / counted as f64) / value.max(1) as f64,
    };
    let flipped = (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0);
    if (1.0 - new_ratio).abs() <= TOLERANCE || flipped {
        return Ok(Recommendation { replicas: current, utilization, average_value });
    }
    let replicas = (new_ratio * counted as f64).ceil() as i32;
    // Never move against the direction the measured pods asked for.
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(Recommendation { replicas: current, utilization, average_value });
    }
    Ok(Recommendation { replicas, utilization, average_value })
}

/// What the bounds make of a desired count: kube's `convertDesiredReplicasWithRules` (no
/// `behavior` policies): within [min, max], and up by at most max(2 × current, 4) at once.
/// Returns the count and, when a bound applied, the ScalingLimited reason and message.
pub fn bounded(current: i32, desired: i32, min: i32, max: i32) -> (i32, Option<(&'static str, &'static str)>) {
    let scale_up_limit = (current * 2).max(4);
    let (ceiling, ceiling_reason) = if max > scale_up_limit {
        (scale_up_limit, ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"))
    } else {
        (max, ("TooManyReplicas", "the desired replica count is more than the maximum replica count"))
    };
    if desired < min {
        (min, Some(("TooFewReplicas", "the desired replica count is less than the minimum replica count")))
    } else if desired > ceiling {
        (ceiling, Some(ceiling_reason))
    } else {
        (desired, None)
    }
}

/// One rate policy of `behavior`: at most `value` pods, or `value` percent, per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Pods { value: i32, period: Duration },
    Percent { value: i32, period: Duration },
}

impl Policy {
    fn period(&self) -> Duration {
        match self {
            Policy::Pods { period, .. } | Policy::Percent { period, .. } => *period,
        }
    }
}

/// `selectPolicy`: which policy's limit wins when several apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the biggest change (kube's default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction at all.
    Disabled,
}

/// `behavior.scaleUp` or `behavior.scaleDown` with kube's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub select: Select,
    pub policies: Vec<Policy>,
}

impl Rules {
    /// The longest period of any policy: how long scale events are worth keeping.
    pub fn longest_period(&self) -> Duration {
        self.policies.iter().map(Policy::period).max().unwrap_or_default()
    }
}

/// A rescale the controller made, remembered for the rate policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleEvent {
    pub at: Instant,
    /// Replicas added (in the scale-up list) or removed (in the scale-down list).
    pub change: i32,
}

fn changed_within(period: Duration, events: &[ScaleEvent], now: Instant) -> i32 {
    events.iter().filter(|e| now.saturating_duration_since(e.at) <= period).map(|e| e.change).sum()
}

/// kube's `calculateScaleUpLimitWithScalingRules`: the most replicas the policies allow now,
/// measured from the replicas at the start of each policy's period.
pub fn scale_up_limit(current: i32, up: &[ScaleEvent], down: &[ScaleEvent], rules: &Rules, now: Instant) -> i32 {
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => i32::min,
        Select::Max => i32::max,
    };
    let mut limit = if rules.select == Select::Min { i32::MAX } else { i32::MIN };
    for policy in &rules.policies {
        let start = current - changed_within(policy.period(), up, now) + changed_within(policy.period(), down, now);
        let proposed = match *policy {
            Policy::Pods { value, .. } => start + value,
            // Rounded up so that a small target can always grow by at least one.
            Policy::Percent { value, .. } => (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32,
        };
        limit = pick(limit, proposed);
    }
    limit
}

/// kube's `calculateScaleDownLimitWithBehaviors`: the fewest replicas the policies allow now.
pub fn scale_down_limit(current: i32, up: &[ScaleEvent], down: &[ScaleEvent], rules: &Rules, now: Instant) -> i32 {
    // For a scale-down the smallest change is the highest count, hence the swapped picks.
    let pick: fn(i32, i32) -> i32 = match rules.select {
        Select::Disabled => return current,
        Select::Min => i32::max,
        Select::Max => i32::min,
    };
    let mut limit = if rules.select == Select::Min { i32::MIN } else { i32::MAX };
    for policy in &rules.policies {
        let start = current - changed_within(policy.period(), up, now) + changed_within(policy.period(), down, now);
        let proposed = match *policy {
            Policy::Pods { value, .. } => start - value,
            Policy::Percent { value, .. } => (f64::from(start) * (1.0 - f64::from(value) / 100.0)) as i32,
        };
        limit = pick(limit, proposed);
    }
    limit
}

/// What the bounds make of a desired count when the autoscaler has a `behavior`: kube's
/// `convertDesiredReplicasWithBehaviorRate`. The rate policies replace the fixed
/// max(2 × current, 4) of [`bounded`].
pub struct Behavior<'a> {
    pub up: &'a Rules,
    pub down: &'a Rules,
    pub up_events: &'a [ScaleEvent],
    pub down_events: &'a [ScaleEvent],
    pub now: Instant,
}

pub fn bounded_with_behavior(
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    behavior: &Behavior<'_>,
) -> (i32, Option<(&'static str, &'static str)>) {
    if desired > current {
        let limit =
            scale_up_limit(current, behavior.up_events, behavior.down_events, behavior.up, behavior.now).max(current);
        let (ceiling, why) = if max > limit {
            (limit, ("ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate"))
        } else {
            (max, ("TooManyReplicas", "the desired replica count is more than the maximum replica count"))
        };
        if desired > ceiling {
            return (ceiling, Some(why));
        }
    } else if desired < current {
        let limit = scale_down_limit(current, behavior.up_events, behavior.down_events, behavior.down, behavior.now)
            .min(current);
        let (floor, why) = if min < limit {
            (limit, ("ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate"))
        } else {
            (min, ("TooFewReplicas", "the desired replica count is less than the minimum replica count"))
        };
        if desired < floor {
            return (floor, Some(why));
        }
    }
    (desired, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(usage: i64, request: i64) -> PodSample {
        PodSample { state: PodState::Ready, usage: Some(usage), request: Some(request) }
    }
    fn missing(request: i64) -> PodSample {
        PodSample { state: PodState::Ready, usage: None, request: Some(request) }
    }
    fn unready(usage: i64, request: i64) -> PodSample {
        PodSample { state: PodState::Unready, usage: Some(usage), request: Some(request) }
    }
    fn unready_new(request: i64) -> PodSample {
        PodSample { state: PodState::Unready, usage: None, request: Some(request) }
    }
    fn ignored() -> PodSample {
        PodSample { state: PodState::Ignored, usage: Some(10_000), request: Some(100) }
    }

    /// (what, current, pods, target, replicas, utilization)
    type Case = (&'static str, i32, Vec<PodSample>, Target, i32, Option<i32>);

    #[test]
    fn replicas_follow_usage_over_target() {
        use Target::*;
        let cases: Vec<Case> = vec![
            ("at target", 3, vec![ready(500, 1000); 3], Utilization(50), 3, Some(50)),
            ("within tolerance above", 3, vec![ready(540, 1000); 3], Utilization(50), 3, Some(54)),
            ("within tolerance below", 3, vec![ready(460, 1000); 3], Utilization(50), 3, Some(46)),
            ("double the target", 2, vec![ready(1000, 1000); 2], Utilization(50), 4, Some(100)),
            ("ceil", 3, vec![ready(600, 1000); 3], Utilization(50), 4, Some(60)),
            ("idle", 4, vec![ready(10, 1000); 4], Utilization(50), 1, Some(1)),
            ("uneven pods", 2, vec![ready(900, 1000), ready(100, 1000)], Utilization(25), 4, Some(50)),
            ("average value up", 2, vec![ready(300, 0); 2], AverageValue(100), 6, None),
            ("average value in tolerance", 2, vec![ready(105, 0); 2], AverageValue(100), 2, None),
            (
                "ignored pods left out",
                2,
                vec![ready(500, 1000), ready(500, 1000), ignored()],
                Utilization(50),
                2,
                Some(50),
            ),
            // Scale up with a pod missing metrics: it counts as idle, the rise is smaller.
            ("missing when scaling up", 2, vec![ready(1000, 1000), missing(1000)], Utilization(50), 2, Some(100)),
            (
                "missing when scaling up further",
                3,
                vec![ready(2000, 1000), ready(2000, 1000), missing(1000)],
                Utilization(50),
                8,
                Some(200),
            ),
            // Scale down with a pod missing metrics: it counts at its whole request.
            (
                "missing when scaling down",
                3,
                vec![ready(100, 1000), ready(100, 1000), missing(1000)],
                Utilization(50),
                3,
                Some(10),
            ),
            (
                "missing when scaling down far",
                4,
                vec![ready(0, 1000), ready(0, 1000), ready(0, 1000), missing(1000)],
                Utilization(100),
                1,
                Some(0),
            ),
            // Not-ready pods count as idle when scaling up.
            ("unready when scaling up", 2, vec![ready(2000, 1000), unready(2000, 1000)], Utilization(50), 4, Some(200)),
            // ... and are simply left out when scaling down.
            ("unready when scaling down", 2, vec![ready(100, 1000), unready(2000, 1000)], Utilization(50), 1, Some(10)),
            // New pods without metrics yet hold a scale-up where it is until they report.
            (
                "new pods after a scale-up",
                4,
                vec![ready(400, 200), unready_new(200), unready_new(200), unready_new(200)],
                Utilization(50),
                4,
                Some(200),
            ),
        ];
        for (what, current, pods, target, want, utilization) in cases {
            let got = recommend(current, &pods, target).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!((got.replicas, got.utilization), (want, utilization), "{what}");
        }
    }

    #[test]
    fn no_metrics_or_no_requests_are_errors() {
        assert_eq!(recommend(2, &[missing(100), missing(100)], Target::Utilization(50)), Err(CalcError::NoMetrics));
        let no_request = PodSample { state: PodState::Ready, usage: Some(10), request: None };
        assert_eq!(recommend(1, &[no_request], Target::Utilization(50)), Err(CalcError::MissingRequest));
        // A raw target needs no requests.
        assert_eq!(recommend(1, &[no_request], Target::AverageValue(5)).map(|r| r.replicas), Ok(2));
    }

    #[test]
    fn bounds_and_scale_up_rate() {
        let cases = [
            // (current, desired, min, max, replicas, reason)
            (2, 3, 1, 5, 3, None),
            (2, 0, 1, 5, 1, Some("TooFewReplicas")),
            (2, 9, 1, 5, 4, Some("ScaleUpLimit")),
            (3, 9, 1, 5, 5, Some("TooManyReplicas")),
            (1, 9, 1, 10, 4, Some("ScaleUpLimit")),
            (5, 30, 1, 100, 10, Some("ScaleUpLimit")),
            (5, 10, 1, 100, 10, None),
        ];
        for (current, desired, min, max, want, reason) in cases {
            let (got, why) = bounded(current, desired, min, max);
            assert_eq!((got, why.map(|w| w.0)), (want, reason), "{current} → {desired} in [{min}, {max}]");
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// kube's defaults: scale up by 4 pods or 100% per 15 s (the larger), down by 100%.
    fn default_up() -> Rules {
        Rules {
            select: Select::Max,
            policies: vec![
                Policy::Pods { value: 4, period: secs(15) },
                Policy::Percent { value: 100, period: secs(15) },
            ],
        }
    }

    fn default_down() -> Rules {
        Rules { select: Select::Max, policies: vec![Policy::Percent { value: 100, period: secs(15) }] }
    }

    #[test]
    fn rate_policies_limit_each_period() {
        let now = Instant::now() + secs(3600);
        let ago = |s: u64| now - secs(s);
        let slow_up = Rules { select: Select::Max, policies: vec![Policy::Pods { value: 1, period: secs(60) }] };
        let both_up = Rules {
            select: Select::Min,
            policies: vec![
                Policy::Pods { value: 5, period: secs(60) },
                Policy::Percent { value: 50, period: secs(60) },
            ],
        };
        let gentle_down = Rules {
            select: Select::Max,
            policies: vec![
                Policy::Percent { value: 10, period: secs(60) },
                Policy::Pods { value: 2, period: secs(60) },
            ],
        };
        let disabled = Rules { select: Select::Disabled, policies: default_down().policies };
        // (what, current, desired, min, max, up rules, down rules, up events, down events, replicas, reason)
        type Case = (
            &'static str,
            i32,
            i32,
            i32,
            i32,
            Rules,
            Rules,
            Vec<ScaleEvent>,
            Vec<ScaleEvent>,
            i32,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "defaults: up by max(4 pods, 100%)",
                3,
                20,
                1,
                50,
                default_up(),
                default_down(),
                vec![],
                vec![],
                7,
                Some("ScaleUpLimit"),
            ),
            (
                "defaults: 100% of 10 beats 4 pods",
                10,
                50,
                1,
                50,
                default_up(),
                default_down(),
                vec![],
                vec![],
                20,
                Some("ScaleUpLimit"),
            ),
            (
                "max bounds before the rate",
                3,
                20,
                1,
                5,
                default_up(),
                default_down(),
                vec![],
                vec![],
                5,
                Some("TooManyReplicas"),
            ),
            ("one pod a minute", 3, 9, 1, 50, slow_up.clone(), default_down(), vec![], vec![], 4, Some("ScaleUpLimit")),
            (
                "the minute's pod already added",
                4,
                9,
                1,
                50,
                slow_up.clone(),
                default_down(),
                vec![ScaleEvent { at: ago(30), change: 1 }],
                vec![],
                4,
                Some("ScaleUpLimit"),
            ),
            (
                "an addition older than the period does not count",
                4,
                9,
                1,
                50,
                slow_up,
                default_down(),
                vec![ScaleEvent { at: ago(90), change: 1 }],
                vec![],
                5,
                Some("ScaleUpLimit"),
            ),
            (
                "Min picks the smaller: 50% of 4 < 5 pods",
                4,
                20,
                1,
                50,
                both_up,
                default_down(),
                vec![],
                vec![],
                6,
                Some("ScaleUpLimit"),
            ),
            ("within the rate", 4, 6, 1, 50, default_up(), default_down(), vec![], vec![], 6, None),
            (
                "down: 2 pods beat 10% of 10",
                10,
                1,
                1,
                50,
                default_up(),
                gentle_down.clone(),
                vec![],
                vec![],
                8,
                Some("ScaleDownLimit"),
            ),
            (
                "down: removals in the period count",
                8,
                1,
                1,
                50,
                default_up(),
                gentle_down,
                vec![],
                vec![ScaleEvent { at: ago(20), change: 2 }],
                8,
                Some("ScaleDownLimit"),
            ),
            (
                "down: default 100% leaves min",
                10,
                0,
                2,
                50,
                default_up(),
                default_down(),
                vec![],
                vec![],
                2,
                Some("TooFewReplicas"),
            ),
            ("down disabled", 10, 3, 1, 50, default_up(), disabled, vec![], vec![], 10, Some("ScaleDownLimit")),
        ];
        for (what, current, desired, min, max, up, down, up_events, down_events, want, reason) in cases {
            let behavior = Behavior { up: &up, down: &down, up_events: &up_events, down_events: &down_events, now };
            let (got, why) = bounded_with_behavior(current, desired, min, max, &behavior);
            assert_eq!((got, why.map(|w| w.0)), (want, reason), "{what}: {current} → {desired} in [{min}, {max}]");
        }
    }
}
