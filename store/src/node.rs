//! [`Store`]: one member of the replicated store. It owns the Raft node, its storage and its
//! peer transport, routes what only the leader can do to the leader, and serves reads from
//! its own replica (linearizable through ReadIndex unless the caller asks otherwise).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_prometheus::Counter;
use keel_proto::etcdserverpb as pb;
use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::peer as peer_pb;
use openraft::alias::WatchReceiverOf;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, Config, RaftMetrics, ReadPolicy, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::codec::{from_bytes, to_bytes};
use crate::error::{Result, StoreError};
use crate::lease::{Lessor, MAX_LEASE_TTL};
use crate::log_store::LogStore;
use crate::member::{Identity, MemberInfo, members_of};
use crate::mvcc::View;
use crate::network::{Channels, Network, NetworkFilter, PeerHealth, pass_filter};
use crate::peer::PeerService;
use crate::read_index::ReadIndexBatcher;
use crate::state_machine::{SmShared, StateMachine};
use crate::txn;
use crate::types::{Command, CommandResult, Member, NodeId, Outcome, TypeConfig, cluster_id_for, member_id_for};
use crate::watch::{WatchSpec, Watcher};

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Pause before a ReadIndex round that a quorum did not confirm is tried again.
const READ_INDEX_RETRY: Duration = Duration::from_millis(25);

/// How a brand-new member comes into a cluster. Ignored once the data directory holds one.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// `--initial-cluster`: the (name, peer address) of every founding member, this one included.
    InitialCluster(Vec<(String, String)>),
    /// `--join`: etcd API endpoints of existing members.
    Join(Vec<String>),
}

/// Records, and bytes of them, a range may visit on the async worker before it is handed to
/// the blocking pool.
const INLINE_RANGE_RECORDS: usize = 256;
const INLINE_RANGE_BYTES: usize = 1 << 20;

/// Timing and retention knobs.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_entries: u64,
    /// Entries kept behind a snapshot so a briefly lagging follower catches up from the log.
    pub keep_entries: u64,
    /// How long a request waits for a leader and an answer.
    pub request_timeout: Duration,
    /// Automatic compaction keeps at least this much history...
    pub history_retention: Duration,
    /// ...and at most this many revisions of it.
    pub history_max_revisions: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_entries: 20_000,
            keep_entries: 10_000,
            request_timeout: Duration::from_secs(7),
            history_retention: Duration::from_secs(300),
            history_max_revisions: 10_000_000,
        }
    }
}

#[derive(Clone)]
pub struct StoreConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Advertised `host:port` of the peer listener.
    pub peer_addr: String,
    /// Advertised `host:port` of the etcd API.
    pub client_addr: String,
    /// Advertised `host:port` of the Kubernetes API, empty if not served.
    pub api_addr: String,
    pub bootstrap: Bootstrap,
    pub tuning: Tuning,
    /// Fault injection for tests; `None` in production.
    pub filter: Option<Arc<NetworkFilter>>,
}

/// A request only the leader can serve, sent there by whichever member received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    Propose(Command),
    ReadIndex,
    LeaseKeepAlive(i64),
    LeaseTimeToLive(i64),
    /// Add a member; as a voter once it has caught up when `voter` is set.
    AddMember {
        id: NodeId,
        member: Member,
        voter: bool,
        wait_caught_up: bool,
    },
    PromoteMember(NodeId),
    RemoveMember(NodeId),
    UpdateMember(NodeId, Member),
    TransferLeader(NodeId),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardOk {
    Applied(CommandResult),
    ReadIndex(u64),
    KeepAlive(Option<i64>),
    TimeToLive(Option<(i64, i64)>),
    /// The membership after a change, as the leader sees it once the change is committed.
    Members(Vec<MemberInfo>),
    Done,
}

/// A member's view of itself and the cluster, for status reporting.
#[derive(Debug, Clone)]
pub struct StoreStatus {
    pub id: NodeId,
    pub cluster_id: u64,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub state: ServerState,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// Log entries at or below this index were purged (they live on in the snapshot).
    pub purged_index: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub db_size: u64,
    pub is_learner: bool,
}

