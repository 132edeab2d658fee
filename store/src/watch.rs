//! Watches: every applied revision's events are published once on a broadcast channel; each
//! watcher replays history from the MVCC `events` index until it reaches the present, then
//! follows the channel. A watcher that falls behind the channel (or sees a snapshot installed
//! under it) goes back to replaying history from the revision it needs next, so it never skips
//! or repeats an event. A start below the compaction horizon is reported, never skipped.

use std::sync::{Arc, OnceLock};

use keel_proto::mvccpb::{self, KeyValue, event::EventType};
use tokio::sync::broadcast;

use crate::error::{Result, StoreError};
use crate::keys::KeyRange;
use crate::mvcc::View;
use crate::state_machine::SmShared;

/// Revisions held for watchers that are momentarily behind; beyond it they replay from disk.
const HUB_CAPACITY: usize = 4096;
/// Events one history read hands to a watcher.
const REPLAY_BATCH: usize = 1000;

/// The events one applied entry produced, in the order it produced them.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: i64,
    /// Without `prev_kv`: applying a write does not read the value it replaces.
    pub events: Vec<mvccpb::Event>,
    /// The records the events replaced, read once, by the first watcher that wants them.
    previous: OnceLock<Vec<Option<KeyValue>>>,
}

impl RevisionEvents {
    pub fn new(revision: i64, events: Vec<mvccpb::Event>) -> RevisionEvents {
        RevisionEvents { revision, events, previous: OnceLock::new() }
    }

    /// For each event, the key as it was just before this revision (`None` if it did not
    /// exist, or that history is already compacted).
    fn previous(&self, shared: &SmShared) -> Result<&[Option<KeyValue>]> {
        if let Some(p) = self.previous.get() {
            return Ok(p);
        }
        let db = shared.db();
        let view = View::snapshot(&db);
        let mut found = Vec::with_capacity(self.events.len());
        for event in &self.events {
            let key = event.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
            found.push(match view.get_kv(key, self.revision - 1) {
                Ok(kv) => kv,
                Err(StoreError::Compacted { .. }) => None,
                Err(e) => return Err(e),
            });
        }
        Ok(self.previous.get_or_init(|| found))
    }
}

#[derive(Debug, Clone)]
pub enum HubMessage {
    Revision(Arc<RevisionEvents>),
    /// A snapshot replaced the state machine: watchers re-read history from it.
    Resync,
}

pub struct WatchHub {
    tx: broadcast::Sender<HubMessage>,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub { tx: broadcast::channel(HUB_CAPACITY).0 }
    }
}

impl WatchHub {
    pub fn publish(&self, message: HubMessage) {
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(message);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HubMessage> {
        self.tx.subscribe()
    }

    pub fn watcher_count(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub range: KeyRange,
    /// First revision to deliver; 0 means "after the current revision".
    pub start_revision: i64,
    pub prev_kv: bool,
    pub skip_puts: bool,
    pub skip_deletes: bool,
}

pub struct Watcher {
    shared: Arc<SmShared>,
    spec: WatchSpec,
    /// Every event below this revision has been handed out.
    next_revision: i64,
    rx: broadcast::Receiver<HubMessage>,
    live: bool,
    created_at: i64,
    /// The highest progress revision handed out: progress never goes back, though what it
    /// is computed from can (a revision seen applied while the receiver was empty, then a
    /// batch waiting in it).
    reported: std::sync::atomic::AtomicI64,
}

impl Watcher {
    pub(crate) fn new(shared: Arc<SmShared>, spec: WatchSpec) -> Result<Watcher> {
        // Subscribe before reading the current revision: everything after it then reaches
        // the receiver.
        let rx = shared.hub.subscribe();
        let db = shared.db();
        let view = View::snapshot(&db);
        let current = view.revision()?;
        let compacted = view.compacted()?;
        let next_revision = if spec.start_revision > 0 { spec.start_revision } else { current + 1 };
        if next_revision < compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        Ok(Watcher {
            shared,
            spec,
            next_revision,
            rx,
            live: false,
            created_at: current,
            reported: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    /// The store revision when the watch was created.
    pub fn created_revision(&self) -> i64 {
        self.created_at
    }

    pub fn spec(&self) -> &WatchSpec {
        &self.spec
    }

    /// The next events, whole revisions at a time, in revision order; never empty.
    pub async fn next(&mut self) -> Result<Vec<mvccpb::Event>> {
        loop {
            if !self.live {
                if let Some(events) = self.replay()? {
                    return Ok(events);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(HubMessage::Revision(batch)) => {
                    if batch.revision < self.next_revision {
                        continue;
                    }
                    self.next_revision = batch.revision + 1;
                    let mut events: Vec<mvccpb::Event> = Vec::new();
                    for (i, event) in batch.events.iter().enumerate() {
                        if let Some(mut event) = self.select(event) {
                            if self.spec.prev_kv {
                                event.prev_kv = batch.previous(&self.shared)?[i].clone();
                            }
                            events.push(event);
                        }
                    }
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                Ok(HubMessage::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => self.live = false,
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Stopped),
            }
        }
    }

    /// Reads history from `next_revision`; `None` when there was nothing to hand out (and the
    /// watcher may have caught up).
    fn replay(&mut self) -> Result<Option<Vec<mvccpb::Event>>> {
        let db = self.shared.db();
        let view = View::snapshot(&db);
        let compacted = view.compacted()?;
        if self.next_revision < compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        let present = view.revision()?;
        if self.next_revision > present {
            self.live = true;
            return Ok(None);
        }
        let (events, next) =
            view.events_since(self.next_revision, present, &self.spec.range, self.spec.prev_kv, REPLAY_BATCH)?;
        self.next_revision = next;
        let events: Vec<mvccpb::Event> = events.into_iter().filter_map(|(_, e)| self.select(&e)).collect();
        Ok((!events.is_empty()).then_some(events))
    }

    fn select(&self, event: &mvccpb::Event) -> Option<mvccpb::Event> {
        let kv = event.kv.as_ref()?;
        if !self.spec.range.contains(&kv.key) {
            return None;
        }
        let is_put = event.r#type == EventType::Put as i32;
        if (is_put && self.spec.skip_puts) || (!is_put && self.spec.skip_deletes) {
            return None;
        }
        let mut event = event.clone();
        if !self.spec.prev_kv {
            event.prev_kv = None;
        }
        Some(event)
    }

    /// A revision this watcher is complete up to: every event at or below it has been handed
    /// out by [`Watcher::next`]. Used for progress notifications (bookmarks).
    pub fn progress_revision(&self) -> i64 {
        let delivered = self.next_revision - 1;
        if !self.live {
            return self.reported.fetch_max(delivered, std::sync::atomic::Ordering::Relaxed).max(delivered);
        }
        // The state machine publishes a revision before it reports it applied, so once the
        // receiver is empty every revision up to the applied one has passed through it.
        let applied = self.shared.applied_revision();
        let now = if self.rx.is_empty() { delivered.max(applied) } else { delivered };
        self.reported.fetch_max(now, std::sync::atomic::Ordering::Relaxed).max(now)
    }
}
