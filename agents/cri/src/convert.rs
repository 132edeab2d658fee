//! keel's runtime types to CRI messages and back.

use std::collections::{BTreeMap, HashMap};

use keel_container as kc;
use keel_proto::cri;

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn btree(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn protocol(p: kc::Protocol) -> cri::Protocol {
    match p {
        kc::Protocol::Tcp => cri::Protocol::Tcp,
        kc::Protocol::Udp => cri::Protocol::Udp,
        kc::Protocol::Sctp => cri::Protocol::Sctp,
    }
}

/// A host-network pod shares the node's network namespace; every pod shares one IPC
/// namespace among its containers, and each container has its own PID namespace (a pod's
/// `shareProcessNamespace` is not modelled yet).
fn namespaces(host_network: bool) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: if host_network { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

pub fn sandbox_config(c: &kc::SandboxConfig) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: c.name.clone(),
            uid: c.uid.clone(),
            namespace: c.namespace.clone(),
            attempt: c.attempt,
        }),
        hostname: c.hostname.clone(),
        log_directory: c.log_directory.to_string_lossy().into_owned(),
        dns_config: Some(cri::DnsConfig {
            servers: c.dns.servers.clone(),
            searches: c.dns.searches.clone(),
            options: c.dns.options.clone(),
        }),
        port_mappings: c
            .port_mappings
            .iter()
            .map(|p| cri::PortMapping {
                protocol: protocol(p.protocol) as i32,
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: c.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(c.host_network)),
                ..Default::default()
            }),
            sysctls: HashMap::new(),
        }),
    }
}

pub fn container_config(c: &kc::ContainerConfig, sandbox: &kc::SandboxConfig) -> cri::ContainerConfig {
    let s = &c.security;
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: c.name.clone(), attempt: c.attempt }),
        image: Some(cri::ImageSpec { image: c.image.clone(), annotations: HashMap::new() }),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c.envs.iter().map(|(k, v)| cri::KeyValue { key: k.clone(), value: v.clone().into_bytes() }).collect(),
        mounts: c
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.to_string_lossy().into_owned(),
                readonly: m.readonly,
                selinux_relabel: false,
                propagation: cri::MountPropagation::PropagationPrivate as i32,
            })
            .collect(),
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        log_path: c.log_path.clone(),
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_period: c.resources.cpu_period,
                cpu_quota: c.resources.cpu_quota,
                cpu_shares: c.resources.cpu_shares,
                memory_limit_in_bytes: c.resources.memory_limit_in_bytes,
                oom_score_adj: 0,
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: s.add_capabilities.clone(),
                    drop_capabilities: s.drop_capabilities.clone(),
                }),
                privileged: s.privileged,
                namespace_options: Some(namespaces(sandbox.host_network)),
                run_as_user: s.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: s.run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: s.readonly_rootfs,
                ..Default::default()
            }),
        }),
    }
}

pub fn sandbox_state(state: i32) -> kc::SandboxState {
    match cri::PodSandboxState::try_from(state) {
        Ok(cri::PodSandboxState::SandboxReady) => kc::SandboxState::Ready,
        _ => kc::SandboxState::NotReady,
    }
}

pub fn container_state(state: i32) -> kc::ContainerState {
    match cri::ContainerState::try_from(state) {
        Ok(cri::ContainerState::ContainerCreated) => kc::ContainerState::Created,
        Ok(cri::ContainerState::ContainerRunning) => kc::ContainerState::Running,
        Ok(cri::ContainerState::ContainerExited) => kc::ContainerState::Exited,
        _ => kc::ContainerState::Unknown,
    }
}

/// A sandbox as listed; `ip` comes from its status (ListPodSandbox does not carry it).
pub fn sandbox_status(s: cri::PodSandbox, ip: String) -> kc::SandboxStatus {
    let meta = s.metadata.unwrap_or_default();
    kc::SandboxStatus {
        id: s.id,
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        attempt: meta.attempt,
        state: sandbox_state(s.state),
        created_at: s.created_at,
        ip,
        labels: btree(s.labels),
    }
}

