//! kube-scheduler's `helper.DefaultSelector`: the pods a pod without topology spread
//! constraints of its own is spread against are those selected by every Service of its
//! namespace that selects it, and by its controller (ReplicationController, ReplicaSet or
//! StatefulSet, found through its controller reference, not by selector).
//!
//! The snapshot keeps only the selectors of those objects, by namespace and name, so a
//! pod's selector is a few map look-ups.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController, Service};

use super::selector::{LabelSelector, Labels, labels_of_pod};
use super::snapshot::namespace_of;

/// A Service, ReplicationController, ReplicaSet or StatefulSet reduced to its selector: what
/// the loop hands the snapshot from its informers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadSource {
    namespace: String,
    name: String,
    selector: SourceSelector,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceSelector {
    /// `None`: a Service without a selector, which selects no pod.
    Service(Option<Labels>),
    ReplicationController(Labels),
    /// Compiled; a missing or invalid selector adds no requirement (as in kube).
    ReplicaSet(LabelSelector),
    StatefulSet(LabelSelector),
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn compiled(selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>) -> LabelSelector {
    LabelSelector::compile(selector).unwrap_or(LabelSelector::Nothing)
}

impl From<&Service> for SpreadSource {
    fn from(service: &Service) -> Self {
        let (namespace, name) = key_of(&service.metadata);
        let selector = service.spec.as_ref().and_then(|s| s.selector.clone());
        SpreadSource { namespace, name, selector: SourceSelector::Service(selector) }
    }
}

impl From<&ReplicationController> for SpreadSource {
    fn from(rc: &ReplicationController) -> Self {
        let (namespace, name) = key_of(&rc.metadata);
        let selector = rc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
        SpreadSource { namespace, name, selector: SourceSelector::ReplicationController(selector) }
    }
}

impl From<&ReplicaSet> for SpreadSource {
    fn from(rs: &ReplicaSet) -> Self {
        let (namespace, name) = key_of(&rs.metadata);
        let selector = compiled(rs.spec.as_ref().map(|s| &s.selector));
        SpreadSource { namespace, name, selector: SourceSelector::ReplicaSet(selector) }
    }
}

impl From<&StatefulSet> for SpreadSource {
    fn from(set: &StatefulSet) -> Self {
        let (namespace, name) = key_of(&set.metadata);
        let selector = compiled(set.spec.as_ref().map(|s| &s.selector));
        SpreadSource { namespace, name, selector: SourceSelector::StatefulSet(selector) }
    }
}

/// One namespace's selectors, by object name.
#[derive(Debug, Default)]
struct Namespace {
    services: HashMap<String, Labels>,
    replication_controllers: HashMap<String, Labels>,
    replica_sets: HashMap<String, LabelSelector>,
    stateful_sets: HashMap<String, LabelSelector>,
}

impl Namespace {
    fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.replication_controllers.is_empty()
            && self.replica_sets.is_empty()
            && self.stateful_sets.is_empty()
    }
}

/// The controller kinds `DefaultSelector` follows, by `apiVersion` and `kind`.
enum Owner {
    ReplicationController,
    ReplicaSet,
    StatefulSet,
}

impl Owner {
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        // schema.ParseGroupVersion: "v1" and "/v1" are the core group; more than one slash
        // is not a group version at all.
        let group = match api_version.split_once('/') {
            None => Some(("", api_version)),
            Some((_, rest)) if rest.contains('/') => None,
            Some(gv) => Some(gv),
        };
        match (group?, kind) {
            (("", "v1"), "ReplicationController") => Some(Owner::ReplicationController),
            (("apps", "v1"), "ReplicaSet") => Some(Owner::ReplicaSet),
            (("apps", "v1"), "StatefulSet") => Some(Owner::StatefulSet),
            _ => None,
        }
    }
}

/// Every Service's and controller's selector the loop reported.
#[derive(Debug, Default)]
pub(crate) struct SpreadSources {
    namespaces: HashMap<String, Namespace>,
}

