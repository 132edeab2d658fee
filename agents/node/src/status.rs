//! A pod's status from what the runtime says about its sandbox and containers, as kubelet
//! computes it: container states with their last termination, restart counts, the pod's
//! conditions and phase.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, HostIP,
    Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keel_container as cri;

/// Why a container is not running, as the worker knows it (the runtime does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// What the status is computed from.
pub struct Observed<'a> {
    pub pod: &'a Pod,
    pub sandbox: Option<&'a cri::SandboxStatus>,
    /// Every instance of the pod's containers the runtime still has.
    pub containers: &'a [cri::ContainerStatus],
    pub waiting: &'a HashMap<String, Waiting>,
    /// Readiness as the probes last found it, by container name (absent: no readiness probe,
    /// ready once started).
    pub ready: &'a HashMap<String, bool>,
    /// Whether a running container's startup probe succeeded (absent: no startup probe,
    /// started once running). A container is not ready before it has started.
    pub started: &'a HashMap<String, bool>,
    /// `containerd`, `sim`: the scheme of container ids.
    pub runtime: &'a str,
    pub host_ip: &'a str,
    pub now: Time,
}

pub fn time_of(nanos: cri::UnixNanos) -> Option<Time> {
    (nanos > 0).then(|| Time(k8s_openapi::chrono::DateTime::from_timestamp_nanos(nanos)))
}

/// The instances of `name`, newest first.
fn instances<'a>(containers: &'a [cri::ContainerStatus], name: &str) -> Vec<&'a cri::ContainerStatus> {
    let mut out: Vec<&cri::ContainerStatus> = containers.iter().filter(|c| c.name == name).collect();
    out.sort_by(|a, b| b.attempt.cmp(&a.attempt).then(b.created_at.cmp(&a.created_at)));
    out
}

fn terminated(c: &cri::ContainerStatus, runtime: &str) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: c.exit_code,
        reason: Some(if c.reason.is_empty() {
            if c.exit_code == 0 { "Completed".into() } else { "Error".into() }
        } else {
            c.reason.clone()
        }),
        message: (!c.message.is_empty()).then(|| c.message.clone()),
        started_at: time_of(c.started_at),
        finished_at: time_of(c.finished_at),
        container_id: Some(format!("{runtime}://{}", c.id)),
        signal: None,
    }
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    }
}

fn container_status(o: &Observed<'_>, name: &str, image: &str, default_waiting: &str, init: bool) -> ContainerStatus {
    let all = instances(o.containers, name);
    let latest = all.first().copied();
    let previous = all.get(1).copied();
    let known_waiting = o.waiting.get(name);
    let mut status = ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: latest.map(|c| c.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|c| format!("{}://{}", o.runtime, c.id)),
        restart_count: latest.map_or(0, |c| c.attempt as i32),
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    match latest {
        Some(c) if c.state == cri::ContainerState::Running => {
            status.state = Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: time_of(c.started_at) }),
                ..Default::default()
            });
            let started = o.started.get(name).copied().unwrap_or(true);
            status.started = Some(started);
            status.ready = !init && started && o.ready.get(name).copied().unwrap_or(true);
            status.last_state =
                previous.map(|p| ContainerState { terminated: Some(terminated(p, o.runtime)), ..Default::default() });
        }
        Some(c) if c.state == cri::ContainerState::Exited => match known_waiting {
            // Waiting to be restarted: the exit is the last state.
            Some(w) => {
                status.state = Some(waiting(&w.reason, &w.message));
                status.last_state =
                    Some(ContainerState { terminated: Some(terminated(c, o.runtime)), ..Default::default() });
            }
            None => {
                status.state =
                    Some(ContainerState { terminated: Some(terminated(c, o.runtime)), ..Default::default() });
                status.last_state = previous
                    .map(|p| ContainerState { terminated: Some(terminated(p, o.runtime)), ..Default::default() });
                status.ready = init && c.exit_code == 0;
            }
        },
        _ => {
            let (reason, message) =
                known_waiting.map_or((default_waiting, ""), |w| (w.reason.as_str(), w.message.as_str()));
            status.state = Some(waiting(reason, message));
            status.last_state = latest
                .and(previous)
                .map(|p| ContainerState { terminated: Some(terminated(p, o.runtime)), ..Default::default() });
        }
    }
    if status.state.as_ref().is_some_and(|s| s.waiting.is_some()) && status.image_id.is_empty() {
        status.container_id = None;
    }
    status
}

fn condition(previous: Option<&PodStatus>, type_: &str, ok: bool, reason: Option<&str>, now: &Time) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the condition's status does.
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason.map(String::from) },
        last_transition_time: Some(since),
        ..Default::default()
    }
}

fn is_terminated_ok(s: &ContainerStatus) -> bool {
    s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0)
}

