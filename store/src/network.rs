//! The Raft transport between members: gRPC (the `keel.peer.Peer` service) carrying openraft's
//! messages encoded with postcard. A [`NetworkFilter`] can sit in front of every outgoing call
//! to drop, delay, partition or isolate, for fault-injection tests; without one, calls go
//! straight out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use keel_proto::peer::{self as pb, peer_client::PeerClient};
use openraft::RPCTypes;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::StreamAppendResult;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::codec::{from_bytes, to_bytes};
use crate::snapshot::{Manifest, SnapshotDir, list_files};
use crate::types::{Member, NodeId, TypeConfig};

pub const KIND_APPEND: u32 = 1;
pub const KIND_VOTE: u32 = 2;
pub const KIND_PRE_VOTE: u32 = 3;
pub const KIND_TRANSFER_LEADER: u32 = 4;

/// Bytes of snapshot data per gRPC message.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest message either side accepts: a full batch of log entries of maximum-size values.
pub const MAX_PEER_MESSAGE: usize = 256 << 20;

/// What the filter decided for one message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Deliver,
    Drop,
    Delay(Duration),
}

/// Fault injection for the transport: one filter is shared by every member of an in-process
/// cluster, and every message between two members asks it first.
#[derive(Default)]
pub struct NetworkFilter {
    rules: RwLock<Rules>,
}

#[derive(Default, Clone)]
struct Rules {
    /// Members cut off from everyone.
    isolated: BTreeSet<NodeId>,
    /// When set, members talk only within their own group.
    partition: Option<Vec<BTreeSet<NodeId>>>,
    /// Probability of dropping any message.
    drop_rate: f64,
    /// Extra latency for every message.
    delay: Duration,
    /// Links cut in one direction only: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
}

impl NetworkFilter {
    pub fn new() -> Arc<NetworkFilter> {
        Arc::new(NetworkFilter::default())
    }

    pub fn isolate(&self, node: NodeId) {
        self.rules.write().isolated.insert(node);
    }

    pub fn partition(&self, groups: Vec<Vec<NodeId>>) {
        self.rules.write().partition = Some(groups.into_iter().map(|g| g.into_iter().collect()).collect());
    }

    pub fn block(&self, from: NodeId, to: NodeId) {
        self.rules.write().blocked.insert((from, to));
    }

    pub fn set_drop_rate(&self, rate: f64) {
        self.rules.write().drop_rate = rate.clamp(0.0, 1.0);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.rules.write().delay = delay;
    }

    /// Removes every fault.
    pub fn heal(&self) {
        *self.rules.write() = Rules::default();
    }

    pub fn check(&self, from: NodeId, to: NodeId) -> Verdict {
        let rules = self.rules.read().clone();
        let cut = rules.isolated.contains(&from)
            || rules.isolated.contains(&to)
            || rules.blocked.contains(&(from, to))
            || rules
                .partition
                .as_ref()
                .is_some_and(|groups| !groups.iter().any(|g| g.contains(&from) && g.contains(&to)));
        if cut {
            return Verdict::Drop;
        }
        if rules.drop_rate > 0.0 && rand::rng().random_bool(rules.drop_rate) {
            return Verdict::Drop;
        }
        if rules.delay > Duration::ZERO {
            return Verdict::Delay(rules.delay);
        }
        Verdict::Deliver
    }
}

/// gRPC channels to other members, one per peer address, shared by every user.
#[derive(Clone, Default)]
pub struct Channels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        if let Some(channel) = self.channels.lock().get(addr) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        self.channels.lock().insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    pub fn client(&self, addr: &str) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        Ok(PeerClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }
}

/// How Raft messages to each peer fare, for operators: failures are counted per peer (etcd's
/// `etcd_network_peer_sent_failures_total`), and a peer going out of reach and coming back is
/// logged once each, with a reminder every minute in between, rather than per message.
#[derive(Clone, Default)]
pub struct PeerHealth(Arc<Mutex<BTreeMap<NodeId, Arc<PeerLink>>>>);

impl PeerHealth {
    fn link(&self, peer: NodeId) -> Arc<PeerLink> {
        self.0.lock().entry(peer).or_default().clone()
    }

    pub fn failures_by_peer(&self) -> Vec<(NodeId, u64)> {
        self.0.lock().iter().map(|(peer, link)| (*peer, link.failures.load(Ordering::Relaxed))).collect()
    }
}

/// How long a peer stays out of reach before that is logged. A member still starting, or one
/// reply that came late, is not an outage an operator needs to hear about; and a short blip
/// logged as an outage would mute the next real one (see `Outages::last_logged`).
const OUTAGE_GRACE: Duration = Duration::from_secs(1);

