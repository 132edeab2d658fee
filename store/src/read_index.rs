//! Batching of ReadIndex rounds. Every linearizable read needs a read index fetched *after*
//! the read arrived; reads that arrive while a fetch is in flight share the next one, so a
//! burst of reads costs two round trips at most and one heartbeat round per batch.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{Result, StoreError};

type Fetch = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<u64>> + Send>> + Send + Sync>;

pub struct ReadIndexBatcher {
    fetch: Fetch,
    state: Arc<Mutex<Batch>>,
}

#[derive(Default)]
struct Batch {
    running: bool,
    waiting: Vec<oneshot::Sender<Result<u64>>>,
}

impl ReadIndexBatcher {
    pub fn new<F, Fut>(fetch: F) -> ReadIndexBatcher
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<u64>> + Send + 'static,
    {
        ReadIndexBatcher { fetch: Arc::new(move || Box::pin(fetch())), state: Arc::default() }
    }

    /// A read index obtained after this call began.
    pub async fn read_index(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut state = self.state.lock();
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start_driver {
            // The driver runs on its own task so that a caller giving up does not strand the
            // others waiting on the same round.
            let state = self.state.clone();
            let fetch = self.fetch.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut s = state.lock();
                        if s.waiting.is_empty() {
                            s.running = false;
                            return;
                        }
                        std::mem::take(&mut s.waiting)
                    };
                    let result = fetch().await;
                    for waiter in batch {
                        let _ = waiter.send(result.clone());
                    }
                }
            });
        }
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn concurrent_reads_share_rounds_and_never_reuse_an_older_one() {
        let rounds = Arc::new(AtomicU64::new(0));
        let counter = rounds.clone();
        let batcher = Arc::new(ReadIndexBatcher::new(move || {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(counter.fetch_add(1, Ordering::SeqCst) + 1)
            }
        }));
        let first = batcher.read_index().await.unwrap();
        assert_eq!(first, 1);
        let mut handles = Vec::new();
        for _ in 0..50 {
            let b = batcher.clone();
            handles.push(tokio::spawn(async move { b.read_index().await.unwrap() }));
        }
        for h in handles {
            // Each read began after round 1 finished, so it must see a later round.
            assert!(h.await.unwrap() >= 2);
        }
        assert!(rounds.load(Ordering::SeqCst) <= 3, "50 reads took {} rounds", rounds.load(Ordering::SeqCst));
    }
}
