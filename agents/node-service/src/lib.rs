//! The member's end of the node agents' streams (`keel.node.v1.NodeAgent/Session`), served on
//! the API port of every member. Each stream is one node: it registers the Node, renews its
//! Lease on each heartbeat, receives the pods bound to the node and the ConfigMaps and Secrets
//! those pods use (and nothing else), and writes back the pod and node status and Events the
//! agent reports. Writes go through the in-process API, admission included, as any client's.
//!
//! One informer per kind on the member feeds every stream it serves: a pod change wakes only
//! the stream of the pod's node, a ConfigMap or Secret change only the streams whose pods use
//! it. A stream then sends what differs from what its agent holds, so a reconnecting agent
//! (which says what it holds) receives only what changed while it was away.
//!
//! The informers start with the member's first agent stream, not with the member: a member
//! no agent talks to (a control-plane-only member, or one behind a load balancer agents do not
//! use) would otherwise hold a second copy of every Pod, ConfigMap, Secret and volume object,
//! which at 50,000 pods is most of its memory.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod refs;
mod session;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use futures::Stream;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use keel_api::podstream::{NodeTunnel, PodStream, PodStreamSink};
use keel_api::rest::Api;
use keel_proto::node::node_agent_server::{NodeAgent, NodeAgentServer};
use keel_proto::node::stream_control::Action;
use keel_proto::node::{AgentMessage, MemberMessage, StreamControl, StreamFrame, StreamOpen, member_message};
use keel_runtime::{AbortOnDrop, Client, Informer};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tonic::{Request, Response, Status, Streaming};

pub use refs::{ConfigRef, configs_of};

/// The informer index of pods by `spec.nodeName`.
const BY_NODE: &str = "node";

/// The streams this member serves, and what wakes each.
pub(crate) struct Hub {
    pub(crate) client: Client,
    pub(crate) member: String,
    pub(crate) api_address: String,
    next_pod_stream: AtomicU64,
    pub(crate) pods: Arc<Informer<Pod>>,
    pub(crate) config_maps: Arc<Informer<ConfigMap>>,
    pub(crate) secrets: Arc<Informer<Secret>>,
    pub(crate) claims: Arc<Informer<PersistentVolumeClaim>>,
    pub(crate) volumes: Arc<Informer<PersistentVolume>>,
    sessions: Mutex<HashMap<String, Arc<SessionHandle>>>,
    /// Which nodes' pods use each ConfigMap or Secret.
    users: Mutex<HashMap<ConfigRef, HashSet<String>>>,
    next_session: AtomicU64,
    /// The informers' tasks, started by the first agent stream and kept for the member's life.
    informer_tasks: OnceLock<Vec<AbortOnDrop>>,
}

pub(crate) struct SessionHandle {
    pub(crate) id: u64,
    pub(crate) wake: Notify,
    /// Pod stream messages and token answers for the agent; the session loop passes them on.
    pub(crate) control: mpsc::UnboundedSender<MemberMessage>,
    /// Open pod streams: where each one's frames from the agent go.
    pub(crate) pod_streams: Mutex<HashMap<u64, mpsc::UnboundedSender<StreamFrame>>>,
}

impl SessionHandle {
    /// Hands a frame from the agent to its pod stream; frames of closed streams are dropped.
    pub(crate) fn deliver(&self, frame: StreamFrame) {
        let mut streams = self.pod_streams.lock();
        let end = frame.end;
        let id = frame.id;
        if let Some(tx) = streams.get(&id)
            && (tx.send(frame).is_err() || end)
        {
            streams.remove(&id);
        }
    }
}

impl Hub {
    /// Starts the informers if no stream has yet; callers then wait for them to sync.
    pub(crate) fn start_informers(&self) {
        self.informer_tasks.get_or_init(|| {
            tracing::info!(member = %self.member, "first agent stream: starting the node service's informers");
            vec![
                AbortOnDrop::spawn(self.pods.clone().run()),
                AbortOnDrop::spawn(self.config_maps.clone().run()),
                AbortOnDrop::spawn(self.secrets.clone().run()),
                AbortOnDrop::spawn(self.claims.clone().run()),
                AbortOnDrop::spawn(self.volumes.clone().run()),
            ]
        });
    }

    fn wake(&self, node: &str) {
        if let Some(session) = self.sessions.lock().get(node) {
            session.wake.notify_one();
        }
    }

    fn wake_users(&self, config: &ConfigRef) {
        let nodes: Vec<String> = self.users.lock().get(config).map(|n| n.iter().cloned().collect()).unwrap_or_default();
        for node in nodes {
            self.wake(&node);
        }
    }

    /// Makes a stream the node's current one; an older stream of the same node (an agent
    /// that reconnected before its old connection was noticed dead) ends at its next turn.
    pub(crate) fn attach(&self, node: &str) -> (Arc<SessionHandle>, mpsc::UnboundedReceiver<MemberMessage>) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let handle = Arc::new(SessionHandle {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            wake: Notify::new(),
            control,
            pod_streams: Mutex::new(HashMap::new()),
        });
        if let Some(old) = self.sessions.lock().insert(node.to_string(), handle.clone()) {
            old.wake.notify_one();
        }
        (handle, control_rx)
    }

    pub(crate) fn is_current(&self, node: &str, handle: &SessionHandle) -> bool {
        self.sessions.lock().get(node).is_some_and(|h| h.id == handle.id)
    }

    pub(crate) fn detach(&self, node: &str, handle: &SessionHandle) {
        // Its pod streams end with it: their clients see the stream close.
        handle.pod_streams.lock().clear();
        let mut sessions = self.sessions.lock();
        if sessions.get(node).is_some_and(|h| h.id == handle.id) {
            sessions.remove(node);
            drop(sessions);
            self.set_uses(node, &HashSet::new(), &HashSet::new());
        }
    }

    /// Records that `node`'s pods now use `now` instead of `before`.
    pub(crate) fn set_uses(&self, node: &str, before: &HashSet<ConfigRef>, now: &HashSet<ConfigRef>) {
        let mut users = self.users.lock();
        for gone in before.difference(now) {
            if let Some(nodes) = users.get_mut(gone) {
                nodes.remove(node);
                if nodes.is_empty() {
                    users.remove(gone);
                }
            }
        }
        for new in now.difference(before) {
            users.entry(new.clone()).or_default().insert(node.to_string());
        }
    }

    pub(crate) fn pods_of(&self, node: &str) -> Vec<Arc<Pod>> {
        self.pods.by_index(BY_NODE, node)
    }
}

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct NodeService {
    hub: Arc<Hub>,
}

