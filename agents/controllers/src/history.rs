//! ControllerRevisions: the history of a StatefulSet's or DaemonSet's pod template, as
//! kube's `controller/history` keeps it. Each distinct template is one revision named
//! `<owner>-<hash>`, numbered in order of use; going back to an earlier template (what
//! `kubectl rollout undo` does by patching the owner with a revision's data) renumbers that
//! revision instead of writing a duplicate. Revisions still worn by a live pod are kept;
//! of the rest, the newest `revisionHistoryLimit` are.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use keel_api::error::{ApiError, Result};
use keel_api::patch::PatchType;
use keel_api::rest::DeleteOptions;
use keel_runtime::{Client, Informer, ObjectKey};
use serde_json::{Value, json};

/// The pod label naming the revision a pod was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// The revision's own label carrying its hash.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// Index of the ControllerRevision informer: revisions by their controller's uid.
pub const REVISION_BY_OWNER: &str = "owner";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// FNV-1a of `bytes` (and a collision count), spelt with the vowel-free characters
/// Kubernetes uses in generated names (`rand.SafeEncodeString`).
pub fn safe_hash(bytes: &[u8], collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(bytes);
    if let Some(count) = collision_count {
        feed(&count.to_le_bytes());
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string().bytes().map(|b| SAFE[usize::from(b) % SAFE.len()] as char).collect()
}

/// A revision's data: a strategic merge patch that puts `template` back, as kube's
/// `getPatch` writes it (so `kubectl rollout undo` can apply it to the owner as is).
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut template {
        fields.insert("$patch".into(), Value::String("replace".into()));
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision holds.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Value::Object(fields) = &mut template {
        fields.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

pub fn hash_of(revision: &ControllerRevision) -> &str {
    revision.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)).map(String::as_str).unwrap_or_default()
}

/// The owner whose history is kept.
pub struct Owner<'a> {
    pub key: &'a ObjectKey,
    pub reference: OwnerReference,
    pub template: &'a PodTemplateSpec,
    pub annotations: Option<&'a std::collections::BTreeMap<String, String>>,
    pub collision_count: i32,
}

pub struct Revisions {
    /// Oldest first (by revision number).
    pub all: Vec<Arc<ControllerRevision>>,
    /// The revision of the current template.
    pub update: Arc<ControllerRevision>,
    /// Raised when a different template already holds the name a hash gave.
    pub collision_count: i32,
}

/// The owner's revisions, with one for its current template made or renumbered if needed.
pub async fn sync(client: &Client, informer: &Informer<ControllerRevision>, owner: &Owner<'_>) -> Result<Revisions> {
    let mut all = informer.by_index(REVISION_BY_OWNER, &owner.reference.uid);
    all.sort_by_key(|r| (r.revision, r.metadata.name.clone()));
    let data = revision_data(owner.template);
    let next = all.last().map_or(1, |r| r.revision + 1);
    let mut collision_count = owner.collision_count;
    let equal = |r: &ControllerRevision| r.data.as_ref().is_some_and(|d| d.0 == data);
    let update = match all.iter().rposition(|r| equal(r)) {
        Some(i) if i + 1 == all.len() => all[i].clone(),
        Some(i) => {
            // Back to an earlier template: that revision becomes the newest.
            let name = all[i].metadata.name.clone().unwrap_or_default();
            let renumbered: ControllerRevision =
                client.patch(owner.key.namespace(), &name, None, PatchType::Merge, json!({"revision": next})).await?;
            let renumbered = Arc::new(renumbered);
            all[i] = renumbered.clone();
            renumbered
        }
        None => {
            let created = loop {
                let hash = safe_hash(&serde_json::to_vec(&data).unwrap_or_default(), Some(collision_count));
                let revision = new_revision(owner, &data, &hash, next);
                let name = revision.metadata.name.clone().unwrap_or_default();
                match client.create(owner.key.namespace(), &revision).await {
                    Ok(created) => break created,
                    Err(ApiError::AlreadyExists { .. }) => {
                        // Ours, not yet in the cache? Then it is the one; else a collision.
                        let existing: ControllerRevision = client.get(owner.key.namespace(), &name).await?;
                        let ours =
                            existing.metadata.owner_references.iter().flatten().any(|r| r.uid == owner.reference.uid);
                        if ours && equal(&existing) {
                            break existing;
                        }
                        collision_count += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            let created = Arc::new(created);
            all.push(created.clone());
            created
        }
    };
    all.sort_by_key(|r| (r.revision, r.metadata.name.clone()));
    Ok(Revisions { all, update, collision_count })
}

fn new_revision(owner: &Owner<'_>, data: &Value, hash: &str, number: i64) -> ControllerRevision {
    let mut labels = owner.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let annotations = owner
        .annotations
        .map(|a| a.iter().filter(|(k, _)| k.as_str() != LAST_APPLIED).map(|(k, v)| (k.clone(), v.clone())).collect())
        .filter(|a: &std::collections::BTreeMap<String, String>| !a.is_empty());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", owner.key.name)),
            namespace: Some(owner.key.namespace.clone()),
            labels: Some(labels),
            annotations,
            owner_references: Some(vec![owner.reference.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(data.clone())),
        revision: number,
    }
}

/// Deletes the oldest revisions beyond `limit`, sparing those named in `live` (worn by
/// pods, or the current and update revisions).
pub async fn truncate(client: &Client, revisions: &Revisions, live: &HashSet<String>, limit: i32) -> Result<()> {
    let spare: Vec<&Arc<ControllerRevision>> =
        revisions.all.iter().filter(|r| !live.contains(r.metadata.name.as_deref().unwrap_or_default())).collect();
    let excess = spare.len().saturating_sub(limit.max(0) as usize);
    for revision in spare.into_iter().take(excess) {
        let key = ObjectKey::of(revision.as_ref());
        let options = DeleteOptions { precondition_uid: revision.metadata.uid.clone(), ..DeleteOptions::default() };
        client.delete::<ControllerRevision>(key.namespace(), &key.name, &options).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_to_the_template() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        let data = revision_data(&template);
        assert_eq!(data.pointer("/spec/template/$patch"), Some(&json!("replace")));
        let revision = ControllerRevision { data: Some(RawExtension(data)), ..ControllerRevision::default() };
        assert_eq!(template_of(&revision), Some(template));
    }

    #[test]
    fn hashes_are_safe_and_change_with_collisions() {
        let a = safe_hash(b"x", Some(0));
        assert_eq!(a, safe_hash(b"x", Some(0)));
        assert_ne!(a, safe_hash(b"x", Some(1)));
        assert!(a.bytes().all(|b| !b"aeiou013".contains(&b)));
    }
}
