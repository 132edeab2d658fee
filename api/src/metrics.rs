//! Resource metrics (`metrics.k8s.io/v1beta1` NodeMetrics and PodMetrics), what
//! metrics-server serves and `kubectl top` and the HorizontalPodAutoscaler read.
//!
//! A node agent streams to one member only, but every member must answer. So the member that
//! holds a node's stream writes one compact record per node to the store, under
//! `/keel/metrics/nodes/<node>` (keel's own keyspace, beside the signing key, outside
//! `/registry/`), at most once per resolution interval, attached to a store lease that is
//! renewed with each record: when a node stops reporting (its agent gone, its member dead) the
//! lease runs out and the record goes with it. Any member answers a metrics request from its
//! own replica: the records are joined with the Pods or Nodes the request selects (labels,
//! fields, namespace), as metrics-server joins its scrapes with its pod and node informers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ApiError, Result};
use crate::registry::{ResourceType, Shape};
use crate::rest::{Api, ListOptions, ListResult};
use crate::storage::{Consistency, SharedStorage, prefix_end};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// Where the per-node records live.
pub const NODE_RECORDS: &str = "/keel/metrics/nodes/";
/// How long decoded records are reused between requests: a burst of requests (many HPAs,
/// `kubectl top` of every namespace) reads the records once, and a record changes only once
/// per resolution interval anyway.
const CACHE_FOR: Duration = Duration::from_secs(1);
/// The least time between two records of one node, whatever the agent sends: a misconfigured
/// agent cannot turn metrics into a write storm.
pub const MIN_RECORD_INTERVAL: Duration = Duration::from_millis(900);

/// Usage of one container. Field names are short because 5,000 nodes write these
/// continuously: every byte is replicated and kept in history until compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "c")]
    pub cpu_nanocores: u64,
    #[serde(rename = "m")]
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    #[serde(rename = "ns")]
    pub namespace: String,
    #[serde(rename = "n")]
    pub name: String,
    pub uid: String,
    #[serde(rename = "cs")]
    pub containers: Vec<ContainerRecord>,
}

/// One node's usage as its agent last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(rename = "n")]
    pub node: String,
    /// When the sample was taken, nanoseconds since the epoch.
    #[serde(rename = "t")]
    pub timestamp_unix_nanos: i64,
    /// The span the CPU rate covers.
    #[serde(rename = "w")]
    pub window_millis: i64,
    #[serde(rename = "c")]
    pub cpu_nanocores: u64,
    #[serde(rename = "m")]
    pub memory_bytes: u64,
    #[serde(rename = "p", default)]
    pub pods: Vec<PodRecord>,
}

pub fn record_key(node: &str) -> String {
    format!("{NODE_RECORDS}{node}")
}

/// The two resources, served read-only (get and list) by every member.
pub fn resource_types() -> Vec<ResourceType> {
    let base = |kind: &str, plural: &str, namespaced: bool| ResourceType {
        group: GROUP.into(),
        version: VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: String::new(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        has_status: false,
        scale: None,
        shape: Shape::Custom { schema: None, preserve_unknown: true },
        // Never written under: the objects are computed from the node records on each read.
        storage_prefix: format!("/keel/metrics/none/{plural}/"),
        printer_columns: Vec::new(),
        create_only: false,
        read_only: true,
        conversion: None,
        stats: Default::default(),
    };
    vec![base("NodeMetrics", "nodes", false), base("PodMetrics", "pods", true)]
}

/// CPU as metrics-server writes it: nanocores.
pub fn cpu_quantity(nanocores: u64) -> String {
    format!("{nanocores}n")
}

/// Memory as metrics-server writes it (a binary-SI quantity): Ki when it divides evenly.
pub fn memory_quantity(bytes: u64) -> String {
    if bytes > 0 && bytes.is_multiple_of(1024) { format!("{}Ki", bytes / 1024) } else { bytes.to_string() }
}

fn rfc3339(unix_nanos: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(unix_nanos))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// A Go duration string (`metav1.Duration` in JSON): `15s`, `1.5s`.
fn window(millis: i64) -> String {
    format!("{}s", millis as f64 / 1000.0)
}

/// Decoded records, shared between the requests of one second.
#[derive(Default)]
pub struct Cache {
    held: Mutex<Option<(Instant, Arc<Records>)>>,
}

/// Every node's record, indexed for the joins.
#[derive(Default)]
pub struct Records {
    pub nodes: HashMap<String, Arc<NodeRecord>>,
    /// (namespace, name) → (node record, index of the pod in it).
    pods: HashMap<(String, String), (Arc<NodeRecord>, usize)>,
}

impl Records {
    fn from(list: Vec<NodeRecord>) -> Records {
        let mut records = Records::default();
        for record in list {
            let record = Arc::new(record);
            for (i, pod) in record.pods.iter().enumerate() {
                records.pods.insert((pod.namespace.clone(), pod.name.clone()), (record.clone(), i));
            }
            records.nodes.insert(record.node.clone(), record);
        }
        records
    }

    /// The pod's usage, if its node reported this very pod (same uid).
    fn pod(&self, namespace: &str, name: &str, uid: &str) -> Option<(&NodeRecord, &PodRecord)> {
        let (record, i) = self.pods.get(&(namespace.to_string(), name.to_string()))?;
        let pod = record.pods.get(*i)?;
        (uid.is_empty() || pod.uid == uid).then_some((record.as_ref(), pod))
    }
}

impl Cache {
    async fn records(&self, storage: &SharedStorage) -> Result<Arc<Records>> {
        if let Some((at, records)) = self.held.lock().as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return Ok(records.clone());
        }
        // The member's own replica: metrics need no linearizable read, and any member answers.
        let page = storage.list(NODE_RECORDS, &prefix_end(NODE_RECORDS), 0, 0, Consistency::Local).await?;
        let mut list = Vec::with_capacity(page.items.len());
        for item in &page.items {
            match serde_json::from_slice::<NodeRecord>(&item.value) {
                Ok(record) => list.push(record),
                // One damaged record must not hide every other node's metrics.
                Err(e) => tracing::warn!(key = %item.key, error = %e, "a node metrics record does not decode"),
            }
        }
        let records = Arc::new(Records::from(list));
        *self.held.lock() = Some((Instant::now(), records.clone()));
        Ok(records)
    }
}

