//! CronJobs: a Job for each scheduled time (in `spec.timeZone`, UTC by default), honouring
//! `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds`, `suspend` and the
//! successful/failed history limits; `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime` kept as kube-controller-manager keeps them.
//!
//! A Job's name is the CronJob's and the scheduled minute (`<name>-<unix minutes>`), so two
//! leaders, or a leader after a failover, can never start one time twice: the second create
//! finds it exists. Time comes from a [`Clock`](keel_runtime::clock::Clock), so tests move it.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use keel_api::error::{ApiError, Result};
use keel_api::rest::DeleteOptions;
use keel_runtime::clock::SharedClock;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::informer::controller_uid;
use keel_runtime::{Client, Informer, ObjectKey, Recorder};

use crate::cron::Schedule;

/// Missed times beyond this are not counted one by one (kube gives up counting at 100).
const MAX_MISSED: usize = 100;
pub const JOB_BY_CONTROLLER: &str = "controller";
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub struct CronJobController {
    client: Client,
    cron_jobs: Arc<Informer<CronJob>>,
    jobs: Arc<Informer<Job>>,
    recorder: Recorder,
    clock: SharedClock,
    period: Duration,
}

fn to_time(t: Timestamp) -> Time {
    Time(k8s_openapi::chrono::DateTime::from_timestamp(t.as_second(), 0).unwrap_or_default())
}

