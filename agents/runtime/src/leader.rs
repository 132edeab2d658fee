//! Keeps the control loops running on the Raft leader only. Leadership is checked every
//! `interval`; on gaining it the loops start from nothing (fresh informers, so a new leader
//! never trusts what its predecessor may have half done), on losing it they are aborted —
//! within `interval` of the store noticing, well inside the second the design allows.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::JoinSet;

pub type Loop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs until dropped. `start` is called on each gain of leadership and returns the loops
/// to run; `is_leader` answers whether this member leads now.
pub async fn run_while_leader<S, L, LF>(interval: Duration, start: S, is_leader: L)
where
    S: Fn() -> Vec<(&'static str, Loop)>,
    L: Fn() -> LF,
    LF: Future<Output = bool>,
{
    let mut running: Option<JoinSet<()>> = None;
    loop {
        let leading = is_leader().await;
        match (&mut running, leading) {
            (None, true) => {
                let mut set = JoinSet::new();
                let loops = start();
                tracing::info!(loops = ?loops.iter().map(|(name, _)| *name).collect::<Vec<_>>(), "leading: starting control loops");
                for (name, task) in loops {
                    set.spawn(async move {
                        task.await;
                        tracing::warn!(name, "control loop ended");
                    });
                }
                running = Some(set);
            }
            (Some(set), false) => {
                tracing::info!("no longer leading: stopping control loops");
                set.abort_all();
                running = None;
            }
            _ => {}
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn loops_run_only_while_leading() {
        let leading = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicUsize::new(0));
        let starts = Arc::new(AtomicUsize::new(0));
        let runner = tokio::spawn({
            let leading = leading.clone();
            let ticks = ticks.clone();
            let starts = starts.clone();
            run_while_leader(
                Duration::from_millis(10),
                move || {
                    starts.fetch_add(1, Ordering::SeqCst);
                    let ticks = ticks.clone();
                    let tick: Loop = Box::pin(async move {
                        loop {
                            ticks.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    });
                    vec![("tick", tick)]
                },
                move || {
                    let leading = leading.clone();
                    async move { leading.load(Ordering::SeqCst) }
                },
            )
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 0, "no loop runs on a follower");
        leading.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ticks.load(Ordering::SeqCst) > 0);
        leading.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopped_at = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), stopped_at, "loops stop when leadership goes");
        leading.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 2, "a regained leadership starts the loops afresh");
        runner.abort();
    }
}
