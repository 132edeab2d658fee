//! Label selectors and node selectors, compiled once per scheduling cycle and matched
//! against many pods and nodes.
//!
//! kube-core has a `Selector`, but it is only reachable here through the `kube` crate with
//! its client and runtime features, which a pure library should not pull in; it also has no
//! node-selector operators (`Gt`, `Lt`, `matchFields`). The semantics follow
//! `metav1.LabelSelectorAsSelector` and `component-helpers/scheduling/corev1/nodeaffinity`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PreferredSchedulingTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as ApiLabelSelector;

pub type Labels = BTreeMap<String, String>;

/// Objects without labels match against this.
pub(crate) static NO_LABELS: Labels = BTreeMap::new();

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not a valid label selector operator")]
    Operator(String),
    #[error("values must be non-empty for operator {op} on key {key:?}")]
    NoValues { key: String, op: &'static str },
    #[error("values must be empty for operator {op} on key {key:?}")]
    UnexpectedValues { key: String, op: &'static str },
    #[error("operator {op} on key {key:?} needs exactly one integer value")]
    NotAnInteger { key: String, op: &'static str },
    #[error("{0:?} is not a supported field selector key (only metadata.name is)")]
    Field(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn labels_of_pod(pod: &Pod) -> &Labels {
    pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
}

pub(crate) fn labels_of_node(node: &Node) -> &Labels {
    node.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self.op {
            Op::In => labels.get(&self.key).is_some_and(|v| self.values.contains(v)),
            Op::NotIn => labels.get(&self.key).is_none_or(|v| !self.values.contains(v)),
            Op::Exists => labels.contains_key(&self.key),
            Op::DoesNotExist => !labels.contains_key(&self.key),
        }
    }
}

/// A compiled `LabelSelector`. A missing selector selects nothing; an empty one everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LabelSelector {
    Nothing,
    All(Vec<Requirement>),
}

impl LabelSelector {
    pub(crate) fn everything() -> Self {
        LabelSelector::All(Vec::new())
    }

    pub(crate) fn compile(selector: Option<&ApiLabelSelector>) -> Result<Self> {
        let Some(selector) = selector else { return Ok(LabelSelector::Nothing) };
        let mut reqs = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            reqs.push(Requirement { key: key.clone(), op: Op::In, values: vec![value.clone()] });
        }
        for expr in selector.match_expressions.iter().flatten() {
            let values = expr.values.clone().unwrap_or_default();
            let op = match expr.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => return Err(Error::Operator(other.to_owned())),
            };
            let op_name = || match op {
                Op::In => "In",
                Op::NotIn => "NotIn",
                Op::Exists => "Exists",
                Op::DoesNotExist => "DoesNotExist",
            };
            match op {
                Op::In | Op::NotIn if values.is_empty() => {
                    return Err(Error::NoValues { key: expr.key.clone(), op: op_name() });
                }
                Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                    return Err(Error::UnexpectedValues { key: expr.key.clone(), op: op_name() });
                }
                _ => {}
            }
            reqs.push(Requirement { key: expr.key.clone(), op, values });
        }
        Ok(LabelSelector::All(reqs))
    }

    /// `labels.Set.AsSelector()`: every key equal to its value. An empty set selects
    /// everything.
    pub(crate) fn from_labels(labels: &Labels) -> Self {
        LabelSelector::All(
            labels.iter().map(|(k, v)| Requirement { key: k.clone(), op: Op::In, values: vec![v.clone()] }).collect(),
        )
    }

    /// `Selector.Add(other.Requirements()...)`: also requires what `other` does. A selector
    /// of nothing has no requirements to add, as in kube.
    pub(crate) fn and(&mut self, other: &LabelSelector) {
        if let (LabelSelector::All(reqs), LabelSelector::All(more)) = (self, other) {
            reqs.extend(more.iter().cloned());
        }
    }

    /// Adds `key in (value)`; used to merge `matchLabelKeys` into a selector.
    pub(crate) fn require_equal(&mut self, key: &str, value: &str) {
        if let LabelSelector::All(reqs) = self {
            reqs.push(Requirement { key: key.to_owned(), op: Op::In, values: vec![value.to_owned()] });
        }
    }

    /// Adds `key notin (value)`; used to merge `mismatchLabelKeys`.
    pub(crate) fn require_not_equal(&mut self, key: &str, value: &str) {
        if let LabelSelector::All(reqs) = self {
            reqs.push(Requirement { key: key.to_owned(), op: Op::NotIn, values: vec![value.to_owned()] });
        }
    }

    pub(crate) fn is_everything(&self) -> bool {
        matches!(self, LabelSelector::All(reqs) if reqs.is_empty())
    }

    pub(crate) fn matches(&self, labels: &Labels) -> bool {
        match self {
            LabelSelector::Nothing => false,
            LabelSelector::All(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeOp {
    Label(Op),
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeRequirement {
    key: String,
    op: NodeOp,
    values: Vec<String>,
}

impl NodeRequirement {
    fn compile(req: &NodeSelectorRequirement) -> Result<Self> {
        let values = req.values.clone().unwrap_or_default();
        let key = req.key.clone();
        let integer = |op: &'static str| -> Result<i64> {
            match values.as_slice() {
                [v] => v.parse().map_err(|_| Error::NotAnInteger { key: key.clone(), op }),
                _ => Err(Error::NotAnInteger { key: key.clone(), op }),
            }
        };
        let op = match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                let op = if req.operator == "In" { "In" } else { "NotIn" };
                return Err(Error::NoValues { key, op });
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                let op = if req.operator == "Exists" { "Exists" } else { "DoesNotExist" };
                return Err(Error::UnexpectedValues { key, op });
            }
            "In" => NodeOp::Label(Op::In),
            "NotIn" => NodeOp::Label(Op::NotIn),
            "Exists" => NodeOp::Label(Op::Exists),
            "DoesNotExist" => NodeOp::Label(Op::DoesNotExist),
            "Gt" => NodeOp::Gt(integer("Gt")?),
            "Lt" => NodeOp::Lt(integer("Lt")?),
            other => return Err(Error::Operator(other.to_owned())),
        };
        Ok(NodeRequirement { key, op, values })
    }

    fn matches(&self, labels: &Labels) -> bool {
        let label_int = || labels.get(&self.key).and_then(|v| v.parse::<i64>().ok());
        match &self.op {
            NodeOp::Label(Op::In) => labels.get(&self.key).is_some_and(|v| self.values.contains(v)),
            NodeOp::Label(Op::NotIn) => labels.get(&self.key).is_none_or(|v| !self.values.contains(v)),
            NodeOp::Label(Op::Exists) => labels.contains_key(&self.key),
            NodeOp::Label(Op::DoesNotExist) => !labels.contains_key(&self.key),
            NodeOp::Gt(bound) => label_int().is_some_and(|v| v > *bound),
            NodeOp::Lt(bound) => label_int().is_some_and(|v| v < *bound),
        }
    }
}

/// `matchFields` on `metadata.name`, the only field Kubernetes supports there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NameRequirement {
    name: String,
    equal: bool,
}

