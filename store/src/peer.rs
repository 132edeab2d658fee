//! The server side of the peer protocol: Raft RPCs into the local Raft node, snapshots
//! received into `incoming/` and installed, and requests forwarded by other members.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use futures::{Stream, StreamExt};
use keel_proto::peer::{self as pb, peer_server};
use openraft::Snapshot;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tonic::{Request, Response, Status, Streaming};

use crate::codec::{from_bytes, to_bytes};
use crate::network::{KIND_APPEND, KIND_PRE_VOTE, KIND_TRANSFER_LEADER, KIND_VOTE, MAX_PEER_MESSAGE};
use crate::node::{ForwardRequest, Inner, Store};
use crate::snapshot::{Manifest, SnapshotDir, sync_dir};

/// Holds the member weakly: connections from other members outlive a shutdown for a while,
/// and must not keep the member's storage open meanwhile.
pub struct PeerService {
    member: Weak<Inner>,
    cluster_id: u64,
}

impl PeerService {
    pub(crate) fn new(inner: &Arc<Inner>) -> PeerService {
        PeerService { member: Arc::downgrade(inner), cluster_id: inner.cluster_id }
    }

    fn inner(&self) -> Result<Arc<Inner>, Status> {
        self.member.upgrade().ok_or_else(|| Status::unavailable("member is stopping"))
    }

    pub fn into_server(self) -> peer_server::PeerServer<PeerService> {
        peer_server::PeerServer::new(self)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE)
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "message for cluster {cluster_id:x}, this member belongs to {:x}",
                self.cluster_id
            )));
        }
        Ok(())
    }

    async fn receive_snapshot(&self, mut stream: Streaming<pb::SnapshotChunk>) -> Result<(Manifest, PathBuf), Status> {
        let first = stream.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let manifest: Manifest =
            from_bytes(&first.manifest, "snapshot manifest").map_err(|e| Status::invalid_argument(e.to_string()))?;
        let dir = self.inner()?.data_dir.join("incoming").join(format!("{:016x}", rand::random::<u64>()));
        tokio::fs::create_dir_all(&dir).await.map_err(internal)?;
        let result = async {
            let mut current: Option<(String, tokio::fs::File)> = None;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let name = chunk.file.as_str();
                if name.is_empty() || name.contains('/') || name.contains("..") {
                    return Err(Status::invalid_argument(format!("bad snapshot file name {name:?}")));
                }
                if current.as_ref().is_none_or(|(n, _)| n != name) {
                    if let Some((_, file)) = current.take() {
                        file.sync_all().await.map_err(internal)?;
                    }
                    let file = tokio::fs::File::create(dir.join(name)).await.map_err(internal)?;
                    current = Some((name.to_string(), file));
                }
                if let Some((_, file)) = current.as_mut() {
                    file.seek(std::io::SeekFrom::Start(chunk.offset)).await.map_err(internal)?;
                    file.write_all(&chunk.data).await.map_err(internal)?;
                }
            }
            if let Some((_, file)) = current.take() {
                file.sync_all().await.map_err(internal)?;
            }
            // Every announced file, at its announced size, and nothing else.
            let received = crate::snapshot::list_files(&dir).map_err(|e| internal(e.to_string()))?;
            let mut expected = manifest.files.clone();
            expected.sort();
            if received != expected {
                return Err(Status::data_loss(format!(
                    "snapshot arrived incomplete: expected {expected:?}, got {received:?}"
                )));
            }
            sync_dir(&dir).map_err(|e| internal(e.to_string()))?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        Ok((manifest, dir))
    }
}

