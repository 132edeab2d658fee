//! Concurrent clients that write and read a few keys while faults are injected, recording
//! everything for the checkers; and watchers that follow those keys across member failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use keel_proto::etcdserverpb as pb;
use keel_proto::mvccpb;
use parking_lot::Mutex;
use rand::Rng;
use tokio_stream::StreamExt;

use super::client::{Etcd, with_deadline};
use super::linearizability::{Kind, Operation};
use super::watch_check::{Delivery, SeenEvent, Write};

pub const PREFIX: &str = "lin/";

pub struct Recorder {
    start: Instant,
    pub operations: Mutex<Vec<Operation>>,
    pub writes: Mutex<Vec<Write>>,
    pub stop: AtomicBool,
    /// Highest revision any write was acknowledged at.
    pub max_revision: AtomicI64,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            operations: Mutex::new(Vec::new()),
            writes: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            max_revision: AtomicI64::new(0),
        })
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn acknowledged_writes(&self) -> usize {
        self.writes.lock().iter().filter(|w| w.revision.is_some()).count()
    }

    /// Linearizable reads of every key from every endpoint, added to the history: the
    /// checker then also proves no acknowledged write was lost.
    pub async fn final_reads(&self, endpoints: &[String], keys: usize) {
        for endpoint in endpoints {
            let client = Etcd::new(endpoint);
            for k in 0..keys {
                let key = format!("{PREFIX}k{k}");
                let call = self.now();
                let kv = with_deadline(Duration::from_secs(5), client.get(&key))
                    .await
                    .unwrap_or_else(|e| panic!("final read of {key} on {endpoint}: {e}"));
                let ret = self.now();
                self.operations.lock().push(Operation {
                    key,
                    call,
                    ret: Some(ret),
                    kind: Kind::Read(kv.map(|kv| parse_value(&kv.value))),
                });
            }
        }
    }
}

fn parse_value(raw: &[u8]) -> u64 {
    String::from_utf8_lossy(raw).parse().unwrap_or(u64::MAX)
}

/// One client: random keys, 60% writes of unique values, 40% linearizable reads, each sent to
/// a random endpoint with a deadline. Runs until the recorder is told to stop.
pub async fn client(id: u64, endpoints: Vec<String>, keys: usize, recorder: Arc<Recorder>) {
    let clients: Vec<Etcd> = endpoints.iter().map(|e| Etcd::new(e)).collect();
    let mut seq = 0u64;
    while !recorder.stop.load(Ordering::Relaxed) {
        let (target, key, write) = {
            let mut rng = rand::rng();
            (rng.random_range(0..clients.len()), rng.random_range(0..keys), rng.random_bool(0.6))
        };
        let client = &clients[target];
        let key = format!("{PREFIX}k{key}");
        let call = recorder.now();
        if write {
            seq += 1;
            let value = (id << 32) | seq;
            let result = with_deadline(Duration::from_secs(2), client.put(&key, &value.to_string())).await;
            let ret = recorder.now();
            let revision = result.ok();
            if let Some(rev) = revision {
                recorder.max_revision.fetch_max(rev, Ordering::Relaxed);
            }
            recorder.operations.lock().push(Operation {
                key: key.clone(),
                call,
                ret: revision.map(|_| ret),
                kind: Kind::Write(value),
            });
            recorder.writes.lock().push(Write { key, value: value.to_string(), revision });
            if revision.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            match with_deadline(Duration::from_secs(2), client.get(&key)).await {
                Ok(kv) => {
                    let ret = recorder.now();
                    recorder.operations.lock().push(Operation {
                        key,
                        call,
                        ret: Some(ret),
                        kind: Kind::Read(kv.map(|kv| parse_value(&kv.value))),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Follows every key under [`PREFIX`] from revision `from`, moving to the next endpoint when
/// the current one fails and resuming after the last revision it received. Returns once it
/// has received everything up to the revision `done_at` is set to (0 while still running).
pub async fn watcher(endpoints: Vec<String>, first: usize, from: i64, done_at: Arc<AtomicI64>) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    let mut next = from;
    let mut index = first;
    let prefix = PREFIX.as_bytes().to_vec();
    let range_end = b"lin0".to_vec();
    loop {
        let target = done_at.load(Ordering::Relaxed);
        if target > 0 && next > target {
            return deliveries;
        }
        let client = Etcd::new(&endpoints[index % endpoints.len()]);
        index += 1;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                key: prefix.clone(),
                range_end: range_end.clone(),
                start_revision: next,
                progress_notify: true,
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            continue;
        }
        let stream = match with_deadline(
            Duration::from_secs(2),
            client.watch.clone().watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut stream = Box::pin(stream.timeout(Duration::from_secs(3)));
        loop {
            let target = done_at.load(Ordering::Relaxed);
            if target > 0 && next > target {
                return deliveries;
            }
            let response = match stream.next().await {
                Some(Ok(Ok(r))) => r,
                // Error, end of stream, or silence (a paused member): try another member.
                _ => break,
            };
            if response.canceled {
                panic!("watch canceled: {} (compact revision {})", response.cancel_reason, response.compact_revision);
            }
            if response.created {
                continue;
            }
            if response.events.is_empty() {
                if let Some(h) = response.header {
                    deliveries.push(Delivery::Progress(h.revision));
                    // Everything up to a progress revision has been delivered (the checker
                    // holds the member to that), so that is where a resumed watch starts;
                    // it is also how the watcher learns it is done when the last revisions
                    // are not writes to its keys (a new leader's blank entry, say).
                    next = next.max(h.revision + 1);
                }
                continue;
            }
            let events: Vec<SeenEvent> = response
                .events
                .iter()
                .filter_map(|e| {
                    let kv = e.kv.as_ref()?;
                    Some(SeenEvent {
                        revision: kv.mod_revision,
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        value: (e.r#type == mvccpb::event::EventType::Put as i32)
                            .then(|| String::from_utf8_lossy(&kv.value).into_owned()),
                    })
                })
                .collect();
            if let Some(last) = events.last() {
                next = last.revision + 1;
            }
            deliveries.push(Delivery::Events(events));
        }
        drop(tx);
    }
}