/// The pod's status now.
pub fn pod_status(o: &Observed<'_>) -> PodStatus {
    let pod = o.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let previous = pod.status.as_ref();
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");

    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(o, &c.name, c.image.as_deref().unwrap_or_default(), "PodInitializing", true))
        .collect();
    let initialized = init_statuses.iter().all(is_terminated_ok);
    let init_failed = restart_policy == "Never"
        && init_statuses
            .iter()
            .any(|s| s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code != 0));
    let app_default = if initialized { "ContainerCreating" } else { "PodInitializing" };
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(o, &c.name, c.image.as_deref().unwrap_or_default(), app_default, false))
        .collect();

    let (mut running, mut waiting_count, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in &statuses {
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = &state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s.last_state.as_ref().is_some_and(|l| l.terminated.is_some()) {
            stopped += 1;
        } else {
            waiting_count += 1;
        }
    }
    let phase = if init_failed {
        "Failed"
    } else if !initialized || waiting_count > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    };
    // A finished pod stays finished, whatever its containers do next.
    let phase = match previous.and_then(|p| p.phase.as_deref()) {
        Some(done @ ("Succeeded" | "Failed")) => done,
        _ => phase,
    };

    let sandbox_ready = o.sandbox.is_some_and(|s| s.state == cri::SandboxState::Ready);
    let containers_ready = statuses.iter().all(|s| s.ready) && phase == "Running";
    let readiness_gates_ok = spec.readiness_gates.iter().flatten().all(|gate| {
        previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == gate.condition_type))
            .is_some_and(|c| c.status == "True")
    });
    let conditions = vec![
        condition(previous, "PodReadyToStartContainers", sandbox_ready, None, &o.now),
        condition(previous, "Initialized", initialized, Some("ContainersNotInitialized"), &o.now),
        condition(previous, "Ready", containers_ready && readiness_gates_ok, Some("ContainersNotReady"), &o.now),
        condition(previous, "ContainersReady", containers_ready, Some("ContainersNotReady"), &o.now),
        condition(previous, "PodScheduled", true, None, &o.now),
    ];
    let pod_ip = o
        .sandbox
        .map(|s| s.ip.clone())
        .filter(|ip| !ip.is_empty())
        .or_else(|| spec.host_network.unwrap_or(false).then(|| o.host_ip.to_string()));
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(o.host_ip.to_string()),
        host_ips: Some(vec![HostIP { ip: o.host_ip.to_string() }]),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: previous.and_then(|p| p.start_time.clone()).or_else(|| Some(o.now.clone())),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        qos_class: previous.and_then(|p| p.qos_class.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(restart_policy: &str, init: bool) -> Pod {
        let mut spec = json!({"restartPolicy": restart_policy, "containers": [{"name": "app", "image": "busybox"}]});
        if init {
            spec["initContainers"] = json!([{"name": "setup", "image": "busybox"}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": spec}))
            .expect("pod")
    }

    fn instance(name: &str, attempt: u32, state: cri::ContainerState, exit_code: i32) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: format!("{name}-{attempt}"),
            sandbox_id: "s".into(),
            name: name.into(),
            attempt,
            state,
            created_at: 1_000_000_000 + i64::from(attempt),
            started_at: 2_000_000_000,
            finished_at: if state == cri::ContainerState::Exited { 3_000_000_000 } else { 0 },
            exit_code,
            reason: String::new(),
            message: String::new(),
            image: "busybox".into(),
            image_ref: "sha256:b".into(),
            labels: Default::default(),
        }
    }

    fn sandbox() -> cri::SandboxStatus {
        cri::SandboxStatus {
            id: "s".into(),
            name: "p".into(),
            namespace: "default".into(),
            uid: "u".into(),
            attempt: 0,
            state: cri::SandboxState::Ready,
            created_at: 1,
            ip: "10.244.0.7".into(),
            labels: Default::default(),
        }
    }

    fn status_of(pod: &Pod, containers: &[cri::ContainerStatus], waiting: &[(&str, &str)]) -> PodStatus {
        probed_status_of(pod, containers, waiting, &HashMap::new(), &HashMap::new())
    }

    fn probed_status_of(
        pod: &Pod,
        containers: &[cri::ContainerStatus],
        waiting: &[(&str, &str)],
        ready: &HashMap<String, bool>,
        started: &HashMap<String, bool>,
    ) -> PodStatus {
        let waiting: HashMap<String, Waiting> = waiting
            .iter()
            .map(|(n, r)| (n.to_string(), Waiting { reason: r.to_string(), message: String::new() }))
            .collect();
        let sandbox = sandbox();
        pod_status(&Observed {
            pod,
            sandbox: Some(&sandbox),
            containers,
            waiting: &waiting,
            ready,
            started,
            runtime: "sim",
            host_ip: "127.0.0.1",
            now: Time(k8s_openapi::chrono::DateTime::UNIX_EPOCH),
        })
    }

    fn condition_of(status: &PodStatus, type_: &str) -> String {
        status.conditions.iter().flatten().find(|c| c.type_ == type_).map(|c| c.status.clone()).unwrap_or_default()
    }

    #[test]
    fn phases_follow_kubelet() {
        use cri::ContainerState::{Exited, Running};
        let always = pod("Always", false);
        /// A pod, its containers, the reasons the worker gave, and the phase that results.
        type Case<'a> = (&'a Pod, Vec<cri::ContainerStatus>, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (&always, vec![], vec![], "Pending"),
            (&always, vec![instance("app", 0, Running, 0)], vec![], "Running"),
            // Crash-looping: waiting with a last termination counts as stopped, and Always restarts.
            (&always, vec![instance("app", 2, Exited, 1)], vec![("app", "CrashLoopBackOff")], "Running"),
        ];
        let never = pod("Never", false);
        let on_failure = pod("OnFailure", false);
        let init = pod("Always", true);
        let mut cases = cases;
        cases.extend([
            (&never, vec![instance("app", 0, Exited, 0)], vec![], "Succeeded"),
            (&never, vec![instance("app", 0, Exited, 2)], vec![], "Failed"),
            (&on_failure, vec![instance("app", 0, Exited, 0)], vec![], "Succeeded"),
            (&on_failure, vec![instance("app", 0, Exited, 2)], vec![("app", "CrashLoopBackOff")], "Running"),
            (&init, vec![instance("setup", 0, Running, 0)], vec![], "Pending"),
            (&init, vec![instance("setup", 0, Exited, 0), instance("app", 0, Running, 0)], vec![], "Running"),
        ]);
        for (i, (pod, containers, waiting, phase)) in cases.into_iter().enumerate() {
            let status = status_of(pod, &containers, &waiting);
            assert_eq!(status.phase.as_deref(), Some(phase), "case {i}: {status:?}");
        }
    }

    #[test]
    fn restarts_carry_the_last_termination_and_count() {
        use cri::ContainerState::{Exited, Running};
        let p = pod("Always", false);
        let status = status_of(&p, &[instance("app", 1, Exited, 1), instance("app", 2, Running, 0)], &[]);
        let app = &status.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!(app.restart_count, 2);
        assert!(app.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
        assert_eq!(app.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code), Some(1));
        assert_eq!(app.container_id.as_deref(), Some("sim://app-2"));
        assert!(app.ready);
        assert_eq!(condition_of(&status, "Ready"), "True");
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.7"));

        let looping = status_of(&p, &[instance("app", 3, Exited, 1)], &[("app", "CrashLoopBackOff")]);
        let app = &looping.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!(
            app.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref()),
            Some("CrashLoopBackOff")
        );
        assert!(!app.ready);
        assert_eq!(condition_of(&looping, "Ready"), "False");
        assert_eq!(condition_of(&looping, "ContainersReady"), "False");
    }

    #[test]
    fn init_containers_gate_initialized_and_a_failed_one_fails_a_never_pod() {
        use cri::ContainerState::Exited;
        let p = pod("Always", true);
        let pending = status_of(&p, &[], &[]);
        assert_eq!(condition_of(&pending, "Initialized"), "False");
        let app = &pending.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!(
            app.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref()),
            Some("PodInitializing")
        );
        let mut never = pod("Never", true);
        never.spec.as_mut().expect("spec").restart_policy = Some("Never".into());
        let failed = status_of(&never, &[instance("setup", 0, Exited, 1)], &[]);
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let mut p = pod("Always", false);
        let earlier = Time(k8s_openapi::chrono::DateTime::from_timestamp(100, 0).expect("time"));
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some(earlier.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let status = status_of(&p, &[], &[]);
        let scheduled = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled").expect("scheduled");
        assert_eq!(scheduled.last_transition_time, Some(earlier));
    }

    #[test]
    fn probes_decide_started_and_ready() {
        use cri::ContainerState::Running;
        let p = pod("Always", false);
        let running = [instance("app", 0, Running, 0)];
        let map =
            |v: Option<bool>| -> HashMap<String, bool> { v.map(|v| ("app".to_string(), v)).into_iter().collect() };
        // (startup verdict, readiness verdict) -> (started, ready); None: no such probe.
        let cases = [
            (None, None, true, true),
            (None, Some(false), true, false),
            (None, Some(true), true, true),
            (Some(false), None, false, false),
            // Not started is not ready, whatever readiness said before.
            (Some(false), Some(true), false, false),
            (Some(true), None, true, true),
            (Some(true), Some(false), true, false),
            (Some(true), Some(true), true, true),
        ];
        for (i, (startup, readiness, started, ready)) in cases.into_iter().enumerate() {
            let status = probed_status_of(&p, &running, &[], &map(readiness), &map(startup));
            let app = &status.container_statuses.as_ref().expect("statuses")[0];
            assert_eq!((app.started, app.ready), (Some(started), ready), "case {i}");
            let expected = if ready { "True" } else { "False" };
            assert_eq!(condition_of(&status, "Ready"), expected, "case {i}");
            assert_eq!(condition_of(&status, "ContainersReady"), expected, "case {i}");
            assert_eq!(status.phase.as_deref(), Some("Running"), "case {i}");
        }
    }
}
