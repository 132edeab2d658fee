//! Cluster IPs and node ports for Services, allocated by the API as kube-apiserver allocates
//! them: a Service of type ClusterIP, NodePort or LoadBalancer gets an address from
//! `--service-cluster-ip-range` (10.96.0.0/12 by default) unless it is headless
//! (`clusterIP: None`) or names one itself, and NodePort / LoadBalancer ports get a node
//! port from `--service-node-port-range` (30000-32767).
//!
//! Each address and port held is a key of its own (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`), written in the same transaction as the
//! Service with "must not exist" as its precondition: two creations on different members
//! can never both take one address, and a Service is never written without what it holds.
//! Deleting the Service deletes its keys in the same transaction. The first address of the
//! range is kept back, as kube keeps it for the `kubernetes` Service.
//!
//! There is no service proxy yet: the addresses are allocated and shown, not routed.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde_json::{Value, json};

use crate::error::{ApiError, FieldCause, Result};
use crate::storage::{Precondition, WriteOp};

pub const IP_PREFIX: &str = "/registry/ranges/serviceips/";
pub const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRanges {
    network: u32,
    prefix_len: u8,
    node_ports: RangeInclusive<u16>,
}

impl Default for ServiceRanges {
    fn default() -> ServiceRanges {
        ServiceRanges { network: u32::from(Ipv4Addr::new(10, 96, 0, 0)), prefix_len: 12, node_ports: 30000..=32767 }
    }
}

impl ServiceRanges {
    /// From `--service-cluster-ip-range` (an IPv4 CIDR) and `--service-node-port-range`
    /// (`low-high`).
    pub fn parse(cidr: &str, node_ports: &str) -> std::result::Result<ServiceRanges, String> {
        let (address, len) = cidr.split_once('/').ok_or_else(|| format!("{cidr:?} is not a CIDR (a.b.c.d/n)"))?;
        let address: Ipv4Addr = address.parse().map_err(|e| format!("{cidr:?}: {e}"))?;
        let prefix_len: u8 = len.parse().map_err(|e| format!("{cidr:?}: prefix length: {e}"))?;
        if !(8..=30).contains(&prefix_len) {
            return Err(format!("{cidr:?}: the prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix_len);
        let (low, high) =
            node_ports.split_once('-').ok_or_else(|| format!("{node_ports:?} is not a range (low-high)"))?;
        let parse_port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{node_ports:?}: {e}"));
        let (low, high) = (parse_port(low)?, parse_port(high)?);
        if low == 0 || low > high {
            return Err(format!("{node_ports:?}: the low end must be above 0 and not above the high end"));
        }
        Ok(ServiceRanges { network: u32::from(address) & mask, prefix_len, node_ports: low..=high })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix_len)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix_len);
        u32::from(ip) & mask == self.network
    }

    /// Addresses a Service may be given: not the network's, not the broadcast, not the first
    /// host (kept for the `kubernetes` Service).
    fn assignable(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(self.network);
        self.contains(ip) && offset >= 2 && offset < self.size() - 1
    }

    /// The address kept back for the `kubernetes` Service.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    fn random_ip(&self) -> Ipv4Addr {
        let span = self.size() - 3;
        Ipv4Addr::from(self.network + 2 + rand::random_range(0..span))
    }

    fn random_port(&self) -> u16 {
        rand::random_range(self.node_ports.clone())
    }
}

fn ip_key(ip: &str) -> String {
    format!("{IP_PREFIX}{ip}")
}

fn port_key(port: i64) -> String {
    format!("{PORT_PREFIX}{port}")
}

/// A node port given to one entry of `spec.ports`: (node port, picked at random, index in
/// `spec.ports`, the port it serves, its protocol).
type NodePortEntry = (i64, bool, usize, Option<Value>, Option<Value>);

fn service_type(service: &Value) -> &str {
    service.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP")
}