/// One compiled `NodeSelectorTerm`: its expressions and fields are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeTerm {
    exprs: Vec<NodeRequirement>,
    fields: Vec<NameRequirement>,
}

impl NodeTerm {
    /// `Ok(None)` for an empty term, which selects no node.
    pub(crate) fn compile(term: &NodeSelectorTerm) -> Result<Option<Self>> {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return Ok(None);
        }
        let exprs = exprs.iter().map(NodeRequirement::compile).collect::<Result<Vec<_>>>()?;
        let fields = fields
            .iter()
            .map(|f| {
                if f.key != "metadata.name" {
                    return Err(Error::Field(f.key.clone()));
                }
                let values = f.values.as_deref().unwrap_or_default();
                match (f.operator.as_str(), values) {
                    ("In", [v]) => Ok(NameRequirement { name: v.clone(), equal: true }),
                    ("NotIn", [v]) => Ok(NameRequirement { name: v.clone(), equal: false }),
                    ("In" | "NotIn", _) => Err(Error::NoValues { key: f.key.clone(), op: "In/NotIn (exactly one)" }),
                    (other, _) => Err(Error::Operator(other.to_owned())),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(NodeTerm { exprs, fields }))
    }

    pub(crate) fn matches(&self, node_name: &str, labels: &Labels) -> bool {
        self.exprs.iter().all(|e| e.matches(labels)) && self.fields.iter().all(|f| (f.name == node_name) == f.equal)
    }

    /// Node names this term is pinned to by `metadata.name In`, if any.
    fn pinned_names(&self) -> Option<Vec<&str>> {
        let mut names: Option<Vec<&str>> = None;
        for f in self.fields.iter().filter(|f| f.equal) {
            names = Some(match names {
                None => vec![f.name.as_str()],
                Some(prev) => prev.into_iter().filter(|n| *n == f.name).collect(),
            });
        }
        names
    }
}

/// `spec.nodeSelector` plus the required node affinity terms, as `GetRequiredNodeAffinity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequiredNodeAffinity {
    node_selector: Vec<(String, String)>,
    /// `None`: no required node affinity. `Some(terms)`: ORed; terms that were empty or
    /// did not parse are dropped (Kubernetes ignores them), so `Some([])` matches nothing.
    terms: Option<Vec<NodeTerm>>,
}

