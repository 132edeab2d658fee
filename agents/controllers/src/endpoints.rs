//! Endpoints and EndpointSlices: for every Service with a selector, the addresses of the pods
//! it selects — ready ones as addresses, the others as not ready — with the Service's ports
//! resolved against each pod (named target ports looked up in its containers). One
//! EndpointSlice per Service and address family (IPv4), named `<service>-<hash>`, labelled
//! `kubernetes.io/service-name` and managed by this controller.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_api::error::{ApiError, Result};
use keel_runtime::{Action, Client, Informer, ObjectKey, WorkQueue, labels};

const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const POD_BY_NAMESPACE: &str = "namespace";

pub struct EndpointsController {
    client: Client,
    services: Arc<Informer<Service>>,
    pods: Arc<Informer<Pod>>,
    queue: Arc<WorkQueue<ObjectKey>>,
}

/// The port a Service port reaches on `pod`: a number, or a named container port.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == port.protocol.as_deref().unwrap_or("TCP")
            })
            .map(|p| p.container_port),
    }
}

struct Member {
    ip: String,
    ready: bool,
    terminating: bool,
    node: Option<String>,
    reference: ObjectReference,
    hostname: Option<String>,
}

impl EndpointsController {
    pub fn new(client: Client, pods: Arc<Informer<Pod>>) -> Arc<Self> {
        let services = Informer::<Service>::new(client.clone());
        let queue = WorkQueue::new();
        let this = Arc::new(EndpointsController { client, services, pods, queue });
        this.services.feed(this.queue.clone());
        let weak = Arc::downgrade(&this);
        this.pods.on_change(move |old, new| {
            let Some(this) = weak.upgrade() else { return };
            for pod in [old, new].into_iter().flatten() {
                let namespace = pod.metadata.namespace.as_deref().unwrap_or("");
                for service in this.services.list() {
                    if service.metadata.namespace.as_deref() == Some(namespace)
                        && service
                            .spec
                            .as_ref()
                            .and_then(|s| s.selector.as_ref())
                            .is_some_and(|s| labels::matches_map(s, pod.metadata.labels.as_ref()))
                    {
                        this.queue.add(ObjectKey::of(service.as_ref()));
                    }
                }
            }
        });
        this
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        let _informer = keel_runtime::AbortOnDrop::spawn(self.services.clone().run());
        self.services.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        keel_runtime::run_workers(self.queue.clone(), workers, "Endpoints", move |key| {
            let this = this.clone();
            async move { this.reconcile(key).await }
        })
        .await;
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action> {
        let Some(service) = self.services.get(&key) else { return Ok(Action::Done) };
        let Some(spec) = service.spec.clone() else { return Ok(Action::Done) };
        // Without a selector the user manages the endpoints.
        let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else { return Ok(Action::Done) };
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        let mut members = Vec::new();
        let mut pods = self.pods.by_index(POD_BY_NAMESPACE, &key.namespace);
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for pod in &pods {
            if !labels::matches_map(&selector, pod.metadata.labels.as_ref()) {
                continue;
            }
            let status = pod.status.clone().unwrap_or_default();
            let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty()) else { continue };
            if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
                continue;
            }
            let terminating = pod.metadata.deletion_timestamp.is_some();
            members.push(Member {
                ip,
                ready: (crate::replicaset::is_ready(pod) && !terminating) || publish_not_ready,
                terminating,
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                hostname: pod.spec.as_ref().and_then(|s| s.hostname.clone()),
                reference: ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: pod.metadata.namespace.clone(),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectReference::default()
                },
            });
        }
        let ports: Vec<_> = spec.ports.clone().unwrap_or_default();
        self.write_endpoints(&service, &members, &ports, &pods).await?;
        self.write_slice(&service, &members, &ports, &pods).await?;
        Ok(Action::Done)
    }

    async fn write_endpoints(
        &self,
        service: &Service,
        members: &[Member],
        ports: &[k8s_openapi::api::core::v1::ServicePort],
        pods: &[Arc<Pod>],
    ) -> Result<()> {
        // Pods grouped by the ports they expose, one subset each (usually one).
        let mut subsets: BTreeMap<Vec<(String, i32, String)>, EndpointSubset> = BTreeMap::new();
        for member in members.iter().filter(|m| !m.terminating) {
            let Some(pod) = pods.iter().find(|p| p.metadata.uid == member.reference.uid) else { continue };
            let resolved: Vec<(String, i32, String)> = ports
                .iter()
                .filter_map(|p| {
                    Some((
                        p.name.clone().unwrap_or_default(),
                        target_port(p, pod)?,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ))
                })
                .collect();
            let subset = subsets.entry(resolved.clone()).or_insert_with(|| EndpointSubset {
                ports: Some(
                    resolved
                        .iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then(|| name.clone()),
                            port: *port,
                            protocol: Some(protocol.clone()),
                            app_protocol: None,
                        })
                        .collect(),
                ),
                ..EndpointSubset::default()
            });
            let address = EndpointAddress {
                ip: member.ip.clone(),
                node_name: member.node.clone(),
                hostname: member.hostname.clone(),
                target_ref: Some(member.reference.clone()),
            };
            if member.ready {
                subset.addresses.get_or_insert_with(Vec::new).push(address);
            } else {
                subset.not_ready_addresses.get_or_insert_with(Vec::new).push(address);
            }
        }
        let name = service.metadata.name.clone().unwrap_or_default();
        let namespace = service.metadata.namespace.clone();
        let wanted = Endpoints {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: namespace.clone(),
                labels: service.metadata.labels.clone(),
                ..ObjectMeta::default()
            },
            subsets: (!subsets.is_empty()).then(|| subsets.into_values().collect()),
        };
        upsert(&self.client, namespace.as_deref(), &name, wanted, |current, wanted| {
            current.subsets == wanted.subsets && current.metadata.labels == wanted.metadata.labels
        })
        .await
    }

    async fn write_slice(
        &self,
        service: &Service,
        members: &[Member],
        ports: &[k8s_openapi::api::core::v1::ServicePort],
        pods: &[Arc<Pod>],
    ) -> Result<()> {
        let name = service.metadata.name.clone().unwrap_or_default();
        let namespace = service.metadata.namespace.clone();
        let slice_name = format!("{name}-{}", short_hash(service.metadata.uid.as_deref().unwrap_or("")));
        let slice_ports = ports
            .iter()
            .map(|p| {
                // A slice holds one number per port; a named target port resolves per pod,
                // so it takes the first pod's (slices are split per port set in Kubernetes).
                let number = members.iter().find_map(|m| {
                    pods.iter().find(|pod| pod.metadata.uid == m.reference.uid).and_then(|pod| target_port(p, pod))
                });
                k8s_openapi::api::discovery::v1::EndpointPort {
                    name: p.name.clone().or_else(|| Some(String::new())),
                    port: number.or(match &p.target_port {
                        Some(IntOrString::Int(n)) => Some(*n),
                        None => Some(p.port),
                        _ => None,
                    }),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                }
            })
            .collect();
        let endpoints = members
            .iter()
            .map(|m| Endpoint {
                addresses: vec![m.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(m.ready && !m.terminating),
                    serving: Some(m.ready || m.terminating),
                    terminating: Some(m.terminating),
                }),
                node_name: m.node.clone(),
                hostname: m.hostname.clone(),
                target_ref: Some(m.reference.clone()),
                ..Endpoint::default()
            })
            .collect();
        let mut slice_labels = service.metadata.labels.clone().unwrap_or_default();
        slice_labels.insert(SERVICE_NAME.into(), name.clone());
        slice_labels.insert("endpointslice.kubernetes.io/managed-by".into(), MANAGED_BY.into());
        let wanted = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name.clone()),
                namespace: namespace.clone(),
                labels: Some(slice_labels),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    name: name.clone(),
                    uid: service.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(slice_ports),
        };
        upsert(&self.client, namespace.as_deref(), &slice_name, wanted, |current, wanted| {
            current.endpoints == wanted.endpoints
                && current.ports == wanted.ports
                && current.metadata.labels == wanted.metadata.labels
        })
        .await
    }
}

