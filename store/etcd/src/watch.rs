//! etcd's Watch service: one bidirectional stream carries any number of watchers. Each
//! watcher runs as its own task over a store [`Watcher`], so a slow watcher only ever delays
//! itself; all of them write into the stream's one outgoing queue.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use keel_proto::etcdserverpb::{self as pb, watch_server::Watch};
use keel_proto::mvccpb;
use keel_store::keys::KeyRange;
use keel_store::watch::{WatchSpec, Watcher};
use keel_store::{Store, StoreError};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use crate::status::to_status;
use crate::{EtcdOptions, MAX_REQUEST_BYTES, header};

/// Watch id etcd uses for responses that concern the whole stream (progress requests).
const STREAM_WATCH_ID: i64 = -1;

pub struct WatchService {
    store: Store,
    options: EtcdOptions,
}

impl WatchService {
    pub fn new(store: Store, options: EtcdOptions) -> Self {
        WatchService { store, options }
    }
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (out, rx) = mpsc::channel(256);
        let stream = WatchStreamState {
            store: self.store.clone(),
            options: self.options.clone(),
            out,
            watchers: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

struct WatcherHandle {
    task: JoinHandle<()>,
    progress: mpsc::Sender<oneshot::Sender<i64>>,
}

struct WatchStreamState {
    store: Store,
    options: EtcdOptions,
    out: Out,
    watchers: HashMap<i64, WatcherHandle>,
    next_id: i64,
}

impl WatchStreamState {
    async fn run(mut self, mut input: Streaming<pb::WatchRequest>) {
        loop {
            let request = tokio::select! {
                r = input.next() => r,
                _ = self.out.closed() => None,
            };
            let Some(Ok(request)) = request else { break };
            use pb::watch_request::RequestUnion;
            match request.request_union {
                Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
                Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
                Some(RequestUnion::ProgressRequest(_)) => self.progress().await,
                None => {}
            }
        }
        for (_, handle) in self.watchers.drain() {
            handle.task.abort();
        }
    }

    fn response(&self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse { header: Some(header(&self.store, revision)), watch_id, ..Default::default() }
    }

    async fn send(&self, response: pb::WatchResponse) {
        let _ = self.out.send(Ok(response)).await;
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) {
        self.watchers.retain(|_, h| !h.task.is_finished());
        let current = self.store.state().applied_revision();
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if self.watchers.contains_key(&id) {
            let mut r = self.response(STREAM_WATCH_ID, current);
            r.created = true;
            r.canceled = true;
            r.cancel_reason = "etcdserver: duplicate watch ID".into();
            return self.send(r).await;
        }
        self.next_id = self.next_id.max(id + 1);
        let filters = create.filters.iter().copied();
        let spec = WatchSpec {
            range: KeyRange::new(&create.key, &create.range_end),
            start_revision: create.start_revision,
            prev_kv: create.prev_kv,
            skip_puts: filters.clone().any(|f| f == pb::watch_create_request::FilterType::Noput as i32),
            skip_deletes: filters.clone().any(|f| f == pb::watch_create_request::FilterType::Nodelete as i32),
        };
        let watcher = match self.store.watch(spec) {
            Ok(w) => w,
            Err(e) => {
                let mut created = self.response(id, current);
                created.created = true;
                self.send(created).await;
                return self.send(cancellation(&self.store, id, current, e)).await;
            }
        };
        let mut created = self.response(id, watcher.created_revision());
        created.created = true;
        self.send(created).await;
        let (progress_tx, progress_rx) = mpsc::channel(4);
        let notify = create.progress_notify.then_some(self.options.progress_notify_interval);
        let task = tokio::spawn(run_watcher(
            self.store.clone(),
            id,
            watcher,
            self.out.clone(),
            progress_rx,
            notify,
            create.fragment,
        ));
        self.watchers.insert(id, WatcherHandle { task, progress: progress_tx });
    }

    async fn cancel(&mut self, id: i64) {
        if let Some(handle) = self.watchers.remove(&id) {
            handle.task.abort();
            let _ = handle.task.await;
            let mut r = self.response(id, self.store.state().applied_revision());
            r.canceled = true;
            self.send(r).await;
        }
    }

    /// Answers a progress request with a revision every watcher on the stream is complete up
    /// to: all later events have higher revisions.
    async fn progress(&mut self) {
        let mut revision = self.store.state().applied_revision();
        for handle in self.watchers.values() {
            let (tx, rx) = oneshot::channel();
            if handle.progress.send(tx).await.is_err() {
                continue;
            }
            if let Ok(r) = rx.await {
                revision = revision.min(r);
            }
        }
        self.send(self.response(STREAM_WATCH_ID, revision)).await;
    }
}

fn cancellation(store: &Store, id: i64, revision: i64, error: StoreError) -> pb::WatchResponse {
    let compact_revision = match error {
        StoreError::Compacted { compact_revision } => compact_revision,
        _ => 0,
    };
    pb::WatchResponse {
        header: Some(header(store, revision)),
        watch_id: id,
        canceled: true,
        compact_revision,
        cancel_reason: to_status(error).message().to_string(),
        ..Default::default()
    }
}

async fn run_watcher(
    store: Store,
    id: i64,
    mut watcher: Watcher,
    out: Out,
    mut progress: mpsc::Receiver<oneshot::Sender<i64>>,
    notify_every: Option<Duration>,
    fragment: bool,
) {
    let mut ticker = tokio::time::interval(notify_every.unwrap_or(Duration::from_secs(3600)));
    ticker.tick().await;
    let mut sent_since_tick = false;
    loop {
        tokio::select! {
            next = watcher.next() => match next {
                Ok(events) => {
                    for response in event_responses(&store, id, events, fragment) {
                        if out.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                    sent_since_tick = true;
                }
                Err(e) => {
                    let revision = watcher.progress_revision();
                    let _ = out.send(Ok(cancellation(&store, id, revision, e))).await;
                    return;
                }
            },
            Some(reply) = progress.recv() => {
                let _ = reply.send(watcher.progress_revision());
            }
            _ = ticker.tick(), if notify_every.is_some() => {
                if !sent_since_tick {
                    let response = pb::WatchResponse {
                        header: Some(header(&store, watcher.progress_revision())),
                        watch_id: id,
                        ..Default::default()
                    };
                    if out.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                sent_since_tick = false;
            }
        }
    }
}

/// One response for the events, or with `fragment`, several that each stay under the request
/// size limit (all but the last marked as fragments).
fn event_responses(store: &Store, id: i64, events: Vec<mvccpb::Event>, fragment: bool) -> Vec<pb::WatchResponse> {
    let revision = events.last().and_then(|e| e.kv.as_ref()).map_or(0, |kv| kv.mod_revision);
    let make = |events: Vec<mvccpb::Event>, more: bool| pb::WatchResponse {
        header: Some(header(store, revision)),
        watch_id: id,
        fragment: more,
        events,
        ..Default::default()
    };
    let total: usize = events.iter().map(|e| e.encoded_len()).sum();
    if !fragment || total <= MAX_REQUEST_BYTES {
        return vec![make(events, false)];
    }
    let mut responses = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for event in events {
        let len = event.encoded_len();
        if !current.is_empty() && size + len > MAX_REQUEST_BYTES {
            responses.push(make(std::mem::take(&mut current), true));
            size = 0;
        }
        size += len;
        current.push(event);
    }
    responses.push(make(current, false));
    responses
}
