//! The etcd v3 gRPC API, served by every keel store member on `--listen-client`, so that
//! `etcdctl`, etcd's client libraries and etcd's own tooling work against keel unchanged.
//!
//! One file per etcd service; [`status`] turns store errors into the gRPC statuses (and exact
//! messages) etcd clients recognise.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cluster;
pub mod grpc_metrics;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod status;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use keel_proto::etcdserverpb as pb;
use keel_store::Store;
use tokio::net::TcpListener;

/// etcd's `--max-request-bytes` default: 1.5 MiB.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// What gRPC may add around a request of the maximum size.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Largest response message (a big range or watch batch).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Options of the etcd API server.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// How often a watcher that asked for progress notifications gets one when idle.
    pub progress_notify_interval: Duration,
    /// Where calls are counted, for `/metrics`.
    pub metrics: Arc<grpc_metrics::GrpcMetrics>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            // etcd's default.
            progress_notify_interval: Duration::from_secs(600),
            metrics: Arc::default(),
        }
    }
}

/// The response header every etcd response carries.
pub fn header(store: &Store, revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: store.cluster_id(),
        member_id: store.id(),
        revision,
        raft_term: store.current_term(),
    }
}

/// Serves the etcd v3 API for `store` on `listener` until `shutdown` resolves.
pub async fn serve(
    store: Store,
    listener: TcpListener,
    options: EtcdOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // Accepted sockets need TCP_NODELAY set here: the builder's own setting only applies to
    // listeners tonic binds itself, and Nagle's algorithm would hold small responses back.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let max_in = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .trace_fn(|req| tracing::info_span!("etcd", method = %req.uri().path()))
        .layer(options.metrics.layer())
        .add_service(
            pb::kv_server::KvServer::new(kv::KvService::new(store.clone()))
                .max_decoding_message_size(max_in)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .add_service(
            pb::watch_server::WatchServer::new(watch::WatchService::new(store.clone(), options.clone()))
                .max_decoding_message_size(max_in)
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .add_service(pb::lease_server::LeaseServer::new(lease::LeaseService::new(store.clone())))
        .add_service(pb::cluster_server::ClusterServer::new(cluster::ClusterService::new(store.clone())))
        .add_service(
            pb::maintenance_server::MaintenanceServer::new(maintenance::MaintenanceService::new(store))
                .max_encoding_message_size(MAX_RESPONSE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
