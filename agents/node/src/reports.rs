//! What the agent has to tell the member: the latest status of each pod (only the latest
//! counts, so updates to one pod coalesce), pods ready to be removed, and Events. Held here
//! while no stream is up and sent in batches once one is; everything still unconfirmed is sent
//! again after a reconnect (the member writes only what changed).

use std::collections::{HashMap, HashSet, VecDeque};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use keel_proto::node;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Events kept while disconnected; older ones are dropped first.
const MAX_PENDING_EVENTS: usize = 10_000;

struct Entry {
    namespace: String,
    name: String,
    status: PodStatus,
}

#[derive(Default)]
struct Pending {
    statuses: HashMap<String, Entry>,
    dirty: HashSet<String>,
    finished: HashMap<String, (String, String)>,
    /// Removals not yet asked for on the current stream.
    finished_unsent: HashSet<String>,
    events: VecDeque<Event>,
}

pub struct Reports {
    node: String,
    pending: Mutex<Pending>,
    pub wake: Notify,
}

/// One batch for the stream.
#[derive(Default)]
pub struct Batch {
    pub statuses: node::PodStatusBatch,
    pub finished: Vec<node::PodFinished>,
    pub events: node::EventBatch,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.statuses.pods.is_empty() && self.finished.is_empty() && self.events.events.is_empty()
    }
}

impl Reports {
    pub fn new(node: &str) -> Reports {
        Reports { node: node.to_string(), pending: Mutex::new(Pending::default()), wake: Notify::new() }
    }

    /// Records a pod's status; a status equal to the last one is not sent again.
    pub fn set_status(&self, uid: &str, pod: &Pod, status: PodStatus) {
        let mut pending = self.pending.lock();
        if pending.statuses.get(uid).is_some_and(|e| e.status == status) {
            return;
        }
        let entry = Entry {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            status,
        };
        pending.statuses.insert(uid.to_string(), entry);
        pending.dirty.insert(uid.to_string());
        drop(pending);
        self.wake.notify_one();
    }

    pub fn last_status(&self, uid: &str) -> Option<PodStatus> {
        self.pending.lock().statuses.get(uid).map(|e| e.status.clone())
    }

    pub fn finished(&self, uid: &str, pod: &Pod) {
        let mut pending = self.pending.lock();
        let target =
            (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        if pending.finished.insert(uid.to_string(), target).is_none() {
            pending.finished_unsent.insert(uid.to_string());
            drop(pending);
            self.wake.notify_one();
        }
    }

    /// The pod is gone from the node: nothing more to say about it.
    pub fn forget(&self, uid: &str) {
        let mut pending = self.pending.lock();
        pending.statuses.remove(uid);
        pending.dirty.remove(uid);
        pending.finished.remove(uid);
        pending.finished_unsent.remove(uid);
    }

    pub fn event(&self, pod: &Pod, field_path: Option<String>, warning: bool, reason: &str, message: String) {
        let now = Time(k8s_openapi::chrono::Utc::now());
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let unique = format!(
            "{:x}",
            k8s_openapi::chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64 ^ u64::from(rand_suffix())
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{unique}")),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(namespace),
                name: Some(name),
                uid: pod.metadata.uid.clone(),
                field_path,
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
            source: Some(EventSource { component: Some("kubelet".into()), host: Some(self.node.clone()) }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        let mut pending = self.pending.lock();
        if pending.events.len() >= MAX_PENDING_EVENTS {
            pending.events.pop_front();
        }
        pending.events.push_back(event);
        drop(pending);
        self.wake.notify_one();
    }

    /// Takes what is waiting to be sent. Statuses and removals stay recorded: statuses so a
    /// reconnect can send them again, removals until the pod is gone.
    pub fn take(&self, limit: usize) -> Batch {
        let mut pending = self.pending.lock();
        let mut batch = Batch::default();
        let dirty: Vec<String> = pending.dirty.iter().take(limit).cloned().collect();
        for uid in dirty {
            pending.dirty.remove(&uid);
            if let Some(e) = pending.statuses.get(&uid) {
                batch.statuses.pods.push(node::PodStatus {
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    uid: uid.clone(),
                    status: serde_json::to_vec(&e.status).unwrap_or_default(),
                });
            }
        }
        let n = pending.events.len().min(limit);
        batch.events.events = pending.events.drain(..n).filter_map(|e| serde_json::to_vec(&e).ok()).collect();
        let unsent: Vec<String> = pending.finished_unsent.drain().collect();
        for uid in unsent {
            if let Some((namespace, name)) = pending.finished.get(&uid) {
                batch.finished.push(node::PodFinished { namespace: namespace.clone(), name: name.clone(), uid });
            }
        }
        batch
    }

    pub fn has_more(&self) -> bool {
        let pending = self.pending.lock();
        !pending.dirty.is_empty() || !pending.events.is_empty() || !pending.finished_unsent.is_empty()
    }

    /// A new stream: every status and removal is sent again.
    pub fn resend_all(&self) {
        let mut pending = self.pending.lock();
        let all: Vec<String> = pending.statuses.keys().cloned().collect();
        pending.dirty.extend(all);
        let finished: Vec<String> = pending.finished.keys().cloned().collect();
        pending.finished_unsent.extend(finished);
        drop(pending);
        self.wake.notify_one();
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(0x9E37_79B9, Ordering::Relaxed)
}
