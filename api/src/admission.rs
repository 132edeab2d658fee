//! The admission chain: mutating plugins in order, then validation of the object, then
//! validating plugins. Plugins are in-process; later ones (quota, limits, pod security, node
//! restriction) join the chain here.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::error::{ApiError, Result};
use crate::registry::ResourceType;
use crate::storage::{Consistency, SharedStorage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

pub struct Attributes<'a> {
    pub operation: Operation,
    pub resource: &'a ResourceType,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub subresource: Option<&'a str>,
    /// The object as stored, for updates and deletes.
    pub old: Option<&'a Value>,
    /// Namespaces created in the same atomic write as this object.
    pub batch: &'a [String],
}

pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    fn mutate(&self, _attributes: &Attributes<'_>, _object: &mut Value) -> Result<()> {
        Ok(())
    }

    /// A mutation that has to read the store (after `mutate`).
    fn resolve<'a>(&'a self, _attributes: &'a Attributes<'a>, _object: &'a mut Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn validate<'a>(&'a self, _attributes: &'a Attributes<'a>, _object: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

pub struct Chain {
    plugins: Vec<Box<dyn Plugin>>,
}

impl Chain {
    /// The default chain: NamespaceLifecycle, ServiceAccount, Priority,
    /// DefaultTolerationSeconds, DefaultStorageClass, defaulting, LimitRanger, ResourceQuota.
    pub fn standard(storage: SharedStorage, registry: std::sync::Arc<crate::registry::Registry>) -> Chain {
        Chain {
            plugins: vec![
                Box::new(NamespaceLifecycle { storage: storage.clone() }),
                Box::new(ServiceAccount { storage: storage.clone() }),
                Box::new(Priority { storage: storage.clone() }),
                Box::new(DefaultTolerationSeconds),
                Box::new(DefaultStorageClass { storage: storage.clone() }),
                Box::new(Defaulting),
                Box::new(crate::limitrange::LimitRanger { storage: storage.clone() }),
                Box::new(ResourceQuota { storage, registry, without_quotas: Default::default() }),
            ],
        }
    }

    pub async fn mutate(&self, attributes: &Attributes<'_>, object: &mut Value) -> Result<()> {
        for plugin in &self.plugins {
            plugin.mutate(attributes, object)?;
            plugin.resolve(attributes, object).await?;
        }
        Ok(())
    }

    pub async fn validate(&self, attributes: &Attributes<'_>, object: &Value) -> Result<()> {
        for plugin in &self.plugins {
            plugin.validate(attributes, object).await?;
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }
}

/// The key prefixes admission reads on every create, which each member should keep in
/// memory (`keel_store::Store::mirror`), as kube-apiserver reads them from its informers:
/// namespaces, service accounts, priority and storage classes, limit ranges and quotas. All
/// are small next to the objects they admit.
pub const LOOKUP_PREFIXES: &[&str] = &[
    "/registry/core/namespaces/",
    "/registry/core/serviceaccounts/",
    "/registry/core/limitranges/",
    "/registry/core/resourcequotas/",
    "/registry/scheduling.k8s.io/priorityclasses/",
    "/registry/storage.k8s.io/storageclasses/",
];

/// Namespaces that always exist and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// New objects only in namespaces that exist and are not terminating; the system namespaces
/// cannot be deleted.
pub struct NamespaceLifecycle {
    storage: SharedStorage,
}

fn namespace_key(name: &str) -> String {
    format!("/registry/core/namespaces/{name}")
}

#[derive(serde::Deserialize)]
struct NamespaceLife {
    #[serde(default)]
    metadata: Option<NamespaceLifeMeta>,
}

#[derive(serde::Deserialize)]
struct NamespaceLifeMeta {
    #[serde(rename = "deletionTimestamp", default)]
    deletion_timestamp: Option<serde::de::IgnoredAny>,
}

impl Plugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn validate<'a>(&'a self, a: &'a Attributes<'a>, _object: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if a.resource.group.is_empty() && a.resource.kind == "Namespace" && a.operation == Operation::Delete {
                if SYSTEM_NAMESPACES.contains(&a.name) {
                    return Err(ApiError::Forbidden {
                        resource: "namespaces".into(),
                        name: a.name.into(),
                        message: format!("namespaces \"{}\" is forbidden: this namespace may not be deleted", a.name),
                    });
                }
                return Ok(());
            }
            let (Some(namespace), Operation::Create) = (a.namespace, a.operation) else {
                return Ok(());
            };
            if !a.resource.namespaced {
                return Ok(());
            }
            if a.batch.iter().any(|n| n == namespace) {
                return Ok(());
            }
            // A namespace just created elsewhere may not have reached this member yet.
            let (mut found, _) = self.storage.get(&namespace_key(namespace), Consistency::Local).await?;
            if found.is_none() {
                found = self.storage.get(&namespace_key(namespace), Consistency::Linearizable).await?.0;
            }
            let Some(found) = found else {
                return Err(ApiError::NotFound { resource: "namespaces".into(), name: namespace.into() });
            };
            // Only whether it is terminating matters: the rest of the namespace is skipped,
            // not built, on every create.
            let ns: NamespaceLife = serde_json::from_slice(&found.value)
                .map_err(|e| ApiError::internal(format!("namespace {namespace} is not JSON: {e}")))?;
            if ns.metadata.is_some_and(|m| m.deletion_timestamp.is_some()) {
                return Err(ApiError::Forbidden {
                    resource: a.resource.plural.clone(),
                    name: a.name.into(),
                    message: format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        a.resource.plural, a.name
                    ),
                });
            }
            Ok(())
        })
    }
}

