//! etcd's Maintenance service: status, hashes, snapshot, defragment, leader transfer.

use std::io::{Read, Write};
use std::pin::Pin;

use futures::Stream;
use keel_proto::etcdserverpb::{self as pb, maintenance_server::Maintenance};
use keel_store::{Store, StoreError};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::header;
use crate::status::to_status;

/// The etcd API version keel implements, reported where etcd reports its own version.
pub const API_VERSION: &str = "3.4.0";
const SNAPSHOT_CHUNK: usize = 32 * 1024;

pub struct MaintenanceService {
    store: Store,
}

impl MaintenanceService {
    pub fn new(store: Store) -> Self {
        MaintenanceService { store }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Writes a tar of a fresh checkpoint of the store to a temporary file; returns the file and
/// the revision it holds.
fn write_snapshot_archive(store: &Store) -> Result<(std::fs::File, u64, i64), StoreError> {
    let work = tempfile::Builder::new()
        .prefix(".etcd-snapshot-")
        .tempdir_in(store.data_dir())
        .map_err(|e| StoreError::storage("snapshot work dir", e))?;
    let checkpoint = work.path().join("checkpoint");
    let revision = store.state().applied_revision();
    store.state().checkpoint_to(&checkpoint)?;
    let mut archive = tempfile::tempfile_in(work.path()).map_err(|e| StoreError::storage("snapshot file", e))?;
    {
        let mut builder = tar::Builder::new(&mut archive);
        builder
            .append_dir_all("keel-state", &checkpoint)
            .and_then(|_| builder.finish())
            .map_err(|e| StoreError::storage("write snapshot archive", e))?;
    }
    archive.flush().map_err(|e| StoreError::storage("flush snapshot", e))?;
    let len = archive.metadata().map_err(|e| StoreError::storage("stat snapshot", e))?.len();
    use std::io::Seek;
    archive.seek(std::io::SeekFrom::Start(0)).map_err(|e| StoreError::storage("rewind snapshot", e))?;
    Ok((archive, len, revision))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        // keel raises no alarms: there is no backend quota to exhaust and corruption stops the
        // member instead of raising CORRUPT.
        Ok(Response::new(pb::AlarmResponse {
            header: Some(header(&self.store, self.store.state().applied_revision())),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.store.status();
        Ok(Response::new(pb::StatusResponse {
            header: Some(header(&self.store, s.revision)),
            version: API_VERSION.to_string(),
            db_size: s.db_size as i64,
            leader: s.leader.unwrap_or(0),
            raft_index: s.committed_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors: if s.leader.is_none() { vec!["etcdserver: no leader".to_string()] } else { Vec::new() },
            db_size_in_use: s.db_size as i64,
            is_learner: s.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.state().compact_disk())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(header(&self.store, self.store.state().applied_revision())),
        }))
    }

    async fn hash(&self, _request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let (hash, _, revision) = self.store.hash_kv(0).map_err(to_status)?;
        Ok(Response::new(pb::HashResponse { header: Some(header(&self.store, revision)), hash }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let (hash, compact_revision, hash_revision) =
            self.store.hash_kv(request.into_inner().revision).map_err(to_status)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(header(&self.store, self.store.state().applied_revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// A tar of a RocksDB checkpoint of the state machine followed, as etcd does, by the
    /// SHA-256 of everything before it.
    async fn snapshot(&self, _request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let store = self.store.clone();
        let (file, len, revision) = tokio::task::spawn_blocking(move || write_snapshot_archive(&store))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        let header = header(&self.store, revision);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut hasher = Sha256::new();
            let total = len + 32;
            let mut sent = 0u64;
            let mut first = true;
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = match file.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!("read snapshot: {e}"))));
                        return;
                    }
                };
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                hasher.update(&buf);
                sent += n as u64;
                let message = pb::SnapshotResponse {
                    header: first.then_some(header),
                    remaining_bytes: total - sent,
                    blob: buf,
                    version: API_VERSION.to_string(),
                };
                first = false;
                if tx.blocking_send(Ok(message)).is_err() {
                    return;
                }
            }
            let _ = tx.blocking_send(Ok(pb::SnapshotResponse {
                header: first.then_some(header),
                remaining_bytes: 0,
                blob: hasher.finalize().to_vec(),
                version: API_VERSION.to_string(),
            }));
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.store.move_leader(request.into_inner().target_id).await.map_err(to_status)?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(header(&self.store, self.store.state().applied_revision())),
        }))
    }
}
