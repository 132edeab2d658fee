//! The scheduling framework: kube-scheduler's default filters, scores and preemption as
//! pure functions over a [`Snapshot`] of the cluster. No I/O, no async, no clock.
//!
//! # What the loop calls
//!
//! Keeping the snapshot current (informer events; a pod being bound is added at once so
//! the next cycle sees it):
//!
//! ```text
//! Snapshot::new() -> Snapshot
//! Snapshot::upsert_node(&mut self, Arc<Node>) -> usize           // add or replace, keeps pods
//! Snapshot::remove_node(&mut self, name: &str) -> bool            // drops its pods too
//! Snapshot::add_pod(&mut self, Arc<Pod>) -> bool                  // by spec.nodeName; false if node unknown
//! Snapshot::add_pod_to(&mut self, node: usize, Arc<Pod>) -> bool // assume; replaces same ns/name
//! Snapshot::remove_pod(&mut self, &Pod) -> bool                   // ns/name (+uid)
//! Snapshot::set_namespace_labels(&mut self, ns: &str, Labels)     // only for namespaceSelector
//! Snapshot::upsert_spread_source(&mut self, SpreadSource)         // Services, RCs, RSs, StatefulSets
//! Snapshot::remove_spread_source(&mut self, &SpreadSource)
//! Snapshot::nodes(&self) -> &[NodeInfo]; node(i); index_of(name); len()
//! ```
//!
//! Add only pods holding resources (not `Succeeded`/`Failed`), as kube-scheduler's pod
//! informer does. One cycle for one pod:
//!
//! ```text
//! prefilter(&Pod, &Snapshot) -> Result<CycleState, Failure>      // once per pod
//! CycleState::candidate_nodes(&self) -> Option<&[usize]>          // optional narrowing
//! nodes_to_evaluate(total: usize) -> usize                        // stop after this many feasible
//! filter(&Pod, &CycleState, &NodeInfo) -> Result<(), Failure>     // per node, cheap
//! score_nodes(&Pod, &CycleState, &Snapshot, candidates: &[usize]) -> Vec<(usize, i64)>
//! ```
//!
//! `SpreadSource::from(&Service | &ReplicationController | &ReplicaSet | &StatefulSet)`
//! keeps only the selector; PodTopologySpread derives from them the default constraints of
//! pods that declare none.
//!
//! When no node fits, record each [`Failure`] in a [`Diagnosis`]; for every node whose
//! failure was `resolvable`, try preemption (unless `eligible_to_preempt` says no), with
//! every PodDisruptionBudget of the cluster:
//!
//! ```text
//! eligible_to_preempt(&Pod) -> Result<(), &'static str>
//! preemption_candidates_to_find(total: usize) -> usize
//! DisruptionBudgets::new(&[Arc<PodDisruptionBudget>]) -> DisruptionBudgets  // once per attempt
//! select_victims(&Pod, &CycleState, &NodeInfo, &DisruptionBudgets) -> Result<Victims, Failure>
//! enough_preemption_candidates(&[(usize, Victims)], wanted: usize) -> bool  // stop the dry run
//! pick_preemption_node(&[(usize, Victims)]) -> Option<usize>
//! Diagnosis::new(total); record(&Failure); record_prefilter(&Failure);
//!   record_preemption(&Failure); preemption_not_eligible(msg);
//!   message() / message_after_preemption() -> String          // FailedScheduling text
//! failure_message(total, &[(String, usize)]) -> String
//! preemption_message(total, &[(String, usize)]) -> String
//! ```
//!
//! Building blocks, public for the loop's own accounting and for tests:
//! `pod_requests`, `pod_non_zero_requests`, `Resources`, `NodeInfo`, `pod_priority`,
//! `host_ports`, `quantity::parse_milli` / `parse_units` / `parse_nanos`.
//!
//! Volumes (VolumeBinding; see [`volume`]): the snapshot also holds claims, volumes and
//! classes, and after choosing a node the loop writes what `volume_bindings` says before
//! the binding (a `claimRef` on static volumes, `selected-node` on claims to provision):
//!
//! ```text
//! Snapshot::upsert_claim / remove_claim / upsert_volume / remove_volume /
//!   upsert_storage_class / remove_storage_class
//! volume_bindings(&CycleState, &Node) -> Vec<VolumeBinding>
//! volume::reserve_for(&PersistentVolume, &PersistentVolumeClaim) -> PersistentVolume
//! volume::with_selected_node(&PersistentVolumeClaim, node) -> PersistentVolumeClaim
//! ```
//!
//! The PersistentVolume controller uses `volume::find_matching_volume` too, so both agree
//! on which volume fits a claim.
//!
//! For the DaemonSet controller: `daemon_placement(&Pod, &Node)` (should a daemon pod
//! run there, may an existing one stay).
//!
//! # Where this differs from kube-scheduler
//!
//! * Filters run in kube's order and stop at the first failure; a `NodeReady` check sits
//!   before TaintToleration for nodes that are not Ready but not yet tainted (see
//!   `filters::node_ready`).
//! * VolumeBinding without CSI storage capacity, without narrowing the nodes from bound
//!   volumes' affinity in PreFilter, and without waiting in PreBind for the claims to be
//!   bound; VolumeRestrictions, VolumeZone and NodeVolumeLimits are not implemented.
//! * Not implemented: DRA, ImageLocality, nominated pods, pod-level resources and in-place
//!   resize.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod affinity;
mod cycle;
mod daemon;
mod default_selector;
mod disruption;
mod filters;
mod message;
mod nodeinfo;
mod preemption;
pub mod quantity;
mod resources;
mod scores;
mod selector;
mod snapshot;
mod spread;
mod status;
mod taints;
#[cfg(test)]
mod testutil;
pub mod volume;

pub use affinity::PodAffinityTerms;
pub use cycle::{CycleState, nodes_to_evaluate, prefilter};
pub use daemon::{DaemonPlacement, daemon_placement};
pub use default_selector::SpreadSource;
pub use disruption::DisruptionBudgets;
pub use filters::filter;
pub use message::{Diagnosis, failure_message, preemption_message};
pub use nodeinfo::{BIND_ALL_IP, HostPort, NodeInfo, PodInfo, UsedPorts, host_ports, pod_priority};
pub use preemption::{
    NOT_ELIGIBLE_NEVER, Victims, eligible_to_preempt, enough_preemption_candidates, pick_preemption_node,
    preemption_candidates_to_find, select_victims,
};
pub use resources::{
    DEFAULT_MEMORY_REQUEST, DEFAULT_MILLI_CPU_REQUEST, Resources, is_scalar_resource_name, pod_non_zero_requests,
    pod_requests,
};
pub use scores::{
    MAX_NODE_SCORE, WEIGHT_BALANCED_ALLOCATION, WEIGHT_INTER_POD_AFFINITY, WEIGHT_NODE_AFFINITY,
    WEIGHT_NODE_RESOURCES_FIT, WEIGHT_POD_TOPOLOGY_SPREAD, WEIGHT_TAINT_TOLERATION, score_nodes,
};
pub use selector::Labels;
pub use snapshot::Snapshot;
pub use status::{Failure, Reason};
pub use volume::{VolumeBinding, volume_bindings};
