//! Why a node does not fit a pod, in kube-scheduler's words.

use std::borrow::Cow;
use std::fmt;

/// One reason a filter rejected a node. `Display` gives kube-scheduler's text, so counts
/// of equal reasons aggregate into its FailedScheduling message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// NodeUnschedulable: `spec.unschedulable` and no toleration for it.
    NodeUnschedulable,
    /// NodeName: `spec.nodeName` names another node.
    NodeNameMismatch,
    /// Ready condition not True on a node without the not-ready taint (see `filters`).
    NodeNotReady,
    /// TaintToleration: the first NoSchedule/NoExecute taint the pod does not tolerate.
    UntoleratedTaint { key: String, value: String },
    /// NodeAffinity: `spec.nodeSelector` or required node affinity.
    NodeAffinityMismatch,
    /// NodeAffinity PreFilter: every term pins `metadata.name` and they exclude each other.
    NodeAffinityConflict,
    /// The node was left out because a PreFilter narrowed the nodes to evaluate.
    NotInPreFilterResult(&'static str),
    /// NodePorts.
    HostPortConflict,
    /// NodeResourcesFit: pod count.
    TooManyPods,
    /// NodeResourcesFit: `Insufficient <resource>`.
    Insufficient(Cow<'static, str>),
    /// InterPodAffinity: the pod's required affinity.
    PodAffinityMismatch,
    /// InterPodAffinity: the pod's required anti-affinity.
    PodAntiAffinityMismatch,
    /// InterPodAffinity: an existing pod's required anti-affinity matches this pod.
    ExistingPodsAntiAffinityMismatch,
    /// PodTopologySpread: maxSkew would be exceeded.
    SpreadConstraintsMismatch,
    /// PodTopologySpread: the node lacks a topology key.
    SpreadMissingLabel,
    /// Preemption: no lower-priority pod on the node.
    NoPreemptionVictims,
    /// Preemption: the node failed for a reason preemption cannot change.
    PreemptionNotHelpful,
    /// VolumeBinding PreFilter: the pod names a claim that does not exist.
    ClaimNotFound(String),
    /// VolumeBinding PreFilter: the pod names a claim that is being deleted.
    ClaimBeingDeleted(String),
    /// VolumeBinding PreFilter: a claim of an Immediate class is not bound yet.
    UnboundImmediateClaims,
    /// VolumeBinding: an unbound WaitForFirstConsumer claim has no volume and cannot be
    /// provisioned on the node.
    VolumeBindConflict,
    /// VolumeBinding: a bound claim's volume does not accept the node.
    VolumeNodeAffinityConflict,
    /// VolumeBinding: a bound claim names a volume that does not exist.
    BoundVolumeMissing,
    /// A pod spec the scheduler cannot evaluate (invalid selector, ...).
    Invalid(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NodeUnschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeNameMismatch => f.write_str("node(s) didn't match the requested node name"),
            Reason::NodeNotReady => f.write_str("node(s) were not ready"),
            Reason::UntoleratedTaint { key, value } => write!(f, "node(s) had untolerated taint {{{key}: {value}}}"),
            Reason::NodeAffinityMismatch => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::NodeAffinityConflict => f.write_str("pod affinity terms conflict"),
            Reason::NotInPreFilterResult(plugin) => write!(f, "node(s) didn't satisfy plugin(s) [{plugin}]"),
            Reason::HostPortConflict => f.write_str("node(s) didn't have free ports for the requested pod ports"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Insufficient(resource) => write!(f, "Insufficient {resource}"),
            Reason::PodAffinityMismatch => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinityMismatch => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingPodsAntiAffinityMismatch => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::SpreadConstraintsMismatch => f.write_str("node(s) didn't match pod topology spread constraints"),
            Reason::SpreadMissingLabel => {
                f.write_str("node(s) didn't match pod topology spread constraints (missing required label)")
            }
            Reason::NoPreemptionVictims => f.write_str("No preemption victims found for incoming pod"),
            Reason::PreemptionNotHelpful => f.write_str("Preemption is not helpful for scheduling"),
            Reason::ClaimNotFound(name) => write!(f, "persistentvolumeclaim \"{name}\" not found"),
            Reason::ClaimBeingDeleted(name) => write!(f, "persistentvolumeclaim \"{name}\" is being deleted"),
            Reason::UnboundImmediateClaims => f.write_str("pod has unbound immediate PersistentVolumeClaims"),
            Reason::VolumeBindConflict => f.write_str("node(s) didn't find available persistent volumes to bind"),
            Reason::VolumeNodeAffinityConflict => f.write_str("node(s) had volume node affinity conflict"),
            Reason::BoundVolumeMissing => {
                f.write_str("node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)")
            }
            Reason::Invalid(msg) => f.write_str(msg),
        }
    }
}

/// A filter's rejection of a node: the plugin, its reasons (NodeResourcesFit reports
/// every insufficient resource) and whether evicting lower-priority pods could help
/// (kube's `Unschedulable` versus `UnschedulableAndUnresolvable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub plugin: &'static str,
    pub resolvable: bool,
    first: Reason,
    // Kept apart from `first` so the common single-reason failure does not allocate.
    more: Vec<Reason>,
}

impl Failure {
    /// A failure preemption cannot fix.
    pub fn unresolvable(plugin: &'static str, reason: Reason) -> Self {
        Failure { plugin, resolvable: false, first: reason, more: Vec::new() }
    }

    /// A failure that removing pods from the node might fix.
    pub fn resolvable(plugin: &'static str, reason: Reason) -> Self {
        Failure { plugin, resolvable: true, first: reason, more: Vec::new() }
    }

    pub(crate) fn push(&mut self, reason: Reason) {
        self.more.push(reason);
    }

    pub fn reasons(&self) -> impl Iterator<Item = &Reason> {
        std::iter::once(&self.first).chain(&self.more)
    }

    /// The reasons joined as kube's `Status.Message()` joins them.
    pub fn message(&self) -> String {
        self.reasons().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.plugin, self.message())
    }
}
