//! The verbs of the Kubernetes API over the store: get, list, watch, create, update, patch,
//! delete and deletecollection, with their preconditions checked inside the store's
//! transaction. HTTP framing lives in [`crate::server`]; this module knows objects only.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::admission::{Attributes, Chain, Operation};
use crate::error::{ApiError, FieldCause, Result};
use crate::object;
use crate::patch::{self, PatchType};
use crate::registry::{Registry, ResourceType, Shape};
use crate::selector::{FieldSelector, LabelSelector};
use crate::service_alloc::{Allocation, ServiceRanges};
use crate::storage::{ChangeKind, Consistency, Precondition, SharedStorage, Stored, WriteOp, WriteOutcome, prefix_end};

/// How long a watch idles before a bookmark tells the client how far it is.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
/// A watch without `timeoutSeconds` ends after this (clients re-establish it).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Times a patch is retried against a newer version after a concurrent write.
const PATCH_RETRIES: usize = 8;

pub struct Api {
    pub storage: SharedStorage,
    pub registry: Arc<Registry>,
    pub admission: Chain,
    pub fanout: Arc<crate::fanout::Fanout>,
    /// ServiceAccount token settings and the cached signing key (`crate::tokens`).
    pub tokens: crate::tokens::Tokens,
    /// How `pods/log`, `exec` and `attach` reach node agents (`crate::podstream`).
    pub tunnels: crate::podstream::Tunnels,
    /// Decoded node metrics records (`crate::metrics`).
    pub metrics: crate::metrics::Cache,
    /// Where Services' cluster IPs and node ports come from (`crate::service_alloc`).
    pub service_ranges: ServiceRanges,
    /// What `/metrics` reports besides each resource's request counts
    /// (`crate::instrumentation`).
    pub instrumentation: crate::instrumentation::Instrumentation,
}

fn is_service(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.kind == "Service"
}

