//! The local-path provisioner, after k3s's (rancher/local-path-provisioner): a claim of a
//! class whose provisioner is `rancher.io/local-path` (k3s's name, so manifests written for
//! k3s work unchanged) or `keel.dev/local-path` gets a hostPath volume in a directory of its
//! own on the node the scheduler chose for it (`volume.kubernetes.io/selected-node`), pinned
//! to that node by node affinity. The directory itself is made by the node agent when the
//! volume is first mounted (`DirectoryOrCreate`).
//!
//! The PersistentVolume controller ([`crate::volume`]) calls [`provision`] and writes the
//! result; this module only says what the volume is.

use std::path::Path;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keel_api::error::{ApiError, Result};
use keel_api::rest::{Api, WriteOptions};
use keel_scheduler_framework::volume::{HOSTNAME_LABEL, claim_reference};
use serde_json::json;

/// k3s's provisioner name.
pub const K3S_PROVISIONER: &str = "rancher.io/local-path";
/// keel's own name for the same provisioner.
pub const KEEL_PROVISIONER: &str = "keel.dev/local-path";
/// The class every new cluster has, as k3s ships it.
pub const DEFAULT_CLASS: &str = "local-path";
/// Where volumes live on the nodes unless the controller manager is told otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/keel/storage";
/// On a provisioned volume: which provisioner made it (and so may delete it).
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// Whether volumes of this provisioner are made here.
pub fn is_local_path(provisioner: &str) -> bool {
    provisioner == K3S_PROVISIONER || provisioner == KEEL_PROVISIONER
}

/// The volume a claim of `class` gets on the node named `node_name`, or why it cannot have
/// one (k3s's reasons, in its words where it has them).
pub fn provision(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node_name: Option<&str>,
    node: Option<&Node>,
    base: &Path,
) -> Result<PersistentVolume, String> {
    let Some(node_name) = node_name else {
        return Err(format!(
            "configuration error, no node was specified: {} volumes need volumeBindingMode WaitForFirstConsumer",
            class.provisioner
        ));
    };
    let spec = claim.spec.clone().unwrap_or_default();
    if spec.selector.is_some() {
        return Err("claim.Spec.Selector is not supported".into());
    }
    let modes = spec.access_modes.clone().unwrap_or_default();
    if modes.iter().any(|m| m != "ReadWriteOnce" && m != "ReadWriteOncePod") {
        return Err("NodePath only supports ReadWriteOnce and ReadWriteOncePod (RWOP) access modes".into());
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err("volumeMode Block is not supported: local-path volumes are directories".into());
    }
    let Some(request) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")) else {
        return Err("the claim requests no storage".into());
    };
    let uid = claim.metadata.uid.as_deref().unwrap_or_default();
    let name = format!("pvc-{uid}");
    let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
    let claim_name = claim.metadata.name.as_deref().unwrap_or_default();
    let path = base.join(format!("{name}_{namespace}_{claim_name}"));
    // Affinity by the node's hostname label, as k3s writes it; a node without the label
    // is named by its name (the scheduler reads such nodes the same way).
    let hostname = node
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(HOSTNAME_LABEL))
        .map(String::as_str)
        .unwrap_or(node_name);
    let volume = json!({
        "metadata": {
            "name": name,
            "annotations": {ANN_PROVISIONED_BY: class.provisioner},
        },
        "spec": {
            "capacity": {"storage": request},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.as_deref().unwrap_or("Delete"),
            "storageClassName": class.metadata.name,
            "volumeMode": "Filesystem",
            "mountOptions": class.mount_options,
            "hostPath": {"path": path.to_string_lossy(), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [hostname]},
            ]}]}},
            "claimRef": claim_reference(claim),
        },
    });
    serde_json::from_value(volume).map_err(|e| format!("the volume does not encode: {e}"))
}

