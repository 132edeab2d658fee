//! Watch fan-out: one store watch per member over every object, whose changes are handed
//! only to the API watches they concern (looked up by resource and namespace, so a write
//! costs in proportion to its watchers, not to all watchers), with a window of recent
//! changes in memory from which new watches start without reading the store's history.
//! A watch that starts before the window, or whose consumer falls too far behind, reads
//! from the store instead or is ended with 410 so its client lists again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::{ApiError, Result};
use crate::storage::{Change, ChangeFeed, SharedStorage, prefix_end};

/// Changes kept in memory for watches that start slightly in the past.
const WINDOW_CHANGES: usize = 50_000;
/// Batches a watch may have queued before it counts as too slow and is ended.
const SUBSCRIBER_QUEUE: usize = 2048;
const ROOT: &str = "/registry/";

struct Subscriber {
    id: u64,
    start: i64,
    tx: mpsc::Sender<Vec<Change>>,
}

#[derive(Default)]
struct Inner {
    running: bool,
    /// By key prefix: a resource's (`/registry/apps/deployments/`) or a namespace's within it.
    subscribers: HashMap<String, Vec<Subscriber>>,
    window: VecDeque<Change>,
    /// Every change at or after this revision is in the window.
    window_start: i64,
    next_id: u64,
}

pub struct Fanout {
    storage: SharedStorage,
    inner: Mutex<Inner>,
    /// Every change at or below this revision has been handed to its watches.
    position: Arc<AtomicI64>,
}

/// The prefixes under which watches of `key` are filed: its resource's and its namespace's.
fn prefixes(key: &str) -> [Option<&str>; 2] {
    let mut ends = key.match_indices('/').map(|(i, _)| i + 1);
    // "/registry/<group>/<resource>/" ends at the 4th slash, "<namespace>/" at the 5th.
    let resource = ends.nth(3).map(|end| &key[..end]);
    let namespace = ends.next().map(|end| &key[..end]);
    [resource, namespace]
}

impl Fanout {
    pub fn new(storage: SharedStorage) -> Arc<Fanout> {
        Arc::new(Fanout { storage, inner: Mutex::new(Inner::default()), position: Arc::new(AtomicI64::new(0)) })
    }

    pub fn watcher_count(&self) -> usize {
        self.inner.lock().subscribers.values().map(Vec::len).sum()
    }

    /// A feed of the changes under `prefix` from `start_revision` on, or `None` if that is
    /// older than the window (the caller then reads the store's history).
    pub fn subscribe(self: &Arc<Self>, prefix: &str, start_revision: i64) -> Option<Box<dyn ChangeFeed>> {
        let mut inner = self.inner.lock();
        if !inner.running {
            let current = self.storage.local_revision();
            inner.running = true;
            inner.window_start = current + 1;
            self.position.store(current, Ordering::SeqCst);
            tokio::spawn(self.clone().run(current + 1));
        }
        if start_revision < inner.window_start {
            return None;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        // The window is in revision order: only its tail can concern a start in the present.
        let first = inner.window.partition_point(|c| c.revision < start_revision);
        let backlog: Vec<Change> = inner.window.range(first..).filter(|c| c.key.starts_with(prefix)).cloned().collect();
        if !backlog.is_empty() && tx.try_send(backlog).is_err() {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.subscribers.entry(prefix.to_string()).or_default().push(Subscriber { id, start: start_revision, tx });
        drop(inner);
        Some(Box::new(Subscription {
            rx,
            delivered: start_revision - 1,
            position: self.position.clone(),
            fanout: self.clone(),
            prefix: prefix.to_string(),
            id,
        }))
    }

    fn unsubscribe(&self, prefix: &str, id: u64) {
        let mut inner = self.inner.lock();
        if let Some(list) = inner.subscribers.get_mut(prefix) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                inner.subscribers.remove(prefix);
            }
        }
    }