#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) cluster_id: u64,
    pub(crate) config: StoreConfig,
    pub(crate) raft: Raft,
    pub(crate) sm: Arc<SmShared>,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: LogStore,
    channels: Channels,
    forwarders: crate::forward::Forwarders,
    read_index: ReadIndexBatcher,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    peer_server: Mutex<Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>>,
    /// Leaders this member has seen elected (etcd's `leader_changes_seen_total`).
    pub(crate) leader_changes: Counter,
    /// Proposals made here that did not commit: no leader in time, a lost leadership, a
    /// timeout (etcd's `proposals_failed_total`).
    pub(crate) proposals_failed: Counter,
    pub(crate) peer_health: PeerHealth,
    /// Held while a membership change is made here as leader (see `retry_while_in_progress`).
    membership_changes: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens (or creates) the member in `config.data_dir` and starts it, serving the peer
    /// protocol on `peer_listener`. A brand-new member bootstraps or joins as configured
    /// before this returns.
    #[tracing::instrument(name = "store_start", skip_all, fields(name = %config.name))]
    pub async fn start(config: StoreConfig, peer_listener: TcpListener) -> Result<Store> {
        let data_dir = config.data_dir.clone();
        let (identity, fresh) = load_or_create_identity(&config).await?;
        let id = identity.member_id;
        let cluster_id = identity.cluster_id;

        let log = LogStore::open(&data_dir.join("raft"), fresh)?;
        let election_max_secs = config.tuning.election_timeout.1.as_secs_f64();
        let lessor = Arc::new(Lessor::new((election_max_secs * 1.5).ceil().max(1.0) as i64));
        let sm = StateMachine::open(&data_dir, fresh, lessor)?;
        let shared = sm.shared();
        check_log_covers_state(&log, &sm)?;

        let tuning = &config.tuning;
        let raft_config = Config {
            cluster_name: format!("keel-{cluster_id:x}"),
            heartbeat_interval: tuning.heartbeat.as_millis() as u64,
            election_timeout_min: tuning.election_timeout.0.as_millis() as u64,
            election_timeout_max: tuning.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_entries),
            max_in_snapshot_log_to_keep: tuning.keep_entries,
            install_snapshot_timeout: 600_000,
            max_payload_entries: 1024,
            enable_pre_vote: Some(true),
            broadcast_submitted_on_append: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::InvalidArgument(format!("raft configuration: {e}")))?;

        let channels = Channels::default();
        let peer_health = PeerHealth::default();
        let network = Network {
            id,
            cluster_id,
            channels: channels.clone(),
            filter: config.filter.clone(),
            health: peer_health.clone(),
        };
        // Built but not yet running: the peer service must be answering before this member
        // campaigns, or its first votes land on peers that cannot reply yet.
        let raft = Raft::build(id, Arc::new(raft_config), network, log.clone(), sm)
            .await
            .map_err(|e| StoreError::Internal(format!("start raft: {e}")))?;

        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            let read_index = ReadIndexBatcher::new(move || {
                let weak = weak.clone();
                async move {
                    let inner = weak.upgrade().ok_or(StoreError::Stopped)?;
                    let store = Store { inner };
                    match store.route(ForwardRequest::ReadIndex).await? {
                        ForwardOk::ReadIndex(index) => Ok(index),
                        other => Err(StoreError::Internal(format!("read index answered {other:?}"))),
                    }
                }
            });
            Inner {
                id,
                cluster_id,
                config: config.clone(),
                raft,
                sm: shared,
                data_dir: data_dir.clone(),
                log,
                channels,
                forwarders: Default::default(),
                read_index,
                tasks: Mutex::new(Vec::new()),
                peer_server: Mutex::new(None),
                leader_changes: Counter::default(),
                proposals_failed: Counter::default(),
                peer_health,
                membership_changes: tokio::sync::Mutex::new(()),
            }
        });
        let store = Store { inner };
        store.spawn(Store::follow_leadership_and_membership);
        store.serve_peers(peer_listener);
        store.inner.raft.run();

        if fresh {
            match &config.bootstrap {
                Bootstrap::InitialCluster(members) => store.initialize(members).await?,
                Bootstrap::Join(_) => store.join().await?,
            }
        }
        if let Err(e) = store.inner.raft.wait_for_recovery(Some(Duration::from_secs(10))).await {
            tracing::warn!(error = %e, "state machine still catching up after restart");
        }
        store.spawn(Store::leader_duties);
        store.spawn(Store::announce_self);
        tracing::info!(id = %format!("{id:x}"), cluster = %format!("{cluster_id:x}"), "store member started");
        Ok(store)
    }

    fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(Store) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(self.clone()));
        self.inner.tasks.lock().push(handle);
    }

    /// Counts and logs each new leader this member learns of, as etcd does: a change to a
    /// known leader from another or from none (so a leader lost and elected again counts, when
    /// this member noticed the gap); and logs each committed change of who is in the cluster.
    /// The server metrics change only with the vote, state, leader or membership, not with
    /// every applied entry, so this wakes rarely.
    async fn follow_leadership_and_membership(self) {
        let mut metrics = self.inner.raft.server_metrics();
        let mut last = None;
        let mut last_members = Vec::new();
        loop {
            let (leader, term, membership) = {
                let m = metrics.borrow_watched();
                (m.current_leader, m.vote.leader_id().term, m.committed_membership_config.clone())
            };
            // Who is in the cluster and in what role; members announcing their client
            // addresses are membership changes too, but not news to an operator.
            let members: Vec<String> = members_of(&membership)
                .iter()
                .map(|m| {
                    let role = if m.is_learner { "learner" } else { "voter" };
                    format!("{}={:x} {role} at {}", m.member.name, m.id, m.member.peer_addr)
                })
                .collect();
            if members != last_members {
                tracing::info!(?members, "cluster membership committed");
                last_members = members;
            }
            match (leader, last) {
                (Some(new), _) if leader != last => {
                    self.inner.leader_changes.inc();
                    tracing::info!(leader = %format!("{new:x}"), term, "leader elected");
                }
                (None, Some(old)) => {
                    tracing::info!(previous = %format!("{old:x}"), term, "lost the leader");
                }
                _ => {}
            }
            last = leader;
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    fn serve_peers(&self, listener: TcpListener) {
        let service = PeerService::new(&self.inner);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Accepted sockets need TCP_NODELAY set here: the builder's own setting only applies to
        // listeners tonic binds itself, and Nagle's algorithm would hold small responses back.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "peer server failed");
            }
        });
        *self.inner.peer_server.lock() = Some((stop_tx, server));
    }

    async fn initialize(&self, members: &[(String, String)]) -> Result<()> {
        let nodes: BTreeMap<NodeId, Member> = members
            .iter()
            .map(|(name, peer)| {
                (member_id_for(peer), Member { name: name.clone(), peer_addr: peer.clone(), ..Default::default() })
            })
            .collect();
        match self.inner.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            // Another founding member got there first and this one already heard from it.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StoreError::Internal(format!("initialize cluster: {e}"))),
        }
    }

    /// Asks the cluster to add this member, as a learner that becomes a voter once caught up.
    async fn join(&self) -> Result<()> {
        let Bootstrap::Join(endpoints) = &self.inner.config.bootstrap else {
            return Ok(());
        };
        let me = self.desired_member();
        let request = ForwardRequest::AddMember { id: self.inner.id, member: me, voter: true, wait_caught_up: true };
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut last_error = StoreError::NoLeader;
        while Instant::now() < deadline {
            for endpoint in endpoints {
                let peers = match discover(endpoint).await {
                    Ok((_, peers)) => peers,
                    Err(e) => {
                        last_error = e;
                        continue;
                    }
                };
                for peer in peers.iter().filter(|p| **p != self.inner.config.peer_addr) {
                    match self.forward_to(peer, &request, Duration::from_secs(600)).await {
                        Ok(_) => {
                            tracing::info!(via = %peer, "joined the cluster");
                            return Ok(());
                        }
                        Err(e) => last_error = e,
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(StoreError::Unavailable(format!("could not join the cluster: {last_error}")))
    }

    fn desired_member(&self) -> Member {
        let c = &self.inner.config;
        Member {
            name: c.name.clone(),
            peer_addr: c.peer_addr.clone(),
            client_addr: c.client_addr.clone(),
            api_addr: c.api_addr.clone(),
        }
    }

    /// Keeps this member's entry in the membership (name, addresses) what its flags say.
    async fn announce_self(self) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let current = metrics.borrow_watched().membership_config.get_node(&self.inner.id).cloned();
            let desired = self.desired_member();
            if let Some(current) = current {
                if current == desired {
                    return;
                }
                match self.route(ForwardRequest::UpdateMember(self.inner.id, desired)).await {
                    Ok(_) => return,
                    Err(e) => tracing::debug!(error = %e, "announcing member addresses; will retry"),
                }
            }
            tokio::select! {
                _ = metrics.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Runs what only the leader does (lease expiry, automatic compaction) while this member
    /// leads, and stops it when it does not.
    async fn leader_duties(self) {
        let mut metrics = self.inner.raft.metrics();
        let mut running: Vec<JoinHandle<()>> = Vec::new();
        loop {
            let leading = {
                let m = metrics.borrow_watched();
                m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
            };
            if leading && running.is_empty() {
                tracing::info!("became leader: starting lease expiry and compaction");
                self.inner.sm.lessor().promote();
                running.push(tokio::spawn(self.clone().expire_leases()));
                running.push(tokio::spawn(self.clone().compact_history()));
            } else if !leading && !running.is_empty() {
                tracing::info!("no longer leader: stopping leader duties");
                for task in running.drain(..) {
                    task.abort();
                }
            }
            if metrics.changed().await.is_err() {
                break;
            }
        }
        for task in running {
            task.abort();
        }
    }

    async fn expire_leases(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            for id in self.inner.sm.lessor().take_expired() {
                let store = self.clone();
                tokio::spawn(async move {
                    match store.propose(Command::LeaseRevoke { id }).await {
                        Ok(_) => tracing::debug!(lease = %format!("{id:x}"), "lease expired and revoked"),
                        Err(e) => {
                            tracing::warn!(lease = %format!("{id:x}"), error = %e, "revoking expired lease failed");
                            store.inner.sm.lessor().revoke_failed(id);
                        }
                    }
                });
            }
        }
    }

    /// Proposes a compaction whenever history is older than the retention or longer than the
    /// revision cap.
    async fn compact_history(self) {
        let tuning = self.inner.config.tuning.clone();
        let period = (tuning.history_retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut samples: std::collections::VecDeque<(Instant, i64)> = Default::default();
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let current = self.inner.sm.applied_revision();
            samples.push_back((now, current));
            let mut by_age = None;
            while let Some(&(at, rev)) = samples.front() {
                if now.duration_since(at) < tuning.history_retention {
                    break;
                }
                by_age = Some(rev);
                samples.pop_front();
            }
            // Keep the last sample old enough so the next tick can use it again.
            if let Some(rev) = by_age {
                samples.push_front((now - tuning.history_retention, rev));
            }
            let by_count = current - tuning.history_max_revisions as i64;
            let target = by_age.unwrap_or(0).max(by_count);
            let compacted = match View::snapshot(&self.inner.sm.db()).compacted() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "reading compaction horizon");
                    continue;
                }
            };
            // A compaction entry is itself a revision: an idle store would otherwise compact
            // the one before it, forever.
            if target > compacted + 1 {
                match self.propose(Command::Compact { revision: target }).await {
                    Ok(_) => tracing::info!(revision = target, "compacted history"),
                    Err(e) => tracing::warn!(revision = target, error = %e, "automatic compaction failed"),
                }
            }
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Store {
        Store { inner }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn metrics(&self) -> WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>> {
        self.inner.raft.metrics()
    }

    /// The state machine, for reads and watches.
    pub fn state(&self) -> &Arc<SmShared> {
        &self.inner.sm
    }

    /// Whether this member can serve writes and linearizable reads now, with the reason when
    /// not, found as kube-apiserver's etcd check finds it: by doing it. A linearizable read
    /// round (ReadIndex, confirmed by a quorum) must finish within the longest election
    /// timeout. A member cut off from the majority, or led by a leader that lost its own,
    /// fails it where its requests would only wait and time out.
    pub async fn readiness(&self) -> std::result::Result<(), String> {
        let limit = self.inner.config.tuning.election_timeout.1;
        match tokio::time::timeout(limit, self.inner.read_index.read_index()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("a linearizable read did not complete within {limit:?}")),
        }
    }

    /// Whether this member is the Raft leader right now.
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    pub fn current_term(&self) -> u64 {
        self.inner.raft.metrics().borrow_watched().current_term
    }

    /// Replicates `command` through the leader and returns what applying it produced.
    #[tracing::instrument(level = "debug", skip_all, fields(command = %command))]
    pub async fn propose(&self, command: Command) -> Result<CommandResult> {
        let routed = self.route(ForwardRequest::Propose(command)).await;
        if routed.is_err() {
            self.inner.proposals_failed.inc();
        }
        match routed? {
            ForwardOk::Applied(result) => {
                // Wait for this member to apply it too, so a read here sees the write.
                let _ = self.wait_applied(result.revision as u64, Duration::from_secs(1)).await;
                Ok(result)
            }
            other => Err(StoreError::Internal(format!("proposal answered {other:?}"))),
        }
    }

    /// An etcd transaction. Read-only ones are served like linearizable reads, without a log
    /// entry; the others go through the log.
    pub async fn txn(&self, request: pb::TxnRequest) -> Result<(pb::TxnResponse, i64)> {
        txn::validate(&request)?;
        if is_read_only(&request) {
            self.linearize().await?;
            let db = self.inner.sm.db();
            let view = View::snapshot(&db);
            let revision = view.revision()?;
            let response = txn::read_only(&view, &request)?;
            return Ok((response, revision));
        }
        let result = self.propose(Command::Txn(request)).await?;
        match result.outcome? {
            Outcome::Txn(response) => Ok((response, result.revision)),
            other => Err(StoreError::Internal(format!("txn applied as {other:?}"))),
        }
    }

    /// An etcd range: linearizable unless `serializable` is set.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn range(&self, request: &pb::RangeRequest) -> Result<(pb::RangeResponse, i64)> {
        if request.key.is_empty() {
            return Err(StoreError::InvalidArgument("key is not provided".into()));
        }
        if !request.serializable {
            self.linearize().await?;
        }
        if let Some(mirrored) = self.inner.sm.mirrors.range(request) {
            return Ok(mirrored);
        }
        // A single key is a point lookup, cheaper than a hop to the blocking pool; a range
        // may scan many keys and must not hold up the async workers. Most ranges are small
        // (admission reads a namespace's quotas or limit ranges on every create), and the hop
        // costs two thread switches: a range is tried here first and handed to the pool only
        // once it visits more than a few hundred records or a MiB.
        if request.range_end.is_empty() {
            return crate::state_machine::range(&self.inner.sm, request);
        }
        if let Some(small) =
            crate::state_machine::range_within(&self.inner.sm, request, INLINE_RANGE_RECORDS, INLINE_RANGE_BYTES)?
        {
            return Ok(small);
        }
        let shared = self.inner.sm.clone();
        let request = request.clone();
        tokio::task::spawn_blocking(move || crate::state_machine::range(&shared, &request))
            .await
            .map_err(|e| StoreError::Internal(format!("range task: {e}")))?
    }

    /// Keeps every key under `prefix` in memory as well, so that reads of the latest revision
    /// within it are answered without touching the database (see [`crate::mirror`]). For
    /// small, hot prefixes only: the whole prefix is held.
    pub fn mirror(&self, prefix: &[u8]) -> Result<()> {
        self.inner.sm.mirrors.register(prefix, || self.inner.sm.db())
    }

    /// Keys held in memory by [`Store::mirror`].
    pub fn mirrored_keys(&self) -> usize {
        self.inner.sm.mirrors.len()
    }

    /// Returns once this member's replica reflects every write acknowledged before the call.
    pub async fn linearize(&self) -> Result<()> {
        let index = self.inner.read_index.read_index().await?;
        self.wait_applied(index, self.inner.config.tuning.request_timeout).await
    }

    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let mut applied = self.inner.sm.subscribe_applied();
        let wait = applied.wait_for(|rev| *rev >= index as i64);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Stopped),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    pub fn watch(&self, spec: WatchSpec) -> Result<Watcher> {
        self.inner.sm.watch(spec)
    }

    /// Grants a lease; `id` 0 lets the store choose one.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64, i64)> {
        if ttl > MAX_LEASE_TTL {
            return Err(StoreError::InvalidArgument("too large lease TTL".into()));
        }
        if id < 0 {
            return Err(StoreError::InvalidArgument("lease id must be positive".into()));
        }
        let lessor = self.inner.sm.lessor();
        let id = if id != 0 {
            id
        } else {
            loop {
                let candidate = (rand::random::<u64>() >> 1) as i64;
                if candidate != 0 && !lessor.contains(candidate) {
                    break candidate;
                }
            }
        };
        let ttl = lessor.effective_ttl(ttl);
        let result = self.propose(Command::LeaseGrant { id, ttl }).await?;
        result.outcome?;
        Ok((id, ttl, result.revision))
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<i64> {
        let result = self.propose(Command::LeaseRevoke { id }).await?;
        result.outcome?;
        Ok(result.revision)
    }

    /// Renews a lease on the leader; `None` if it does not exist (any more).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>> {
        match self.route(ForwardRequest::LeaseKeepAlive(id)).await? {
            ForwardOk::KeepAlive(ttl) => Ok(ttl),
            other => Err(StoreError::Internal(format!("keep-alive answered {other:?}"))),
        }
    }

    /// (remaining, granted) TTL of a lease as the leader sees it; `None` if it does not exist.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>> {
        match self.route(ForwardRequest::LeaseTimeToLive(id)).await? {
            ForwardOk::TimeToLive(ttl) => Ok(ttl),
            other => Err(StoreError::Internal(format!("time-to-live answered {other:?}"))),
        }
    }

    pub fn lease_ids(&self) -> Vec<i64> {
        self.inner.sm.lessor().ids()
    }

    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        View::snapshot(&self.inner.sm.db()).lease_keys(id)
    }

    /// Compacts history below `revision`; with `physical`, waits until this member's disk no
    /// longer holds it.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<i64> {
        let result = self.propose(Command::Compact { revision }).await?;
        result.outcome?;
        if physical {
            let shared = self.inner.sm.clone();
            let deadline = Instant::now() + self.inner.config.tuning.request_timeout;
            loop {
                let done = View::snapshot(&shared.db()).compacted_physical()? >= revision;
                if done {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(StoreError::Timeout);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(result.revision)
    }

    /// The Kubernetes API addresses of the members this leader has had a heartbeat answer from
    /// within `within`, its own included; empty on a member that does not lead. What the
    /// `kubernetes` Service lists, as kube lists the API servers whose leases are fresh.
    pub fn live_api_addresses(&self, within: Duration) -> Vec<String> {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return Vec::new();
        }
        let acked = metrics.heartbeat.unwrap_or_default();
        members_of(&metrics.membership_config)
            .into_iter()
            .filter(|m| {
                m.id == self.inner.id
                    || acked
                        .get(&m.id)
                        .and_then(|at| at.as_ref())
                        .is_some_and(|at| openraft::Instant::elapsed(&**at) < within)
            })
            .map(|m| m.member.api_addr)
            .filter(|address| !address.is_empty())
            .collect()
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        members_of(&self.inner.raft.metrics().borrow_watched().membership_config)
    }

    /// etcd's MemberAdd: registers a member by peer address; it joins when started. Returns
    /// the new member and the membership after the change.
    pub async fn add_member(&self, peer_addr: &str, as_learner: bool) -> Result<(MemberInfo, Vec<MemberInfo>)> {
        let id = member_id_for(peer_addr);
        let member = Member { peer_addr: peer_addr.to_string(), ..Default::default() };
        let members = membership_reply(
            self.route(ForwardRequest::AddMember {
                id,
                member: member.clone(),
                voter: !as_learner,
                wait_caught_up: false,
            })
            .await?,
        )?;
        Ok((MemberInfo { id, member, is_learner: as_learner }, members))
    }

    pub async fn promote_member(&self, id: NodeId) -> Result<Vec<MemberInfo>> {
        membership_reply(self.route(ForwardRequest::PromoteMember(id)).await?)
    }

    pub async fn remove_member(&self, id: NodeId) -> Result<Vec<MemberInfo>> {
        membership_reply(self.route(ForwardRequest::RemoveMember(id)).await?)
    }

    pub async fn update_member_peer(&self, id: NodeId, peer_addr: &str) -> Result<Vec<MemberInfo>> {
        let mut member = self.members().into_iter().find(|m| m.id == id).ok_or(StoreError::MemberNotFound)?.member;
        member.peer_addr = peer_addr.to_string();
        membership_reply(self.route(ForwardRequest::UpdateMember(id, member)).await?)
    }

    /// Hands leadership to `to`.
    pub async fn move_leader(&self, to: NodeId) -> Result<()> {
        self.route(ForwardRequest::TransferLeader(to)).await?;
        self.wait_metrics(self.inner.config.tuning.request_timeout, |m| m.current_leader == Some(to)).await
    }

    /// Waits until the Raft metrics satisfy `condition`.
    pub async fn wait_metrics<F>(&self, timeout: Duration, condition: F) -> Result<()>
    where
        F: Fn(&RaftMetrics<TypeConfig>) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut metrics = self.inner.raft.metrics();
        loop {
            if condition(&metrics.borrow_watched()) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Timeout);
            }
            match tokio::time::timeout(left, metrics.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return Err(StoreError::Stopped),
            }
        }
    }

    pub fn status(&self) -> StoreStatus {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let db = self.inner.sm.db();
        let view = View::snapshot(&db);
        StoreStatus {
            id: self.inner.id,
            cluster_id: self.inner.cluster_id,
            leader: m.current_leader,
            term: m.current_term,
            state: m.state,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index),
            purged_index: m.purged.as_ref().map_or(0, |l| l.index),
            revision: view.revision().unwrap_or(0),
            compact_revision: view.compacted().unwrap_or(0),
            db_size: self.inner.sm.disk_size() + self.inner.log.disk_size(),
            is_learner: !m.membership_config.voter_ids().any(|v| v == self.inner.id),
        }
    }

    /// etcd's HashKV: (hash, compact revision, hashed revision).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        let db = self.inner.sm.db();
        let view = View::snapshot(&db);
        let revision = if revision > 0 { revision } else { view.revision()? };
        view.check_readable(revision)?;
        Ok((view.hash_kv(revision)?, view.compacted()?, revision))
    }

    /// Resolves, with the reason, if Raft stops on its own: a storage error (a full or failing
    /// disk) or a panic in its core. Such a member can neither write nor serve a linearizable
    /// read again; the binary exits, as etcd does on a failed WAL write, so that whatever
    /// supervises it sees the reason and restarts it. Pending forever once [`Store::shutdown`]
    /// has stopped Raft.
    pub async fn failed(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let running = metrics.borrow_watched().running_state.clone();
            match running {
                Ok(()) => {}
                Err(openraft::error::Fatal::Stopped) => return std::future::pending().await,
                Err(fatal) => return fatal.to_string(),
            }
            if metrics.changed().await.is_err() {
                // openraft reports every stop, its own included, before it lets go of its
                // metrics; gone without a report, its core panicked.
                return "the Raft core ended without a report (a panic in openraft)".into();
            }
        }
    }

    /// Stops the member. A leader first hands leadership to the most up-to-date voter so the
    /// cluster does not wait out an election timeout.
    pub async fn shutdown(&self) {
        if let Err(e) = self.step_down().await {
            tracing::warn!(error = %e, "could not hand over leadership before stopping");
        }
        // Everything that holds the storage open is stopped and awaited, so that once this
        // returns and the caller drops its handle, the databases close.
        let tasks: Vec<JoinHandle<()>> = self.inner.tasks.lock().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let server = self.inner.peer_server.lock().take();
        if let Some((stop, server)) = server {
            let _ = stop.send(());
            // Streams from other members keep their connections open; they hold the member
            // only weakly, so the server is not waited for longer than a moment.
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), server).await.is_err() {
                abort.abort();
            }
        }
    }

    /// If this member leads, hands leadership to the most up-to-date voter and waits until
    /// another member leads.
    pub async fn step_down(&self) -> Result<()> {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(self.inner.id) {
            return Ok(());
        }
        let voters: BTreeSet<NodeId> = metrics.membership_config.voter_ids().collect();
        let target = metrics.replication.as_ref().and_then(|r| {
            r.iter()
                .filter(|(id, _)| **id != self.inner.id && voters.contains(id))
                .max_by_key(|(_, matched)| matched.as_ref().map(|l| l.index))
                .map(|(id, _)| *id)
        });
        let Some(target) = target else {
            return Ok(());
        };
        tracing::info!(to = %format!("{target:x}"), "handing leadership over before stopping");
        self.inner.raft.trigger().transfer_leader(target).await.map_err(|e| StoreError::Internal(e.to_string()))?;
        let me = self.inner.id;
        self.wait_metrics(self.inner.config.tuning.election_timeout.1 * 2, |m| {
            m.current_leader.is_some_and(|l| l != me)
        })
        .await
    }

    /// Serves `request` on the leader: here if this member leads, else by forwarding it.
    /// Retries only where nothing can have been applied (no leader yet, a leader that refused
    /// before proposing, a member that could not be reached at all).
    pub(crate) async fn route(&self, request: ForwardRequest) -> Result<ForwardOk> {
        let timeout = self.inner.config.tuning.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let result = match self.wait_for_leader(deadline).await {
                Ok(leader) if leader == self.inner.id => self.serve_as_leader(request.clone()).await,
                Ok(leader) => match self.leader_addr(leader) {
                    Some(addr) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        self.forward_streamed(leader, &addr, request.clone(), left.max(Duration::from_millis(100)))
                            .await
                    }
                    None => Err(StoreError::NoLeader),
                },
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retryable_unapplied() && Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(StoreError::NoLeader) => return Err(StoreError::Timeout),
                other => return other,
            }
        }
    }

    async fn wait_for_leader(&self, deadline: Instant) -> Result<NodeId> {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Some(leader) = metrics.borrow_watched().current_leader {
                return Ok(leader);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::NoLeader);
            }
            match tokio::time::timeout(left, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(StoreError::Stopped),
                Err(_) => return Err(StoreError::NoLeader),
            }
        }
    }

    fn leader_addr(&self, leader: NodeId) -> Option<String> {
        self.inner.raft.metrics().borrow_watched().membership_config.get_node(&leader).map(|m| m.peer_addr.clone())
    }

    /// Forwards over the multiplexed stream to the leader (see [`crate::forward`]).
    async fn forward_streamed(
        &self,
        leader: NodeId,
        addr: &str,
        request: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardOk> {
        if pass_filter(&self.inner.config.filter, self.inner.id, leader).await.is_err() {
            return Err(StoreError::NoLeader);
        }
        self.inner.forwarders.call(&self.inner.channels, self.inner.cluster_id, addr, request, timeout).await
    }

    /// Forwards one request with its own call (for joins, which take long).
    async fn forward_to(&self, addr: &str, request: &ForwardRequest, timeout: Duration) -> Result<ForwardOk> {
        let target = member_id_for(addr);
        if pass_filter(&self.inner.config.filter, self.inner.id, target).await.is_err() {
            return Err(StoreError::NoLeader);
        }
        let mut client =
            self.inner.channels.client(addr).map_err(|e| StoreError::Unavailable(format!("peer {addr}: {e}")))?;
        let message = peer_pb::ForwardRequest { cluster_id: self.inner.cluster_id, payload: to_bytes(request)?.into() };
        let reply = match tokio::time::timeout(timeout, client.forward(message)).await {
            Err(_) => return Err(StoreError::Timeout),
            Ok(Err(status)) if is_connect_failure(&status) => return Err(StoreError::NoLeader),
            Ok(Err(status)) => {
                return Err(StoreError::Unavailable(format!("forwarding to {addr}: {}", status.message())));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let decoded: Result<ForwardOk> = from_bytes(&reply.payload, "forward reply")?;
        decoded
    }

    /// What the leader does with a routed request. Refusals that mean "not the leader (any
    /// more)" come back as [`StoreError::NoLeader`] so the sender routes again.
    pub(crate) async fn serve_as_leader(&self, request: ForwardRequest) -> Result<ForwardOk> {
        let raft = &self.inner.raft;
        match request {
            ForwardRequest::Propose(command) => {
                // Without a quorum the entry never commits; the caller learns that its outcome
                // is unknown rather than waiting forever.
                let timeout = self.inner.config.tuning.request_timeout;
                match tokio::time::timeout(timeout, raft.client_write(command)).await {
                    Ok(Ok(response)) => Ok(ForwardOk::Applied(response.data)),
                    Ok(Err(e)) => Err(write_error(e)),
                    Err(_) => Err(StoreError::Timeout),
                }
            }
            ForwardRequest::ReadIndex => {
                // One heartbeat round that a quorum did not answer in time (a loaded machine, a
                // slow follower) is asked again until the request's time is up; only then is
                // the read refused. No read is served without a confirmed quorum either way.
                let deadline = tokio::time::Instant::now() + self.inner.config.tuning.request_timeout;
                loop {
                    match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
                        Ok(linearizer) => return Ok(ForwardOk::ReadIndex(linearizer.read_log_id().index())),
                        Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                            return Err(StoreError::NoLeader);
                        }
                        Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
                            if tokio::time::Instant::now() + READ_INDEX_RETRY >= deadline {
                                return Err(StoreError::Unavailable(format!("cannot confirm leadership: {e}")));
                            }
                            tokio::time::sleep(READ_INDEX_RETRY).await;
                        }
                        Err(RaftError::Fatal(e)) => return Err(StoreError::Internal(e.to_string())),
                    }
                }
            }
            ForwardRequest::LeaseKeepAlive(id) => {
                self.ensure_leader()?;
                Ok(ForwardOk::KeepAlive(self.inner.sm.lessor().renew(id)))
            }
            ForwardRequest::LeaseTimeToLive(id) => {
                self.ensure_leader()?;
                Ok(ForwardOk::TimeToLive(self.inner.sm.lessor().time_to_live(id)))
            }
            ForwardRequest::AddMember { id, member, voter, wait_caught_up } => {
                self.add_member_as_leader(id, member, voter, wait_caught_up).await?;
                Ok(ForwardOk::Members(self.members()))
            }
            ForwardRequest::PromoteMember(id) => {
                let m = raft.metrics().borrow_watched().clone();
                if m.membership_config.voter_ids().any(|v| v == id) {
                    return Err(StoreError::Membership("member is not a learner".into()));
                }
                if m.membership_config.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                let last = m.last_log_index.unwrap_or(0);
                let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map_or(0, |l| l.index);
                if last.saturating_sub(matched) > self.inner.config.tuning.keep_entries / 10 {
                    return Err(StoreError::Membership(
                        "can only promote a learner member which is in sync with leader".into(),
                    ));
                }
                change_membership(&self.inner, ChangeMembers::AddVoterIds([id].into())).await?;
                Ok(ForwardOk::Members(self.members()))
            }
            ForwardRequest::RemoveMember(id) => {
                let m = raft.metrics().borrow_watched().clone();
                if m.membership_config.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                if m.membership_config.voter_ids().any(|v| v == id) {
                    change_membership(&self.inner, ChangeMembers::RemoveVoters([id].into())).await?;
                } else {
                    change_membership(&self.inner, ChangeMembers::RemoveNodes([id].into())).await?;
                }
                Ok(ForwardOk::Members(self.members()))
            }
            ForwardRequest::UpdateMember(id, member) => {
                if raft.metrics().borrow_watched().membership_config.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                change_membership(&self.inner, ChangeMembers::SetNodes([(id, member)].into())).await?;
                Ok(ForwardOk::Members(self.members()))
            }
            ForwardRequest::TransferLeader(to) => {
                self.ensure_leader()?;
                if !raft.metrics().borrow_watched().membership_config.voter_ids().any(|v| v == to) {
                    return Err(StoreError::MemberNotFound);
                }
                raft.trigger().transfer_leader(to).await.map_err(|e| StoreError::Internal(e.to_string()))?;
                Ok(ForwardOk::Done)
            }
        }
    }

    fn ensure_leader(&self) -> Result<()> {
        if self.inner.raft.metrics().borrow_watched().current_leader == Some(self.inner.id) {
            Ok(())
        } else {
            Err(StoreError::NoLeader)
        }
    }

    async fn add_member_as_leader(&self, id: NodeId, member: Member, voter: bool, wait: bool) -> Result<ForwardOk> {
        let raft = &self.inner.raft;
        let existing = raft.metrics().borrow_watched().membership_config.get_node(&id).cloned();
        let Some(current) = existing else {
            add_learner(&self.inner, id, member, wait).await?;
            if voter {
                change_membership(&self.inner, ChangeMembers::AddVoterIds([id].into())).await?;
            }
            return Ok(ForwardOk::Done);
        };
        // Registered before (etcd's MemberAdd) and now starting, or a join being retried:
        // bring its details up to date and catch it up, but keep the role it was given.
        let merged =
            Member { name: if member.name.is_empty() { current.name.clone() } else { member.name.clone() }, ..member };
        if merged != current {
            change_membership(&self.inner, ChangeMembers::SetNodes([(id, merged.clone())].into())).await?;
        }
        if wait {
            add_learner(&self.inner, id, merged, true).await?;
        }
        Ok(ForwardOk::Done)
    }
}

