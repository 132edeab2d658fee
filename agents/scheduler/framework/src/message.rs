//! kube-scheduler's FailedScheduling text (`FitError.Error()`):
//!
//! `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {key: value}.
//! preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.`

use std::collections::HashMap;

use super::status::{Failure, Reason};

/// `0/N nodes are available: <count> <reason>, ....` Kube sorts the formatted
/// `"<count> <reason>"` strings, so the order is by the count's digits first; equal
/// reasons given twice are merged.
pub fn failure_message(total_nodes: usize, reasons: &[(String, usize)]) -> String {
    let mut merged: HashMap<&str, usize> = HashMap::new();
    for (reason, count) in reasons {
        *merged.entry(reason.as_str()).or_default() += count;
    }
    let mut parts: Vec<String> = merged.into_iter().map(|(reason, count)| format!("{count} {reason}")).collect();
    parts.sort();
    let mut msg = format!("0/{total_nodes} nodes are available:");
    if !parts.is_empty() {
        msg.push(' ');
        msg.push_str(&parts.join(", "));
        msg.push('.');
    }
    msg
}

/// The preemption part: `preemption: 0/N nodes are available: ....`
pub fn preemption_message(total_nodes: usize, reasons: &[(String, usize)]) -> String {
    format!("preemption: {}", failure_message(total_nodes, reasons))
}

/// Collects why each node failed during one cycle, and why preemption did not help, and
/// renders kube's message.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    total_nodes: usize,
    prefilter: Option<String>,
    reasons: HashMap<Reason, usize>,
    preemption: HashMap<Reason, usize>,
    preemption_note: Option<String>,
}

impl Diagnosis {
    pub fn new(total_nodes: usize) -> Self {
        Diagnosis { total_nodes, ..Self::default() }
    }

    /// PreFilter rejected the pod for every node: kube prints its message once, without a
    /// count, and (when it is unresolvable) every node is one preemption cannot help.
    pub fn record_prefilter(&mut self, failure: &Failure) {
        self.prefilter = Some(failure.message());
        if !failure.resolvable {
            *self.preemption.entry(Reason::PreemptionNotHelpful).or_default() += self.total_nodes;
        }
    }

    /// A node failed the filters. Nodes failing for a reason preemption cannot change are
    /// also counted as "Preemption is not helpful" for the preemption part.
    pub fn record(&mut self, failure: &Failure) {
        for reason in failure.reasons() {
            *self.reasons.entry(reason.clone()).or_default() += 1;
        }
        if !failure.resolvable {
            *self.preemption.entry(Reason::PreemptionNotHelpful).or_default() += 1;
        }
    }

    /// `select_victims` failed on a node whose filter failure was resolvable.
    pub fn record_preemption(&mut self, failure: &Failure) {
        for reason in failure.reasons() {
            *self.preemption.entry(reason.clone()).or_default() += 1;
        }
    }

    /// The pod may not preempt (see `preemption::eligible_to_preempt`).
    pub fn preemption_not_eligible(&mut self, message: &str) {
        self.preemption_note = Some(message.to_owned());
    }

    /// The message without a preemption part (preemption not attempted).
    pub fn message(&self) -> String {
        match &self.prefilter {
            Some(msg) => format!("0/{} nodes are available: {msg}.", self.total_nodes),
            None => failure_message(self.total_nodes, &as_pairs(&self.reasons)),
        }
    }

    /// The message after preemption found no candidate.
    pub fn message_after_preemption(&self) -> String {
        let preemption = match &self.preemption_note {
            Some(note) => format!("preemption: {note}"),
            None => preemption_message(self.total_nodes, &as_pairs(&self.preemption)),
        };
        format!("{} {preemption}", self.message())
    }

    /// Whether preemption could help on any node (some failure was resolvable).
    pub fn preemption_may_help(&self) -> bool {
        self.prefilter.is_none()
            && self.preemption.get(&Reason::PreemptionNotHelpful).copied().unwrap_or(0) < self.total_nodes
    }
}

