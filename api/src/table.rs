//! `meta.k8s.io/v1` Table responses for `kubectl get`: the columns kube-apiserver prints for
//! each kind (priority 1 columns show with `-o wide`), and NAME/AGE for everything else.

use serde_json::{Value, json};

use crate::object::{age, meta_str};
use crate::registry::ResourceType;

struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
    /// Only where kube sets one on a column other than NAME (which always has `name`).
    format: &'static str,
}

const fn col(name: &'static str, kind: &'static str, priority: u8, description: &'static str) -> Column {
    Column { name, kind, priority, description, format: "" }
}

/// A column kube gives the `name` format besides NAME (VolumeAttachment's ATTACHER).
const fn name_format(column: Column) -> Column {
    Column {
        name: column.name,
        kind: column.kind,
        priority: column.priority,
        description: column.description,
        format: "name",
    }
}

const NAME: Column = col("Name", "string", 0, "Name must be unique within a namespace.");
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

// The storage.k8s.io/v1 field docs (k8s.io/api 1.32) kube describes these columns with.
const CSI_ATTACH_REQUIRED: &str = "attachRequired indicates this CSI volume driver requires an attach operation \
    (because it implements the CSI ControllerPublishVolume() method), and that the Kubernetes attach detach \
    controller should call the attach volume interface which checks the volumeattachment status and waits until the \
    volume is attached before proceeding to mounting. The CSI external-attacher coordinates with CSI volume driver \
    and updates the volumeattachment status when the attach operation is complete. If the CSIDriverRegistry feature \
    gate is enabled and the value is specified to false, the attach operation will be skipped. Otherwise the attach \
    operation will be called.\n\nThis field is immutable.";
const CSI_POD_INFO_ON_MOUNT: &str = "podInfoOnMount indicates this CSI volume driver requires \
    additional pod information (like podName, podUID, etc.) during mount operations, if set to \
    true. If set to false, pod information will not be passed on mount. Default is false.\n\nThe \
    CSI driver specifies podInfoOnMount as part of driver deployment. If true, Kubelet will pass \
    pod information as VolumeContext in the CSI NodePublishVolume() calls. The CSI driver is \
    responsible for parsing and validating the information passed in as VolumeContext.\n\nThe \
    following VolumeContext will be passed if podInfoOnMount is set to true. This list might \
    grow, but the prefix will be used. \"csi.storage.k8s.io/pod.name\": pod.Name \
    \"csi.storage.k8s.io/pod.namespace\": pod.Namespace \"csi.storage.k8s.io/pod.uid\": \
    string(pod.UID) \"csi.storage.k8s.io/ephemeral\": \"true\" if the volume is an ephemeral \
    inline volume\n                                defined by a CSIVolumeSource, otherwise \
    \"false\"\n\n\"csi.storage.k8s.io/ephemeral\" is a new feature in Kubernetes 1.16. It is \
    only required for drivers which support both the \"Persistent\" and \"Ephemeral\" \
    VolumeLifecycleMode. Other drivers can leave pod info disabled and/or ignore this field. As \
    Kubernetes 1.15 doesn't support this field, drivers can only support one mode when deployed \
    on such a cluster and the deployment determines which mode that is, for example via a \
    command line parameter of the driver.\n\nThis field was immutable in Kubernetes < 1.29 and \
    now is mutable.";
const CSI_STORAGE_CAPACITY: &str = "storageCapacity indicates that the CSI volume driver wants pod scheduling to \
    consider the storage capacity that the driver deployment will report by creating CSIStorageCapacity objects with \
    capacity information, if set to true.\n\nThe check can be enabled immediately when deploying a driver. In that \
    case, provisioning new volumes with late binding will pause until the driver deployment has published some \
    suitable CSIStorageCapacity object.\n\nAlternatively, the driver can be deployed with the field unset or false \
    and it can be flipped later when storage capacity information has been published.\n\nThis field was immutable in \
    Kubernetes <= 1.22 and now is mutable.";
const CSI_TOKEN_REQUESTS: &str = "tokenRequests indicates the CSI driver needs pods' service account tokens it is \
    mounting volume for to do necessary authentication. Kubelet will pass the tokens in VolumeContext in the CSI \
    NodePublishVolume calls. The CSI driver should parse and validate the following VolumeContext: \
    \"csi.storage.k8s.io/serviceAccount.tokens\": {\n  \"<audience>\": {\n    \"token\": <token>,\n    \
    \"expirationTimestamp\": <expiration timestamp in RFC3339>,\n  },\n  ...\n}\n\nNote: Audience in each \
    TokenRequest should be different and at most one token is empty string. To receive a new token after expiry, \
    RequiresRepublish can be used to trigger NodePublishVolume periodically.";
const CSI_REQUIRES_REPUBLISH: &str = "requiresRepublish indicates the CSI driver wants `NodePublishVolume` being \
    periodically called to reflect any possible change in the mounted volume. This field defaults to false.\n\nNote: \
    After a successful initial NodePublishVolume call, subsequent calls to NodePublishVolume should only update the \
    contents of the volume. New mount points will not be seen by a running container.";
const CSI_MODES: &str = "volumeLifecycleModes defines what kind of volumes this CSI volume driver supports. The \
    default if the list is empty is \"Persistent\", which is the usage defined by the CSI specification and \
    implemented in Kubernetes via the usual PV/PVC mechanism.\n\nThe other mode is \"Ephemeral\". In this mode, \
    volumes are defined inline inside the pod spec with CSIVolumeSource and their lifecycle is tied to the lifecycle \
    of that pod. A driver has to be aware of this because it is only going to get a NodePublishVolume call for such \
    a volume.\n\nFor more information about implementing this mode, see \
    https://kubernetes-csi.github.io/docs/ephemeral-local-volumes.html A driver can support one or more of these \
    modes and more modes may be added in the future.\n\nThis field is beta. This field is immutable.";
const CAPACITY_STORAGE_CLASS: &str = "storageClassName represents the name of the StorageClass that the reported \
    capacity applies to. It must meet the same requirements as the name of a StorageClass object (non-empty, DNS \
    subdomain). If that object no longer exists, the CSIStorageCapacity object is obsolete and should be removed by \
    its creator. This field is immutable.";
const CAPACITY_CAPACITY: &str = "capacity is the value reported by the CSI driver in its GetCapacityResponse for a \
    GetCapacityRequest with topology and parameters that match the previous fields.\n\nThe semantic is currently \
    (CSI spec 1.2) defined as: The available capacity, in bytes, of the storage that can be used to provision \
    volumes. If not set, that information is currently unavailable.";
const ATTACHMENT_ATTACHER: &str = "attacher indicates the name of the volume driver that MUST handle this request. \
    This is the name returned by GetPluginName().";