fn wants_node_ports(service: &Value) -> bool {
    matches!(service_type(service), "NodePort" | "LoadBalancer")
}

fn cluster_ip(service: &Value) -> Option<&str> {
    service.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|ip| !ip.is_empty())
}

/// The address a Service holds in the range (not `None`, not empty).
fn held_ip(service: &Value) -> Option<&str> {
    cluster_ip(service).filter(|ip| *ip != "None")
}

fn held_ports(service: &Value) -> Vec<i64> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .filter(|p| *p > 0)
        .collect()
}

/// What an allocation key records: whose it is, for an operator reading the store.
fn owner(service: &Value) -> Vec<u8> {
    json!({
        "namespace": crate::object::namespace(service),
        "name": crate::object::name(service),
    })
    .to_string()
    .into_bytes()
}

/// One allocation written with a Service; `chosen` marks the ones picked at random, which
/// are picked again if another Service took them first.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub op: WriteOp,
    pub chosen: bool,
    /// The field and kube's complaint when a given address or port is already held.
    pub taken: FieldCause,
}

fn ip_taken(ip: &str) -> FieldCause {
    FieldCause::invalid(
        "spec.clusterIPs",
        format!("Invalid value: [{ip:?}]: failed to allocate IP {ip}: provided IP is already allocated"),
    )
}

fn port_taken(index: usize, port: i64) -> FieldCause {
    FieldCause::invalid(
        format!("spec.ports[{index}].nodePort"),
        format!("Invalid value: {port}: provided port is already allocated"),
    )
}

fn released(key: String) -> Allocation {
    Allocation {
        op: WriteOp::Delete { key, precondition: Precondition::Any },
        chosen: false,
        taken: FieldCause::invalid("", ""),
    }
}

fn invalid(service: &Value, field: &str, message: String) -> ApiError {
    ApiError::invalid("Service", "", crate::object::name(service), vec![FieldCause::invalid(field, message)])
}