impl SpreadSources {
    pub(crate) fn upsert(&mut self, source: SpreadSource) {
        // A Service without a selector (or that just lost it) selects nothing: kept as
        // absent, so namespaces holding only such Services cost nothing.
        if source.selector == SourceSelector::Service(None) {
            self.remove(&source);
            return;
        }
        let SpreadSource { namespace, name, selector } = source;
        let ns = self.namespaces.entry(namespace).or_default();
        match selector {
            SourceSelector::Service(labels) => {
                ns.services.insert(name, labels.unwrap_or_default());
            }
            SourceSelector::ReplicationController(labels) => {
                ns.replication_controllers.insert(name, labels);
            }
            SourceSelector::ReplicaSet(s) => {
                ns.replica_sets.insert(name, s);
            }
            SourceSelector::StatefulSet(s) => {
                ns.stateful_sets.insert(name, s);
            }
        }
    }

    pub(crate) fn remove(&mut self, source: &SpreadSource) {
        let Some(ns) = self.namespaces.get_mut(&source.namespace) else { return };
        let name = &source.name;
        match source.selector {
            SourceSelector::Service(_) => {
                ns.services.remove(name);
            }
            SourceSelector::ReplicationController(_) => {
                ns.replication_controllers.remove(name);
            }
            SourceSelector::ReplicaSet(_) => {
                ns.replica_sets.remove(name);
            }
            SourceSelector::StatefulSet(_) => {
                ns.stateful_sets.remove(name);
            }
        }
        if ns.is_empty() {
            self.namespaces.remove(&source.namespace);
        }
    }