const ATTACHMENT_PV: &str = "persistentVolumeName represents the name of the persistent volume to attach.";
const ATTACHMENT_NODE: &str = "nodeName represents the node that the volume should be attached to.";
const ATTACHMENT_ATTACHED: &str = "attached indicates the volume is successfully attached. This field must only be \
    set by the entity completing the attach operation, i.e. the external-attacher.";

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            NAME,
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            col("IP", "string", 1, "IP address allocated to the pod."),
            col("Node", "string", 1, "Name of the node this pod is assigned to."),
            col("Nominated Node", "string", 1, "Name of the node the pod is nominated for."),
            col("Readiness Gates", "string", 1, "The readiness gates of the pod."),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            NAME,
            col("Desired", "integer", 0, "Number of desired pods."),
            col("Current", "integer", 0, "Number of actual replicas."),
            col("Ready", "integer", 0, "The number of ready replicas."),
            AGE,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        "StatefulSet" => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            AGE,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
        ],
        "DaemonSet" => vec![
            NAME,
            col("Desired", "integer", 0, "The desired number of nodes."),
            col("Current", "integer", 0, "The number of nodes running the daemon pod."),
            col("Ready", "integer", 0, "The number of nodes with a ready daemon pod."),
            col("Up-to-date", "integer", 0, "The number of nodes running the updated daemon pod."),
            col("Available", "integer", 0, "The number of nodes with an available daemon pod."),
            col("Node Selector", "string", 0, "The node selector of the pods."),
            AGE,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        "Job" => vec![
            NAME,
            col("Status", "string", 0, "Status of the job."),
            col(
                "Completions",
                "string",
                0,
                "The desired number of successfully finished pods the job should be run with.",
            ),
            col("Duration", "string", 0, "Time required to complete the job."),
            AGE,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        "CronJob" => vec![
            NAME,
            col("Schedule", "string", 0, "The schedule in Cron format."),
            col("Timezone", "string", 0, "The time zone of the schedule."),
            col("Suspend", "boolean", 0, "Whether to suspend subsequent executions."),
            col("Active", "integer", 0, "The number of currently running jobs."),
            col("Last Schedule", "string", 0, "When the job was last scheduled."),
            AGE,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        "Service" => vec![
            NAME,
            col("Type", "string", 0, "The type of service."),
            col("Cluster-IP", "string", 0, "The cluster IP of the service."),
            col("External-IP", "string", 0, "The external IPs of the service."),
            col("Port(s)", "string", 0, "The ports of the service."),
            AGE,
            col("Selector", "string", 1, "The selector of the service."),
        ],
        "ConfigMap" => vec![NAME, col("Data", "integer", 0, "Number of keys in the config map."), AGE],
        "Secret" => vec![
            NAME,
            col("Type", "string", 0, "The type of the secret."),
            col("Data", "integer", 0, "Number of keys in the secret."),
            AGE,
        ],
        "Namespace" => vec![NAME, col("Status", "string", 0, "The status of the namespace."), AGE],
        "Node" => vec![
            NAME,
            col("Status", "string", 0, "The status of the node."),
            col("Roles", "string", 0, "The roles of the node."),
            AGE,
            col("Version", "string", 0, "Kubelet version reported by the node."),
            col("Internal-IP", "string", 1, "Internal IP of the node."),
            col("External-IP", "string", 1, "External IP of the node."),
            col("OS-Image", "string", 1, "OS image reported by the node."),
            col("Kernel-Version", "string", 1, "Kernel version reported by the node."),
            col("Container-Runtime", "string", 1, "Container runtime reported by the node."),
        ],
        "ServiceAccount" => vec![NAME, col("Secrets", "string", 0, "Number of secrets."), AGE],
        "ControllerRevision" => vec![
            NAME,
            col("Controller", "string", 0, "Controller of the object."),
            col("Revision", "number", 0, "Revision of the ControllerRevision."),
            AGE,
        ],
        "Endpoints" => vec![NAME, col("Endpoints", "string", 0, "Endpoints of the service."), AGE],
        "PersistentVolumeClaim" => vec![
            NAME,
            col("Status", "string", 0, "The status of the claim."),
            col("Volume", "string", 0, "The bound volume."),
            col("Capacity", "string", 0, "The capacity of the claim."),
            col("Access Modes", "string", 0, "The access modes."),
            col("StorageClass", "string", 0, "The storage class."),
            col("VolumeAttributesClass", "string", 0, "The volume attributes class."),
            AGE,
        ],
        "Event" => vec![
            col("Last Seen", "string", 0, "Time of the last occurrence."),
            col("Type", "string", 0, "Type of the event."),
            col("Reason", "string", 0, "Reason of the event."),
            col("Object", "string", 0, "The object the event is about."),
            col("Message", "string", 0, "Message of the event."),
        ],
        "PodDisruptionBudget" => vec![
            NAME,
            col("Min Available", "string", 0, "The minimum number of pods that must be available."),
            col("Max Unavailable", "string", 0, "The maximum number of pods that may be unavailable."),
            col("Allowed Disruptions", "integer", 0, "Calculated number of pods that may be disrupted at this time."),
            AGE,
        ],
        "CustomResourceDefinition" | "Role" | "ClusterRole" | "LimitRange" => {
            vec![NAME, col("Created At", "date", 0, "Creation time.")]
        }
        "PersistentVolume" => vec![
            NAME,
            col("Capacity", "string", 0, "The capacity of the volume."),
            col("Access Modes", "string", 0, "The access modes of the volume."),
            col("Reclaim Policy", "string", 0, "What happens to the volume when its claim is released."),
            col("Status", "string", 0, "The phase of the volume."),
            col("Claim", "string", 0, "The claim bound to the volume."),
            col("StorageClass", "string", 0, "The storage class of the volume."),
            col("VolumeAttributesClass", "string", 0, "The volume attributes class of the volume."),
            col("Reason", "string", 0, "Why the volume is in its phase."),
            AGE,
            col("VolumeMode", "string", 1, "Filesystem or Block."),
        ],
        "StorageClass" => vec![
            NAME,
            col("Provisioner", "string", 0, "The provisioner of the storage class."),
            col("ReclaimPolicy", "string", 0, "The reclaim policy of volumes it provisions."),
            col("VolumeBindingMode", "string", 0, "When volumes are bound and provisioned."),
            col("AllowVolumeExpansion", "string", 0, "Whether claims may grow."),
            AGE,
        ],
        "Ingress" => vec![
            NAME,
            col("Class", "string", 0, "The ingress class."),
            col("Hosts", "string", 0, "The hosts the rules match."),
            col("Address", "string", 0, "Where the ingress is reachable."),
            col("Ports", "string", 0, "The ports it serves."),
            AGE,
        ],
        "IngressClass" => vec![
            NAME,
            col("Controller", "string", 0, "The controller that implements the class."),
            col("Parameters", "string", 0, "The class's parameters object."),
            AGE,
        ],
        "NetworkPolicy" => vec![NAME, col("Pod-Selector", "string", 0, "The pods the policy selects."), AGE],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            col("Role", "string", 0, "The role bound."),
            AGE,
            col("Users", "string", 1, "The users bound."),
            col("Groups", "string", 1, "The groups bound."),
            col("ServiceAccounts", "string", 1, "The service accounts bound."),
        ],
        "Lease" => vec![NAME, col("Holder", "string", 0, "The holder of the lease."), AGE],
        "PriorityClass" => vec![
            NAME,
            col("Value", "integer", 0, "The priority of pods of the class."),
            col("Global-Default", "boolean", 0, "Whether pods without a class get this one."),
            AGE,
            col("PreemptionPolicy", "string", 0, "Whether pods of the class preempt others."),
        ],
        "ResourceQuota" => vec![
            NAME,
            AGE,
            col("Request", "string", 0, "Used and hard amounts of what is not a limit."),
            col("Limit", "string", 0, "Used and hard amounts of limits."),
        ],
        "EndpointSlice" => vec![
            NAME,
            col("AddressType", "string", 0, "The address type of the slice."),
            col("Ports", "string", 0, "The ports of the slice."),
            col("Endpoints", "string", 0, "The addresses of the slice."),
            AGE,
        ],
        "HorizontalPodAutoscaler" => vec![
            NAME,
            col("Reference", "string", 0, "The target resource to scale."),
            col("Targets", "string", 0, "The metrics used to calculate the desired replica count."),
            col("MinPods", "string", 0, "The lower limit for the number of replicas."),
            col("MaxPods", "string", 0, "The upper limit for the number of replicas."),
            col("Replicas", "string", 0, "Current number of replicas of pods managed by this autoscaler."),
            AGE,
        ],
        // kube's PodTemplate table has no AGE column.
        "PodTemplate" => vec![
            NAME,
            col("Containers", "string", 0, "Names of each container in the template."),
            col("Images", "string", 0, "Images referenced by each container in the template."),
            col("Pod Labels", "string", 0, "The labels for the pod template."),
        ],
        "CSIDriver" => vec![
            NAME,
            col("AttachRequired", "boolean", 0, CSI_ATTACH_REQUIRED),
            col("PodInfoOnMount", "boolean", 0, CSI_POD_INFO_ON_MOUNT),
            col("StorageCapacity", "boolean", 0, CSI_STORAGE_CAPACITY),
            col("TokenRequests", "string", 0, CSI_TOKEN_REQUESTS),
            col("RequiresRepublish", "boolean", 0, CSI_REQUIRES_REPUBLISH),
            col("Modes", "string", 0, CSI_MODES),
            AGE,
        ],
        "CSINode" => vec![
            NAME,
            col("Drivers", "integer", 0, "Drivers indicates the number of CSI drivers registered on the node"),
            AGE,
        ],
        // Nor has kube's CSIStorageCapacity table.
        "CSIStorageCapacity" => vec![
            NAME,
            col("StorageClassName", "string", 0, CAPACITY_STORAGE_CLASS),
            col("Capacity", "string", 0, CAPACITY_CAPACITY),
        ],
        "VolumeAttachment" => vec![
            NAME,
            name_format(col("Attacher", "string", 0, ATTACHMENT_ATTACHER)),
            col("PV", "string", 0, ATTACHMENT_PV),
            col("Node", "string", 0, ATTACHMENT_NODE),
            col("Attached", "boolean", 0, ATTACHMENT_ATTACHED),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

fn s(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(value: String) -> String {
    if value.is_empty() { "<none>".into() } else { value }
}

/// A label map as kube's `labels.FormatLabels` prints it: `k=v` sorted, `<none>` when empty.
fn format_labels(labels: Option<&Value>) -> String {
    let mut pairs: Vec<String> =
        labels.and_then(Value::as_object).into_iter().flatten().map(|(k, v)| format!("{k}={}", s(Some(v)))).collect();
    pairs.sort();
    or_none(pairs.join(","))
}

fn template_containers(object: &Value, pointer: &str) -> (String, String) {
    let containers = object.pointer(pointer).and_then(Value::as_array).cloned().unwrap_or_default();
    let names = containers.iter().map(|c| s(c.get("name"))).collect::<Vec<_>>().join(",");
    let images = containers.iter().map(|c| s(c.get("image"))).collect::<Vec<_>>().join(",");
    (names, images)
}

fn selector_text(selector: Option<&Value>) -> String {
    let Some(selector) = selector else { return "<none>".into() };
    if selector.get("matchLabels").is_some() || selector.get("matchExpressions").is_some() {
        return crate::selector::LabelSelector::from_object(selector)
            .map(|s| or_none(s.to_query()))
            .unwrap_or_else(|_| "<error>".into());
    }
    match selector.as_object() {
        Some(map) => or_none(map.iter().map(|(k, v)| format!("{k}={}", s(Some(v)))).collect::<Vec<_>>().join(",")),
        None => "<none>".into(),
    }
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
    let total = pod.pointer("/spec/containers").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    let ready = statuses.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count();
    let restarts: i64 = statuses.iter().map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0)).sum();
    let mut status = s(pod.pointer("/status/reason"));
    if status.is_empty() {
        status = s(pod.pointer("/status/phase"));
    }
    for c in &statuses {
        if let Some(reason) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            status = reason.to_string();
        } else if let Some(reason) = c.pointer("/state/terminated/reason").and_then(Value::as_str) {
            status = reason.to_string();
        }
    }
    if crate::object::is_terminating(pod) {
        status = "Terminating".into();
    }
    if status.is_empty() {
        status = "Pending".into();
    }
    let gates = pod.pointer("/spec/readinessGates").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(meta_str(pod, "creationTimestamp"))),
        json!(or_none(s(pod.pointer("/status/podIP")))),
        json!(or_none(s(pod.pointer("/spec/nodeName")))),
        json!(or_none(s(pod.pointer("/status/nominatedNodeName")))),
        json!(if gates == 0 { "<none>".to_string() } else { format!("0/{gates}") }),
    ]
}

