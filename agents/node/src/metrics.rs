//! Resource usage for `metrics.k8s.io` (`kubectl top`, the HorizontalPodAutoscaler): what
//! metrics-server scrapes from each kubelet, sent up the node's stream instead.
//!
//! Every resolution interval the agent samples the runtime's cumulative CPU time and working
//! set of each running container and turns CPU into a rate over the interval since the last
//! sample, as metrics-server does with two scrapes. A container seen for the first time has
//! no rate yet, so its pod is left out until the next sample (metrics-server also reports a
//! pod only once it has two points for it). Node totals: the machine's own figures
//! (`/proc/stat`, `/proc/meminfo`) on a real node, the sum of its pods on a simulated one.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_container::{ContainerRuntime, ContainerState};
use keel_proto::node::{ContainerUsage, PodUsage, ResourceMetrics, Usage};
use tokio::sync::watch;

/// A cumulative CPU figure and when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    at_nanos: i64,
    cpu_nanos: u64,
}

/// The CPU rate between two points, in nanocores; `None` when they cannot make one (same
/// instant, or a counter that went back: a restarted container under the same id).
fn rate(earlier: Point, later: Point) -> Option<u64> {
    let elapsed = later.at_nanos.checked_sub(earlier.at_nanos).filter(|e| *e > 0)?;
    let used = later.cpu_nanos.checked_sub(earlier.cpu_nanos)?;
    Some((u128::from(used) * 1_000_000_000 / elapsed as u128) as u64)
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// The host's cumulative busy CPU time (nanoseconds) and memory working set (bytes), as
/// `/proc` reports them: busy is every state but idle and iowait (USER_HZ is 100 on Linux);
/// the working set is what is not available for reclaim, MemTotal − MemAvailable.
fn host_usage() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let busy: u64 = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| *v).sum();
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let working_set = kib("MemTotal:")?.saturating_sub(kib("MemAvailable:")?) * 1024;
    Some((busy * 10_000_000, working_set))
}

pub struct Collector {
    /// Node totals are the pods' sum rather than the host's.
    simulated: bool,
    previous: HashMap<String, Point>,
    host_previous: Option<Point>,
    last_sample: Option<i64>,
}

impl Collector {
    pub fn new(simulated: bool) -> Collector {
        Collector { simulated, previous: HashMap::new(), host_previous: None, last_sample: None }
    }

