//! `keel server`: one store member, serving the peer protocol and the etcd v3 API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use keel_store::node::Tuning;
use keel_store::{Bootstrap, Store, StoreConfig};
use tokio::net::TcpListener;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Human-readable name of this member, unique in the cluster.
    #[arg(long)]
    name: String,
    /// Where this member keeps its Raft log, state and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// `host:port` for Raft traffic from other members.
    #[arg(long, default_value = "127.0.0.1:2380")]
    listen_peer: String,
    /// `host:port` for the etcd v3 gRPC API.
    #[arg(long, default_value = "127.0.0.1:2379")]
    listen_client: String,
    /// `host:port` for the Kubernetes API (plain HTTP for now; see the README).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen_api: String,
    /// API group versions to switch on or off, as kube-apiserver takes them
    /// (`batch/v1=false`, `api/all=false,api/v1=true`).
    #[arg(long, default_value = "")]
    runtime_config: String,
    /// Where Services' cluster IPs come from (kube-apiserver's flag; an IPv4 CIDR). Every
    /// member of a cluster must be given the same range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Where NodePort Services' node ports come from (kube-apiserver's flag).
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Run the scheduler and the controllers on this member while it leads (`false`: an API
    /// and store only, e.g. for an external scheduler or to measure the API alone).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    control_loops: bool,
    /// Where the local-path provisioner makes volumes on the nodes (k3s's flag).
    #[arg(long, default_value = keel_controllers::localpath::DEFAULT_DIR)]
    default_local_storage_path: std::path::PathBuf,
    /// How often each HorizontalPodAutoscaler is looked at (kube-controller-manager's flag).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    horizontal_pod_autoscaler_sync_period: Duration,
    /// How long a HorizontalPodAutoscaler waits before scaling down: the highest
    /// recommendation of this window wins (kube-controller-manager's flag and default).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// Issuer (`iss`) of ServiceAccount tokens, as kube-apiserver takes it. Repeatable: the
    /// first signs new tokens, every one is accepted (to move to a new issuer).
    #[arg(long = "service-account-issuer", default_value = keel_api::tokens::DEFAULT_ISSUER)]
    service_account_issuers: Vec<String>,
    /// Audiences of tokens that ask for none, and what a TokenReview without audiences checks
    /// (comma-separated; default: the issuers).
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// `jwks_uri` of `/.well-known/openid-configuration` (default: `<issuer>/openid/v1/jwks`).
    #[arg(long)]
    service_account_jwks_uri: Option<String>,
    /// Peer address other members use to reach this one (defaults to --listen-peer).
    #[arg(long)]
    advertise_peer: Option<String>,
    /// Client address announced in the member list (defaults to --listen-client).
    #[arg(long)]
    advertise_client: Option<String>,
    /// API address other members use to pass on `kubectl logs`/`exec` for nodes streaming to
    /// this member (defaults to --listen-api).
    #[arg(long)]
    advertise_api: Option<String>,
    /// Founding members as `name=host:port,...` (peer addresses). Used once, when the data
    /// directory is new; defaults to this member alone.
    #[arg(long, conflicts_with = "join")]
    initial_cluster: Option<String>,
    /// Join an existing cluster through any of these etcd API endpoints (`host:port,...`).
    /// Used once, when the data directory is new.
    #[arg(long)]
    join: Option<String>,
    /// Leader heartbeat interval, milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Election timeout, milliseconds (elections wait between this and twice this).
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Entries between snapshots.
    #[arg(long, default_value_t = 20_000)]
    snapshot_count: u64,
    /// Entries kept behind a snapshot for followers that lag briefly.
    #[arg(long, default_value_t = 10_000)]
    snapshot_catchup_entries: u64,
    /// History kept for reads at past revisions and watch resumption (e.g. `5m`, `1h`).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    auto_compaction_retention: Duration,
    /// At most this many revisions of history are kept, whatever their age.
    #[arg(long, default_value_t = 10_000_000)]
    auto_compaction_revisions: u64,
    /// How often idle watchers that asked for progress notifications get one.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    watch_progress_notify_interval: Duration,
    /// How long a request waits for a leader and an answer.
    #[arg(long, default_value = "7s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Threads serving requests (0: one per core). Members sharing a machine's cores with
    /// other members do better with fewer (1 runs everything on one thread).
    #[arg(long, default_value_t = 0)]
    pub runtime_threads: usize,
}

fn parse_initial_cluster(spec: &str) -> Result<Vec<(String, String)>> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|entry| {
            let (name, addr) = entry
                .split_once('=')
                .with_context(|| format!("--initial-cluster entry {entry:?} is not name=host:port"))?;
            let addr = addr.trim().trim_start_matches("http://").to_string();
            if name.trim().is_empty() || !addr.contains(':') {
                bail!("--initial-cluster entry {entry:?} is not name=host:port");
            }
            Ok((name.trim().to_string(), addr))
        })
        .collect()
}