/// Pods run as a service account: `default` unless they name one, and it must exist.
pub struct ServiceAccount {
    storage: SharedStorage,
}

fn is_pod(a: &Attributes<'_>) -> bool {
    a.resource.group.is_empty() && a.resource.kind == "Pod" && a.subresource.is_none()
}

impl Plugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    fn mutate(&self, a: &Attributes<'_>, object: &mut Value) -> Result<()> {
        if !is_pod(a) || a.operation != Operation::Create {
            return Ok(());
        }
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            let account = spec.get("serviceAccountName").and_then(Value::as_str).unwrap_or("").to_string();
            let account = if account.is_empty() {
                spec.get("serviceAccount").and_then(Value::as_str).unwrap_or("default").to_string()
            } else {
                account
            };
            spec.insert("serviceAccountName".into(), json!(account));
            spec.insert("serviceAccount".into(), json!(account));
        }
        Ok(())
    }

    fn validate<'a>(&'a self, a: &'a Attributes<'a>, object: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if !is_pod(a) || a.operation != Operation::Create {
                return Ok(());
            }
            let namespace = a.namespace.unwrap_or("default");
            let account = object.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
            // A namespace created in the same atomic write brings its default account along.
            if account == "default" && a.batch.iter().any(|n| n == namespace) {
                return Ok(());
            }
            let key = format!("/registry/core/serviceaccounts/{namespace}/{account}");
            let (mut found, _) = self.storage.get(&key, Consistency::Local).await?;
            if found.is_none() {
                found = self.storage.get(&key, Consistency::Linearizable).await?.0;
            }
            if found.is_none() {
                return Err(ApiError::Forbidden {
                    resource: "pods".into(),
                    name: a.name.into(),
                    message: format!(
                        "pods \"{}\" is forbidden: error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found",
                        a.name
                    ),
                });
            }
            Ok(())
        })
    }
}

/// The priority classes every cluster has, as kube-apiserver creates them.
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64)] =
    &[("system-node-critical", 2_000_001_000), ("system-cluster-critical", 2_000_000_000)];

/// Pods get `spec.priority` (and `preemptionPolicy`) from their PriorityClass, or from the
/// global default class, or 0; an unknown class is refused, as kube-apiserver's Priority
/// plugin does.
pub struct Priority {
    storage: SharedStorage,
}

impl Priority {
    async fn class(&self, name: &str) -> Result<Option<Value>> {
        let key = format!("/registry/scheduling.k8s.io/priorityclasses/{name}");
        let (found, _) = self.storage.get(&key, Consistency::Local).await?;
        found
            .map(|f| {
                serde_json::from_slice(&f.value).map_err(|e| ApiError::internal(format!("{key} is not JSON: {e}")))
            })
            .transpose()
    }

    async fn global_default(&self) -> Result<Option<Value>> {
        let prefix = "/registry/scheduling.k8s.io/priorityclasses/";
        let page = self.storage.list(prefix, &crate::storage::prefix_end(prefix), 0, 0, Consistency::Local).await?;
        for item in page.items {
            let class: Value = serde_json::from_slice(&item.value)
                .map_err(|e| ApiError::internal(format!("{} is not JSON: {e}", item.key)))?;
            if class.get("globalDefault").and_then(Value::as_bool) == Some(true) {
                return Ok(Some(class));
            }
        }
        Ok(None)
    }
}

