//! `keel bench`: load generators. `keel bench store` drives any etcd v3 API (keel's or
//! etcd's) with the same workload, so the two can be measured side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use keel_proto::etcdserverpb::{self as pb, kv_client::KvClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    kind: BenchKind,
}

#[derive(Subcommand, Debug)]
enum BenchKind {
    /// Puts, gets and transactions against etcd v3 API endpoints.
    Store(StoreBench),
    /// Creates, lists and watches through the Kubernetes API.
    Api(crate::bench_api::ApiBench),
    /// Binds pending pods to nodes: pods per second and placement validity.
    Scheduler(crate::bench_scheduler::SchedulerBench),
    /// Pod start-up latency: create to Running seen through a watch.
    Pods(crate::bench_pods::PodsBench),
}

#[derive(Args, Debug, Clone)]
pub struct StoreBench {
    /// etcd API endpoints (`host:port,...`); clients are spread over them round-robin.
    #[arg(long)]
    endpoints: String,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections shared by the clients (defaults to one per client).
    #[arg(long)]
    conns: Option<usize>,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Size of the key space; each request picks a key uniformly.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Operation mix, e.g. `put`, `get`, `put:50,get:50`, `txn`.
    #[arg(long, default_value = "put")]
    mix: String,
    /// Reads: `l` (linearizable) or `s` (serializable).
    #[arg(long, default_value = "l")]
    consistency: String,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before measuring starts (not recorded).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Write every key once before starting (on by default when the mix reads).
    #[arg(long)]
    prefill: Option<bool>,
    /// Label printed with the results.
    #[arg(long, default_value = "")]
    label: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Txn,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Txn => "txn",
        }
    }
}

fn parse_mix(mix: &str) -> Result<Vec<(Op, u32)>> {
    let mut out = Vec::new();
    for part in mix.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part.split_once(':').unwrap_or((part, "100"));
        let op = match name {
            "put" => Op::Put,
            "get" => Op::Get,
            "txn" => Op::Txn,
            other => bail!("unknown operation {other:?} in --mix (put, get, txn)"),
        };
        let weight: u32 = weight.parse().with_context(|| format!("weight in {part:?}"))?;
        out.push((op, weight));
    }
    if out.iter().map(|(_, w)| *w).sum::<u32>() == 0 {
        bail!("--mix has no operations");
    }
    Ok(out)
}

