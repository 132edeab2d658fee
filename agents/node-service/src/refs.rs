//! Which ConfigMaps, Secrets and PersistentVolumeClaims a pod uses: volumes (direct and
//! projected), env and envFrom of every container, init and ephemeral ones included. A node
//! is sent these (and the PersistentVolumes its claims are bound to) and no others.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigRef {
    /// `ConfigMap`, `Secret`, `PersistentVolumeClaim` or (cluster-scoped, namespace empty)
    /// `PersistentVolume`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ConfigRef {
    pub fn config_map(meta: &ObjectMeta) -> ConfigRef {
        ConfigRef {
            kind: "ConfigMap",
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    pub fn secret(meta: &ObjectMeta) -> ConfigRef {
        ConfigRef {
            kind: "Secret",
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    pub fn claim(meta: &ObjectMeta) -> ConfigRef {
        ConfigRef {
            kind: "PersistentVolumeClaim",
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    pub fn volume(name: &str) -> ConfigRef {
        ConfigRef { kind: "PersistentVolume", namespace: String::new(), name: name.to_string() }
    }
}

fn env_refs(env: &[EnvVar], env_from: &[EnvFromSource], add: &mut dyn FnMut(&'static str, &str)) {
    for var in env {
        let Some(from) = &var.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            add("ConfigMap", &r.name);
        }
        if let Some(r) = &from.secret_key_ref {
            add("Secret", &r.name);
        }
    }
    for from in env_from {
        if let Some(r) = &from.config_map_ref {
            add("ConfigMap", &r.name);
        }
        if let Some(r) = &from.secret_ref {
            add("Secret", &r.name);
        }
    }
}

fn container_refs(c: &Container, add: &mut dyn FnMut(&'static str, &str)) {
    env_refs(c.env.as_deref().unwrap_or_default(), c.env_from.as_deref().unwrap_or_default(), add);
}

/// Every ConfigMap and Secret `pod` refers to.
pub fn configs_of(pod: &Pod) -> HashSet<ConfigRef> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = HashSet::new();
    let mut add = |kind: &'static str, name: &str| {
        if !name.is_empty() {
            out.insert(ConfigRef { kind, namespace: namespace.clone(), name: name.to_string() });
        }
    };
    let Some(spec) = &pod.spec else { return out };
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        container_refs(c, &mut add);
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        env_refs(c.env.as_deref().unwrap_or_default(), c.env_from.as_deref().unwrap_or_default(), &mut add);
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            add("ConfigMap", &cm.name);
        }
        if let Some(secret) = &volume.secret {
            add("Secret", secret.secret_name.as_deref().unwrap_or_default());
        }
        if let Some(claim) = &volume.persistent_volume_claim {
            add("PersistentVolumeClaim", &claim.claim_name);
        }
        for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                add("ConfigMap", &cm.name);
            }
            if let Some(secret) = &source.secret {
                add("Secret", &secret.name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn volumes_env_and_env_from_of_every_container_count() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-secret"}}]}],
                "containers": [{"name": "c", "env": [
                    {"name": "A", "value": "plain"},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                    {"name": "C", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                    {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ]}],
                "volumes": [
                    {"name": "v1", "configMap": {"name": "vol-cm"}},
                    {"name": "v2", "secret": {"secretName": "vol-secret"}},
                    {"name": "v3", "projected": {"sources": [
                        {"configMap": {"name": "proj-cm"}}, {"secret": {"name": "proj-secret"}},
                        {"serviceAccountToken": {"path": "token"}}
                    ]}},
                    {"name": "v4", "emptyDir": {}},
                    {"name": "v5", "persistentVolumeClaim": {"claimName": "data"}}
                ]
            }
        }))
        .expect("pod");
        let mut refs: Vec<(&str, String)> = configs_of(&pod).into_iter().map(|r| (r.kind, r.name)).collect();
        refs.sort();
        assert_eq!(
            refs,
            vec![
                ("ConfigMap", "env-cm".to_string()),
                ("ConfigMap", "proj-cm".to_string()),
                ("ConfigMap", "vol-cm".to_string()),
                ("PersistentVolumeClaim", "data".to_string()),
                ("Secret", "env-secret".to_string()),
                ("Secret", "init-secret".to_string()),
                ("Secret", "proj-secret".to_string()),
                ("Secret", "vol-secret".to_string()),
            ]
        );
        assert!(configs_of(&pod).iter().all(|r| r.namespace == "ns"));
    }
}
