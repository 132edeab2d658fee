//! `keel bench pods`: pod start-up latency, as Kubernetes' SLO measures it — from the create
//! request to the pod seen Running through a watch — over many pods created with some
//! concurrency, through the scheduler onto whatever nodes the cluster has (real containerd or
//! simulated). Prints p50, p99 and the maximum.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::bench_api::{call, http_client};

#[derive(Args, Debug)]
pub struct PodsBench {
    /// API address of a member (`host:port`).
    #[arg(long, default_value = "127.0.0.1:6443")]
    server: String,
    /// Pods to start.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Pods created per second (0: as fast as --concurrency allows). Start-up latency means
    /// something only below the node's start-up throughput; above it, pods queue and the
    /// latency measures the queue (Kubernetes' density tests also create at a fixed rate).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value = "keel.local/busybox:1.36")]
    image: String,
    /// Longest wait for every pod to run.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Leave the pods (and their namespace) when done.
    #[arg(long)]
    keep: bool,
}

fn pod(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench-pods"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": image, "command": ["sleep", "3600"],
                            "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]
        }
    })
}

pub async fn run(args: PodsBench) -> Result<()> {
    if args.pods == 0 || args.concurrency == 0 {
        bail!("--pods and --concurrency must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a number of pods per second, 0 or more");
    }
    let client = http_client();
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let namespace = format!("bench-pods-{run_id}");
    let ns_body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
    let (status, text) =
        call(&client, Method::POST, &format!("http://{}/api/v1/namespaces", args.server), Some(&ns_body)).await?;
    if !status.is_success() {
        bail!("creating namespace {namespace}: {status}: {}", String::from_utf8_lossy(&text));
    }

    // The watch starts before the first create, so no Running is missed.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let running: Arc<Mutex<HashMap<String, Duration>>> = Arc::new(Mutex::new(HashMap::new()));
    let url = format!("http://{}/api/v1/namespaces/{namespace}/pods?watch=true&resourceVersion=0", args.server);
    let request = Request::builder().uri(&url).body(Full::new(Bytes::new()))?;
    let response = client.request(request).await.context("opening the watch")?;
    if response.status() != StatusCode::OK {
        bail!("watching pods: {}", response.status());
    }
    let watcher = {
        let (created, running) = (created.clone(), running.clone());
        tokio::spawn(async move {
            let mut body = response.into_body();
            let mut buffer = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else { continue };
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                    if event.pointer("/object/status/phase").and_then(Value::as_str) != Some("Running") {
                        continue;
                    }
                    let Some(name) = event.pointer("/object/metadata/name").and_then(Value::as_str) else { continue };
                    let Some(at) = created.lock().get(name).copied() else { continue };
                    running.lock().entry(name.to_string()).or_insert_with(|| at.elapsed());
                }
            }
            anyhow::Ok(())
        })
    };

    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut creates = Vec::with_capacity(args.pods);
    for i in 0..args.pods {
        if args.rate > 0.0 {
            tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / args.rate)).into()).await;
        }
        let permit = limit.clone().acquire_owned().await?;
        let name = format!("p{i:05}");
        let body = pod(&name, &args.image);
        let url = format!("http://{}/api/v1/namespaces/{namespace}/pods", args.server);
        let (client, created) = (client.clone(), created.clone());
        creates.push(tokio::spawn(async move {
            created.lock().insert(name.clone(), Instant::now());
            let outcome = call(&client, Method::POST, &url, Some(&body)).await;
            drop(permit);
            match outcome {
                Ok((StatusCode::CREATED, _)) => Ok(()),
                Ok((status, text)) => bail!("creating {name}: {status}: {}", String::from_utf8_lossy(&text)),
                Err(e) => Err(e),
            }
        }));
    }
    for create in creates {
        create.await??;
    }
    let deadline = started + args.timeout;
    while running.lock().len() < args.pods && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    watcher.abort();
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for latency in running.lock().values() {
        h.record(latency.as_micros().max(1) as u64)?;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let rate = if args.rate > 0.0 { format!("{} pods/s", args.rate) } else { "unpaced".to_string() };
    println!(
        "pod start-up (create to Running seen through a watch; created {rate}, {} in flight): {} of {} pods in {:.1}s  p50 {:.0} ms  p90 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        args.concurrency,
        h.len(),
        args.pods,
        elapsed.as_secs_f64(),
        ms(0.50),
        ms(0.90),
        ms(0.99),
        h.max() as f64 / 1000.0,
    );
    if !args.keep {
        let url = format!("http://{}/api/v1/namespaces/{namespace}", args.server);
        if let Err(e) = call(&client, Method::DELETE, &url, None).await {
            eprintln!("warning: deleting namespace {namespace}: {e:#}");
        }
    }
    if (h.len() as usize) < args.pods {
        bail!("only {} of {} pods were Running within {:?}", h.len(), args.pods, args.timeout);
    }
    Ok(())
}