#[derive(Serialize)]
struct OpReport {
    op: &'static str,
    ok: u64,
    errors: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

#[derive(Serialize)]
struct Report {
    label: String,
    endpoints: String,
    clients: usize,
    conns: usize,
    value_size: usize,
    keys: usize,
    mix: String,
    consistency: String,
    seconds: f64,
    total_ops_per_sec: f64,
    ops: Vec<OpReport>,
    first_error: Option<String>,
}

struct ClientResult {
    histograms: Vec<(Op, Histogram<u64>, u64)>,
    first_error: Option<String>,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.kind {
        BenchKind::Store(b) => store(b).await,
        BenchKind::Api(b) => crate::bench_api::run(b).await,
        BenchKind::Scheduler(b) => crate::bench_scheduler::run(b).await,
        BenchKind::Pods(b) => crate::bench_pods::run(b).await,
    }
}

fn key(n: usize) -> Vec<u8> {
    format!("bench/key-{n:08}").into_bytes()
}

async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let url = if endpoint.contains("://") { endpoint.clone() } else { format!("http://{endpoint}") };
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .with_context(|| format!("connect to {url}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

async fn store(b: StoreBench) -> Result<()> {
    let endpoints: Vec<String> =
        b.endpoints.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if endpoints.is_empty() {
        bail!("--endpoints is empty");
    }
    if b.clients == 0 || b.keys == 0 {
        bail!("--clients and --keys must be positive");
    }
    let serializable = match b.consistency.as_str() {
        "l" => false,
        "s" => true,
        other => bail!("--consistency must be l or s, not {other:?}"),
    };
    let mix = Arc::new(parse_mix(&b.mix)?);
    let conns = b.conns.unwrap_or(b.clients).max(1);
    let channels = connect(&endpoints, conns).await?;
    let value = Arc::new(vec![b'x'; b.value_size]);

    let reads = mix.iter().any(|(op, w)| *op != Op::Put && *w > 0);
    if b.prefill.unwrap_or(reads) {
        prefill(&channels, b.keys, &value).await?;
    }

    let start = Instant::now();
    let record_from = start + b.warmup;
    let end = record_from + b.duration;
    let mut tasks = Vec::with_capacity(b.clients);
    for i in 0..b.clients {
        let client = KvClient::new(channels[i % channels.len()].clone());
        let mix = mix.clone();
        let value = value.clone();
        let keys = b.keys;
        tasks.push(tokio::spawn(run_client(client, mix, value, keys, serializable, record_from, end, i as u64)));
    }
    let mut merged: Vec<(Op, Histogram<u64>, u64)> = Vec::new();
    let mut first_error = None;
    for task in tasks {
        let result = task.await.context("bench client panicked")??;
        if first_error.is_none() {
            first_error = result.first_error;
        }
        for (op, hist, errors) in result.histograms {
            match merged.iter_mut().find(|(o, _, _)| *o == op) {
                Some((_, h, e)) => {
                    h.add(&hist).context("merge histograms")?;
                    *e += errors;
                }
                None => merged.push((op, hist, errors)),
            }
        }
    }
    let seconds = b.duration.as_secs_f64();
    let ops: Vec<OpReport> = merged
        .iter()
        .map(|(op, h, errors)| OpReport {
            op: op.name(),
            ok: h.len(),
            errors: *errors,
            ops_per_sec: h.len() as f64 / seconds,
            p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            p999_ms: h.value_at_quantile(0.999) as f64 / 1000.0,
        })
        .collect();
    let report = Report {
        label: b.label.clone(),
        endpoints: b.endpoints.clone(),
        clients: b.clients,
        conns,
        value_size: b.value_size,
        keys: b.keys,
        mix: b.mix.clone(),
        consistency: b.consistency.clone(),
        seconds,
        total_ops_per_sec: ops.iter().map(|o| o.ops_per_sec).sum(),
        ops,
        first_error,
    };
    if b.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{}{} clients, {} conns, {} B values, {} keys, mix {}, {} reads, {:.0}s on {}",
            if report.label.is_empty() { String::new() } else { format!("[{}] ", report.label) },
            report.clients,
            report.conns,
            report.value_size,
            report.keys,
            report.mix,
            if serializable { "serializable" } else { "linearizable" },
            seconds,
            report.endpoints
        );
        for o in &report.ops {
            println!(
                "  {:<4} {:>10.1} ops/s   p50 {:>7.2} ms   p99 {:>7.2} ms   p999 {:>7.2} ms   ({} ok, {} errors)",
                o.op, o.ops_per_sec, o.p50_ms, o.p99_ms, o.p999_ms, o.ok, o.errors
            );
        }
        if let Some(e) = &report.first_error {
            println!("  first error: {e}");
        }
    }
    Ok(())
}

async fn prefill(channels: &[Channel], keys: usize, value: &Arc<Vec<u8>>) -> Result<()> {
    let workers = 32.min(keys);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = KvClient::new(channels[w % channels.len()].clone());
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = w;
            while n < keys {
                client
                    .put(pb::PutRequest { key: key(n), value: value.to_vec(), ..Default::default() })
                    .await
                    .map_err(|e| anyhow::anyhow!("prefill put: {}", e.message()))?;
                n += workers;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("prefill task panicked")??;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    mut client: KvClient<Channel>,
    mix: Arc<Vec<(Op, u32)>>,
    value: Arc<Vec<u8>>,
    keys: usize,
    serializable: bool,
    record_from: Instant,
    end: Instant,
    seed: u64,
) -> Result<ClientResult> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5eed);
    let total_weight: u32 = mix.iter().map(|(_, w)| *w).sum();
    let mut histograms: Vec<(Op, Histogram<u64>, u64)> = Vec::new();
    for (op, _) in mix.iter() {
        histograms.push((*op, Histogram::new_with_bounds(1, 60_000_000, 3)?, 0));
    }
    let mut first_error = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut pick = rng.random_range(0..total_weight);
        let mut op = mix[0].0;
        for (candidate, w) in mix.iter() {
            if pick < *w {
                op = *candidate;
                break;
            }
            pick -= w;
        }
        let k = key(rng.random_range(0..keys));
        let started = Instant::now();
        let result = match op {
            Op::Put => {
                client.put(pb::PutRequest { key: k, value: value.to_vec(), ..Default::default() }).await.map(|_| ())
            }
            Op::Get => client.range(pb::RangeRequest { key: k, serializable, ..Default::default() }).await.map(|_| ()),
            Op::Txn => client
                .txn(pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: pb::compare::CompareResult::Greater as i32,
                        target: pb::compare::CompareTarget::Mod as i32,
                        key: k.clone(),
                        target_union: Some(pb::compare::TargetUnion::ModRevision(0)),
                        range_end: vec![],
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: k.clone(),
                            value: value.to_vec(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                            key: k,
                            ..Default::default()
                        })),
                    }],
                })
                .await
                .map(|_| ()),
        };
        let elapsed = started.elapsed();
        if started < record_from {
            continue;
        }
        let slot = histograms.iter_mut().find(|(o, _, _)| *o == op).map(|(_, h, e)| (h, e));
        if let Some((hist, errors)) = slot {
            match result {
                Ok(()) => hist.saturating_record(elapsed.as_micros() as u64),
                Err(status) => {
                    *errors += 1;
                    if first_error.is_none() {
                        first_error = Some(format!("{op:?}: {}", status.message()));
                    }
                }
            }
        }
    }
    Ok(ClientResult { histograms, first_error })
}
