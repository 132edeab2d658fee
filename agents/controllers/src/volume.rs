//! The PersistentVolume controller, after kube's `pkg/controller/volume/persistentvolume`:
//! binds claims to volumes, provisions local-path volumes ([`crate::localpath`]) and
//! reclaims volumes whose claim has gone.
//!
//! * A Pending claim is bound to the volume reserved for it (`claimRef`) or to the smallest
//!   Available volume that fits (class, access modes, volume mode, capacity, selector — see
//!   `keel_scheduler_framework::volume::find_matching_volume`, which the scheduler uses
//!   too); a claim naming a volume (`spec.volumeName`) is bound to that one if it fits.
//!   Claims of WaitForFirstConsumer classes are left to the scheduler until it has reserved
//!   a volume or chosen a node (`volume.kubernetes.io/selected-node`).
//! * Binding writes the volume first (`claimRef` with the claim's uid, phase Bound), then the
//!   claim (`volumeName`, `pv.kubernetes.io/bind-completed`, `bound-by-controller`, phase
//!   Bound with the volume's capacity and access modes), so a claim is never Bound to a
//!   volume that does not point back at it.
//! * A volume whose claim is gone is Released; reclaimPolicy Delete deletes it, Retain
//!   keeps it Released until an administrator frees it.
//!
//! Two queues as in kube (claims, volumes), one worker each: binding two claims at once
//! would only race for the same volumes. Pending claims are looked at again every
//! [`RESYNC`] (kube's `--pvclaimbinder-sync-period`), besides whenever a volume, class or
//! the claim changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeStatus, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use keel_api::error::{ApiError, Result};
use keel_api::patch::PatchType;
use keel_api::rest::DeleteOptions;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::{Action, Client, Informer, ObjectKey, Recorder, WorkQueue};
use keel_scheduler_framework::volume::{
    ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, check_volume_satisfies_claim, claim_class, claim_volume_name,
    find_matching_volume, is_delay_binding, is_volume_bound_to_claim, reserve_for, selected_node,
};

use crate::localpath;
use crate::replicaset::revision_of;

/// Pods by the claims they use (`namespace/claim`), for the WaitForPodScheduled message.
pub const POD_BY_CLAIM: &str = "pod-by-claim";
/// Unbound claims by class, to look at again when a volume of the class frees up.
const UNBOUND_CLAIM_BY_CLASS: &str = "unbound-claim-by-class";
/// Volumes by the claim their `claimRef` names (`namespace/claim`).
const VOLUME_BY_CLAIM: &str = "volume-by-claim";
/// How often Pending claims are looked at even when nothing seems to change.
pub const RESYNC: Duration = Duration::from_secs(15);
const OWN_WRITES: Duration = Duration::from_secs(10);
/// Set on claims handed to a provisioner, as kube's controller sets them for external ones.
const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const ANN_STORAGE_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";

/// Knobs of the PersistentVolume controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where local-path volumes are made on the nodes (k3s: `--default-local-storage-path`).
    pub local_path_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { local_path_dir: PathBuf::from(localpath::DEFAULT_DIR) }
    }
}

/// The pod's claims as `namespace/claim`: the index [`POD_BY_CLAIM`] is built from.
pub fn claims_of_pod(pod: &Pod) -> Vec<String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| format!("{namespace}/{}", c.claim_name))
        .collect()
}

fn claim_key_of_ref(volume: &PersistentVolume) -> Option<ObjectKey> {
    let claim_ref = volume.spec.as_ref()?.claim_ref.as_ref()?;
    Some(ObjectKey::new(claim_ref.namespace.clone().unwrap_or_default(), claim_ref.name.clone()?))
}

