//! The agent's stream to a member: dial, register with what is held, then apply what the
//! member sends and send what the node has to report, until the stream breaks; then the next
//! member. Pods keep running throughout: only the stream changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use keel_proto::node::agent_message::Message as ToMember;
use keel_proto::node::member_message::Message as FromMember;
use keel_proto::node::node_agent_client::NodeAgentClient;
use keel_proto::node::{AgentMessage, Heartbeat, MemberMessage, NodeStatus, Register, ResourceMetrics};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::NodeConfig;
use crate::pods::PodWorkers;
use crate::streams::PodStreams;

/// Reports sent in one message at most.
const BATCH: usize = 500;
/// How long reports gather before a batch goes (coalescing a pod's quick succession of
/// states into one write).
const GATHER: Duration = Duration::from_millis(20);

pub struct Connector {
    config: NodeConfig,
    workers: Arc<PodWorkers>,
    /// The member address the stream is up to, if it is up.
    current: Mutex<Option<String>>,
    /// Streams established so far.
    connects: AtomicU64,
    /// `kubectl logs`/`exec`/`attach` sessions riding on the current stream.
    pod_streams: PodStreams,
    /// The latest resource usage sample (`crate::metrics`).
    metrics: tokio::sync::watch::Receiver<Option<ResourceMetrics>>,
}

fn message(message: ToMember) -> AgentMessage {
    AgentMessage { message: Some(message) }
}

fn condition_statuses_of(status: &k8s_openapi::api::core::v1::NodeStatus) -> Vec<(String, String)> {
    status.conditions.iter().flatten().map(|c| (c.type_.clone(), c.status.clone())).collect()
}

fn condition_statuses(node: &k8s_openapi::api::core::v1::Node) -> Vec<(String, String)> {
    node.status.as_ref().map(condition_statuses_of).unwrap_or_default()
}

impl Connector {
    pub fn new(
        config: NodeConfig,
        workers: Arc<PodWorkers>,
        metrics: tokio::sync::watch::Receiver<Option<ResourceMetrics>>,
    ) -> Connector {
        Connector {
            config,
            workers,
            current: Mutex::new(None),
            connects: AtomicU64::new(0),
            pod_streams: PodStreams::default(),
            metrics,
        }
    }

