//! In-process clusters of [`Store`]s over the real gRPC transport on loopback, with one
//! [`NetworkFilter`] shared by all members for dropping, delaying, partitioning and
//! isolating. Faster and more controllable than processes; used for protocol scenarios.

use std::sync::Arc;
use std::time::Duration;

use keel_store::network::NetworkFilter;
use keel_store::node::Tuning;
use keel_store::{Bootstrap, NodeId, Store, StoreConfig};
use tokio::net::TcpListener;

use super::eventually;

pub fn fast_tuning() -> Tuning {
    Tuning {
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
        snapshot_entries: 20_000,
        keep_entries: 1000,
        request_timeout: Duration::from_secs(3),
        history_retention: Duration::from_secs(300),
        history_max_revisions: 10_000_000,
    }
}

pub struct InProcCluster {
    pub stores: Vec<Option<Store>>,
    pub configs: Vec<StoreConfig>,
    pub filter: Arc<NetworkFilter>,
    dir: Option<tempfile::TempDir>,
}

impl InProcCluster {
    pub async fn start(size: usize, tuning: Tuning) -> InProcCluster {
        super::init_logging();
        let dir = tempfile::Builder::new().prefix("keel-inproc-").tempdir().expect("temp dir");
        let filter = NetworkFilter::new();
        let mut listeners = Vec::new();
        for _ in 0..size {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let peers: Vec<(String, String)> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("m{}", i + 1), l.local_addr().expect("addr").to_string()))
            .collect();
        let configs: Vec<StoreConfig> = peers
            .iter()
            .map(|(name, peer)| StoreConfig {
                name: name.clone(),
                data_dir: dir.path().join(name),
                peer_addr: peer.clone(),
                client_addr: String::new(),
                api_addr: String::new(),
                bootstrap: Bootstrap::InitialCluster(peers.clone()),
                tuning: tuning.clone(),
                filter: Some(filter.clone()),
            })
            .collect();
        // Started together (spawned before any is awaited), as members of a new cluster are.
        let starts: Vec<_> = configs
            .iter()
            .cloned()
            .zip(listeners)
            .map(|(config, listener)| tokio::spawn(Store::start(config, listener)))
            .collect();
        let mut stores = Vec::new();
        for s in starts {
            stores.push(Some(s.await.expect("start task").expect("store starts")));
        }
        let cluster = InProcCluster { stores, configs, filter, dir: Some(dir) };
        cluster.leader().await;
        cluster
    }

    pub fn store(&self, i: usize) -> &Store {
        self.stores[i].as_ref().expect("member is running")
    }

    pub fn id(&self, i: usize) -> NodeId {
        keel_store::types::member_id_for(&self.configs[i].peer_addr)
    }

    /// Index of the member all running members (that can reach it) agree leads, among
    /// `among` (all members if empty).
    pub async fn leader_among(&self, among: &[usize]) -> usize {
        let among: Vec<usize> = if among.is_empty() { (0..self.stores.len()).collect() } else { among.to_vec() };
        eventually(Duration::from_secs(15), "an agreed leader", || async {
            let mut leader = None;
            for &i in &among {
                let store = self.stores[i].as_ref()?;
                let l = store.status().leader?;
                if leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader?;
            among.iter().copied().find(|&i| self.id(i) == l)
        })
        .await
    }

    pub async fn leader(&self) -> usize {
        self.leader_among(&[]).await
    }

    pub fn followers_of(&self, leader: usize) -> Vec<usize> {
        (0..self.stores.len()).filter(|&i| i != leader).collect()
    }

    pub async fn stop(&mut self, i: usize) {
        if let Some(store) = self.stores[i].take() {
            store.shutdown().await;
        }
    }

    pub async fn restart(&mut self, i: usize) {
        let config = self.configs[i].clone();
        let listener = TcpListener::bind(&config.peer_addr).await.expect("rebind peer address");
        self.stores[i] = Some(Store::start(config, listener).await.expect("restart"));
    }

    /// Waits until member `i` has applied `revision`.
    pub async fn wait_applied(&self, i: usize, revision: i64) {
        let store = self.store(i).clone();
        eventually(Duration::from_secs(30), &format!("member {i} to apply {revision}"), || {
            let store = store.clone();
            async move { (store.state().applied_revision() >= revision).then_some(()) }
        })
        .await;
    }
}

impl Drop for InProcCluster {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("test failed: member data kept in {}", dir.keep().display());
        }
    }
}

/// Puts through the store's own API; returns the revision.
pub async fn put(store: &Store, key: &str, value: &str) -> Result<i64, keel_store::StoreError> {
    put_with_lease(store, key, value, 0).await
}

pub async fn put_with_lease(store: &Store, key: &str, value: &str, lease: i64) -> Result<i64, keel_store::StoreError> {
    use keel_store::pb;
    let txn = pb::TxnRequest {
        compare: vec![],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                lease,
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    store.txn(txn).await.map(|(_, rev)| rev)
}

/// Reads a key (linearizable unless `serializable`).
pub async fn get(
    store: &Store,
    key: &str,
    serializable: bool,
) -> Result<Option<keel_store::mvccpb::KeyValue>, keel_store::StoreError> {
    let request = keel_store::pb::RangeRequest { key: key.as_bytes().to_vec(), serializable, ..Default::default() };
    store.range(&request).await.map(|(r, _)| r.kvs.into_iter().next())
}

pub fn value_of(kv: &Option<keel_store::mvccpb::KeyValue>) -> Option<String> {
    kv.as_ref().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}
