//! The agent's stream to a member: dial, register with what is held, then apply what the
//! member sends and send what the node has to report, until the stream breaks; then the next
//! member. Pods keep running throughout: only the stream changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
/// How often an agent that cannot reach any member says so again.
const OUTAGE_REMINDER: Duration = Duration::from_secs(60);

pub struct Connector {
    config: NodeConfig,
    workers: Arc<PodWorkers>,
    /// The member address the stream is up to, if it is up.
    current: Mutex<Option<String>>,
    /// Streams established so far.
    connects: AtomicU64,
    outage: Mutex<Outage>,
    /// `kubectl logs`/`exec`/`attach` sessions riding on the current stream.
    pod_streams: PodStreams,
    /// The latest resource usage sample (`crate::metrics`).
    metrics: tokio::sync::watch::Receiver<Option<ResourceMetrics>>,
}

/// A run of failed streams, for the log: its start is news, and so is each minute it lasts,
/// but not each of the attempts in between (every member is tried in turn every two seconds).
#[derive(Default)]
struct Outage {
    /// Since when no stream has been up, and when that was last said.
    current: Option<(Instant, Instant)>,
}

enum OutageNews {
    Started,
    Lasting(Duration),
    Nothing,
}

impl Outage {
    fn failed(&mut self, now: Instant) -> OutageNews {
        match &mut self.current {
            None => {
                self.current = Some((now, now));
                OutageNews::Started
            }
            Some((since, said)) if now.duration_since(*said) >= OUTAGE_REMINDER => {
                *said = now;
                OutageNews::Lasting(now.duration_since(*since))
            }
            Some(_) => OutageNews::Nothing,
        }
    }

    /// A stream is up: how long there was none, if an outage had been said.
    fn ended(&mut self, now: Instant) -> Option<Duration> {
        self.current.take().map(|(since, _)| now.duration_since(since))
    }
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
            outage: Mutex::new(Outage::default()),
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
            let connects_before = self.connects();
            let outcome = self.session(&server, &version).instrument(span).await;
            *self.current.lock() = None;
            self.pod_streams.close_all();
            self.workers.context().tokens.disconnected();
            if self.connects() > connects_before {
                failures = 0;
            }
            let now = Instant::now();
            match outcome {
                Ok(()) => tracing::info!(node = %self.config.name, member = %server, "the member ended the stream"),
                // A stream that was up and broke, or the first failure in a row, is news; the
                // rest of a run of failures (members down, every one tried in turn every two
                // seconds) is said once a minute.
                Err(e) => {
                    failures += 1;
                    let error = format!("{e:#}");
                    let (node, member) = (&self.config.name, &server);
                    match self.outage.lock().failed(now) {
                        OutageNews::Started => {
                            tracing::warn!(%node, %member, %error, "stream failed; trying the members in turn");
                        }
                        OutageNews::Lasting(out_for) => {
                            tracing::warn!(%node, %member, %error, ?out_for, failures, "still no member reachable");
                        }
                        OutageNews::Nothing => tracing::debug!(%node, %member, %error, "stream failed"),
                    }
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
                let without_member_for = self.outage.lock().ended(Instant::now());
                match without_member_for {
                    Some(after) if self.connects() > 0 => {
                        tracing::info!(serving_member = %registered.member, ?after, "registered again");
                    }
                    // The agent started before any member answered (a cluster booting).
                    Some(after) => tracing::info!(serving_member = %registered.member, ?after, "registered"),
                    None => tracing::info!(serving_member = %registered.member, "registered"),
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_news_at_its_start_and_once_a_minute() {
        let mut outage = Outage::default();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let news: Vec<String> = [0, 2, 4, 58, 60, 62, 119, 120]
            .into_iter()
            .map(|s| match outage.failed(at(s)) {
                OutageNews::Started => format!("{s}: started"),
                OutageNews::Lasting(d) => format!("{s}: lasting {}s", d.as_secs()),
                OutageNews::Nothing => format!("{s}: -"),
            })
            .collect();
        assert_eq!(
            news,
            ["0: started", "2: -", "4: -", "58: -", "60: lasting 60s", "62: -", "119: -", "120: lasting 120s"]
        );
        assert_eq!(outage.ended(at(125)), Some(Duration::from_secs(125)));
        // Connected with no outage said: nothing to end; the next failure starts a new one.
        assert_eq!(outage.ended(at(130)), None);
        assert!(matches!(outage.failed(at(131)), OutageNews::Started));
    }
}