fn internal(e: impl ToString) -> Status {
    Status::internal(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    from_bytes(payload, "peer request").map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode<T: serde::Serialize, E: ToString>(result: Result<T, E>) -> Result<Response<pb::RaftReply>, Status> {
    let result = result.map_err(|e| e.to_string());
    let payload = to_bytes(&result).map_err(internal)?;
    Ok(Response::new(pb::RaftReply { payload: payload.into() }))
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::RaftReply, Status>> + Send>>;
type ForwardFrames = Pin<Box<dyn Stream<Item = Result<pb::ForwardFrame, Status>> + Send>>;

/// Serves one member's stream of forwarded requests: each runs as soon as it arrives, and
/// whatever has finished when the stream is free goes back as one frame.
async fn serve_forward_stream(
    member: Weak<Inner>,
    cluster_id: u64,
    mut input: Streaming<pb::ForwardFrame>,
    output: tokio::sync::mpsc::Sender<Result<pb::ForwardFrame, Status>>,
) {
    use futures::stream::FuturesUnordered;
    let mut running = FuturesUnordered::new();
    let mut input_open = true;
    loop {
        tokio::select! {
            frame = input.next(), if input_open => {
                let Some(Ok(frame)) = frame else {
                    input_open = false;
                    continue;
                };
                if frame.cluster_id != cluster_id {
                    let _ = output.send(Err(Status::failed_precondition("message for another cluster"))).await;
                    return;
                }
                let requests: Vec<(u64, ForwardRequest)> = match from_bytes(&frame.payload, "forwarded requests") {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = output.send(Err(Status::invalid_argument(e.to_string()))).await;
                        return;
                    }
                };
                let Some(inner) = member.upgrade() else {
                    let _ = output.send(Err(Status::unavailable("member is stopping"))).await;
                    return;
                };
                for (id, request) in requests {
                    let store = Store::from_inner(inner.clone());
                    running.push(async move { (id, store.serve_as_leader(request).await) });
                }
            }
            Some(done) = running.next(), if !running.is_empty() => {
                let mut replies = vec![done];
                while let Some(Some(more)) = futures::FutureExt::now_or_never(running.next()) {
                    replies.push(more);
                }
                let frame = to_bytes(&replies).map(|payload| pb::ForwardFrame { cluster_id, payload: payload.into() });
                if output.send(frame.map_err(internal)).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

#[tonic::async_trait]
impl peer_server::Peer for PeerService {
    #[tracing::instrument(level = "trace", skip_all, fields(kind = request.get_ref().kind))]
    async fn raft(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id)?;
        let inner = self.inner()?;
        let raft = &inner.raft;
        match request.kind {
            KIND_APPEND => {
                let rpc: AppendEntriesRequest<_> = decode(&request.payload)?;
                encode(raft.append_entries(rpc).await)
            }
            KIND_VOTE => {
                let rpc: VoteRequest<_> = decode(&request.payload)?;
                encode(raft.vote(rpc).await)
            }
            KIND_PRE_VOTE => {
                let rpc: VoteRequest<_> = decode(&request.payload)?;
                encode(raft.pre_vote(rpc).await)
            }
            KIND_TRANSFER_LEADER => {
                let rpc: TransferLeaderRequest<_> = decode(&request.payload)?;
                encode(raft.handle_transfer_leader(rpc).await)
            }
            other => Err(Status::invalid_argument(format!("unknown raft message kind {other}"))),
        }
    }

    type StreamAppendStream = ReplyStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<pb::RaftRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let inner = self.inner()?;
        let cluster_id = inner.cluster_id;
        let input = request.into_inner().filter_map(move |msg| async move {
            let msg = msg.ok()?;
            if msg.cluster_id != cluster_id || msg.kind != KIND_APPEND {
                return None;
            }
            from_bytes::<AppendEntriesRequest<_>>(&msg.payload, "append entries").ok()
        });
        let output = inner.raft.stream_append(Box::pin(input)).map(|item| {
            let item = item.map_err(|e| e.to_string());
            to_bytes(&item).map(|payload| pb::RaftReply { payload: payload.into() }).map_err(internal)
        });
        Ok(Response::new(Box::pin(output)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let (manifest, dir) = self.receive_snapshot(request.into_inner()).await.inspect_err(|e| {
            tracing::warn!(error = %e.message(), "receiving a snapshot failed");
        })?;
        let snapshot = Snapshot { meta: manifest.meta, snapshot: SnapshotDir { path: dir.clone() } };
        let result = self.inner()?.raft.install_full_snapshot(manifest.vote, snapshot).await;
        // On success the state machine took the files; otherwise they are of no further use.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        encode(result)
    }

    type ForwardStreamStream = ForwardFrames;

    async fn forward_stream(
        &self,
        request: Request<Streaming<pb::ForwardFrame>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        let member = self.member.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(serve_forward_stream(member, self.cluster_id, request.into_inner(), tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn forward(&self, request: Request<pb::ForwardRequest>) -> Result<Response<pb::ForwardReply>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id)?;
        let forwarded: ForwardRequest = decode(&request.payload)?;
        let store = Store::from_inner(self.inner()?);
        let result = store.serve_as_leader(forwarded).await;
        let payload = to_bytes(&result).map_err(internal)?;
        Ok(Response::new(pb::ForwardReply { payload: payload.into() }))
    }
}