impl Plugin for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    fn resolve<'a>(&'a self, a: &'a Attributes<'a>, object: &'a mut Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if !is_pod(a) || a.operation != Operation::Create {
                return Ok(());
            }
            let name = object.pointer("/spec/priorityClassName").and_then(Value::as_str).unwrap_or("").to_string();
            let forbidden = |message: String| ApiError::Forbidden {
                resource: "pods".into(),
                name: a.name.into(),
                message: format!("pods \"{}\" is forbidden: {message}", a.name),
            };
            let (value, policy, class_name) = if name.is_empty() {
                match self.global_default().await? {
                    Some(class) => (
                        class.get("value").and_then(Value::as_i64).unwrap_or(0),
                        class.get("preemptionPolicy").cloned(),
                        Some(crate::object::name(&class).to_string()),
                    ),
                    None => (0, None, None),
                }
            } else if let Some((_, value)) = SYSTEM_PRIORITY_CLASSES.iter().find(|(n, _)| *n == name) {
                (*value, None, None)
            } else {
                match self.class(&name).await? {
                    Some(class) => (
                        class.get("value").and_then(Value::as_i64).unwrap_or(0),
                        class.get("preemptionPolicy").cloned(),
                        None,
                    ),
                    None => return Err(forbidden(format!("no PriorityClass with name {name} was found"))),
                }
            };
            let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
            if let Some(given) = spec.get("priority").and_then(Value::as_i64)
                && given != value
            {
                return Err(forbidden(format!(
                    "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                )));
            }
            spec.insert("priority".into(), json!(value));
            if let Some(class_name) = class_name {
                spec.insert("priorityClassName".into(), json!(class_name));
            }
            if !spec.contains_key("preemptionPolicy") {
                spec.insert("preemptionPolicy".into(), policy.unwrap_or_else(|| json!("PreemptLowerPriority")));
            }
            Ok(())
        })
    }
}

/// Every pod tolerates the not-ready and unreachable NoExecute taints for 300 s unless it says
/// otherwise, so a short node hiccup does not evict it (kube-apiserver's plugin of that name).
pub struct DefaultTolerationSeconds;

pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

impl Plugin for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    fn mutate(&self, a: &Attributes<'_>, object: &mut Value) -> Result<()> {
        if !is_pod(a) || a.operation != Operation::Create {
            return Ok(());
        }
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        let Some(list) = tolerations.as_array_mut() else { return Ok(()) };
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            let covered = list.iter().any(|t| {
                let t_key = t.get("key").and_then(Value::as_str).unwrap_or("");
                let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
                (t_key == key || (t_key.is_empty() && exists)) && (effect.is_empty() || effect == "NoExecute")
            });
            if !covered {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}));
            }
        }
        Ok(())
    }
}

/// The annotation that makes a StorageClass the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const DEFAULT_CLASS_ANNOTATION_BETA: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// A PersistentVolumeClaim created without a class gets the default StorageClass (the one
/// annotated `storageclass.kubernetes.io/is-default-class: "true"`, the newest if several
/// are), as kube-apiserver's DefaultStorageClass plugin does. Without one it is left
/// without a class. A claim that says `storageClassName: ""` asked for no class and keeps it.
pub struct DefaultStorageClass {
    storage: SharedStorage,
}

impl DefaultStorageClass {
    async fn default_class(&self) -> Result<Option<String>> {
        let prefix = "/registry/storage.k8s.io/storageclasses/";
        let page = self.storage.list(prefix, &crate::storage::prefix_end(prefix), 0, 0, Consistency::Local).await?;
        // (creationTimestamp, name) of the newest default; ties go to the first name.
        let mut newest: Option<(String, String)> = None;
        for item in page.items {
            let class: Value = serde_json::from_slice(&item.value)
                .map_err(|e| ApiError::internal(format!("{} is not JSON: {e}", item.key)))?;
            let annotations = class.pointer("/metadata/annotations");
            let is_default = [DEFAULT_CLASS_ANNOTATION, DEFAULT_CLASS_ANNOTATION_BETA]
                .iter()
                .any(|key| annotations.and_then(|a| a.get(*key)).and_then(Value::as_str) == Some("true"));
            if !is_default {
                continue;
            }
            let created = crate::object::meta_str(&class, "creationTimestamp").to_string();
            let name = crate::object::name(&class).to_string();
            let newer = match &newest {
                None => true,
                Some((t, n)) => created > *t || (created == *t && name < *n),
            };
            if newer {
                newest = Some((created, name));
            }
        }
        Ok(newest.map(|(_, name)| name))
    }
}