impl RequiredNodeAffinity {
    pub(crate) fn of_pod(pod: &Pod) -> Self {
        let Some(spec) = &pod.spec else { return Self::default() };
        let node_selector =
            spec.node_selector.iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref())
            .map(|selector| {
                selector.node_selector_terms.iter().filter_map(|t| NodeTerm::compile(t).ok().flatten()).collect()
            });
        RequiredNodeAffinity { node_selector, terms }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.node_selector.is_empty() && self.terms.is_none()
    }

    pub(crate) fn matches(&self, node: &Node) -> bool {
        let labels = labels_of_node(node);
        if !self.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
        match &self.terms {
            None => true,
            Some(terms) => {
                let name = node.metadata.name.as_deref().unwrap_or_default();
                terms.iter().any(|t| t.matches(name, labels))
            }
        }
    }

    /// The node names the pod is restricted to when every term pins `metadata.name`
    /// (NodeAffinity's PreFilterResult). `Some(empty)` means the terms conflict.
    pub(crate) fn pinned_node_names(&self) -> Option<Vec<String>> {
        let terms = self.terms.as_ref()?;
        let mut all: Vec<String> = Vec::new();
        for term in terms {
            let names = term.pinned_names()?;
            for n in names {
                if !all.iter().any(|a| a == n) {
                    all.push(n.to_owned());
                }
            }
        }
        if terms.is_empty() { None } else { Some(all) }
    }
}

/// Preferred node affinity terms with their weights (zero weights and empty or invalid
/// terms dropped, as `NewPreferredSchedulingTerms` skips them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PreferredNodeAffinity(Vec<(i64, NodeTerm)>);