async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for {what}"))
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let signals = ShutdownSignals::install()?;
    run_until(args, signals.received()).await
}

/// Runs the member until `shutdown` resolves (`keel up` runs one beside an agent).
pub async fn run_until(args: ServerArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let peer_addr = args.advertise_peer.clone().unwrap_or_else(|| args.listen_peer.clone());
    let client_addr = args.advertise_client.clone().unwrap_or_else(|| args.listen_client.clone());
    let bootstrap = match (&args.initial_cluster, &args.join) {
        (_, Some(join)) => Bootstrap::Join(join.split(',').map(|s| s.trim().to_string()).collect()),
        (Some(spec), None) => Bootstrap::InitialCluster(parse_initial_cluster(spec)?),
        (None, None) => Bootstrap::InitialCluster(vec![(args.name.clone(), peer_addr.clone())]),
    };
    if args.election_timeout < 5 * args.heartbeat_interval {
        bail!("--election-timeout must be at least 5 times --heartbeat-interval");
    }
    let peer_listener = bind(&args.listen_peer, "peers").await?;
    let client_listener = bind(&args.listen_client, "etcd API clients").await?;
    let api_listener = bind(&args.listen_api, "Kubernetes API clients").await?;
    let runtime_config =
        keel_api::registry::RuntimeConfig::parse(&args.runtime_config).map_err(|e| anyhow::anyhow!(e))?;
    let service_ranges =
        keel_api::service_alloc::ServiceRanges::parse(&args.service_cluster_ip_range, &args.service_node_port_range)
            .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range / --service-node-port-range: {e}"))?;
    let config = StoreConfig {
        name: args.name.clone(),
        data_dir: args.data_dir.clone(),
        peer_addr,
        client_addr,
        // What other members and the `kubernetes` Service's endpoints use to reach this API.
        api_addr: args.advertise_api.clone().unwrap_or_else(|| args.listen_api.clone()),
        bootstrap,
        tuning: Tuning {
            heartbeat: Duration::from_millis(args.heartbeat_interval),
            election_timeout: (
                Duration::from_millis(args.election_timeout),
                Duration::from_millis(args.election_timeout * 2),
            ),
            snapshot_entries: args.snapshot_count,
            keep_entries: args.snapshot_catchup_entries,
            request_timeout: args.request_timeout,
            history_retention: args.auto_compaction_retention,
            history_max_revisions: args.auto_compaction_revisions,
        },
        filter: None,
    };
    let store = Store::start(config, peer_listener)
        .await
        .with_context(|| format!("member {} cannot start from {}", args.name, args.data_dir.display()))?;
    for prefix in keel_api::admission::LOOKUP_PREFIXES {
        store.mirror(prefix.as_bytes()).with_context(|| format!("cannot keep {prefix} in memory"))?;
    }
    tracing::info!(keys = store.mirrored_keys(), "admission's lookups are held in memory");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc_metrics = std::sync::Arc::new(keel_etcd::grpc_metrics::GrpcMetrics::default());
    let options = keel_etcd::EtcdOptions {
        progress_notify_interval: args.watch_progress_notify_interval,
        metrics: grpc_metrics.clone(),
    };
    let etcd = tokio::spawn(keel_etcd::serve(store.clone(), client_listener, options, async {
        let _ = stop_rx.await;
    }));
    let registry = std::sync::Arc::new(keel_api::registry::Registry::new(runtime_config));
    let storage: keel_api::storage::SharedStorage = std::sync::Arc::new(store.clone());
    let tokens = keel_api::tokens::TokenSettings {
        issuers: args.service_account_issuers.clone(),
        api_audiences: args.api_audiences.clone(),
        jwks_uri: args.service_account_jwks_uri.clone(),
    };
    // /metrics on the API port reports the store and its etcd API as well, as etcd's own
    // /metrics would.
    let collectors: Vec<std::sync::Arc<dyn keel_prometheus::Collect>> =
        vec![std::sync::Arc::new(store.clone()), grpc_metrics.clone()];
    let api = std::sync::Arc::new(
        keel_api::rest::Api::new(storage, registry)
            .with_token_settings(tokens)
            .with_service_ranges(service_ranges)
            .with_collectors(collectors),
    );
    let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Node agents' streams share the API port: a worker dials the address kubectl uses.
    let api_address = args.advertise_api.clone().unwrap_or_else(|| args.listen_api.clone());
    let node_service = keel_node_service::NodeService::start(api.clone(), args.name.clone(), api_address.clone());
    api.tunnels.set(std::sync::Arc::new(node_service.clone()), api_address);
    // The agents' streams are routed before the REST paths; every gRPC call on the port (the
    // object API's, the agents') is counted as the etcd API's are. A route layer wraps the
    // routes only, the gRPC services, not the REST fallback.
    let app = axum::Router::new()
        .route_service("/keel.node.v1.NodeAgent/{*method}", node_service.server())
        .merge(keel_api::server::router(api.clone()))
        .route_layer(grpc_metrics.layer());
    let api_server = tokio::spawn(keel_api::server::serve_router(app, api_listener, async {
        let _ = api_stop_rx.await;
    }));
    let crd_sync = tokio::spawn(keel_api::crd::sync(api.clone()));
    let bootstrap = tokio::spawn(ensure_system_namespaces(api.clone()));
    let signing_key = tokio::spawn(keel_api::tokens::ensure_signing_key(api.clone()));
    let leader_store = store.clone();
    let endpoints_store = store.clone();
    // A member that has not answered the leader's heartbeats for this long leaves the
    // `kubernetes` endpoints (kube drops an API server whose 15 s lease ran out; Raft knows
    // sooner).
    let member_liveness = Duration::from_millis(3 * args.election_timeout).max(Duration::from_secs(3));
    // The scheduler and the controller manager run on the Raft leader only.
    let loops_api = api.clone();
    let control_loops = args.control_loops;
    let controller_settings = keel_controllers::Settings {
        volumes: keel_controllers::volume::Settings { local_path_dir: args.default_local_storage_path.clone() },
        autoscaler: keel_controllers::podautoscaler::Settings {
            sync_period: args.horizontal_pod_autoscaler_sync_period.max(Duration::from_millis(100)),
            downscale_stabilization: args.horizontal_pod_autoscaler_downscale_stabilization,
        },
        ..keel_controllers::Settings::default()
    };
    let controllers = tokio::spawn(keel_runtime::leader::run_while_leader(
        Duration::from_millis(250),
        move || {
            // Every API server keeps the `kubernetes` Service in kube; here the leader does,
            // with or without the other control loops.
            let endpoints_store = endpoints_store.clone();
            let mut loops: Vec<(&'static str, keel_runtime::leader::Loop)> = vec![(
                "kubernetes-service",
                Box::pin(keel_api::kubernetes_service::run(loops_api.clone(), member_liveness, move || {
                    endpoints_store.live_api_addresses(member_liveness)
                })),
            )];
            if !control_loops {
                return loops;
            }
            loops.extend(keel_controllers::loops_with(loops_api.clone(), controller_settings.clone()));
            loops.extend(keel_scheduler::loops(loops_api.clone()));
            loops
        },
        move || {
            let store = leader_store.clone();
            async move { store.is_leader() }
        },
    ));
    tracing::info!(peer = %args.listen_peer, client = %args.listen_client, api = %args.listen_api, "serving");

    let failure = tokio::select! {
        _ = shutdown => None,
        reason = store.failed() => Some(reason),
    };
    match &failure {
        None => tracing::info!("stopping"),
        Some(reason) => tracing::error!(%reason, "the store has stopped; stopping the member"),
    }
    bootstrap.abort();
    signing_key.abort();
    controllers.abort();
    crd_sync.abort();
    let _ = api_stop_tx.send(());
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), api_server).await {
        tracing::warn!(error = %e, "Kubernetes API server");
    }
    store.shutdown().await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(5), etcd).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "etcd API server"),
        Ok(Err(e)) => tracing::warn!(error = %e, "etcd API server task"),
        _ => {}
    }
    match failure {
        None => Ok(()),
        Some(reason) => bail!("the store stopped: {reason}"),
    }
}

/// The system namespaces (and, on a new cluster, the default `local-path` StorageClass)
/// exist once a leader is elected; until then, keep trying.
async fn ensure_system_namespaces(api: std::sync::Arc<keel_api::rest::Api>) {
    loop {
        // The class first: it is made only while the system namespaces do not exist yet.
        let outcome = match keel_controllers::localpath::ensure_default_storage_class(&api).await {
            Ok(_) => api.ensure_system_namespaces().await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "creating the system namespaces; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made. Installed before anything starts:
/// a signal that arrives while the process is still starting is kept, and stops it cleanly
/// once started, where the default action would kill it on the spot (a member killed
/// mid-start skips handing over leadership and flushing its state).
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub fn install() -> Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        Ok(ShutdownSignals { term, int })
    }

    /// Resolves at the first signal (or at once, for one that came before this was polled).
    pub async fn received(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