fn membership_reply(reply: ForwardOk) -> Result<Vec<MemberInfo>> {
    match reply {
        ForwardOk::Members(members) => Ok(members),
        other => Err(StoreError::Internal(format!("membership change answered {other:?}"))),
    }
}

async fn change_membership(inner: &Inner, change: ChangeMembers<NodeId, Member>) -> Result<ForwardOk> {
    retry_while_in_progress(inner, || inner.raft.change_membership(change.clone(), false)).await?;
    Ok(ForwardOk::Done)
}

/// Adds a learner and, with `wait`, waits for it to catch up (as openraft's blocking
/// `add_learner` does) after releasing the membership lock: a catch-up by snapshot can take
/// minutes, and other membership changes need not wait for it.
async fn add_learner(inner: &Inner, id: NodeId, member: Member, wait: bool) -> Result<()> {
    let added = retry_while_in_progress(inner, || inner.raft.add_learner(id, member.clone(), false)).await?;
    if !wait {
        return Ok(());
    }
    let threshold = inner.raft.config().replication_lag_threshold;
    let membership = Some(added.log_id);
    let _ = inner
        .raft
        .wait(None)
        .metrics(
            |m| {
                if m.membership_config.log_id() < &membership {
                    return false;
                }
                // Removed meanwhile, or this member no longer leads: nothing left to wait for.
                let Some(replication) = m.replication.as_ref() else { return true };
                if m.membership_config.membership().get_node(&id).is_none() {
                    return true;
                }
                replication.get(&id).is_some_and(|matched| {
                    let matched = matched.as_ref().map_or(0, |l| l.index);
                    m.last_log_index.unwrap_or(0).saturating_sub(matched) <= threshold
                })
            },
            "the new learner to catch up",
        )
        .await;
    Ok(())
}