impl Plugin for DefaultStorageClass {
    fn name(&self) -> &'static str {
        "DefaultStorageClass"
    }

    fn resolve<'a>(&'a self, a: &'a Attributes<'a>, object: &'a mut Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let is_claim = a.resource.group.is_empty() && a.resource.kind == "PersistentVolumeClaim";
            if !is_claim || a.subresource.is_some() || a.operation != Operation::Create {
                return Ok(());
            }
            let has_class = object.pointer("/spec/storageClassName").is_some_and(|c| !c.is_null())
                || object.pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class").is_some();
            if has_class {
                return Ok(());
            }
            let Some(class) = self.default_class().await? else { return Ok(()) };
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("storageClassName".into(), json!(class));
            }
            Ok(())
        })
    }
}

/// Defaults as kube-apiserver sets them ([`crate::defaults`]).
pub struct Defaulting;

impl Plugin for Defaulting {
    fn name(&self) -> &'static str {
        "Defaulting"
    }

    fn mutate(&self, a: &Attributes<'_>, object: &mut Value) -> Result<()> {
        if a.operation != Operation::Delete {
            crate::defaults::apply(&a.resource.kind, &a.resource.group, object);
        }
        Ok(())
    }
}

/// Refuses a new object that would take its namespace over a ResourceQuota's `hard` limit.
/// As in kube-apiserver, admitting an object charges it to the quota's `status.used` in a
/// write conditional on the quota's revision, so concurrent creations (on any member) are
/// serialized through the quota and cannot both take the last unit; the controller
/// recomputes `status.used` from the objects, which returns charges for creations that then
/// failed.
pub struct ResourceQuota {
    storage: SharedStorage,
    registry: std::sync::Arc<crate::registry::Registry>,
    /// Namespaces a quorum read found without quotas, and until when that answer is used.
    without_quotas: parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How long a quorum read's "no quotas here" stands (kube's quota admission keeps its live
/// lookup for the same 30 s).
const NO_QUOTA_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Attempts at charging a quota whose status keeps changing underneath.
const QUOTA_RETRIES: usize = 16;

impl ResourceQuota {
    /// Checks one quota and charges it; `Ok(false)` when it changed meanwhile (retry).
    async fn charge(
        &self,
        a: &Attributes<'_>,
        namespace: &str,
        item: &crate::storage::Stored,
        object: &Value,
        adds: &crate::quota::Usage,
        is_pod: bool,
    ) -> Result<bool> {
        let forbidden = |message: String| ApiError::Forbidden {
            resource: a.resource.plural.clone(),
            name: a.name.into(),
            message: format!("{} \"{}\" is forbidden: {message}", a.resource.plural, a.name),
        };
        let mut quota: Value = serde_json::from_slice(&item.value)
            .map_err(|e| ApiError::internal(format!("{} is not JSON: {e}", item.key)))?;
        let scopes = crate::quota::Scopes::of(&quota);
        if !scopes.matches(a.resource, object) {
            return Ok(true);
        }
        let quota_name = crate::object::name(&quota).to_string();
        let hard = crate::quota::hard(&quota);
        // A quota on pod compute resources needs every pod to say what it asks for.
        if is_pod {
            let missing: Vec<&str> = hard
                .keys()
                .filter(|k| k.starts_with("requests.") || k.starts_with("limits.") || *k == "cpu" || *k == "memory")
                .filter(|k| adds.get(*k).copied().unwrap_or(0) == 0)
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(forbidden(format!("failed quota: {quota_name}: must specify {}", missing.join(","))));
            }
        }
        let touched: Vec<String> = hard.keys().filter(|k| adds.get(*k).is_some_and(|v| *v > 0)).cloned().collect();
        if touched.is_empty() {
            return Ok(true);
        }
        // What the quota has charged so far; counted from the objects when it never has.
        let recorded = crate::quota::used(&quota);
        let used = if touched.iter().all(|k| recorded.contains_key(k)) {
            recorded
        } else {
            crate::quota::usage(&self.storage, &self.registry.all(), namespace, &touched, &scopes).await?
        };
        let over: Vec<&String> = touched.iter().filter(|k| used[*k] + adds[*k] > hard[*k]).collect();
        if !over.is_empty() {
            let list = |f: &dyn Fn(&String) -> i128| {
                over.iter().map(|k| format!("{k}={}", crate::quota::format(k, f(k)))).collect::<Vec<_>>().join(",")
            };
            return Err(forbidden(format!(
                "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                list(&|k| adds[k]),
                list(&|k| used[k]),
                list(&|k| hard[k]),
            )));
        }
        let status = quota.as_object_mut().map(|q| q.entry("status").or_insert_with(|| json!({})));
        if let Some(status) = status {
            status["hard"] = quota_hard_copy(&item.value);
            if !status.get("used").is_some_and(Value::is_object) {
                status["used"] = json!({});
            }
            for key in &touched {
                status["used"][key] = json!(crate::quota::format(key, used[key] + adds[key]));
            }
        }
        let mut stored = quota;
        crate::object::meta_mut(&mut stored).remove("resourceVersion");
        let value = serde_json::to_vec(&stored).map_err(|e| ApiError::internal(format!("encode quota: {e}")))?;
        let op = crate::storage::WriteOp::Put {
            key: item.key.clone(),
            value,
            precondition: crate::storage::Precondition::Revision(item.mod_revision),
        };
        Ok(matches!(self.storage.write(vec![op]).await?, crate::storage::WriteOutcome::Applied { .. }))
    }
}

