//! `keel bench api`: load on the Kubernetes API of one or more members — creates per second
//! (1 KiB ConfigMaps or typical Pods), LIST latency over many objects, and watch delivery
//! latency with many watchers. Works against any Kubernetes API server that speaks plain HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Args, Debug)]
pub struct ApiBench {
    /// API addresses of the members (`host:port,...`); load is spread over them.
    #[arg(long)]
    servers: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Concurrent creates through REST.
    Create {
        /// `configmap` (1 KiB of data) or `pod` (a typical single-container pod).
        #[arg(long, default_value = "configmap")]
        kind: String,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// LIST of every pod in a namespace holding `objects` pods (created first if missing).
    List {
        #[arg(long, default_value_t = 10_000)]
        objects: usize,
        /// Lists measured.
        #[arg(long, default_value_t = 20)]
        repeat: usize,
        /// `""` (consistent, the default of kubectl) or `0` (any recent state).
        #[arg(long, default_value = "")]
        resource_version: String,
    },
    /// Watchers spread over namespaces and members; a writer updates objects at a steady
    /// rate; each event's delivery latency is measured from the write's timestamp.
    Watch {
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Namespaces the watchers and writes are spread over: each write reaches
        /// watchers / namespaces watchers.
        #[arg(long, default_value_t = 100)]
        namespaces: usize,
        /// Writes per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(connector)
}

pub async fn call(client: &HttpClient, method: Method, url: &str, body: Option<&Value>) -> Result<(StatusCode, Bytes)> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Full::new(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default()))?;
    let response = client.request(request).await.with_context(|| format!("request to {url}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn ensure_namespace(client: &HttpClient, server: &str, name: &str) -> Result<()> {
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let (status, text) = call(client, Method::POST, &format!("http://{server}/api/v1/namespaces"), Some(&body)).await?;
    if !status.is_success() && status != StatusCode::CONFLICT {
        bail!("creating namespace {name}: {status}: {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"bench": "api"}}, "data": {"payload": "x".repeat(1024)}})
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web", "pod-template-hash": "5d8f7c9b6"},
                     "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}},
        "spec": {
            "containers": [{
                "name": "app", "image": "registry.local/app:1.2.3",
                "command": ["/app/server"], "args": ["--port=8080", "--log-level=info"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "MODE", "value": "production"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]
            }],
            "volumes": [{"name": "config", "configMap": {"name": "app-config"}}]
        }
    })
}

fn percentile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn print_latency(label: &str, count: u64, elapsed: Duration, h: &Histogram<u64>, errors: u64) {
    println!(
        "{label}: {count} in {:.1}s = {:.0}/s  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  errors {errors}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        percentile_ms(h, 0.50),
        percentile_ms(h, 0.99),
        percentile_ms(h, 0.999),
    );
}

pub async fn run(args: ApiBench) -> Result<()> {
    let servers: Vec<String> =
        args.servers.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if servers.is_empty() {
        bail!("--servers needs at least one host:port");
    }
    match args.scenario {
        Scenario::Create { kind, clients, duration } => create(&servers, &kind, clients, duration).await,
        Scenario::List { objects, repeat, resource_version } => {
            list(&servers, objects, repeat, &resource_version).await
        }
        Scenario::Watch { watchers, namespaces, rate, duration } => {
            watch(&servers, watchers, namespaces.max(1), rate, duration).await
        }
    }
}

async fn create(servers: &[String], kind: &str, clients: usize, duration: Duration) -> Result<()> {
    let (resource, make): (&str, fn(&str) -> Value) = match kind {
        "configmap" => ("configmaps", config_map),
        "pod" => ("pods", pod),
        other => bail!("--kind {other:?}: expected configmap or pod"),
    };
    let client = http_client();
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let namespace = format!("bench-create-{run_id}");
    ensure_namespace(&client, &servers[0], &namespace).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let url = format!("http://{}/api/v1/namespaces/{namespace}/{resource}", servers[c % servers.len()]);
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut done, mut errors) = (0u64, 0u64);
            let mut n = 0;
            while Instant::now() < deadline {
                let body = make(&format!("c{c}-{n}"));
                n += 1;
                let t = Instant::now();
                match call(&client, Method::POST, &url, Some(&body)).await {
                    Ok((status, _)) if status == StatusCode::CREATED => {
                        histogram.record(t.elapsed().as_micros().max(1) as u64)?;
                        done += 1;
                    }
                    _ => errors += 1,
                }
            }
            anyhow::Ok((histogram, done, errors))
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut done, mut errors) = (0, 0);
    for task in tasks {
        let (h, d, e) = task.await??;
        total.add(h)?;
        done += d;
        errors += e;
    }
    print_latency(
        &format!("create {kind}, {clients} clients, {} members", servers.len()),
        done,
        started.elapsed(),
        &total,
        errors,
    );
    Ok(())
}