fn as_pairs(counts: &HashMap<Reason, usize>) -> Vec<(String, usize)> {
    counts.iter().map(|(r, &n)| (r.to_string(), n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn pairs(v: &[(&str, usize)]) -> Vec<(String, usize)> {
        v.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    }

    #[test]
    fn failure_message_table() {
        let table = [
            (3, pairs(&[]), "0/3 nodes are available:"),
            (1, pairs(&[("Insufficient cpu", 1)]), "0/1 nodes are available: 1 Insufficient cpu."),
            (
                3,
                pairs(&[("node(s) had untolerated taint {key: value}", 2), ("Insufficient cpu", 1)]),
                "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {key: value}.",
            ),
            (
                5,
                pairs(&[("Insufficient memory", 2), ("Insufficient cpu", 2), ("Too many pods", 1)]),
                "0/5 nodes are available: 1 Too many pods, 2 Insufficient cpu, 2 Insufficient memory.",
            ),
            // Sorted as strings, as kube does: "10 ..." before "2 ...".
            (
                12,
                pairs(&[("node(s) were unschedulable", 2), ("Insufficient cpu", 10)]),
                "0/12 nodes are available: 10 Insufficient cpu, 2 node(s) were unschedulable.",
            ),
            (
                2,
                pairs(&[("Insufficient cpu", 1), ("Insufficient cpu", 1)]),
                "0/2 nodes are available: 2 Insufficient cpu.",
            ),
        ];
        for (total, reasons, expected) in table {
            assert_eq!(failure_message(total, &reasons), expected);
        }
    }

    #[test]
    fn diagnosis_with_preemption() {
        let mut d = Diagnosis::new(3);
        d.record(&Failure::resolvable("NodeResourcesFit", Reason::Insufficient(Cow::Borrowed("cpu"))));
        let taint = Reason::UntoleratedTaint { key: "key".into(), value: "value".into() };
        d.record(&Failure::unresolvable("TaintToleration", taint.clone()));
        d.record(&Failure::unresolvable("TaintToleration", taint));
        assert!(d.preemption_may_help());
        assert_eq!(
            d.message(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {key: value}."
        );
        d.record_preemption(&Failure::unresolvable("DefaultPreemption", Reason::NoPreemptionVictims));
        assert_eq!(
            d.message_after_preemption(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {key: value}. \
             preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
             2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn diagnosis_nothing_helps() {
        let mut d = Diagnosis::new(3);
        for _ in 0..3 {
            d.record(&Failure::unresolvable(
                "TaintToleration",
                Reason::UntoleratedTaint { key: "key".into(), value: "value".into() },
            ));
        }
        assert!(!d.preemption_may_help());
        assert_eq!(
            d.message_after_preemption(),
            "0/3 nodes are available: 3 node(s) had untolerated taint {key: value}. \
             preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn diagnosis_multiple_reasons_per_node_and_not_eligible() {
        let mut d = Diagnosis::new(2);
        let mut f = Failure::resolvable("NodeResourcesFit", Reason::Insufficient(Cow::Borrowed("cpu")));
        f.push(Reason::Insufficient(Cow::Borrowed("memory")));
        d.record(&f);
        d.record(&f);
        d.preemption_not_eligible("not eligible due to preemptionPolicy=Never.");
        assert_eq!(
            d.message_after_preemption(),
            "0/2 nodes are available: 2 Insufficient cpu, 2 Insufficient memory. \
             preemption: not eligible due to preemptionPolicy=Never."
        );
    }

    #[test]
    fn diagnosis_prefilter() {
        let mut d = Diagnosis::new(4);
        d.record_prefilter(&Failure::unresolvable("NodeAffinity", Reason::NodeAffinityConflict));
        assert!(!d.preemption_may_help());
        assert_eq!(
            d.message_after_preemption(),
            "0/4 nodes are available: pod affinity terms conflict. \
             preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling."
        );
    }
}
