//! `keel bench scheduler`: how fast pending pods get bound. Starts a store (1 or 3 members,
//! in this process, fsync on) with the API in front of it, registers N Ready nodes and M
//! pending pods with mixed requests, then starts the scheduler and times it until every
//! binding is written. At the end every pod is checked to be bound and no node to be over
//! its allocatable cpu, memory or pod count.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use keel_api::registry::{Registry, RuntimeConfig};
use keel_api::rest::{Api, ListOptions, WriteOptions};
use keel_runtime::Client;
use keel_store::node::Tuning;
use keel_store::{Bootstrap, Store, StoreConfig};
use serde_json::json;

#[derive(Args, Debug, Clone)]
pub struct SchedulerBench {
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 30_000)]
    pods: usize,
    /// Store members, all in this process (1 or 3).
    #[arg(long, default_value_t = 1)]
    members: usize,
    /// Concurrent writes while setting up.
    #[arg(long, default_value_t = 64)]
    setup_clients: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The requests the bench gives its pods, cycled: (cpu millicores, memory MiB).
const REQUESTS: [(i64, i64); 6] = [(100, 128), (250, 256), (500, 512), (1000, 1024), (200, 2048), (50, 64)];
const NODE_CPU: i64 = 8;
const NODE_MEMORY_GIB: i64 = 32;
const NODE_PODS: i64 = 110;