/// Runs a membership change made here as leader: one at a time, each once the one before has
/// committed, for up to ten seconds. openraft refuses a change while another is uncommitted
/// and logs every refusal as an error; members announcing their addresses together at
/// start-up filled a new cluster's logs with them.
async fn retry_while_in_progress<F, Fut, T>(inner: &Inner, mut change: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    let _one_at_a_time = tokio::time::timeout_at(deadline.into(), inner.membership_changes.lock())
        .await
        .map_err(|_| StoreError::Membership("another membership change is still in progress".into()))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A member that does not lead goes straight on: the change tells the caller where the
        // leader is. Still not committed at the deadline: the change says so.
        let _ = inner
            .raft
            .wait(Some(left))
            .metrics(
                |m| {
                    m.state != ServerState::Leader
                        || m.membership_config.log_id() == m.committed_membership_config.log_id()
                },
                "the last membership change to commit",
            )
            .await;
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                openraft::error::ChangeMembershipError::InProgress(_),
            ))) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other.map_err(write_error),
        }
    }
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NoLeader,
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => StoreError::LeaderChanged,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => StoreError::Membership(e.to_string()),
        RaftError::APIError(other) => StoreError::Unavailable(other.to_string()),
        RaftError::Fatal(e) => StoreError::Internal(format!("raft stopped: {e}")),
    }
}