fn quota_hard_copy(raw: &[u8]) -> Value {
    serde_json::from_slice::<Value>(raw).ok().and_then(|q| q.pointer("/spec/hard").cloned()).unwrap_or(json!({}))
}

impl Plugin for ResourceQuota {
    fn name(&self) -> &'static str {
        "ResourceQuota"
    }

    fn validate<'a>(&'a self, a: &'a Attributes<'a>, object: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (Some(namespace), Operation::Create, None) = (a.namespace, a.operation, a.subresource) else {
                return Ok(());
            };
            if !a.resource.namespaced {
                return Ok(());
            }
            let prefix = format!("/registry/core/resourcequotas/{namespace}/");
            let end = crate::storage::prefix_end(&prefix);
            // Most namespaces have no quota. This member's replica says so without a round
            // to the leader (kube looks at its informer the same way); "none" is then made
            // sure of once by a linearizable read and believed for a while, as kube keeps its
            // live lookup. Where quotas exist they are read linearizably and charged as ever,
            // so a stale copy never refuses a create or charges a quota twice.
            let replica = self.storage.list(&prefix, &end, 0, 0, Consistency::Local).await?;
            if replica.items.is_empty()
                && self.without_quotas.lock().get(namespace).is_some_and(|until| *until > std::time::Instant::now())
            {
                return Ok(());
            }
            let is_pod = a.resource.group.is_empty() && a.resource.kind == "Pod";
            let mut adds = None;
            for _ in 0..QUOTA_RETRIES {
                // Linearizable: a charge another member just made must be seen.
                let quotas = self.storage.list(&prefix, &end, 0, 0, Consistency::Linearizable).await?;
                if quotas.items.is_empty() {
                    let now = std::time::Instant::now();
                    let mut without = self.without_quotas.lock();
                    if without.len() >= 4096 {
                        without.retain(|_, until| *until > now);
                    }
                    without.insert(namespace.to_string(), now + NO_QUOTA_TTL);
                    return Ok(());
                }
                // Worked out only now: for a Pod it means decoding the whole object, and most
                // creates end above, in a namespace without quotas.
                let adds = adds.get_or_insert_with(|| crate::quota::contribution(a.resource, object));
                let mut all_charged = true;
                for item in &quotas.items {
                    if !self.charge(a, namespace, item, object, adds, is_pod).await? {
                        all_charged = false;
                        break;
                    }
                }
                if all_charged {
                    return Ok(());
                }
            }
            Err(ApiError::Conflict {
                resource: a.resource.plural.clone(),
                name: a.name.into(),
                message: format!(
                    "Operation cannot be fulfilled on resourcequotas in {namespace}: the quota kept changing; try again"
                ),
            })
        })
    }
}
