//! The garbage collector and namespace deletion, level-triggered: each pass reads every
//! object at one revision and moves each deletion one step on.
//!
//! * An object whose owners (`ownerReferences`) are all gone is deleted (background).
//! * An owner being deleted with the `foregroundDeletion` finalizer has its dependents
//!   deleted first; the finalizer goes once none is left.
//! * An owner being deleted with the `orphan` finalizer has its dependents released (their
//!   reference to it removed) and then goes.
//! * A terminating namespace has everything in it deleted; once it is empty its `kubernetes`
//!   finalizer goes and the namespace with it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use keel_api::error::{ApiError, Result};
use keel_api::object;
use keel_api::registry::ResourceType;
use keel_api::rest::{Api, DeleteOptions, FieldValidation, WriteOptions, decode};
use keel_api::storage::{Consistency, Stored, prefix_end};
use serde_json::{Value, json};

const ROOT: &str = "/registry/";

pub struct GarbageCollector {
    api: Arc<Api>,
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    pub deleted: usize,
    pub released: usize,
    pub finalized: usize,
}

struct Item {
    rt: Arc<ResourceType>,
    /// What the collector reads: type, metadata and a namespace's `spec.finalizers`.
    object: Value,
    /// The whole object, decoded only when the collector changes it.
    stored: Stored,
}

/// The parts of an object a pass reads; the rest (most of its bytes) is skipped unparsed.
#[derive(serde::Deserialize)]
struct Skeleton {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Value,
    #[serde(default)]
    spec: Option<SkeletonSpec>,
}

#[derive(serde::Deserialize)]
struct SkeletonSpec {
    #[serde(default)]
    finalizers: Option<Value>,
}

impl Item {
    fn full(&self) -> Result<Value> {
        decode(&self.stored)
    }

    fn namespace(&self) -> Option<&str> {
        let ns = object::namespace(&self.object);
        (!ns.is_empty()).then_some(ns)
    }

    fn name(&self) -> &str {
        object::name(&self.object)
    }

    fn uid(&self) -> &str {
        object::meta_str(&self.object, "uid")
    }

    fn owner_uids(&self) -> Vec<String> {
        object::meta(&self.object)
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
            .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from)).collect())
            .unwrap_or_default()
    }
}

fn controller_options() -> WriteOptions {
    WriteOptions {
        field_validation: FieldValidation::Ignore,
        field_manager: Some("garbage-collector".into()),
        ..Default::default()
    }
}

impl GarbageCollector {
    pub fn new(api: Arc<Api>) -> GarbageCollector {
        GarbageCollector { api }
    }

