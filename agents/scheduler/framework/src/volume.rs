//! Persistent volumes: which PersistentVolume fits a claim (the PersistentVolume controller's
//! `FindMatchingVolume`, shared here so that the binder and the scheduler agree), and
//! kube-scheduler's VolumeBinding plugin reduced to what keel's volumes need:
//!
//! * PreFilter: a claim the pod names must exist and not be terminating; an unbound claim of
//!   an Immediate class makes the pod wait for the PersistentVolume controller.
//! * Filter: the volumes of bound claims must accept the node (their required node
//!   affinity); every unbound WaitForFirstConsumer claim needs either an available volume
//!   that accepts the node or a class that can provision there.
//! * What to write before binding ([`volume_bindings`]): reserve the chosen static volumes
//!   (their `claimRef`) and ask for provisioning on the node (`volume.kubernetes.io/selected-node`).
//!
//! Pods without claims cost one scan of `spec.volumes` in PreFilter and nothing per node.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

use super::quantity;
use super::selector::{LabelSelector, Labels, NO_LABELS, NodeTerm};
use super::snapshot::{Snapshot, namespace_of};
use super::status::{Failure, Reason};

pub const PLUGIN: &str = "VolumeBinding";

/// Set by the scheduler on an unbound WaitForFirstConsumer claim: provision on this node.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set by the PersistentVolume controller once it has bound a claim.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// On a claim (or volume): the controller, not the user, chose the other side.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The storage class as it was given before `storageClassName` existed; it still wins.
pub const ANN_STORAGE_CLASS_BETA: &str = "volume.beta.kubernetes.io/storage-class";
/// A class whose volumes are only ever created by hand (local volumes).
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
/// The node label volume node affinity names nodes by.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The claim's class: the beta annotation first, then `spec.storageClassName`; "" for none
/// (`GetPersistentVolumeClaimClass`).
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    if let Some(class) = claim.metadata.annotations.as_ref().and_then(|a| a.get(ANN_STORAGE_CLASS_BETA)) {
        return class;
    }
    claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

/// The volume's class, read the same way as a claim's.
pub fn volume_class(volume: &PersistentVolume) -> &str {
    if let Some(class) = volume.metadata.annotations.as_ref().and_then(|a| a.get(ANN_STORAGE_CLASS_BETA)) {
        return class;
    }
    volume.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

fn annotation<'a>(meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// The volume a claim names (`spec.volumeName`), if any.
pub fn claim_volume_name(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|n| !n.is_empty())
}

/// The node the scheduler chose for provisioning the claim.
pub fn selected_node(claim: &PersistentVolumeClaim) -> Option<&str> {
    annotation(&claim.metadata, ANN_SELECTED_NODE).filter(|n| !n.is_empty())
}

/// Bound as far as the scheduler is concerned: a volume named and the binding completed by
/// the controller. A claim that names a volume the controller has not bound yet is
/// unbound (and treated as Immediate, as kube does for pre-bound claims).
pub fn is_claim_bound(claim: &PersistentVolumeClaim) -> bool {
    claim_volume_name(claim).is_some() && annotation(&claim.metadata, ANN_BIND_COMPLETED).is_some()
}

/// Whether claims of `class` wait for a consumer before binding. No class, or one that
/// does not exist, binds immediately (`IsDelayBindingMode`).
pub fn is_delay_binding(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer")
}

/// The volume's `claimRef` points at this claim (the uid, when the ref has one, too).
pub fn is_volume_bound_to_claim(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(claim_ref) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else { return false };
    claim_ref.name.as_deref() == claim.metadata.name.as_deref()
        && claim_ref.namespace.as_deref().unwrap_or("") == claim.metadata.namespace.as_deref().unwrap_or("")
        && claim_ref.uid.as_deref().is_none_or(|uid| uid.is_empty() || Some(uid) == claim.metadata.uid.as_deref())
}

/// The claim's `resources.requests.storage` in nano-units; 0 when absent or unreadable.
pub fn storage_request(claim: &PersistentVolumeClaim) -> i128 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity::parse_nanos(&q.0).ok())
        .unwrap_or(0)
}

/// The volume's `capacity.storage` in nano-units; 0 when absent or unreadable.
pub fn storage_capacity(volume: &PersistentVolume) -> i128 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| quantity::parse_nanos(&q.0).ok())
        .unwrap_or(0)
}

fn volume_mode_mismatch(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    let wanted = claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()).unwrap_or("Filesystem");
    let offered = volume.spec.as_ref().and_then(|s| s.volume_mode.as_deref()).unwrap_or("Filesystem");
    wanted != offered
}

/// Every access mode the claim asks for is one the volume offers.
pub fn access_modes_fit(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    let offered = volume.spec.as_ref().and_then(|s| s.access_modes.as_deref()).unwrap_or_default();
    claim.spec.as_ref().and_then(|s| s.access_modes.as_deref()).unwrap_or_default().iter().all(|m| offered.contains(m))
}