/// How often a member that stays out of reach is mentioned again.
const OUTAGE_REMINDER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct PeerLink {
    failures: AtomicU64,
    /// Set while the peer answers, so that a delivered message costs one load. Clear at first,
    /// so the first answer ever is seen by the slow path.
    answering: AtomicBool,
    outage: Mutex<Outages>,
}

#[derive(Default)]
struct Outages {
    current: Option<Outage>,
    /// When an outage was last logged: a link that keeps failing and recovering is logged
    /// once per reminder period, not at every flap.
    last_logged: Option<Instant>,
    /// Whether the peer has ever answered. A member not reached yet (the cluster is starting,
    /// or it was added and not started) has not been lost, and is not an outage to mute the
    /// next one for.
    reached: bool,
}

struct Outage {
    since: Instant,
    /// When the outage was last logged; `None` while it has not been.
    reported: Option<Instant>,
    failed_messages: u64,
}

/// What a failed message makes worth saying.
enum OutageNews {
    Nothing,
    /// A member this one has never reached: news at info, and no reason to mute the next
    /// outage (a new cluster's members start at their own pace).
    NotReachedYet,
    Lost,
    StillLost,
}

impl PeerLink {
    fn failed(&self, peer: NodeId, addr: &str, error: &dyn std::fmt::Display) {
        self.failed_at(Instant::now(), peer, addr, error)
    }

    fn failed_at(&self, now: Instant, peer: NodeId, addr: &str, error: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let peer = format!("{peer:x}");
        let mut guard = self.outage.lock();
        // Cleared under the lock, so that it always agrees with `current`: a delivery racing
        // this failure either closes the outage opened here or runs before it opens.
        self.answering.store(false, Ordering::Relaxed);
        let outages = &mut *guard;
        let Some(outage) = outages.current.as_mut() else {
            outages.current = Some(Outage { since: now, reported: None, failed_messages: 1 });
            tracing::debug!(%peer, %addr, %error, "a message to a member failed");
            return;
        };
        outage.failed_messages += 1;
        let out_of_reach_for = now.duration_since(outage.since);
        // An outage logged less than a reminder period ago was an earlier one: this link
        // flaps, and says so once per period. (A muted outage that lasts is logged once that
        // period is over, since it began after the logged one.)
        let recently_logged = outages.last_logged.is_some_and(|at| now.duration_since(at) < OUTAGE_REMINDER);
        let news = match outage.reported {
            Some(at) if now.duration_since(at) < OUTAGE_REMINDER => OutageNews::Nothing,
            Some(_) if !outages.reached => OutageNews::NotReachedYet,
            Some(_) => OutageNews::StillLost,
            None if out_of_reach_for < OUTAGE_GRACE => OutageNews::Nothing,
            None if !outages.reached => OutageNews::NotReachedYet,
            None if recently_logged => OutageNews::Nothing,
            None => OutageNews::Lost,
        };
        let failed_messages = outage.failed_messages;
        match news {
            OutageNews::Nothing => return,
            OutageNews::NotReachedYet => {
                tracing::info!(%peer, %addr, %error, ?out_of_reach_for, failed_messages, "member not reachable yet; retrying");
            }
            OutageNews::Lost => {
                outages.last_logged = Some(now);
                tracing::warn!(%peer, %addr, %error, ?out_of_reach_for, "lost contact with member; retrying");
            }
            OutageNews::StillLost => {
                outages.last_logged = Some(now);
                tracing::warn!(%peer, %addr, %error, ?out_of_reach_for, failed_messages, "still no contact with member");
            }
        }
        outage.reported = Some(now);
    }

    /// Records how one message to `peer` fared.
    fn observe<T, E: std::fmt::Display>(&self, peer: NodeId, addr: &str, result: &Result<T, E>) {
        match result {
            Ok(_) => self.delivered(peer, addr),
            Err(e) => self.failed(peer, addr, e),
        }
    }

    fn delivered(&self, peer: NodeId, addr: &str) {
        if self.answering.load(Ordering::Relaxed) {
            return;
        }
        self.delivered_at(Instant::now(), peer, addr)
    }

    fn delivered_at(&self, now: Instant, peer: NodeId, addr: &str) {
        let mut outages = self.outage.lock();
        self.answering.store(true, Ordering::Relaxed);
        let first_answer = !std::mem::replace(&mut outages.reached, true);
        let Some(outage) = outages.current.take() else { return };
        if outage.reported.is_none() {
            return;
        }
        let peer = format!("{peer:x}");
        let out_of_reach_for = now.duration_since(outage.since);
        let failed_messages = outage.failed_messages;
        if first_answer {
            tracing::info!(%peer, %addr, ?out_of_reach_for, failed_messages, "member reachable");
        } else {
            tracing::info!(%peer, %addr, ?out_of_reach_for, failed_messages, "member reachable again");
        }
    }
}

