//! One agent's stream: registration, then objects down and status up until either side ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event, Node, NodeCondition, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use keel_api::error::ApiError;
use keel_api::metrics::{ContainerRecord, NodeRecord, PodRecord, Publisher};
use keel_api::rest::DeleteOptions;
use keel_proto::node::agent_message::Message as FromAgent;
use keel_proto::node::member_message::Message as ToAgent;
use keel_proto::node::{
    AgentMessage, MemberMessage, ObjectVersion, PodFinished, PodStatusBatch, Register, Registered, ResourceMetrics,
    Sync, SyncObject, TokenRequest, TokenResponse, Usage,
};
use keel_runtime::{Client, ObjectKey};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::refs::{ConfigRef, configs_of};
use crate::{Hub, SessionHandle};

const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Writes of one status batch in flight at once.
const STATUS_WRITES: usize = 32;
/// How often pod statuses whose write failed are tried again.
const STATUS_RETRY: Duration = Duration::from_secs(2);
/// Attempts at a write that keeps meeting newer versions of its object.
const CONFLICT_RETRIES: usize = 5;

type Outgoing = mpsc::Sender<Result<MemberMessage, Status>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: String,
    namespace: String,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    uid: String,
    resource_version: String,
}

/// What the agent holds, and which ConfigMaps and Secrets its pods use.
struct Held {
    objects: HashMap<Key, Version>,
    uses: HashSet<ConfigRef>,
}

pub(crate) async fn run(hub: Arc<Hub>, mut incoming: Streaming<AgentMessage>, tx: Outgoing) {
    let register = match tokio::time::timeout(Duration::from_secs(30), incoming.message()).await {
        Ok(Ok(Some(AgentMessage { message: Some(FromAgent::Register(register)) }))) => register,
        Ok(Ok(Some(_))) => {
            let _ = tx.send(Err(Status::invalid_argument("the first message of a node stream must be Register"))).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "node stream broke before registering");
            return;
        }
        Ok(Ok(None)) => return,
        Err(_) => {
            let _ = tx.send(Err(Status::deadline_exceeded("no Register within 30 s"))).await;
            return;
        }
    };
    let node: Node = match serde_json::from_slice(&register.node) {
        Ok(node) => node,
        Err(e) => {
            let _ = tx.send(Err(Status::invalid_argument(format!("Register.node is not a Node: {e}")))).await;
            return;
        }
    };
    let Some(name) = node.metadata.name.clone().filter(|n| !n.is_empty()) else {
        let _ = tx.send(Err(Status::invalid_argument("Register.node has no metadata.name"))).await;
        return;
    };
    let span = tracing::info_span!("node_stream", node = %name);
    let mut node = node;
    node.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(keel_api::podstream::MEMBER_ANNOTATION.to_string(), hub.api_address.clone());
    serve(hub, name, node, register, incoming, tx).instrument(span).await;
}

async fn serve(
    hub: Arc<Hub>,
    name: String,
    node: Node,
    register: Register,
    mut incoming: Streaming<AgentMessage>,
    tx: Outgoing,
) {
    let stored = match register_node(&hub.client, node).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(error = %e, "registering the node failed");
            let _ = tx.send(Err(keel_api::grpc::status(e))).await;
            return;
        }
    };
    let registered = Registered { member: hub.member.clone(), node: serde_json::to_vec(&stored).unwrap_or_default() };
    if tx.send(Ok(MemberMessage { message: Some(ToAgent::Registered(registered)) })).await.is_err() {
        return;
    }
    let (handle, mut control) = hub.attach(&name);
    tracing::info!(known = register.known.len(), "node connected");
    let mut upkeep = Upkeep {
        node: &stored,
        publisher: Publisher::new(hub.client.api.storage.clone(), &name),
        unwritten: HashMap::new(),
    };
    let mut inbound = Inbound { agent: &mut incoming, control: &mut control };
    let result = stream(&hub, &name, &handle, &mut upkeep, register, &mut inbound, &tx).await;
    match result {
        Ok(()) => tracing::info!("node stream ended"),
        Err(why) => tracing::info!(%why, "node stream ended"),
    }
    hub.detach(&name, &handle);
    upkeep.publisher.close().await;
}