fn from_time(t: &Time) -> Timestamp {
    Timestamp::from_second(t.0.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn finished(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().filter(|c| c.status == "True").find_map(|c| match c.type_.as_str() {
        "Complete" => Some("Complete"),
        "Failed" => Some("Failed"),
        _ => None,
    })
}

/// The scheduled time to run now, if any: the latest time due since `since` (at most
/// `now`), and how many were due in all.
pub fn due(schedule: &Schedule, tz: &TimeZone, since: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
    let mut latest = None;
    let mut count = 0;
    let mut t = since;
    while let Some(next) = schedule.next_after(t, tz) {
        if next > now {
            break;
        }
        latest = Some(next);
        count += 1;
        t = next;
        if count > MAX_MISSED {
            // Jump ahead: only the latest due time matters from here.
            let mut probe =
                now.checked_sub(jiff::SignedDuration::from_secs(60 * 60 * 24 * 366)).unwrap_or(next).max(next);
            while let Some(n) = schedule.next_after(probe, tz) {
                if n > now {
                    break;
                }
                latest = Some(n);
                probe = n;
            }
            break;
        }
    }
    (latest, count)
}

impl CronJobController {
    pub fn new(client: Client, recorder: Recorder, clock: SharedClock, period: Duration) -> Arc<Self> {
        let jobs = Informer::<Job>::new(client.clone());
        jobs.add_index(JOB_BY_CONTROLLER, |job| controller_uid(job).into_iter().collect());
        Arc::new(CronJobController { cron_jobs: Informer::new(client.clone()), jobs, client, recorder, clock, period })
    }

    /// Looks at every CronJob once a `period` (cron's granularity is a minute).
    pub async fn run(self: Arc<Self>) {
        let _cron_jobs = keel_runtime::AbortOnDrop::spawn(self.cron_jobs.clone().run());
        let _jobs = keel_runtime::AbortOnDrop::spawn(self.jobs.clone().run());
        self.cron_jobs.wait_synced().await;
        self.jobs.wait_synced().await;
        loop {
            for cron_job in self.cron_jobs.list() {
                let key = ObjectKey::of(cron_job.as_ref());
                let span = tracing::debug_span!("reconcile", controller = "CronJob", key = %key);
                if let Err(e) = tracing::Instrument::instrument(self.sync(&cron_job), span).await {
                    tracing::info!(cronjob = %key, error = %e, "cronjob sync failed; retrying next period");
                }
            }
            tokio::time::sleep(self.period).await;
        }
    }

    async fn sync(&self, cron_job: &CronJob) -> Result<()> {
        if cron_job.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(spec) = cron_job.spec.clone() else { return Ok(()) };
        let key = ObjectKey::of(cron_job);
        let uid = cron_job.metadata.uid.clone().unwrap_or_default();
        let now = self.clock.now();
        let mut jobs = self.jobs.by_index(JOB_BY_CONTROLLER, &uid);
        jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let old = cron_job.status.clone().unwrap_or_default();
        let mut status = old.clone();

        // Jobs that finished since the last look.
        let mut active: Vec<ObjectReference> = Vec::new();
        for job in &jobs {
            match finished(job) {
                None if job.metadata.deletion_timestamp.is_none() => active.push(job_reference(job)),
                Some("Complete") => {
                    let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
                    if let Some(completed) = completed
                        && status.last_successful_time.as_ref().is_none_or(|t| t.0 < completed.0)
                    {
                        status.last_successful_time = Some(completed);
                        self.recorder.record(
                            reference_to(cron_job),
                            EventType::Normal,
                            "SawCompletedJob",
                            format!(
                                "Saw completed job: {}, condition: Complete",
                                job.metadata.name.as_deref().unwrap_or("")
                            ),
                        );
                    }
                }
                _ => {}
            }
        }
        status.active = (!active.is_empty()).then_some(active.clone());
        self.clean_up_history(cron_job, &jobs, &spec).await?;

        let tz_name = spec.time_zone.clone().unwrap_or_else(|| "UTC".into());
        let schedule = match (Schedule::parse(&spec.schedule), TimeZone::get(&tz_name)) {
            (Ok(schedule), Ok(tz)) => Some((schedule, tz)),
            (Err(e), _) => {
                self.recorder.record(
                    reference_to(cron_job),
                    EventType::Warning,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
                None
            }
            (_, Err(e)) => {
                self.recorder.record(
                    reference_to(cron_job),
                    EventType::Warning,
                    "UnknownTimeZone",
                    format!("invalid timeZone: {tz_name:?}: {e}"),
                );
                None
            }
        };
        if let Some((schedule, tz)) = schedule
            && !spec.suspend.unwrap_or(false)
        {
            let since = status
                .last_schedule_time
                .as_ref()
                .or(cron_job.metadata.creation_timestamp.as_ref())
                .map(from_time)
                .unwrap_or(now);
            let (latest, missed) = due(&schedule, &tz, since, now);
            if missed > MAX_MISSED {
                self.recorder.record(
                    reference_to(cron_job),
                    EventType::Warning,
                    "TooManyMissedTimes",
                    "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                );
            }
            if let Some(at) = latest {
                let too_late =
                    spec.starting_deadline_seconds.is_some_and(|deadline| now.as_second() - at.as_second() > deadline);
                if too_late {
                    self.recorder.record(
                        reference_to(cron_job),
                        EventType::Warning,
                        "MissSchedule",
                        format!("Missed scheduled time to start a job: {}", to_time(at).0.to_rfc3339()),
                    );
                    status.last_schedule_time = Some(to_time(at));
                } else {
                    match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
                        "Forbid" if !active.is_empty() => {
                            // Not started, and not counted as started: tried again next period
                            // until the deadline (if any) passes, as kube does.
                            self.recorder.record(
                                reference_to(cron_job),
                                EventType::Normal,
                                "JobAlreadyActive",
                                "Not starting job because prior execution is running and concurrency policy is Forbid",
                            );
                        }
                        policy => {
                            if policy == "Replace" {
                                for reference in &active {
                                    let name = reference.name.clone().unwrap_or_default();
                                    let options = DeleteOptions {
                                        propagation_policy: Some("Background".into()),
                                        ..DeleteOptions::default()
                                    };
                                    self.client.delete::<Job>(key.namespace(), &name, &options).await?;
                                    self.recorder.record(
                                        reference_to(cron_job),
                                        EventType::Normal,
                                        "SuccessfulDelete",
                                        format!("Deleted job {name}"),
                                    );
                                }
                                active.clear();
                            }
                            let job = self.start(cron_job, at).await?;
                            active.push(job_reference(&job));
                            status.active = Some(active.clone());
                            status.last_schedule_time = Some(to_time(at));
                        }
                    }
                }
            }
        }
        if status != old {
            let updated = CronJob { status: Some(status), ..cron_job.clone() };
            self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        }
        Ok(())
    }

    async fn start(&self, cron_job: &CronJob, at: Timestamp) -> Result<Job> {
        let name = cron_job.metadata.name.clone().unwrap_or_default();
        let namespace = cron_job.metadata.namespace.clone();
        let template = cron_job.spec.as_ref().map(|s| s.job_template.clone()).unwrap_or_default();
        let meta = template.metadata.unwrap_or_default();
        let job_name = format!("{name}-{}", at.as_second() / 60);
        let mut annotations = meta.annotations.unwrap_or_default();
        annotations
            .insert(SCHEDULED_AT.into(), to_time(at).0.to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true));
        let job = Job {
            metadata: ObjectMeta {
                name: Some(job_name.clone()),
                namespace: namespace.clone(),
                labels: meta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "CronJob".into(),
                    name: name.clone(),
                    uid: cron_job.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            spec: template.spec,
            status: None,
        };
        match self.client.create(namespace.as_deref(), &job).await {
            Ok(created) => {
                self.recorder.record(
                    reference_to(cron_job),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created job {job_name}"),
                );
                Ok(created)
            }
            // Started already (by this loop before a failover, or another leader).
            Err(ApiError::AlreadyExists { .. }) => self.client.get(namespace.as_deref(), &job_name).await,
            Err(e) => {
                self.recorder.record(
                    reference_to(cron_job),
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating job: {e}"),
                );
                Err(e)
            }
        }
    }

    /// Keeps the newest `successfulJobsHistoryLimit` complete and `failedJobsHistoryLimit`
    /// failed Jobs; older finished ones go, with their pods.
    async fn clean_up_history(
        &self,
        cron_job: &CronJob,
        jobs: &[Arc<Job>],
        spec: &k8s_openapi::api::batch::v1::CronJobSpec,
    ) -> Result<()> {
        for (outcome, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| finished(j) == Some(outcome) && j.metadata.deletion_timestamp.is_none())
                .collect();
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            // `jobs` is oldest first.
            for job in &done[..excess] {
                let key = ObjectKey::of(job.as_ref());
                let options =
                    DeleteOptions { propagation_policy: Some("Background".into()), ..DeleteOptions::default() };
                self.client.delete::<Job>(key.namespace(), &key.name, &options).await?;
                self.recorder.record(
                    reference_to(cron_job),
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted job {}", key.name),
                );
            }
        }
        Ok(())
    }
}

fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_due_time_runs_and_misses_are_counted() {
        let schedule = Schedule::parse("*/10 * * * *").unwrap();
        let at = |s: &str| -> Timestamp { s.parse().unwrap() };
        let utc = TimeZone::UTC;
        assert_eq!(due(&schedule, &utc, at("2026-11-23T10:00:00Z"), at("2026-11-23T10:05:00Z")), (None, 0));
        assert_eq!(
            due(&schedule, &utc, at("2026-11-23T10:00:00Z"), at("2026-11-23T10:10:00Z")),
            (Some(at("2026-11-23T10:10:00Z")), 1)
        );
        assert_eq!(
            due(&schedule, &utc, at("2026-11-23T10:00:00Z"), at("2026-11-23T10:35:00Z")),
            (Some(at("2026-11-23T10:30:00Z")), 3)
        );
        // A month away: over 100 missed; the latest is still found.
        let (latest, missed) = due(&schedule, &utc, at("2026-10-23T10:00:00Z"), at("2026-11-23T10:35:00Z"));
        assert_eq!(latest, Some(at("2026-11-23T10:30:00Z")));
        assert!(missed > MAX_MISSED);
    }
}