    async fn snapshot(&self) -> Result<Vec<Item>> {
        let page = self.api.storage.list(ROOT, &prefix_end(ROOT), 0, 0, Consistency::Linearizable).await?;
        // Parsing every object is the expensive part of a pass: off the request threads.
        let skeletons = tokio::task::spawn_blocking(move || {
            page.items
                .into_iter()
                .filter_map(|stored| {
                    let skeleton: Skeleton = serde_json::from_slice(&stored.value).ok()?;
                    let mut object = json!({"apiVersion": skeleton.api_version, "kind": skeleton.kind, "metadata": skeleton.metadata});
                    if let Some(finalizers) = skeleton.spec.and_then(|s| s.finalizers) {
                        object["spec"] = json!({"finalizers": finalizers});
                    }
                    Some((object, stored))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ApiError::internal(format!("garbage collection scan: {e}")))?;
        let mut items = Vec::with_capacity(skeletons.len());
        for (object, stored) in skeletons {
            // Objects of kinds no longer served (a deleted CRD's) are left alone.
            if let Ok(rt) = self.api.type_of(&object) {
                items.push(Item { rt, object, stored });
            }
        }
        Ok(items)
    }

    async fn delete(&self, item: &Item, propagation: &str) -> Result<bool> {
        if object::is_terminating(&item.object) {
            return Ok(false);
        }
        let options = DeleteOptions { propagation_policy: Some(propagation.into()), ..Default::default() };
        match self.api.delete(&item.rt, item.namespace(), item.name(), &options).await {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes `object` back (with its resourceVersion as precondition).
    async fn update(&self, item: &Item, object: Value) -> Result<()> {
        match self.api.update(&item.rt, item.namespace(), item.name(), None, object, &controller_options()).await {
            Ok(_) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_finalizer(&self, item: &Item, finalizer: &str) -> Result<()> {
        let mut object = item.full()?;
        let remaining: Vec<String> = object::finalizers(&object).into_iter().filter(|f| f != finalizer).collect();
        object::meta_mut(&mut object).insert("finalizers".into(), json!(remaining));
        self.update(item, object).await
    }

    pub async fn pass(&mut self) -> Result<Pass> {
        let items = self.snapshot().await?;
        let uids: HashSet<&str> = items.iter().map(Item::uid).collect();
        let mut dependents: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            for owner in item.owner_uids() {
                if let Some(uid) = uids.get(owner.as_str()) {
                    dependents.entry(uid).or_default().push(i);
                }
            }
        }
        let mut done = Pass::default();
        for item in &items {
            let owners = item.owner_uids();
            // Every owner gone: background deletion of the dependent.
            if !owners.is_empty()
                && owners.iter().all(|o| !uids.contains(o.as_str()))
                && self.delete(item, "Background").await?
            {
                done.deleted += 1;
                continue;
            }
            if !object::is_terminating(&item.object) {
                continue;
            }
            let finalizers = object::finalizers(&item.object);
            let mine = dependents.get(item.uid()).cloned().unwrap_or_default();
            if finalizers.iter().any(|f| f == "orphan") {
                for &d in &mine {
                    let dependent = &items[d];
                    let mut released = dependent.full()?;
                    if let Some(refs) =
                        object::meta_mut(&mut released).get_mut("ownerReferences").and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(item.uid()));
                    }
                    self.update(dependent, released).await?;
                    done.released += 1;
                }
                self.remove_finalizer(item, "orphan").await?;
                done.finalized += 1;
                continue;
            }
            if finalizers.iter().any(|f| f == "foregroundDeletion") {
                if mine.is_empty() {
                    self.remove_finalizer(item, "foregroundDeletion").await?;
                    done.finalized += 1;
                } else {
                    for &d in &mine {
                        if self.delete(&items[d], "Foreground").await? {
                            done.deleted += 1;
                        }
                    }
                }
                continue;
            }
            if item.rt.group.is_empty() && item.rt.kind == "Namespace" {
                let name = item.name();
                let contents: Vec<&Item> =
                    items.iter().filter(|o| o.rt.namespaced && o.namespace() == Some(name)).collect();
                if contents.is_empty() {
                    let mut finished = item.full()?;
                    finished["spec"]["finalizers"] = json!([]);
                    self.update(item, finished).await?;
                    done.finalized += 1;
                } else {
                    for content in contents {
                        if self.delete(content, "Background").await? {
                            done.deleted += 1;
                        }
                    }
                }
            }
        }
        if done != Pass::default() {
            tracing::info!(
                deleted = done.deleted,
                released = done.released,
                finalized = done.finalized,
                "garbage collection"
            );
        }
        Ok(done)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Follows every change in the store and raises `dirty` when one may give the collector
/// work: a deletion (its dependents may now be orphans), an object marked for deletion, or
/// an object with owners (they may be gone already).
pub async fn watch_for_work(api: Arc<Api>, dirty: Arc<std::sync::atomic::AtomicBool>) {
    loop {
        let from = api.storage.local_revision() + 1;
        let mut feed = match api.storage.watch(ROOT, &prefix_end(ROOT), from) {
            Ok(feed) => feed,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        dirty.store(true, std::sync::atomic::Ordering::SeqCst);
        while let Ok(changes) = feed.next().await {
            let relevant = changes.iter().any(|change| match change.kind {
                keel_api::storage::ChangeKind::Delete => true,
                // A byte search, not a parse: this runs for every write. A false match (the
                // words inside some value) only costs an extra pass.
                // Objects being deleted, and owner references appearing (a new dependent may
                // name an owner already gone) — not every status update of every pod.
                keel_api::storage::ChangeKind::Put => {
                    let owners = |value: &[u8]| contains(value, b"\"ownerReferences\"");
                    contains(&change.value, b"\"deletionTimestamp\"")
                        || (change.create_revision == change.revision && owners(&change.value))
                        || change.previous.as_ref().is_some_and(|p| owners(p) != owners(&change.value))
                }
            });
            if relevant {
                dirty.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}
