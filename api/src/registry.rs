//! The resource types the API serves: the built-in kinds, described once from their
//! k8s-openapi types, and the custom resources CRDs add at run time.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::schemars::{JsonSchema, Schema, SchemaGenerator};
use k8s_openapi::{NamespaceResourceScope, Resource};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::instrumentation::ResourceStats;

/// Decodes a body into the kind's type and encodes it again: what survives is what the kind
/// has. Errors name the offending field as serde reports it.
pub type Roundtrip = fn(&Value) -> Result<Decoded, String>;

/// What a body became on its pass through the kind's type.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Exactly the body: every field known, every value in its canonical form.
    Unchanged,
    /// The body as the type writes it: unknown fields dropped, values made canonical.
    Changed(Value),
}
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// Where to find the scale of a resource that has a `scale` subresource.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    /// JSON pointers into the object.
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

#[derive(Clone)]
pub enum Shape {
    /// A built-in kind with its k8s-openapi type.
    Typed { roundtrip: Roundtrip, schema: SchemaFn },
    /// A custom resource; its OpenAPI v3 schema (if any) validates it.
    Custom { schema: Option<Value>, preserve_unknown: bool },
}

/// One REST resource of one group version.
#[derive(Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub has_status: bool,
    pub scale: Option<ScalePaths>,
    pub shape: Shape,
    /// The key prefix every object of this resource is stored under (ends with `/`).
    pub storage_prefix: String,
    /// Columns `kubectl get` prints for a custom resource (`additionalPrinterColumns`).
    pub printer_columns: Vec<Value>,
    /// A kind that is only ever created, answered and never stored (TokenReview): its one
    /// verb is create.
    pub create_only: bool,
    /// A kind computed on every read and never written (metrics.k8s.io): get and list only.
    pub read_only: bool,
    /// A version served over another's storage: objects are converted on every read and write.
    pub conversion: Option<crate::convert::Conversion>,
    /// Requests served, for `/metrics`. The registry gives each (group, version, plural) one
    /// for good when the type is registered; until then it is a blank that is never shown.
    pub stats: Arc<crate::instrumentation::ResourceStats>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.group, self.version, self.plural)
    }
}

impl ResourceType {
    /// A stored object as this version serves it.
    pub fn served(&self, stored: Value) -> Value {
        match &self.conversion {
            Some(conversion) => conversion.from_stored(stored),
            None => stored,
        }
    }

    /// A served object as it is stored.
    pub fn stored(&self, served: Value) -> Value {
        match &self.conversion {
            Some(conversion) => conversion.to_stored(served),
            None => served,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `deployments.apps`, `pods`: how Kubernetes names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/{}", self.storage_prefix, ns, name),
            _ => format!("{}{}", self.storage_prefix, name),
        }
    }

    /// Prefix of every object in `namespace` (or of all of them).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/", self.storage_prefix, ns),
            _ => self.storage_prefix.clone(),
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            return vec!["create"];
        }
        if self.read_only {
            return vec!["get", "list"];
        }
        vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
}

fn storage_prefix(group: &str, plural: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    format!("/registry/{group}/{plural}/")
}

fn roundtrip<K: Serialize + DeserializeOwned>(value: &Value) -> Result<Decoded, String> {
    // Deserializing from a reference spares a copy of the whole object.
    let typed = K::deserialize(value).map_err(|e| e.to_string())?;
    if crate::canonical::serializes_to(&typed, value) {
        return Ok(Decoded::Unchanged);
    }
    serde_json::to_value(&typed).map(Decoded::Changed).map_err(|e| e.to_string())
}

fn schema<K: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<K>()
}

struct Extra {
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    scale: Option<ScalePaths>,
}

const NONE: Extra = Extra { short_names: &[], categories: &[], status: false, scale: None };

fn builtin<K>(extra: Extra) -> ResourceType
where
    K: Resource + Serialize + DeserializeOwned + JsonSchema + 'static,
    K::Scope: 'static,
{
    ResourceType {
        group: K::GROUP.into(),
        version: K::VERSION.into(),
        kind: K::KIND.into(),
        plural: K::URL_PATH_SEGMENT.into(),
        singular: K::KIND.to_ascii_lowercase(),
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        short_names: extra.short_names.iter().map(|s| s.to_string()).collect(),
        categories: extra.categories.iter().map(|s| s.to_string()).collect(),
        has_status: extra.status,
        scale: extra.scale,
        shape: Shape::Typed { roundtrip: roundtrip::<K>, schema: schema::<K> },
        storage_prefix: storage_prefix(K::GROUP, K::URL_PATH_SEGMENT),
        printer_columns: Vec::new(),
        create_only: false,
        read_only: false,
        conversion: None,
        stats: Arc::default(),
    }
}

