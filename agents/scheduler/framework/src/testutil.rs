//! Builders for the table tests: objects from JSON literals, as the API would send them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};

use super::snapshot::Snapshot;

/// A Ready node with this allocatable, labelled with its hostname.
pub(crate) fn node(name: &str, allocatable: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": allocatable, "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap()
}

/// A Ready node with room for anything the tests ask, with extra labels.
pub(crate) fn labeled_node(name: &str, labels: Value) -> Node {
    let mut n = node(name, json!({"cpu": "4", "memory": "16Gi", "pods": "110"}));
    let extra: std::collections::BTreeMap<String, String> = serde_json::from_value(labels).unwrap();
    n.metadata.labels.get_or_insert_default().extend(extra);
    n
}

/// A pod in namespace `default` with this spec.
pub(crate) fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
}

pub(crate) fn labeled_pod(name: &str, labels: Value, spec: Value) -> Pod {
    pod(name, spec).labeled(labels)
}

pub(crate) trait PodExt: Sized {
    fn labeled(self, labels: Value) -> Pod;
    fn named(self, name: &str) -> Pod;
    fn in_namespace(self, namespace: &str) -> Pod;
    fn on(self, node: &str) -> Pod;
    fn terminating(self) -> Pod;
    fn with_priority(self, priority: i32) -> Pod;
    fn with_status(self, status: Value) -> Pod;
    fn with_spec_field(self, field: &str, value: Value) -> Pod;
}

impl PodExt for Pod {
    fn labeled(mut self, labels: Value) -> Pod {
        self.metadata.labels = Some(serde_json::from_value(labels).unwrap());
        self
    }

    fn named(mut self, name: &str) -> Pod {
        self.metadata.name = Some(name.to_string());
        self
    }

    fn in_namespace(mut self, namespace: &str) -> Pod {
        self.metadata.namespace = Some(namespace.to_string());
        self
    }

    fn on(mut self, node: &str) -> Pod {
        self.spec.get_or_insert_default().node_name = Some(node.to_string());
        self
    }

    fn terminating(mut self) -> Pod {
        self.metadata.deletion_timestamp = serde_json::from_value(json!("2024-01-01T00:00:00Z")).unwrap();
        self
    }

    fn with_priority(mut self, priority: i32) -> Pod {
        self.spec.get_or_insert_default().priority = Some(priority);
        self
    }

    fn with_status(mut self, status: Value) -> Pod {
        self.status = Some(serde_json::from_value(status).unwrap());
        self
    }

    fn with_spec_field(self, field: &str, value: Value) -> Pod {
        let mut v = serde_json::to_value(&self).unwrap();
        v["spec"][field] = value;
        serde_json::from_value(v).unwrap()
    }
}

/// A snapshot of `nodes` with each `(node name, pod)` added to that node.
pub(crate) fn snapshot_of(nodes: Vec<Node>, pods: Vec<(&str, Pod)>) -> Snapshot {
    let mut s = Snapshot::new();
    for n in nodes {
        s.upsert_node(Arc::new(n));
    }
    for (node, p) in pods {
        let index = s.index_of(node).unwrap();
        assert!(s.add_pod_to(index, Arc::new(p)));
    }
    s
}

/// A PodDisruptionBudget in `namespace` with this selector and status.
pub(crate) fn pdb(namespace: &str, selector: Value, allowed: i32, disrupted: &[&str]) -> Arc<PodDisruptionBudget> {
    let disrupted: serde_json::Map<String, Value> =
        disrupted.iter().map(|n| (n.to_string(), json!("2024-01-01T00:00:00Z"))).collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "pdb", "namespace": namespace},
            "spec": {"selector": selector},
            "status": {"disruptionsAllowed": allowed, "disruptedPods": disrupted,
                "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0},
        }))
        .unwrap(),
    )
}