/// Attempts at a Service creation whose randomly picked address or port another creation
/// took first.
const ALLOCATION_RETRIES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    Warn,
    #[default]
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<FieldValidation> {
        match value.unwrap_or("") {
            "Strict" => Ok(FieldValidation::Strict),
            "Warn" | "" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub field_manager: Option<String>,
    pub force: bool,
    /// Set by server-side apply, which writes `managedFields` itself: the write is not also
    /// tracked as an update.
    pub applying: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: i64,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

#[derive(Debug)]
pub struct ListResult<T = Value> {
    pub items: Vec<T>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

impl<T> ListResult<T> {
    pub fn list_meta(&self) -> Value {
        let mut meta = json!({"resourceVersion": self.revision.to_string()});
        if let Some(token) = &self.continue_token {
            meta["continue"] = json!(token);
        }
        if let Some(remaining) = self.remaining {
            meta["remainingItemCount"] = json!(remaining);
        }
        meta
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// From a `DeleteOptions` body (which may be empty) and the query's overrides.
    pub fn from_body(body: Option<&Value>) -> DeleteOptions {
        let body = body.cloned().unwrap_or(Value::Null);
        let propagation =
            body.get("propagationPolicy").and_then(Value::as_str).map(String::from).or_else(|| {
                match body.get("orphanDependents").and_then(Value::as_bool) {
                    Some(true) => Some("Orphan".into()),
                    Some(false) => Some("Background".into()),
                    None => None,
                }
            });
        DeleteOptions {
            grace_period_seconds: body.get("gracePeriodSeconds").and_then(Value::as_i64),
            propagation_policy: propagation,
            precondition_uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(String::from),
            precondition_resource_version: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from),
            dry_run: body.get("dryRun").and_then(Value::as_array).is_some_and(|a| !a.is_empty()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub list: ListOptions,
    pub allow_bookmarks: bool,
    pub send_initial_events: Option<bool>,
    pub timeout: Option<Duration>,
}

/// A watch event: `{"type": "ADDED", "object": {...}}` as a value, or — when no selector
/// needs the object decoded — its type and the stored JSON with the revision spliced in, so
/// a change fanned out to many watches is never decoded and encoded once per watch.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Decoded(Value),
    Raw { kind: &'static str, object: Vec<u8> },
}

impl WatchEvent {
    pub fn kind(&self) -> &str {
        match self {
            WatchEvent::Decoded(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
            WatchEvent::Raw { kind, .. } => kind,
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            WatchEvent::Decoded(v) => v,
            WatchEvent::Raw { kind, object } => {
                json!({"type": kind, "object": serde_json::from_slice::<Value>(&object).unwrap_or(Value::Null)})
            }
        }
    }

    /// The event's object as JSON bytes.
    pub fn object_bytes(&self) -> Vec<u8> {
        match self {
            WatchEvent::Decoded(v) => {
                v.get("object").map(|o| serde_json::to_vec(o).unwrap_or_default()).unwrap_or_default()
            }
            WatchEvent::Raw { object, .. } => object.clone(),
        }
    }

    /// One line of a watch response.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = match self {
            WatchEvent::Decoded(v) => serde_json::to_vec(v).unwrap_or_default(),
            WatchEvent::Raw { kind, object } => {
                let mut line = Vec::with_capacity(object.len() + 32);
                line.extend_from_slice(br#"{"type":""#);
                line.extend_from_slice(kind.as_bytes());
                line.extend_from_slice(br#"","object":"#);
                line.extend_from_slice(object);
                line.push(b'}');
                line
            }
        };
        line.push(b'\n');
        line
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

fn encode_continue(revision: i64, start: &str) -> String {
    let token = ContinueToken { v: "meta.k8s.io/v1".into(), rv: revision, start: start.into() };
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode_continue(token: &str, prefix: &str) -> Result<ContinueToken> {
    let bad =
        || ApiError::bad_request("continue key is not valid: the token was not issued by this server for this list");
    let bytes = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.v != "meta.k8s.io/v1" || !token.start.starts_with(prefix) || token.rv <= 0 {
        return Err(bad());
    }
    Ok(token)
}

/// A new Job selects its own pods by its uid, as kube-apiserver arranges it (unless the
/// user asked for `manualSelector`): the selector and the template's labels are set here.
fn job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = object::meta_str(job, "uid").to_string();
    let name = object::name(job).to_string();
    let Some(spec) = job.get_mut("spec").and_then(Value::as_object_mut) else { return };
    spec.insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    if !template["metadata"].get("labels").is_some_and(Value::is_object) {
        template["metadata"]["labels"] = json!({});
    }
    let labels = &mut template["metadata"]["labels"];
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[key] = json!(value);
    }
}

/// Decodes a stored object and stamps it with its revision.
pub fn decode(stored: &Stored) -> Result<Value> {
    decode_bytes(&stored.value, stored.mod_revision, &stored.key)
}

fn decode_bytes(bytes: &[u8], revision: i64, key: &str) -> Result<Value> {
    let mut value: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("object at {key} is not JSON: {e}")))?;
    object::meta_mut(&mut value).insert("resourceVersion".into(), json!(revision.to_string()));
    Ok(value)
}

/// Decodes a stored object as `rt` serves it (converted when `rt` is a view over another
/// version's storage).
pub fn decode_as(rt: &ResourceType, stored: &Stored) -> Result<Value> {
    Ok(rt.served(decode(stored)?))
}

fn encode(rt: &ResourceType, object: &Value) -> Result<Vec<u8>> {
    let encoded = match &rt.conversion {
        Some(_) => serde_json::to_vec(&WithoutResourceVersion(&rt.stored(object.clone()))),
        // Written straight from the served object: a copy of it would cost more than the
        // encoding.
        None => serde_json::to_vec(&WithoutResourceVersion(object)),
    };
    encoded.map_err(|e| ApiError::internal(format!("encode object: {e}")))
}

/// An object as stored: the revision of the record is its resourceVersion, so none is kept
/// inside it.
struct WithoutResourceVersion<'a>(&'a Value);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(fields) = self.0 else { return self.0.serialize(serializer) };
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (key, value) in fields {
            match value {
                Value::Object(meta) if key == "metadata" => {
                    map.serialize_entry(key, &MetadataWithoutResourceVersion(meta))?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

struct MetadataWithoutResourceVersion<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for MetadataWithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let kept = self.0.iter().filter(|(key, _)| key.as_str() != "resourceVersion");
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in kept {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn name_rule(rt: &ResourceType) -> fn(&str) -> Result<(), String> {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => object::dns1123_label,
        ("", "Service") => object::dns1035_label,
        ("rbac.authorization.k8s.io", _) => object::path_segment_name,
        _ => object::dns1123_subdomain,
    }
}

/// Checks that a kind needs beyond its schema: the ones clients most often get wrong.
fn kind_causes(rt: &ResourceType, o: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let mut containers = |pointer: &str, field: &str| match o.pointer(pointer).and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            for (i, c) in list.iter().enumerate() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    causes.push(FieldCause::required(format!("{field}[{i}].name")));
                } else if let Err(e) = object::dns1123_label(name) {
                    causes.push(FieldCause::invalid(
                        format!("{field}[{i}].name"),
                        format!("Invalid value: {name:?}: {e}"),
                    ));
                }
                if c.get("image").and_then(Value::as_str).unwrap_or("").trim().is_empty() {
                    causes.push(FieldCause::required(format!("{field}[{i}].image")));
                }
            }
        }
        _ => causes.push(FieldCause::required(field)),
    };
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => {
            containers("/spec/containers", "spec.containers");
            causes.extend(request_over_limit_causes(o));
        }
        ("", "LimitRange") => causes.extend(crate::limitrange::validation_causes(o)),
        ("", "ResourceQuota") => causes.extend(crate::quota::scope_causes(o)),
        ("", "PodTemplate") => containers("/template/spec/containers", "template.spec.containers"),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            containers("/spec/template/spec/containers", "spec.template.spec.containers");
            match o.pointer("/spec/selector") {
                None | Some(Value::Null) => causes.push(FieldCause::required("spec.selector")),
                Some(selector) => match LabelSelector::from_object(selector) {
                    Err(e) => causes.push(FieldCause::invalid("spec.selector", e)),
                    Ok(s) if s.is_empty() => causes.push(FieldCause::invalid(
                        "spec.selector",
                        "Invalid value: empty selector is invalid for deployment",
                    )),
                    Ok(s) => {
                        let labels = o.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
                        if !s.matches(labels) {
                            causes.push(FieldCause::invalid(
                                "spec.template.metadata.labels",
                                format!(
                                    "Invalid value: {}: `selector` does not match template `labels`",
                                    json!(labels)
                                ),
                            ));
                        }
                    }
                },
            }
            if let Some(replicas) = o.pointer("/spec/replicas").and_then(Value::as_i64)
                && replicas < 0
            {
                causes.push(FieldCause::invalid(
                    "spec.replicas",
                    format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                ));
            }
        }
        ("batch", "Job") => {
            containers("/spec/template/spec/containers", "spec.template.spec.containers");
            let policy = o.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str).unwrap_or("");
            if policy != "Never" && policy != "OnFailure" {
                causes.push(FieldCause {
                    reason: "FieldValueNotSupported",
                    field: "spec.template.spec.restartPolicy".into(),
                    message: format!("Unsupported value: {policy:?}: supported values: \"OnFailure\", \"Never\""),
                });
            }
        }
        ("", "Service") => {
            let ports = o.pointer("/spec/ports").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            let headless = o.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            let external = o.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
            if ports == 0 && !headless && !external {
                causes.push(FieldCause::required("spec.ports"));
            }
        }
        ("", "ConfigMap") => {
            for field in ["data", "binaryData"] {
                for key in o.get(field).and_then(Value::as_object).into_iter().flat_map(|m| m.keys()) {
                    let ok = !key.is_empty()
                        && key.len() <= 253
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
                    if !ok {
                        causes.push(FieldCause::invalid(
                            format!("{field}[{key}]"),
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// kube's `ValidateResourceRequirements`: no container requests more than its limit.
fn request_over_limit_causes(pod: &Value) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    for field in ["containers", "initContainers"] {
        for (i, container) in
            pod.pointer(&format!("/spec/{field}")).and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            let requests = container.pointer("/resources/requests").and_then(Value::as_object);
            let limits = container.pointer("/resources/limits").and_then(Value::as_object);
            for (resource, request) in requests.into_iter().flatten() {
                let limit = limits.and_then(|l| l.get(resource)).and_then(Value::as_str);
                let (Some(request), Some(limit)) = (request.as_str(), limit) else { continue };
                let amount = |q: &str| keel_scheduler_framework::quantity::parse_nanos(q).ok();
                if let (Some(r), Some(l)) = (amount(request), amount(limit))
                    && r > l
                {
                    causes.push(FieldCause::invalid(
                        format!("spec.{field}[{i}].resources.requests"),
                        format!(
                            "Invalid value: {request:?}: must be less than or equal to {resource} limit of {limit}"
                        ),
                    ));
                }
            }
        }
    }
    causes
}

/// `namespace/name` of an object.
fn objects_key(object: &Value) -> String {
    format!("{}/{}", object::namespace(object), object::name(object))
}

/// `namespace/name` of the Service an allocation write records as its holder.
fn allocation_owner(op: &WriteOp) -> String {
    match op {
        WriteOp::Put { value, .. } => serde_json::from_slice::<Value>(value)
            .map(|v| format!("{}/{}", v["namespace"].as_str().unwrap_or(""), v["name"].as_str().unwrap_or("")))
            .unwrap_or_default(),
        WriteOp::Delete { .. } => String::new(),
    }
}

/// Whether anything outside `metadata` and `status` differs: what bumps `generation`.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("metadata");
            map.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

/// Metadata the server owns: a write keeps whatever the stored object has.
const SERVER_OWNED_META: &[&str] =
    &["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "selfLink"];

fn same_ignoring_version(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        object::meta_mut(&mut v).remove("resourceVersion");
        object::meta_mut(&mut v).remove("managedFields");
        v
    };
    strip(a) == strip(b)
}

impl Api {
    pub fn new(storage: SharedStorage, registry: Arc<Registry>) -> Api {
        Api {
            admission: Chain::standard(storage.clone(), registry.clone()),
            fanout: crate::fanout::Fanout::new(storage.clone()),
            storage,
            registry,
            tokens: crate::tokens::Tokens::default(),
            tunnels: crate::podstream::Tunnels::default(),
            metrics: crate::metrics::Cache::default(),
            service_ranges: ServiceRanges::default(),
            instrumentation: crate::instrumentation::Instrumentation::default(),
        }
    }

    pub fn with_service_ranges(mut self, ranges: ServiceRanges) -> Api {
        self.service_ranges = ranges;
        self
    }

    /// Cluster IPs and node ports for a Service being written (`current`: the stored one on
    /// an update), picking around what this member knows is held and what `also_taken`
    /// (the rest of an atomic batch) takes. Give-backs are turned into deletes that hold
    /// only while the key is still this Service's.
    async fn allocate_service(
        &self,
        service: &mut Value,
        current: Option<&Value>,
        also_taken: &std::collections::HashSet<String>,
    ) -> Result<Vec<Allocation>> {
        let mut held = std::collections::HashSet::new();
        for prefix in [crate::service_alloc::IP_PREFIX, crate::service_alloc::PORT_PREFIX] {
            let page = self.storage.list(prefix, &prefix_end(prefix), 0, 0, Consistency::Local).await?;
            held.extend(page.items.into_iter().map(|item| item.key));
        }
        let allocations = crate::service_alloc::allocate(&self.service_ranges, service, current, &|key: &str| {
            held.contains(key) || also_taken.contains(key)
        })?;
        let mut guarded = Vec::with_capacity(allocations.len());
        for mut allocation in allocations {
            if let WriteOp::Delete { key, .. } = &allocation.op {
                match self.guarded_release(key, current.unwrap_or(service)).await? {
                    Some(op) => allocation.op = op,
                    None => continue,
                }
            }
            guarded.push(allocation);
        }
        Ok(guarded)
    }

    /// A delete of allocation `key` that holds only if `service` still holds it (another
    /// Service's key, or one already gone, is left alone).
    async fn guarded_release(&self, key: &str, service: &Value) -> Result<Option<WriteOp>> {
        let (found, _) = self.storage.get(key, Consistency::Linearizable).await?;
        Ok(found
            .filter(|f| crate::service_alloc::held_by(&f.value, service))
            .map(|f| WriteOp::Delete { key: key.to_string(), precondition: Precondition::Revision(f.mod_revision) }))
    }

    /// The guarded deletes of everything a Service being deleted holds.
    async fn release_service(&self, service: &Value) -> Result<Vec<WriteOp>> {
        let mut ops = Vec::new();
        for op in crate::service_alloc::release(service) {
            if let Some(op) = self.guarded_release(op.key(), service).await? {
                ops.push(op);
            }
        }
        Ok(ops)
    }

    fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::NotFound { resource: rt.qualified(), name: name.into() }
    }

    fn conflict(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::Conflict {
            resource: rt.qualified(),
            name: name.into(),
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        }
    }

    #[tracing::instrument(level = "debug", skip(self, rt), fields(resource = %rt.plural))]
    pub async fn get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Result<Value> {
        if rt.read_only {
            return self.metrics_get(rt, namespace, name).await;
        }
        let (found, _) = self.storage.get(&rt.key(namespace, name), Consistency::Linearizable).await?;
        let found = found.ok_or_else(|| Self::not_found(rt, name))?;
        decode_as(rt, &found)
    }

    pub(crate) async fn get_stored(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(Stored, Value)> {
        let (found, _) = self.storage.get(&rt.key(namespace, name), Consistency::Linearizable).await?;
        let found = found.ok_or_else(|| Self::not_found(rt, name))?;
        let value = decode_as(rt, &found)?;
        Ok((found, value))
    }

    /// Where a list starts and at which revision, from its resourceVersion parameters.
    async fn list_start(&self, prefix: &str, options: &ListOptions) -> Result<(String, i64, Consistency)> {
        if let Some(token) = &options.continue_token {
            let token = decode_continue(token, prefix)?;
            if token.rv < self.storage.compacted_revision() {
                return Err(ApiError::Gone {
                    what: "continue token (the list it continues was compacted; start a new list without it)".into(),
                    compacted: self.storage.compacted_revision(),
                });
            }
            return Ok((token.start, token.rv, Consistency::Local));
        }
        let rv = options.resource_version.as_deref().unwrap_or("");
        let exact = options.resource_version_match.as_deref() == Some("Exact");
        match rv {
            "" if exact => {
                Err(ApiError::bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided"))
            }
            "" => Ok((prefix.to_string(), 0, Consistency::Linearizable)),
            "0" => Ok((prefix.to_string(), 0, Consistency::Local)),
            rv => {
                let n: i64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {rv:?}: must be a decimal integer"))
                })?;
                if exact {
                    return Ok((prefix.to_string(), n, Consistency::Local));
                }
                if self.storage.local_revision() < n {
                    // Not there yet locally: a linearizable read brings this member up to date.
                    self.storage.get(prefix, Consistency::Linearizable).await?;
                    if self.storage.local_revision() < n {
                        return Err(ApiError::Timeout {
                            message: format!(
                                "Too large resource version: {n}, current: {}",
                                self.storage.local_revision()
                            ),
                        });
                    }
                }
                Ok((prefix.to_string(), 0, Consistency::Local))
            }
        }
    }

    fn matches(rt: &ResourceType, options: &ListOptions, object: &Value) -> bool {
        options.label_selector.matches(object::labels(object)) && options.field_selector.matches(&rt.kind, object)
    }

    #[tracing::instrument(level = "debug", skip(self, rt, options), fields(resource = %rt.plural))]
    pub async fn list(&self, rt: &ResourceType, namespace: Option<&str>, options: &ListOptions) -> Result<ListResult> {
        if rt.read_only {
            return self.metrics_list(rt, namespace, options).await;
        }
        self.list_objects(rt, namespace, options).await
    }

    /// A list of stored objects (never a computed resource).
    pub(crate) async fn list_objects(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<ListResult> {
        self.list_with(rt, namespace, options, |stored| {
            let object = decode_as(rt, stored)?;
            Ok(Self::matches(rt, options, &object).then_some(object))
        })
        .await
    }

    /// A list whose items stay in their stored JSON (with the resourceVersion spliced in):
    /// nothing is decoded but the metadata selectors need, so large lists cost little more
    /// than copying them.
    pub async fn list_raw(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<ListResult<Vec<u8>>> {
        if rt.read_only {
            let listed = self.metrics_list(rt, namespace, options).await?;
            let items = listed
                .items
                .iter()
                .map(|item| serde_json::to_vec(item).map_err(|e| ApiError::internal(format!("encode: {e}"))))
                .collect::<Result<Vec<_>>>()?;
            return Ok(ListResult { items, revision: listed.revision, continue_token: None, remaining: None });
        }
        let metadata_only = options.field_selector.only_metadata() && rt.conversion.is_none();
        self.list_with(rt, namespace, options, |stored| {
            if !metadata_only {
                let object = decode_as(rt, stored)?;
                if !Self::matches(rt, options, &object) {
                    return Ok(None);
                }
                return serde_json::to_vec(&object).map(Some).map_err(|e| ApiError::internal(format!("encode: {e}")));
            }
            if !options.label_selector.is_empty() || !options.field_selector.is_empty() {
                let light: crate::rawjson::Light = serde_json::from_slice(&stored.value)
                    .map_err(|e| ApiError::internal(format!("object at {} is not JSON: {e}", stored.key)))?;
                if !options.label_selector.matches(light.metadata.labels.as_ref()) {
                    return Ok(None);
                }
                let meta = json!({"metadata": {"name": light.metadata.name, "namespace": light.metadata.namespace}});
                if !options.field_selector.matches(&rt.kind, &meta) {
                    return Ok(None);
                }
            }
            crate::rawjson::with_resource_version(&stored.value, stored.mod_revision)
                .map(Some)
                .ok_or_else(|| ApiError::internal(format!("object at {} has no metadata object", stored.key)))
        })
        .await
    }

    async fn list_with<T>(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        options: &ListOptions,
        convert: impl Fn(&Stored) -> Result<Option<T>>,
    ) -> Result<ListResult<T>> {
        let prefix = rt.list_prefix(namespace);
        let end = prefix_end(&prefix);
        let (mut start, mut revision, mut consistency) = self.list_start(&prefix, options).await?;
        let filtered = !options.label_selector.is_empty() || !options.field_selector.is_empty();
        let limit = options.limit.max(0);
        let batch = if limit == 0 {
            0
        } else if filtered {
            limit.max(500)
        } else {
            limit
        };
        let mut items = Vec::new();
        loop {
            let page = self.storage.list(&start, &end, revision, batch, consistency).await?;
            revision = page.revision;
            consistency = Consistency::Local;
            let count = page.items.len();
            for (i, stored) in page.items.iter().enumerate() {
                if let Some(item) = convert(stored)? {
                    items.push(item);
                }
                if limit > 0 && items.len() as i64 == limit {
                    let left_in_page = (count - i - 1) as i64;
                    let remaining = page.remaining + left_in_page;
                    if remaining == 0 {
                        return Ok(ListResult { items, revision, continue_token: None, remaining: None });
                    }
                    let next = format!("{}\0", stored.key);
                    return Ok(ListResult {
                        items,
                        revision,
                        continue_token: Some(encode_continue(revision, &next)),
                        remaining: (!filtered).then_some(remaining),
                    });
                }
            }
            match page.items.last() {
                Some(last) if page.remaining > 0 => start = format!("{}\0", last.key),
                _ => return Ok(ListResult { items, revision, continue_token: None, remaining: None }),
            }
        }
    }

    /// Decodes, checks and prunes an object against its kind; what it returns is what is
    /// stored. Unknown fields fail under `Strict` and come back as warnings under `Warn`.
    pub fn validate(
        &self,
        rt: &ResourceType,
        object: Value,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>)> {
        let mut causes = object::validate_meta(&object, rt.namespaced, name_rule(rt));
        let (decoded, unknown) = match &rt.shape {
            Shape::Typed { roundtrip, .. } => {
                let decoded = roundtrip(&object).map_err(|e| {
                    ApiError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: {e}",
                        rt.kind, rt.version, rt.kind
                    ))
                })?;
                match decoded {
                    // Nothing to drop or rewrite: the body is kept as it came.
                    crate::registry::Decoded::Unchanged => (object, Vec::new()),
                    crate::registry::Decoded::Changed(decoded) => {
                        let mut unknown = Vec::new();
                        object::unknown_fields(&object, &decoded, &mut unknown);
                        (decoded, unknown)
                    }
                }
            }
            Shape::Custom { schema, preserve_unknown } => {
                let mut pruned = object;
                let mut unknown = Vec::new();
                if let Some(schema) = schema {
                    crate::schema::check(schema, &mut pruned, "", *preserve_unknown, &mut causes, &mut unknown);
                }
                (pruned, unknown)
            }
        };
        causes.extend(kind_causes(rt, &decoded));
        if !causes.is_empty() {
            return Err(ApiError::invalid(&rt.kind, &rt.group, object::name(&decoded), causes));
        }
        let warnings: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
        if validation == FieldValidation::Strict && !warnings.is_empty() {
            return Err(ApiError::bad_request(format!("strict decoding error: {}", warnings.join(", "))));
        }
        let warnings = if validation == FieldValidation::Warn { warnings } else { Vec::new() };
        let mut decoded = decoded;
        // Go's omitempty: an emptied list or map in metadata (the last owner reference
        // released, the last finalizer removed) is absent, not `[]`, as kube-apiserver stores it.
        if let Some(meta) = decoded.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in ["ownerReferences", "finalizers", "labels", "annotations", "managedFields"] {
                let empty = meta.get(field).is_some_and(|v| {
                    v.as_array().is_some_and(Vec::is_empty) || v.as_object().is_some_and(serde_json::Map::is_empty)
                });
                if empty {
                    meta.remove(field);
                }
            }
        }
        Ok((decoded, warnings))
    }

    fn check_type_meta(rt: &ResourceType, object: &mut Value) -> Result<()> {
        if !object.is_object() {
            return Err(ApiError::bad_request(format!("the body must be a JSON object describing a {}", rt.kind)));
        }
        let api_version = rt.api_version();
        match object.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => object["apiVersion"] = json!(api_version),
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        match object.get("kind").and_then(Value::as_str) {
            None | Some("") => object["kind"] = json!(rt.kind),
            Some(k) if k == rt.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
        }
        Ok(())
    }

    fn check_namespace(rt: &ResourceType, namespace: Option<&str>, object: &mut Value) -> Result<()> {
        if !rt.namespaced {
            return Ok(());
        }
        let Some(namespace) = namespace else {
            return Err(ApiError::bad_request(format!("{} are namespaced: the request needs a namespace", rt.plural)));
        };
        let meta = object::meta_mut(object);
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), json!(namespace));
            }
            Some(ns) if ns == namespace => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        Ok(())
    }

    /// Writes that go with a create in the same transaction: a namespace brings its default
    /// service account.
    fn companions(&self, rt: &ResourceType, object: &Value) -> Result<Vec<WriteOp>> {
        if !(rt.group.is_empty() && rt.kind == "Namespace") {
            return Ok(Vec::new());
        }
        let name = object::name(object);
        let account = json!({
            "kind": "ServiceAccount",
            "apiVersion": "v1",
            "metadata": {
                "name": "default",
                "namespace": name,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": object::now_rfc3339(),
            },
        });
        Ok(vec![WriteOp::Put {
            key: format!("/registry/core/serviceaccounts/{name}/default"),
            value: encode(rt, &account)?,
            precondition: Precondition::Absent,
        }])
    }

    #[tracing::instrument(level = "debug", skip(self, rt, object, options), fields(resource = %rt.plural))]
    pub async fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        object: Value,
        options: &WriteOptions,
    ) -> Result<(Value, Vec<String>)> {
        // Reviews are answered, not stored, whichever way they arrive (REST, gRPC, in process).
        if rt.create_only {
            return self.review_token(rt, object, options.field_validation).await;
        }
        if rt.read_only {
            return Err(ApiError::MethodNotAllowed { method: "create".into(), what: rt.qualified() });
        }
        let (mut prepared, warnings) = self.prepare_create(rt, namespace, object, options, &[]).await?;
        let service = is_service(rt);
        for _ in 0..ALLOCATION_RETRIES {
            // Only a Service comes round again (its picked addresses taken), so only a
            // Service's prepared object is copied for the next round.
            let mut object = if service { prepared.clone() } else { std::mem::take(&mut prepared) };
            let allocations =
                if service { self.allocate_service(&mut object, None, &Default::default()).await? } else { Vec::new() };
            if options.dry_run {
                return Ok((object, warnings));
            }
            let name = object::name(&object).to_string();
            let key = rt.key(namespace, &name);
            let mut ops = vec![WriteOp::Put { key, value: encode(rt, &object)?, precondition: Precondition::Absent }];
            ops.extend(allocations.iter().map(|a| a.op.clone()));
            let companions_from = ops.len();
            ops.extend(self.companions(rt, &object)?);
            loop {
                match self.storage.write(ops.clone()).await? {
                    WriteOutcome::Applied { revision } => {
                        object::meta_mut(&mut object).insert("resourceVersion".into(), json!(revision.to_string()));
                        return Ok((object, warnings));
                    }
                    WriteOutcome::Refused { index: 0, .. } => {
                        return Err(ApiError::AlreadyExists { resource: rt.qualified(), name });
                    }
                    WriteOutcome::Refused { index, .. } if index < companions_from => {
                        let allocation = &allocations[index - 1];
                        if !allocation.chosen {
                            return Err(crate::service_alloc::already_allocated(&object, allocation));
                        }
                        // Another Service took the random pick first: pick again.
                        break;
                    }
                    // A companion already exists (left from an earlier namespace of that name):
                    // keep it and write the object alone.
                    WriteOutcome::Refused { .. } => ops.truncate(companions_from),
                }
            }
        }
        Err(ApiError::Conflict {
            resource: rt.qualified(),
            name: object::name(&prepared).to_string(),
            message: "the cluster IPs and node ports picked kept being taken by other Services; try again".into(),
        })
    }

    /// Everything a create does short of writing: server-set metadata, admission, validation.
    /// `batch` names namespaces created in the same atomic write.
    async fn prepare_create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut object: Value,
        options: &WriteOptions,
        batch: &[String],
    ) -> Result<(Value, Vec<String>)> {
        if rt.create_only || rt.read_only {
            // Nothing of a review kind is ever stored (an atomic apply cannot carry one).
            return Err(ApiError::MethodNotAllowed { method: "store".into(), what: rt.qualified() });
        }
        Self::check_type_meta(rt, &mut object)?;
        Self::check_namespace(rt, namespace, &mut object)?;
        let generate = object::meta_str(&object, "generateName").to_string();
        let meta = object::meta_mut(&mut object);
        if meta.get("name").and_then(Value::as_str).unwrap_or("").is_empty() && !generate.is_empty() {
            meta.insert("name".into(), json!(format!("{generate}{}", object::random_suffix(5))));
        }
        for field in SERVER_OWNED_META {
            meta.remove(*field);
        }
        meta.remove("resourceVersion");
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(object::now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        if rt.has_status
            && !(rt.group.is_empty() && rt.kind == "Namespace")
            && let Some(map) = object.as_object_mut()
        {
            map.remove("status");
        }
        if rt.group.is_empty() && rt.kind == "Pod" {
            object["status"] = json!({"phase": "Pending", "qosClass": qos_class(&object)});
        }
        if rt.group == "apiextensions.k8s.io" {
            crate::crd::accept(&mut object);
        }
        if rt.group == "batch" && rt.kind == "Job" {
            job_selector(&mut object);
        }
        let name = object::name(&object).to_string();
        let attributes = Attributes {
            operation: Operation::Create,
            resource: rt,
            namespace,
            name: &name,
            subresource: None,
            old: None,
            batch,
        };
        self.admission.mutate(&attributes, &mut object).await?;
        let (object, warnings) = self.validate(rt, object, options.field_validation)?;
        self.admission.validate(&attributes, &object).await?;
        Ok((object, warnings))
    }

    /// Replaces an object (or its status or scale, with `subresource`), holding the
    /// resourceVersion precondition the new object carries, if any.
    #[tracing::instrument(level = "debug", skip(self, rt, object, options), fields(resource = %rt.plural))]
    pub async fn update(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        mut object: Value,
        options: &WriteOptions,
    ) -> Result<(Value, Vec<String>)> {
        if subresource == Some("scale") {
            return self.update_scale(rt, namespace, name, object, options).await;
        }
        Self::check_type_meta(rt, &mut object)?;
        Self::check_namespace(rt, namespace, &mut object)?;
        let body_name = object::name(&object);
        if body_name.is_empty() {
            object::meta_mut(&mut object).insert("name".into(), json!(name));
        } else if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let (stored, current) = self.get_stored(rt, namespace, name).await?;
        let expected = match object::meta_str(&object, "resourceVersion") {
            "" => stored.mod_revision,
            rv => rv.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        };
        if expected != stored.mod_revision {
            return Err(Self::conflict(rt, name));
        }
        self.replace(rt, namespace, name, subresource, &current, stored.mod_revision, object, options).await
    }

    /// Everything a replacement does short of writing: server-owned fields kept, subresource
    /// rules, admission, generation, validation.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_replace(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        current: &Value,
        mut object: Value,
        options: &WriteOptions,
    ) -> Result<(Value, Vec<String>)> {
        let body_uid = object::meta_str(&object, "uid").to_string();
        if !body_uid.is_empty() && body_uid != object::meta_str(current, "uid") {
            return Err(ApiError::Conflict {
                resource: rt.qualified(),
                name: name.into(),
                message: format!(
                    "Precondition failed: UID in precondition: {body_uid}, UID in object meta: {}",
                    object::meta_str(current, "uid")
                ),
            });
        }
        match subresource {
            Some("status") => {
                // Only status changes through /status.
                let status = object.get("status").cloned();
                object = current.clone();
                match status {
                    Some(s) => object["status"] = s,
                    None => {
                        if let Some(map) = object.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
            }
            None if rt.has_status => match current.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            },
            None => {}
            Some(other) => {
                return Err(ApiError::NotFound { resource: format!("{}/{other}", rt.qualified()), name: name.into() });
            }
        }
        {
            let current_meta = object::meta(current).cloned().unwrap_or_default();
            let meta = object::meta_mut(&mut object);
            for field in SERVER_OWNED_META {
                match current_meta.get(*field) {
                    Some(v) => meta.insert(field.to_string(), v.clone()),
                    None => meta.remove(*field),
                };
            }
            meta.remove("resourceVersion");
        }
        if rt.group == "apiextensions.k8s.io" {
            crate::crd::accept(&mut object);
        }
        let attributes = Attributes {
            operation: Operation::Update,
            resource: rt,
            namespace,
            name,
            subresource,
            old: Some(current),
            batch: &[],
        };
        self.admission.mutate(&attributes, &mut object).await?;
        let generation = object::meta(current).and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(1);
        if spec_changed(current, &object) {
            object::meta_mut(&mut object).insert("generation".into(), json!(generation + 1));
        }
        let (object, warnings) = self.validate(rt, object, options.field_validation)?;
        self.admission.validate(&attributes, &object).await?;
        Ok((object, warnings))
    }

    /// The write that replaces `current` (at `revision`) with `object`: a delete when the
    /// object was being deleted and its last finalizer is gone.
    fn replace_op(
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        object: &Value,
        revision: i64,
    ) -> Result<WriteOp> {
        let key = rt.key(namespace, name);
        // A namespace also waits for its own finalizers (`spec.finalizers`) to go.
        let namespace_pending = rt.group.is_empty()
            && rt.kind == "Namespace"
            && object.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        let finished = object::is_terminating(object) && object::finalizers(object).is_empty() && !namespace_pending;
        Ok(if finished {
            WriteOp::Delete { key, precondition: Precondition::Revision(revision) }
        } else {
            WriteOp::Put { key, value: encode(rt, object)?, precondition: Precondition::Revision(revision) }
        })
    }

    /// The shared tail of update and patch: the new object against the stored one.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        current: &Value,
        revision: i64,
        object: Value,
        options: &WriteOptions,
    ) -> Result<(Value, Vec<String>)> {
        let (mut object, warnings) =
            self.prepare_replace(rt, namespace, name, subresource, current, object, options).await?;
        if subresource.is_none() && !options.applying {
            let manager = options.field_manager.as_deref().filter(|m| !m.is_empty()).unwrap_or("unknown");
            crate::apply::track_update(current, &mut object, manager, &rt.api_version(), &rt.kind);
        }
        if subresource.is_none() && rt.has_status && rt.conversion.is_some() {
            // A version that carries part of its status in annotations (autoscaling/v1) would
            // otherwise rebuild the stored status from whatever annotations the client sent.
            let mut stored_form = rt.stored(object);
            match rt.stored(current.clone()).get("status") {
                Some(status) => stored_form["status"] = status.clone(),
                None => {
                    if let Some(map) = stored_form.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            object = rt.served(stored_form);
        }
        let finishing = object::is_terminating(&object) && object::finalizers(&object).is_empty();
        let allocations = if is_service(rt) && !finishing {
            self.allocate_service(&mut object, Some(current), &Default::default()).await?
        } else {
            Vec::new()
        };
        if same_ignoring_version(current, &object) {
            return Ok((current.clone(), warnings));
        }
        if options.dry_run {
            return Ok((object, warnings));
        }
        let mut ops = vec![Self::replace_op(rt, namespace, name, &object, revision)?];
        if is_service(rt) && matches!(ops[0], WriteOp::Delete { .. }) {
            ops.extend(self.release_service(current).await?);
        } else {
            ops.extend(allocations.iter().map(|a| a.op.clone()));
        }
        match self.storage.write(ops).await? {
            WriteOutcome::Applied { revision } => {
                object::meta_mut(&mut object).insert("resourceVersion".into(), json!(revision.to_string()));
                Ok((object, warnings))
            }
            WriteOutcome::Refused { current: None, index: 0 } => Err(Self::not_found(rt, name)),
            WriteOutcome::Refused { index, .. } => {
                match index.checked_sub(1).and_then(|i| allocations.get(i)).filter(|a| !a.chosen) {
                    Some(allocation) => Err(crate::service_alloc::already_allocated(&object, allocation)),
                    None => Err(Self::conflict(rt, name)),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(level = "debug", skip(self, rt, patch, options), fields(resource = %rt.plural))]
    pub async fn patch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        patch_type: PatchType,
        patch: Value,
        options: &WriteOptions,
    ) -> Result<(Value, Vec<String>, bool)> {
        if patch_type == PatchType::Apply {
            return crate::apply::apply(self, rt, namespace, name, subresource, patch, options).await;
        }
        let pinned = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(String::from);
        for _ in 0..PATCH_RETRIES {
            let (stored, object) = self.get_stored(rt, namespace, name).await?;
            // What the patch applies to: the object, or the Scale read from it.
            let current = if subresource == Some("scale") {
                crate::scale::scale_of(rt, &object, stored.mod_revision)?
            } else {
                object.clone()
            };
            if let Some(rv) = &pinned
                && *rv != stored.mod_revision.to_string()
            {
                return Err(Self::conflict(rt, name));
            }
            let kind = if subresource == Some("scale") { "Scale" } else { rt.kind.as_str() };
            let patched = match patch_type {
                PatchType::Json => patch::json_patch(&current, &patch),
                PatchType::Merge => patch::merge_patch(&current, &patch),
                PatchType::StrategicMerge => {
                    if matches!(rt.shape, Shape::Custom { .. }) {
                        return Err(ApiError::UnsupportedMediaType {
                            accepted: "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                        });
                    }
                    patch::strategic_merge_patch(&current, &patch, kind)
                }
                PatchType::Apply => unreachable!("handled above"),
            }
            .map_err(|e| ApiError::Invalid {
                kind: rt.kind.clone(),
                group: rt.group.clone(),
                name: name.into(),
                causes: vec![FieldCause::invalid("", e)],
            })?;
            // The write holds the revision read above; a concurrent change is a conflict, retried.
            let result = if subresource == Some("scale") {
                self.write_scale(rt, namespace, name, &object, stored.mod_revision, patched, options).await
            } else {
                self.replace(rt, namespace, name, subresource, &object, stored.mod_revision, patched, options).await
            };
            match result {
                Err(ApiError::Conflict { .. }) if pinned.is_none() => continue,
                other => return other.map(|(o, w)| (o, w, false)),
            }
        }
        Err(Self::conflict(rt, name))
    }

    async fn update_scale(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        scale: Value,
        options: &WriteOptions,
    ) -> Result<(Value, Vec<String>)> {
        let (stored, current) = self.get_stored(rt, namespace, name).await?;
        let rv = scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("");
        if !rv.is_empty() && rv != stored.mod_revision.to_string() {
            return Err(Self::conflict(rt, name));
        }
        self.write_scale(rt, namespace, name, &current, stored.mod_revision, scale, options).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_scale(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        current: &Value,
        revision: i64,
        scale: Value,
        options: &WriteOptions,
    ) -> Result<(Value, Vec<String>)> {
        let updated = crate::scale::apply_scale(rt, current, &scale)?;
        let (object, warnings) = self.replace(rt, namespace, name, None, current, revision, updated, options).await?;
        let revision = object::meta_str(&object, "resourceVersion").parse().unwrap_or(revision);
        Ok((crate::scale::scale_of(rt, &object, revision)?, warnings))
    }

    /// Deletes an object, or marks it for deletion when finalizers, a grace period or
    /// foreground propagation must run first.
    #[tracing::instrument(level = "debug", skip(self, rt, options), fields(resource = %rt.plural))]
    pub async fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<(Value, bool)> {
        for _ in 0..PATCH_RETRIES {
            let (stored, current) = self.get_stored(rt, namespace, name).await?;
            if let Some(uid) = &options.precondition_uid
                && uid != object::meta_str(&current, "uid")
            {
                return Err(ApiError::Conflict {
                    resource: rt.qualified(),
                    name: name.into(),
                    message: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        object::meta_str(&current, "uid")
                    ),
                });
            }
            if let Some(rv) = &options.precondition_resource_version
                && *rv != stored.mod_revision.to_string()
            {
                return Err(ApiError::Conflict {
                    resource: rt.qualified(),
                    name: name.into(),
                    message: format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        stored.mod_revision
                    ),
                });
            }
            let attributes = Attributes {
                operation: Operation::Delete,
                resource: rt,
                namespace,
                name,
                subresource: None,
                old: Some(&current),
                batch: &[],
            };
            self.admission.validate(&attributes, &current).await?;
            let mut marked = current.clone();
            let mut finalizers = object::finalizers(&current);
            let mut add = |f: &str| {
                if !finalizers.iter().any(|x| x == f) {
                    finalizers.push(f.to_string());
                }
            };
            match options.propagation_policy.as_deref() {
                Some("Foreground") => add("foregroundDeletion"),
                Some("Orphan") => add("orphan"),
                Some("Background") | None => {}
                Some(other) => {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &rt.group,
                        name,
                        vec![FieldCause {
                            reason: "FieldValueNotSupported",
                            field: "propagationPolicy".into(),
                            message: format!(
                                "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                            ),
                        }],
                    ));
                }
            }
            let is_namespace = rt.group.is_empty() && rt.kind == "Namespace";
            let grace = self.grace_period(rt, &current, options);
            let needs_mark = !finalizers.is_empty() || grace > 0 || is_namespace;
            let op = if needs_mark {
                if object::is_terminating(&current) && finalizers == object::finalizers(&current) {
                    // Already being deleted and nothing new to wait for.
                    return Ok((current, false));
                }
                let meta = object::meta_mut(&mut marked);
                if meta.get("deletionTimestamp").is_none_or(|t| t.is_null()) {
                    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                    meta.insert("deletionTimestamp".into(), json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
                if !finalizers.is_empty() {
                    meta.insert("finalizers".into(), json!(finalizers));
                }
                if is_namespace {
                    marked["status"] = json!({"phase": "Terminating"});
                }
                WriteOp::Put {
                    key: stored.key.clone(),
                    value: encode(rt, &marked)?,
                    precondition: Precondition::Revision(stored.mod_revision),
                }
            } else {
                WriteOp::Delete { key: stored.key.clone(), precondition: Precondition::Revision(stored.mod_revision) }
            };
            if options.dry_run {
                return Ok((marked, !needs_mark));
            }
            let mut ops = vec![op];
            if is_service(rt) && !needs_mark {
                // What the Service held goes back in the same write.
                ops.extend(self.release_service(&current).await?);
            }
            match self.storage.write(ops).await? {
                WriteOutcome::Applied { revision } => {
                    object::meta_mut(&mut marked).insert("resourceVersion".into(), json!(revision.to_string()));
                    return Ok((marked, !needs_mark));
                }
                WriteOutcome::Refused { current: None, .. } => return Err(Self::not_found(rt, name)),
                WriteOutcome::Refused { .. } => continue,
            }
        }
        Err(Self::conflict(rt, name))
    }

    /// Seconds a deletion waits: pods on a node get their grace period for the node agent to
    /// stop them; everything else goes at once.
    fn grace_period(&self, rt: &ResourceType, current: &Value, options: &DeleteOptions) -> i64 {
        if !(rt.group.is_empty() && rt.kind == "Pod") {
            return 0;
        }
        let on_node = current.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let finished = matches!(current.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
        if !on_node || finished {
            return 0;
        }
        options
            .grace_period_seconds
            .or_else(|| current.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30)
            .max(0)
    }

    pub async fn delete_collection(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        list: &ListOptions,
        options: &DeleteOptions,
    ) -> Result<ListResult> {
        let mut listed = self.list(rt, namespace, list).await?;
        let mut deleted = Vec::new();
        for item in &listed.items {
            let ns = object::namespace(item);
            let ns = if ns.is_empty() { None } else { Some(ns) };
            match self.delete(rt, ns, object::name(item), options).await {
                Ok((object, _)) => deleted.push(object),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        listed.items = deleted;
        Ok(listed)
    }

    /// A watch, as a channel of events the caller forwards to its client. Ends on timeout,
    /// when the caller drops the receiver, or after an ERROR event.
    pub async fn watch(
        self: &Arc<Self>,
        rt: Arc<ResourceType>,
        namespace: Option<String>,
        options: WatchOptions,
    ) -> Result<mpsc::Receiver<WatchEvent>> {
        let prefix = rt.list_prefix(namespace.as_deref());
        let rv = options.list.resource_version.clone().unwrap_or_default();
        let send_initial = options.send_initial_events.unwrap_or(rv.is_empty() || rv == "0");
        if options.send_initial_events == Some(true) && !options.allow_bookmarks {
            return Err(ApiError::bad_request("sendInitialEvents requires allowWatchBookmarks=true"));
        }
        // Initial state first (a consistent list), then changes after it.
        let (initial, start_revision) = if send_initial {
            let mut list_options = options.list.clone();
            list_options.limit = 0;
            list_options.continue_token = None;
            if rv.is_empty() {
                list_options.resource_version = None;
            }
            let listed = self.list(&rt, namespace.as_deref(), &list_options).await?;
            (listed.items, listed.revision + 1)
        } else {
            let n: i64 = rv.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version {rv:?}: must be a decimal integer"))
            })?;
            (Vec::new(), n + 1)
        };
        // A start in compacted history is reported in the stream, as kube-apiserver does:
        // clients (client-go, kube-rs) take an in-stream 410 as the signal to list again.
        let compacted = self.storage.compacted_revision();
        let feed = if start_revision <= compacted {
            Err(ApiError::Gone { what: "watch".into(), compacted })
        } else {
            match self.fanout.subscribe(&prefix, start_revision) {
                Some(feed) => Ok(feed),
                // Older than the fan-out's window: read the store's history.
                None => self.storage.watch(&prefix, &prefix_end(&prefix), start_revision),
            }
        };
        let mut feed = match feed {
            Ok(feed) => feed,
            Err(e @ ApiError::Gone { .. }) => {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(WatchEvent::Decoded(json!({"type": "ERROR", "object": e.status()})));
                return Ok(rx);
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::channel(256);
        let timeout = options.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT);
        let list = options.list.clone();
        let bookmark = |revision: i64, initial_end: bool| {
            let mut meta = json!({"resourceVersion": revision.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            WatchEvent::Decoded(
                json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}}),
            )
        };
        let first_bookmark = (options.send_initial_events == Some(true)).then(|| bookmark(start_revision - 1, true));
        let rt_for_task = rt.clone();
        let span = tracing::debug_span!("watch", resource = %rt.plural, start_revision);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let rt = rt_for_task;
                for object in initial {
                    if tx.send(WatchEvent::Decoded(json!({"type": "ADDED", "object": object}))).await.is_err() {
                        return;
                    }
                }
                if let Some(b) = first_bookmark
                    && tx.send(b).await.is_err()
                {
                    return;
                }
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let next = tokio::select! {
                        next = feed.next() => next,
                        _ = tokio::time::sleep(BOOKMARK_INTERVAL) => {
                            if options.allow_bookmarks {
                                let revision = feed.progress_revision();
                                let b = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": revision.to_string()}}});
                                if tx.send(WatchEvent::Decoded(b)).await.is_err() { return; }
                            } else if tx.is_closed() {
                                return;
                            }
                            continue;
                        }
                        _ = tokio::time::sleep_until(deadline) => return,
                        _ = tx.closed() => return,
                    };
                    let changes = match next {
                        Ok(changes) => changes,
                        Err(e) => {
                            let _ = tx.send(WatchEvent::Decoded(json!({"type": "ERROR", "object": e.status()}))).await;
                            return;
                        }
                    };
                    for change in changes {
                        match watch_event(&rt, &list, &change) {
                            Ok(Some(event)) => {
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                let _ =
                                    tx.send(WatchEvent::Decoded(json!({"type": "ERROR", "object": e.status()}))).await;
                                return;
                            }
                        }
                    }
                }
            },
            span,
        ));
        Ok(rx)
    }

    /// The resource type an object declares with `apiVersion` and `kind`.
    pub fn type_of(&self, object: &Value) -> Result<Arc<ResourceType>> {
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version.is_empty() || kind.is_empty() {
            return Err(ApiError::bad_request("every object needs apiVersion and kind"));
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        self.registry.find_kind(group, version, kind).ok_or_else(|| {
            ApiError::bad_request(format!("no kind {kind:?} is served in {api_version:?} (is its CRD established?)"))
        })
    }

    /// Creates or updates every object in one store transaction: all of them at one
    /// revision, or none. An existing object gets the given fields merged in (a strategic
    /// merge, as `kubectl apply` does); a missing one is created. Namespaces created here
    /// may hold other objects of the same batch.
    pub async fn apply_atomic(&self, objects: Vec<Value>, options: &WriteOptions) -> Result<(Vec<Value>, i64)> {
        if objects.is_empty() {
            return Err(ApiError::bad_request("nothing to apply"));
        }
        // Namespaces first, so the objects in them see them.
        let mut objects = objects;
        objects.sort_by_key(|o| o.get("kind").and_then(Value::as_str) != Some("Namespace"));
        let batch: Vec<String> = objects
            .iter()
            .filter(|o| o.get("kind").and_then(Value::as_str) == Some("Namespace"))
            .map(|o| object::name(o).to_string())
            .collect();
        for _ in 0..PATCH_RETRIES {
            let mut ops: Vec<WriteOp> = Vec::new();
            let mut results: Vec<(Value, bool)> = Vec::new();
            // Allocations of the batch's Services by their index in `ops`, and the keys they
            // take, so two Services of one batch never pick one address.
            let mut allocated: std::collections::HashMap<usize, Allocation> = std::collections::HashMap::new();
            let mut batch_keys: std::collections::HashSet<String> = std::collections::HashSet::new();
            for object in &objects {
                let rt = self.type_of(object)?;
                let namespace = if rt.namespaced {
                    Some(match object::namespace(object) {
                        "" => "default".to_string(),
                        ns => ns.to_string(),
                    })
                } else {
                    None
                };
                let ns = namespace.as_deref();
                let name = object::name(object).to_string();
                if name.is_empty() {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &rt.group,
                        "",
                        vec![FieldCause::required("metadata.name")],
                    ));
                }
                let key = rt.key(ns, &name);
                if ops.iter().any(|op| op.key() == key) {
                    return Err(ApiError::bad_request(format!(
                        "{} {name:?} appears twice in one atomic apply",
                        rt.kind
                    )));
                }
                match self.storage.get(&key, Consistency::Linearizable).await? {
                    (None, _) => {
                        let (mut created, _) = self.prepare_create(&rt, ns, object.clone(), options, &batch).await?;
                        let allocations = if is_service(&rt) {
                            self.allocate_service(&mut created, None, &batch_keys).await?
                        } else {
                            Vec::new()
                        };
                        ops.push(WriteOp::Put {
                            key: key.clone(),
                            value: encode(&rt, &created)?,
                            precondition: Precondition::Absent,
                        });
                        for allocation in allocations {
                            batch_keys.insert(allocation.op.key().to_string());
                            ops.push(allocation.op.clone());
                            allocated.insert(ops.len() - 1, allocation);
                        }
                        for companion in self.companions(&rt, &created)? {
                            if !objects.iter().any(|o| {
                                self.type_of(o).is_ok_and(|t| {
                                    t.key(Some(object::name(&created)), object::name(o)) == companion.key()
                                })
                            }) {
                                ops.push(companion);
                            }
                        }
                        results.push((created, true));
                    }
                    (Some(stored), _) => {
                        let current = decode_as(&rt, &stored)?;
                        let merged = match rt.shape {
                            Shape::Typed { .. } => patch::strategic_merge_patch(&current, object, &rt.kind),
                            Shape::Custom { .. } => patch::merge_patch(&current, object),
                        }
                        .map_err(|e| ApiError::invalid(&rt.kind, &rt.group, &name, vec![FieldCause::invalid("", e)]))?;
                        let (mut updated, _) =
                            self.prepare_replace(&rt, ns, &name, None, &current, merged, options).await?;
                        let finishing = object::is_terminating(&updated) && object::finalizers(&updated).is_empty();
                        let allocations = if is_service(&rt) && !finishing {
                            self.allocate_service(&mut updated, Some(&current), &batch_keys).await?
                        } else {
                            Vec::new()
                        };
                        if same_ignoring_version(&current, &updated) {
                            results.push((current, false));
                        } else {
                            let op = Self::replace_op(&rt, ns, &name, &updated, stored.mod_revision)?;
                            let deleting = matches!(op, WriteOp::Delete { .. });
                            ops.push(op);
                            if is_service(&rt) && deleting {
                                ops.extend(self.release_service(&current).await?);
                            }
                            for allocation in allocations {
                                batch_keys.insert(allocation.op.key().to_string());
                                ops.push(allocation.op.clone());
                                allocated.insert(ops.len() - 1, allocation);
                            }
                            results.push((updated, true));
                        }
                    }
                }
            }
            if options.dry_run || ops.is_empty() {
                let revision = self.storage.local_revision();
                return Ok((results.into_iter().map(|(o, _)| o).collect(), revision));
            }
            match self.storage.write(ops).await? {
                WriteOutcome::Applied { revision } => {
                    let objects = results
                        .into_iter()
                        .map(|(mut o, written)| {
                            if written {
                                object::meta_mut(&mut o).insert("resourceVersion".into(), json!(revision.to_string()));
                            }
                            o
                        })
                        .collect();
                    return Ok((objects, revision));
                }
                // An address or port the request itself named is held by another Service.
                WriteOutcome::Refused { index, .. } if allocated.get(&index).is_some_and(|a| !a.chosen) => {
                    let allocation = &allocated[&index];
                    let named = results.iter().map(|(o, _)| o).find(|o| {
                        o.get("kind").and_then(Value::as_str) == Some("Service")
                            && objects_key(o) == allocation_owner(&allocation.op)
                    });
                    return Err(crate::service_alloc::already_allocated(named.unwrap_or(&Value::Null), allocation));
                }
                // Something changed between reading and writing: read again and retry.
                WriteOutcome::Refused { .. } => continue,
            }
        }
        Err(ApiError::Conflict {
            resource: "objects".into(),
            name: String::new(),
            message: "the objects kept changing during the atomic apply; nothing was written".into(),
        })
    }

    /// `pods/binding`: assigns a pod to a node, once.
    pub async fn bind(&self, rt: &ResourceType, namespace: Option<&str>, name: &str, binding: &Value) -> Result<Value> {
        let target = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or("");
        if target.is_empty() {
            return Err(ApiError::invalid("Binding", "", name, vec![FieldCause::required("target.name")]));
        }
        for _ in 0..PATCH_RETRIES {
            let (stored, current) = self.get_stored(rt, namespace, name).await?;
            let assigned = current.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
            if !assigned.is_empty() {
                return Err(ApiError::Conflict {
                    resource: rt.qualified(),
                    name: name.into(),
                    message: format!(
                        "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{assigned}\""
                    ),
                });
            }
            if object::is_terminating(&current) {
                return Err(ApiError::Conflict {
                    resource: rt.qualified(),
                    name: name.into(),
                    message: format!(
                        "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is being deleted, cannot be assigned to a host"
                    ),
                });
            }
            let mut bound = current.clone();
            bound["spec"]["nodeName"] = json!(target);
            let mut conditions =
                bound.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            conditions
                .push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": object::now_rfc3339()}));
            bound["status"]["conditions"] = json!(conditions);
            let op = WriteOp::Put {
                key: stored.key.clone(),
                value: encode(rt, &bound)?,
                precondition: Precondition::Revision(stored.mod_revision),
            };
            match self.storage.write(vec![op]).await? {
                WriteOutcome::Applied { .. } => {
                    return Ok(
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                    );
                }
                WriteOutcome::Refused { current: None, .. } => return Err(Self::not_found(rt, name)),
                WriteOutcome::Refused { .. } => continue,
            }
        }
        Err(Self::conflict(rt, name))
    }

    /// Creates the namespaces every cluster has (and their default service accounts), if
    /// they are missing. Safe on every member at every start.
    pub async fn ensure_system_namespaces(&self) -> Result<()> {
        let Some(rt) = self.registry.find("", "v1", "namespaces") else { return Ok(()) };
        for name in crate::admission::SYSTEM_NAMESPACES {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match self.create(&rt, None, ns, &WriteOptions::default()).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn watch_event(
    rt: &ResourceType,
    options: &ListOptions,
    change: &crate::storage::Change,
) -> Result<Option<WatchEvent>> {
    if options.label_selector.is_empty() && options.field_selector.is_empty() && rt.conversion.is_none() {
        let kind = match change.kind {
            ChangeKind::Delete => "DELETED",
            ChangeKind::Put if change.create_revision == change.revision => "ADDED",
            ChangeKind::Put => "MODIFIED",
        };
        let object = crate::rawjson::with_resource_version(&change.value, change.revision)
            .ok_or_else(|| ApiError::internal(format!("object at {} has no metadata object", change.key)))?;
        return Ok(Some(WatchEvent::Raw { kind, object }));
    }
    let served = |bytes: &[u8]| -> Result<Value> { Ok(rt.served(decode_bytes(bytes, change.revision, &change.key)?)) };
    let object = served(&change.value)?;
    let matches = |o: &Value| Api::matches(rt, options, o);
    let event = match change.kind {
        ChangeKind::Delete => matches(&object).then_some(("DELETED", object)),
        ChangeKind::Put => {
            let now = matches(&object);
            let before = match &change.previous {
                Some(bytes) if change.create_revision != change.revision => Some(matches(&served(bytes)?)),
                _ => None,
            };
            match (before, now) {
                (None, true) => Some(("ADDED", object)),
                (Some(true), true) => Some(("MODIFIED", object)),
                (Some(false), true) => Some(("ADDED", object)),
                (Some(true), false) => Some(("DELETED", object)),
                (_, false) => None,
            }
        }
    };
    Ok(event.map(|(kind, object)| WatchEvent::Decoded(json!({"type": kind, "object": object}))))
}

/// The QoS class a pod's requests and limits put it in.
fn qos_class(pod: &Value) -> &'static str {
    let containers = pod.get("spec").and_then(|s| s.get("containers")).and_then(Value::as_array);
    let containers = containers.map(Vec::as_slice).unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let resources = c.get("resources");
        let requests = resources.and_then(|r| r.get("requests")).and_then(Value::as_object);
        let limits = resources.and_then(|r| r.get("limits")).and_then(Value::as_object);
        any |= requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty());
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_objects_carry_no_resource_version() {
        let rt = crate::registry::builtins()
            .into_iter()
            .find(|rt| rt.group.is_empty() && rt.plural == "configmaps")
            .expect("configmaps are built in");
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "resourceVersion": "7", "labels": {"x": "y"}}, "data": {"k": "v"}});
        let stored: Value = serde_json::from_slice(&encode(&rt, &object).expect("encodes")).expect("JSON");
        let mut expected = object.clone();
        object::meta_mut(&mut expected).remove("resourceVersion");
        assert_eq!(stored, expected);
        // Not an object at all: written as it is.
        assert_eq!(encode(&rt, &json!([1])).expect("encodes"), b"[1]");
    }

    #[test]
    fn continue_tokens_roundtrip_and_are_checked() {
        let token = encode_continue(42, "/registry/core/pods/a/b\0");
        let decoded = decode_continue(&token, "/registry/core/pods/").unwrap();
        assert_eq!(decoded.rv, 42);
        assert!(decode_continue(&token, "/registry/core/configmaps/").is_err());
        assert!(decode_continue("garbage", "/registry/").is_err());
    }

    #[test]
    fn qos_classes() {
        assert_eq!(qos_class(&json!({"spec": {"containers": [{"name": "a"}]}})), "BestEffort");
        let limits = json!({"cpu": "1", "memory": "1Gi"});
        assert_eq!(qos_class(&json!({"spec": {"containers": [{"resources": {"limits": limits}}]}})), "Guaranteed");
        assert_eq!(
            qos_class(&json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}})),
            "Burstable"
        );
    }
}