fn volume_phase(volume: &PersistentVolume) -> &str {
    volume.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn has_annotation(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) -> bool {
    meta.annotations.as_ref().is_some_and(|a| a.contains_key(key))
}

pub struct VolumeController {
    client: Client,
    recorder: Recorder,
    claims: Arc<Informer<PersistentVolumeClaim>>,
    volumes: Arc<Informer<PersistentVolume>>,
    classes: Arc<Informer<StorageClass>>,
    pods: Arc<Informer<Pod>>,
    nodes: Arc<Informer<Node>>,
    claim_queue: Arc<WorkQueue<ObjectKey>>,
    volume_queue: Arc<WorkQueue<ObjectKey>>,
    settings: Settings,
}

impl VolumeController {
    /// `pods` must get the [`POD_BY_CLAIM`] index (built by [`claims_of_pod`]) before it runs.
    pub fn new(
        client: Client,
        pods: Arc<Informer<Pod>>,
        nodes: Arc<Informer<Node>>,
        recorder: Recorder,
        settings: Settings,
    ) -> Arc<Self> {
        let claims = Informer::<PersistentVolumeClaim>::new(client.clone());
        claims.add_index(UNBOUND_CLAIM_BY_CLASS, |c| {
            if claim_volume_name(c).is_none() { vec![claim_class(c).to_owned()] } else { Vec::new() }
        });
        let volumes = Informer::<PersistentVolume>::new(client.clone());
        volumes.add_index(VOLUME_BY_CLAIM, |v| claim_key_of_ref(v).map(|k| k.to_string()).into_iter().collect());
        let classes = Informer::<StorageClass>::new(client.clone());
        let this = Arc::new(VolumeController {
            client,
            recorder,
            claims,
            volumes,
            classes,
            pods,
            nodes,
            claim_queue: WorkQueue::new(),
            volume_queue: WorkQueue::new(),
            settings,
        });
        {
            let claim_queue = this.claim_queue.clone();
            let volume_queue = this.volume_queue.clone();
            let volumes = Arc::downgrade(&this.volumes);
            this.claims.on_change(move |old, new| match (old, new) {
                (_, Some(claim)) => claim_queue.add(ObjectKey::of(claim.as_ref())),
                (Some(claim), None) => {
                    // The claim is gone: its volume (named, or reserved for it) is released.
                    if let Some(name) = claim_volume_name(claim) {
                        volume_queue.add(ObjectKey::new("", name));
                    }
                    if let Some(volumes) = volumes.upgrade() {
                        for volume in volumes.by_index(VOLUME_BY_CLAIM, &ObjectKey::of(claim.as_ref()).to_string()) {
                            volume_queue.add(ObjectKey::of(volume.as_ref()));
                        }
                    }
                }
                (None, None) => {}
            });
        }
        {
            let claim_queue = this.claim_queue.clone();
            let volume_queue = this.volume_queue.clone();
            let claims = Arc::downgrade(&this.claims);
            this.volumes.on_change(move |old, new| {
                if let Some(volume) = new {
                    volume_queue.add(ObjectKey::of(volume.as_ref()));
                }
                for volume in [old, new].into_iter().flatten() {
                    match claim_key_of_ref(volume) {
                        Some(claim) => claim_queue.add(claim),
                        // Free: claims of its class waiting for a volume may take it.
                        None => {
                            if let Some(claims) = claims.upgrade() {
                                let class = keel_scheduler_framework::volume::volume_class(volume);
                                for claim in claims.by_index(UNBOUND_CLAIM_BY_CLASS, class) {
                                    claim_queue.add(ObjectKey::of(claim.as_ref()));
                                }
                            }
                        }
                    }
                }
            });
        }
        {
            let claim_queue = this.claim_queue.clone();
            let claims = Arc::downgrade(&this.claims);
            this.classes.on_change(move |_, new| {
                let (Some(class), Some(claims)) = (new, claims.upgrade()) else { return };
                for claim in claims.by_index(UNBOUND_CLAIM_BY_CLASS, class.metadata.name.as_deref().unwrap_or("")) {
                    claim_queue.add(ObjectKey::of(claim.as_ref()));
                }
            });
        }
        this
    }

    pub async fn run(self: Arc<Self>) {
        let _claims = keel_runtime::AbortOnDrop::spawn(self.claims.clone().run());
        let _volumes = keel_runtime::AbortOnDrop::spawn(self.volumes.clone().run());
        let _classes = keel_runtime::AbortOnDrop::spawn(self.classes.clone().run());
        self.claims.wait_synced().await;
        self.volumes.wait_synced().await;
        self.classes.wait_synced().await;
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        let claims = self.clone();
        let volumes = self.clone();
        tokio::join!(
            keel_runtime::run_workers(self.claim_queue.clone(), 1, "PersistentVolumeClaim", move |key| {
                let this = claims.clone();
                async move { this.sync_claim(key).await }
            }),
            keel_runtime::run_workers(self.volume_queue.clone(), 1, "PersistentVolume", move |key| {
                let this = volumes.clone();
                async move { this.sync_volume(key).await }
            }),
        );
    }

    fn event(&self, claim: &PersistentVolumeClaim, event_type: EventType, reason: &str, message: impl Into<String>) {
        self.recorder.record(reference_to(claim), event_type, reason, message);
    }

    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        (!name.is_empty()).then(|| self.classes.get(&ObjectKey::new("", name))).flatten()
    }

    async fn sync_claim(&self, key: ObjectKey) -> Result<Action> {
        let Some(claim) = self.claims.get(&key) else { return Ok(Action::Done) };
        // Being deleted: nothing new is bound to it; its volume is released once it is gone.
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        if has_annotation(&claim.metadata, ANN_BIND_COMPLETED) {
            self.sync_bound_claim(&claim).await
        } else {
            self.sync_unbound_claim(&claim).await
        }
    }

    async fn sync_unbound_claim(&self, claim: &PersistentVolumeClaim) -> Result<Action> {
        if let Some(name) = claim_volume_name(claim) {
            // The user named the volume.
            let Some(volume) = self.volumes.get(&ObjectKey::new("", name)) else {
                self.set_claim_pending(claim).await?;
                return Ok(Action::RequeueAfter(RESYNC));
            };
            let claimed = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
            if !claimed {
                if let Err(why) = check_volume_satisfies_claim(&volume, claim) {
                    self.event(
                        claim,
                        EventType::Warning,
                        "VolumeMismatch",
                        format!("Cannot bind to requested volume \"{name}\": {why}"),
                    );
                    self.set_claim_pending(claim).await?;
                    return Ok(Action::RequeueAfter(RESYNC));
                }
                self.bind(&volume, claim).await?;
                return Ok(Action::Done);
            }
            if is_volume_bound_to_claim(&volume, claim) {
                self.bind(&volume, claim).await?;
                return Ok(Action::Done);
            }
            // Claimed by another claim: wait in case it lets go.
            self.set_claim_pending(claim).await?;
            return Ok(Action::RequeueAfter(RESYNC));
        }
        let class_name = claim_class(claim);
        let class = self.class(class_name);
        let delay = is_delay_binding(class.as_deref());
        let volumes = self.volumes.list();
        if let Some(volume) = find_matching_volume(claim, volumes.iter().map(|v| v.as_ref()), None, delay) {
            self.bind(volume, claim).await?;
            return Ok(Action::Done);
        }
        if delay && selected_node(claim).is_none() {
            self.wait_for_first_consumer(claim);
        } else if !class_name.is_empty() {
            self.provision(claim, class_name, class.as_deref()).await?;
        } else {
            self.event(
                claim,
                EventType::Normal,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
            );
        }
        self.set_claim_pending(claim).await?;
        Ok(Action::RequeueAfter(RESYNC))
    }

    async fn sync_bound_claim(&self, claim: &PersistentVolumeClaim) -> Result<Action> {
        let lost = "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!";
        let Some(name) = claim_volume_name(claim) else {
            return self.claim_lost(claim, "ClaimLost", lost).await;
        };
        let volume = match self.volumes.get(&ObjectKey::new("", name)) {
            Some(volume) => volume,
            // Not in the cache: make sure before calling the claim lost.
            None => match self.client.get::<PersistentVolume>(None, name).await {
                Ok(volume) => Arc::new(volume),
                Err(ApiError::NotFound { .. }) => return self.claim_lost(claim, "ClaimLost", lost).await,
                Err(e) => return Err(e),
            },
        };
        let claimed = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
        if !claimed || is_volume_bound_to_claim(&volume, claim) {
            // Complete (or repair) the binding; writes nothing when it is whole.
            self.bind(&volume, claim).await?;
            return Ok(Action::Done);
        }
        self.claim_lost(
            claim,
            "ClaimMisbound",
            "Two claims are bound to the same volume, this one is bound incorrectly",
        )
        .await
    }

    async fn claim_lost(&self, claim: &PersistentVolumeClaim, reason: &str, message: &str) -> Result<Action> {
        if claim_phase(claim) != "Lost" {
            self.event(claim, EventType::Warning, reason, message);
            let status =
                PersistentVolumeClaimStatus { phase: Some("Lost".into()), ..claim.status.clone().unwrap_or_default() };
            self.write_claim_status(claim, status).await?;
        }
        Ok(Action::Done)
    }

    /// kube's `emitEventForUnboundDelayBindingClaim`.
    fn wait_for_first_consumer(&self, claim: &PersistentVolumeClaim) {
        let mut waiting: Vec<String> = self
            .pods
            .by_index(POD_BY_CLAIM, &ObjectKey::of(claim).to_string())
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        waiting.sort();
        let (reason, message) = match waiting.as_slice() {
            [] => ("WaitForFirstConsumer", "waiting for first consumer to be created before binding".to_string()),
            [one] => ("WaitForPodScheduled", format!("waiting for pod {one} to be scheduled")),
            many => ("WaitForPodScheduled", format!("waiting for pods {} to be scheduled", many.join(","))),
        };
        self.event(claim, EventType::Normal, reason, message);
    }

    /// Binds the volume and the claim to each other; each write only if something changes.
    #[tracing::instrument(level = "debug", skip_all, fields(
        claim = %ObjectKey::of(claim),
        volume = volume.metadata.name.as_deref().unwrap_or(""),
    ))]
    async fn bind(&self, volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Result<()> {
        let name = volume.metadata.name.clone().unwrap_or_default();
        let mut volume = volume.clone();
        let reserved = reserve_for(&volume, claim);
        if reserved != volume {
            volume = self.client.replace(None, &name, &reserved).await?;
        }
        if volume_phase(&volume) != "Bound" {
            let status = PersistentVolumeStatus {
                phase: Some("Bound".into()),
                reason: None,
                message: None,
                last_phase_transition_time: Some(keel_runtime::now()),
            };
            volume =
                self.client.replace_status(None, &name, &PersistentVolume { status: Some(status), ..volume }).await?;
        }

        let key = ObjectKey::of(claim);
        let mut claim = claim.clone();
        let mut wanted = claim.clone();
        if claim_volume_name(&claim) != Some(name.as_str()) {
            wanted.spec.get_or_insert_default().volume_name = Some(name.clone());
            let annotations = wanted.metadata.annotations.get_or_insert_default();
            annotations.entry(ANN_BOUND_BY_CONTROLLER.to_owned()).or_insert_with(|| "yes".to_owned());
        }
        wanted
            .metadata
            .annotations
            .get_or_insert_default()
            .entry(ANN_BIND_COMPLETED.to_owned())
            .or_insert_with(|| "yes".to_owned());
        if wanted != claim {
            claim = self.client.replace(key.namespace(), &key.name, &wanted).await?;
        }
        let old = claim.status.clone().unwrap_or_default();
        let spec = volume.spec.as_ref();
        let status = PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            access_modes: spec.and_then(|s| s.access_modes.clone()),
            capacity: spec
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .map(|storage| [("storage".to_owned(), storage.clone())].into()),
            ..old.clone()
        };
        if status != old {
            claim = self.write_claim_status(&claim, status).await?;
        }
        tracing::debug!("bound");
        self.wait_for_own_writes(&claim, &volume).await;
        Ok(())
    }

    /// Waits (bounded) for the caches to show what this loop just wrote, so its next look
    /// does not act on what it has already changed.
    async fn wait_for_own_writes(&self, claim: &PersistentVolumeClaim, volume: &PersistentVolume) {
        let _ = tokio::time::timeout(OWN_WRITES, async {
            self.volumes.wait_for_revision(revision_of(volume)).await;
            self.claims.wait_for_revision(revision_of(claim)).await;
        })
        .await;
    }

    async fn set_claim_pending(&self, claim: &PersistentVolumeClaim) -> Result<()> {
        if claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending") {
            return Ok(());
        }
        let status =
            PersistentVolumeClaimStatus { phase: Some("Pending".into()), ..claim.status.clone().unwrap_or_default() };
        self.write_claim_status(claim, status).await.map(|_| ())
    }

    async fn write_claim_status(
        &self,
        claim: &PersistentVolumeClaim,
        status: PersistentVolumeClaimStatus,
    ) -> Result<PersistentVolumeClaim> {
        let key = ObjectKey::of(claim);
        let updated = PersistentVolumeClaim { status: Some(status), ..claim.clone() };
        self.client.replace_status(key.namespace(), &key.name, &updated).await
    }

    /// Hands the claim to its class's provisioner: local-path here, anything else to an
    /// external one (or an administrator).
    #[tracing::instrument(level = "debug", skip_all, fields(claim = %ObjectKey::of(claim), class = class_name))]
    async fn provision(
        &self,
        claim: &PersistentVolumeClaim,
        class_name: &str,
        class: Option<&StorageClass>,
    ) -> Result<()> {
        let Some(class) = class else {
            self.event(
                claim,
                EventType::Warning,
                "ProvisioningFailed",
                format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
            );
            return Ok(());
        };
        let key = ObjectKey::of(claim);
        if claim.metadata.annotations.as_ref().and_then(|a| a.get(ANN_STORAGE_PROVISIONER)) != Some(&class.provisioner)
        {
            let patch = serde_json::json!({"metadata": {"annotations": {
                ANN_STORAGE_PROVISIONER: class.provisioner,
                ANN_STORAGE_PROVISIONER_BETA: class.provisioner,
            }}});
            self.client
                .patch::<PersistentVolumeClaim>(key.namespace(), &key.name, None, PatchType::Merge, patch)
                .await?;
        }
        if !localpath::is_local_path(&class.provisioner) {
            self.event(
                claim,
                EventType::Normal,
                "ExternalProvisioning",
                format!(
                    "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that your external provisioner is running and correctly registered.",
                    class.provisioner
                ),
            );
            return Ok(());
        }
        let name = format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or_default());
        if self.volumes.get(&ObjectKey::new("", &name)).is_some() {
            // Made already; the binder takes it from here.
            return Ok(());
        }
        let node_name = selected_node(claim);
        let node = node_name.and_then(|n| self.nodes.get(&ObjectKey::new("", n)));
        let volume = match localpath::provision(claim, class, node_name, node.as_deref(), &self.settings.local_path_dir)
        {
            Ok(volume) => volume,
            Err(why) => {
                self.event(
                    claim,
                    EventType::Warning,
                    "ProvisioningFailed",
                    format!("failed to provision volume with StorageClass \"{class_name}\": {why}"),
                );
                return Ok(());
            }
        };
        self.event(
            claim,
            EventType::Normal,
            "Provisioning",
            format!("External provisioner is provisioning volume for claim \"{key}\""),
        );
        match self.client.create(None, &volume).await {
            Ok(created) => {
                let _ = tokio::time::timeout(OWN_WRITES, self.volumes.wait_for_revision(revision_of(&created))).await;
            }
            Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => {
                self.event(
                    claim,
                    EventType::Warning,
                    "ProvisioningFailed",
                    format!("failed to provision volume with StorageClass \"{class_name}\": {e}"),
                );
                return Err(e);
            }
        }
        self.event(
            claim,
            EventType::Normal,
            "ProvisioningSucceeded",
            format!("Successfully provisioned volume {name}"),
        );
        Ok(())
    }

    async fn sync_volume(&self, key: ObjectKey) -> Result<Action> {
        let Some(volume) = self.volumes.get(&key) else { return Ok(Action::Done) };
        let Some(claim_ref) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
            self.set_volume_phase(&volume, "Available", None).await?;
            return Ok(Action::Done);
        };
        if claim_ref.uid.as_deref().is_none_or(str::is_empty) {
            // Reserved by name for a claim that the claim's sync will bind.
            self.set_volume_phase(&volume, "Available", None).await?;
            return Ok(Action::Done);
        }
        let Some(claim_key) = claim_key_of_ref(&volume) else { return Ok(Action::Done) };
        let claim = match self.claims.get(&claim_key) {
            Some(claim) => Some(claim),
            // Not in the cache (maybe only not yet): ask the store before releasing.
            None => match self.client.get::<PersistentVolumeClaim>(claim_key.namespace(), &claim_key.name).await {
                Ok(claim) => Some(Arc::new(claim)),
                Err(ApiError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
        };
        // A claim of the same name but another uid is another claim: ours is gone.
        let claim = claim.filter(|c| c.metadata.uid == claim_ref.uid);
        let name = key.name.as_str();
        match claim {
            None => {
                if !matches!(volume_phase(&volume), "Released" | "Failed") {
                    self.set_volume_phase(&volume, "Released", None).await?;
                }
                self.reclaim(&volume).await
            }
            Some(claim) => match claim_volume_name(&claim) {
                // Reserved for the claim, which is not bound yet: the claim's sync does it.
                None => {
                    self.claim_queue.add(claim_key);
                    Ok(Action::Done)
                }
                Some(bound) if bound == name => {
                    self.set_volume_phase(&volume, "Bound", None).await?;
                    Ok(Action::Done)
                }
                Some(_) => {
                    let provisioned = has_annotation(&volume.metadata, localpath::ANN_PROVISIONED_BY);
                    if provisioned && reclaim_policy(&volume) == "Delete" {
                        // Made for a claim that got bound to another volume: not needed.
                        if !matches!(volume_phase(&volume), "Released" | "Failed") {
                            self.set_volume_phase(&volume, "Released", None).await?;
                        }
                        return self.reclaim(&volume).await;
                    }
                    if has_annotation(&volume.metadata, ANN_BOUND_BY_CONTROLLER) {
                        // Reserved by the controller or scheduler for a claim that found
                        // another volume: free it again.
                        let mut freed = (*volume).clone();
                        if let Some(spec) = freed.spec.as_mut() {
                            spec.claim_ref = None;
                        }
                        if let Some(annotations) = freed.metadata.annotations.as_mut() {
                            annotations.remove(ANN_BOUND_BY_CONTROLLER);
                        }
                        let freed = self.client.replace(None, name, &freed).await?;
                        self.set_volume_phase(&freed, "Available", None).await?;
                    }
                    // Otherwise the user reserved it for that claim: theirs to sort out.
                    Ok(Action::Done)
                }
            },
        }
    }

    async fn set_volume_phase(&self, volume: &PersistentVolume, phase: &str, message: Option<String>) -> Result<()> {
        if volume_phase(volume) == phase && volume.status.as_ref().and_then(|s| s.message.clone()) == message {
            return Ok(());
        }
        let status = PersistentVolumeStatus {
            phase: Some(phase.into()),
            message,
            reason: None,
            last_phase_transition_time: Some(keel_runtime::now()),
        };
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        let updated = PersistentVolume { status: Some(status), ..volume.clone() };
        let written = self.client.replace_status(None, name, &updated).await?;
        let _ = tokio::time::timeout(OWN_WRITES, self.volumes.wait_for_revision(revision_of(&written))).await;
        Ok(())
    }

    /// What happens to a Released volume: its reclaim policy.
    #[tracing::instrument(level = "debug", skip_all, fields(volume = volume.metadata.name.as_deref().unwrap_or("")))]
    async fn reclaim(&self, volume: &PersistentVolume) -> Result<Action> {
        let name = volume.metadata.name.as_deref().unwrap_or_default();
        match reclaim_policy(volume) {
            "Delete" => {
                // Look again at the stored volume: a claim may have been bound to it since
                // the cache was filled.
                let current = match self.client.get::<PersistentVolume>(None, name).await {
                    Ok(current) => current,
                    Err(ApiError::NotFound { .. }) => return Ok(Action::Done),
                    Err(e) => return Err(e),
                };
                let same_claim = current.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).map(|r| &r.uid)
                    == volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).map(|r| &r.uid);
                if !same_claim || volume_phase(&current) != "Released" {
                    return Ok(Action::Done);
                }
                // Only the object goes. A provisioned local-path volume's directory lives on
                // its node, and removing it is the node agent's part (issue 5, not written
                // yet; k3s runs a helper pod there for it): until then it is left behind.
                let options = DeleteOptions {
                    precondition_uid: current.metadata.uid.clone(),
                    precondition_resource_version: current.metadata.resource_version.clone(),
                    ..DeleteOptions::default()
                };
                self.client.delete::<PersistentVolume>(None, name, &options).await?;
                tracing::info!(volume = name, "released volume deleted (reclaimPolicy Delete)");
                Ok(Action::Done)
            }
            "Recycle" => {
                // Deprecated in Kubernetes; keel has no recycler.
                self.set_volume_phase(volume, "Failed", Some("No recycler plugin found for the volume!".into()))
                    .await?;
                self.recorder.record(
                    reference_to(volume),
                    EventType::Warning,
                    "VolumeFailedRecycle",
                    "No recycler plugin found for the volume!",
                );
                Ok(Action::Done)
            }
            // Retain: it stays Released until an administrator frees or deletes it.
            _ => Ok(Action::Done),
        }
    }
}

fn reclaim_policy(volume: &PersistentVolume) -> &str {
    volume.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Retain")
}