fn replicas_scale() -> Option<ScalePaths> {
    Some(ScalePaths {
        spec_replicas: "/spec/replicas".into(),
        status_replicas: "/status/replicas".into(),
        label_selector: Some("/spec/selector".into()),
    })
}

/// Every built-in resource, grouped as the Kubernetes API reference groups them.
pub fn builtins() -> Vec<ResourceType> {
    use k8s_openapi::api::{
        apps::v1 as apps, authentication::v1 as authentication, autoscaling::v1 as autoscaling1,
        autoscaling::v2 as autoscaling2, batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, events::v1 as events, networking::v1 as networking, policy::v1 as policy,
        rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    const ALL: &[&str] = &["all"];
    let status = |short_names: &'static [&'static str], categories: &'static [&'static str]| Extra {
        short_names,
        categories,
        status: true,
        scale: None,
    };
    let scalable = |short_names: &'static [&'static str]| Extra {
        short_names,
        categories: ALL,
        status: true,
        scale: replicas_scale(),
    };
    let short = |short_names: &'static [&'static str]| Extra { short_names, ..NONE };
    vec![
        // workloads
        builtin::<core::Pod>(status(&["po"], ALL)),
        builtin::<core::PodTemplate>(NONE),
        builtin::<core::ReplicationController>(scalable(&["rc"])),
        builtin::<apps::ReplicaSet>(scalable(&["rs"])),
        builtin::<apps::Deployment>(scalable(&["deploy"])),
        builtin::<apps::StatefulSet>(scalable(&["sts"])),
        builtin::<apps::DaemonSet>(status(&["ds"], ALL)),
        builtin::<apps::ControllerRevision>(NONE),
        builtin::<batch::Job>(status(&[], ALL)),
        builtin::<batch::CronJob>(status(&["cj"], ALL)),
        builtin::<autoscaling2::HorizontalPodAutoscaler>(status(&["hpa"], ALL)),
        // Stored as autoscaling/v2, served as v1 through conversion.
        ResourceType {
            conversion: Some(crate::convert::Conversion::HorizontalPodAutoscalerV1),
            ..builtin::<autoscaling1::HorizontalPodAutoscaler>(status(&["hpa"], ALL))
        },
        builtin::<scheduling::PriorityClass>(short(&["pc"])),
        // discovery and load balancing
        builtin::<core::Service>(status(&["svc"], ALL)),
        builtin::<core::Endpoints>(short(&["ep"])),
        builtin::<discovery::EndpointSlice>(NONE),
        builtin::<networking::Ingress>(status(&["ing"], &[])),
        builtin::<networking::IngressClass>(NONE),
        // config and storage
        builtin::<core::ConfigMap>(short(&["cm"])),
        builtin::<core::Secret>(NONE),
        builtin::<core::PersistentVolume>(status(&["pv"], &[])),
        builtin::<core::PersistentVolumeClaim>(status(&["pvc"], &[])),
        builtin::<storage::StorageClass>(short(&["sc"])),
        builtin::<storage::CSIDriver>(NONE),
        builtin::<storage::CSINode>(NONE),
        builtin::<storage::CSIStorageCapacity>(NONE),
        builtin::<storage::VolumeAttachment>(status(&[], &[])),
        // cluster
        builtin::<core::Namespace>(status(&["ns"], &[])),
        builtin::<core::Node>(status(&["no"], &[])),
        builtin::<core::ResourceQuota>(status(&["quota"], &[])),
        builtin::<core::LimitRange>(short(&["limits"])),
        builtin::<core::ServiceAccount>(short(&["sa"])),
        ResourceType { create_only: true, ..builtin::<authentication::TokenReview>(NONE) },
        builtin::<rbac::Role>(NONE),
        builtin::<rbac::RoleBinding>(NONE),
        builtin::<rbac::ClusterRole>(NONE),
        builtin::<rbac::ClusterRoleBinding>(NONE),
        builtin::<networking::NetworkPolicy>(short(&["netpol"])),
        builtin::<coordination::Lease>(NONE),
        builtin::<core::Event>(short(&["ev"])),
        // Stored as core/v1 Events, served in events.k8s.io/v1's shape through conversion.
        ResourceType {
            storage_prefix: storage_prefix("", "events"),
            conversion: Some(crate::convert::Conversion::EventsV1),
            ..builtin::<events::Event>(short(&["ev"]))
        },
        builtin::<policy::PodDisruptionBudget>(status(&["pdb"], &[])),
        builtin::<apiextensions::CustomResourceDefinition>(status(&["crd", "crds"], &[])),
    ]
    .into_iter()
    // metrics.k8s.io, which metrics-server adds to a Kubernetes cluster, is built in.
    .chain(crate::metrics::resource_types())
    .collect()
}

