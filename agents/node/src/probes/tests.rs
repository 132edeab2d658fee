use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Event, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_container::simulated::{self, Settings, SimulatedRuntime};
use keel_container::{ContainerConfig, ContainerRuntime, SandboxConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::check::port_of;
use super::worker::{self, Step, ends, step};
use super::*;
use crate::reports::Reports;

fn timing(success: u32, failure: u32) -> Timing {
    Timing {
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(10),
        timeout: Duration::from_secs(1),
        success_threshold: success,
        failure_threshold: failure,
    }
}

#[test]
fn kubernetes_defaults_fill_absent_fields() {
    let t = Timing::of(&Probe::default());
    assert_eq!(
        t,
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    );
    let probe: Probe = serde_json::from_value(json!({
        "initialDelaySeconds": 5, "periodSeconds": 2, "timeoutSeconds": 3, "successThreshold": 2, "failureThreshold": 7
    }))
    .expect("probe");
    let t = Timing::of(&probe);
    assert_eq!(
        (t.initial_delay, t.period, t.timeout, t.success_threshold, t.failure_threshold),
        (Duration::from_secs(5), Duration::from_secs(2), Duration::from_secs(3), 2, 7)
    );
}

#[test]
fn verdicts_change_only_after_their_threshold_in_a_row() {
    /// Probe kind's initial verdict, thresholds (success, failure), results, and the verdict
    /// published after each result (None: unchanged).
    type Case = (Option<bool>, (u32, u32), Vec<bool>, Vec<Option<bool>>);
    let cases: Vec<Case> = vec![
        // Liveness: alive until three failures in a row; a success in between starts over.
        (
            Kind::Liveness.initial(),
            (1, 3),
            vec![false, false, true, false, false, false],
            vec![None, None, None, None, None, Some(false)],
        ),
        // Readiness: not ready until two successes in a row, unready after one failure.
        (
            Kind::Readiness.initial(),
            (2, 1),
            vec![true, false, true, true, true, false, true],
            vec![None, None, None, Some(true), None, Some(false), None],
        ),
        // Startup: no verdict until it has one; the first success with threshold 1.
        (Kind::Startup.initial(), (1, 3), vec![false, true], vec![None, Some(true)]),
        (Kind::Startup.initial(), (1, 2), vec![false, false], vec![None, Some(false)]),
    ];
    for (i, (initial, (success, failure), results, verdicts)) in cases.into_iter().enumerate() {
        let mut tally = Tally::new(&timing(success, failure), initial);
        let got: Vec<Option<bool>> = results.into_iter().map(|ok| tally.record(ok)).collect();
        assert_eq!(got, verdicts, "case {i}");
    }
}

#[test]
fn liveness_and_readiness_wait_for_startup() {
    let cases = [
        (Kind::Startup, false, Step::Probe),
        (Kind::Startup, true, Step::Done),
        (Kind::Liveness, false, Step::Wait),
        (Kind::Liveness, true, Step::Probe),
        (Kind::Readiness, false, Step::Wait),
        (Kind::Readiness, true, Step::Probe),
    ];
    for (kind, started, expected) in cases {
        assert_eq!(step(kind, started), expected, "{kind:?} started={started}");
    }
    // A failed liveness or startup probe ends its worker (the instance is killed); readiness
    // goes on whatever it finds.
    assert!(ends(Kind::Liveness, false) && !ends(Kind::Liveness, true));
    assert!(ends(Kind::Startup, false) && ends(Kind::Startup, true));
    assert!(!ends(Kind::Readiness, false) && !ends(Kind::Readiness, true));
}

fn container(value: serde_json::Value) -> Container {
    serde_json::from_value(value).expect("container")
}

#[test]
fn ports_by_number_or_by_container_port_name() {
    let c = container(json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}));
    assert_eq!(port_of(&IntOrString::Int(81), &c), Ok(81));
    assert_eq!(port_of(&IntOrString::String("http".into()), &c), Ok(8080));
    assert_eq!(port_of(&IntOrString::String("90".into()), &c), Ok(90));
    assert_eq!(
        port_of(&IntOrString::String("admin".into()), &c),
        Err("couldn't find port: admin in container web".into())
    );
    assert_eq!(port_of(&IntOrString::Int(0), &c), Err("invalid port number: 0".into()));
}

/// A one-shot HTTP server on a free port answering `status` and handing back what it was sent.
async fn http_server(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let served = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        socket.write_all(response.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&request).into_owned()
    });
    (port, served)
}

fn local() -> Target {
    Target { pod_ip: "127.0.0.1".into(), network: true }
}

async fn run_check(probe: serde_json::Value, c: &Container, target: &Target) -> Result<(), String> {
    let probe: Probe = serde_json::from_value(probe).expect("probe");
    let runtime = SimulatedRuntime::new(Settings::default());
    check(&runtime, &probe, c, "none", target, Duration::from_secs(2)).await
}