/// A gRPC failure that means the request never reached the member.
fn is_connect_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("tcp connect error")
            || status.message().contains("Connection refused")
            || status.message().contains("error trying to connect"))
}

fn is_read_only(request: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    fn ops_read_only(ops: &[pb::RequestOp]) -> bool {
        ops.iter().all(|op| match &op.request {
            Some(Request::RequestRange(_)) => true,
            Some(Request::RequestTxn(t)) => is_read_only(t),
            _ => false,
        })
    }
    ops_read_only(&request.success) && ops_read_only(&request.failure)
}

/// Asks an etcd endpoint for the cluster id and the peer addresses of its members.
async fn discover(endpoint: &str) -> Result<(u64, Vec<String>)> {
    let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| StoreError::InvalidArgument(format!("join endpoint {endpoint}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| StoreError::Unavailable(format!("join endpoint {endpoint}: {e}")))?;
    let response = ClusterClient::new(channel)
        .member_list(pb::MemberListRequest { linearizable: false })
        .await
        .map_err(|e| StoreError::Unavailable(format!("join endpoint {endpoint}: {}", e.message())))?
        .into_inner();
    let cluster_id = response.header.map_or(0, |h| h.cluster_id);
    let peers = response
        .members
        .into_iter()
        .flat_map(|m| m.peer_ur_ls)
        .map(|u| u.trim_start_matches("http://").trim_start_matches("https://").to_string())
        .collect();
    Ok((cluster_id, peers))
}

/// Reads `member.json`, or writes it for a brand-new member. Returns the identity and whether
/// the member is new.
async fn load_or_create_identity(config: &StoreConfig) -> Result<(Identity, bool)> {
    let dir = &config.data_dir;
    if let Some(identity) = Identity::load(dir)? {
        if identity.name != config.name {
            return Err(StoreError::InvalidArgument(format!(
                "data directory {} belongs to member {:?}, not {:?}",
                dir.display(),
                identity.name,
                config.name
            )));
        }
        return Ok((identity, false));
    }
    for part in ["raft", "state"] {
        if dir.join(part).exists() {
            return Err(StoreError::corrupt(format!(
                "{} holds store data but no member.json; refusing to serve it (remove the directory to start a new member)",
                dir.display()
            )));
        }
    }
    let member_id = member_id_for(&config.peer_addr);
    let cluster_id = match &config.bootstrap {
        Bootstrap::InitialCluster(members) => {
            if !members.iter().any(|(n, p)| *n == config.name && *p == config.peer_addr) {
                return Err(StoreError::InvalidArgument(format!(
                    "--initial-cluster does not list this member ({}={})",
                    config.name, config.peer_addr
                )));
            }
            let ids: BTreeSet<NodeId> = members.iter().map(|(_, p)| member_id_for(p)).collect();
            if ids.len() != members.len() {
                return Err(StoreError::InvalidArgument("--initial-cluster lists the same peer address twice".into()));
            }
            cluster_id_for(members)
        }
        Bootstrap::Join(endpoints) => {
            let mut found = None;
            let mut last_error = StoreError::InvalidArgument("--join needs at least one endpoint".into());
            for endpoint in endpoints {
                match discover(endpoint).await {
                    Ok((cluster_id, _)) => {
                        found = Some(cluster_id);
                        break;
                    }
                    Err(e) => last_error = e,
                }
            }
            found.ok_or(last_error)?
        }
    };
    let identity = Identity::new(cluster_id, member_id, &config.name);
    identity.save(dir)?;
    Ok((identity, true))
}

/// The state machine applies only what the log held, so a state machine ahead of the log
/// means log entries vanished, unless a snapshot install explains it.
fn check_log_covers_state(log: &LogStore, sm: &StateMachine) -> Result<()> {
    let applied = View::snapshot(&sm.shared().db()).applied()?.map(|l| l.index);
    let Some(applied) = applied else { return Ok(()) };
    let last = log.last_index()?;
    if last.is_some_and(|l| l >= applied) || sm.snapshot_index()? == Some(applied) {
        return Ok(());
    }
    Err(StoreError::corrupt(format!(
        "the Raft log ends at {last:?} but the state machine applied entry {applied}: log entries are missing \
         (the data directory was truncated or damaged)"
    )))
}