/// Whether a volume the claim names in `spec.volumeName` can serve it, in the words of
/// kube's `checkVolumeSatisfyClaim` (no selector check: naming the volume overrides it).
pub fn check_volume_satisfies_claim(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Result<(), String> {
    if volume.metadata.deletion_timestamp.is_some() {
        return Err(format!("the volume is marked for deletion {:?}", volume.metadata.name.as_deref().unwrap_or("")));
    }
    if storage_capacity(volume) < storage_request(claim) {
        return Err("requested PV is too small".into());
    }
    if volume_class(volume) != claim_class(claim) {
        return Err("storageClassName does not match".into());
    }
    if volume_mode_mismatch(claim, volume) {
        return Err("incompatible volumeMode".into());
    }
    if !access_modes_fit(claim, volume) {
        return Err("incompatible accessMode".into());
    }
    Ok(())
}

/// A node's labels as volume node affinity reads them: kubelets always label their node
/// with `kubernetes.io/hostname`; keel nodes that lack the label are read as if it held
/// the node's name, so a volume pinned to a node by name accepts that node.
fn volume_node_labels(node: &Node) -> Cow<'_, Labels> {
    let labels = node.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    if labels.contains_key(HOSTNAME_LABEL) {
        return Cow::Borrowed(labels);
    }
    let mut labels = labels.clone();
    labels.insert(HOSTNAME_LABEL.to_owned(), node.metadata.name.clone().unwrap_or_default());
    Cow::Owned(labels)
}

/// A volume's required node affinity, compiled. `None`: any node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VolumeAffinity(Option<Vec<NodeTerm>>);

impl VolumeAffinity {
    fn of(volume: &PersistentVolume) -> Self {
        let terms = volume
            .spec
            .as_ref()
            .and_then(|s| s.node_affinity.as_ref())
            .and_then(|a| a.required.as_ref())
            // Terms that are empty or do not parse select nothing, as for pods.
            .map(|selector| {
                selector.node_selector_terms.iter().filter_map(|t| NodeTerm::compile(t).ok().flatten()).collect()
            });
        VolumeAffinity(terms)
    }

    fn matches(&self, node: &Node) -> bool {
        match &self.0 {
            None => true,
            Some(terms) => {
                let labels = volume_node_labels(node);
                let name = node.metadata.name.as_deref().unwrap_or_default();
                terms.iter().any(|t| t.matches(name, &labels))
            }
        }
    }
}

/// Whether the volume's required node affinity accepts the node (`CheckNodeAffinity`).
pub fn node_affinity_matches(volume: &PersistentVolume, node: &Node) -> bool {
    VolumeAffinity::of(volume).matches(node)
}

/// How a volume relates to a claim before any node is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Screen {
    Skip,
    /// Its `claimRef` already names the claim.
    PreBound,
    /// Free and fitting; the capacity, to choose the smallest.
    Fits(i128),
}

/// `FindMatchingVolume`'s per-volume checks that do not depend on the node. `for_binder`:
/// the PersistentVolume controller's path, which leaves unreserved volumes of
/// WaitForFirstConsumer claims to the scheduler.
fn screen(
    claim: &PersistentVolumeClaim,
    volume: &PersistentVolume,
    selector: Option<&LabelSelector>,
    request: i128,
    binder_delays: bool,
) -> Screen {
    let claimed = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
    let bound_here = claimed && is_volume_bound_to_claim(volume, claim);
    if claimed && !bound_here {
        return Screen::Skip;
    }
    let capacity = storage_capacity(volume);
    if capacity < request || volume_mode_mismatch(claim, volume) || volume.metadata.deletion_timestamp.is_some() {
        return Screen::Skip;
    }
    if bound_here {
        return Screen::PreBound;
    }
    if binder_delays {
        return Screen::Skip;
    }
    let available = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available");
    let labels = volume.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    if !available
        || selector.is_some_and(|s| !s.matches(labels))
        || volume_class(volume) != claim_class(claim)
        || !access_modes_fit(claim, volume)
    {
        return Screen::Skip;
    }
    Screen::Fits(capacity)
}

/// The claim's `spec.selector` compiled; `Err` when it does not parse (nothing matches).
fn claim_selector(claim: &PersistentVolumeClaim) -> Result<Option<LabelSelector>, ()> {
    match claim.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        None => Ok(None),
        Some(selector) => LabelSelector::compile(Some(selector)).map(Some).map_err(|_| ()),
    }
}

/// The volume for a claim, as kube's `FindMatchingVolume`: a volume already reserved for the
/// claim (`claimRef`) if there is one, otherwise the smallest Available volume of the
/// claim's class whose capacity, access modes, volume mode and labels (`spec.selector`)
/// fit — and, with `node`, whose node affinity accepts it (the scheduler's path). Without a
/// node and with `delay_binding` (the controller, for a WaitForFirstConsumer claim), only a
/// reserved volume is returned: choosing is the scheduler's. Ties go to the first name.
pub fn find_matching_volume<'a>(
    claim: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    node: Option<&Node>,
    delay_binding: bool,
) -> Option<&'a PersistentVolume> {
    let Ok(selector) = claim_selector(claim) else { return None };
    let request = storage_request(claim);
    let binder_delays = node.is_none() && delay_binding;
    let mut best: Option<(i128, &PersistentVolume)> = None;
    for volume in volumes {
        match screen(claim, volume, selector.as_ref(), request, binder_delays) {
            Screen::Skip => {}
            Screen::PreBound => {
                // The reserved volume or nothing: another volume would leave it dangling.
                return match node {
                    Some(node) if !node_affinity_matches(volume, node) => None,
                    _ => Some(volume),
                };
            }
            Screen::Fits(capacity) => {
                if node.is_some_and(|n| !node_affinity_matches(volume, n)) {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((size, current)) => {
                        capacity < size || (capacity == size && volume.metadata.name < current.metadata.name)
                    }
                };
                if better {
                    best = Some((capacity, volume));
                }
            }
        }
    }
    best.map(|(_, v)| v)
}

