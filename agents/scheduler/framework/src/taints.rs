//! Taints and tolerations (`v1.Toleration.ToleratesTaint`, `FindMatchingUntoleratedTaint`).

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};

pub const NO_SCHEDULE: &str = "NoSchedule";
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
pub const NO_EXECUTE: &str = "NoExecute";

/// Taint the node lifecycle controller puts on cordoned nodes; tolerating it also
/// tolerates `spec.unschedulable`.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Taint the node lifecycle controller puts on nodes whose Ready condition is not True.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

pub(crate) fn tolerations_of(pod: &Pod) -> &[Toleration] {
    pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default()
}

pub(crate) fn taints_of(node: &Node) -> &[Taint] {
    node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default()
}

/// `Toleration.ToleratesTaint`: an empty effect matches every effect, an empty key every
/// key (the API only allows that with `Exists`), `Exists` ignores the value and an empty
/// operator means `Equal`.
pub(crate) fn tolerates(t: &Toleration, key: &str, value: &str, effect: &str) -> bool {
    let t_effect = t.effect.as_deref().unwrap_or_default();
    if !t_effect.is_empty() && t_effect != effect {
        return false;
    }
    let t_key = t.key.as_deref().unwrap_or_default();
    if !t_key.is_empty() && t_key != key {
        return false;
    }
    match t.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => t.value.as_deref().unwrap_or_default() == value,
        "Exists" => true,
        _ => false,
    }
}

pub(crate) fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    let value = taint.value.as_deref().unwrap_or_default();
    tolerations.iter().any(|t| tolerates(t, &taint.key, value, &taint.effect))
}

/// The first `NoSchedule` or `NoExecute` taint no toleration tolerates.
pub(crate) fn first_untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == NO_SCHEDULE || t.effect == NO_EXECUTE)
        .find(|taint| !tolerated(tolerations, taint))
}

/// How many `PreferNoSchedule` taints the pod does not tolerate, counting only its
/// tolerations whose effect is empty or `PreferNoSchedule` (as the TaintToleration score).
pub(crate) fn intolerable_prefer_no_schedule(taints: &[Taint], tolerations: &[Toleration]) -> i64 {
    let mut count = 0;
    for taint in taints.iter().filter(|t| t.effect == PREFER_NO_SCHEDULE) {
        let value = taint.value.as_deref().unwrap_or_default();
        let ok = tolerations
            .iter()
            .filter(|t| matches!(t.effect.as_deref(), None | Some("") | Some(PREFER_NO_SCHEDULE)))
            .any(|t| tolerates(t, &taint.key, value, &taint.effect));
        if !ok {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toleration(v: serde_json::Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    fn taint(v: serde_json::Value) -> Taint {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn toleration_table() {
        let t = taint(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}));
        let table = [
            (json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}), true),
            (json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}), true),
            (json!({"key": "dedicated", "value": "gpu"}), true),
            (json!({"key": "dedicated", "value": "cpu"}), false),
            (json!({"key": "dedicated", "operator": "Exists"}), true),
            (json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}), false),
            (json!({"key": "other", "operator": "Exists"}), false),
            (json!({"operator": "Exists"}), true),
            (json!({"operator": "Exists", "effect": "PreferNoSchedule"}), false),
            (json!({"key": "dedicated", "operator": "Gt", "value": "gpu"}), false),
        ];
        for (i, (tol, expected)) in table.into_iter().enumerate() {
            assert_eq!(tolerated(&[toleration(tol)], &t), expected, "case {i}");
        }
    }

    #[test]
    fn first_untolerated_skips_prefer_no_schedule() {
        let taints = vec![
            taint(json!({"key": "soft", "effect": "PreferNoSchedule"})),
            taint(json!({"key": "a", "value": "1", "effect": "NoSchedule"})),
            taint(json!({"key": "b", "effect": "NoExecute"})),
        ];
        let none: Vec<Toleration> = vec![];
        assert_eq!(first_untolerated(&taints, &none).map(|t| t.key.as_str()), Some("a"));
        let tol_a = vec![toleration(json!({"key": "a", "operator": "Exists"}))];
        assert_eq!(first_untolerated(&taints, &tol_a).map(|t| t.key.as_str()), Some("b"));
        let all = vec![toleration(json!({"operator": "Exists"}))];
        assert_eq!(first_untolerated(&taints, &all), None);
    }

    #[test]
    fn prefer_no_schedule_count() {
        let taints = vec![
            taint(json!({"key": "x", "effect": "PreferNoSchedule"})),
            taint(json!({"key": "y", "value": "1", "effect": "PreferNoSchedule"})),
            taint(json!({"key": "z", "effect": "NoSchedule"})),
        ];
        let table = [
            (json!([]), 2),
            (json!([{"key": "x", "operator": "Exists"}]), 1),
            (json!([{"key": "x", "operator": "Exists", "effect": "PreferNoSchedule"}, {"key": "y", "value": "1"}]), 0),
            // A NoSchedule toleration does not count for the score.
            (json!([{"key": "x", "operator": "Exists", "effect": "NoSchedule"}]), 2),
        ];
        for (i, (tols, expected)) in table.into_iter().enumerate() {
            let tols: Vec<Toleration> = serde_json::from_value(tols).unwrap();
            assert_eq!(intolerable_prefer_no_schedule(&taints, &tols), expected, "case {i}");
        }
    }
}
