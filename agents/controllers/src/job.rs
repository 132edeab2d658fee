//! Jobs: run pods until `completions` of them succeed (or, with only `parallelism` set, until
//! one does and the rest have finished), at most `parallelism` at a time; give up after
//! `backoffLimit` failed pods or `activeDeadlineSeconds`; Indexed jobs give each pod its
//! completion index. Finished jobs with `ttlSecondsAfterFinished` are deleted after it.
//!
//! Counting is from the pods (Kubernetes' pre-1.26 "legacy" tracking): finished pods are kept
//! until the Job goes, and the status counts never go down.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use keel_api::error::Result;
use keel_api::rest::DeleteOptions;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::{Action, Client, Informer, ObjectKey, Recorder, WorkQueue};

use crate::replicaset::{POD_BY_CONTROLLER, revision_of};

const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The first retry after a failed pod waits this long, doubling per failure (max 6 min).
const BASE_BACKOFF: Duration = Duration::from_secs(10);
const OWN_WRITES: Duration = Duration::from_secs(10);

pub struct JobController {
    client: Client,
    jobs: Arc<Informer<Job>>,
    pods: Arc<Informer<Pod>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    recorder: Recorder,
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata.annotations.as_ref()?.get(INDEX_ANNOTATION)?.parse().ok()
}

fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"))
}

/// `1,3-5,7` as Kubernetes writes `completedIndexes`.
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(",")
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    let now = keel_runtime::now();
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

impl JobController {
    pub fn new(client: Client, pods: Arc<Informer<Pod>>, recorder: Recorder) -> Arc<Self> {
        let jobs = Informer::<Job>::new(client.clone());
        let queue = WorkQueue::new();
        let this = Arc::new(JobController { client, jobs, pods, queue, recorder });
        this.jobs.feed(this.queue.clone());
        let queue = this.queue.clone();
        this.pods.on_change(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                if let Some(owner) = pod
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|r| r.controller == Some(true) && r.kind == "Job")
                {
                    queue.add(ObjectKey::new(pod.metadata.namespace.clone().unwrap_or_default(), owner.name.clone()));
                }
            }
        });
        this
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        let _informer = keel_runtime::AbortOnDrop::spawn(self.jobs.clone().run());
        self.jobs.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        keel_runtime::run_workers(self.queue.clone(), workers, "Job", move |key| {
            let this = this.clone();
            async move { this.reconcile(key).await }
        })
        .await;
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action> {
        let Some(job) = self.jobs.get(&key) else { return Ok(Action::Done) };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let pods = self.pods.by_index(POD_BY_CONTROLLER, &uid);
        let old = job.status.clone().unwrap_or_default();
        let now = crate::unix_now();

        if let Some(finished) = finished_condition(&job) {
            return self
                .after_finish(&job, finished.last_transition_time.as_ref().map(|t| t.0.timestamp()).unwrap_or(now))
                .await;
        }

        let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| crate::replicaset::is_active(p)).collect();
        let succeeded_pods: Vec<&Arc<Pod>> = pods.iter().filter(|p| phase(p) == "Succeeded").collect();
        let failed = (pods.iter().filter(|p| phase(p) == "Failed").count() as i32).max(old.failed.unwrap_or(0));
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let completed_indexes: BTreeSet<i32> = succeeded_pods.iter().filter_map(|p| index_of(p)).collect();
        let succeeded = if indexed { completed_indexes.len() as i32 } else { succeeded_pods.len() as i32 }
            .max(old.succeeded.unwrap_or(0));
        let ready = active.iter().filter(|p| crate::replicaset::is_ready(p)).count() as i32;
        let start_time = old.start_time.clone().unwrap_or_else(keel_runtime::now);

        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let deadline_passed = spec.active_deadline_seconds.is_some_and(|d| now - start_time.0.timestamp() >= d);
        let complete = match spec.completions {
            Some(completions) => succeeded >= completions,
            None => succeeded > 0 && active.is_empty(),
        };
        let mut status = JobStatus {
            active: Some(active.len() as i32),
            succeeded: Some(succeeded),
            failed: Some(failed),
            ready: Some(ready),
            start_time: Some(start_time.clone()),
            completed_indexes: indexed.then(|| format_indexes(&completed_indexes)),
            ..old.clone()
        };
        let finish = if complete {
            Some(("Complete", "", "", EventType::Normal, "Completed", "Job completed".to_string()))
        } else if failed > backoff_limit {
            Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                EventType::Warning,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".to_string(),
            ))
        } else if deadline_passed {
            Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                EventType::Warning,
                "DeadlineExceeded",
                "Job was active longer than specified deadline".to_string(),
            ))
        } else {
            None
        };
        if let Some((type_, reason, message, event_type, event_reason, event_message)) = finish {
            // Whatever still runs is no longer wanted.
            self.delete_pods(&active).await?;
            let mut conditions = old.conditions.clone().unwrap_or_default();
            if type_ == "Complete" {
                conditions.push(condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
                conditions.push(condition(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
                status.completion_time = Some(keel_runtime::now());
            } else {
                conditions.push(condition("FailureTarget", reason, message));
                conditions.push(condition("Failed", reason, message));
            }
            status.conditions = Some(conditions);
            status.active = Some(0);
            status.ready = Some(0);
            self.write_status(&job, status).await?;
            self.recorder.record(reference_to(job.as_ref()), event_type, event_reason, event_message);
            return Ok(Action::Done);
        }

        let mut requeue = spec
            .active_deadline_seconds
            .map(|d| Duration::from_secs((start_time.0.timestamp() + d - now).max(1) as u64));
        if !spec.suspend.unwrap_or(false) {
            let parallelism = spec.parallelism.unwrap_or(1).max(0);
            let remaining = spec.completions.map(|c| c - succeeded).unwrap_or(parallelism);
            let wanted = parallelism.min(remaining).max(0) as usize;
            if active.len() > wanted {
                let mut extra: Vec<&Arc<Pod>> = active.clone();
                extra.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)));
                self.delete_pods(&extra[..active.len() - wanted]).await?;
            } else if active.len() < wanted {
                // After failures, new pods wait out an exponential backoff from the last one.
                let delay = backoff(failed);
                let last_failure = pods
                    .iter()
                    .filter(|p| phase(p) == "Failed")
                    .filter_map(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0.timestamp()))
                    .max();
                let wait = last_failure.map(|t| t + delay.as_secs() as i64 - now).unwrap_or(0);
                if failed > 0 && wait > 0 {
                    requeue = Some(
                        requeue.map_or(Duration::from_secs(wait as u64), |r| r.min(Duration::from_secs(wait as u64))),
                    );
                } else {
                    let taken: BTreeSet<i32> =
                        active.iter().filter_map(|p| index_of(p)).chain(completed_indexes.iter().copied()).collect();
                    let completions = spec.completions.unwrap_or(0);
                    let mut free = (0..completions).filter(|i| !taken.contains(i));
                    let mut last = 0;
                    for _ in active.len()..wanted {
                        let index = if indexed {
                            match free.next() {
                                Some(i) => Some(i),
                                None => break,
                            }
                        } else {
                            None
                        };
                        let pod = pod_for(&job, index);
                        let created = self.client.create(key.namespace(), &pod).await.inspect_err(|e| {
                            self.recorder.record(
                                reference_to(job.as_ref()),
                                EventType::Warning,
                                "FailedCreate",
                                format!("Error creating: {e}"),
                            );
                        })?;
                        last = last.max(revision_of(&created));
                        self.recorder.record(
                            reference_to(job.as_ref()),
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", created.metadata.name.unwrap_or_default()),
                        );
                    }
                    if last > 0 {
                        let _ = tokio::time::timeout(OWN_WRITES, self.pods.wait_for_revision(last)).await;
                        self.queue.add(key.clone());
                    }
                }
            }
        }
        if status != old {
            self.write_status(&job, status).await?;
        }
        Ok(requeue.map(Action::RequeueAfter).unwrap_or(Action::Done))
    }

    async fn write_status(&self, job: &Job, status: JobStatus) -> Result<()> {
        let updated = Job { status: Some(status), ..job.clone() };
        let key = ObjectKey::of(job);
        self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        Ok(())
    }

    async fn delete_pods(&self, pods: &[&Arc<Pod>]) -> Result<()> {
        for pod in pods {
            let key = ObjectKey::of(pod.as_ref());
            let options = DeleteOptions { precondition_uid: pod.metadata.uid.clone(), ..DeleteOptions::default() };
            self.client.delete::<Pod>(key.namespace(), &key.name, &options).await?;
        }
        Ok(())
    }

    /// ttlSecondsAfterFinished: delete the finished Job (and its pods) once it has passed.
    async fn after_finish(&self, job: &Job, finished_at: i64) -> Result<Action> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else { return Ok(Action::Done) };
        let left = finished_at + i64::from(ttl) - crate::unix_now();
        if left > 0 {
            return Ok(Action::RequeueAfter(Duration::from_secs(left as u64)));
        }
        let key = ObjectKey::of(job);
        let options = DeleteOptions {
            propagation_policy: Some("Background".into()),
            precondition_uid: job.metadata.uid.clone(),
            ..DeleteOptions::default()
        };
        self.client.delete::<Job>(key.namespace(), &key.name, &options).await?;
        Ok(Action::Done)
    }
}

fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    (BASE_BACKOFF * 2u32.saturating_pow((failures - 1).min(10) as u32)).min(Duration::from_secs(360))
}

fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let template = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            labels.insert("batch.kubernetes.io/job-completion-index".into(), i.to_string());
            annotations.insert(INDEX_ANNOTATION.into(), i.to_string());
            spec.hostname.get_or_insert_with(|| format!("{name}-{i}"));
            for container in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                container.env.get_or_insert_with(Vec::new).push(EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: Some(i.to_string()),
                    value_from: None,
                });
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name,
                uid: job.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_written_as_ranges() {
        let cases: [(&[i32], &str); 4] =
            [(&[], ""), (&[0], "0"), (&[0, 1, 2, 4], "0-2,4"), (&[1, 3, 4, 5, 7], "1,3-5,7")];
        for (indexes, want) in cases {
            assert_eq!(format_indexes(&indexes.iter().copied().collect()), want);
        }
    }

    #[test]
    fn retries_back_off_exponentially_to_six_minutes() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(360));
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "work", "namespace": "default", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"job-name": "work"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }))
        .unwrap();
        let pod = pod_for(&job, Some(2));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("work-2-"));
        assert_eq!(pod.metadata.annotations.unwrap()[INDEX_ANNOTATION], "2");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-2"));
        let env = spec.containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value.as_deref() == Some("2")));
        assert_eq!(pod.metadata.owner_references.unwrap()[0].uid, "u1");
    }
}
