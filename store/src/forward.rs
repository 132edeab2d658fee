//! Requests a member hands to the leader, multiplexed over one long-lived gRPC stream per
//! leader: whatever is waiting when the stream is free goes out as one frame, and replies come
//! back batched the same way. A unary call per request cost more CPU than the request itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::peer as pb;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;

use crate::codec::{from_bytes, to_bytes};
use crate::error::{Result, StoreError};
use crate::network::Channels;
use crate::node::{ForwardOk, ForwardRequest};

type Reply = oneshot::Sender<Result<ForwardOk>>;
/// Requests waiting for the stream to one leader.
type Queue = mpsc::UnboundedSender<(ForwardRequest, Reply)>;

/// Streams to leaders, one per peer address.
#[derive(Clone, Default)]
pub struct Forwarders {
    streams: Arc<Mutex<HashMap<String, Queue>>>,
}

impl Forwarders {
    /// Sends `request` to the member at `addr` and waits for its answer.
    pub async fn call(
        &self,
        channels: &Channels,
        cluster_id: u64,
        addr: &str,
        request: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardOk> {
        let (tx, rx) = oneshot::channel();
        let queue = {
            let mut streams = self.streams.lock();
            match streams.get(addr) {
                Some(queue) if !queue.is_closed() => queue.clone(),
                _ => {
                    let queue = spawn_stream(channels, cluster_id, addr)?;
                    streams.insert(addr.to_string(), queue.clone());
                    queue
                }
            }
        };
        queue.send((request, tx)).map_err(|_| StoreError::NoLeader)?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(_)) => Err(StoreError::Unavailable(format!("forwarding to {addr}: stream closed"))),
            Ok(Ok(result)) => result,
        }
    }
}

/// Starts the stream task for one leader; returns its queue.
fn spawn_stream(channels: &Channels, cluster_id: u64, addr: &str) -> Result<Queue> {
    let mut client = channels.client(addr).map_err(|e| StoreError::Unavailable(format!("peer {addr}: {e}")))?;
    let (queue_tx, mut queue) = mpsc::unbounded_channel::<(ForwardRequest, Reply)>();
    let addr = addr.to_string();
    tokio::spawn(async move {
        let (frames_tx, frames_rx) = mpsc::channel::<pb::ForwardFrame>(64);
        let mut waiting: HashMap<u64, Reply> = HashMap::new();
        let mut next_id = 0u64;
        // Wait for the first request before opening the stream.
        let Some(first) = queue.recv().await else { return };
        let mut first = Some(first);
        let replies = match client.forward_stream(tokio_stream::wrappers::ReceiverStream::new(frames_rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // Nothing was sent: the caller may route again.
                let error = if status.code() == tonic::Code::Unavailable {
                    StoreError::NoLeader
                } else {
                    StoreError::Unavailable(format!("forwarding to {addr}: {}", status.message()))
                };
                fail_all(first.into_iter().chain(drain(&mut queue)).map(|(_, tx)| tx), &error);
                return;
            }
        };
        let mut replies = Box::pin(replies);
        loop {
            let batch: Vec<(ForwardRequest, Reply)> = match first.take() {
                Some(r) => std::iter::once(r).chain(drain(&mut queue)).collect(),
                None => {
                    tokio::select! {
                        request = queue.recv() => match request {
                            Some(r) => std::iter::once(r).chain(drain(&mut queue)).collect(),
                            None => break,
                        },
                        reply = replies.next() => {
                            if !deliver(reply, &mut waiting) {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            let mut tagged = Vec::with_capacity(batch.len());
            for (request, reply) in batch {
                next_id += 1;
                waiting.insert(next_id, reply);
                tagged.push((next_id, request));
            }
            let frame = match to_bytes(&tagged) {
                Ok(payload) => pb::ForwardFrame { cluster_id, payload: payload.into() },
                Err(e) => {
                    fail_all(tagged.iter().filter_map(|(id, _)| waiting.remove(id)), &e);
                    continue;
                }
            };
            if frames_tx.send(frame).await.is_err() {
                break;
            }
        }
        // Requests sent on a stream that ended may or may not have been applied; those still
        // queued were never sent and may be routed again.
        queue.close();
        let error = StoreError::Unavailable(format!("forwarding to {addr}: stream closed"));
        fail_all(waiting.into_values(), &error);
        fail_all(drain(&mut queue).map(|(_, tx)| tx), &StoreError::NoLeader);
    });
    Ok(queue_tx)
}

fn drain<T>(queue: &mut mpsc::UnboundedReceiver<T>) -> impl Iterator<Item = T> + '_ {
    std::iter::from_fn(move || queue.try_recv().ok())
}

fn fail_all(replies: impl IntoIterator<Item = Reply>, error: &StoreError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

/// Hands the replies in one frame to their callers; false when the stream is over.
fn deliver(
    frame: Option<std::result::Result<pb::ForwardFrame, tonic::Status>>,
    waiting: &mut HashMap<u64, Reply>,
) -> bool {
    let Some(Ok(frame)) = frame else { return false };
    let replies: Vec<(u64, Result<ForwardOk>)> = match from_bytes(&frame.payload, "forward replies") {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "undecodable forward replies");
            return false;
        }
    };
    for (id, result) in replies {
        if let Some(reply) = waiting.remove(&id) {
            let _ = reply.send(result);
        }
    }
    true
}