/// Fills in `service`'s cluster IP and node ports (keeping what `current`, the stored
/// Service on an update, already holds) and returns the writes that take what is new and
/// give back what is no longer held. `taken` says whether an address or port is held by
/// another Service as far as this member knows, so random picks rarely collide.
pub fn allocate(
    ranges: &ServiceRanges,
    service: &mut Value,
    current: Option<&Value>,
    taken: &dyn Fn(&str) -> bool,
) -> Result<Vec<Allocation>> {
    let mut allocations = Vec::new();
    let external = service_type(service) == "ExternalName";
    // An update that leaves the allocated fields out keeps them (kube's patchAllocatedValues).
    if let Some(current) = current
        && !external
        && cluster_ip(service).is_none()
        && let Some(ip) = cluster_ip(current)
    {
        service["spec"]["clusterIP"] = json!(ip);
        service["spec"]["clusterIPs"] = current.pointer("/spec/clusterIPs").cloned().unwrap_or(json!([ip]));
    }
    let old_ip = current.and_then(held_ip);
    if let (Some(old), Some(new)) = (current.and_then(cluster_ip), cluster_ip(service))
        && old != new
    {
        return Err(invalid(service, "spec.clusterIPs[0]", format!("Invalid value: {new:?}: may not change once set")));
    }
    if external {
        if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    } else {
        match cluster_ip(service) {
            Some("None") => {
                service["spec"]["clusterIPs"] = json!(["None"]);
            }
            Some(ip) if old_ip == Some(ip) => {}
            Some(ip) => {
                let ip = ip.to_string();
                let parsed: Ipv4Addr = ip.parse().map_err(|_| {
                    invalid(service, "spec.clusterIPs[0]", format!("Invalid value: {ip:?}: must be a valid IP address"))
                })?;
                let kept_for_this_one = parsed == ranges.first_host()
                    && crate::object::namespace(service) == "default"
                    && crate::object::name(service) == crate::kubernetes_service::NAME;
                if !ranges.assignable(parsed) && !kept_for_this_one {
                    return Err(invalid(
                        service,
                        "spec.clusterIPs",
                        format!(
                            "Invalid value: [{ip:?}]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}",
                            Ipv4Addr::from(ranges.network),
                            ranges.prefix_len
                        ),
                    ));
                }
                service["spec"]["clusterIPs"] = json!([ip]);
                allocations.push(Allocation {
                    op: WriteOp::Put { key: ip_key(&ip), value: owner(service), precondition: Precondition::Absent },
                    chosen: false,
                    taken: ip_taken(&ip),
                });
            }
            None => {
                let ip = (0..32).map(|_| ranges.random_ip().to_string()).find(|ip| !taken(&ip_key(ip)));
                let ip = ip.ok_or_else(|| ApiError::internal("the service cluster IP range is full"))?;
                service["spec"]["clusterIP"] = json!(ip);
                service["spec"]["clusterIPs"] = json!([ip]);
                allocations.push(Allocation {
                    op: WriteOp::Put { key: ip_key(&ip), value: owner(service), precondition: Precondition::Absent },
                    chosen: true,
                    taken: ip_taken(&ip),
                });
            }
        }
        service["spec"]["ipFamilies"] = json!(["IPv4"]);
        service["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    }
    if let Some(old) = old_ip
        && held_ip(service) != Some(old)
    {
        allocations.push(released(ip_key(old)));
    }

    // Node ports: kept by port number and protocol across an update, new ones picked; one
    // port number served over two protocols shares its node port (kube).
    let old_ports = current.map(held_ports).unwrap_or_default();
    let wants = wants_node_ports(service);
    let current_ports =
        current.and_then(|c| c.pointer("/spec/ports")).and_then(Value::as_array).cloned().unwrap_or_default();
    let name = crate::object::name(service).to_string();
    let mut new_ports: Vec<NodePortEntry> = Vec::new();
    if let Some(ports) = service.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for (i, port) in ports.iter_mut().enumerate() {
            if !wants {
                if let Some(p) = port.as_object_mut() {
                    p.remove("nodePort");
                }
                continue;
            }
            let (number_of_port, protocol) = (port.get("port").cloned(), port.get("protocol").cloned());
            let given = port.get("nodePort").and_then(Value::as_i64).filter(|p| *p > 0);
            let same = |p: &Value| p.get("port") == number_of_port.as_ref() && p.get("protocol") == protocol.as_ref();
            let sibling = new_ports.iter().find(|(.., port, _)| *port == number_of_port).map(|(n, ..)| *n);
            let kept = given
                .or_else(|| current_ports.iter().find(|p| same(p)).and_then(|p| p.get("nodePort")?.as_i64()))
                .or(sibling);
            let (number, chosen) = match kept {
                Some(n) => {
                    if !old_ports.contains(&n) && !u16::try_from(n).is_ok_and(|n| ranges.node_ports.contains(&n)) {
                        return Err(ApiError::invalid(
                            "Service",
                            "",
                            &name,
                            vec![FieldCause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                format!(
                                    "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}",
                                    ranges.node_ports.start(),
                                    ranges.node_ports.end()
                                ),
                            )],
                        ));
                    }
                    (n, false)
                }
                None => {
                    let picked = (0..32)
                        .map(|_| i64::from(ranges.random_port()))
                        .find(|p| !taken(&port_key(*p)) && !new_ports.iter().any(|(n, ..)| n == p));
                    (picked.ok_or_else(|| ApiError::internal("the service node port range is full"))?, true)
                }
            };
            if new_ports.iter().any(|(n, .., p)| *n == number && *p == protocol) {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    &name,
                    vec![FieldCause {
                        reason: "FieldValueDuplicate",
                        field: format!("spec.ports[{i}].nodePort"),
                        message: format!("Duplicate value: {number}"),
                    }],
                ));
            }
            port["nodePort"] = json!(number);
            new_ports.push((number, chosen, i, number_of_port, protocol));
        }
    }
    let holder = owner(service);
    let mut written: Vec<i64> = Vec::new();
    for (number, chosen, index, ..) in &new_ports {
        if !old_ports.contains(number) && !written.contains(number) {
            written.push(*number);
            allocations.push(Allocation {
                op: WriteOp::Put { key: port_key(*number), value: holder.clone(), precondition: Precondition::Absent },
                chosen: *chosen,
                taken: port_taken(*index, *number),
            });
        }
    }
    let mut given_back: Vec<i64> = Vec::new();
    for number in old_ports.iter().filter(|n| !new_ports.iter().any(|(m, ..)| m == *n)) {
        if !given_back.contains(number) {
            given_back.push(*number);
            allocations.push(released(port_key(*number)));
        }
    }
    Ok(allocations)
}

