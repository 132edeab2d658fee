//! One probe of one container instance, run every period until the instance stops (the pod
//! worker then drops it) or its verdict ends the probe's job: a startup probe that succeeded,
//! a liveness or startup probe that failed (the instance is killed; its successor gets new
//! workers, as kubelet's worker is "on hold" until the container changes).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use keel_container::UnixNanos;

use super::{Env, Kind, Results, Tally, Target, Timing, check};

/// An identical failure message is sent again as an Event at most this often, so a probe
/// failing every second does not write an Event every second (kubelet's event correlator
/// folds such repeats into a count instead).
const REPEAT_EVENT_AFTER: Duration = Duration::from_secs(60);

pub(super) struct Job {
    pub kind: Kind,
    pub probe: Probe,
    pub timing: Timing,
    pub container: Container,
    pub container_id: String,
    pub started_at: UnixNanos,
    pub pod: Arc<Pod>,
    pub target: Target,
    pub env: Env,
    pub results: Arc<Results>,
}

/// What a worker does at a tick.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Probe,
    /// Not yet: liveness and readiness wait for the startup probe.
    Wait,
    /// Nothing left to do: the startup probe already succeeded.
    Done,
}

pub(super) fn step(kind: Kind, started: bool) -> Step {
    match (kind, started) {
        (Kind::Startup, true) => Step::Done,
        (Kind::Startup, false) => Step::Probe,
        (_, true) => Step::Probe,
        (_, false) => Step::Wait,
    }
}

/// Whether a verdict ends the worker.
pub(super) fn ends(kind: Kind, verdict: bool) -> bool {
    match kind {
        Kind::Startup => true,
        Kind::Liveness => !verdict,
        Kind::Readiness => false,
    }
}

fn now_nanos() -> UnixNanos {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

pub(super) async fn run(job: Job) {
    // initialDelaySeconds counts from the container's start, so a worker made again for a
    // container that has run a while (an agent restart) does not wait again.
    let ran = Duration::from_nanos((now_nanos() - job.started_at).max(0) as u64);
    tokio::time::sleep(job.timing.initial_delay.saturating_sub(ran)).await;
    let mut tally = Tally::new(&job.timing, job.kind.initial());
    let mut ticks = tokio::time::interval(job.timing.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_event: Option<(String, Instant)> = None;
    let name = job.container.name.as_str();
    loop {
        ticks.tick().await;
        match step(job.kind, job.results.started(name, &job.container_id)) {
            Step::Done => return,
            Step::Wait => continue,
            Step::Probe => {}
        }
        let outcome = check(
            job.env.runtime.as_ref(),
            &job.probe,
            &job.container,
            &job.container_id,
            &job.target,
            job.timing.timeout,
        )
        .await;
        match &outcome {
            Ok(()) => last_event = None,
            Err(message) => {
                tracing::debug!(%message, "probe failed");
                let repeat =
                    last_event.as_ref().is_some_and(|(last, at)| last == message && at.elapsed() < REPEAT_EVENT_AFTER);
                if !repeat {
                    job.env.reports.event(
                        &job.pod,
                        Some(format!("spec.containers{{{name}}}")),
                        true,
                        "Unhealthy",
                        format!("{} probe failed: {message}", job.kind.title()),
                    );
                    last_event = Some((message.clone(), Instant::now()));
                }
            }
        }
        if let Some(verdict) = tally.record(outcome.is_ok()) {
            tracing::info!(verdict = if verdict { "success" } else { "failure" }, "probe verdict changed");
            job.results.publish(name, &job.container_id, job.kind, verdict);
            if ends(job.kind, verdict) {
                return;
            }
        }
    }
}