/// What the member keeps for a node while its stream lasts: the Node as registered (for its
/// Lease's owner) and the writer of its metrics records.
struct Upkeep<'a> {
    node: &'a Node,
    publisher: Publisher,
    /// Pod statuses whose write failed (the store was slow, unavailable…), by pod uid, tried
    /// again until written or superseded: the agent sent them once and will not again unless
    /// they change, so dropping one could leave a pod Pending for good.
    unwritten: HashMap<String, keel_proto::node::PodStatus>,
}

/// A token for a pod's projected serviceAccountToken source, if the pod is this node's and
/// runs as that account (kube's NodeRestriction asks the same of a kubelet).
async fn issue_token(
    client: &Client,
    pods: &keel_runtime::Informer<Pod>,
    node: &str,
    request: &TokenRequest,
) -> TokenResponse {
    let refuse = |error: String| TokenResponse { id: request.id, error, ..Default::default() };
    let Some(pod) = pods.get(&ObjectKey::new(request.namespace.clone(), request.pod.clone())) else {
        return refuse(format!("pod {}/{} not found", request.namespace, request.pod));
    };
    let spec = pod.spec.clone().unwrap_or_default();
    if pod.metadata.uid.as_deref() != Some(request.pod_uid.as_str()) || spec.node_name.as_deref() != Some(node) {
        return refuse(format!("pod {}/{} is not bound to node {node}", request.namespace, request.pod));
    }
    let account = spec.service_account_name.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| "default".into());
    if account != request.service_account {
        return refuse(format!(
            "pod {} runs as service account {account}, not {}",
            request.pod, request.service_account
        ));
    }
    let mut spec = serde_json::json!({
        "audiences": request.audiences,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": request.pod, "uid": request.pod_uid},
    });
    if request.expiration_seconds > 0 {
        spec["expirationSeconds"] = request.expiration_seconds.into();
    }
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    match client.api.request_token(&request.namespace, &account, body).await {
        Ok(issued) => TokenResponse {
            id: request.id,
            token: issued.pointer("/status/token").and_then(|t| t.as_str()).unwrap_or_default().to_string(),
            expiration: issued
                .pointer("/status/expirationTimestamp")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_string(),
            error: String::new(),
        },
        Err(e) => refuse(e.to_string()),
    }
}

/// What a session loop reads: the agent's messages, and pod stream messages for the agent.
struct Inbound<'a> {
    agent: &'a mut Streaming<AgentMessage>,
    control: &'a mut mpsc::UnboundedReceiver<MemberMessage>,
}