#[tokio::test]
async fn http_probes_send_path_and_headers_and_pass_below_400() {
    let (port, served) = http_server(200).await;
    let c = container(json!({"name": "web", "ports": [{"name": "http", "containerPort": port}]}));
    let headers = json!([{"name": "X-Probe", "value": "yes"}]);
    let probe = json!({"httpGet": {"path": "/healthz?full=1", "port": "http", "httpHeaders": headers}});
    assert_eq!(run_check(probe, &c, &local()).await, Ok(()));
    let request = served.await.expect("served");
    assert!(request.starts_with("GET /healthz?full=1 HTTP/1.1\r\n"), "{request}");
    let lower = request.to_ascii_lowercase();
    assert!(lower.contains("x-probe: yes") && lower.contains("user-agent: kube-probe/"), "{request}");
    assert!(lower.contains(&format!("host: 127.0.0.1:{port}")), "{request}");

    let (port, _served) = http_server(302).await;
    assert_eq!(run_check(json!({"httpGet": {"port": port}}), &c, &local()).await, Ok(()));
    let (port, _served) = http_server(503).await;
    assert_eq!(
        run_check(json!({"httpGet": {"port": port}}), &c, &local()).await,
        Err("HTTP probe failed with statuscode: 503".into())
    );
}

#[tokio::test]
async fn network_probes_fail_saying_why() {
    let c = container(json!({"name": "web"}));
    // A port nothing listens on: bound, then closed.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("address").port();
    let refused = run_check(json!({"httpGet": {"port": closed, "path": "/x"}}), &c, &local()).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with(&format!("Get \"http://127.0.0.1:{closed}/x\": dial tcp"))),
        "{refused:?}"
    );
    let refused = run_check(json!({"tcpSocket": {"port": closed}}), &c, &local()).await;
    assert!(refused.as_ref().is_err_and(|e| e.starts_with(&format!("dial tcp 127.0.0.1:{closed}"))), "{refused:?}");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let open = listener.local_addr().expect("address").port();
    assert_eq!(run_check(json!({"tcpSocket": {"port": open}}), &c, &local()).await, Ok(()));

    let https = run_check(json!({"httpGet": {"port": open, "scheme": "HTTPS"}}), &c, &local()).await;
    assert!(https.is_err_and(|e| e.contains("no TLS client")));
    let simulated = Target { pod_ip: "10.64.0.9".into(), network: false };
    let unsent = run_check(json!({"tcpSocket": {"port": 80}}), &c, &simulated).await;
    assert!(unsent.is_err_and(|e| e.contains("simulated pods have no network")));
    let no_ip = Target { pod_ip: String::new(), network: true };
    assert_eq!(run_check(json!({"tcpSocket": {"port": 80}}), &c, &no_ip).await, Err("the pod has no IP yet".into()));
    let grpc = run_check(json!({"grpc": {"port": 80}}), &c, &local()).await;
    assert!(grpc.is_err_and(|e| e.contains("gRPC")));
}

/// A simulated pod with one running container scripted by `annotations`, and the probes of
/// `container` as the pod's only container.
struct Fixture {
    runtime: Arc<SimulatedRuntime>,
    pod: Arc<Pod>,
    reports: Arc<Reports>,
    wake: Arc<Notify>,
    instance: keel_container::ContainerStatus,
}

async fn fixture(annotations: serde_json::Value, container: serde_json::Value) -> Fixture {
    let runtime = Arc::new(SimulatedRuntime::new(Settings::default()));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u", "annotations": annotations},
        "spec": {"containers": [container]},
    }))
    .expect("pod");
    let sandbox = SandboxConfig {
        name: "p".into(),
        uid: "u".into(),
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        ..Default::default()
    };
    let sandbox_id = runtime.run_pod_sandbox(&sandbox).await.expect("sandbox");
    let config = ContainerConfig { name: "app".into(), image: "busybox".into(), ..Default::default() };
    let id = runtime.create_container(&sandbox_id, &config, &sandbox).await.expect("create");
    runtime.start_container(&id).await.expect("start");
    let instance = runtime.list_containers().await.expect("list").into_iter().find(|c| c.id == id).expect("listed");
    Fixture {
        runtime,
        pod: Arc::new(pod),
        reports: Arc::new(Reports::new("n")),
        wake: Arc::new(Notify::new()),
        instance,
    }
}

impl Fixture {
    fn prober(&self) -> Prober {
        let prober = Prober::new(self.wake.clone());
        prober.results.by_container.lock().insert(
            "app".into(),
            Verdicts {
                container_id: self.instance.id.clone(),
                started: self.pod.spec.as_ref().expect("spec").containers[0].startup_probe.is_none(),
                ready: false,
                failed: None,
            },
        );
        prober
    }

    /// Runs `kind`'s worker with `timing` (milliseconds, where the spec only has seconds).
    fn spawn(&self, prober: &Prober, kind: Kind, timing: Timing) -> tokio::task::JoinHandle<()> {
        let container = self.pod.spec.as_ref().expect("spec").containers[0].clone();
        let job = worker::Job {
            kind,
            probe: kind.of(&container).cloned().expect("probe"),
            timing,
            container,
            container_id: self.instance.id.clone(),
            started_at: self.instance.started_at,
            pod: self.pod.clone(),
            target: Target { pod_ip: "10.64.0.2".into(), network: false },
            env: Env { runtime: self.runtime.clone(), reports: self.reports.clone(), pod_network: false },
            results: prober.results.clone(),
        };
        tokio::spawn(worker::run(job))
    }