/// Builds the per-peer network clients openraft asks for.
#[derive(Clone)]
pub struct Network {
    pub id: NodeId,
    pub cluster_id: u64,
    pub channels: Channels,
    pub filter: Option<Arc<NetworkFilter>>,
    pub health: PeerHealth,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerNetwork {
        PeerNetwork {
            from: self.id,
            target,
            addr: node.peer_addr.clone(),
            cluster_id: self.cluster_id,
            channels: self.channels.clone(),
            filter: self.filter.clone(),
            link: self.health.link(target),
        }
    }
}

pub struct PeerNetwork {
    from: NodeId,
    target: NodeId,
    addr: String,
    cluster_id: u64,
    channels: Channels,
    filter: Option<Arc<NetworkFilter>>,
    link: Arc<PeerLink>,
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

/// Applies the filter for a message from `from` to `to`: `Err` when it must not be delivered.
pub async fn pass_filter(filter: &Option<Arc<NetworkFilter>>, from: NodeId, to: NodeId) -> Result<(), ()> {
    match filter.as_ref().map(|f| f.check(from, to)) {
        None | Some(Verdict::Deliver) => Ok(()),
        Some(Verdict::Drop) => Err(()),
        Some(Verdict::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
    }
}

fn unreachable(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

impl PeerNetwork {
    async fn call<Req, Resp>(&mut self, kind: u32, request: &Req, option: &RPCOption) -> RpcResult<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let result = self.call_once(kind, request, option).await;
        self.observe(&result);
        result
    }

    fn observe<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        self.link.observe(self.target, &self.addr, result);
    }

    async fn call_once<Req, Resp>(&mut self, kind: u32, request: &Req, option: &RPCOption) -> RpcResult<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        if pass_filter(&self.filter, self.from, self.target).await.is_err() {
            return Err(unreachable(format!("filtered: {} -> {}", self.from, self.target)));
        }
        let payload = to_bytes(request).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let mut client = self.channels.client(&self.addr).map_err(unreachable)?;
        let message = pb::RaftRequest { kind, cluster_id: self.cluster_id, payload: payload.into() };
        // Within openraft's own limit, so that a timeout is seen (and counted) here.
        let ttl = option.soft_ttl();
        let reply = match tokio::time::timeout(ttl, client.raft(message)).await {
            Err(_) => {
                let action = match kind {
                    KIND_VOTE | KIND_PRE_VOTE => RPCTypes::Vote,
                    KIND_TRANSFER_LEADER => RPCTypes::TransferLeader,
                    _ => RPCTypes::AppendEntries,
                };
                return Err(RPCError::Timeout(Timeout { action, id: self.from, target: self.target, timeout: ttl }));
            }
            Ok(Err(status)) => return Err(status_error(&status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let decoded: Result<Resp, String> =
            from_bytes(&reply.payload, "raft reply").map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        // The remote Raft has stopped; to this member it is simply not there.
        decoded.map_err(unreachable)
    }
}

/// Maps a gRPC failure to what openraft should do about it: back off from a member that is
/// down, retry at once otherwise.
fn status_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition => unreachable(status.message()),
        _ => RPCError::Network(NetworkError::from_string(format!("{}: {}", status.code(), status.message()))),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotDir;

    /// Pipelined replication over one long-lived gRPC stream: requests go out as openraft
    /// produces them and acknowledgements come back as the follower flushes, instead of one
    /// unary call (and one round trip of waiting) per batch. The fault filter is consulted per
    /// message: a cut link ends the stream with `Unreachable`.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            // openraft waits out its backoff after a failed session while it produces the next
            // request, so the first one is taken before connecting. A transport that connects
            // first never waits: a peer that refuses connections (a killed member) is retried
            // as fast as connect() fails, tens of thousands of times a second, with two
            // warnings logged each time.
            let mut input = input;
            let Some(first) = input.next().await else {
                // Nothing to send: openraft ended this session before it began.
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            let input = futures::stream::iter([first]).chain(input);
            if pass_filter(&self.filter, self.from, self.target).await.is_err() {
                let refused = Err(unreachable(format!("filtered: {} -> {}", self.from, self.target)));
                self.observe(&refused);
                return refused;
            }
            let (filter, from, target, cluster_id) = (self.filter.clone(), self.from, self.target, self.cluster_id);
            let cut = Arc::new(AtomicBool::new(false));
            let cut_out = cut.clone();
            let outgoing = input
                .then(move |request| {
                    let filter = filter.clone();
                    let cut = cut_out.clone();
                    async move {
                        if pass_filter(&filter, from, target).await.is_err() {
                            cut.store(true, Ordering::Relaxed);
                            return None;
                        }
                        let payload = to_bytes(&request).ok()?;
                        Some(pb::RaftRequest { kind: KIND_APPEND, cluster_id, payload: payload.into() })
                    }
                })
                .take_while(|r| futures::future::ready(r.is_some()))
                .filter_map(futures::future::ready);
            let opened = async {
                let mut client = self.channels.client(&self.addr).map_err(unreachable)?;
                // Within openraft's own limit (it times heartbeats out at the hard TTL), so
                // that a peer that does not answer is seen, and counted, here.
                match tokio::time::timeout(option.soft_ttl(), client.stream_append(outgoing)).await {
                    Err(_) => Err(RPCError::Timeout(Timeout {
                        action: RPCTypes::AppendEntries,
                        id: from,
                        target,
                        timeout: option.soft_ttl(),
                    })),
                    Ok(Err(status)) => Err(status_error(&status)),
                    Ok(Ok(response)) => Ok(response.into_inner()),
                }
            };
            let opened = opened.await;
            self.observe(&opened);
            let replies = opened?;
            let (link, addr) = (self.link.clone(), self.addr.clone());
            let results = replies.map(move |reply| {
                let result = reply.map_err(|status| status_error(&status)).and_then(|reply| {
                    let decoded: Result<StreamAppendResult<TypeConfig>, String> =
                        from_bytes(&reply.payload, "append reply")
                            .map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
                    decoded.map_err(unreachable)
                });
                link.observe(target, &addr, &result);
                result
            });
            let ended_by_filter = futures::stream::once(async move {
                cut.load(Ordering::Relaxed).then(|| Err(unreachable(format!("filtered: {from} -> {target}"))))
            })
            .filter_map(futures::future::ready);
            Ok(Box::pin(results.chain(ended_by_filter)) as BoxStream<'s, _>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        self.call(KIND_APPEND, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> RpcResult<VoteResponse<TypeConfig>> {
        self.call(KIND_VOTE, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.call(KIND_PRE_VOTE, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        self.call(KIND_TRANSFER_LEADER, &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotDir>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let result = self.send_snapshot(vote, snapshot, cancel, option).await;
        match &result {
            // Cancelled by openraft, or a local read that failed: nothing about the peer.
            Err(StreamingError::Closed(_) | StreamingError::StorageError(_)) => {}
            other => self.observe(other),
        }
        if let Err(e) = &result {
            tracing::warn!(target = %format!("{:x}", self.target), error = %e, "sending a snapshot failed");
        }
        result
    }
}

impl PeerNetwork {
    async fn send_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotDir>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let streaming = |e: String| StreamingError::Network(NetworkError::from_string(e));
        if pass_filter(&self.filter, self.from, self.target).await.is_err() {
            return Err(StreamingError::Unreachable(Unreachable::from_string("filtered")));
        }
        let dir = snapshot.snapshot.path.clone();
        let files = list_files(&dir).map_err(|e| streaming(e.to_string()))?;
        let manifest = Manifest { vote, meta: snapshot.meta, files: files.clone() };
        let manifest = to_bytes(&manifest).map_err(|e| streaming(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let reader = tokio::spawn(async move {
            if tx.send(pb::SnapshotChunk { manifest: manifest.into(), ..Default::default() }).await.is_err() {
                return Ok(());
            }
            for (name, size) in files {
                let mut file = tokio::fs::File::open(dir.join(&name)).await?;
                let mut offset = 0u64;
                // An empty file still gets one (empty) chunk, so that it is created.
                let mut first = true;
                while offset < size || std::mem::take(&mut first) {
                    let mut buf = vec![0u8; SNAPSHOT_CHUNK.min((size - offset) as usize)];
                    file.read_exact(&mut buf).await?;
                    let len = buf.len() as u64;
                    let chunk =
                        pb::SnapshotChunk { file: name.clone(), offset, data: buf.into(), ..Default::default() };
                    if tx.send(chunk).await.is_err() {
                        return Ok(());
                    }
                    offset += len;
                }
            }
            Ok::<(), std::io::Error>(())
        });
        let mut client =
            self.channels.client(&self.addr).map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let send = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let ttl = option.hard_ttl().max(Duration::from_secs(600));
        let reply = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = tokio::time::timeout(ttl, send) => r,
        };
        let reply = match reply {
            Err(_) => {
                return Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.from,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) => return Err(streaming(format!("{}: {}", status.code(), status.message()))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(streaming(format!("reading snapshot files: {e}"))),
            Err(e) => return Err(streaming(format!("snapshot reader: {e}"))),
        }
        let decoded: Result<SnapshotResponse<TypeConfig>, String> =
            from_bytes(&reply.payload, "snapshot reply").map_err(|e| streaming(e.to_string()))?;
        decoded.map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;

    /// Keeps each event's level and message.
    struct Lines(Arc<Mutex<Vec<(Level, String)>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().push((*event.metadata().level(), message.0));
        }
    }

    const PEER: NodeId = 7;
    const ADDR: &str = "127.0.0.1:2380";

    /// Runs `events` and returns what they logged at info and above.
    fn logged(events: impl FnOnce()) -> Vec<(Level, String)> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(Lines(lines.clone())), events);
        let lines = lines.lock();
        lines.iter().filter(|(level, _)| *level <= Level::INFO).cloned().collect()
    }

    /// Fails a message every `step_ms` from `from_ms` until `to_ms`, counting from `start`.
    fn fail_between(link: &PeerLink, start: Instant, from_ms: u64, to_ms: u64, step_ms: usize) {
        for ms in (from_ms..to_ms).step_by(step_ms) {
            link.failed_at(start + Duration::from_millis(ms), PEER, ADDR, &"connection refused");
        }
    }

    fn deliver_at(link: &PeerLink, start: Instant, ms: u64) {
        link.delivered_at(start + Duration::from_millis(ms), PEER, ADDR);
    }

    fn expect(lines: &[(Level, &str)]) -> Vec<(Level, String)> {
        lines.iter().map(|(level, message)| (*level, message.to_string())).collect()
    }

    #[test]
    fn an_outage_is_logged_when_it_starts_and_ends_and_a_flapping_link_once() {
        let link = PeerLink::default();
        let start = Instant::now();
        let lines = logged(|| {
            deliver_at(&link, start, 0);
            // A blip shorter than the grace period: counted, not logged.
            fail_between(&link, start, 0, 600, 300);
            deliver_at(&link, start, 600);
            // An outage: two seconds of heartbeats failing.
            fail_between(&link, start, 1_000, 3_000, 50);
            deliver_at(&link, start, 3_000);
            deliver_at(&link, start, 3_050);
            // The link fails again within the minute: counted, logged at debug only.
            fail_between(&link, start, 10_000, 12_000, 50);
            deliver_at(&link, start, 12_000);
            // Once more, and this time it stays down for three minutes: said once the minute
            // since the last logged outage is over, then once a minute.
            fail_between(&link, start, 20_000, 200_000, 1_000);
            deliver_at(&link, start, 200_000);
        });
        let expected = [
            (Level::WARN, "lost contact with member; retrying"),
            (Level::INFO, "member reachable again"),
            (Level::WARN, "lost contact with member; retrying"),
            (Level::WARN, "still no contact with member"),
            (Level::WARN, "still no contact with member"),
            (Level::INFO, "member reachable again"),
        ];
        assert_eq!(lines, expect(&expected));
        assert_eq!(link.failures.load(Ordering::Relaxed), 2 + 40 + 40 + 180);
    }

    /// Members of a new cluster start at their own pace; one not reached yet has not been lost,
    /// however long that takes, and must not mute the warning when it is lost for real.
    #[test]
    fn a_member_not_reached_yet_is_not_an_outage() {
        let start = Instant::now();
        let link = PeerLink::default();
        let quick_start = logged(|| {
            fail_between(&link, start, 0, 300, 50);
            deliver_at(&link, start, 300);
        });
        assert_eq!(quick_start, []);

        for (reached_after_ms, reminders) in [(2_000, 0), (130_000, 2)] {
            let link = PeerLink::default();
            let lines = logged(|| {
                fail_between(&link, start, 0, reached_after_ms, 50);
                deliver_at(&link, start, reached_after_ms);
                let again = reached_after_ms + 5_000;
                fail_between(&link, start, again, again + 2_000, 50);
                deliver_at(&link, start, again + 2_000);
            });
            let mut expected = vec![(Level::INFO, "member not reachable yet; retrying"); 1 + reminders];
            expected.extend([
                (Level::INFO, "member reachable"),
                (Level::WARN, "lost contact with member; retrying"),
                (Level::INFO, "member reachable again"),
            ]);
            assert_eq!(lines, expect(&expected), "reached after {reached_after_ms} ms");
        }
    }
}