/// Group versions as kube-apiserver names them in `--runtime-config` (`apps/v1`, `v1` → `api/v1`).
fn runtime_config_name(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("{group}/{version}") }
}

/// Which group versions are switched off, from `--runtime-config` entries such as
/// `batch/v1=false` or `api/all=false,api/v1=true`.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    entries: Vec<(String, bool)>,
}

impl RuntimeConfig {
    pub fn parse(spec: &str) -> Result<RuntimeConfig, String> {
        let mut entries = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = entry.split_once('=').unwrap_or((entry, "true"));
            let enabled = match value {
                "true" => true,
                "false" => false,
                other => return Err(format!("--runtime-config {entry:?}: {other:?} is neither true nor false")),
            };
            if name != "api/all" && !name.contains('/') {
                return Err(format!("--runtime-config {entry:?}: expected group/version=true|false"));
            }
            entries.push((name.to_string(), enabled));
        }
        Ok(RuntimeConfig { entries })
    }

    /// Later entries win, as in kube-apiserver; `api/all` sets the default for everything.
    pub fn enabled(&self, group: &str, version: &str) -> bool {
        let name = runtime_config_name(group, version);
        let mut enabled = true;
        for (entry, value) in &self.entries {
            if entry == "api/all" || *entry == name {
                enabled = *value;
            }
        }
        enabled
    }
}

/// Every resource served, built-in and custom. Custom resources come and go with their CRDs.
pub struct Registry {
    types: RwLock<Arc<Vec<Arc<ResourceType>>>>,
    runtime_config: RuntimeConfig,
    /// The request counts of every resource served since the start, also those whose CRD has
    /// gone since: counters do not restart when a CRD changes.
    stats: Mutex<Vec<Arc<ResourceStats>>>,
}

impl Registry {
    pub fn new(runtime_config: RuntimeConfig) -> Registry {
        let registry = Registry { types: RwLock::new(Arc::default()), runtime_config, stats: Mutex::default() };
        let types = builtins()
            .into_iter()
            .filter(|t| registry.runtime_config.enabled(&t.group, &t.version))
            .map(|t| Arc::new(registry.counted(t)))
            .collect();
        *registry.types.write() = Arc::new(types);
        registry
    }

    /// `t` with the request counts of its resource.
    fn counted(&self, mut t: ResourceType) -> ResourceType {
        let mut ledger = self.stats.lock();
        match ledger.iter().find(|s| s.is(&t.group, &t.version, &t.plural)) {
            Some(stats) => t.stats = stats.clone(),
            None => {
                t.stats = Arc::new(ResourceStats::new(&t.group, &t.version, &t.plural, &t.kind));
                ledger.push(t.stats.clone());
            }
        }
        t
    }

    /// The request counts of every resource served since the start, in a stable order.
    pub fn request_stats(&self) -> Vec<Arc<ResourceStats>> {
        self.stats.lock().clone()
    }

    pub fn all(&self) -> Arc<Vec<Arc<ResourceType>>> {
        self.types.read().clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types.read().iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    pub fn find_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types.read().iter().find(|t| t.group == group && t.version == version && t.kind == kind).cloned()
    }

