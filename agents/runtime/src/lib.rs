//! What keel's control loops share, after kube-runtime and client-go: a typed client over
//! the in-process API (admission included, the same path as any REST client), informer
//! caches fed by list+watch, de-duplicating work queues with per-item backoff, an event
//! recorder that aggregates repeats, and a runner that keeps loops alive only while this
//! member leads.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod clock;
pub mod events;
pub mod informer;
pub mod labels;
pub mod leader;
pub mod queue;

pub use client::Client;
pub use events::Recorder;
pub use informer::{Informer, ObjectKey};
pub use queue::WorkQueue;

/// A spawned task that is aborted when this guard is dropped — so a loop's helpers (its
/// informers) stop when the loop itself is stopped on losing leadership.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> AbortOnDrop {
        AbortOnDrop(tokio::spawn(task))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The current time as the API types hold it.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let now = keel_api::object::now_rfc3339();
    let parsed = k8s_openapi::chrono::DateTime::parse_from_rfc3339(&now)
        .map(|t| t.with_timezone(&k8s_openapi::chrono::Utc))
        .unwrap_or_default();
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(parsed)
}

/// What a reconcile asks for next, as kube-runtime's `Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing more until something changes.
    Done,
    /// Look again after this long even if nothing changes (deadlines, delays).
    RequeueAfter(std::time::Duration),
}

/// Runs `workers` tasks that take keys off `queue` and reconcile them. A failed reconcile
/// is requeued with the key's backoff; a successful one resets it.
pub async fn run_workers<T, F, Fut>(
    queue: std::sync::Arc<WorkQueue<T>>,
    workers: usize,
    name: &'static str,
    reconcile: F,
) where
    T: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
    F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Action, keel_api::error::ApiError>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        tasks.spawn(async move {
            while let Some(key) = queue.next().await {
                let span = tracing::debug_span!("reconcile", controller = name, key = ?key);
                let outcome = tracing::Instrument::instrument(reconcile(key.clone()), span).await;
                match outcome {
                    Ok(Action::Done) => queue.forget(&key),
                    Ok(Action::RequeueAfter(delay)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), delay);
                    }
                    Err(e) => {
                        // Conflicts are the normal outcome of racing a newer write: the
                        // informer will bring the newer version, so they are not errors.
                        if matches!(e, keel_api::error::ApiError::Conflict { .. }) {
                            tracing::debug!(controller = name, key = ?key, error = %e, "reconcile conflict; retrying");
                        } else {
                            tracing::info!(controller = name, key = ?key, error = %e, "reconcile failed; retrying with backoff");
                        }
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