impl PreferredNodeAffinity {
    pub(crate) fn of_pod(pod: &Pod) -> Self {
        let terms: &[PreferredSchedulingTerm] = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default();
        PreferredNodeAffinity(
            terms
                .iter()
                .filter(|t| t.weight != 0)
                .filter_map(|t| Some((i64::from(t.weight), NodeTerm::compile(&t.preference).ok().flatten()?)))
                .collect(),
        )
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sum of the weights of the terms the node matches.
    pub(crate) fn score(&self, node: &Node) -> i64 {
        let labels = labels_of_node(node);
        let name = node.metadata.name.as_deref().unwrap_or_default();
        self.0.iter().filter(|(_, t)| t.matches(name, labels)).map(|(w, _)| w).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selector_table() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let none = Labels::new();
        // (selector json or null, labels, expected)
        let table = [
            (json!(null), &web, false),
            (json!({}), &web, true),
            (json!({}), &none, true),
            (json!({"matchLabels": {"app": "web"}}), &web, true),
            (json!({"matchLabels": {"app": "db"}}), &web, false),
            (json!({"matchLabels": {"app": "web", "tier": "back"}}), &web, false),
            (json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}), &web, true),
            (json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}), &web, false),
            (json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}), &none, true),
            (json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}), &web, true),
            (json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}), &none, false),
            (json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}), &web, false),
            (json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}), &none, true),
        ];
        for (i, (sel, labels, expected)) in table.into_iter().enumerate() {
            let api: Option<ApiLabelSelector> = serde_json::from_value(sel).unwrap();
            let compiled = LabelSelector::compile(api.as_ref()).unwrap();
            assert_eq!(compiled.matches(labels), expected, "case {i}");
        }
    }

    #[test]
    fn label_selector_rejects_invalid() {
        let table = [
            json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
        ];
        for sel in table {
            let api: ApiLabelSelector = serde_json::from_value(sel.clone()).unwrap();
            assert!(LabelSelector::compile(Some(&api)).is_err(), "{sel}");
        }
    }

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn pod_with_affinity(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn node_selector_terms_table() {
        let n = node("n1", json!({"zone": "a", "gen": "5", "disk": "ssd"}));
        let term = |exprs: serde_json::Value| {
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": exprs}]}}}})
        };
        let table = [
            (json!({"containers": []}), true),
            (json!({"containers": [], "nodeSelector": {"zone": "a"}}), true),
            (json!({"containers": [], "nodeSelector": {"zone": "b"}}), false),
            (term(json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])), true),
            (term(json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])), false),
            (term(json!([{"key": "gpu", "operator": "NotIn", "values": ["x"]}])), true),
            (term(json!([{"key": "disk", "operator": "Exists"}])), true),
            (term(json!([{"key": "disk", "operator": "DoesNotExist"}])), false),
            (term(json!([{"key": "gen", "operator": "Gt", "values": ["4"]}])), true),
            (term(json!([{"key": "gen", "operator": "Gt", "values": ["5"]}])), false),
            (term(json!([{"key": "gen", "operator": "Lt", "values": ["6"]}])), true),
            (term(json!([{"key": "zone", "operator": "Lt", "values": ["6"]}])), false),
            // An invalid Gt value makes the term invalid, and so the only term matches nothing.
            (term(json!([{"key": "gen", "operator": "Gt", "values": ["x"]}])), false),
            (
                term(
                    json!([{"key": "zone", "operator": "In", "values": ["a"]}, {"key": "gen", "operator": "Lt", "values": ["5"]}]),
                ),
                false,
            ),
            // Terms are ORed; an empty term matches nothing.
            (
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{}, {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}),
                true,
            ),
            (
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{}]}}}}),
                false,
            ),
            (
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}),
                true,
            ),
            (
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]}}}}),
                false,
            ),
            // nodeSelector and affinity are ANDed.
            (
                json!({"containers": [], "nodeSelector": {"zone": "b"}, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]}}}}),
                false,
            ),
        ];
        for (i, (spec, expected)) in table.into_iter().enumerate() {
            let req = RequiredNodeAffinity::of_pod(&pod_with_affinity(spec));
            assert_eq!(req.matches(&n), expected, "case {i}");
        }
    }

    #[test]
    fn pinned_node_names() {
        let pinned = |terms: serde_json::Value| {
            RequiredNodeAffinity::of_pod(&pod_with_affinity(json!({"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}})))
            .pinned_node_names()
        };
        let name_in = |n: &str| json!({"key": "metadata.name", "operator": "In", "values": [n]});
        assert_eq!(
            pinned(json!([{"matchFields": [name_in("a")]}, {"matchFields": [name_in("b")]}])),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(pinned(json!([{"matchFields": [name_in("a"), name_in("b")]}])), Some(vec![]));
        assert_eq!(
            pinned(
                json!([{"matchFields": [name_in("a")]}, {"matchExpressions": [{"key": "z", "operator": "Exists"}]}])
            ),
            None
        );
        assert_eq!(
            RequiredNodeAffinity::of_pod(&pod_with_affinity(json!({"containers": []}))).pinned_node_names(),
            None
        );
    }
}