fn node_metrics(node: &Value, record: &NodeRecord) -> Value {
    let mut metadata = json!({
        "name": record.node,
        "creationTimestamp": rfc3339(record.timestamp_unix_nanos),
    });
    if let Some(labels) = node.pointer("/metadata/labels") {
        metadata["labels"] = labels.clone();
    }
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata,
        "timestamp": rfc3339(record.timestamp_unix_nanos),
        "window": window(record.window_millis),
        "usage": {"cpu": cpu_quantity(record.cpu_nanocores), "memory": memory_quantity(record.memory_bytes)},
    })
}

fn pod_metrics(pod: &Value, record: &NodeRecord, usage: &PodRecord) -> Value {
    let mut metadata = json!({
        "name": usage.name,
        "namespace": usage.namespace,
        "creationTimestamp": rfc3339(record.timestamp_unix_nanos),
    });
    if let Some(labels) = pod.pointer("/metadata/labels") {
        metadata["labels"] = labels.clone();
    }
    let containers: Vec<Value> = usage
        .containers
        .iter()
        .map(|c| {
            json!({"name": c.name, "usage": {"cpu": cpu_quantity(c.cpu_nanocores), "memory": memory_quantity(c.memory_bytes)}})
        })
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata,
        "timestamp": rfc3339(record.timestamp_unix_nanos),
        "window": window(record.window_millis),
        "containers": containers,
    })
}

fn is_pods(rt: &ResourceType) -> bool {
    rt.kind == "PodMetrics"
}

impl Api {
    /// The core resource a metrics resource is joined with (Pods or Nodes).
    fn metrics_source(&self, rt: &ResourceType) -> Result<Arc<ResourceType>> {
        let plural = if is_pods(rt) { "pods" } else { "nodes" };
        self.registry.find("", "v1", plural).ok_or_else(|| ApiError::internal(format!("core {plural} are not served")))
    }