fn service_ports(svc: &Value) -> String {
    let ports = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let text: Vec<String> = ports
        .iter()
        .map(|p| {
            let port = int(p, "/port");
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) => format!("{port}:{node_port}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    or_none(text.join(","))
}

fn node_cells(node: &Value) -> Vec<Value> {
    let conditions = node.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let ready = conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<&str> = crate::object::labels(node)
        .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).collect())
        .unwrap_or_default();
    let address = |kind: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x.get("type").and_then(Value::as_str) == Some(kind)))
            .map(|x| s(x.get("address")))
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        json!(status),
        json!(or_none(roles.join(","))),
        json!(age(meta_str(node, "creationTimestamp"))),
        json!(s(node.pointer("/status/nodeInfo/kubeletVersion"))),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(or_none(s(node.pointer("/status/nodeInfo/osImage")))),
        json!(or_none(s(node.pointer("/status/nodeInfo/kernelVersion")))),
        json!(or_none(s(node.pointer("/status/nodeInfo/containerRuntimeVersion")))),
    ]
}

fn count(object: &Value, pointers: &[&str]) -> usize {
    pointers.iter().filter_map(|p| object.pointer(p).and_then(Value::as_object)).map(|m| m.len()).sum()
}

/// The cells of one row, after the name (or, for events, the whole row).
fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let age_cell = || json!(age(meta_str(o, "creationTimestamp")));
    match kind {
        "Pod" => pod_cells(o),
        "Deployment" => {
            let (names, images) = template_containers(o, "/spec/template/spec/containers");
            vec![
                json!(format!("{}/{}", int(o, "/status/readyReplicas"), int(o, "/spec/replicas"))),
                json!(int(o, "/status/updatedReplicas")),
                json!(int(o, "/status/availableReplicas")),
                age_cell(),
                json!(names),
                json!(images),
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (names, images) = template_containers(o, "/spec/template/spec/containers");
            vec![
                json!(int(o, "/spec/replicas")),
                json!(int(o, "/status/replicas")),
                json!(int(o, "/status/readyReplicas")),
                age_cell(),
                json!(names),
                json!(images),
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        "StatefulSet" => {
            let (names, images) = template_containers(o, "/spec/template/spec/containers");
            vec![
                json!(format!("{}/{}", int(o, "/status/readyReplicas"), int(o, "/spec/replicas"))),
                age_cell(),
                json!(names),
                json!(images),
            ]
        }
        "DaemonSet" => {
            let (names, images) = template_containers(o, "/spec/template/spec/containers");
            vec![
                json!(int(o, "/status/desiredNumberScheduled")),
                json!(int(o, "/status/currentNumberScheduled")),
                json!(int(o, "/status/numberReady")),
                json!(int(o, "/status/updatedNumberScheduled")),
                json!(int(o, "/status/numberAvailable")),
                json!(selector_text(o.pointer("/spec/template/spec/nodeSelector"))),
                age_cell(),
                json!(names),
                json!(images),
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        "Job" => {
            let (names, images) = template_containers(o, "/spec/template/spec/containers");
            let conditions = o.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            let has = |t: &str| conditions.iter().any(|c| s(c.get("type")) == t && s(c.get("status")) == "True");
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if crate::object::is_terminating(o) {
                "Terminating"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let completions = o.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1);
            vec![
                json!(status),
                json!(format!("{}/{completions}", int(o, "/status/succeeded"))),
                json!(""),
                age_cell(),
                json!(names),
                json!(images),
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        "CronJob" => {
            let (names, images) = template_containers(o, "/spec/jobTemplate/spec/template/spec/containers");
            let last = s(o.pointer("/status/lastScheduleTime"));
            vec![
                json!(s(o.pointer("/spec/schedule"))),
                json!(or_none(s(o.pointer("/spec/timeZone")))),
                json!(o.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
                json!(o.pointer("/status/active").and_then(Value::as_array).map(Vec::len).unwrap_or(0)),
                json!(if last.is_empty() { "<none>".into() } else { age(&last) }),
                age_cell(),
                json!(names),
                json!(images),
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        "Service" => {
            let external = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|i| s(i.get("ip"))).collect::<Vec<_>>().join(","))
                .filter(|x| !x.is_empty());
            let svc_type = o.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
            let external = external.unwrap_or_else(|| match svc_type {
                "LoadBalancer" => "<pending>".into(),
                // kubectl shows where an ExternalName Service points.
                "ExternalName" => or_none(s(o.pointer("/spec/externalName"))),
                _ => "<none>".into(),
            });
            vec![
                json!(svc_type),
                json!(or_none(s(o.pointer("/spec/clusterIP")))),
                json!(external),
                json!(service_ports(o)),
                age_cell(),
                json!(selector_text(o.pointer("/spec/selector"))),
            ]
        }
        "ConfigMap" => vec![json!(count(o, &["/data", "/binaryData"])), age_cell()],
        "Secret" => vec![json!(s(o.get("type"))), json!(count(o, &["/data"])), age_cell()],
        "Namespace" => vec![json!(s(o.pointer("/status/phase"))), age_cell()],
        "Node" => node_cells(o),
        "ControllerRevision" => {
            // `<kind>.<group>/<name>` of the controlling owner, as kubectl names objects.
            let controller = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| refs.iter().find(|r| r.get("controller") == Some(&json!(true))))
                .map(|r| {
                    let kind = s(r.get("kind")).to_lowercase();
                    let group = s(r.get("apiVersion")).rsplit_once('/').map(|(g, _)| g.to_string()).unwrap_or_default();
                    let name = s(r.get("name"));
                    if group.is_empty() { format!("{kind}/{name}") } else { format!("{kind}.{group}/{name}") }
                })
                .unwrap_or_else(|| "<none>".into());
            vec![json!(controller), json!(int(o, "/revision")), age_cell()]
        }
        "ServiceAccount" => {
            vec![json!(o.get("secrets").and_then(Value::as_array).map(Vec::len).unwrap_or(0).to_string()), age_cell()]
        }
        "Endpoints" => {
            let mut endpoints = Vec::new();
            for subset in o.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|p| p.iter().map(|x| int(x, "/port")).collect())
                    .unwrap_or_default();
                for address in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                    let ip = s(address.get("ip"));
                    if ports.is_empty() {
                        endpoints.push(ip.clone());
                    }
                    endpoints.extend(ports.iter().map(|p| format!("{ip}:{p}")));
                }
            }
            vec![json!(or_none(endpoints.join(","))), age_cell()]
        }
        "PersistentVolumeClaim" => vec![
            json!(s(o.pointer("/status/phase"))),
            json!(s(o.pointer("/spec/volumeName"))),
            json!(s(o.pointer("/status/capacity/storage"))),
            json!(access_modes(o.pointer("/status/accessModes"))),
            json!(or_none(s(o.pointer("/spec/storageClassName")))),
            json!(or_unset(s(o.pointer("/spec/volumeAttributesClassName")))),
            age_cell(),
        ],
        "PodDisruptionBudget" => {
            // An int-or-string as kube prints it; N/A when unset.
            let amount = |pointer: &str| match o.pointer(pointer) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(text)) => text.clone(),
                _ => "N/A".to_string(),
            };
            vec![
                json!(amount("/spec/minAvailable")),
                json!(amount("/spec/maxUnavailable")),
                json!(int(o, "/status/disruptionsAllowed")),
                age_cell(),
            ]
        }
        "CustomResourceDefinition" | "Role" | "ClusterRole" | "LimitRange" => {
            vec![json!(meta_str(o, "creationTimestamp"))]
        }
        "PersistentVolume" => {
            let claim = match (s(o.pointer("/spec/claimRef/namespace")), s(o.pointer("/spec/claimRef/name"))) {
                (_, name) if name.is_empty() => String::new(),
                (ns, name) => format!("{ns}/{name}"),
            };
            vec![
                json!(s(o.pointer("/spec/capacity/storage"))),
                json!(access_modes(o.pointer("/spec/accessModes"))),
                json!(s(o.pointer("/spec/persistentVolumeReclaimPolicy"))),
                json!(s(o.pointer("/status/phase"))),
                json!(claim),
                json!(s(o.pointer("/spec/storageClassName"))),
                json!(or_unset(s(o.pointer("/spec/volumeAttributesClassName")))),
                json!(s(o.pointer("/status/reason"))),
                age_cell(),
                json!(s(o.pointer("/spec/volumeMode"))),
            ]
        }
        "StorageClass" => {
            vec![
                json!(s(o.get("provisioner"))),
                json!(or_default(s(o.get("reclaimPolicy")), "Delete")),
                json!(or_default(s(o.get("volumeBindingMode")), "Immediate")),
                json!(o.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false).to_string()),
                age_cell(),
            ]
        }
        "Ingress" => {
            let rules = o.pointer("/spec/rules").and_then(Value::as_array).cloned().unwrap_or_default();
            let hosts: Vec<String> = rules.iter().map(|r| s(r.get("host"))).filter(|h| !h.is_empty()).collect();
            let address: Vec<String> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|i| if i.get("ip").is_some() { s(i.get("ip")) } else { s(i.get("hostname")) })
                .collect();
            let tls = o.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
            vec![
                json!(or_none(s(o.pointer("/spec/ingressClassName")))),
                json!(if hosts.is_empty() { "*".to_string() } else { hosts.join(",") }),
                json!(address.join(",")),
                json!(if tls { "80, 443" } else { "80" }),
                age_cell(),
            ]
        }
        "IngressClass" => {
            let parameters = match (s(o.pointer("/spec/parameters/kind")), s(o.pointer("/spec/parameters/name"))) {
                (_, name) if name.is_empty() => "<none>".to_string(),
                (kind, name) => match s(o.pointer("/spec/parameters/apiGroup")) {
                    group if group.is_empty() => format!("{kind}/{name}"),
                    group => format!("{kind}.{group}/{name}"),
                },
            };
            vec![json!(s(o.pointer("/spec/controller"))), json!(parameters), age_cell()]
        }
        "NetworkPolicy" => vec![json!(label_selector_text(o.pointer("/spec/podSelector"))), age_cell()],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = o.get("subjects").and_then(Value::as_array).cloned().unwrap_or_default();
            let of_kind = |kind: &str| {
                subjects
                    .iter()
                    .filter(|x| x.get("kind").and_then(Value::as_str) == Some(kind))
                    .map(|x| match (kind, s(x.get("namespace"))) {
                        ("ServiceAccount", ns) => format!("{ns}/{}", s(x.get("name"))),
                        _ => s(x.get("name")),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                json!(format!("{}/{}", s(o.pointer("/roleRef/kind")), s(o.pointer("/roleRef/name")))),
                age_cell(),
                json!(of_kind("User")),
                json!(of_kind("Group")),
                json!(of_kind("ServiceAccount")),
            ]
        }
        "Lease" => vec![json!(s(o.pointer("/spec/holderIdentity"))), age_cell()],
        "PriorityClass" => vec![
            json!(o.get("value").and_then(Value::as_i64).unwrap_or(0)),
            json!(o.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            age_cell(),
            json!(or_default(s(o.get("preemptionPolicy")), "PreemptLowerPriority")),
        ],
        "ResourceQuota" => {
            let (requests, limits) = quota_usage(o);
            vec![age_cell(), json!(requests), json!(limits)]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("port").and_then(Value::as_i64))
                .map(|p| p.to_string())
                .collect();
            let addresses: Vec<String> = o
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| e.get("addresses").and_then(Value::as_array).cloned().unwrap_or_default())
                .map(|a| s(Some(&a)))
                .collect();
            vec![
                json!(s(o.get("addressType"))),
                json!(if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") }),
                json!(if addresses.is_empty() { "<unset>".to_string() } else { shortened(&addresses, 3) }),
                age_cell(),
            ]
        }
        "HorizontalPodAutoscaler" => {
            // Printed from the v2 form whichever version was asked for, as kube prints its
            // internal version.
            let v2 = if o.get("apiVersion").and_then(Value::as_str) == Some("autoscaling/v1") {
                crate::convert::hpa_v1_to_v2(o.clone())
            } else {
                o.clone()
            };
            let min = v2.pointer("/spec/minReplicas").map_or_else(|| "<unset>".to_string(), |m| s(Some(m)));
            vec![
                json!(format!(
                    "{}/{}",
                    s(v2.pointer("/spec/scaleTargetRef/kind")),
                    s(v2.pointer("/spec/scaleTargetRef/name"))
                )),
                json!(hpa_targets(&v2)),
                json!(min),
                json!(int(&v2, "/spec/maxReplicas")),
                json!(int(&v2, "/status/currentReplicas")),
                age_cell(),
            ]
        }
        "PodTemplate" => {
            let (names, images) = template_containers(o, "/template/spec/containers");
            vec![json!(names), json!(images), json!(format_labels(o.pointer("/template/metadata/labels")))]
        }
        "CSIDriver" => {
            // kube's printer defaults: attach required unless said otherwise, the rest off.
            let flag = |pointer: &str, default: bool| o.pointer(pointer).and_then(Value::as_bool).unwrap_or(default);
            // An empty list is unset: kube's encoding (omitempty, protobuf) drops it.
            let tokens = match o.pointer("/spec/tokenRequests").and_then(Value::as_array) {
                Some(list) if !list.is_empty() => {
                    list.iter().map(|t| s(t.get("audience"))).collect::<Vec<_>>().join(",")
                }
                _ => "<unset>".to_string(),
            };
            let modes: Vec<String> = o
                .pointer("/spec/volumeLifecycleModes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|m| s(Some(m)))
                .collect();
            vec![
                json!(flag("/spec/attachRequired", true)),
                json!(flag("/spec/podInfoOnMount", false)),
                json!(flag("/spec/storageCapacity", false)),
                json!(tokens),
                json!(flag("/spec/requiresRepublish", false)),
                json!(or_none(modes.join(","))),
                age_cell(),
            ]
        }
        "CSINode" => vec![json!(o.pointer("/spec/drivers").and_then(Value::as_array).map_or(0, Vec::len)), age_cell()],
        "CSIStorageCapacity" => vec![json!(s(o.get("storageClassName"))), json!(or_unset(s(o.get("capacity"))))],
        "VolumeAttachment" => vec![
            json!(s(o.pointer("/spec/attacher"))),
            json!(s(o.pointer("/spec/source/persistentVolumeName"))),
            json!(s(o.pointer("/spec/nodeName"))),
            json!(o.pointer("/status/attached").and_then(Value::as_bool).unwrap_or(false)),
            age_cell(),
        ],
        _ => vec![age_cell()],
    }
}

fn or_unset(value: String) -> String {
    if value.is_empty() { "<unset>".into() } else { value }
}

fn or_default(value: String, default: &str) -> String {
    if value.is_empty() { default.into() } else { value }
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(modes: Option<&Value>) -> String {
    modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A LabelSelector as kube prints it (`app=web,tier in (a,b)`), `<none>` when it selects
/// everything.
fn label_selector_text(selector: Option<&Value>) -> String {
    let Some(selector) = selector else { return "<none>".into() };
    let mut parts: Vec<String> = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(Some(v))))
        .collect();
    for expression in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = s(expression.get("key"));
        let values: Vec<String> =
            expression.get("values").and_then(Value::as_array).into_iter().flatten().map(|v| s(Some(v))).collect();
        parts.push(match expression.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key,
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    if parts.is_empty() { "<none>".into() } else { parts.join(",") }
}

/// The first `max` items and how many more, as kube's endpoint columns print them.
fn shortened(items: &[String], max: usize) -> String {
    if items.len() <= max {
        return items.join(",");
    }
    format!("{} + {} more...", items[..max].join(","), items.len() - max)
}

/// A ResourceQuota's REQUEST and LIMIT columns: `used/hard` per resource, limits apart.
fn quota_usage(quota: &Value) -> (String, String) {
    let hard = quota.pointer("/status/hard").and_then(Value::as_object).cloned().unwrap_or_default();
    let used = quota.pointer("/status/used").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    for (resource, amount) in &hard {
        let now = used.get(resource).map_or_else(|| "0".to_string(), |u| s(Some(u)));
        let text = format!("{resource}: {now}/{}", s(Some(amount)));
        if resource.starts_with("limits.") { limits.push(text) } else { requests.push(text) }
    }
    (requests.join(", "), limits.join(", "))
}

/// kubectl's TARGETS column (kube's `formatHPAMetrics`): `cpu: 42%/80%`, current over
/// target per metric, the status matched to the spec by position, two at most.
fn hpa_targets(hpa: &Value) -> String {
    let specs = hpa.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = hpa.pointer("/status/currentMetrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let unknown = || "<unknown>".to_string();
    let text = |v: Option<&Value>| v.filter(|v| !v.is_null()).map(|v| s(Some(v)));
    let mut list = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let kind = spec.get("type").and_then(Value::as_str).unwrap_or("");
        let Some(field) = crate::convert::metric_source_field(kind) else {
            list.push("<unknown type>".to_string());
            continue;
        };
        let source = &spec[field];
        // kube pairs status and spec by position; conversion from v1 moves the cpu metric to
        // the end, so a status is paired with its own metric (by resource or metric name).
        let identity = |m: &Value| {
            (m.get("type").cloned(), m[field].get("name").cloned(), m[field].pointer("/metric/name").cloned())
        };
        let status = statuses
            .get(i)
            .filter(|st| identity(st) == identity(spec))
            .or_else(|| statuses.iter().find(|st| identity(st) == identity(spec)))
            .map(|st| &st[field])
            .filter(|st| st.is_object());
        let current = |key: &str| status.and_then(|st| text(st.pointer(&format!("/current/{key}"))));
        let target_average = text(source.pointer("/target/averageValue"));
        list.push(match kind {
            "Resource" | "ContainerResource" => {
                let name = s(source.get("name"));
                match target_average {
                    Some(target) => format!("{name}: {}/{target}", current("averageValue").unwrap_or_else(unknown)),
                    None => {
                        let now = current("averageUtilization").map_or_else(unknown, |u| format!("{u}%"));
                        let target = text(source.pointer("/target/averageUtilization"))
                            .map_or_else(|| "<auto>".to_string(), |u| format!("{u}%"));
                        format!("{name}: {now}/{target}")
                    }
                }
            }
            "Pods" => {
                format!("{}/{}", current("averageValue").unwrap_or_else(unknown), target_average.unwrap_or_default())
            }
            _ => match target_average {
                Some(target) => format!("{}/{target} (avg)", current("averageValue").unwrap_or_else(unknown)),
                None => format!(
                    "{}/{}",
                    current("value").unwrap_or_else(unknown),
                    text(source.pointer("/target/value")).unwrap_or_default()
                ),
            },
        });
    }
    let count = list.len();
    if count > 2 {
        list.truncate(2);
        return format!("{} + {} more...", list.join(", "), count - 2);
    }
    list.join(", ")
}

fn event_row(o: &Value) -> Vec<Value> {
    // An events.k8s.io/v1 Event prints as the core Event it is stored as.
    let core;
    let o = if o.get("apiVersion").and_then(Value::as_str) == Some("events.k8s.io/v1") {
        core = crate::convert::events_v1_to_core_event(o.clone());
        &core
    } else {
        o
    };
    let last = [s(o.get("lastTimestamp")), s(o.get("eventTime")), meta_str(o, "creationTimestamp").to_string()]
        .into_iter()
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let object = format!(
        "{}/{}",
        s(o.pointer("/involvedObject/kind")).to_ascii_lowercase(),
        s(o.pointer("/involvedObject/name"))
    );
    vec![
        json!(age(&last)),
        json!(s(o.get("type"))),
        json!(s(o.get("reason"))),
        json!(object),
        json!(s(o.get("message"))),
    ]
}

/// Cells of a custom resource's `additionalPrinterColumns` (JSONPath limited to `.a.b.c`).
fn custom_cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let mut cells = Vec::new();
    for column in &rt.printer_columns {
        let path = column.get("jsonPath").and_then(Value::as_str).unwrap_or("");
        let pointer = path.trim_start_matches('.').replace('.', "/");
        let value = o.pointer(&format!("/{pointer}")).cloned().unwrap_or(Value::Null);
        let value = if column.get("type").and_then(Value::as_str) == Some("date") {
            value.as_str().map(|t| json!(age(t))).unwrap_or(Value::Null)
        } else {
            value
        };
        cells.push(value);
    }
    cells.push(json!(age(meta_str(o, "creationTimestamp"))));
    cells
}

fn column_definitions(rt: &ResourceType) -> Vec<Value> {
    let definition = |name: &str, kind: &str, priority: u64, description: &str| json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" }, "description": description, "priority": priority});
    if !rt.printer_columns.is_empty() {
        let mut out = vec![definition("Name", "string", 0, NAME.description)];
        for c in &rt.printer_columns {
            let kind = c.get("type").and_then(Value::as_str).unwrap_or("string");
            out.push(definition(
                c.get("name").and_then(Value::as_str).unwrap_or(""),
                if kind == "date" { "string" } else { kind },
                c.get("priority").and_then(Value::as_u64).unwrap_or(0),
                c.get("description").and_then(Value::as_str).unwrap_or(""),
            ));
        }
        out.push(definition("Age", "string", 0, AGE.description));
        return out;
    }
    columns(&rt.kind)
        .iter()
        .map(|c| {
            let mut column = definition(c.name, c.kind, c.priority as u64, c.description);
            if !c.format.is_empty() {
                column["format"] = json!(c.format);
            }
            column
        })
        .collect()
}

fn row(rt: &ResourceType, object: &Value, include_object: &str) -> Value {
    let cells = if !rt.printer_columns.is_empty() {
        let mut cells = vec![json!(crate::object::name(object))];
        cells.extend(custom_cells(rt, object));
        cells
    } else if rt.kind == "Event" {
        event_row(object)
    } else {
        let mut cells = vec![json!(name_cell(rt, object))];
        cells.extend(cells_for(rt, object));
        cells
    };
    let embedded = match include_object {
        "None" => Value::Null,
        "Object" => object.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    };
    json!({"cells": cells, "object": embedded})
}

/// The NAME cell; kube marks the default StorageClass in it (`standard (default)`).
fn name_cell(rt: &ResourceType, object: &Value) -> String {
    let name = crate::object::name(object);
    let annotations = object.pointer("/metadata/annotations");
    let is_default = rt.kind == "StorageClass"
        && ["storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class"]
            .iter()
            .any(|k| annotations.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"));
    if is_default { format!("{name} (default)") } else { name.to_string() }
}

fn cells_for(rt: &ResourceType, object: &Value) -> Vec<Value> {
    cells(&rt.kind, object)
}

/// A Table of `objects`; `list_meta` is the list's metadata (resourceVersion, continue).
pub fn table(rt: &ResourceType, objects: &[Value], list_meta: Value, include_object: &str) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_definitions(rt),
        "rows": objects.iter().map(|o| row(rt, o, include_object)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtins;

    #[test]
    fn every_row_has_a_cell_per_column() {
        let objects = [
            json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
            json!({"metadata": {"name": "y"}}),
        ];
        for rt in builtins() {
            let t = table(&rt, &objects, json!({}), "Metadata");
            let width = t["columnDefinitions"].as_array().unwrap().len();
            for row in t["rows"].as_array().unwrap() {
                assert_eq!(row["cells"].as_array().unwrap().len(), width, "{}", rt.kind);
            }
        }
    }

    #[test]
    fn pod_row_reads_like_kubectl() {
        let rt = builtins().into_iter().find(|t| t.kind == "Pod").unwrap();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table(&rt, &[pod], json!({}), "Metadata");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[6], "n1");
    }

    #[test]
    fn pod_disruption_budget_columns_are_kube_apiservers() {
        let rt = builtins().into_iter().find(|t| t.kind == "PodDisruptionBudget").unwrap();
        let pdb =
            json!({"metadata": {"name": "web"}, "spec": {"minAvailable": 2}, "status": {"disruptionsAllowed": 1}});
        let t = table(&rt, &[pdb], json!({}), "Metadata");
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Min Available", "Max Unavailable", "Allowed Disruptions", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!((&cells[1], &cells[2], &cells[3]), (&json!("2"), &json!("N/A"), &json!(1)));
        let by_percent = json!({"metadata": {"name": "db"}, "spec": {"maxUnavailable": "25%"}});
        let cells = &table(&rt, &[by_percent], json!({}), "Metadata")["rows"][0]["cells"];
        assert_eq!((&cells[1], &cells[2], &cells[3]), (&json!("N/A"), &json!("25%"), &json!(0)));
    }

    #[test]
    fn autoscaler_targets_read_like_kubectl() {
        let hpa = json!({
            "apiVersion": "autoscaling/v2",
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                ]},
            "status": {"currentReplicas": 2, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 42, "averageValue": "84m"}}},
            ]},
        });
        assert_eq!(hpa_targets(&hpa), "cpu: 42%/80%, memory: <unknown>/100Mi + 1 more...");
        let rt = builtins().into_iter().find(|t| t.kind == "HorizontalPodAutoscaler" && t.version == "v1").unwrap();
        let v1 = crate::convert::hpa_v2_to_v1(hpa);
        let cells = cells_for(&rt, &v1);
        assert_eq!(cells[0], "Deployment/web");
        // Conversion puts the v1 cpu field after the annotation's metrics, as kube does.
        assert_eq!(
            cells[1], "memory: <unknown>/100Mi, <unknown>/10 + 1 more...",
            "a v1 object prints its annotations' metrics"
        );
        assert_eq!((cells[2].clone(), cells[3].clone(), cells[4].clone()), (json!("1"), json!(5), json!(2)));
    }

    #[test]
    fn storage_rbac_and_quota_rows_read_like_kubectl() {
        let find = |kind: &str| builtins().into_iter().find(|t| t.kind == kind).unwrap();
        let cells = |kind: &str, o: Value| {
            let rt = find(kind);
            row(&rt, &o, "None")["cells"].as_array().unwrap().iter().map(|c| s(Some(c))).collect::<Vec<_>>()
        };
        let pv = cells(
            "PersistentVolume",
            json!({"metadata": {"name": "pv1"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": "shop", "name": "data"}, "storageClassName": "local-path", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"}}),
        );
        assert_eq!(pv[..8], ["pv1", "1Gi", "RWO,ROX", "Delete", "Bound", "shop/data", "local-path", "<unset>"]);
        let sc = cells(
            "StorageClass",
            json!({"metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}),
        );
        assert_eq!(
            sc[..5],
            ["local-path (default)", "rancher.io/local-path", "Delete", "WaitForFirstConsumer", "false"]
        );
        let binding = cells(
            "RoleBinding",
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "ann"}, {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}]}),
        );
        assert_eq!(
            (binding[1].as_str(), binding[3].as_str(), binding[5].as_str()),
            ("ClusterRole/view", "ann", "tools/ci")
        );
        let quota = cells(
            "ResourceQuota",
            json!({"metadata": {"name": "q"}, "status": {
            "hard": {"pods": "10", "requests.cpu": "2", "limits.memory": "4Gi"}, "used": {"pods": "3", "requests.cpu": "500m"}}}),
        );
        assert_eq!(quota[2..], ["pods: 3/10, requests.cpu: 500m/2", "limits.memory: 0/4Gi"]);
        let policy = cells(
            "NetworkPolicy",
            json!({"metadata": {"name": "n"}, "spec": {"podSelector": {"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}}}),
        );
        assert_eq!(policy[1], "app=web,tier in (a,b)");
        let slice = cells(
            "EndpointSlice",
            json!({"metadata": {"name": "s"}, "addressType": "IPv4", "ports": [{"port": 80}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]}),
        );
        assert_eq!(slice[1..4], ["IPv4", "80", "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more..."]);
    }

    /// A one-row table of `object` as `kind`: its column names and the row's cells.
    fn one_row(kind: &str, object: Value) -> (Vec<String>, Vec<Value>) {
        let rt = builtins().into_iter().find(|t| t.kind == kind).unwrap();
        let t = table(&rt, &[object], json!({}), "None");
        let names: Vec<String> = t["columnDefinitions"].as_array().unwrap().iter().map(|c| s(c.get("name"))).collect();
        (names, t["rows"][0]["cells"].as_array().unwrap().clone())
    }

    #[test]
    fn pod_template_rows_read_like_kubectl() {
        let (columns, cells) = one_row(
            "PodTemplate",
            json!({"metadata": {"name": "web"}, "template": {
                "metadata": {"labels": {"app": "shop", "app.kubernetes.io/name": "web"}},
                "spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "busybox"}]}}}),
        );
        assert_eq!(columns, ["Name", "Containers", "Images", "Pod Labels"]);
        // Sorted as `k=v` strings, as Go sorts them: `.` comes before `=`.
        assert_eq!(
            cells,
            [json!("web"), json!("a,b"), json!("nginx,busybox"), json!("app.kubernetes.io/name=web,app=shop")]
        );
        let (_, cells) = one_row("PodTemplate", json!({"metadata": {"name": "bare"}, "template": {"spec": {}}}));
        assert_eq!(cells, [json!("bare"), json!(""), json!(""), json!("<none>")]);
    }

    #[test]
    fn csi_driver_rows_read_like_kubectl() {
        let (columns, cells) = one_row(
            "CSIDriver",
            json!({"metadata": {"name": "ebs.csi.aws.com"}, "spec": {
                "attachRequired": false, "podInfoOnMount": true, "storageCapacity": true, "requiresRepublish": true,
                "tokenRequests": [{"audience": "vault"}, {"audience": "sts.amazonaws.com", "expirationSeconds": 3600}],
                "volumeLifecycleModes": ["Persistent", "Ephemeral"]}}),
        );
        assert_eq!(
            columns,
            [
                "Name",
                "AttachRequired",
                "PodInfoOnMount",
                "StorageCapacity",
                "TokenRequests",
                "RequiresRepublish",
                "Modes",
                "Age",
            ]
        );
        assert_eq!(
            cells,
            [
                json!("ebs.csi.aws.com"),
                json!(false),
                json!(true),
                json!(true),
                json!("vault,sts.amazonaws.com"),
                json!(true),
                json!("Persistent,Ephemeral"),
                json!("<unknown>"),
            ]
        );
        // Unset: attach is required, the rest off; an empty token list is no list.
        let (_, cells) = one_row("CSIDriver", json!({"metadata": {"name": "d"}, "spec": {"tokenRequests": []}}));
        assert_eq!(
            cells,
            [
                json!("d"),
                json!(true),
                json!(false),
                json!(false),
                json!("<unset>"),
                json!(false),
                json!("<none>"),
                json!("<unknown>"),
            ]
        );
        let rt = builtins().into_iter().find(|t| t.kind == "CSIDriver").unwrap();
        let definitions = column_definitions(&rt);
        let attach = definitions[1]["description"].as_str().unwrap();
        assert!(attach.ends_with("will be called.\n\nThis field is immutable."), "{attach}");
        assert_eq!((&definitions[1]["type"], &definitions[4]["type"]), (&json!("boolean"), &json!("string")));
    }

    #[test]
    fn csi_node_rows_read_like_kubectl() {
        let (columns, cells) = one_row(
            "CSINode",
            json!({"metadata": {"name": "n1"}, "spec": {"drivers": [
                {"name": "ebs.csi.aws.com", "nodeID": "i-1"}, {"name": "efs.csi.aws.com", "nodeID": "i-1"}]}}),
        );
        assert_eq!(columns, ["Name", "Drivers", "Age"]);
        assert_eq!(cells, [json!("n1"), json!(2), json!("<unknown>")]);
        let (_, cells) = one_row("CSINode", json!({"metadata": {"name": "n2"}, "spec": {}}));
        assert_eq!(cells, [json!("n2"), json!(0), json!("<unknown>")]);
    }

    #[test]
    fn csi_storage_capacity_rows_read_like_kubectl() {
        let (columns, cells) = one_row(
            "CSIStorageCapacity",
            json!({"metadata": {"name": "c1"}, "storageClassName": "fast", "capacity": "10Gi"}),
        );
        // No AGE column, as in kube.
        assert_eq!(columns, ["Name", "StorageClassName", "Capacity"]);
        assert_eq!(cells, [json!("c1"), json!("fast"), json!("10Gi")]);
        let (_, cells) = one_row("CSIStorageCapacity", json!({"metadata": {"name": "c2"}, "storageClassName": "fast"}));
        assert_eq!(cells, [json!("c2"), json!("fast"), json!("<unset>")]);
    }

    #[test]
    fn volume_attachment_rows_read_like_kubectl() {
        let (columns, cells) = one_row(
            "VolumeAttachment",
            json!({"metadata": {"name": "csi-123"}, "spec": {"attacher": "ebs.csi.aws.com", "nodeName": "n1",
                "source": {"persistentVolumeName": "pv-1"}}, "status": {"attached": true}}),
        );
        assert_eq!(columns, ["Name", "Attacher", "PV", "Node", "Attached", "Age"]);
        assert_eq!(
            cells,
            [json!("csi-123"), json!("ebs.csi.aws.com"), json!("pv-1"), json!("n1"), json!(true), json!("<unknown>")]
        );
        // An inline volume has no PV; no status is not attached.
        let (_, cells) = one_row(
            "VolumeAttachment",
            json!({"metadata": {"name": "csi-456"}, "spec": {"attacher": "ebs.csi.aws.com", "nodeName": "n1",
                "source": {"inlineVolumeSpec": {"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}}}}}),
        );
        assert_eq!(
            cells,
            [json!("csi-456"), json!("ebs.csi.aws.com"), json!(""), json!("n1"), json!(false), json!("<unknown>")]
        );
        let rt = builtins().into_iter().find(|t| t.kind == "VolumeAttachment").unwrap();
        let formats: Vec<String> = column_definitions(&rt).iter().map(|c| s(c.get("format"))).collect();
        assert_eq!(formats, ["name", "name", "", "", "", ""]);
    }
}