/// The volume with its `claimRef` pointing at the claim, uid included (kube's
/// `GetBindVolumeToClaim`). When it was not reserved for the claim before, it also gets
/// `pv.kubernetes.io/bound-by-controller`: the scheduler or the controller chose it, not
/// the user, so it may be freed again if the claim ends up elsewhere.
pub fn reserve_for(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> PersistentVolume {
    let mut reserved = volume.clone();
    let chosen_here = !is_volume_bound_to_claim(volume, claim);
    let spec = reserved.spec.get_or_insert_default();
    let exact = spec.claim_ref.as_ref().is_some_and(|r| {
        r.name == claim.metadata.name && r.namespace == claim.metadata.namespace && r.uid == claim.metadata.uid
    });
    if !exact {
        spec.claim_ref = Some(claim_reference(claim));
    }
    if chosen_here {
        reserved
            .metadata
            .annotations
            .get_or_insert_default()
            .entry(ANN_BOUND_BY_CONTROLLER.to_owned())
            .or_insert_with(|| "yes".to_owned());
    }
    reserved
}

/// The `claimRef` a volume holds for this claim.
pub fn claim_reference(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: claim.metadata.namespace.clone(),
        name: claim.metadata.name.clone(),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The claim with `volume.kubernetes.io/selected-node` set, as the scheduler assumes it.
pub fn with_selected_node(claim: &PersistentVolumeClaim, node: &str) -> PersistentVolumeClaim {
    let mut selected = claim.clone();
    selected.metadata.annotations.get_or_insert_default().insert(ANN_SELECTED_NODE.to_owned(), node.to_owned());
    selected
}

/// Claims, volumes and classes as the scheduler's snapshot holds them.
#[derive(Debug, Default)]
pub(crate) struct VolumeCache {
    claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    volumes: HashMap<String, Arc<PersistentVolume>>,
    /// Class name to the names of its volumes, for the candidates of a claim.
    by_class: HashMap<String, Vec<String>>,
    classes: HashMap<String, Arc<StorageClass>>,
}

impl VolumeCache {
    pub(crate) fn upsert_claim(&mut self, claim: Arc<PersistentVolumeClaim>) {
        let key =
            (claim.metadata.namespace.clone().unwrap_or_default(), claim.metadata.name.clone().unwrap_or_default());
        self.claims.insert(key, claim);
    }

    pub(crate) fn remove_claim(&mut self, namespace: &str, name: &str) -> bool {
        self.claims.remove(&(namespace.to_owned(), name.to_owned())).is_some()
    }

    pub(crate) fn claim(&self, namespace: &str, name: &str) -> Option<&Arc<PersistentVolumeClaim>> {
        self.claims.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub(crate) fn upsert_volume(&mut self, volume: Arc<PersistentVolume>) {
        let name = volume.metadata.name.clone().unwrap_or_default();
        self.remove_volume(&name);
        self.by_class.entry(volume_class(&volume).to_owned()).or_default().push(name.clone());
        self.volumes.insert(name, volume);
    }

    pub(crate) fn remove_volume(&mut self, name: &str) -> bool {
        let Some(old) = self.volumes.remove(name) else { return false };
        let class = volume_class(&old);
        if let Some(names) = self.by_class.get_mut(class) {
            names.retain(|n| n != name);
            if names.is_empty() {
                self.by_class.remove(class);
            }
        }
        true
    }

    pub(crate) fn volume(&self, name: &str) -> Option<&Arc<PersistentVolume>> {
        self.volumes.get(name)
    }

    fn volumes_of_class(&self, class: &str) -> impl Iterator<Item = &Arc<PersistentVolume>> {
        self.by_class.get(class).into_iter().flatten().filter_map(|n| self.volumes.get(n))
    }

    pub(crate) fn upsert_class(&mut self, class: Arc<StorageClass>) {
        self.classes.insert(class.metadata.name.clone().unwrap_or_default(), class);
    }

    pub(crate) fn remove_class(&mut self, name: &str) -> bool {
        self.classes.remove(name).is_some()
    }

    pub(crate) fn class(&self, name: &str) -> Option<&Arc<StorageClass>> {
        self.classes.get(name)
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    volume: Arc<PersistentVolume>,
    affinity: VolumeAffinity,
}

impl Candidate {
    fn new(volume: Arc<PersistentVolume>) -> Self {
        Candidate { affinity: VolumeAffinity::of(&volume), volume }
    }
}

/// An unbound WaitForFirstConsumer claim of the pod.
#[derive(Debug, Clone)]
struct DelayedClaim {
    claim: Arc<PersistentVolumeClaim>,
    /// A volume already reserved for the claim: it or provisioning, nothing else.
    reserved: Option<Candidate>,
    /// Free volumes that fit the claim, smallest first; only their node affinity is left
    /// to check per node.
    candidates: Vec<Candidate>,
    /// The class can provision (it names a provisioner), and where: `allowedTopologies`.
    provisioning: Option<Vec<TopologyTerm>>,
}

/// One `allowedTopologies` term: label keys with the values each may take.
type TopologyTerm = Vec<(String, Vec<String>)>;

impl DelayedClaim {
    fn new(claim: Arc<PersistentVolumeClaim>, class: &StorageClass, cache: &VolumeCache) -> Self {
        let selector = claim_selector(&claim);
        let request = storage_request(&claim);
        let mut reserved = None;
        let mut candidates: Vec<(i128, Candidate)> = Vec::new();
        if let Ok(selector) = &selector {
            // A volume reserved for the claim may be of another class (set by hand).
            let reserved_elsewhere = cache.volumes.values().filter(|v| is_volume_bound_to_claim(v, &claim));
            for volume in cache.volumes_of_class(claim_class(&claim)).chain(reserved_elsewhere) {
                match screen(&claim, volume, selector.as_ref(), request, false) {
                    Screen::Skip => {}
                    Screen::PreBound => reserved = Some(Candidate::new(volume.clone())),
                    Screen::Fits(capacity) => candidates.push((capacity, Candidate::new(volume.clone()))),
                }
            }
        }
        candidates.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.volume.metadata.name.cmp(&y.volume.metadata.name)));
        candidates.dedup_by(|(_, a), (_, b)| a.volume.metadata.name == b.volume.metadata.name);
        let provisioning = (!class.provisioner.is_empty() && class.provisioner != NO_PROVISIONER).then(|| {
            class
                .allowed_topologies
                .iter()
                .flatten()
                .map(|term| {
                    term.match_label_expressions
                        .iter()
                        .flatten()
                        .map(|e| (e.key.clone(), e.values.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        DelayedClaim { claim, reserved, candidates: candidates.into_iter().map(|(_, c)| c).collect(), provisioning }
    }

    fn can_provision_on(&self, node: &Node) -> bool {
        let Some(topologies) = &self.provisioning else { return false };
        if topologies.is_empty() {
            return true;
        }
        let labels = volume_node_labels(node);
        topologies
            .iter()
            .any(|term| term.iter().all(|(key, values)| labels.get(key).is_some_and(|v| values.contains(v))))
    }
}

/// The pod's volumes as PreFilter found them; `None` in the cycle state for pods without
/// claims.
#[derive(Debug, Clone, Default)]
pub(crate) struct VolumeState {
    /// The volumes of the pod's bound claims: each must accept the node.
    bound: Vec<Candidate>,
    /// A bound claim names a volume that does not exist.
    missing_volume: bool,
    delayed: Vec<DelayedClaim>,
}

/// What has to be written before the pod is bound to the chosen node.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeBinding {
    /// Set the volume's `claimRef` to the claim ([`reserve_for`]); the PersistentVolume
    /// controller completes the binding.
    Reserve { claim: Arc<PersistentVolumeClaim>, volume: Arc<PersistentVolume> },
    /// Annotate the claim with `volume.kubernetes.io/selected-node`: its class's provisioner
    /// creates a volume there.
    Provision { claim: Arc<PersistentVolumeClaim> },
}

enum Choice<'a> {
    Static(&'a Candidate),
    Provision,
}

impl VolumeState {
    /// For each delayed claim, how it would be served on `node`; `None` if one cannot be.
    fn choose(&self, node: &Node) -> Option<Vec<Choice<'_>>> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let mut chosen: Vec<Choice<'_>> = Vec::with_capacity(self.delayed.len());
        for delayed in &self.delayed {
            if let Some(selected) = selected_node(&delayed.claim) {
                // Provisioning was already asked for on a node: only that node will do.
                if selected != name || !delayed.can_provision_on(node) {
                    return None;
                }
                chosen.push(Choice::Provision);
                continue;
            }
            let taken = |c: &Candidate| {
                chosen
                    .iter()
                    .any(|x| matches!(x, Choice::Static(t) if t.volume.metadata.name == c.volume.metadata.name))
            };
            let fitting = match &delayed.reserved {
                Some(reserved) => Some(reserved).filter(|c| c.affinity.matches(node)),
                None => delayed.candidates.iter().find(|c| !taken(c) && c.affinity.matches(node)),
            };
            match fitting {
                Some(candidate) => chosen.push(Choice::Static(candidate)),
                None if delayed.can_provision_on(node) => chosen.push(Choice::Provision),
                None => return None,
            }
        }
        Some(chosen)
    }
}

/// The pod's claims in the order it names them, by name (`spec.volumes` of kind
/// `persistentVolumeClaim`, and generic ephemeral volumes, whose claim is `<pod>-<volume>`).
fn pod_claims(pod: &Pod) -> impl Iterator<Item = (Cow<'_, str>, bool)> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default().iter().filter_map(move |v| {
        if let Some(claim) = &v.persistent_volume_claim {
            Some((Cow::Borrowed(claim.claim_name.as_str()), false))
        } else if v.ephemeral.is_some() {
            Some((Cow::Owned(format!("{pod_name}-{}", v.name)), true))
        } else {
            None
        }
    })
}

/// VolumeBinding's PreFilter. `Ok(None)` for a pod without claims.
pub(crate) fn prefilter(pod: &Pod, snapshot: &Snapshot) -> Result<Option<VolumeState>, Failure> {
    let mut claims = pod_claims(pod).peekable();
    if claims.peek().is_none() {
        return Ok(None);
    }
    let cache = snapshot.volume_cache();
    let namespace = namespace_of(pod);
    let unresolvable = |reason| Failure::unresolvable(PLUGIN, reason);
    let mut state = VolumeState::default();
    let mut unbound_immediate = false;
    let mut seen: Vec<Cow<'_, str>> = Vec::new();
    for (name, ephemeral) in claims {
        if seen.contains(&name) {
            continue;
        }
        let Some(claim) = cache.claim(namespace, &name) else {
            return Err(unresolvable(if ephemeral {
                Reason::Invalid(format!(
                    "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{name}\""
                ))
            } else {
                Reason::ClaimNotFound(name.into_owned())
            }));
        };
        if ephemeral {
            let owned = claim
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.controller == Some(true) && Some(&r.uid) == pod.metadata.uid.as_ref());
            if !owned {
                return Err(unresolvable(Reason::Invalid(format!(
                    "PVC {namespace}/{name} was not created for pod {namespace}/{} (pod is not owner)",
                    pod.metadata.name.as_deref().unwrap_or_default()
                ))));
            }
        }
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(unresolvable(Reason::ClaimBeingDeleted(name.into_owned())));
        }
        if is_claim_bound(claim) {
            match claim_volume_name(claim).and_then(|v| cache.volume(v)) {
                Some(volume) => state.bound.push(Candidate::new(volume.clone())),
                None => state.missing_volume = true,
            }
        } else {
            let class = cache.class(claim_class(claim));
            match class {
                Some(class) if is_delay_binding(Some(class)) && claim_volume_name(claim).is_none() => {
                    state.delayed.push(DelayedClaim::new(claim.clone(), class, cache));
                }
                _ => unbound_immediate = true,
            }
        }
        seen.push(name);
    }
    if unbound_immediate {
        return Err(unresolvable(Reason::UnboundImmediateClaims));
    }
    Ok(Some(state))
}

/// VolumeBinding's Filter: every reason the node fails for, as kube lists them.
pub(crate) fn filter(state: &VolumeState, node: &Node) -> Result<(), Failure> {
    let mut reasons = Vec::new();
    if !state.delayed.is_empty() && state.choose(node).is_none() {
        reasons.push(Reason::VolumeBindConflict);
    }
    if state.bound.iter().any(|b| !b.affinity.matches(node)) {
        reasons.push(Reason::VolumeNodeAffinityConflict);
    }
    if state.missing_volume {
        reasons.push(Reason::BoundVolumeMissing);
    }
    let mut reasons = reasons.into_iter();
    let Some(first) = reasons.next() else { return Ok(()) };
    let mut failure = Failure::unresolvable(PLUGIN, first);
    for reason in reasons {
        failure.push(reason);
    }
    Err(failure)
}

/// What to write before binding the pod to `node` (kube's PreBind): reserve the static
/// volumes chosen for its unbound WaitForFirstConsumer claims and ask for the rest to be
/// provisioned there. Claims already reserved or already sent to this node need nothing.
/// Empty for pods without such claims, and if the node no longer passes the filter.
pub fn volume_bindings(state: &super::CycleState, node: &Node) -> Vec<VolumeBinding> {
    let Some(volumes) = &state.volumes else { return Vec::new() };
    let Some(choices) = volumes.choose(node) else { return Vec::new() };
    volumes
        .delayed
        .iter()
        .zip(choices)
        .filter_map(|(delayed, choice)| match choice {
            Choice::Static(candidate) if is_volume_bound_to_claim(&candidate.volume, &delayed.claim) => None,
            Choice::Static(candidate) => {
                Some(VolumeBinding::Reserve { claim: delayed.claim.clone(), volume: candidate.volume.clone() })
            }
            Choice::Provision if selected_node(&delayed.claim) == node.metadata.name.as_deref() => None,
            Choice::Provision => Some(VolumeBinding::Provision { claim: delayed.claim.clone() }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{PodExt, labeled_node, pod, snapshot_of};
    use serde_json::{Value, json};

    fn claim(name: &str, spec: Value) -> PersistentVolumeClaim {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}, "spec": spec}),
        )
        .unwrap()
    }

    fn volume(name: &str, spec: Value) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"tier": "fast"}}, "spec": spec, "status": {"phase": "Available"}}))
            .unwrap()
    }

    fn rwo(storage: &str, class: &str) -> Value {
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}, "storageClassName": class})
    }

    fn pv(storage: &str, class: &str) -> Value {
        json!({"accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "capacity": {"storage": storage}, "storageClassName": class,
            "hostPath": {"path": "/tmp/x"}})
    }

    fn class(name: &str, provisioner: &str, mode: &str) -> StorageClass {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode}),
        )
        .unwrap()
    }

    fn with(mut base: Value, extra: Value) -> Value {
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        base
    }

    #[test]
    fn find_matching_volume_table() {
        let volumes = vec![
            volume("small", pv("1Gi", "fast")),
            volume("medium", pv("5Gi", "fast")),
            volume("medium-b", pv("5Gi", "fast")),
            volume("big", pv("10Gi", "fast")),
            volume("slow", pv("2Gi", "slow")),
            volume("block", with(pv("3Gi", "fast"), json!({"volumeMode": "Block"}))),
            volume(
                "taken",
                with(pv("2Gi", "fast"), json!({"claimRef": {"namespace": "default", "name": "other", "uid": "u9"}})),
            ),
            volume(
                "reserved",
                with(
                    pv("20Gi", "fast"),
                    json!({"claimRef": {"namespace": "default", "name": "mine", "uid": "uid-mine"}}),
                ),
            ),
        ];
        let mut released = volume("released", pv("3Gi", "fast"));
        released.status.as_mut().unwrap().phase = Some("Released".into());
        let mut volumes = volumes;
        volumes.push(released);
        let cases: Vec<(&str, PersistentVolumeClaim, bool, Option<&str>)> = vec![
            ("the smallest that fits", claim("c", rwo("3Gi", "fast")), false, Some("medium")),
            ("exact size", claim("c", rwo("1Gi", "fast")), false, Some("small")),
            ("too big for all", claim("c", rwo("11Gi", "fast")), false, None),
            ("class must match", claim("c", rwo("1Gi", "slow")), false, Some("slow")),
            ("no class matches only classless", claim("c", rwo("1Gi", "")), false, None),
            (
                "access modes must all be offered",
                claim(
                    "c",
                    json!({"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "fast"}),
                ),
                false,
                None,
            ),
            ("volume mode", claim("c", with(rwo("1Gi", "fast"), json!({"volumeMode": "Block"}))), false, Some("block")),
            (
                "selector",
                claim("c", with(rwo("1Gi", "fast"), json!({"selector": {"matchLabels": {"tier": "slow"}}}))),
                false,
                None,
            ),
            (
                "selector that matches",
                claim(
                    "c",
                    with(
                        rwo("1Gi", "fast"),
                        json!({"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fast"]}]}}),
                    ),
                ),
                false,
                Some("small"),
            ),
            ("reserved wins over smaller ones", claim("mine", rwo("1Gi", "fast")), false, Some("reserved")),
            ("reserved, even when delayed", claim("mine", rwo("1Gi", "fast")), true, Some("reserved")),
            ("delayed claims wait for the scheduler", claim("c", rwo("1Gi", "fast")), true, None),
        ];
        for (what, claim, delay, want) in cases {
            let got = find_matching_volume(&claim, &volumes, None, delay).and_then(|v| v.metadata.name.as_deref());
            assert_eq!(got, want, "{what}");
        }
        // Another claim of the same name (a new uid) does not get the reservation.
        let mut impostor = claim("mine", rwo("15Gi", "fast"));
        impostor.metadata.uid = Some("uid-new".into());
        assert_eq!(find_matching_volume(&impostor, &volumes, None, false), None);
    }

    #[test]
    fn find_matching_volume_on_a_node_checks_its_affinity() {
        let pinned = |name: &str, node: &str, size: &str| {
            volume(
                name,
                with(
                    pv(size, "local"),
                    json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}),
                ),
            )
        };
        let volumes = vec![pinned("a-small", "a", "1Gi"), pinned("b-small", "b", "1Gi"), pinned("a-big", "a", "5Gi")];
        let a = labeled_node("a", json!({}));
        let b = labeled_node("b", json!({}));
        let mut unlabeled = labeled_node("b", json!({}));
        unlabeled.metadata.labels = None;
        let c = claim("c", rwo("2Gi", "local"));
        let name = |v: Option<&PersistentVolume>| v.and_then(|v| v.metadata.name.clone());
        assert_eq!(name(find_matching_volume(&c, &volumes, Some(&a), true)), Some("a-big".into()));
        assert_eq!(name(find_matching_volume(&c, &volumes, Some(&b), true)), None);
        let small = claim("c", rwo("1Gi", "local"));
        assert_eq!(name(find_matching_volume(&small, &volumes, Some(&b), true)), Some("b-small".into()));
        // A node without the hostname label is taken to be named by it.
        assert_eq!(name(find_matching_volume(&small, &volumes, Some(&unlabeled), true)), Some("b-small".into()));
    }

    #[test]
    fn volumes_named_by_claims_are_checked_as_kube_does() {
        let v = volume("v", pv("5Gi", "fast"));
        let cases = [
            (rwo("1Gi", "fast"), Ok(())),
            (rwo("6Gi", "fast"), Err("requested PV is too small")),
            (rwo("1Gi", "slow"), Err("storageClassName does not match")),
            (with(rwo("1Gi", "fast"), json!({"volumeMode": "Block"})), Err("incompatible volumeMode")),
            (with(rwo("1Gi", "fast"), json!({"accessModes": ["ReadWriteMany"]})), Err("incompatible accessMode")),
        ];
        for (spec, want) in cases {
            let got = check_volume_satisfies_claim(&v, &claim("c", spec.clone()));
            assert_eq!(got, want.map_err(String::from), "{spec}");
        }
    }

    fn bound_claim(name: &str, volume: &str) -> PersistentVolumeClaim {
        let mut c = claim(name, with(rwo("1Gi", "fast"), json!({"volumeName": volume})));
        c.metadata.annotations = Some([(ANN_BIND_COMPLETED.to_owned(), "yes".to_owned())].into());
        c
    }

    fn pod_with_claims(claims: &[&str]) -> Pod {
        let volumes: Vec<Value> = claims
            .iter()
            .map(|c| json!({"name": format!("vol-{c}"), "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        pod("p", json!({"containers": [], "volumes": volumes}))
    }

    fn pinned_volume(name: &str, node: &str, class: &str) -> PersistentVolume {
        volume(
            name,
            with(
                pv("1Gi", class),
                json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}),
            ),
        )
    }

    /// Runs PreFilter and Filter on every node: Err(PreFilter message) or, per node, the
    /// Filter message ("" when it fits).
    fn run(snapshot: &Snapshot, pod: &Pod) -> Result<Vec<String>, String> {
        let state = crate::prefilter(pod, snapshot).map_err(|f| f.message())?;
        Ok(snapshot
            .nodes()
            .iter()
            .map(|n| match crate::filter(pod, &state, n) {
                Ok(()) => String::new(),
                Err(f) => {
                    assert_eq!(f.plugin, PLUGIN);
                    assert!(!f.resolvable);
                    f.message()
                }
            })
            .collect())
    }

    #[test]
    fn volume_binding_filter_table() {
        const AFFINITY: &str = "node(s) had volume node affinity conflict";
        const NO_VOLUME: &str = "node(s) didn't find available persistent volumes to bind";
        const MISSING: &str = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
        let mut snapshot = snapshot_of(vec![labeled_node("a", json!({})), labeled_node("b", json!({}))], vec![]);
        snapshot.upsert_storage_class(Arc::new(class("fast", "example.com/nfs", "Immediate")));
        snapshot.upsert_storage_class(Arc::new(class("local-path", "rancher.io/local-path", "WaitForFirstConsumer")));
        snapshot.upsert_storage_class(Arc::new(class("local", NO_PROVISIONER, "WaitForFirstConsumer")));
        let mut zoned = class("zoned", "rancher.io/local-path", "WaitForFirstConsumer");
        zoned.allowed_topologies = serde_json::from_value(
            json!([{"matchLabelExpressions": [{"key": "kubernetes.io/hostname", "values": ["b"]}]}]),
        )
        .unwrap();
        snapshot.upsert_storage_class(Arc::new(zoned));
        snapshot.upsert_volume(Arc::new(pinned_volume("pv-a", "a", "fast")));
        snapshot.upsert_volume(Arc::new(pinned_volume("local-b", "b", "local")));
        snapshot.upsert_volume(Arc::new(volume("anywhere", pv("1Gi", "fast"))));
        let claims = [
            bound_claim("on-a", "pv-a"),
            bound_claim("anywhere", "anywhere"),
            bound_claim("lost", "gone"),
            claim("immediate", rwo("1Gi", "fast")),
            claim("prebound", with(rwo("1Gi", "fast"), json!({"volumeName": "anywhere"}))),
            claim("no-class-object", rwo("1Gi", "missing")),
            claim("wffc", rwo("1Gi", "local-path")),
            claim("wffc-2", rwo("1Gi", "local-path")),
            with_selected_node(&claim("selected-b", rwo("1Gi", "local-path")), "b"),
            claim("static-local", rwo("1Gi", "local")),
            claim("static-local-2", rwo("1Gi", "local")),
            claim("zoned", rwo("1Gi", "zoned")),
        ];
        for c in claims {
            snapshot.upsert_claim(Arc::new(c));
        }
        let mut terminating = claim("terminating", rwo("1Gi", "fast"));
        terminating.metadata.deletion_timestamp = serde_json::from_value(json!("2024-01-01T00:00:00Z")).unwrap();
        snapshot.upsert_claim(Arc::new(terminating));

        let fits = |a: &str, b: &str| Ok(vec![a.to_string(), b.to_string()]);
        type Case = (&'static str, Pod, Result<Vec<String>, String>);
        let cases: Vec<Case> = vec![
            ("no volumes", pod("p", json!({"containers": []})), fits("", "")),
            (
                "other volume kinds",
                pod("p", json!({"containers": [], "volumes": [{"name": "e", "emptyDir": {}}]})),
                fits("", ""),
            ),
            ("missing claim", pod_with_claims(&["nope"]), Err("persistentvolumeclaim \"nope\" not found".into())),
            (
                "terminating claim",
                pod_with_claims(&["terminating"]),
                Err("persistentvolumeclaim \"terminating\" is being deleted".into()),
            ),
            (
                "unbound immediate",
                pod_with_claims(&["anywhere", "immediate"]),
                Err("pod has unbound immediate PersistentVolumeClaims".into()),
            ),
            (
                "named volume not yet bound counts as immediate",
                pod_with_claims(&["prebound"]),
                Err("pod has unbound immediate PersistentVolumeClaims".into()),
            ),
            (
                "class that does not exist binds immediately",
                pod_with_claims(&["no-class-object"]),
                Err("pod has unbound immediate PersistentVolumeClaims".into()),
            ),
            ("bound, pinned to a", pod_with_claims(&["on-a", "anywhere"]), fits("", AFFINITY)),
            ("bound to a volume that is gone", pod_with_claims(&["lost"]), fits(MISSING, MISSING)),
            ("wait for first consumer: anywhere", pod_with_claims(&["wffc", "wffc-2"]), fits("", "")),
            ("already sent to b", pod_with_claims(&["selected-b"]), fits(NO_VOLUME, "")),
            ("static local volume only on b", pod_with_claims(&["static-local"]), fits(NO_VOLUME, "")),
            (
                "one static volume cannot serve two claims",
                pod_with_claims(&["static-local", "static-local-2"]),
                fits(NO_VOLUME, NO_VOLUME),
            ),
            ("allowed topologies", pod_with_claims(&["zoned"]), fits(NO_VOLUME, "")),
            (
                "every reason is given",
                pod_with_claims(&["on-a", "zoned", "lost"]),
                fits(&format!("{NO_VOLUME}, {MISSING}"), &format!("{AFFINITY}, {MISSING}")),
            ),
        ];
        for (what, pod, want) in cases {
            assert_eq!(run(&snapshot, &pod), want, "{what}");
        }
    }

    #[test]
    fn pods_without_claims_carry_no_volume_state() {
        let snapshot = snapshot_of(vec![labeled_node("a", json!({}))], vec![]);
        let state = crate::prefilter(&pod("p", json!({"containers": []})), &snapshot).unwrap();
        assert!(state.volumes.is_none());
        assert!(volume_bindings(&state, snapshot.nodes()[0].node()).is_empty());
    }

    #[test]
    fn bindings_reserve_static_volumes_and_ask_for_the_rest() {
        let mut snapshot = snapshot_of(vec![labeled_node("a", json!({})), labeled_node("b", json!({}))], vec![]);
        snapshot.upsert_storage_class(Arc::new(class("local-path", "rancher.io/local-path", "WaitForFirstConsumer")));
        snapshot.upsert_storage_class(Arc::new(class("local", NO_PROVISIONER, "WaitForFirstConsumer")));
        snapshot.upsert_volume(Arc::new(pinned_volume("local-b", "b", "local")));
        snapshot.upsert_volume(Arc::new(pinned_volume("local-b-2", "b", "local")));
        for c in [
            claim("data", rwo("1Gi", "local-path")),
            claim("static", rwo("1Gi", "local")),
            claim("static-2", rwo("1Gi", "local")),
            with_selected_node(&claim("sent", rwo("1Gi", "local-path")), "b"),
        ] {
            snapshot.upsert_claim(Arc::new(c));
        }
        let p = pod_with_claims(&["data", "static", "static-2", "sent"]).named("p");
        let state = crate::prefilter(&p, &snapshot).unwrap();
        let b = snapshot.nodes()[snapshot.index_of("b").unwrap()].node().clone();
        let described: Vec<String> = volume_bindings(&state, &b)
            .iter()
            .map(|binding| match binding {
                VolumeBinding::Reserve { claim, volume } => {
                    format!(
                        "reserve {} for {}",
                        volume.metadata.name.as_deref().unwrap(),
                        claim.metadata.name.as_deref().unwrap()
                    )
                }
                VolumeBinding::Provision { claim } => format!("provision {}", claim.metadata.name.as_deref().unwrap()),
            })
            .collect();
        assert_eq!(described, ["provision data", "reserve local-b for static", "reserve local-b-2 for static-2"]);
        let a = snapshot.nodes()[snapshot.index_of("a").unwrap()].node();
        assert!(volume_bindings(&state, a).is_empty(), "a does not pass the filter");

        // Reserved as the loop assumes it: the next cycle sees the volume taken.
        let reserved = reserve_for(
            snapshot.volume_cache().volume("local-b").unwrap(),
            snapshot.claim("default", "static").unwrap(),
        );
        let claim_ref = reserved.spec.as_ref().unwrap().claim_ref.as_ref().unwrap();
        assert_eq!((claim_ref.name.as_deref(), claim_ref.uid.as_deref()), (Some("static"), Some("uid-static")));
        assert_eq!(reserved.metadata.annotations.as_ref().unwrap()[ANN_BOUND_BY_CONTROLLER], "yes");
        snapshot.upsert_volume(Arc::new(reserved));
        let state = crate::prefilter(&p, &snapshot).unwrap();
        let kinds: Vec<bool> =
            volume_bindings(&state, &b).iter().map(|b| matches!(b, VolumeBinding::Reserve { .. })).collect();
        assert_eq!(kinds, [false, true], "static is already reserved; static-2 takes the other volume");
    }
}
