//! PodDisruptionBudgets as preemption reads them (kube's `filterPodsWithPDBViolation`):
//! which of a node's victims would take a budget below zero.
//!
//! kube-scheduler lists every budget once per preemption attempt and hands the list to
//! each node's dry run; [`DisruptionBudgets::new`] is that list with the selectors
//! compiled, so that the dry runs only match labels.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::nodeinfo::PodInfo;
use super::selector::{LabelSelector, labels_of_pod};
use super::snapshot::namespace_of;

#[derive(Debug, Clone)]
struct Budget {
    /// `LabelSelector::Nothing` for a missing, empty or invalid selector: kube lets such a
    /// budget match no pod (an empty selector would otherwise match every pod of the
    /// namespace).
    selector: LabelSelector,
    allowed: i32,
    /// `status.disruptedPods`: pods the API has already counted against the budget.
    disrupted: BTreeSet<String>,
}

/// The cluster's PodDisruptionBudgets, by namespace.
#[derive(Debug, Clone, Default)]
pub struct DisruptionBudgets {
    budgets: Vec<Budget>,
    by_namespace: HashMap<String, Vec<usize>>,
}

impl DisruptionBudgets {
    pub fn new(pdbs: &[Arc<PodDisruptionBudget>]) -> Self {
        let mut out = DisruptionBudgets::default();
        for pdb in pdbs {
            let selector = match LabelSelector::compile(pdb.spec.as_ref().and_then(|s| s.selector.as_ref())) {
                Ok(s) if !s.is_everything() => s,
                _ => LabelSelector::Nothing,
            };
            let status = pdb.status.as_ref();
            let budget = Budget {
                selector,
                allowed: status.map_or(0, |s| s.disruptions_allowed),
                disrupted: status
                    .and_then(|s| s.disrupted_pods.as_ref())
                    .into_iter()
                    .flat_map(|m| m.keys().cloned())
                    .collect(),
            };
            let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
            out.by_namespace.entry(namespace).or_default().push(out.budgets.len());
            out.budgets.push(budget);
        }
        out
    }

    /// `filterPodsWithPDBViolation`: splits `pods` into those whose eviction would take a
    /// matching budget below zero and the others, keeping their order. Each pod matching a
    /// budget uses one of its allowed disruptions, in the order given, so with the victims
    /// sorted most important first it is the less important ones that violate.
    pub(crate) fn split_violating(&self, pods: Vec<PodInfo>) -> (Vec<PodInfo>, Vec<PodInfo>) {
        if self.budgets.is_empty() {
            return (Vec::new(), pods);
        }
        let mut allowed: Vec<i32> = self.budgets.iter().map(|b| b.allowed).collect();
        let (mut violating, mut fine) = (Vec::new(), Vec::new());
        for info in pods {
            let labels = labels_of_pod(&info.pod);
            let mut violates = false;
            // kube skips unlabelled pods outright, before any selector could match them
            // (a `DoesNotExist` one would).
            let budgets = if labels.is_empty() { None } else { self.by_namespace.get(namespace_of(&info.pod)) };
            for &i in budgets.into_iter().flatten() {
                let budget = &self.budgets[i];
                let name = info.pod.metadata.name.as_deref().unwrap_or_default();
                if !budget.selector.matches(labels) || budget.disrupted.contains(name) {
                    continue;
                }
                allowed[i] -= 1;
                violates |= allowed[i] < 0;
            }
            if violates { violating.push(info) } else { fine.push(info) }
        }
        (violating, fine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{PodExt, labeled_pod, pdb, pod};
    use serde_json::{Value, json};

    fn web(name: &str) -> PodInfo {
        PodInfo::new(Arc::new(labeled_pod(name, json!({"app": "web"}), json!({"containers": []}))))
    }

    fn names(pods: &[PodInfo]) -> Vec<&str> {
        pods.iter().map(|p| p.pod.metadata.name.as_deref().unwrap()).collect()
    }

    #[test]
    fn split_violating_table() {
        let app_web = json!({"matchLabels": {"app": "web"}});
        let db = PodInfo::new(Arc::new(labeled_pod("db", json!({"app": "db"}), json!({"containers": []}))));
        let bare = PodInfo::new(Arc::new(pod("bare", json!({"containers": []}))));
        let elsewhere = PodInfo::new(Arc::new(
            labeled_pod("far", json!({"app": "web"}), json!({"containers": []})).in_namespace("other"),
        ));
        // (name, budgets, pods, expected violating, expected not violating)
        type Case = (&'static str, Vec<Arc<PodDisruptionBudget>>, Vec<PodInfo>, Vec<&'static str>, Vec<&'static str>);
        let table: Vec<Case> = vec![
            ("no budgets", vec![], vec![web("a"), web("b")], vec![], vec!["a", "b"]),
            // One disruption allowed: the first pod uses it, the second goes below zero.
            (
                "budget used up in order",
                vec![pdb("default", app_web.clone(), 1, &[])],
                vec![web("a"), web("b"), web("c")],
                vec!["b", "c"],
                vec!["a"],
            ),
            ("nothing allowed", vec![pdb("default", app_web.clone(), 0, &[])], vec![web("a")], vec!["a"], vec![]),
            (
                "pods the API already counted do not use the budget",
                vec![pdb("default", app_web.clone(), 0, &["a"])],
                vec![web("a"), web("b")],
                vec!["b"],
                vec!["a"],
            ),
            (
                "other labels, other namespaces and unlabelled pods do not match",
                vec![
                    pdb("default", app_web.clone(), 0, &[]),
                    pdb(
                        "default",
                        json!({"matchExpressions": [
                    {"key": "app", "operator": "DoesNotExist"}]}),
                        0,
                        &[],
                    ),
                ],
                vec![db.clone(), elsewhere.clone(), bare.clone()],
                vec![],
                vec!["db", "far", "bare"],
            ),
            (
                "empty, missing and invalid selectors match nothing",
                vec![
                    pdb("default", json!({}), 0, &[]),
                    pdb("default", Value::Null, 0, &[]),
                    pdb("default", json!({"matchExpressions": [{"key": "app", "operator": "Bogus"}]}), 0, &[]),
                ],
                vec![web("a")],
                vec![],
                vec!["a"],
            ),
            (
                "one exhausted budget of several is enough to violate",
                vec![
                    pdb("default", app_web.clone(), 5, &[]),
                    pdb("default", json!({"matchLabels": {"tier": "x"}}), 0, &[]),
                ],
                vec![PodInfo::new(Arc::new(labeled_pod(
                    "t",
                    json!({"app": "web", "tier": "x"}),
                    json!({"containers": []}),
                )))],
                vec!["t"],
                vec![],
            ),
        ];
        for (name, pdbs, pods, violating, fine) in table {
            let budgets = DisruptionBudgets::new(&pdbs);
            let (v, f) = budgets.split_violating(pods);
            assert_eq!((names(&v), names(&f)), (violating, fine), "{name}");
        }
    }
}
