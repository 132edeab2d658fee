//! What the member has sent this node: its pods and the ConfigMaps, Secrets and
//! PersistentVolumeClaims (with their bound PersistentVolumes) they use, with the versions held (told to the member on a reconnect, so it sends only what changed).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use keel_proto::node::{ObjectVersion, Sync};
use parking_lot::Mutex;

#[derive(Default)]
struct Held {
    pods: HashMap<(String, String), Arc<Pod>>,
    config_maps: HashMap<(String, String), Arc<ConfigMap>>,
    secrets: HashMap<(String, String), Arc<Secret>>,
    claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    volumes: HashMap<(String, String), Arc<PersistentVolume>>,
    in_sync: bool,
}

#[derive(Default)]
pub struct Objects {
    held: Mutex<Held>,
}

/// What a Sync changed, for waking the pod workers it concerns.
#[derive(Debug, Default)]
pub struct Applied {
    /// Uids of pods added, changed or removed.
    pub pods: Vec<String>,
    /// Whether any ConfigMap, Secret, claim or volume changed.
    pub configs: bool,
}

fn key(namespace: &Option<String>, name: &Option<String>) -> (String, String) {
    (namespace.clone().unwrap_or_default(), name.clone().unwrap_or_default())
}

impl Objects {
    pub fn apply(&self, sync: Sync) -> Result<Applied, String> {
        let mut applied = Applied::default();
        let mut held = self.held.lock();
        for object in sync.upserts {
            match object.kind.as_str() {
                "Pod" => {
                    let pod: Pod = serde_json::from_slice(&object.json).map_err(|e| format!("a synced Pod: {e}"))?;
                    applied.pods.push(pod.metadata.uid.clone().unwrap_or_default());
                    let k = key(&pod.metadata.namespace, &pod.metadata.name);
                    if let Some(old) = held.pods.insert(k, Arc::new(pod))
                        && let Some(uid) = old.metadata.uid.clone()
                    {
                        applied.pods.push(uid);
                    }
                }
                "ConfigMap" => {
                    let cm: ConfigMap =
                        serde_json::from_slice(&object.json).map_err(|e| format!("a synced ConfigMap: {e}"))?;
                    held.config_maps.insert(key(&cm.metadata.namespace, &cm.metadata.name), Arc::new(cm));
                    applied.configs = true;
                }
                "Secret" => {
                    let secret: Secret =
                        serde_json::from_slice(&object.json).map_err(|e| format!("a synced Secret: {e}"))?;
                    held.secrets.insert(key(&secret.metadata.namespace, &secret.metadata.name), Arc::new(secret));
                    applied.configs = true;
                }
                "PersistentVolumeClaim" => {
                    let claim: PersistentVolumeClaim = serde_json::from_slice(&object.json)
                        .map_err(|e| format!("a synced PersistentVolumeClaim: {e}"))?;
                    held.claims.insert(key(&claim.metadata.namespace, &claim.metadata.name), Arc::new(claim));
                    applied.configs = true;
                }
                "PersistentVolume" => {
                    let volume: PersistentVolume =
                        serde_json::from_slice(&object.json).map_err(|e| format!("a synced PersistentVolume: {e}"))?;
                    held.volumes.insert(key(&None, &volume.metadata.name), Arc::new(volume));
                    applied.configs = true;
                }
                other => return Err(format!("a synced object of unknown kind {other:?}")),
            }
        }
        for removal in sync.removals {
            let k = (removal.namespace, removal.name);
            match removal.kind.as_str() {
                "Pod" => {
                    if let Some(old) = held.pods.remove(&k) {
                        applied.pods.push(old.metadata.uid.clone().unwrap_or_default());
                    }
                }
                "ConfigMap" => {
                    held.config_maps.remove(&k);
                    applied.configs = true;
                }
                "Secret" => {
                    held.secrets.remove(&k);
                    applied.configs = true;
                }
                "PersistentVolumeClaim" => {
                    held.claims.remove(&k);
                    applied.configs = true;
                }
                "PersistentVolume" => {
                    held.volumes.remove(&k);
                    applied.configs = true;
                }
                _ => {}
            }
        }
        if sync.in_sync {
            held.in_sync = true;
        }
        Ok(applied)
    }

    /// Whether a full view has arrived since the agent started: until then, a pod missing
    /// here may only not have been sent yet, and must not be stopped.
    pub fn in_sync(&self) -> bool {
        self.held.lock().in_sync
    }

    pub fn pod_by_uid(&self, uid: &str) -> Option<Arc<Pod>> {
        self.held.lock().pods.values().find(|p| p.metadata.uid.as_deref() == Some(uid)).cloned()
    }

    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.held.lock().pods.values().cloned().collect()
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.held.lock().config_maps.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.held.lock().secrets.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    pub fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.held.lock().claims.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    pub fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.held.lock().volumes.get(&(String::new(), name.to_string())).cloned()
    }

    /// Everything held, as a Register's `known`.
    pub fn versions(&self) -> Vec<ObjectVersion> {
        let held = self.held.lock();
        let version = |kind: &str, m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| ObjectVersion {
            kind: kind.to_string(),
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            resource_version: m.resource_version.clone().unwrap_or_default(),
        };
        let mut out: Vec<ObjectVersion> = held.pods.values().map(|p| version("Pod", &p.metadata)).collect();
        out.extend(held.config_maps.values().map(|c| version("ConfigMap", &c.metadata)));
        out.extend(held.secrets.values().map(|s| version("Secret", &s.metadata)));
        out.extend(held.claims.values().map(|c| version("PersistentVolumeClaim", &c.metadata)));
        out.extend(held.volumes.values().map(|v| version("PersistentVolume", &v.metadata)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::node::SyncObject;
    use serde_json::json;

    fn pod(name: &str, uid: &str, rv: &str) -> SyncObject {
        let pod = json!({"metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": rv}});
        SyncObject { kind: "Pod".into(), json: serde_json::to_vec(&pod).expect("json") }
    }

    #[test]
    fn syncs_add_replace_and_remove_and_versions_describe_what_is_held() {
        let objects = Objects::default();
        assert!(!objects.in_sync());
        let applied = objects.apply(Sync {
            upserts: vec![pod("a", "u1", "5"), pod("b", "u2", "6")],
            removals: vec![],
            in_sync: true,
        });
        assert_eq!(applied.expect("applied").pods.len(), 2);
        assert!(objects.in_sync());
        // A pod of the same name but a new uid: both uids are woken.
        let applied = objects.apply(Sync { upserts: vec![pod("a", "u3", "9")], removals: vec![], in_sync: true });
        let mut woken = applied.expect("applied").pods;
        woken.sort();
        assert_eq!(woken, vec!["u1", "u3"]);
        let removal = ObjectVersion {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "b".into(),
            uid: "u2".into(),
            resource_version: "6".into(),
        };
        objects.apply(Sync { upserts: vec![], removals: vec![removal], in_sync: true }).expect("applied");
        let versions = objects.versions();
        assert_eq!(versions.len(), 1);
        assert_eq!((versions[0].uid.as_str(), versions[0].resource_version.as_str()), ("u3", "9"));
        assert!(objects.pod_by_uid("u1").is_none());
        let bad = SyncObject { kind: "Widget".into(), json: b"{}".to_vec() };
        assert!(objects.apply(Sync { upserts: vec![bad], removals: vec![], in_sync: false }).is_err());
    }
}