impl NodeService {
    /// Sets up the member's end of the agents' streams; `member` names this member in what
    /// agents are told, and `api_address` is where other members reach it (written on each Node
    /// it serves, so a `kubectl logs` taken by another member finds its way here).
    pub fn start(api: Arc<Api>, member: String, api_address: String) -> NodeService {
        let client = Client::new(api, "keel-node-service");
        let pods = Informer::<Pod>::new(client.clone());
        pods.add_index(BY_NODE, |pod: &Pod| {
            pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()).into_iter().collect()
        });
        let config_maps = Informer::<ConfigMap>::new(client.clone());
        let secrets = Informer::<Secret>::new(client.clone());
        let claims = Informer::<PersistentVolumeClaim>::new(client.clone());
        let volumes = Informer::<PersistentVolume>::new(client.clone());
        let hub = Arc::new(Hub {
            client,
            member,
            api_address,
            next_pod_stream: AtomicU64::new(1),
            pods: pods.clone(),
            config_maps: config_maps.clone(),
            secrets: secrets.clone(),
            claims: claims.clone(),
            volumes: volumes.clone(),
            sessions: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            informer_tasks: OnceLock::new(),
        });
        let weak = Arc::downgrade(&hub);
        pods.on_change(move |old, new| {
            let Some(hub) = weak.upgrade() else { return };
            for pod in [old, new].into_iter().flatten() {
                if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) {
                    hub.wake(node);
                }
            }
        });
        let weak = Arc::downgrade(&hub);
        config_maps.on_change(move |old, new| {
            let Some(hub) = weak.upgrade() else { return };
            if let Some(cm) = new.or(old) {
                hub.wake_users(&ConfigRef::config_map(&cm.metadata));
            }
        });
        let weak = Arc::downgrade(&hub);
        secrets.on_change(move |old, new| {
            let Some(hub) = weak.upgrade() else { return };
            if let Some(secret) = new.or(old) {
                hub.wake_users(&ConfigRef::secret(&secret.metadata));
            }
        });
        let weak = Arc::downgrade(&hub);
        claims.on_change(move |old, new| {
            let Some(hub) = weak.upgrade() else { return };
            if let Some(claim) = new.or(old) {
                hub.wake_users(&ConfigRef::claim(&claim.metadata));
            }
        });
        let weak = Arc::downgrade(&hub);
        volumes.on_change(move |old, new| {
            let Some(hub) = weak.upgrade() else { return };
            if let Some(volume) = new.or(old) {
                hub.wake_users(&ConfigRef::volume(volume.metadata.name.as_deref().unwrap_or_default()));
            }
        });
        NodeService { hub }
    }

    /// The tonic service, to mount on the API port.
    pub fn server(&self) -> NodeAgentServer<NodeService> {
        NodeAgentServer::new(self.clone())
            .max_decoding_message_size(keel_api::server::MAX_BODY_BYTES * 4)
            .max_encoding_message_size(usize::MAX)
    }

    /// Nodes with a stream on this member.
    pub fn connected_nodes(&self) -> usize {
        self.hub.sessions.lock().len()
    }
}

impl NodeTunnel for NodeService {
    fn open(&self, node: &str, request: StreamOpen) -> Option<PodStream> {
        let handle = self.hub.sessions.lock().get(node)?.clone();
        let id = self.hub.next_pod_stream.fetch_add(1, Ordering::Relaxed);
        let (frames_tx, frames) = mpsc::unbounded_channel();
        handle.pod_streams.lock().insert(id, frames_tx);
        let sink = StreamSink { id, control: handle.control.clone(), handle: Arc::downgrade(&handle) };
        if !sink.send(Action::Open(request)) {
            handle.pod_streams.lock().remove(&id);
            return None;
        }
        Some(PodStream::new(frames, Box::new(sink)))
    }

    fn serves(&self, node: &str) -> bool {
        self.hub.sessions.lock().contains_key(node)
    }
}

struct StreamSink {
    id: u64,
    control: mpsc::UnboundedSender<MemberMessage>,
    handle: Weak<SessionHandle>,
}

impl PodStreamSink for StreamSink {
    fn send(&self, action: Action) -> bool {
        if matches!(action, Action::Close(_))
            && let Some(handle) = self.handle.upgrade()
        {
            handle.pod_streams.lock().remove(&self.id);
        }
        let control = StreamControl { id: self.id, action: Some(action) };
        self.control.send(MemberMessage { message: Some(member_message::Message::Stream(control)) }).is_ok()
    }
}

type MemberStream = Pin<Box<dyn Stream<Item = Result<MemberMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for NodeService {
    type SessionStream = MemberStream;

    async fn session(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<MemberStream>, Status> {
        let incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let hub = self.hub.clone();
        tokio::spawn(session::run(hub, incoming, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