    /// Samples the runtime; `None` on the first call (a rate needs two samples).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn sample(&mut self, runtime: &dyn ContainerRuntime) -> keel_container::Result<Option<ResourceMetrics>> {
        let stats = runtime.container_stats().await?;
        let containers = runtime.list_containers().await?;
        let sandboxes = runtime.list_pod_sandboxes().await?;
        let now = now_nanos();
        let running: HashMap<&str, &keel_container::ContainerStatus> =
            containers.iter().filter(|c| c.state == ContainerState::Running).map(|c| (c.id.as_str(), c)).collect();
        let mut current = HashMap::with_capacity(stats.len());
        // Pods by sandbox id: their containers, and whether any lacks a rate.
        let mut pods: HashMap<&str, (Vec<ContainerUsage>, bool)> = HashMap::new();
        for s in &stats {
            let Some(container) = running.get(s.id.as_str()) else { continue };
            let point = Point { at_nanos: s.timestamp, cpu_nanos: s.cpu_usage_nanos };
            current.insert(s.id.clone(), point);
            let entry = pods.entry(container.sandbox_id.as_str()).or_default();
            match self.previous.get(&s.id).and_then(|p| rate(*p, point)) {
                Some(cpu) => entry.0.push(ContainerUsage {
                    name: container.name.clone(),
                    usage: Some(Usage { cpu_nanocores: cpu, memory_working_set_bytes: s.memory_working_set_bytes }),
                }),
                None => entry.1 = true,
            }
        }
        self.previous = current;
        let mut out = ResourceMetrics { timestamp_unix_nanos: now, ..Default::default() };
        for sandbox in &sandboxes {
            let Some((mut usage, incomplete)) = pods.remove(sandbox.id.as_str()) else { continue };
            if incomplete || usage.is_empty() {
                continue;
            }
            usage.sort_by(|a, b| a.name.cmp(&b.name));
            out.pods.push(PodUsage {
                namespace: sandbox.namespace.clone(),
                name: sandbox.name.clone(),
                uid: sandbox.uid.clone(),
                containers: usage,
            });
        }
        let pods_total = out.pods.iter().flat_map(|p| &p.containers).filter_map(|c| c.usage.as_ref()).fold(
            Usage::default(),
            |sum, u| Usage {
                cpu_nanocores: sum.cpu_nanocores + u.cpu_nanocores,
                memory_working_set_bytes: sum.memory_working_set_bytes + u.memory_working_set_bytes,
            },
        );
        out.node = Some(if self.simulated {
            pods_total
        } else {
            match host_usage() {
                Some((cpu_nanos, memory)) => {
                    let point = Point { at_nanos: now, cpu_nanos };
                    let cpu = self.host_previous.and_then(|p| rate(p, point)).unwrap_or(pods_total.cpu_nanocores);
                    self.host_previous = Some(point);
                    Usage { cpu_nanocores: cpu, memory_working_set_bytes: memory }
                }
                None => pods_total,
            }
        });
        let previous = self.last_sample.replace(now);
        let Some(previous) = previous else { return Ok(None) };
        out.window_millis = (now - previous) / 1_000_000;
        Ok(Some(out))
    }

    /// Samples every `resolution` and publishes the latest figures for the stream to send.
    pub async fn run(
        mut self,
        runtime: std::sync::Arc<dyn ContainerRuntime>,
        resolution: Duration,
        latest: watch::Sender<Option<ResourceMetrics>>,
    ) {
        // The simulated runtime's host is not the node: its totals are its pods'.
        if let Ok(version) = runtime.version().await {
            self.simulated = version.name == "simulated";
        }
        // A zero period would panic the timer; below a second the member drops records anyway.
        let mut tick = tokio::time::interval(resolution.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.sample(runtime.as_ref()).await {
                Ok(Some(metrics)) => {
                    latest.send_replace(Some(metrics));
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "sampling resource usage failed; next interval"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_container::simulated::{CPU_MILLICORES, MEMORY_BYTES, Settings, SimulatedRuntime};
    use keel_container::{ContainerConfig, SandboxConfig};

    #[test]
    fn rates_come_from_two_points() {
        let p = |at_nanos, cpu_nanos| Point { at_nanos, cpu_nanos };
        let cases = [
            // (earlier, later, nanocores)
            (p(0, 0), p(1_000_000_000, 500_000_000), Some(500_000_000)),
            (p(0, 0), p(2_000_000_000, 500_000_000), Some(250_000_000)),
            (p(5, 100), p(5, 200), None),
            (p(0, 900), p(1_000_000_000, 100), None),
            (p(0, 0), p(15_000_000_000, 15_000_000_000 * 2), Some(2_000_000_000)),
        ];
        for (earlier, later, want) in cases {
            assert_eq!(rate(earlier, later), want, "{earlier:?} → {later:?}");
        }
    }

    #[tokio::test]
    async fn pods_are_reported_from_the_second_sample_with_their_rate() {
        let rt = SimulatedRuntime::new(Settings::default());
        let config = SandboxConfig {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            annotations: [
                (CPU_MILLICORES.to_string(), "250".to_string()),
                (MEMORY_BYTES.to_string(), "4096".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let sandbox = rt.run_pod_sandbox(&config).await.expect("sandbox");
        let c = ContainerConfig { name: "app".into(), image: "busybox".into(), ..Default::default() };
        let id = rt.create_container(&sandbox, &c, &config).await.expect("create");
        rt.start_container(&id).await.expect("start");
        let mut collector = Collector::new(true);
        assert!(collector.sample(&rt).await.expect("sample").is_none());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let metrics = collector.sample(&rt).await.expect("sample").expect("a second sample has rates");
        assert_eq!(metrics.pods.len(), 1);
        let pod = &metrics.pods[0];
        assert_eq!((pod.name.as_str(), pod.uid.as_str()), ("web", "u1"));
        let usage = pod.containers[0].usage.expect("usage");
        // A quarter of a core, give or take the sampling jitter.
        assert!((240_000_000..=260_000_000).contains(&usage.cpu_nanocores), "{usage:?}");
        assert_eq!(usage.memory_working_set_bytes, 4096);
        assert_eq!(metrics.node, Some(usage));
        assert!(metrics.window_millis >= 50);
    }
}
