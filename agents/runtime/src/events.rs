//! Events, recorded the way client-go's recorder does it: written in the background so a
//! loop never waits on them, a repeat of the same event (same object, type, reason and
//! message) raises the existing Event's count instead of creating another, and when the
//! write backlog is full new events are dropped (and counted) rather than slowing the loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use keel_api::patch::PatchType;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::Client;

/// Events waiting to be written; beyond this they are dropped, as client-go drops them.
const BACKLOG: usize = 1000;
/// Concurrent event writes.
const WRITERS: usize = 4;
/// Repeats are folded into one Event for this long.
const AGGREGATE_FOR: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
    dropped: Arc<AtomicU64>,
}

struct Pending {
    regarding: ObjectReference,
    event_type: EventType,
    reason: String,
    message: String,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Fold {
    uid: String,
    namespace: String,
    name: String,
    event_type: EventType,
    reason: String,
    message: String,
}

struct Recorded {
    namespace: String,
    name: String,
    count: i32,
    first: Time,
    at: std::time::Instant,
}

impl Recorder {
    /// Starts the background writers; they stop when every `Recorder` clone is dropped.
    pub fn new(client: Client) -> Recorder {
        let (tx, rx) = mpsc::channel::<Pending>(BACKLOG);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let folded: Arc<Mutex<HashMap<Fold, Recorded>>> = Arc::default();
        for _ in 0..WRITERS {
            let rx = rx.clone();
            let client = client.clone();
            let folded = folded.clone();
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(pending) = next else { return };
                    if let Err(e) = write(&client, &folded, pending).await {
                        tracing::debug!(error = %e, "event not recorded");
                    }
                }
            });
        }
        Recorder { tx, dropped: Arc::default() }
    }

    /// Records an event about `regarding`; never waits.
    pub fn record(&self, regarding: ObjectReference, event_type: EventType, reason: &str, message: impl Into<String>) {
        let pending = Pending { regarding, event_type, reason: reason.to_string(), message: message.into() };
        if self.tx.try_send(pending).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "event backlog full; dropping events");
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The reference an Event's `involvedObject` holds.
pub fn reference_to<K>(object: &K) -> ObjectReference
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let meta = object.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.to_string()),
        kind: Some(K::KIND.to_string()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

async fn write(
    client: &Client,
    folded: &Mutex<HashMap<Fold, Recorded>>,
    pending: Pending,
) -> keel_api::error::Result<()> {
    let namespace = pending.regarding.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let fold = Fold {
        uid: pending.regarding.uid.clone().unwrap_or_default(),
        namespace: namespace.clone(),
        name: pending.regarding.name.clone().unwrap_or_default(),
        event_type: pending.event_type,
        reason: pending.reason.clone(),
        message: pending.message.clone(),
    };
    let now = crate::now();
    let repeat = {
        let mut folded = folded.lock();
        folded.retain(|_, r| r.at.elapsed() < AGGREGATE_FOR);
        folded.get_mut(&fold).map(|r| {
            r.count += 1;
            r.at = std::time::Instant::now();
            (r.namespace.clone(), r.name.clone(), r.count, r.first.clone())
        })
    };
    if let Some((ns, name, count, _first)) = repeat {
        let patch = serde_json::json!({"count": count, "lastTimestamp": now});
        match client.patch::<Event>(Some(&ns), &name, None, PatchType::Merge, patch).await {
            Ok(_) => return Ok(()),
            // Gone (deleted, or its namespace is): record it afresh.
            Err(keel_api::error::ApiError::NotFound { .. }) => {
                folded.lock().remove(&fold);
            }
            Err(e) => return Err(e),
        }
    }
    let name = format!(
        "{}.{:x}",
        pending.regarding.name.as_deref().unwrap_or("event"),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
    );
    let event = Event {
        metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(namespace.clone()), ..ObjectMeta::default() },
        involved_object: pending.regarding,
        reason: Some(pending.reason),
        message: Some(pending.message),
        type_: Some(pending.event_type.as_str().to_string()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now.clone()),
        event_time: None::<MicroTime>,
        source: Some(EventSource { component: Some(client.manager.to_string()), host: None }),
        reporting_component: Some(client.manager.to_string()),
        reporting_instance: Some(client.manager.to_string()),
        ..Event::default()
    };
    client.create(Some(&namespace), &event).await?;
    folded.lock().insert(fold, Recorded { namespace, name, count: 1, first: now, at: std::time::Instant::now() });
    Ok(())
}
