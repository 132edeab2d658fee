//! A small etcd v3 API client for tests, over keel's generated stubs.

use std::time::Duration;

use keel_proto::etcdserverpb::{
    self as pb, cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use tonic::transport::Channel;

#[derive(Clone)]
pub struct Etcd {
    pub endpoint: String,
    pub kv: KvClient<Channel>,
    pub watch: WatchClient<Channel>,
    pub lease: LeaseClient<Channel>,
    pub cluster: ClusterClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
}

impl Etcd {
    /// A client that connects lazily, so it can be made before the member is up.
    pub fn new(endpoint: &str) -> Etcd {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .expect("endpoint url")
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
        Etcd {
            endpoint: endpoint.to_string(),
            kv: KvClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel),
        }
    }

    /// Puts `key`; returns the revision of the write.
    pub async fn put(&self, key: &str, value: &str) -> Result<i64, tonic::Status> {
        let r = self
            .kv
            .clone()
            .put(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// Reads `key` linearizably: its value, or `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<keel_proto::mvccpb::KeyValue>, tonic::Status> {
        self.get_with(key, false).await
    }

    pub async fn get_with(
        &self,
        key: &str,
        serializable: bool,
    ) -> Result<Option<keel_proto::mvccpb::KeyValue>, tonic::Status> {
        let r = self
            .kv
            .clone()
            .range(pb::RangeRequest { key: key.as_bytes().to_vec(), serializable, ..Default::default() })
            .await?
            .into_inner();
        Ok(r.kvs.into_iter().next())
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, tonic::Status> {
        Ok(self.maintenance.clone().status(pb::StatusRequest {}).await?.into_inner())
    }

    pub async fn hash_kv(&self, revision: i64) -> Result<pb::HashKvResponse, tonic::Status> {
        Ok(self.maintenance.clone().hash_kv(pb::HashKvRequest { revision }).await?.into_inner())
    }

    pub async fn members(&self) -> Result<Vec<pb::Member>, tonic::Status> {
        Ok(self.cluster.clone().member_list(pb::MemberListRequest { linearizable: true }).await?.into_inner().members)
    }
}

/// Runs `f` with a deadline; a timeout is reported as `DeadlineExceeded`.
pub async fn with_deadline<T>(
    deadline: Duration,
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded("client deadline")),
    }
}