/// The `local-path` class k3s installs: the default class, WaitForFirstConsumer (a
/// node-local volume can only be made once the pod's node is known), Delete.
pub fn default_storage_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(DEFAULT_CLASS.into()),
            annotations: Some([(keel_api::admission::DEFAULT_CLASS_ANNOTATION.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        provisioner: K3S_PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..StorageClass::default()
    }
}

/// Creates the default `local-path` StorageClass when the cluster is new. Call it before
/// the system namespaces are created: a cluster whose `default` namespace does not exist
/// yet has never started, so the class is made once, at the first start, and a class the
/// administrator later deletes or changes stays that way (k3s instead re-creates it at
/// every start unless told `--disable local-storage`). Safe to call on every member at
/// every start; `Ok(true)` when it created the class.
pub async fn ensure_default_storage_class(api: &Api) -> Result<bool> {
    let (Some(namespaces), Some(classes)) =
        (api.registry.find("", "v1", "namespaces"), api.registry.find("storage.k8s.io", "v1", "storageclasses"))
    else {
        return Ok(false);
    };
    match api.get(&namespaces, None, "default").await {
        Ok(_) => return Ok(false),
        Err(ApiError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let class = keel_runtime::client::to_value(&default_storage_class())?;
    let options = WriteOptions { field_manager: Some(crate::MANAGER.into()), ..WriteOptions::default() };
    match api.create(&classes, None, class, &options).await {
        Ok(_) => Ok(true),
        Err(ApiError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn claim(spec: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "web", "uid": "1234"}, "spec": spec}))
            .unwrap()
    }

    fn class(reclaim: Option<&str>) -> StorageClass {
        StorageClass { reclaim_policy: reclaim.map(String::from), ..default_storage_class() }
    }

    #[test]
    fn provisioned_volumes_live_in_a_directory_of_their_own_on_the_selected_node() {
        let c = claim(json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}));
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "host-1"}}}))
                .unwrap();
        let pv = provision(&c, &class(None), Some("n1"), Some(&node), Path::new("/data")).unwrap();
        let v = serde_json::to_value(&pv).unwrap();
        assert_eq!(v["metadata"]["name"], "pvc-1234");
        assert_eq!(v["metadata"]["annotations"][ANN_PROVISIONED_BY], "rancher.io/local-path");
        assert_eq!(v["spec"]["hostPath"], json!({"path": "/data/pvc-1234_web_data", "type": "DirectoryOrCreate"}));
        assert_eq!(v["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(v["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(v["spec"]["storageClassName"], "local-path");
        assert_eq!(
            v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
            json!({"key": "kubernetes.io/hostname", "operator": "In", "values": ["host-1"]})
        );
        assert_eq!(v["spec"]["claimRef"]["uid"], "1234");
        assert_eq!(v["spec"]["claimRef"]["name"], "data");

        // A node without the hostname label (or not known) is named by its name.
        let pv = provision(&c, &class(Some("Retain")), Some("n2"), None, Path::new("/data")).unwrap();
        let v = serde_json::to_value(&pv).unwrap();
        assert_eq!(
            v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
            json!(["n2"])
        );
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    }

    #[test]
    fn what_local_path_refuses() {
        let ok = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
        let with = |extra: Value| {
            let mut spec = ok.clone();
            spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            claim(spec)
        };
        let cases = [
            (claim(ok.clone()), None, "configuration error, no node was specified"),
            (
                with(json!({"selector": {"matchLabels": {"a": "b"}}})),
                Some("n1"),
                "claim.Spec.Selector is not supported",
            ),
            (with(json!({"accessModes": ["ReadWriteMany"]})), Some("n1"), "NodePath only supports ReadWriteOnce"),
            (with(json!({"volumeMode": "Block"})), Some("n1"), "volumeMode Block is not supported"),
            (with(json!({"resources": {}})), Some("n1"), "the claim requests no storage"),
        ];
        for (c, node, want) in cases {
            let err = provision(&c, &class(None), node, None, Path::new("/d")).unwrap_err();
            assert!(err.starts_with(want), "{err}");
        }
        let err = provision(&claim(ok), &class(None), None, None, Path::new("/d")).unwrap_err();
        assert!(err.contains("WaitForFirstConsumer"), "{err}");
    }
}