    async fn run(self: Arc<Self>, mut from: i64) {
        loop {
            let mut feed = match self.storage.watch(ROOT, &prefix_end(ROOT), from) {
                Ok(feed) => feed,
                Err(e) => {
                    tracing::warn!(error = %e, "watch fan-out cannot follow the store; watches restart");
                    from = self.reset();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                let next = tokio::time::timeout(Duration::from_secs(1), feed.next()).await;
                match next {
                    Err(_) => {
                        // Idle: what the feed has caught up to is delivered.
                        self.position.fetch_max(feed.progress_revision(), Ordering::SeqCst);
                    }
                    Ok(Ok(changes)) => {
                        let last = changes.last().map(|c| c.revision).unwrap_or(0);
                        self.dispatch(changes);
                        self.position.fetch_max(last, Ordering::SeqCst);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "watch fan-out lost its place in the store; watches restart");
                        from = self.reset();
                        break;
                    }
                }
            }
        }
    }

    /// Ends every watch (their clients list again) and starts over from the present.
    fn reset(&self) -> i64 {
        let mut inner = self.inner.lock();
        inner.subscribers.clear();
        inner.window.clear();
        let current = self.storage.local_revision();
        inner.window_start = current + 1;
        self.position.store(current, Ordering::SeqCst);
        current + 1
    }

    fn dispatch(&self, changes: Vec<Change>) {
        let mut inner = self.inner.lock();
        let mut batches: HashMap<(String, u64), Vec<Change>> = HashMap::new();
        for change in &changes {
            for prefix in prefixes(&change.key).into_iter().flatten() {
                if let Some(list) = inner.subscribers.get(prefix) {
                    for s in list.iter().filter(|s| change.revision >= s.start) {
                        batches.entry((prefix.to_string(), s.id)).or_default().push(change.clone());
                    }
                }
            }
        }
        let mut too_slow = Vec::new();
        for ((prefix, id), batch) in batches {
            if let Some(s) = inner.subscribers.get(&prefix).and_then(|l| l.iter().find(|s| s.id == id))
                && s.tx.try_send(batch).is_err()
            {
                too_slow.push((prefix, id));
            }
        }
        for (prefix, id) in too_slow {
            if let Some(list) = inner.subscribers.get_mut(&prefix) {
                list.retain(|s| s.id != id);
            }
        }
        inner.window.extend(changes);
        while inner.window.len() > WINDOW_CHANGES {
            if let Some(oldest) = inner.window.pop_front() {
                inner.window_start = oldest.revision + 1;
            }
        }
    }
}

struct Subscription {
    rx: mpsc::Receiver<Vec<Change>>,
    delivered: i64,
    position: Arc<AtomicI64>,
    fanout: Arc<Fanout>,
    prefix: String,
    id: u64,
}

impl ChangeFeed for Subscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Vec<Change>>> {
        Box::pin(async move {
            match self.rx.recv().await {
                Some(changes) => {
                    if let Some(last) = changes.last() {
                        self.delivered = last.revision;
                    }
                    Ok(changes)
                }
                // The fan-out dropped this watch: it fell behind, or the fan-out restarted.
                None => Err(ApiError::Gone {
                    what: "watch (it fell behind and was ended)".into(),
                    compacted: self.delivered,
                }),
            }
        })
    }

    fn progress_revision(&self) -> i64 {
        // Read the position before looking at the queue: if the queue is empty afterwards,
        // everything up to that position has reached this watch.
        let position = self.position.load(Ordering::SeqCst);
        if self.rx.is_empty() { position.max(self.delivered) } else { self.delivered }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fanout.unsubscribe(&self.prefix, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_filed_by_resource_and_namespace() {
        assert_eq!(
            prefixes("/registry/core/pods/default/web-1"),
            [Some("/registry/core/pods/"), Some("/registry/core/pods/default/")]
        );
        assert_eq!(prefixes("/registry/core/nodes/n1"), [Some("/registry/core/nodes/"), None]);
    }
}