    pub fn connected_to(&self) -> Option<String> {
        self.current.lock().clone()
    }

    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Keeps a stream up, member after member, until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let runtime = self.workers.context().runtime.clone();
        let version = loop {
            match runtime.version().await {
                Ok(v) => break v,
                Err(e) => {
                    tracing::warn!(node = %self.config.name, error = %e, "the container runtime is not answering");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        if self.config.servers.is_empty() {
            tracing::error!(node = %self.config.name, "no member addresses to connect to");
            return;
        }
        let mut failures = 0u32;
        for attempt in 0usize.. {
            let server = self.config.servers[attempt % self.config.servers.len()].clone();
            let span = tracing::info_span!("node_stream", node = %self.config.name, member = %server);
            let outcome = self.session(&server, &version).instrument(span).await;
            *self.current.lock() = None;
            self.pod_streams.close_all();
            self.workers.context().tokens.disconnected();
            match outcome {
                Ok(()) => {
                    tracing::info!(node = %self.config.name, member = %server, "the member ended the stream");
                    failures = 0;
                }
                Err(e) => {
                    tracing::info!(node = %self.config.name, member = %server, error = %format!("{e:#}"), "stream failed");
                    failures += 1;
                }
            }
            // The next member at once; a pause only once every member has failed in a row.
            if failures as usize >= self.config.servers.len() {
                let pause = 100 * u64::from(failures.min(20));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }

    async fn session(&self, server: &str, version: &keel_container::RuntimeVersion) -> anyhow::Result<()> {
        let simulated = version.name == "simulated";
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
            .context("member address")?
            .connect_timeout(Duration::from_secs(2))
            // A member that stops answering (paused, partitioned) is noticed by its silence.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.with_context(|| format!("dialing {server}"))?;
        let mut client = NodeAgentClient::new(channel).max_decoding_message_size(usize::MAX);
        let ctx = self.workers.context().clone();
        let (tx, rx) = mpsc::channel::<AgentMessage>(64);
        let node = crate::node::object(&self.config, version, simulated);
        let register = Register {
            node: serde_json::to_vec(&node).context("encoding the Node")?,
            known: ctx.objects.versions(),
            lease_duration_seconds: self.config.lease_duration.as_secs() as i32,
        };
        tx.send(message(ToMember::Register(register))).await.context("queueing Register")?;
        let response =
            client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.context("opening the stream")?;
        let mut incoming = response.into_inner();
        match incoming.message().await.context("waiting for Registered")? {
            Some(MemberMessage { message: Some(FromMember::Registered(registered)) }) => {
                tracing::info!(serving_member = %registered.member, "registered");
            }
            other => bail!("the member answered Register with {other:?}"),
        }
        *self.current.lock() = Some(server.to_string());
        self.connects.fetch_add(1, Ordering::Relaxed);
        ctx.reports.resend_all();
        ctx.tokens.connected(tx.clone());

        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        let mut node_status = tokio::time::interval(self.config.status_check.min(self.config.status_interval));
        node_status.tick().await; // Register carried the status.
        let mut last_sent = (tokio::time::Instant::now(), condition_statuses(&node));
        let mut metrics = self.metrics.clone();
        // A sample taken while no stream was up is stale by the next one: wait for that.
        metrics.mark_unchanged();
        loop {
            tokio::select! {
                received = incoming.message() => {
                    match received.context("receiving")? {
                        Some(MemberMessage { message: Some(FromMember::Sync(sync)) }) => {
                            let applied = ctx.objects.apply(sync).map_err(anyhow::Error::msg)?;
                            if applied.configs {
                                self.workers.wake_all();
                            }
                            for uid in &applied.pods {
                                self.workers.wake(uid);
                            }
                        }
                        Some(MemberMessage { message: Some(FromMember::Stream(control)) }) => {
                            self.pod_streams.control(&ctx, control, &tx);
                        }
                        Some(MemberMessage { message: Some(FromMember::Token(answer)) }) => ctx.tokens.answer(answer),
                        Some(other) => tracing::debug!(?other, "ignored a member message"),
                        None => return Ok(()),
                    }
                }
                _ = heartbeat.tick() => {
                    tx.send(message(ToMember::Heartbeat(Heartbeat {}))).await.context("sending a heartbeat")?;
                }
                _ = node_status.tick() => {
                    let status = crate::node::status(&self.config, version, simulated);
                    let conditions = condition_statuses_of(&status);
                    // Sent when a condition turned, else once per status interval.
                    if conditions != last_sent.1 || last_sent.0.elapsed() >= self.config.status_interval {
                        let status = serde_json::to_vec(&status).context("encoding the node status")?;
                        tx.send(message(ToMember::NodeStatus(NodeStatus { status }))).await.context("sending node status")?;
                        last_sent = (tokio::time::Instant::now(), conditions);
                    }
                }
                changed = metrics.changed() => {
                    if changed.is_err() {
                        // The sampler is gone (the agent is stopping): nothing more to send.
                        return Ok(());
                    }
                    let sample = metrics.borrow_and_update().clone();
                    if let Some(sample) = sample {
                        tx.send(message(ToMember::Metrics(sample))).await.context("sending resource metrics")?;
                    }
                }
                _ = ctx.reports.wake.notified() => {
                    tokio::time::sleep(GATHER).await;
                    loop {
                        let batch = ctx.reports.take(BATCH);
                        if batch.is_empty() {
                            break;
                        }
                        if !batch.statuses.pods.is_empty() {
                            tx.send(message(ToMember::PodStatus(batch.statuses))).await.context("sending pod status")?;
                        }
                        for finished in batch.finished {
                            tx.send(message(ToMember::PodFinished(finished))).await.context("sending a removal")?;
                        }
                        if !batch.events.events.is_empty() {
                            tx.send(message(ToMember::Events(batch.events))).await.context("sending events")?;
                        }
                        if !ctx.reports.has_more() {
                            break;
                        }
                    }
                }
            }
        }
    }
}
