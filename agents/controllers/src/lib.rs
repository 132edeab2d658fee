//! Control loops that run on the Raft leader only, talking to the API in process through the
//! same verbs (and admission) as any client. So far: the garbage collector (ownerReferences
//! with background, foreground and orphan propagation) and namespace deletion. The rest of
//! the controller manager and the scheduler are issue 4.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod gc;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keel_api::rest::Api;

/// Runs the loops while `is_leader` says this member leads; checks leadership every
/// `interval`, so the loops stop within about that long after leadership is lost. A pass of
/// the garbage collector reads every object, so it runs when a change that can concern it
/// (a deletion, an object being deleted, an object with owners) has been seen — at most
/// once per `interval` — and once a minute regardless.
pub async fn run_while_leader<F, Fut>(api: Arc<Api>, interval: Duration, is_leader: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut collector = gc::GarbageCollector::new(api.clone());
    let dirty = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Followers do not follow the writes: the watch runs only while leading, and stops with
    // this loop (its task is aborted when the member shuts down).
    let mut watcher: Option<AbortOnDrop> = None;
    let mut last_full = tokio::time::Instant::now();
    loop {
        let leading = is_leader().await;
        if leading && watcher.is_none() {
            // A new leader cannot know what its predecessor left unfinished.
            dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            watcher = Some(AbortOnDrop(tokio::spawn(gc::watch_for_work(api.clone(), dirty.clone()))));
        } else if !leading {
            watcher = None;
        }
        let due = last_full.elapsed() > Duration::from_secs(60);
        if leading && (dirty.swap(false, std::sync::atomic::Ordering::SeqCst) || due) {
            last_full = tokio::time::Instant::now();
            match collector.pass().await {
                // Work left (dependents still going): look again next time.
                Ok(pass) if pass != gc::Pass::default() => dirty.store(true, std::sync::atomic::Ordering::SeqCst),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "garbage collection pass; retrying");
                    dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