/// Creates `wanted`, or replaces the current object with it unless `same` says nothing the
/// controller owns differs.
async fn upsert<K>(
    client: &Client,
    namespace: Option<&str>,
    name: &str,
    mut wanted: K,
    same: impl Fn(&K, &K) -> bool,
) -> Result<()>
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + serde::Serialize + serde::de::DeserializeOwned,
{
    match client.get::<K>(namespace, name).await {
        Ok(current) => {
            if same(&current, &wanted) {
                return Ok(());
            }
            wanted.metadata_mut().resource_version = current.metadata().resource_version.clone();
            wanted.metadata_mut().uid = current.metadata().uid.clone();
            client.replace(namespace, name, &wanted).await?;
        }
        Err(ApiError::NotFound { .. }) => {
            client.create(namespace, &wanted).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

fn short_hash(text: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|i| SAFE[((hash >> (i * 5)) as usize) % SAFE.len()] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ports_resolve_by_number_or_container_port_name() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        }))
        .unwrap();
        let port =
            |v: serde_json::Value| -> k8s_openapi::api::core::v1::ServicePort { serde_json::from_value(v).unwrap() };
        assert_eq!(target_port(&port(serde_json::json!({"port": 80})), &pod), Some(80));
        assert_eq!(target_port(&port(serde_json::json!({"port": 80, "targetPort": 9090})), &pod), Some(9090));
        assert_eq!(target_port(&port(serde_json::json!({"port": 80, "targetPort": "http"})), &pod), Some(8080));
        assert_eq!(
            target_port(&port(serde_json::json!({"port": 53, "targetPort": "dns", "protocol": "UDP"})), &pod),
            Some(53)
        );
        assert_eq!(
            target_port(&port(serde_json::json!({"port": 53, "targetPort": "dns"})), &pod),
            None,
            "TCP port named dns does not exist"
        );
        assert_eq!(target_port(&port(serde_json::json!({"port": 80, "targetPort": "nope"})), &pod), None);
    }
}