    /// `DefaultSelector`: the Services' selectors merged (they all select the pod, so
    /// they agree), with the controller's: a ReplicationController's merged in as well, a
    /// ReplicaSet's or StatefulSet's requirements added. `None` when that selects
    /// everything, i.e. nothing selects the pod: then kube applies no default constraint.
    pub(crate) fn default_selector(&self, pod: &Pod) -> Option<LabelSelector> {
        let ns = self.namespaces.get(namespace_of(pod))?;
        let labels = labels_of_pod(pod);
        let mut set = Labels::new();
        for selector in ns.services.values() {
            if selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                set.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let mut extra = None;
        let owner = pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true));
        if let Some(owner) = owner {
            match Owner::of(&owner.api_version, &owner.kind) {
                Some(Owner::ReplicationController) => {
                    if let Some(rc) = ns.replication_controllers.get(&owner.name) {
                        set.extend(rc.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                }
                Some(Owner::ReplicaSet) => extra = ns.replica_sets.get(&owner.name),
                Some(Owner::StatefulSet) => extra = ns.stateful_sets.get(&owner.name),
                None => {}
            }
        }
        let mut selector = LabelSelector::from_labels(&set);
        if let Some(extra) = extra {
            selector.and(extra);
        }
        (!selector.is_everything()).then_some(selector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::labeled_pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as ApiLabelSelector;
    use serde_json::{Value, json};

    fn meta(name: &str) -> Value {
        json!({"name": name, "namespace": "default"})
    }

    fn service(name: &str, selector: Value) -> SpreadSource {
        let s: Service =
            serde_json::from_value(json!({"metadata": meta(name), "spec": {"selector": selector}})).unwrap();
        SpreadSource::from(&s)
    }

    fn replica_set(name: &str, selector: Value) -> SpreadSource {
        let rs: ReplicaSet =
            serde_json::from_value(json!({"metadata": meta(name), "spec": {"selector": selector}})).unwrap();
        SpreadSource::from(&rs)
    }

    fn stateful_set(name: &str, selector: Value) -> SpreadSource {
        let set: StatefulSet = serde_json::from_value(
            json!({"metadata": meta(name), "spec": {"selector": selector, "serviceName": "", "template": {}}}),
        )
        .unwrap();
        SpreadSource::from(&set)
    }

    fn replication_controller(name: &str, selector: Value) -> SpreadSource {
        let rc: ReplicationController =
            serde_json::from_value(json!({"metadata": meta(name), "spec": {"selector": selector}})).unwrap();
        SpreadSource::from(&rc)
    }

    /// A pod labelled `app=web, tier=front`, controlled by `owner` (apiVersion, kind, name).
    fn web_pod(owner: Option<(&str, &str, &str)>) -> Pod {
        let mut pod = labeled_pod("p", json!({"app": "web", "tier": "front"}), json!({"containers": []}));
        let mut refs =
            vec![json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "not-controller", "uid": "0"})];
        if let Some((api_version, kind, name)) = owner {
            refs.push(json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": "1", "controller": true}));
        }
        pod.metadata.owner_references = Some(serde_json::from_value(Value::Array(refs)).unwrap());
        pod
    }

    /// The selector kube would build: these labels as equalities, plus these requirements.
    fn expected(labels: Value, extra: Value) -> LabelSelector {
        let mut s = LabelSelector::from_labels(&serde_json::from_value(labels).unwrap());
        let extra: ApiLabelSelector = serde_json::from_value(extra).unwrap();
        s.and(&LabelSelector::compile(Some(&extra)).unwrap());
        s
    }

    #[test]
    fn default_selector_table() {
        let rs = Some(("apps/v1", "ReplicaSet", "rs"));
        let in_web = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]});
        // (name, sources, pod, expected)
        let table: Vec<(&str, Vec<SpreadSource>, Pod, Option<LabelSelector>)> = vec![
            ("nothing selects the pod", vec![], web_pod(None), None),
            (
                "a Service selecting the pod",
                vec![service("s", json!({"app": "web"}))],
                web_pod(None),
                Some(expected(json!({"app": "web"}), json!({}))),
            ),
            ("a Service selecting other pods", vec![service("s", json!({"app": "db"}))], web_pod(None), None),
            ("a Service without a selector", vec![service("s", Value::Null)], web_pod(None), None),
            (
                "Services are merged",
                vec![service("a", json!({"app": "web"})), service("b", json!({"tier": "front"}))],
                web_pod(None),
                Some(expected(json!({"app": "web", "tier": "front"}), json!({}))),
            ),
            (
                // Found by name; kube does not check that its selector selects the pod.
                "the controlling ReplicaSet's requirements",
                vec![replica_set("rs", in_web.clone()), replica_set("other", json!({"matchLabels": {"x": "y"}}))],
                web_pod(rs),
                Some(expected(json!({}), in_web.clone())),
            ),
            (
                "Service and ReplicaSet together",
                vec![service("s", json!({"tier": "front"})), replica_set("rs", in_web.clone())],
                web_pod(rs),
                Some(expected(json!({"tier": "front"}), in_web.clone())),
            ),
            ("a ReplicaSet selecting everything adds nothing", vec![replica_set("rs", json!({}))], web_pod(rs), None),
            (
                "owners that are not controllers are not followed",
                vec![replica_set("not-controller", in_web.clone())],
                web_pod(None),
                None,
            ),
            (
                "an unknown controller",
                vec![service("s", json!({"app": "web"}))],
                web_pod(rs),
                Some(expected(json!({"app": "web"}), json!({}))),
            ),
            (
                "another group version is another kind",
                vec![replica_set("rs", in_web.clone())],
                web_pod(Some(("extensions/v1beta1", "ReplicaSet", "rs"))),
                None,
            ),
            (
                "a ReplicationController's selector is merged",
                vec![replication_controller("rc", json!({"app": "web"}))],
                web_pod(Some(("v1", "ReplicationController", "rc"))),
                Some(expected(json!({"app": "web"}), json!({}))),
            ),
            (
                "a StatefulSet",
                vec![stateful_set("ss", in_web.clone())],
                web_pod(Some(("apps/v1", "StatefulSet", "ss"))),
                Some(expected(json!({}), in_web.clone())),
            ),
            (
                "a StatefulSet is not a ReplicaSet of the same name",
                vec![stateful_set("rs", in_web.clone())],
                web_pod(rs),
                None,
            ),
        ];
        for (name, sources, pod, expected) in table {
            let mut all = SpreadSources::default();
            for s in sources {
                all.upsert(s);
            }
            assert_eq!(all.default_selector(&pod), expected, "{name}");
        }
    }

    #[test]
    fn sources_are_replaced_and_removed() {
        let mut all = SpreadSources::default();
        let pod = web_pod(Some(("apps/v1", "ReplicaSet", "rs")));
        all.upsert(service("s", json!({"app": "web"})));
        all.upsert(replica_set("rs", json!({"matchLabels": {"tier": "front"}})));
        assert!(all.default_selector(&pod).is_some());
        // The Service loses its selector; the ReplicaSet goes.
        all.upsert(service("s", Value::Null));
        assert_eq!(all.default_selector(&pod), Some(expected(json!({}), json!({"matchLabels": {"tier": "front"}}))));
        all.remove(&replica_set("rs", json!({})));
        assert_eq!(all.default_selector(&pod), None);
        assert!(all.namespaces.is_empty(), "empty namespaces are dropped");
        all.upsert(service("headless", Value::Null));
        assert!(all.namespaces.is_empty(), "Services without a selector are not kept");
    }
}