/// Whether an allocation key's value names `service` as its holder.
pub fn held_by(value: &[u8], service: &Value) -> bool {
    serde_json::from_slice::<Value>(value).is_ok_and(|v| {
        v.get("namespace").and_then(Value::as_str) == Some(crate::object::namespace(service))
            && v.get("name").and_then(Value::as_str) == Some(crate::object::name(service))
    })
}

/// The writes that give back everything a deleted Service held.
pub fn release(service: &Value) -> Vec<WriteOp> {
    held_ip(service)
        .map(ip_key)
        .into_iter()
        .chain({
            let mut ports = held_ports(service);
            ports.sort_unstable();
            ports.dedup();
            ports.into_iter().map(port_key)
        })
        .map(|key| WriteOp::Delete { key, precondition: Precondition::Any })
        .collect()
}

/// The 422 for an address or port another Service holds, as kube words it.
pub fn already_allocated(service: &Value, allocation: &Allocation) -> ApiError {
    ApiError::invalid("Service", "", crate::object::name(service), vec![allocation.taken.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec})
    }

    fn nothing_taken(_: &str) -> bool {
        false
    }

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        let r = ServiceRanges::parse("10.43.7.9/16", "30000-30010").unwrap();
        assert!(r.assignable("10.43.200.3".parse().unwrap()));
        assert!(!r.assignable("10.43.0.1".parse().unwrap()), "the first host is kept back");
        assert!(!r.assignable("10.43.255.255".parse().unwrap()), "broadcast");
        assert!(!r.assignable("10.44.0.5".parse().unwrap()));
        for (cidr, ports) in
            [("10.0.0.0", "1-2"), ("10.0.0.0/33", "1-2"), ("x/16", "1-2"), ("10.0.0.0/16", "5"), ("10.0.0.0/16", "9-3")]
        {
            assert!(ServiceRanges::parse(cidr, ports).is_err(), "{cidr} {ports}");
        }
    }

    #[test]
    fn the_first_host_goes_only_to_the_kubernetes_service() {
        let ranges = ServiceRanges::default();
        let mut other = service(json!({"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}));
        assert!(allocate(&ranges, &mut other, None, &nothing_taken).is_err());
        let mut own = json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}});
        let allocations = allocate(&ranges, &mut own, None, &nothing_taken).unwrap();
        assert_eq!(allocations.len(), 1);
        assert_eq!(ranges.first_host(), Ipv4Addr::new(10, 96, 0, 1));
    }

    #[test]
    fn new_services_get_an_address_and_node_ports() {
        let ranges = ServiceRanges::default();
        let mut svc = service(
            json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}),
        );
        let allocations = allocate(&ranges, &mut svc, None, &nothing_taken).unwrap();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(ranges.assignable(ip));
        assert_eq!(svc["spec"]["clusterIPs"], json!([ip.to_string()]));
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
        let ports: Vec<i64> = held_ports(&svc);
        assert_eq!(ports.len(), 2);
        assert!(ports.iter().all(|p| (30000..=32767).contains(p)) && ports[0] != ports[1]);
        assert_eq!(allocations.len(), 3);
        assert!(
            allocations
                .iter()
                .all(|a| a.chosen && matches!(a.op, WriteOp::Put { precondition: Precondition::Absent, .. }))
        );
        assert_eq!(release(&svc).len(), 3);
    }

    #[test]
    fn headless_external_and_given_addresses() {
        let ranges = ServiceRanges::default();
        let mut headless = service(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(allocate(&ranges, &mut headless, None, &nothing_taken).unwrap().is_empty());
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
        let mut external = service(json!({"type": "ExternalName", "externalName": "example.com"}));
        assert!(allocate(&ranges, &mut external, None, &nothing_taken).unwrap().is_empty());
        assert!(external["spec"].get("clusterIP").is_none());
        let mut given = service(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}));
        let allocations = allocate(&ranges, &mut given, None, &nothing_taken).unwrap();
        assert_eq!((allocations.len(), allocations[0].chosen), (1, false));
        let mut outside = service(json!({"clusterIP": "192.168.0.10"}));
        let error = allocate(&ranges, &mut outside, None, &nothing_taken).unwrap_err().to_string();
        assert!(error.contains("not in the valid range"), "{error}");
        // A random pick steers clear of what this member knows is taken.
        let tight = ServiceRanges::parse("10.0.0.0/30", "30000-30001").unwrap();
        let mut svc = service(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        allocate(&tight, &mut svc, None, &|key: &str| key.ends_with("30000")).unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.0.0.2", "the only assignable address of a /30");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30001);
    }

    #[test]
    fn updates_keep_what_is_held_and_give_back_what_is_not() {
        let ranges = ServiceRanges::default();
        let current = service(json!({"type": "NodePort", "clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}));
        // kubectl apply sends the spec without the allocated fields: they are kept.
        let mut update = service(json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}));
        assert!(allocate(&ranges, &mut update, Some(&current), &nothing_taken).unwrap().is_empty());
        assert_eq!(
            (update["spec"]["clusterIP"].as_str(), update["spec"]["ports"][0]["nodePort"].as_i64()),
            (Some("10.96.5.5"), Some(30080))
        );
        // Back to ClusterIP: the node port goes back.
        let mut plain =
            service(json!({"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}));
        let allocations = allocate(&ranges, &mut plain, Some(&current), &nothing_taken).unwrap();
        assert!(plain["spec"]["ports"][0].get("nodePort").is_none());
        assert!(
            matches!(&allocations[..], [Allocation { op: WriteOp::Delete { key, .. }, .. }] if key.ends_with("/30080"))
        );
        // The address cannot change.
        let mut moved = service(json!({"clusterIP": "10.96.9.9"}));
        let error = allocate(&ranges, &mut moved, Some(&current), &nothing_taken).unwrap_err().to_string();
        assert!(error.contains("may not change once set"), "{error}");
    }

    #[test]
    fn one_port_number_over_two_protocols_shares_its_node_port() {
        let ranges = ServiceRanges::default();
        let mut dns = service(
            json!({"type": "NodePort", "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}),
        );
        let allocations = allocate(&ranges, &mut dns, None, &nothing_taken).unwrap();
        let ports = held_ports(&dns);
        assert_eq!(ports[0], ports[1]);
        assert_eq!(allocations.len(), 2, "one address and one node port key");
        assert_eq!(release(&dns).len(), 2);
        let mut twice = service(json!({"type": "NodePort", "ports": [
            {"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 81, "protocol": "TCP", "nodePort": 30080}]}));
        let error = allocate(&ranges, &mut twice, None, &nothing_taken).unwrap_err().to_string();
        assert!(error.contains("Duplicate value: 30080"), "{error}");
        assert!(held_by(&owner(&dns), &dns));
        let mut other = dns.clone();
        other["metadata"]["name"] = json!("other");
        assert!(!held_by(&owner(&dns), &other));
    }
}
