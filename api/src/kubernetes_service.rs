//! The `kubernetes` Service in `default`, kept by the Raft leader as kube-apiserver's
//! kubernetes-service controller and lease endpoint reconciler keep it: cluster IP the first
//! host of `--service-cluster-ip-range` (which allocation keeps back for it), port 443
//! (`https`) to the API port, labels `component=apiserver` and `provider=kubernetes`. Its
//! Endpoints and EndpointSlices list the Kubernetes API address of every member the leader has
//! heard from lately (itself included), so a member that stops answering drops out within a
//! reconcile, as an API server whose lease expires drops out of kube's. A member whose API
//! address is not an IPv4 address is left out (Endpoints hold addresses, not names).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{ApiError, Result};
use crate::rest::{Api, DeleteOptions, ListOptions, WriteOptions};
use crate::selector::LabelSelector;

pub const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";
const MANAGER: &str = "kube-apiserver";
/// How often everything is checked even when the members have not changed (kube reconciles
/// its endpoints every 10 s).
const INTERVAL: Duration = Duration::from_secs(10);
/// How often the member list is looked at: a change is published at once.
const POLL: Duration = Duration::from_secs(1);

/// Runs until dropped (the leader's control-loop runner aborts it on losing leadership).
/// `members` answers the API addresses (`ip:port`) of the members to list, those heard from
/// within `settle`.
pub async fn run(api: Arc<Api>, settle: Duration, members: impl Fn() -> Vec<String> + Send + 'static) {
    // A new leader has yet to hear from its followers: its first look would find itself alone
    // and publish that. Endpoints a previous leader wrote stand until this one has had a
    // liveness window to hear from every live member; a cluster's first leader writes at once.
    if endpoints_exist(&api).await {
        tokio::time::sleep(settle).await;
    }
    let mut published: Option<(Vec<String>, tokio::time::Instant)> = None;
    loop {
        let mut now_members = members();
        now_members.sort();
        let due = match &published {
            Some((last, at)) => *last != now_members || at.elapsed() >= INTERVAL,
            None => true,
        };
        if due {
            match reconcile(&api, &now_members).await {
                Ok(()) => published = Some((now_members, tokio::time::Instant::now())),
                Err(e) => tracing::debug!(error = %e, "reconciling the kubernetes Service; retrying"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the Endpoints are there already; an unreadable answer counts as yes (waiting a
/// moment is harmless, shrinking the list is not).
async fn endpoints_exist(api: &Api) -> bool {
    let Ok(endpoints) = resource(api, "", "v1", "endpoints") else { return true };
    !matches!(api.get(&endpoints, Some(NAMESPACE), NAME).await, Err(ApiError::NotFound { .. }))
}

/// The member addresses that can be endpoints, grouped by port (lowest first).
fn endpoints_by_port(members: &[String]) -> BTreeMap<u16, Vec<Ipv4Addr>> {
    let mut by_port: BTreeMap<u16, Vec<Ipv4Addr>> = BTreeMap::new();
    for address in members {
        match address.parse::<SocketAddrV4>() {
            // A member listening on every address (0.0.0.0) gives no address to reach it by.
            Ok(a) if a.ip().is_unspecified() => {
                tracing::debug!(address, "unspecified address; left out of the kubernetes endpoints")
            }
            Ok(a) => by_port.entry(a.port()).or_default().push(*a.ip()),
            Err(_) => tracing::debug!(address, "not an IPv4 address:port; left out of the kubernetes endpoints"),
        }
    }
    for ips in by_port.values_mut() {
        ips.sort();
        ips.dedup();
    }
    by_port
}

fn https_port(port: u16) -> Value {
    json!({"name": "https", "port": port, "protocol": "TCP"})
}

fn desired_service(cluster_ip: Ipv4Addr, target_port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": target_port}],
            "sessionAffinity": "None",
        },
    })
}

fn desired_endpoints(by_port: &BTreeMap<u16, Vec<Ipv4Addr>>) -> Value {
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, ips)| {
            json!({
                "addresses": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
                "ports": [https_port(*port)],
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets,
    })
}

/// One slice per port: a slice's ports apply to every endpoint in it. The lowest port's is
/// `kubernetes` itself, as kube names its only one.
fn slice_name(first: bool, port: u16) -> String {
    if first { NAME.to_string() } else { format!("{NAME}-{port}") }
}

fn desired_slice(name: &str, port: u16, ips: &[Ipv4Addr]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": NAME}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [https_port(port)],
    })
}

fn options() -> WriteOptions {
    WriteOptions { field_manager: Some(MANAGER.into()), ..WriteOptions::default() }
}

fn resource(api: &Api, group: &str, version: &str, plural: &str) -> Result<Arc<crate::registry::ResourceType>> {
    api.registry.find(group, version, plural).ok_or(ApiError::NoRoute)
}

/// Creates `desired`, or brings the stored object's `fields` to what `desired` has.
async fn ensure(api: &Api, rt: &crate::registry::ResourceType, desired: Value, fields: &[&str]) -> Result<()> {
    let name = crate::object::name(&desired).to_string();
    match api.get(rt, Some(NAMESPACE), &name).await {
        Ok(mut current) => {
            let mut changed = false;
            for field in fields {
                let pointer = format!("/{}", field.replace('.', "/"));
                let (Some(want), have) = (desired.pointer(&pointer), current.pointer(&pointer)) else { continue };
                if have != Some(want) {
                    set(&mut current, field, want.clone());
                    changed = true;
                }
            }
            if changed {
                api.update(rt, Some(NAMESPACE), &name, None, current, &options()).await?;
            }
            Ok(())
        }
        Err(ApiError::NotFound { .. }) => match api.create(rt, Some(NAMESPACE), desired, &options()).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

fn set(object: &mut Value, dotted: &str, value: Value) {
    let mut at = object;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            at[part] = value;
            return;
        }
        at = &mut at[part];
    }
}

/// One pass: the Service, its Endpoints and its EndpointSlices made to match `members`.
pub async fn reconcile(api: &Api, members: &[String]) -> Result<()> {
    let by_port = endpoints_by_port(members);
    let Some(target_port) = by_port.keys().next().copied() else {
        // Not even this member's own address parses: nothing sensible to publish.
        return Ok(());
    };
    let services = resource(api, "", "v1", "services")?;
    let service = desired_service(api.service_ranges.first_host(), target_port);
    ensure(api, &services, service, &["metadata.labels", "spec.ports"]).await?;
    let endpoints = resource(api, "", "v1", "endpoints")?;
    ensure(api, &endpoints, desired_endpoints(&by_port), &["subsets"]).await?;

    let slices = resource(api, "discovery.k8s.io", "v1", "endpointslices")?;
    let mut wanted = Vec::new();
    for (i, (port, ips)) in by_port.iter().enumerate() {
        let name = slice_name(i == 0, *port);
        ensure(api, &slices, desired_slice(&name, *port, ips), &["endpoints", "ports"]).await?;
        wanted.push(name);
    }
    let label_selector =
        LabelSelector::parse(&format!("kubernetes.io/service-name={NAME}")).map_err(ApiError::bad_request)?;
    let listed = api.list(&slices, Some(NAMESPACE), &ListOptions { label_selector, ..ListOptions::default() }).await?;
    for stale in listed.items.iter().map(crate::object::name).filter(|n| !wanted.iter().any(|w| w == n)) {
        match api.delete(&slices, Some(NAMESPACE), stale, &DeleteOptions::default()).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_group_by_port_and_names_are_left_out() {
        let members = [
            "127.0.0.12:6443",
            "127.0.0.11:6443",
            "127.0.0.11:6443",
            "api.example:6443",
            "0.0.0.0:6443",
            "127.0.0.13:7443",
        ]
        .map(String::from);
        let by_port = endpoints_by_port(&members);
        assert_eq!(by_port.len(), 2);
        assert_eq!(by_port[&6443], vec![Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)]);
        let endpoints = desired_endpoints(&by_port);
        assert_eq!(endpoints["subsets"][0]["addresses"][1]["ip"], "127.0.0.12");
        assert_eq!(endpoints["subsets"][1]["ports"][0], json!({"name": "https", "port": 7443, "protocol": "TCP"}));
        assert_eq!(slice_name(true, 6443), "kubernetes");
        assert_eq!(slice_name(false, 7443), "kubernetes-7443");
        let service = desired_service(Ipv4Addr::new(10, 96, 0, 1), 6443);
        assert_eq!(service["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 6443);
    }

    #[test]
    fn set_writes_a_dotted_field() {
        let mut object = json!({"metadata": {"name": "x"}});
        set(&mut object, "metadata.labels", json!({"a": "b"}));
        set(&mut object, "subsets", json!([]));
        assert_eq!(object, json!({"metadata": {"name": "x", "labels": {"a": "b"}}, "subsets": []}));
    }
}
