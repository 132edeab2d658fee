//! A work queue after client-go's: a key waiting is queued once however often it is added;
//! a key being worked on is never handed to a second worker, and adding it meanwhile queues
//! it again for after the work ends; failures come back after a per-key exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

const BASE_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    /// Keys that are queued, or added again while being processed.
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    shut: bool,
}

impl<T: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<T> {
    pub fn new() -> Arc<WorkQueue<T>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                shut: false,
            }),
            ready: Notify::new(),
        })
    }

    pub fn add(&self, key: T) {
        let mut state = self.state.lock();
        if state.shut || !state.dirty.insert(key.clone()) {
            return;
        }
        if !state.processing.contains(&key) {
            state.queue.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    pub fn add_after(self: &Arc<Self>, key: T, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                queue.add(key);
            }
        });
    }

    /// Adds after the key's backoff, which doubles with each failure until `forget`.
    pub fn add_rate_limited(self: &Arc<Self>, key: T) {
        let failures = {
            let mut state = self.state.lock();
            let n = state.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        self.add_after(key, backoff(failures));
    }

    pub fn forget(&self, key: &T) {
        self.state.lock().failures.remove(key);
    }

    pub fn failures(&self, key: &T) -> u32 {
        self.state.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to work on; `None` once the queue is shut down.
    pub async fn next(&self) -> Option<T> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state.lock();
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    // Another worker may be waiting and more keys are ready.
                    if !state.queue.is_empty() {
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
                if state.shut {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks the work on `key` finished; queues it again if it was added meanwhile.
    pub fn done(&self, key: &T) {
        let mut state = self.state.lock();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.queue.push_back(key.clone());
            drop(state);
            self.ready.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shut_down(&self) {
        self.state.lock().shut = true;
        self.ready.notify_waiters();
    }
}

fn backoff(failures: u32) -> Duration {
    let factor = 1u64 << failures.saturating_sub(1).min(20);
    (BASE_BACKOFF * factor as u32).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_added_twice_is_worked_once() {
        let queue = WorkQueue::new();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await, Some("a"));
        assert_eq!(queue.next().await, Some("b"));
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_processing_comes_back_after_done() {
        let queue = WorkQueue::new();
        queue.add("a");
        let key = queue.next().await;
        assert_eq!(key, Some("a"));
        queue.add("a");
        // Not handed out a second time while the first worker has it.
        assert!(queue.is_empty());
        queue.done(&"a");
        assert_eq!(queue.next().await, Some("a"));
        queue.done(&"a");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_until_forgotten() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(4), Duration::from_millis(40));
        assert_eq!(backoff(40), MAX_BACKOFF);
        let queue = WorkQueue::new();
        queue.add_rate_limited("a");
        queue.add_rate_limited("a");
        assert_eq!(queue.failures(&"a"), 2);
        queue.forget(&"a");
        assert_eq!(queue.failures(&"a"), 0);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), queue.next()).await.ok().flatten(), Some("a"));
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers() {
        let queue: Arc<WorkQueue<&str>> = WorkQueue::new();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        queue.shut_down();
        assert_eq!(waiting.await.ok().flatten(), None);
    }
}