    /// One NodeMetrics or PodMetrics; NotFound when the object exists but has no metrics yet,
    /// as metrics-server answers.
    #[tracing::instrument(level = "debug", skip(self, rt), fields(resource = %rt.plural))]
    pub async fn metrics_get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Result<Value> {
        let not_found = || ApiError::NotFound { resource: rt.qualified(), name: name.to_string() };
        let source = self.metrics_source(rt)?;
        let object = match self.get_stored(&source, namespace, name).await {
            Ok((_, object)) => object,
            Err(ApiError::NotFound { .. }) => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let records = self.metrics.records(&self.storage).await?;
        if is_pods(rt) {
            let uid = crate::object::meta_str(&object, "uid");
            let (record, usage) = records.pod(namespace.unwrap_or("default"), name, uid).ok_or_else(not_found)?;
            Ok(pod_metrics(&object, record, usage))
        } else {
            let record = records.nodes.get(name).ok_or_else(not_found)?;
            Ok(node_metrics(&object, record))
        }
    }

    /// NodeMetrics or PodMetrics of the Nodes or Pods the options select (labels and fields
    /// apply to the objects themselves); objects without metrics are left out.
    #[tracing::instrument(level = "debug", skip(self, rt, options), fields(resource = %rt.plural))]
    pub async fn metrics_list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<ListResult> {
        let source = self.metrics_source(rt)?;
        // Whole lists: the join leaves an unknown share of each page out, and kubectl top asks
        // for everything anyway.
        let options = ListOptions { limit: 0, continue_token: None, ..options.clone() };
        let objects = self.list_objects(&source, namespace, &options).await?;
        let records = self.metrics.records(&self.storage).await?;
        let mut items = Vec::new();
        for object in &objects.items {
            let name = crate::object::name(object);
            if is_pods(rt) {
                let uid = crate::object::meta_str(object, "uid");
                if let Some((record, usage)) = records.pod(crate::object::namespace(object), name, uid) {
                    items.push(pod_metrics(object, record, usage));
                }
            } else if let Some(record) = records.nodes.get(name) {
                items.push(node_metrics(object, record));
            }
        }
        Ok(ListResult { items, revision: objects.revision, continue_token: None, remaining: None })
    }
}

/// The member's side of one node's records: writes each report under the node's key on a
/// lease renewed with every write, and revokes the lease when the stream ends (the node
/// then streams elsewhere, whose member writes under a lease of its own, or is gone).
pub struct Publisher {
    storage: SharedStorage,
    key: String,
    lease: Option<i64>,
    last: Option<Instant>,
}

impl Publisher {
    pub fn new(storage: SharedStorage, node: &str) -> Publisher {
        Publisher { storage, key: record_key(node), lease: None, last: None }
    }

    /// Writes the record unless the previous one is younger than [`MIN_RECORD_INTERVAL`];
    /// returns whether it wrote.
    #[tracing::instrument(level = "debug", skip_all, fields(key = %self.key))]
    pub async fn publish(&mut self, record: &NodeRecord) -> Result<bool> {
        if self.last.is_some_and(|at| at.elapsed() < MIN_RECORD_INTERVAL) {
            return Ok(false);
        }
        let lease = match self.lease {
            Some(id) if self.storage.lease_keep_alive(id).await? => id,
            // First record of this stream, or the lease expired (the store was unreachable
            // for longer than its TTL): a new one.
            _ => {
                // A record outlives the last report by four resolution intervals, and at least
                // a minute: long enough not to flicker, short enough that a vanished node's
                // figures are not served for long.
                let ttl = (record.window_millis / 1000 * 4).max(60);
                let id = self.storage.lease_grant(ttl).await?;
                self.lease = Some(id);
                id
            }
        };
        let value =
            serde_json::to_vec(record).map_err(|e| ApiError::internal(format!("encoding node metrics: {e}")))?;
        self.storage.put_leased(&self.key, value, lease).await?;
        self.last = Some(Instant::now());
        Ok(true)
    }

    /// The stream ended: its records go now rather than when the lease runs out. A record the
    /// node's new member already wrote is on that member's lease and stays.
    pub async fn close(self) {
        if let Some(id) = self.lease
            && let Err(e) = self.storage.lease_revoke(id).await
        {
            tracing::debug!(key = %self.key, error = %e, "revoking a node metrics lease; it will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_written_as_metrics_server_writes_them() {
        assert_eq!(cpu_quantity(250_000_000), "250000000n");
        assert_eq!(memory_quantity(64 * 1024 * 1024), "65536Ki");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(memory_quantity(0), "0");
        assert_eq!(window(15_000), "15s");
        assert_eq!(window(1_500), "1.5s");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn pods_are_found_by_name_and_uid() {
        let record = NodeRecord {
            node: "n1".into(),
            timestamp_unix_nanos: 0,
            window_millis: 15_000,
            cpu_nanocores: 1,
            memory_bytes: 2,
            pods: vec![PodRecord {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u1".into(),
                containers: vec![ContainerRecord { name: "c".into(), cpu_nanocores: 5, memory_bytes: 6 }],
            }],
        };
        let encoded = serde_json::to_string(&record).unwrap();
        assert!(encoded.len() < 120, "{encoded}");
        let records = Records::from(vec![serde_json::from_str(&encoded).unwrap()]);
        assert!(records.pod("default", "web", "u1").is_some());
        // A pod recreated under the same name is not the one measured.
        assert!(records.pod("default", "web", "u2").is_none());
        let (node, usage) = records.pod("default", "web", "").unwrap();
        let metrics = pod_metrics(&json!({"metadata": {"labels": {"app": "web"}}}), node, usage);
        assert_eq!(metrics["containers"][0]["usage"]["cpu"], "5n");
        assert_eq!(metrics["metadata"]["labels"]["app"], "web");
        assert_eq!(metrics["window"], "15s");
    }
}