async fn stream(
    hub: &Hub,
    name: &str,
    handle: &SessionHandle,
    upkeep: &mut Upkeep<'_>,
    register: Register,
    inbound: &mut Inbound<'_>,
    tx: &Outgoing,
) -> Result<(), String> {
    let Inbound { agent: incoming, control } = inbound;
    let mut held = Held {
        objects: register
            .known
            .into_iter()
            .map(|v| {
                (
                    Key { kind: v.kind, namespace: v.namespace, name: v.name },
                    Version { uid: v.uid, resource_version: v.resource_version },
                )
            })
            .collect(),
        uses: HashSet::new(),
    };
    hub.start_informers();
    hub.pods.wait_synced().await;
    hub.config_maps.wait_synced().await;
    hub.secrets.wait_synced().await;
    hub.claims.wait_synced().await;
    hub.volumes.wait_synced().await;
    let lease_seconds = if register.lease_duration_seconds > 0 { register.lease_duration_seconds } else { 40 };
    let mut lease: Option<Lease> = None;
    send_changes(hub, name, &mut held, tx, true).await?;
    // An agent heartbeats well within its lease; one silent for a whole lease is gone (its
    // machine may have vanished without closing the connection, which TCP alone would take
    // many minutes to notice), and its stream's resources are freed.
    let silence = Duration::from_secs(lease_seconds.max(1) as u64);
    let mut last_heard = tokio::time::Instant::now();
    let mut retry = tokio::time::interval(STATUS_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = retry.tick(), if !upkeep.unwritten.is_empty() => {
                let again: Vec<_> = upkeep.unwritten.drain().map(|(_, update)| update).collect();
                tracing::debug!(pods = again.len(), "writing pod statuses again");
                upkeep.unwritten = write_pod_statuses(hub, PodStatusBatch { pods: again }).await;
            }
            _ = tokio::time::sleep_until(last_heard + silence) => {
                return Err(format!("the agent sent nothing for {} s", silence.as_secs()));
            }
            _ = handle.wake.notified() => {
                if !hub.is_current(name, handle) {
                    return Err("a newer stream of the same node took over".into());
                }
                send_changes(hub, name, &mut held, tx, false).await?;
            }
            Some(message) = control.recv() => {
                tx.send(Ok(message)).await.map_err(|_| "the agent stopped reading".to_string())?;
            }
            message = incoming.message() => match message {
                Ok(Some(AgentMessage { message: Some(FromAgent::Stream(frame)) })) => {
                    last_heard = tokio::time::Instant::now();
                    handle.deliver(frame);
                }
                Ok(Some(AgentMessage { message: Some(FromAgent::TokenRequest(request)) })) => {
                    last_heard = tokio::time::Instant::now();
                    // Answered on its own: a token takes a store read and a signature.
                    let (client, pods, reply) = (hub.client.clone(), hub.pods.clone(), handle.control.clone());
                    let node = name.to_string();
                    tokio::spawn(async move {
                        let answer = issue_token(&client, &pods, &node, &request).await;
                        let _ = reply.send(MemberMessage { message: Some(ToAgent::Token(answer)) });
                    }.instrument(tracing::debug_span!("token_request")));
                }
                Ok(Some(AgentMessage { message: Some(message) })) => {
                    last_heard = tokio::time::Instant::now();
                    if let FromAgent::Metrics(metrics) = message {
                        publish_metrics(&mut upkeep.publisher, name, metrics).await;
                    } else if let FromAgent::PodStatus(batch) = message {
                        // A newer status replaces one waiting to be written again.
                        for update in &batch.pods {
                            upkeep.unwritten.remove(&update.uid);
                        }
                        let failed = write_pod_statuses(hub, batch).await;
                        upkeep.unwritten.extend(failed);
                    } else {
                        handle_message(hub, name, upkeep.node, lease_seconds, &mut lease, message).await;
                    }
                }
                Ok(Some(AgentMessage { message: None })) => last_heard = tokio::time::Instant::now(),
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("agent stream broke: {e}")),
            }
        }
    }
}

fn version_of(meta: &ObjectMeta) -> Version {
    Version {
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
    }
}