async fn list(servers: &[String], objects: usize, repeat: usize, resource_version: &str) -> Result<()> {
    let client = http_client();
    let namespace = format!("bench-list-{objects}");
    ensure_namespace(&client, &servers[0], &namespace).await?;
    let url = format!("http://{}/api/v1/namespaces/{namespace}/pods", servers[0]);
    let (status, body) = call(&client, Method::GET, &format!("{url}?limit=1"), None).await?;
    if !status.is_success() {
        bail!("listing {url}: {status}");
    }
    let have = serde_json::from_slice::<Value>(&body)?
        .pointer("/metadata/remainingItemCount")
        .and_then(Value::as_u64)
        .map(|r| r as usize + 1)
        .unwrap_or(0);
    if have < objects {
        eprintln!("creating {} pods in {namespace}…", objects - have);
        let next = Arc::new(AtomicU64::new(have as u64));
        let mut tasks = Vec::new();
        for c in 0..64 {
            let (client, next) = (client.clone(), next.clone());
            let url = format!("http://{}/api/v1/namespaces/{namespace}/pods", servers[c % servers.len()]);
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= objects {
                        return anyhow::Ok(());
                    }
                    // Retried: a leader change under load answers 503/504 and the pod may or
                    // may not exist yet (409 then says it does).
                    let mut attempts = 0;
                    loop {
                        let (status, text) =
                            call(&client, Method::POST, &url, Some(&pod(&format!("pod-{n:06}")))).await?;
                        if status.is_success() || status == StatusCode::CONFLICT {
                            break;
                        }
                        attempts += 1;
                        if attempts > 5 || !status.is_server_error() {
                            bail!("creating a pod: {status}: {}", String::from_utf8_lossy(&text));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut bytes = 0;
    let started = Instant::now();
    for _ in 0..repeat {
        let t = Instant::now();
        let (status, body) =
            call(&client, Method::GET, &format!("{url}?resourceVersion={resource_version}"), None).await?;
        if !status.is_success() {
            bail!("LIST failed: {status}");
        }
        histogram.record(t.elapsed().as_micros().max(1) as u64)?;
        bytes = body.len();
    }
    print_latency(
        &format!("LIST {objects} pods (resourceVersion={resource_version:?}, {:.1} MB each)", bytes as f64 / 1e6),
        repeat as u64,
        started.elapsed(),
        &histogram,
        0,
    );
    Ok(())
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

async fn watch(servers: &[String], watchers: usize, namespaces: usize, rate: u64, duration: Duration) -> Result<()> {
    let client = http_client();
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let names: Vec<String> = (0..namespaces).map(|i| format!("bench-watch-{run_id}-{i}")).collect();
    for ns in &names {
        ensure_namespace(&client, &servers[0], ns).await?;
    }
    let latencies = Arc::new(parking_lot::Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let delivered = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
    // Each watcher has its own connection, as separate clients would.
    for w in 0..watchers {
        let server = servers[w % servers.len()].clone();
        let ns = names[w % namespaces].clone();
        let (latencies, delivered, ready) = (latencies.clone(), delivered.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let client = http_client();
            let url = format!(
                "http://{server}/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion=0&allowWatchBookmarks=true"
            );
            // Ten thousand connections opening at once on two cores: a refused or reset one is
            // tried again rather than lost (the run would stop for one missing watcher).
            let mut attempt = 0;
            let response = loop {
                let request = Request::builder().uri(&url).body(Full::new(Bytes::new()))?;
                match client.request(request).await {
                    Ok(response) if response.status().is_success() => break response,
                    outcome if attempt < 5 => {
                        attempt += 1;
                        tracing::debug!(?outcome, attempt, "watch did not start; trying again");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    Ok(response) => anyhow::bail!("watch {url}: HTTP {}", response.status()),
                    Err(e) => {
                        eprintln!("watch {url}: {e}");
                        return Err(e.into());
                    }
                }
            };
            let _ = ready.send(()).await;
            let mut body = response.into_body();
            let mut buffer = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else { continue };
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                    let written = event
                        .pointer("/object/metadata/annotations/bench.keel.dev~1written-us")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<u64>().ok());
                    if let Some(written) = written {
                        latencies.lock().record(now_micros().saturating_sub(written).max(1))?;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < watchers {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => bail!("only {ready} of {watchers} watches started"),
        }
    }
    latencies.lock().reset();
    // The writer creates objects at a steady rate, each stamped with its time of writing.
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    let (written, write_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let write_latency = Arc::new(parking_lot::Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let mut n = 0u64;
    let mut writes = Vec::new();
    while started.elapsed() < duration {
        ticker.tick().await;
        let ns = &names[(n as usize) % namespaces];
        let server = &servers[(n as usize) % servers.len()];
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("obj-{n}"), "annotations": {"bench.keel.dev/written-us": now_micros().to_string()}},
            "data": {"n": n.to_string()}});
        let url = format!("http://{server}/api/v1/namespaces/{ns}/configmaps");
        let (client, written, errors) = (client.clone(), written.clone(), write_errors.clone());
        let latency = write_latency.clone();
        writes.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = call(&client, Method::POST, &url, Some(&body))
                .await
                .is_ok_and(|(status, _)| status == StatusCode::CREATED);
            let _ = latency.lock().record(sent.elapsed().as_micros().max(1) as u64);
            if ok {
                written.fetch_add(1, Ordering::Relaxed)
            } else {
                errors.fetch_add(1, Ordering::Relaxed)
            };
        }));
        n += 1;
    }
    for w in writes {
        let _ = w.await;
    }
    // Let the last events arrive.
    let expected = written.load(Ordering::Relaxed) * (watchers / namespaces) as u64;
    let settle = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected && settle.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let h = latencies.lock().clone();
    println!(
        "watch: {watchers} watchers over {namespaces} namespaces and {} members; {} writes ({:.0}/s, {} failed); {} of {expected} events delivered",
        servers.len(),
        written.load(Ordering::Relaxed),
        written.load(Ordering::Relaxed) as f64 / duration.as_secs_f64(),
        write_errors.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
    );
    print_latency("watch delivery (from sending the write)", h.len(), elapsed, &h, 0);
    let w = write_latency.lock().clone();
    print_latency("the writes themselves (until their response)", w.len(), elapsed, &w, 0);
    Ok(())
}