/// A container from its CRI status; the sandbox id comes from the list entry, which the
/// status does not repeat.
pub fn container_status(sandbox_id: String, s: cri::ContainerStatus) -> kc::ContainerStatus {
    let meta = s.metadata.unwrap_or_default();
    kc::ContainerStatus {
        id: s.id,
        sandbox_id,
        name: meta.name,
        attempt: meta.attempt,
        state: container_state(s.state),
        created_at: s.created_at,
        started_at: s.started_at,
        finished_at: s.finished_at,
        exit_code: s.exit_code,
        reason: s.reason,
        message: s.message,
        image: s.image.map(|i| i.image).unwrap_or_default(),
        image_ref: s.image_ref,
        labels: btree(s.labels),
    }
}

/// A container that left between being listed and being asked about keeps what the list said.
pub fn listed_container(c: cri::Container) -> kc::ContainerStatus {
    let meta = c.metadata.unwrap_or_default();
    kc::ContainerStatus {
        id: c.id,
        sandbox_id: c.pod_sandbox_id,
        name: meta.name,
        attempt: meta.attempt,
        state: container_state(c.state),
        created_at: c.created_at,
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        image: c.image.map(|i| i.image).unwrap_or_default(),
        image_ref: c.image_ref,
        labels: btree(c.labels),
    }
}

pub fn image(i: cri::Image) -> kc::Image {
    let mut names = i.repo_tags;
    names.extend(i.repo_digests);
    kc::Image { id: i.id, names, size_bytes: i.size }
}

pub fn stats(s: cri::ContainerStats) -> Option<kc::ContainerStats> {
    let id = s.attributes?.id;
    let cpu = s.cpu.unwrap_or_default();
    let memory = s.memory.unwrap_or_default();
    Some(kc::ContainerStats {
        id,
        timestamp: cpu.timestamp.max(memory.timestamp),
        cpu_usage_nanos: cpu.usage_core_nano_seconds.map_or(0, |v| v.value),
        memory_working_set_bytes: memory.working_set_bytes.map_or(0, |v| v.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_network_pods_use_the_node_namespace() {
        let sandbox = kc::SandboxConfig { host_network: true, ..Default::default() };
        let config = sandbox_config(&sandbox);
        let ns = config.linux.and_then(|l| l.security_context).and_then(|s| s.namespace_options).expect("namespaces");
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        let container = container_config(&kc::ContainerConfig::default(), &sandbox);
        let ns = container.linux.and_then(|l| l.security_context).and_then(|s| s.namespace_options).expect("ns");
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
    }

    #[test]
    fn unknown_states_are_not_ready_or_unknown() {
        assert_eq!(sandbox_state(7), kc::SandboxState::NotReady);
        assert_eq!(container_state(7), kc::ContainerState::Unknown);
        assert_eq!(container_state(cri::ContainerState::ContainerExited as i32), kc::ContainerState::Exited);
    }

    #[test]
    fn security_settings_carry_over() {
        let c = kc::ContainerConfig {
            security: kc::SecurityContext {
                run_as_user: Some(1000),
                readonly_rootfs: true,
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            },
            envs: vec![("A".into(), "b".into())],
            ..Default::default()
        };
        let config = container_config(&c, &kc::SandboxConfig::default());
        let sc = config.linux.and_then(|l| l.security_context).expect("security context");
        assert_eq!(sc.run_as_user, Some(cri::Int64Value { value: 1000 }));
        assert_eq!(sc.run_as_group, None);
        assert!(sc.readonly_rootfs);
        assert_eq!(sc.capabilities.expect("caps").drop_capabilities, ["ALL"]);
        assert_eq!(config.envs[0].value, b"b");
    }
}
