//! An informer: a cache of one kind kept current by list+watch through the in-process API,
//! with handlers told of every change and optional indexes. A watch that ends is resumed
//! from the last revision seen; a 410 (history compacted) or any other error lists again,
//! and the handlers see the difference, so nothing relies on having seen every edge.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keel_api::rest::{ListOptions, WatchEvent, WatchOptions};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::Client;

/// Namespace ("" for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }

    pub fn of<K: Metadata<Ty = ObjectMeta>>(object: &K) -> ObjectKey {
        let meta = object.metadata();
        ObjectKey::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
    }

    pub fn namespace(&self) -> Option<&str> {
        (!self.namespace.is_empty()).then_some(self.namespace.as_str())
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// (old, new) as handlers see it.
type Change<K> = (Option<Arc<K>>, Option<Arc<K>>);
type Handler<K> = Box<dyn Fn(Option<&Arc<K>>, Option<&Arc<K>>) + Send + Sync>;
type IndexFn<K> = Box<dyn Fn(&K) -> Vec<String> + Send + Sync>;

pub struct Informer<K> {
    client: Client,
    cache: RwLock<Cache<K>>,
    handlers: RwLock<Vec<Handler<K>>>,
    index_fns: RwLock<HashMap<&'static str, IndexFn<K>>>,
    synced: watch::Sender<bool>,
    revision: watch::Sender<i64>,
}

struct Cache<K> {
    objects: HashMap<ObjectKey, Arc<K>>,
    /// index name -> index value -> keys.
    indexes: HashMap<&'static str, HashMap<String, Vec<ObjectKey>>>,
}

impl<K> Informer<K>
where
    K: k8s_openapi::Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Send + Sync + 'static,
{
    pub fn new(client: Client) -> Arc<Informer<K>> {
        Arc::new(Informer {
            client,
            cache: RwLock::new(Cache { objects: HashMap::new(), indexes: HashMap::new() }),
            handlers: RwLock::new(Vec::new()),
            index_fns: RwLock::new(HashMap::new()),
            synced: watch::channel(false).0,
            revision: watch::channel(0).0,
        })
    }

    /// Called with (old, new) for every change: (None, Some) added, (Some, Some) modified
    /// (also on a relist), (Some, None) deleted. Register before `run`.
    pub fn on_change(&self, handler: impl Fn(Option<&Arc<K>>, Option<&Arc<K>>) + Send + Sync + 'static) {
        self.handlers.write().push(Box::new(handler));
    }

    /// Queues the key of every object added or changed: how a controller follows its own kind.
    pub fn feed(&self, queue: Arc<crate::WorkQueue<ObjectKey>>) {
        self.on_change(move |_, new| {
            if let Some(new) = new {
                queue.add(ObjectKey::of(new.as_ref()));
            }
        });
    }

    /// Keeps objects findable by the values `index` gives them. Register before `run`.
    pub fn add_index(&self, name: &'static str, index: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) {
        self.index_fns.write().insert(name, Box::new(index));
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.cache.read().objects.get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<K>> {
        self.cache.read().objects.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.cache.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn by_index(&self, name: &str, value: &str) -> Vec<Arc<K>> {
        let cache = self.cache.read();
        let Some(keys) = cache.indexes.get(name).and_then(|index| index.get(value)) else { return Vec::new() };
        keys.iter().filter_map(|key| cache.objects.get(key).cloned()).collect()
    }

    /// The revision the cache reflects.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits for the first list to be in the cache.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Waits until the cache reflects at least `revision` (a write this loop just made).
    pub async fn wait_for_revision(&self, revision: i64) {
        let mut seen = self.revision.subscribe();
        let _ = seen.wait_for(|r| *r >= revision).await;
    }

    /// Lists and watches until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            match self.list_and_watch().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let delay = Duration::from_millis(100 * u64::from(failures.min(20)));
                    tracing::info!(kind = K::KIND, error = %e, ?delay, "informer list/watch failed; listing again");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn list_and_watch(&self) -> keel_api::error::Result<()> {
        let (items, revision) = self.client.list::<K>(None, &ListOptions::default()).await?;
        self.replace(items, revision);
        let rt = self.client.resource::<K>()?;
        let mut revision = revision;
        loop {
            let options = WatchOptions {
                list: ListOptions { resource_version: Some(revision.to_string()), ..ListOptions::default() },
                allow_bookmarks: true,
                send_initial_events: Some(false),
                timeout: Some(Duration::from_secs(300)),
            };
            let mut events = self.client.api.watch(rt.clone(), None, options).await?;
            while let Some(event) = events.recv().await {
                match event.kind() {
                    "BOOKMARK" => {
                        if let Some(rv) = event_revision(&event) {
                            revision = revision.max(rv);
                            self.revision.send_replace(revision);
                        }
                    }
                    "ERROR" => {
                        return Err(keel_api::error::ApiError::internal(format!(
                            "watch ended with an error: {}",
                            String::from_utf8_lossy(&event.object_bytes())
                        )));
                    }
                    kind => {
                        let deleted = kind == "DELETED";
                        let object: K = serde_json::from_slice(&event.object_bytes()).map_err(|e| {
                            keel_api::error::ApiError::internal(format!("watched {} does not decode: {e}", K::KIND))
                        })?;
                        let rv = object.metadata().resource_version.as_deref().and_then(|v| v.parse().ok());
                        self.apply(object, deleted);
                        if let Some(rv) = rv {
                            revision = revision.max(rv);
                            self.revision.send_replace(revision);
                        }
                    }
                }
            }
            // The watch timed out: resume where it ended.
        }
    }

    fn replace(&self, items: Vec<K>, revision: i64) {
        let mut changes = Vec::new();
        {
            let mut cache = self.cache.write();
            let mut fresh: HashMap<ObjectKey, Arc<K>> = HashMap::with_capacity(items.len());
            for item in items {
                fresh.insert(ObjectKey::of(&item), Arc::new(item));
            }
            for (key, old) in &cache.objects {
                if !fresh.contains_key(key) {
                    changes.push((Some(old.clone()), None));
                }
            }
            for (key, new) in &fresh {
                changes.push((cache.objects.get(key).cloned(), Some(new.clone())));
            }
            cache.objects = fresh;
            let index_fns = self.index_fns.read();
            cache.indexes.clear();
            let Cache { objects, indexes } = &mut *cache;
            for (name, index) in index_fns.iter() {
                let entries = indexes.entry(name).or_default();
                for (key, object) in objects.iter() {
                    for value in index(object) {
                        entries.entry(value).or_default().push(key.clone());
                    }
                }
            }
        }
        self.revision.send_replace(revision);
        self.notify(&changes);
        self.synced.send_replace(true);
    }

    fn apply(&self, object: K, deleted: bool) {
        let key = ObjectKey::of(&object);
        let object = Arc::new(object);
        let old = {
            let mut cache = self.cache.write();
            let old =
                if deleted { cache.objects.remove(&key) } else { cache.objects.insert(key.clone(), object.clone()) };
            let index_fns = self.index_fns.read();
            for (name, index) in index_fns.iter() {
                let entries = cache.indexes.entry(name).or_default();
                if let Some(old) = &old {
                    for value in index(old) {
                        if let Some(keys) = entries.get_mut(&value) {
                            keys.retain(|k| k != &key);
                            if keys.is_empty() {
                                entries.remove(&value);
                            }
                        }
                    }
                }
                if !deleted {
                    for value in index(&object) {
                        entries.entry(value).or_default().push(key.clone());
                    }
                }
            }
            old
        };
        if deleted {
            self.notify(&[(old.or(Some(object)), None)]);
        } else {
            self.notify(&[(old, Some(object))]);
        }
    }

    fn notify(&self, changes: &[Change<K>]) {
        let handlers = self.handlers.read();
        for (old, new) in changes {
            for handler in handlers.iter() {
                handler(old.as_ref(), new.as_ref());
            }
        }
    }
}

fn event_revision(event: &WatchEvent) -> Option<i64> {
    let object: serde_json::Value = serde_json::from_slice(&event.object_bytes()).ok()?;
    object.pointer("/metadata/resourceVersion")?.as_str()?.parse().ok()
}

/// The owner references' uids of an object: the usual index of dependents.
pub fn owner_uids<K: Metadata<Ty = ObjectMeta>>(object: &K) -> Vec<String> {
    object.metadata().owner_references.iter().flatten().map(|r| r.uid.clone()).collect()
}

/// The uid of an object's controller owner.
pub fn controller_uid<K: Metadata<Ty = ObjectMeta>>(object: &K) -> Option<String> {
    object.metadata().owner_references.iter().flatten().find(|r| r.controller == Some(true)).map(|r| r.uid.clone())
}