pub async fn run(args: SchedulerBench) -> Result<()> {
    if args.members != 1 && args.members != 3 {
        bail!("--members must be 1 or 3");
    }
    let dir = tempfile::Builder::new().prefix("keel-bench-scheduler-").tempdir().context("temp dir")?;
    let (stores, api) = start_cluster(&args, dir.path()).await?;

    eprintln!("registering {} nodes and {} pending pods ...", args.nodes, args.pods);
    let setup = Instant::now();
    let nodes_rt = api.registry.find("", "v1", "nodes").context("nodes not served")?;
    let pods_rt = api.registry.find("", "v1", "pods").context("pods not served")?;
    let options = WriteOptions::default();
    for_each_concurrently(args.nodes, args.setup_clients, |i| {
        let api = api.clone();
        let rt = nodes_rt.clone();
        let options = options.clone();
        async move {
            let name = format!("node-{i:05}");
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name,
                    "topology.kubernetes.io/zone": format!("zone-{}", i % 10),
                }},
                "spec": {},
            });
            let (mut created, _) = api.create(&rt, None, node, &options).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let resources = json!({"cpu": NODE_CPU.to_string(), "memory": format!("{NODE_MEMORY_GIB}Gi"), "pods": NODE_PODS.to_string()});
            created["status"] = json!({
                "capacity": resources, "allocatable": resources,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            });
            api.update(&rt, None, &name, Some("status"), created, &options).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
    })
    .await?;
    for_each_concurrently(args.pods, args.setup_clients, |i| {
        let api = api.clone();
        let rt = pods_rt.clone();
        let options = options.clone();
        async move {
            let (cpu, memory) = REQUESTS[i % REQUESTS.len()];
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i:06}"), "labels": {"app": format!("app-{}", i % 50)}},
                "spec": {"containers": [{
                    "name": "app", "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{memory}Mi")}},
                }]},
            });
            api.create(&rt, Some("default"), pod, &options).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
    })
    .await?;
    let setup_time = setup.elapsed();

    eprintln!("scheduling ...");
    let scheduler = keel_scheduler::Scheduler::new(
        Client::new(api.clone(), keel_scheduler::scheduler::DEFAULT_SCHEDULER),
        keel_scheduler::scheduler::DEFAULT_SCHEDULER,
    );
    let metrics = scheduler.metrics.clone();
    let started = Instant::now();
    let task = tokio::spawn(scheduler.run());
    let mut first_bound: Option<Duration> = None;
    let deadline = started + Duration::from_secs(600);
    loop {
        let bound = metrics.bound.load(Ordering::Relaxed) as usize;
        if bound > 0 && first_bound.is_none() {
            first_bound = Some(started.elapsed());
        }
        if bound >= args.pods {
            break;
        }
        if Instant::now() > deadline {
            task.abort();
            bail!("only {bound} of {} pods bound after 10 minutes", args.pods);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    task.abort();
    let first = first_bound.unwrap_or_default();
    let binding_window = total.saturating_sub(first);

    // Every placement valid: each pod bound, no node over its allocatable.
    let listed =
        api.list(&pods_rt, Some("default"), &ListOptions::default()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut per_node: HashMap<String, (i64, i64, i64)> = HashMap::new();
    let mut unbound = 0;
    for pod in &listed.items {
        let Some(node) = pod.pointer("/spec/nodeName").and_then(|v| v.as_str()) else {
            unbound += 1;
            continue;
        };
        let index: usize = pod["metadata"]["name"]
            .as_str()
            .and_then(|n| n.strip_prefix("pod-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let (cpu, memory) = REQUESTS[index % REQUESTS.len()];
        let entry = per_node.entry(node.to_string()).or_default();
        entry.0 += cpu;
        entry.1 += memory;
        entry.2 += 1;
    }
    let overcommitted = per_node
        .values()
        .filter(|(cpu, memory, pods)| *cpu > NODE_CPU * 1000 || *memory > NODE_MEMORY_GIB * 1024 || *pods > NODE_PODS)
        .count();
    let rate = args.pods as f64 / total.as_secs_f64();
    let binding_rate = args.pods as f64 / binding_window.as_secs_f64().max(1e-9);
    if args.json {
        println!(
            "{}",
            json!({
                "bench": "scheduler", "members": args.members, "nodes": args.nodes, "pods": args.pods,
                "setup_seconds": setup_time.as_secs_f64(), "seconds": total.as_secs_f64(),
                "cache_sync_seconds": first.as_secs_f64(), "pods_per_second": rate,
                "binding_pods_per_second": binding_rate, "unbound": unbound, "overcommitted_nodes": overcommitted,
                "nodes_used": per_node.len(), "bind_failures": metrics.bind_failures.load(Ordering::Relaxed),
            })
        );
    } else {
        println!(
            "scheduler bench: {} nodes, {} pending pods, {} member(s), fsync on",
            args.nodes, args.pods, args.members
        );
        println!("  setup (register nodes, create pods): {:.1} s", setup_time.as_secs_f64());
        println!("  scheduler start to last binding written: {:.2} s -> {:.0} pods/s", total.as_secs_f64(), rate);
        println!("    of which cache sync (list nodes+pods) until the first binding: {:.2} s", first.as_secs_f64());
        println!("    first to last binding: {:.2} s -> {:.0} pods/s", binding_window.as_secs_f64(), binding_rate);
        println!(
            "  placements: {} unbound, {} nodes over allocatable, {} nodes used, {} binding conflicts retried",
            unbound,
            overcommitted,
            per_node.len(),
            metrics.bind_failures.load(Ordering::Relaxed)
        );
    }
    for store in &stores {
        store.shutdown().await;
    }
    if unbound > 0 || overcommitted > 0 {
        bail!("invalid placements: {unbound} pods unbound, {overcommitted} nodes over-committed");
    }
    Ok(())
}

async fn start_cluster(args: &SchedulerBench, dir: &std::path::Path) -> Result<(Vec<Store>, Arc<Api>)> {
    let mut listeners = Vec::new();
    for _ in 0..args.members {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind a peer port")?);
    }
    let peers: Vec<(String, String)> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| Ok((format!("m{}", i + 1), l.local_addr()?.to_string())))
        .collect::<std::io::Result<_>>()?;
    let mut starts = Vec::new();
    for ((name, peer), listener) in peers.iter().cloned().zip(listeners) {
        let config = StoreConfig {
            name: name.clone(),
            data_dir: dir.join(&name),
            peer_addr: peer,
            client_addr: String::new(),
            api_addr: String::new(),
            bootstrap: Bootstrap::InitialCluster(peers.clone()),
            tuning: Tuning::default(),
            filter: None,
        };
        starts.push(tokio::spawn(Store::start(config, listener)));
    }
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.context("store task")??);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(leader) = stores.iter().find(|s| s.is_leader()) {
            break leader.clone();
        }
        if Instant::now() > deadline {
            bail!("no leader elected within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let storage: keel_api::storage::SharedStorage = Arc::new(leader);
    let api = Arc::new(Api::new(storage, Arc::new(Registry::new(RuntimeConfig::default()))));
    api.ensure_system_namespaces().await.map_err(|e| anyhow::anyhow!("system namespaces: {e}"))?;
    Ok((stores, api))
}

async fn for_each_concurrently<F, Fut>(count: usize, concurrency: usize, make: F) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        if tasks.len() >= concurrency.max(1)
            && let Some(done) = tasks.join_next().await
        {
            done.context("setup task")??;
        }
        tasks.spawn(make(i));
    }
    while let Some(done) = tasks.join_next().await {
        done.context("setup task")??;
    }
    Ok(())
}