    /// Group versions served, each group's in preference order (first is preferred).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.read().iter() {
            let versions = groups.entry(t.group.clone()).or_default();
            if !versions.contains(&t.version) {
                versions.push(t.version.clone());
            }
        }
        for versions in groups.values_mut() {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        groups
    }

    /// Replaces the custom resources of `crd_name` with `types` (none: the CRD is gone).
    pub fn set_custom(&self, crd_name: &str, types: Vec<ResourceType>) {
        let mut guard = self.types.write();
        let mut next: Vec<Arc<ResourceType>> = guard
            .iter()
            .filter(|t| {
                !(matches!(t.shape, Shape::Custom { .. })
                    && !t.read_only
                    && format!("{}.{}", t.plural, t.group) == crd_name)
            })
            .cloned()
            .collect();
        next.extend(
            types
                .into_iter()
                .filter(|t| self.runtime_config.enabled(&t.group, &t.version))
                .map(|t| Arc::new(self.counted(t))),
        );
        *guard = Arc::new(next);
    }
}

/// Kubernetes version ordering: GA above beta above alpha, higher numbers first.
pub fn version_priority(version: &str) -> (u8, u32, u32) {
    let rest = version.strip_prefix('v').unwrap_or(version);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}

pub fn custom_storage_prefix(group: &str, plural: &str) -> String {
    storage_prefix(group, plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pod as a create leaves it (defaulted, server fields set) takes the cheap path: the
    /// body is kept rather than rebuilt. If this stops holding, creates still work but cost
    /// the full decode-encode-compare again.
    #[test]
    fn a_typical_defaulted_pod_is_already_canonical() {
        let pods = builtins().into_iter().find(|rt| rt.group.is_empty() && rt.plural == "pods").expect("pods");
        let Shape::Typed { roundtrip, .. } = pods.shape else { panic!("pods are typed") };
        let mut pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"},
                "uid": "8d4f3c1e-2b7a-4c5d-9e6f-0a1b2c3d4e5f", "generation": 1,
                "creationTimestamp": crate::object::now_rfc3339()},
            "spec": {"containers": [{"name": "app", "image": "registry.local/app:1.2.3",
                "command": ["/app/server"], "args": ["--port=8080"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}],
                "volumes": [{"name": "config", "configMap": {"name": "app-config"}}]},
            "status": {"phase": "Pending", "qosClass": "Burstable"}
        });
        crate::defaults::apply("Pod", "", &mut pod);
        assert_eq!(roundtrip(&pod), Ok(Decoded::Unchanged));
        pod["spec"]["bogus"] = serde_json::json!(1);
        let Ok(Decoded::Changed(decoded)) = roundtrip(&pod) else { panic!("an unknown field changes the body") };
        assert!(decoded["spec"].get("bogus").is_none());
    }

    #[test]
    fn builtins_are_described_from_their_types() {
        let types = builtins();
        let pods = types.iter().find(|t| t.plural == "pods").unwrap();
        assert!(pods.namespaced);
        assert_eq!(pods.kind, "Pod");
        assert_eq!(pods.storage_prefix, "/registry/core/pods/");
        let nodes = types.iter().find(|t| t.plural == "nodes").unwrap();
        assert!(!nodes.namespaced);
        let deploy = types.iter().find(|t| t.plural == "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.key(Some("ns1"), "web"), "/registry/apps/deployments/ns1/web");
    }

    #[test]
    fn runtime_config_switches_groups() {
        let rc = RuntimeConfig::parse("batch/v1=false").unwrap();
        assert!(!rc.enabled("batch", "v1"));
        assert!(rc.enabled("apps", "v1"));
        let rc = RuntimeConfig::parse("api/all=false,api/v1=true").unwrap();
        assert!(rc.enabled("", "v1"));
        assert!(!rc.enabled("apps", "v1"));
        assert!(RuntimeConfig::parse("batch/v1=maybe").is_err());
        let registry = Registry::new(RuntimeConfig::parse("batch/v1=false").unwrap());
        assert!(registry.find("batch", "v1", "jobs").is_none());
        assert!(registry.find("apps", "v1", "deployments").is_some());
    }

    #[test]
    fn versions_sort_as_kubernetes_does() {
        let mut v = vec!["v1beta1", "v2", "v1", "v1alpha1", "v2beta2"];
        v.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(v, vec!["v2", "v1", "v2beta2", "v1beta1", "v1alpha1"]);
    }
}