/// Sends what the agent lacks or holds an old version of, and what it must forget.
async fn send_changes(hub: &Hub, node: &str, held: &mut Held, tx: &Outgoing, first: bool) -> Result<(), String> {
    let pods = hub.pods_of(node);
    let mut uses = HashSet::new();
    let mut desired: HashMap<Key, (Version, &'static str, Vec<u8>)> = HashMap::with_capacity(pods.len());
    for pod in &pods {
        uses.extend(configs_of(pod));
        let key = key_of("Pod", &pod.metadata);
        if held.objects.get(&key) != Some(&version_of(&pod.metadata)) {
            let json = serde_json::to_vec(pod.as_ref()).map_err(|e| format!("encoding a pod: {e}"))?;
            desired.insert(key, (version_of(&pod.metadata), "Pod", json));
        } else {
            desired.insert(key, (version_of(&pod.metadata), "Pod", Vec::new()));
        }
    }
    // A bound claim brings its volume along (which says where the data is).
    let volumes: Vec<ConfigRef> = uses
        .iter()
        .filter(|r| r.kind == "PersistentVolumeClaim")
        .filter_map(|r| hub.claims.get(&ObjectKey::new(r.namespace.clone(), r.name.clone())))
        .filter_map(|claim| claim.spec.as_ref()?.volume_name.clone().filter(|v| !v.is_empty()))
        .map(|name| ConfigRef::volume(&name))
        .collect();
    uses.extend(volumes);
    for r in &uses {
        let key = ObjectKey::new(r.namespace.clone(), r.name.clone());
        let found = match r.kind {
            "ConfigMap" => hub.config_maps.get(&key).map(|o| (version_of(&o.metadata), serde_json::to_vec(o.as_ref()))),
            "Secret" => hub.secrets.get(&key).map(|o| (version_of(&o.metadata), serde_json::to_vec(o.as_ref()))),
            "PersistentVolumeClaim" => {
                hub.claims.get(&key).map(|o| (version_of(&o.metadata), serde_json::to_vec(o.as_ref())))
            }
            _ => hub.volumes.get(&key).map(|o| (version_of(&o.metadata), serde_json::to_vec(o.as_ref()))),
        };
        if let Some((version, json)) = found {
            let k = Key { kind: r.kind.to_string(), namespace: r.namespace.clone(), name: r.name.clone() };
            let json = if held.objects.get(&k) == Some(&version) {
                Vec::new()
            } else {
                json.map_err(|e| format!("encoding a {}: {e}", r.kind))?
            };
            desired.insert(k, (version, r.kind, json));
        }
    }
    hub.set_uses(node, &held.uses, &uses);
    held.uses = uses;

    let mut sync = Sync { upserts: Vec::new(), removals: Vec::new(), in_sync: true };
    for (key, version) in &held.objects {
        if !desired.contains_key(key) {
            sync.removals.push(ObjectVersion {
                kind: key.kind.clone(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                uid: version.uid.clone(),
                resource_version: version.resource_version.clone(),
            });
        }
    }
    let mut objects = HashMap::with_capacity(desired.len());
    for (key, (version, kind, json)) in desired {
        if !json.is_empty() {
            sync.upserts.push(SyncObject { kind: kind.to_string(), json });
        }
        objects.insert(key, version);
    }
    held.objects = objects;
    if first || !sync.upserts.is_empty() || !sync.removals.is_empty() {
        tracing::debug!(upserts = sync.upserts.len(), removals = sync.removals.len(), "sync");
        tx.send(Ok(MemberMessage { message: Some(ToAgent::Sync(sync)) }))
            .await
            .map_err(|_| "the agent went away".to_string())?;
    }
    Ok(())
}

/// Writes the node's usage where every member serves it from (`keel_api::metrics`).
async fn publish_metrics(publisher: &mut Publisher, node: &str, metrics: ResourceMetrics) {
    let usage = |u: Option<Usage>| u.unwrap_or_default();
    let total = usage(metrics.node);
    let record = NodeRecord {
        node: node.to_string(),
        timestamp_unix_nanos: metrics.timestamp_unix_nanos,
        window_millis: metrics.window_millis,
        cpu_nanocores: total.cpu_nanocores,
        memory_bytes: total.memory_working_set_bytes,
        pods: metrics
            .pods
            .into_iter()
            .map(|p| PodRecord {
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
                containers: p
                    .containers
                    .into_iter()
                    .map(|c| {
                        let u = usage(c.usage);
                        ContainerRecord {
                            name: c.name,
                            cpu_nanocores: u.cpu_nanocores,
                            memory_bytes: u.memory_working_set_bytes,
                        }
                    })
                    .collect(),
            })
            .collect(),
    };
    match publisher.publish(&record).await {
        Ok(true) => tracing::trace!(pods = record.pods.len(), "node metrics published"),
        Ok(false) => tracing::debug!("node metrics arrived sooner than the least record interval; dropped"),
        Err(e) => tracing::warn!(error = %e, "publishing the node's metrics failed"),
    }
}

fn key_of(kind: &str, meta: &ObjectMeta) -> Key {
    Key {
        kind: kind.to_string(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

async fn handle_message(
    hub: &Hub,
    node_name: &str,
    node: &Node,
    lease_seconds: i32,
    lease: &mut Option<Lease>,
    message: FromAgent,
) {
    let client = &hub.client;
    match message {
        FromAgent::Register(_) => tracing::warn!("a second Register on one stream is ignored"),
        // Pod stream frames, token requests and metrics are taken by the session loop.
        FromAgent::Stream(_) | FromAgent::TokenRequest(_) | FromAgent::Metrics(_) => {}
        FromAgent::Heartbeat(_) => {
            if let Err(e) = renew_lease(client, node_name, node, lease_seconds, lease).await {
                tracing::warn!(error = %e, "renewing the node's Lease failed");
            }
        }
        // Taken by the session loop, which keeps failed writes to try again.
        FromAgent::PodStatus(_) => {}
        FromAgent::PodFinished(finished) => {
            if let Err(e) = remove_pod(client, &finished).await {
                tracing::warn!(pod = %finished.name, error = %e, "removing a finished pod failed");
            }
        }
        FromAgent::NodeStatus(status) => match serde_json::from_slice(&status.status) {
            Ok(status) => {
                if let Err(e) = write_node_status(client, node_name, status).await {
                    tracing::warn!(error = %e, "writing the node's status failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "NodeStatus.status is not a v1.NodeStatus"),
        },
        FromAgent::Events(batch) => {
            for raw in batch.events {
                match serde_json::from_slice::<Event>(&raw) {
                    Ok(event) => {
                        let namespace = event
                            .metadata
                            .namespace
                            .clone()
                            .or_else(|| event.involved_object.namespace.clone())
                            .unwrap_or_else(|| "default".into());
                        if let Err(e) = client.create(Some(&namespace), &event).await {
                            tracing::debug!(error = %e, "recording an agent's event failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "an agent's event is not a v1.Event"),
                }
            }
        }
    }
}

/// Creates the Node, or brings an existing one up to date: the agent's labels and
/// annotations are added (an operator's own are kept), as are its taints the first time; the
/// status is the agent's.
async fn register_node(client: &Client, desired: Node) -> keel_api::error::Result<Node> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let status = desired.status.clone();
    for _ in 0..CONFLICT_RETRIES {
        let stored = match client.get::<Node>(None, &name).await {
            Ok(mut existing) => {
                let mut changed = false;
                for (field, want) in [
                    (&mut existing.metadata.labels, &desired.metadata.labels),
                    (&mut existing.metadata.annotations, &desired.metadata.annotations),
                ] {
                    for (k, v) in want.iter().flatten() {
                        let map = field.get_or_insert_with(Default::default);
                        if map.get(k) != Some(v) {
                            map.insert(k.clone(), v.clone());
                            changed = true;
                        }
                    }
                }
                if !changed {
                    existing
                } else {
                    match client.replace(None, &name, &existing).await {
                        Ok(node) => node,
                        Err(ApiError::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(ApiError::NotFound { .. }) => {
                let mut fresh = desired.clone();
                fresh.metadata.resource_version = None;
                fresh.metadata.uid = None;
                match client.create(None, &fresh).await {
                    Ok(node) => node,
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        return match status {
            Some(status) => write_node_status(client, &name, status).await,
            None => Ok(stored),
        };
    }
    Err(ApiError::Conflict {
        resource: "nodes".into(),
        name,
        message: "the Node kept changing while it was being registered".into(),
    })
}

/// Conditions of `ours` replace the same types in `theirs`; other types are kept (the node
/// lifecycle controller's, an eviction's DisruptionTarget, the scheduler's PodScheduled).
fn merge_conditions<C: Clone>(
    theirs: Option<&Vec<C>>,
    ours: Option<Vec<C>>,
    type_of: impl Fn(&C) -> &str,
) -> Option<Vec<C>> {
    let ours = ours.unwrap_or_default();
    let mut merged: Vec<C> =
        theirs.into_iter().flatten().filter(|c| !ours.iter().any(|o| type_of(o) == type_of(c))).cloned().collect();
    merged.extend(ours);
    (!merged.is_empty()).then_some(merged)
}

async fn write_node_status(
    client: &Client,
    name: &str,
    status: k8s_openapi::api::core::v1::NodeStatus,
) -> keel_api::error::Result<Node> {
    let mut last = None;
    for _ in 0..CONFLICT_RETRIES {
        let mut status = status.clone();
        let mut node = client.get::<Node>(None, name).await?;
        let current = node.status.take().unwrap_or_default();
        // A condition whose status stays keeps the time it last changed.
        for condition in status.conditions.iter_mut().flatten() {
            let before = current.conditions.iter().flatten().find(|c| c.type_ == condition.type_);
            if let Some(before) = before.filter(|b| b.status == condition.status) {
                condition.last_transition_time = before.last_transition_time.clone();
            }
        }
        status.conditions =
            merge_conditions(current.conditions.as_ref(), status.conditions.take(), |c: &NodeCondition| &c.type_);
        node.status = Some(status);
        match client.replace_status(None, name, &node).await {
            Ok(node) => return Ok(node),
            Err(e @ ApiError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::internal("node status write retries ran out")))
}

async fn renew_lease(
    client: &Client,
    node_name: &str,
    node: &Node,
    seconds: i32,
    cached: &mut Option<Lease>,
) -> keel_api::error::Result<()> {
    let now = MicroTime(k8s_openapi::chrono::Utc::now());
    for _ in 0..CONFLICT_RETRIES {
        let mut lease = match cached.take() {
            Some(lease) => lease,
            None => match client.get::<Lease>(Some(LEASE_NAMESPACE), node_name).await {
                Ok(lease) => lease,
                Err(ApiError::NotFound { .. }) => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(node_name.to_string()),
                            namespace: Some(LEASE_NAMESPACE.to_string()),
                            // As kubelet does: the Lease goes with its Node.
                            owner_references: node.metadata.uid.clone().map(|uid| {
                                vec![OwnerReference {
                                    api_version: "v1".into(),
                                    kind: "Node".into(),
                                    name: node_name.to_string(),
                                    uid,
                                    ..Default::default()
                                }]
                            }),
                            ..Default::default()
                        },
                        spec: Some(LeaseSpec {
                            holder_identity: Some(node_name.to_string()),
                            lease_duration_seconds: Some(seconds),
                            renew_time: Some(now.clone()),
                            ..Default::default()
                        }),
                    };
                    match client.create(Some(LEASE_NAMESPACE), &lease).await {
                        Ok(created) => {
                            *cached = Some(created);
                            return Ok(());
                        }
                        Err(ApiError::AlreadyExists { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            },
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.renew_time = Some(now.clone());
        spec.holder_identity = Some(node_name.to_string());
        spec.lease_duration_seconds = Some(seconds);
        match client.replace(Some(LEASE_NAMESPACE), node_name, &lease).await {
            Ok(renewed) => {
                *cached = Some(renewed);
                return Ok(());
            }
            Err(ApiError::Conflict { .. } | ApiError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal("the Lease kept changing while it was being renewed"))
}

/// Writes a batch of pod statuses; returns those whose write failed for a reason that may pass
/// (to be tried again), by pod uid.
async fn write_pod_statuses(hub: &Hub, batch: PodStatusBatch) -> HashMap<String, keel_proto::node::PodStatus> {
    let failed = parking_lot::Mutex::new(HashMap::new());
    futures::stream::iter(batch.pods)
        .for_each_concurrent(STATUS_WRITES, |update| {
            let failed = &failed;
            async move {
                let status: PodStatus = match serde_json::from_slice(&update.status) {
                    Ok(status) => status,
                    Err(e) => {
                        tracing::warn!(pod = %update.name, error = %e, "PodStatus.status is not a v1.PodStatus");
                        return;
                    }
                };
                match write_pod_status(hub, &update.namespace, &update.name, &update.uid, status).await {
                    Ok(()) => {}
                    // The pod is gone, or the status can never be written.
                    Err(e @ (ApiError::NotFound { .. } | ApiError::Invalid { .. } | ApiError::BadRequest { .. })) => {
                        tracing::debug!(pod = %update.name, error = %e, "a pod's status cannot be written");
                    }
                    Err(e) => {
                        tracing::debug!(pod = %update.name, error = %e, "writing a pod's status failed; will try again");
                        failed.lock().insert(update.uid.clone(), update);
                    }
                }
            }
        })
        .await;
    failed.into_inner()
}

async fn write_pod_status(
    hub: &Hub,
    namespace: &str,
    name: &str,
    uid: &str,
    status: PodStatus,
) -> keel_api::error::Result<()> {
    let mut current: Option<Arc<Pod>> = hub.pods.get(&ObjectKey::new(namespace, name));
    for _ in 0..CONFLICT_RETRIES {
        let mut status = status.clone();
        let pod = match current.take() {
            Some(pod) => pod,
            None => Arc::new(hub.client.get::<Pod>(Some(namespace), name).await?),
        };
        // A status for an older pod of the same name is stale.
        if pod.metadata.uid.as_deref() != Some(uid) {
            return Ok(());
        }
        let mut updated = (*pod).clone();
        let existing = updated.status.take().unwrap_or_default();
        let mut merged = status.clone();
        merged.conditions =
            merge_conditions(existing.conditions.as_ref(), status.conditions.take(), |c: &PodCondition| &c.type_);
        // The node agent does not own the scheduler's nominations.
        merged.nominated_node_name = existing.nominated_node_name.clone();
        if merged == existing {
            return Ok(());
        }
        updated.status = Some(merged);
        match hub.client.replace_status(Some(namespace), name, &updated).await {
            Ok(_) => return Ok(()),
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal("the pod kept changing while its status was being written"))
}

async fn remove_pod(client: &Client, finished: &PodFinished) -> keel_api::error::Result<()> {
    let options = DeleteOptions {
        grace_period_seconds: Some(0),
        precondition_uid: Some(finished.uid.clone()),
        ..Default::default()
    };
    match client.delete::<Pod>(Some(&finished.namespace), &finished.name, &options).await {
        Ok(_) => Ok(()),
        // Another pod of the same name by now: not ours to remove.
        Err(ApiError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str) -> PodCondition {
        PodCondition { type_: type_.into(), status: status.into(), ..Default::default() }
    }

    #[test]
    fn the_agents_conditions_replace_their_types_and_keep_the_others() {
        let theirs =
            vec![condition("PodScheduled", "True"), condition("Ready", "False"), condition("DisruptionTarget", "True")];
        let ours = vec![condition("Ready", "True"), condition("Initialized", "True")];
        let merged = merge_conditions(Some(&theirs), Some(ours), |c: &PodCondition| &c.type_).expect("merged");
        let got: Vec<(&str, &str)> = merged.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect();
        assert_eq!(
            got,
            vec![("PodScheduled", "True"), ("DisruptionTarget", "True"), ("Ready", "True"), ("Initialized", "True")]
        );
        assert_eq!(merge_conditions::<PodCondition>(None, None, |c| &c.type_), None);
    }
}