    fn events(&self) -> Vec<Event> {
        let batch = self.reports.take(1000);
        batch.events.events.iter().map(|raw| serde_json::from_slice(raw).expect("event")).collect()
    }
}

fn exec_probe() -> serde_json::Value {
    json!({"exec": {"command": ["cat", "/tmp/healthy"]}})
}

#[tokio::test]
async fn a_startup_probe_holds_liveness_back_until_it_succeeds() {
    let f = fixture(
        json!({(simulated::EXEC_SUCCEEDS_AFTER): "0.15"}),
        json!({"name": "app", "startupProbe": exec_probe(), "livenessProbe": exec_probe()}),
    )
    .await;
    let prober = f.prober();
    let startup = f.spawn(&prober, Kind::Startup, timing(1, 100));
    // Liveness would fail at its first probe: exec fails for the first 150 ms.
    let liveness = f.spawn(&prober, Kind::Liveness, timing(1, 1));
    let spec = f.pod.spec.clone().expect("spec");
    let containers = [f.instance.clone()];
    assert_eq!(probed(&spec, &containers, Some(&prober)).started.get("app"), Some(&false));
    tokio::time::timeout(Duration::from_secs(5), startup).await.expect("startup succeeds").expect("worker");
    assert_eq!(probed(&spec, &containers, Some(&prober)).started.get("app"), Some(&true));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(prober.failed(&containers).is_empty(), "liveness ran before the startup probe succeeded");
    assert!(!liveness.is_finished());
    liveness.abort();
    // The startup probe's failures were reported as kubelet reports them.
    let events = f.events();
    assert!(events.iter().all(|e| e.reason.as_deref() == Some("Unhealthy")), "{events:?}");
    let message = events.first().and_then(|e| e.message.clone()).unwrap_or_default();
    assert!(message.starts_with("Startup probe failed: simulated: exec fails until"), "{message}");
    // One Event for a repeated message, not one per failure.
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test]
async fn failing_liveness_marks_the_instance_for_killing_after_its_threshold() {
    let f =
        fixture(json!({(simulated::EXEC_FAILS_AFTER): "0.05"}), json!({"name": "app", "livenessProbe": exec_probe()}))
            .await;
    let prober = f.prober();
    let containers = [f.instance.clone()];
    let liveness = f.spawn(&prober, Kind::Liveness, timing(1, 3));
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(prober.failed(&containers).is_empty());
    tokio::time::timeout(Duration::from_secs(5), f.wake.notified()).await.expect("the pod worker woken");
    tokio::time::timeout(Duration::from_secs(5), liveness).await.expect("the worker ends").expect("worker");
    assert_eq!(
        prober.failed(&containers),
        vec![Failed { container: "app".into(), container_id: f.instance.id.clone(), kind: Kind::Liveness }]
    );
    // Once the instance has stopped it is no one's to kill.
    f.runtime.stop_container(&f.instance.id, Duration::from_secs(1)).await.expect("stop");
    let stopped = f.runtime.list_containers().await.expect("list");
    assert!(prober.failed(&stopped).is_empty());
}

#[tokio::test]
async fn readiness_needs_its_success_threshold_and_without_probes_nothing_is_probed() {
    let f = fixture(json!({}), json!({"name": "app", "readinessProbe": exec_probe()})).await;
    let mut prober = f.prober();
    let spec = f.pod.spec.clone().expect("spec");
    let containers = [f.instance.clone()];
    assert_eq!(probed(&spec, &containers, Some(&prober)).ready.get("app"), Some(&false));
    // Without a prober a probed container is not ready: nothing vouched for it.
    assert_eq!(probed(&spec, &containers, None).ready.get("app"), Some(&false));
    let readiness = f.spawn(&prober, Kind::Readiness, timing(3, 1));
    tokio::time::timeout(Duration::from_secs(5), f.wake.notified()).await.expect("woken on becoming ready");
    assert_eq!(probed(&spec, &containers, Some(&prober)).ready.get("app"), Some(&true));
    readiness.abort();

    // sync starts one worker per probe of the running instance and drops them once it stops.
    let env = Env { runtime: f.runtime.clone(), reports: f.reports.clone(), pod_network: false };
    prober.sync(&env, &f.pod, &containers, "10.64.0.2");
    assert_eq!(prober.workers.len(), 1);
    f.runtime.stop_container(&f.instance.id, Duration::from_secs(1)).await.expect("stop");
    let stopped = f.runtime.list_containers().await.expect("list");
    prober.sync(&env, &f.pod, &stopped, "10.64.0.2");
    assert!(prober.workers.is_empty() && prober.results.by_container.lock().is_empty());

    let plain: PodSpec = serde_json::from_value(json!({"containers": [{"name": "app"}]})).expect("spec");
    assert!(!has_probes(&plain));
    assert_eq!(probed(&plain, &containers, None), Probed::default());
}
