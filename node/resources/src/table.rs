//! `kubectl get` Table columns and rows per kind, as kube-apiserver prints them
//! (`pkg/printers/internalversion/printers.go`, rendered with `Wide: true`: the server always
//! sends the priority-1 cells and kubectl hides them unless `-o wide`).
//!
//! Kinds without a printer (Role, ClusterRole, LimitRange, CustomResourceDefinition, ...) get the
//! apiserver's default table: `Name` and `Created At`. Custom resources use the columns of their
//! CRD version (`additionalPrinterColumns`), see [`crd_columns`] and [`crd_cells`].

mod format;
mod jsonpath;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use format::{
    access_modes, age, format_label_selector, format_labels, human_duration, int, join_limited,
    label_selector_string, parse_time, since, str_at,
};

/// One column of a `meta.k8s.io/v1` Table (`TableColumnDefinition`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    /// "string", "integer", "number", "boolean" or "date".
    #[serde(rename = "type")]
    pub type_: String,
    /// "name" for the Name column, "" otherwise (CRD columns may carry an OpenAPI format).
    pub format: String,
    pub description: String,
    /// 0 = always shown; 1 = only with `-o wide`.
    pub priority: i32,
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DESC: &str = "Names of each container in the template.";
const IMAGES_DESC: &str = "Images referenced by each container in the template.";

/// Shorthand for a column: `(name, type, priority, description)`; "Name" gets format "name",
/// "Age" gets the creationTimestamp description when `description` is empty.
fn col(name: &str, type_: &str, priority: i32, description: &str) -> Column {
    let description = match (name, description) {
        ("Name", "") => NAME_DESC,
        ("Age", "") => CREATED_DESC,
        _ => description,
    };
    Column {
        name: name.to_string(),
        type_: type_.to_string(),
        format: if name == "Name" { "name" } else { "" }.to_string(),
        description: description.to_string(),
        priority,
    }
}

fn name_col() -> Column {
    col("Name", "string", 0, "")
}
fn age_col() -> Column {
    col("Age", "string", 0, "")
}
fn s(name: &str, description: &str) -> Column {
    col(name, "string", 0, description)
}
fn wide(name: &str, description: &str) -> Column {
    col(name, "string", 1, description)
}
fn integer(name: &str, description: &str) -> Column {
    col(name, "integer", 0, description)
}

/// The apiserver's default table for kinds without a printer.
fn default_columns() -> Vec<Column> {
    vec![name_col(), col("Created At", "date", 0, CREATED_DESC)]
}

/// Columns for a built-in kind (group "" for core). Kinds without an upstream printer get the
/// default table: Name, Created At.
pub fn columns(group: &str, kind: &str) -> Vec<Column> {
    let containers = || wide("Containers", CONTAINERS_DESC);
    let images = || wide("Images", IMAGES_DESC);
    match (group, kind) {
        ("", "Pod") => vec![
            name_col(),
            s("Ready", "The aggregate readiness state of this pod for accepting traffic."),
            s("Status", "The aggregate status of the containers in this pod."),
            s("Restarts", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age_col(),
            wide("IP", "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            wide("Node", "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName."),
            wide("Nominated Node", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods."),
            wide("Readiness Gates", "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        ("", "PodTemplate") => vec![
            name_col(),
            s("Containers", CONTAINERS_DESC),
            s("Images", IMAGES_DESC),
            s("Pod Labels", "The labels for the pod template."),
        ],
        ("policy", "PodDisruptionBudget") => vec![
            name_col(),
            s("Min Available", "The minimum number of pods that must be available."),
            s("Max Unavailable", "The maximum number of pods that may be unavailable."),
            integer("Allowed Disruptions", "Calculated number of pods that may be disrupted at this time."),
            age_col(),
        ],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => vec![
            name_col(),
            integer("Desired", "Replicas is the number of desired replicas."),
            integer("Current", "Replicas is the most recently observed number of replicas."),
            integer("Ready", "The number of ready replicas for this replica set."),
            age_col(),
            containers(),
            images(),
            wide("Selector", "Selector is a label query over pods that should match the replica count."),
        ],
        ("apps", "DaemonSet") => vec![
            name_col(),
            integer("Desired", "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod)."),
            integer("Current", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            integer("Ready", "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition."),
            integer("Up-to-date", "The total number of nodes that are running updated daemon pod"),
            integer("Available", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
            s("Node Selector", "NodeSelector is a selector which must be true for the pod to fit on a node."),
            age_col(),
            containers(),
            images(),
            wide("Selector", "A label query over pods that are managed by the daemon set."),
        ],
        ("batch", "Job") => vec![
            name_col(),
            s("Status", "Status of the job."),
            s("Completions", "The number of pods which reached phase Succeeded."),
            s("Duration", "Time required to complete the job."),
            age_col(),
            containers(),
            images(),
            wide("Selector", "A label query over pods that should match the pod count."),
        ],
        ("batch", "CronJob") => vec![
            name_col(),
            s("Schedule", "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            s("Timezone", "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
            col("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions."),
            integer("Active", "A list of pointers to currently running jobs."),
            s("Last Schedule", "Information when was the last time the job was successfully scheduled."),
            age_col(),
            containers(),
            images(),
            wide("Selector", "A label query over pods that should match the pod count."),
        ],
        ("", "Service") => vec![
            name_col(),
            s("Type", "type determines how the Service is exposed."),
            s("Cluster-IP", "clusterIP is the IP address of the service and is usually assigned randomly."),
            s("External-IP", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            s("Port(s)", "The list of ports that are exposed by this service."),
            age_col(),
            wide("Selector", "Route service traffic to pods with label keys and values matching this selector."),
        ],
        ("networking.k8s.io", "Ingress") => vec![
            name_col(),
            s("Class", "The name of the IngressClass resource that should be used for additional configuration"),
            s("Hosts", "Hosts that incoming requests are matched against before the ingress rule"),
            s("Address", "Address is a list containing ingress points for the load-balancer"),
            s("Ports", "Ports of TLS configurations that open"),
            age_col(),
        ],
        ("networking.k8s.io", "IngressClass") => vec![
            name_col(),
            s("Controller", "Controller that is responsible for handling this class"),
            s("Parameters", "A reference to a resource with additional parameters"),
            age_col(),
        ],
        ("apps", "StatefulSet") => vec![
            name_col(),
            s("Ready", "Number of the pod with ready state"),
            age_col(),
            containers(),
            images(),
        ],
        ("", "Endpoints") => vec![
            name_col(),
            s("Endpoints", "The set of all endpoints is the union of all subsets."),
            age_col(),
        ],
        ("", "Node") => vec![
            name_col(),
            s("Status", "The status of the node"),
            s("Roles", "The roles of the node"),
            age_col(),
            s("Version", "Kubelet Version reported by the node."),
            wide("Internal-IP", "List of addresses reachable to the node."),
            wide("External-IP", "List of addresses reachable to the node."),
            wide("OS-Image", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            wide("Kernel-Version", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            wide("Container-Runtime", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        ("", "Event") | ("events.k8s.io", "Event") => vec![
            s("Last Seen", "The time at which the most recent occurrence of this event was recorded."),
            s("Type", "Type of this event (Normal, Warning), new types could be added in the future"),
            s("Reason", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            s("Object", "The object that this event is about."),
            wide("Subobject", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement."),
            wide("Source", "The component reporting this event. Should be a short machine understandable string."),
            s("Message", "A human-readable description of the status of this operation."),
            wide("First Seen", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
            wide("Count", "The number of times this event has occurred."),
            Column { priority: 1, ..name_col() },
        ],
        ("", "Namespace") => vec![name_col(), s("Status", "The status of the namespace"), age_col()],
        ("", "Secret") => vec![
            name_col(),
            s("Type", "Used to facilitate programmatic handling of secret data."),
            s("Data", "Data contains the secret data."),
            age_col(),
        ],
        ("", "ServiceAccount") => vec![
            name_col(),
            s("Secrets", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
            age_col(),
        ],
        ("", "PersistentVolume") => vec![
            name_col(),
            s("Capacity", "capacity is the description of the persistent volume's resources and capacity."),
            s("Access Modes", "accessModes contains all ways the volume can be mounted."),
            s("Reclaim Policy", "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim."),
            s("Status", "phase indicates if a volume is available, bound to a claim, or released by a claim."),
            s("Claim", "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim."),
            s("StorageClass", "StorageClass of the pv"),
            s("VolumeAttributesClass", "VolumeAttributesClass of the pv"),
            s("Reason", "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI."),
            age_col(),
            wide("VolumeMode", "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state."),
        ],
        ("", "PersistentVolumeClaim") => vec![
            name_col(),
            s("Status", "phase represents the current phase of PersistentVolumeClaim."),
            s("Volume", "volumeName is the binding reference to the PersistentVolume backing this claim."),
            s("Capacity", "capacity represents the actual resources of the underlying volume."),
            s("Access Modes", "accessModes contains the actual access modes the volume backing the PVC has."),
            s("StorageClass", "StorageClass of the pvc"),
            s("VolumeAttributesClass", "VolumeAttributesClass of the pvc"),
            age_col(),
            wide("VolumeMode", "volumeMode defines what type of volume is required by the claim."),
        ],
        ("", "ComponentStatus") => vec![
            name_col(),
            s("Status", "Status of the component conditions"),
            s("Message", "Message of the component conditions"),
            s("Error", "Error of the component conditions"),
        ],
        ("apps", "Deployment") => vec![
            name_col(),
            s("Ready", "Number of the pod with ready state"),
            s("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            s("Available", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            age_col(),
            containers(),
            images(),
            wide("Selector", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            name_col(),
            s("Reference", "scaleTargetRef points to the target resource to scale, and is used to the pods for which metrics should be collected, as well as to actually change the replica count."),
            s("Targets", "metrics contains the specifications for which to use to calculate the desired replica count."),
            s("MinPods", "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down."),
            s("MaxPods", "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up."),
            s("Replicas", "currentReplicas is current number of replicas of pods managed by this autoscaler, as last seen by the autoscaler."),
            age_col(),
        ],
        ("", "ConfigMap") => vec![
            name_col(),
            s("Data", "Data contains the configuration data."),
            age_col(),
        ],
        ("networking.k8s.io", "NetworkPolicy") => vec![
            name_col(),
            s("Pod-Selector", "Selects the pods to which this NetworkPolicy object applies."),
            age_col(),
        ],
        ("rbac.authorization.k8s.io", "RoleBinding") => binding_columns("roleBinding"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => binding_columns("clusterRoleBinding"),
        ("certificates.k8s.io", "CertificateSigningRequest") => vec![
            name_col(),
            age_col(),
            s("SignerName", "Requested signer for the request."),
            s("Requestor", "Base64-encoded PKCS#10 CSR data"),
            s("RequestedDuration", "expirationSeconds is the requested duration of validity of the issued certificate."),
            s("Condition", "Conditions applied to the request, such as approval or denial."),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name_col(),
            s("Holder", "holderIdentity contains the identity of the holder of a current lease."),
            age_col(),
        ],
        ("storage.k8s.io", "StorageClass") => vec![
            name_col(),
            s("Provisioner", "provisioner indicates the type of the provisioner."),
            s("ReclaimPolicy", "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class."),
            s("VolumeBindingMode", "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound."),
            s("AllowVolumeExpansion", "allowVolumeExpansion shows whether the storage class allow volume expand."),
            age_col(),
        ],
        ("apps", "ControllerRevision") => vec![
            name_col(),
            s("Controller", "Controller of the object"),
            s("Revision", "Revision indicates the revision of the state represented by Data."),
            age_col(),
        ],
        ("", "ResourceQuota") => vec![
            name_col(),
            s("Request", "Request represents a minimum amount of cpu/memory that a container may consume."),
            s("Limit", "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
            age_col(),
        ],
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name_col(),
            integer("Value", "value represents the integer value of this priority class."),
            col("Global-Default", "boolean", 0, "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class."),
            age_col(),
            s("PreemptionPolicy", "preemptionPolicy is the Policy for preempting pods with lower priority."),
        ],
        ("node.k8s.io", "RuntimeClass") => vec![
            name_col(),
            s("Handler", "handler specifies the underlying runtime and configuration that the CRI implementation will use to handle pods of this class."),
            age_col(),
        ],
        ("storage.k8s.io", "VolumeAttachment") => vec![
            name_col(),
            Column { format: "name".into(), ..s("Attacher", "attacher indicates the name of the volume driver that MUST handle this request.") },
            s("PV", "persistentVolumeName represents the name of the persistent volume to attach."),
            s("Node", "nodeName represents the node that the volume should be attached to."),
            col("Attached", "boolean", 0, "attached indicates the volume is successfully attached."),
            age_col(),
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            name_col(),
            s("AddressType", "addressType specifies the type of address carried by this EndpointSlice."),
            s("Ports", "ports specifies the list of network ports exposed by each endpoint in this slice."),
            s("Endpoints", "endpoints is a list of unique endpoints in this slice."),
            age_col(),
        ],
        ("storage.k8s.io", "CSINode") => vec![
            name_col(),
            integer("Drivers", "Drivers indicates the number of CSI drivers registered on the node"),
            age_col(),
        ],
        ("storage.k8s.io", "CSIDriver") => vec![
            name_col(),
            col("AttachRequired", "boolean", 0, "attachRequired indicates this CSI volume driver requires an attach operation."),
            col("PodInfoOnMount", "boolean", 0, "podInfoOnMount indicates this CSI volume driver requires additional pod information during mount operations."),
            col("StorageCapacity", "boolean", 0, "storageCapacity indicates that the CSI volume driver wants pod scheduling to consider the storage capacity."),
            s("TokenRequests", "tokenRequests indicates the CSI driver needs pods' service account tokens it is mounting volume for to do necessary authentication."),
            col("RequiresRepublish", "boolean", 0, "requiresRepublish indicates the CSI driver wants NodePublishVolume being periodically called to reflect any possible change in the mounted volume."),
            s("Modes", "volumeLifecycleModes defines what kind of volumes this CSI volume driver supports."),
            age_col(),
        ],
        ("storage.k8s.io", "CSIStorageCapacity") => vec![
            name_col(),
            s("StorageClassName", "storageClassName represents the name of the StorageClass that the reported capacity applies to."),
            s("Capacity", "capacity is the value reported by the CSI driver in its GetCapacityResponse for a GetCapacityRequest with topology and parameters that match the previous fields."),
        ],
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration")
        | ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => vec![
            name_col(),
            integer("Webhooks", "Webhooks indicates the number of webhooks registered in this configuration"),
            age_col(),
        ],
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => vec![
            name_col(),
            integer("Validations", "Validations indicates the number of validation rules defined in this configuration"),
            s("ParamKind", "ParamKind specifies the kind of resources used to parameterize this policy"),
            age_col(),
        ],
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => vec![
            name_col(),
            s("PolicyName", "PolicyName indicates the policy definition which the policy binding binded to"),
            s("ParamRef", "ParamRef indicates the param resource which sets the configration param"),
            age_col(),
        ],
        _ => default_columns(),
    }
}

fn binding_columns(what: &str) -> Vec<Column> {
    vec![
        name_col(),
        s("Role", "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace."),
        age_col(),
        wide("Users", &format!("Users in the {what}")),
        wide("Groups", &format!("Groups in the {what}")),
        wide("ServiceAccounts", &format!("ServiceAccounts in the {what}")),
    ]
}

/// One row's cells for `obj`, in the order of [`columns`] (all priorities included).
pub fn cells(group: &str, kind: &str, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(str_at(obj, "/metadata/name"));
    let age = || json!(age(obj, now));
    let template_containers = |ptr: &str| {
        let (names, images) = layout_containers(obj.pointer(ptr));
        [json!(names), json!(images)]
    };
    match (group, kind) {
        ("", "Pod") => pod_cells(obj, now),
        ("", "PodTemplate") => {
            let [n, i] = template_containers("/template/spec/containers");
            vec![
                name,
                n,
                i,
                json!(format_labels(obj.pointer("/template/metadata/labels"))),
            ]
        }
        ("policy", "PodDisruptionBudget") => vec![
            name,
            json!(int_or_string(obj.pointer("/spec/minAvailable")).unwrap_or_else(|| "N/A".into())),
            json!(
                int_or_string(obj.pointer("/spec/maxUnavailable")).unwrap_or_else(|| "N/A".into())
            ),
            json!(int(obj, "/status/disruptionsAllowed")),
            age(),
        ],
        ("", "ReplicationController") => {
            let [n, i] = template_containers("/spec/template/spec/containers");
            vec![
                name,
                json!(int(obj, "/spec/replicas")),
                json!(int(obj, "/status/replicas")),
                json!(int(obj, "/status/readyReplicas")),
                age(),
                n,
                i,
                json!(format_labels(obj.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ReplicaSet") => {
            let [n, i] = template_containers("/spec/template/spec/containers");
            vec![
                name,
                json!(int(obj, "/spec/replicas")),
                json!(int(obj, "/status/replicas")),
                json!(int(obj, "/status/readyReplicas")),
                age(),
                n,
                i,
                json!(format_label_selector(obj.pointer("/spec/selector"))),
            ]
        }
        ("apps", "DaemonSet") => {
            let [n, i] = template_containers("/spec/template/spec/containers");
            vec![
                name,
                json!(int(obj, "/status/desiredNumberScheduled")),
                json!(int(obj, "/status/currentNumberScheduled")),
                json!(int(obj, "/status/numberReady")),
                json!(int(obj, "/status/updatedNumberScheduled")),
                json!(int(obj, "/status/numberAvailable")),
                json!(format_labels(
                    obj.pointer("/spec/template/spec/nodeSelector")
                )),
                age(),
                n,
                i,
                json!(format_label_selector(obj.pointer("/spec/selector"))),
            ]
        }
        ("batch", "Job") => {
            let [n, i] = template_containers("/spec/template/spec/containers");
            vec![
                name,
                json!(job_status(obj)),
                json!(job_completions(obj)),
                json!(job_duration(obj, now)),
                age(),
                n,
                i,
                json!(format_label_selector(obj.pointer("/spec/selector"))),
            ]
        }
        ("batch", "CronJob") => {
            let [n, i] = template_containers("/spec/jobTemplate/spec/template/spec/containers");
            let last = match obj
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
            {
                Some(t) => since(t, now),
                None => "<none>".into(),
            };
            let suspend = match obj.pointer("/spec/suspend").and_then(Value::as_bool) {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            vec![
                name,
                json!(str_at(obj, "/spec/schedule")),
                json!(obj
                    .pointer("/spec/timeZone")
                    .and_then(Value::as_str)
                    .unwrap_or("<none>")),
                json!(suspend),
                json!(arr_len(obj, "/status/active")),
                json!(last),
                age(),
                n,
                i,
                json!(format_label_selector(
                    obj.pointer("/spec/jobTemplate/spec/selector")
                )),
            ]
        }
        ("", "Service") => service_cells(obj, now),
        ("networking.k8s.io", "Ingress") => {
            let rules = arr(obj, "/spec/rules");
            let hosts: Vec<String> = rules
                .iter()
                .filter_map(|r| r.get("host").and_then(Value::as_str))
                .filter(|h| !h.is_empty())
                .map(String::from)
                .collect();
            let hosts = if hosts.is_empty() {
                "*".to_string()
            } else if hosts.len() > 3 {
                format!("{} + {} more...", hosts[..3].join(","), rules.len() - 3)
            } else {
                hosts.join(",")
            };
            let ports = if arr(obj, "/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name,
                json!(obj
                    .pointer("/spec/ingressClassName")
                    .and_then(Value::as_str)
                    .unwrap_or("<none>")),
                json!(hosts),
                json!(load_balancer_ingress(
                    obj.pointer("/status/loadBalancer/ingress")
                )),
                json!(ports),
                age(),
            ]
        }
        ("networking.k8s.io", "IngressClass") => {
            let params = match obj.pointer("/spec/parameters") {
                Some(p) if p.is_object() => {
                    let mut s = str_at(p, "/kind").to_string();
                    if let Some(g) = p.get("apiGroup").and_then(Value::as_str) {
                        s = format!("{s}.{g}");
                    }
                    format!("{s}/{}", str_at(p, "/name"))
                }
                _ => "<none>".into(),
            };
            vec![
                name,
                json!(str_at(obj, "/spec/controller")),
                json!(params),
                age(),
            ]
        }
        ("apps", "StatefulSet") => {
            let [n, i] = template_containers("/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(obj, "/status/readyReplicas"),
                    int(obj, "/spec/replicas")
                )),
                age(),
                n,
                i,
            ]
        }
        ("", "Endpoints") => vec![name, json!(format_endpoints(obj)), age()],
        ("", "Node") => node_cells(obj, now),
        ("", "Event") | ("events.k8s.io", "Event") => event_cells(group, obj, now),
        ("", "Namespace") => vec![name, json!(str_at(obj, "/status/phase")), age()],
        ("", "Secret") => vec![
            name,
            json!(str_at(obj, "/type")),
            json!(map_len(obj, "/data")),
            age(),
        ],
        ("", "ServiceAccount") => vec![name, json!(arr_len(obj, "/secrets")), age()],
        ("", "PersistentVolume") => {
            let claim = match obj.pointer("/spec/claimRef") {
                Some(c) if c.is_object() => {
                    format!("{}/{}", str_at(c, "/namespace"), str_at(c, "/name"))
                }
                _ => String::new(),
            };
            let mut phase = str_at(obj, "/status/phase").to_string();
            if obj
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null())
            {
                phase = "Terminating".into();
            }
            vec![
                name,
                json!(quantity(obj.pointer("/spec/capacity/storage"))),
                json!(access_modes(obj.pointer("/spec/accessModes"))),
                json!(str_at(obj, "/spec/persistentVolumeReclaimPolicy")),
                json!(phase),
                json!(claim),
                json!(storage_class(obj)),
                json!(unset_or(obj, "/spec/volumeAttributesClassName")),
                json!(str_at(obj, "/status/reason")),
                age(),
                json!(unset_or(obj, "/spec/volumeMode")),
            ]
        }
        ("", "PersistentVolumeClaim") => {
            let mut phase = str_at(obj, "/status/phase").to_string();
            if obj
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null())
            {
                phase = "Terminating".into();
            }
            let volume = str_at(obj, "/spec/volumeName");
            let (capacity, modes) = if volume.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    quantity(obj.pointer("/status/capacity/storage")),
                    access_modes(obj.pointer("/status/accessModes")),
                )
            };
            vec![
                name,
                json!(phase),
                json!(volume),
                json!(capacity),
                json!(modes),
                json!(storage_class(obj)),
                json!(unset_or(obj, "/spec/volumeAttributesClassName")),
                age(),
                json!(unset_or(obj, "/spec/volumeMode")),
            ]
        }
        ("", "ComponentStatus") => {
            let mut status = "Unknown";
            let (mut message, mut error) = ("", "");
            for c in arr(obj, "/conditions") {
                if c.get("type").and_then(Value::as_str) == Some("Healthy") {
                    status = if str_at(c, "/status") == "True" {
                        "Healthy"
                    } else {
                        "Unhealthy"
                    };
                    message = str_at(c, "/message");
                    error = str_at(c, "/error");
                    break;
                }
            }
            vec![name, json!(status), json!(message), json!(error)]
        }
        ("apps", "Deployment") => {
            let [n, i] = template_containers("/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(obj, "/status/readyReplicas"),
                    int(obj, "/spec/replicas")
                )),
                json!(int(obj, "/status/updatedReplicas")),
                json!(int(obj, "/status/availableReplicas")),
                age(),
                n,
                i,
                json!(label_selector_string(obj.pointer("/spec/selector"))),
            ]
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            let min = match obj.pointer("/spec/minReplicas").and_then(Value::as_i64) {
                Some(m) => m.to_string(),
                None => "<unset>".into(),
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    str_at(obj, "/spec/scaleTargetRef/kind"),
                    str_at(obj, "/spec/scaleTargetRef/name")
                )),
                json!(hpa_targets(obj)),
                json!(min),
                json!(int(obj, "/spec/maxReplicas")),
                json!(int(obj, "/status/currentReplicas")),
                age(),
            ]
        }
        ("", "ConfigMap") => vec![
            name,
            json!(map_len(obj, "/data") + map_len(obj, "/binaryData")),
            age(),
        ],
        ("networking.k8s.io", "NetworkPolicy") => vec![
            name,
            json!(format_label_selector(Some(
                obj.pointer("/spec/podSelector").unwrap_or(&json!({}))
            ))),
            age(),
        ],
        ("rbac.authorization.k8s.io", "RoleBinding")
        | ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            let (mut users, mut groups, mut sas) = (vec![], vec![], vec![]);
            for subj in arr(obj, "/subjects") {
                let n = str_at(subj, "/name");
                match str_at(subj, "/kind") {
                    "User" => users.push(n.to_string()),
                    "Group" => groups.push(n.to_string()),
                    "ServiceAccount" => sas.push(format!("{}/{}", str_at(subj, "/namespace"), n)),
                    _ => {}
                }
            }
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    str_at(obj, "/roleRef/kind"),
                    str_at(obj, "/roleRef/name")
                )),
                age(),
                json!(users.join(", ")),
                json!(groups.join(", ")),
                json!(sas.join(", ")),
            ]
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            let signer = match str_at(obj, "/spec/signerName") {
                "" => "<none>",
                s => s,
            };
            let duration = match obj
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64)
            {
                Some(secs) => human_duration(chrono::Duration::seconds(secs)),
                None => "<none>".into(),
            };
            vec![
                name,
                age(),
                json!(signer),
                json!(str_at(obj, "/spec/username")),
                json!(duration),
                json!(csr_condition(obj)),
            ]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![name, json!(str_at(obj, "/spec/holderIdentity")), age()]
        }
        ("storage.k8s.io", "StorageClass") => {
            let mut n = str_at(obj, "/metadata/name").to_string();
            let ann = |k: &str| {
                obj.pointer("/metadata/annotations")
                    .and_then(|a| a.get(k))
                    .and_then(Value::as_str)
                    == Some("true")
            };
            if ann("storageclass.kubernetes.io/is-default-class")
                || ann("storageclass.beta.kubernetes.io/is-default-class")
            {
                n.push_str(" (default)");
            }
            vec![
                json!(n),
                json!(str_at(obj, "/provisioner")),
                json!(obj
                    .pointer("/reclaimPolicy")
                    .and_then(Value::as_str)
                    .unwrap_or("Delete")),
                json!(obj
                    .pointer("/volumeBindingMode")
                    .and_then(Value::as_str)
                    .unwrap_or("Immediate")),
                json!(obj
                    .pointer("/allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)),
                age(),
            ]
        }
        ("apps", "ControllerRevision") => {
            let controller = arr(obj, "/metadata/ownerReferences")
                .iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                .map(|r| {
                    let api_version = str_at(r, "/apiVersion");
                    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
                    let kind = str_at(r, "/kind");
                    let gk = if group.is_empty() {
                        kind.to_string()
                    } else {
                        format!("{kind}.{group}")
                    };
                    if gk.is_empty() {
                        str_at(r, "/name").to_string()
                    } else {
                        format!("{}/{}", gk.to_lowercase(), str_at(r, "/name"))
                    }
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(controller), json!(int(obj, "/revision")), age()]
        }
        ("", "ResourceQuota") => {
            let mut request = vec![];
            let mut limit = vec![];
            if let Some(hard) = obj.pointer("/status/hard").and_then(Value::as_object) {
                let mut keys: Vec<&String> = hard.keys().collect();
                keys.sort();
                for k in keys {
                    let used =
                        quantity(obj.pointer("/status/used").and_then(|u| u.get(k.as_str())));
                    let used = if used.is_empty() {
                        "0".to_string()
                    } else {
                        used
                    };
                    let entry = format!("{k}: {used}/{}", quantity(hard.get(k.as_str())));
                    let pieces: Vec<&str> = k.split('.').collect();
                    if pieces.len() > 1 && pieces[0] == "limits" {
                        limit.push(entry);
                    } else {
                        request.push(entry);
                    }
                }
            }
            vec![
                name,
                json!(request.join(", ")),
                json!(limit.join(", ")),
                age(),
            ]
        }
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name,
            json!(int(obj, "/value")),
            json!(obj
                .pointer("/globalDefault")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age(),
            json!(str_at(obj, "/preemptionPolicy")),
        ],
        ("node.k8s.io", "RuntimeClass") => vec![name, json!(str_at(obj, "/handler")), age()],
        ("storage.k8s.io", "VolumeAttachment") => vec![
            name,
            json!(str_at(obj, "/spec/attacher")),
            json!(str_at(obj, "/spec/source/persistentVolumeName")),
            json!(str_at(obj, "/spec/nodeName")),
            json!(obj
                .pointer("/status/attached")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            age(),
        ],
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = arr(obj, "/ports")
                .iter()
                .map(|p| {
                    match (
                        p.get("port").and_then(Value::as_i64),
                        p.get("name").and_then(Value::as_str),
                    ) {
                        (Some(n), _) => n.to_string(),
                        (None, Some(n)) => n.to_string(),
                        _ => "*".to_string(),
                    }
                })
                .collect();
            let addrs: Vec<String> = arr(obj, "/endpoints")
                .iter()
                .flat_map(|e| arr(e, "/addresses"))
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            vec![
                name,
                json!(str_at(obj, "/addressType")),
                json!(join_limited(&ports, 3)),
                json!(join_limited(&addrs, 3)),
                age(),
            ]
        }
        ("storage.k8s.io", "CSINode") => vec![name, json!(arr_len(obj, "/spec/drivers")), age()],
        ("storage.k8s.io", "CSIDriver") => {
            let b = |p: &str, d: bool| obj.pointer(p).and_then(Value::as_bool).unwrap_or(d);
            let modes: Vec<&str> = arr(obj, "/spec/volumeLifecycleModes")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let tokens = match obj.pointer("/spec/tokenRequests").and_then(Value::as_array) {
                Some(t) => t
                    .iter()
                    .map(|t| str_at(t, "/audience"))
                    .collect::<Vec<_>>()
                    .join(","),
                None => "<unset>".into(),
            };
            vec![
                name,
                json!(b("/spec/attachRequired", true)),
                json!(b("/spec/podInfoOnMount", false)),
                json!(b("/spec/storageCapacity", false)),
                json!(tokens),
                json!(b("/spec/requiresRepublish", false)),
                json!(if modes.is_empty() {
                    "<none>".to_string()
                } else {
                    modes.join(",")
                }),
                age(),
            ]
        }
        ("storage.k8s.io", "CSIStorageCapacity") => {
            let cap = match obj.get("capacity") {
                Some(c) if !c.is_null() => quantity(Some(c)),
                _ => "<unset>".into(),
            };
            vec![name, json!(str_at(obj, "/storageClassName")), json!(cap)]
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration")
        | ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            vec![name, json!(arr_len(obj, "/webhooks")), age()]
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => {
            let param_kind = match obj.pointer("/spec/paramKind") {
                Some(p) if p.is_object() => {
                    format!("{}/{}", str_at(p, "/apiVersion"), str_at(p, "/kind"))
                }
                _ => "<unset>".into(),
            };
            vec![
                name,
                json!(arr_len(obj, "/spec/validations")),
                json!(param_kind),
                age(),
            ]
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => {
            let param = match obj.pointer("/spec/paramRef") {
                Some(p) if p.is_object() => {
                    let n = str_at(p, "/name");
                    let ns = str_at(p, "/namespace");
                    if !n.is_empty() {
                        if ns.is_empty() {
                            format!("*/{n}")
                        } else {
                            format!("{ns}/{n}")
                        }
                    } else if let Some(sel) = p.get("selector") {
                        label_selector_string(Some(sel))
                    } else {
                        "<unset>".into()
                    }
                }
                _ => "<unset>".into(),
            };
            vec![
                name,
                json!(str_at(obj, "/spec/policyName")),
                json!(param),
                age(),
            ]
        }
        _ => default_cells(obj),
    }
}

/// Cells of the default table: name and creationTimestamp (RFC 3339, UTC).
fn default_cells(obj: &Value) -> Vec<Value> {
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_time)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
    vec![json!(str_at(obj, "/metadata/name")), json!(created)]
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}
fn arr_len(v: &Value, ptr: &str) -> i64 {
    arr(v, ptr).len() as i64
}
fn map_len(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr)
        .and_then(Value::as_object)
        .map(|m| m.len() as i64)
        .unwrap_or(0)
}
fn unset_or(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or("<unset>")
        .to_string()
}
/// A Quantity as stored (kube-apiserver prints its canonical form; stored values usually are).
fn quantity(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}
fn int_or_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
fn storage_class(obj: &Value) -> String {
    if let Some(c) = obj
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
    {
        return c.to_string();
    }
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn layout_containers(containers: Option<&Value>) -> (String, String) {
    let list = containers
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let names: Vec<&str> = list.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = list.iter().map(|c| str_at(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn condition_true(conditions: &[Value], type_: &str) -> bool {
    conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

fn pod_cells(pod: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let status = pod.get("status").cloned().unwrap_or(json!({}));
    let conditions = arr(&status, "/conditions");
    let spec_containers = arr(pod, "/spec/containers");
    let init_specs = arr(pod, "/spec/initContainers");
    let mut total = spec_containers.len();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_sidecar_restart: Option<DateTime<Utc>> = None;

    let phase = str_at(&status, "/phase").to_string();
    let mut reason = match str_at(&status, "/reason") {
        "" => phase.clone(),
        r => r.to_string(),
    };
    for c in conditions {
        if str_at(c, "/type") == "PodScheduled" && str_at(c, "/reason") == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .find(|c| str_at(c, "/name") == name)
            .is_some_and(|c| str_at(c, "/restartPolicy") == "Always")
    };
    total += init_specs
        .iter()
        .filter(|c| str_at(c, "/restartPolicy") == "Always")
        .count();

    let later = |cur: Option<DateTime<Utc>>, c: &Value| {
        let t = c
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(parse_time);
        match (cur, t) {
            (Some(a), Some(b)) if b > a => Some(b),
            (None, Some(b)) => Some(b),
            (a, _) => a,
        }
    };

    let mut initializing = false;
    for (i, c) in arr(&status, "/initContainerStatuses").iter().enumerate() {
        restarts += int(c, "/restartCount");
        last_restart = later(last_restart, c);
        let sidecar = is_sidecar(str_at(c, "/name"));
        if sidecar {
            sidecar_restarts += int(c, "/restartCount");
            last_sidecar_restart = later(last_sidecar_restart, c);
        }
        let terminated = c.pointer("/state/terminated").filter(|t| t.is_object());
        let waiting = c.pointer("/state/waiting").filter(|t| t.is_object());
        if terminated.is_some_and(|t| int(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar && c.get("started").and_then(Value::as_bool) == Some(true) {
            if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = match str_at(t, "/reason") {
                "" if int(t, "/signal") != 0 => format!("Init:Signal:{}", int(t, "/signal")),
                "" => format!("Init:ExitCode:{}", int(t, "/exitCode")),
                r => format!("Init:{r}"),
            };
        } else if let Some(w) = waiting.filter(|w| {
            let r = str_at(w, "/reason");
            !r.is_empty() && r != "PodInitializing"
        }) {
            reason = format!("Init:{}", str_at(w, "/reason"));
        } else {
            reason = format!("Init:{}/{}", i, init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(conditions, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for c in arr(&status, "/containerStatuses").iter().rev() {
            restarts += int(c, "/restartCount");
            last_restart = later(last_restart, c);
            let terminated = c.pointer("/state/terminated").filter(|t| t.is_object());
            let waiting = c.pointer("/state/waiting").filter(|t| t.is_object());
            let running = c.pointer("/state/running").is_some_and(|t| t.is_object());
            if let Some(w) = waiting.filter(|w| !str_at(w, "/reason").is_empty()) {
                reason = str_at(w, "/reason").to_string();
            } else if let Some(t) = terminated {
                reason = match str_at(t, "/reason") {
                    "" if int(t, "/signal") != 0 => format!("Signal:{}", int(t, "/signal")),
                    "" => format!("ExitCode:{}", int(t, "/exitCode")),
                    r => r.to_string(),
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true) && running {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }

    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    if deleting && str_at(&status, "/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };

    let or_none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    let pod_ip = arr(&status, "/podIPs")
        .first()
        .map(|p| str_at(p, "/ip").to_string())
        .unwrap_or_else(|| str_at(&status, "/podIP").to_string());
    let gates = arr(pod, "/spec/readinessGates");
    let readiness = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let ok = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .find(|c| str_at(c, "/type") == str_at(g, "/conditionType"))
                    .is_some_and(|c| str_at(c, "/status") == "True")
            })
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        json!(str_at(pod, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        json!(age(pod, now)),
        json!(or_none(&pod_ip)),
        json!(or_none(str_at(pod, "/spec/nodeName"))),
        json!(or_none(str_at(&status, "/nominatedNodeName"))),
        json!(readiness),
    ]
}

fn job_status(job: &Value) -> &'static str {
    let conds = arr(job, "/status/conditions");
    if condition_true(conds, "Complete") {
        "Complete"
    } else if condition_true(conds, "Failed") {
        "Failed"
    } else if job
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        "Terminating"
    } else if condition_true(conds, "Suspended") {
        "Suspended"
    } else if condition_true(conds, "FailureTarget") {
        "FailureTarget"
    } else if condition_true(conds, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

fn job_completions(job: &Value) -> String {
    let succeeded = int(job, "/status/succeeded");
    match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = int(job, "/spec/parallelism");
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    }
}

fn job_duration(job: &Value, now: DateTime<Utc>) -> String {
    let t = |p: &str| job.pointer(p).and_then(Value::as_str).and_then(parse_time);
    match (t("/status/startTime"), t("/status/completionTime")) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now - start),
        (Some(start), Some(end)) => human_duration(end - start),
    }
}

fn load_balancer_ingress(ingress: Option<&Value>) -> String {
    let mut set: Vec<String> = ingress
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|i| {
            let ip = str_at(i, "/ip");
            let host = str_at(i, "/hostname");
            if !ip.is_empty() {
                Some(ip.to_string())
            } else if !host.is_empty() {
                Some(host.to_string())
            } else {
                None
            }
        })
        .collect();
    set.sort();
    set.dedup();
    set.join(",")
}

fn service_cells(svc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let type_ = str_at(svc, "/spec/type");
    let cluster_ip = arr(svc, "/spec/clusterIPs")
        .first()
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            svc.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        })
        .unwrap_or_else(|| "<none>".into());
    let external_ips: Vec<String> = arr(svc, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let external = match type_ {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let lb = load_balancer_ingress(svc.pointer("/status/loadBalancer/ingress"));
            if !external_ips.is_empty() {
                let mut all: Vec<String> = if lb.is_empty() {
                    vec![]
                } else {
                    lb.split(',').map(String::from).collect()
                };
                all.extend(external_ips);
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let port = int(p, "/port");
            let proto = str_at(p, "/protocol");
            let node_port = int(p, "/nodePort");
            if node_port > 0 {
                format!("{port}:{node_port}/{proto}")
            } else {
                format!("{port}/{proto}")
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        json!(str_at(svc, "/metadata/name")),
        json!(type_),
        json!(cluster_ip),
        json!(external),
        json!(ports),
        json!(age(svc, now)),
        json!(format_labels(svc.pointer("/spec/selector"))),
    ]
}

fn format_endpoints(ep: &Value) -> String {
    let subsets = arr(ep, "/subsets");
    if subsets.is_empty() {
        return "<none>".into();
    }
    let max = 3;
    let mut list = vec![];
    let mut count = 0;
    for ss in subsets {
        let addrs = arr(ss, "/addresses");
        let ports = arr(ss, "/ports");
        if ports.is_empty() {
            for a in addrs {
                if list.len() < max {
                    list.push(str_at(a, "/ip").to_string());
                }
                count += 1;
            }
        } else {
            for p in ports {
                for a in addrs {
                    if list.len() < max {
                        let ip = str_at(a, "/ip");
                        let port = int(p, "/port");
                        list.push(if ip.contains(':') {
                            format!("[{ip}]:{port}")
                        } else {
                            format!("{ip}:{port}")
                        });
                    }
                    count += 1;
                }
            }
        }
    }
    let ret = list.join(",");
    if count > max {
        format!("{ret} + {} more...", count - max)
    } else {
        ret
    }
}

fn node_cells(node: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut status = vec![];
    if let Some(c) = arr(node, "/status/conditions")
        .iter()
        .rev()
        .find(|c| str_at(c, "/type") == "Ready")
    {
        status.push(if str_at(c, "/status") == "True" {
            "Ready"
        } else {
            "NotReady"
        });
    }
    if status.is_empty() {
        status.push("Unknown");
    }
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<String> = vec![];
    if let Some(labels) = node.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.push(v.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let address = |t: &str| {
        arr(node, "/status/addresses")
            .iter()
            .find(|a| str_at(a, "/type") == t)
            .map(|a| str_at(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = |f: &str| match str_at(node, &format!("/status/nodeInfo/{f}")) {
        "" => "<unknown>".to_string(),
        v => v.to_string(),
    };
    vec![
        json!(str_at(node, "/metadata/name")),
        json!(status.join(",")),
        json!(roles),
        json!(age(node, now)),
        json!(str_at(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

/// core/v1 and events.k8s.io/v1 Events (same printer upstream; field names differ).
fn event_cells(group: &str, ev: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let new_api = group == "events.k8s.io";
    let f = |core: &str, events: &str| {
        if new_api {
            events.to_string()
        } else {
            core.to_string()
        }
    };
    let ts = |p: &str| {
        ev.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let micro_since = |p: &str| match ts(p) {
        Some(t) => since(t, now),
        None => "<unknown>".to_string(),
    };
    let first = match ts(&f("/firstTimestamp", "/deprecatedFirstTimestamp")) {
        Some(t) => since(t, now),
        None => micro_since("/eventTime"),
    };
    let mut last = match ts(&f("/lastTimestamp", "/deprecatedLastTimestamp")) {
        Some(t) => since(t, now),
        None => first.clone(),
    };
    let mut count = int(ev, &f("/count", "/deprecatedCount"));
    if ev.get("series").is_some_and(Value::is_object) {
        last = micro_since("/series/lastObservedTime");
        count = int(ev, "/series/count");
    } else if count == 0 {
        count = 1;
    }
    let involved = ev
        .pointer(&f("/involvedObject", "/regarding"))
        .cloned()
        .unwrap_or(json!({}));
    let kind = str_at(&involved, "/kind").to_lowercase();
    let target = match str_at(&involved, "/name") {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let first_non_empty = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            a.to_string()
        }
    };
    let component = first_non_empty(
        str_at(ev, &f("/source/component", "/deprecatedSource/component")),
        str_at(ev, "/reportingController"),
    );
    let host = first_non_empty(
        str_at(ev, &f("/source/host", "/deprecatedSource/host")),
        str_at(ev, "/reportingInstance"),
    );
    let source = if host.is_empty() {
        component
    } else {
        format!("{component}, {host}")
    };
    vec![
        json!(last),
        json!(str_at(ev, "/type")),
        json!(str_at(ev, "/reason")),
        json!(target),
        json!(str_at(&involved, "/fieldPath")),
        json!(source),
        json!(str_at(ev, &f("/message", "/note")).trim()),
        json!(first),
        json!(count),
        json!(str_at(ev, "/metadata/name")),
    ]
}

fn csr_condition(csr: &Value) -> String {
    let (mut approved, mut denied, mut failed) = (false, false, false);
    for c in arr(csr, "/status/conditions") {
        match str_at(c, "/type") {
            "Approved" => approved = true,
            "Denied" => denied = true,
            "Failed" => failed = true,
            _ => {}
        }
    }
    let mut status = if denied {
        "Denied"
    } else if approved {
        "Approved"
    } else {
        "Pending"
    }
    .to_string();
    if failed {
        status.push_str(",Failed");
    }
    if !str_at(csr, "/status/certificate").is_empty() {
        status.push_str(",Issued");
    }
    status
}

/// HPA TARGETS for autoscaling/v2 objects (and v1 objects via targetCPUUtilizationPercentage).
fn hpa_targets(hpa: &Value) -> String {
    let specs = arr(hpa, "/spec/metrics");
    if specs.is_empty() {
        if let Some(target) = hpa
            .pointer("/spec/targetCPUUtilizationPercentage")
            .and_then(Value::as_i64)
        {
            let current = match hpa
                .pointer("/status/currentCPUUtilizationPercentage")
                .and_then(Value::as_i64)
            {
                Some(c) => format!("{c}%"),
                None => "<unknown>".into(),
            };
            return format!("cpu: {current}/{target}%");
        }
        return "<none>".into();
    }
    let statuses = arr(hpa, "/status/currentMetrics");
    let q = |v: Option<&Value>| quantity(v);
    let mut list = vec![];
    for (i, spec) in specs.iter().enumerate() {
        let status = statuses.get(i);
        let st = |key: &str, ptr: &str| {
            status
                .and_then(|s| s.get(key))
                .filter(|v| v.is_object())
                .and_then(|v| v.pointer(ptr))
        };
        let has = |key: &str| {
            status
                .and_then(|s| s.get(key))
                .is_some_and(Value::is_object)
        };
        let entry = match str_at(spec, "/type") {
            t @ ("External" | "Object") => {
                let key = if t == "External" {
                    "external"
                } else {
                    "object"
                };
                if let Some(avg) = spec.pointer(&format!("/{key}/target/averageValue")) {
                    let cur = st(key, "/current/averageValue")
                        .map(|v| q(Some(v)))
                        .unwrap_or_else(|| "<unknown>".into());
                    format!("{cur}/{} (avg)", q(Some(avg)))
                } else {
                    let cur = if has(key) {
                        q(st(key, "/current/value"))
                    } else {
                        "<unknown>".into()
                    };
                    format!("{cur}/{}", q(spec.pointer(&format!("/{key}/target/value"))))
                }
            }
            "Pods" => {
                let cur = if has("pods") {
                    q(st("pods", "/current/averageValue"))
                } else {
                    "<unknown>".into()
                };
                format!("{cur}/{}", q(spec.pointer("/pods/target/averageValue")))
            }
            t @ ("Resource" | "ContainerResource") => {
                let key = if t == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let rname = str_at(spec, &format!("/{key}/name"));
                if let Some(avg) = spec.pointer(&format!("/{key}/target/averageValue")) {
                    let cur = if has(key) {
                        q(st(key, "/current/averageValue"))
                    } else {
                        "<unknown>".into()
                    };
                    format!("{rname}: {cur}/{}", q(Some(avg)))
                } else {
                    let cur = st(key, "/current/averageUtilization")
                        .and_then(Value::as_i64)
                        .map(|u| format!("{u}%"))
                        .unwrap_or_else(|| "<unknown>".into());
                    let target = spec
                        .pointer(&format!("/{key}/target/averageUtilization"))
                        .and_then(Value::as_i64)
                        .map(|u| format!("{u}%"))
                        .unwrap_or_else(|| "<auto>".into());
                    format!("{rname}: {cur}/{target}")
                }
            }
            _ => "<unknown type>".into(),
        };
        list.push(entry);
    }
    let max = 2;
    if list.len() > max {
        format!("{} + {} more...", list[..max].join(", "), list.len() - max)
    } else {
        list.join(", ")
    }
}

fn crd_column_list(printer_columns: &Value) -> &[Value] {
    let v = printer_columns
        .get("additionalPrinterColumns")
        .unwrap_or(printer_columns);
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Columns of a custom resource from its CRD version's `additionalPrinterColumns` (the array, or a
/// CRD version object holding it). Name comes first. As upstream (`serveDefaultColumnsIfEmpty`),
/// a version without printer columns gets a single `Age` column (type date).
pub fn crd_columns(printer_columns: &Value) -> Vec<Column> {
    let mut out = vec![name_col()];
    let cols = crd_column_list(printer_columns);
    if cols.is_empty() {
        out.push(col("Age", "date", 0, CREATED_DESC));
        return out;
    }
    for c in cols {
        let path = str_at(c, "/jsonPath");
        let description = match str_at(c, "/description") {
            "" => format!("Custom resource definition column (in JSONPath format): {path}"),
            d => d.to_string(),
        };
        out.push(Column {
            name: str_at(c, "/name").to_string(),
            type_: str_at(c, "/type").to_string(),
            format: str_at(c, "/format").to_string(),
            description,
            priority: int(c, "/priority") as i32,
        });
    }
    out
}

/// Cells of a custom resource for [`crd_columns`]. Missing values are `null`; "date" columns are
/// rendered as ages; "string" columns print non-strings as kubectl's JSONPath does.
pub fn crd_cells(printer_columns: &Value, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut out = vec![json!(str_at(obj, "/metadata/name"))];
    let cols = crd_column_list(printer_columns);
    if cols.is_empty() {
        out.push(json!(age(obj, now)));
        return out;
    }
    for c in cols {
        let value = jsonpath::first(obj, str_at(c, "/jsonPath"));
        out.push(match value {
            None | Some(Value::Null) => Value::Null,
            Some(v) => cell_for_json_value(str_at(c, "/type"), v, now),
        });
    }
    out
}

fn cell_for_json_value(type_: &str, v: &Value, now: DateTime<Utc>) -> Value {
    match type_ {
        "string" => match v {
            Value::String(s) => json!(s),
            Value::Array(_) | Value::Object(_) => json!(v.to_string()),
            other => json!(other.to_string()),
        },
        "integer" => match v {
            Value::Number(n) => n
                .as_i64()
                .map(|i| json!(i))
                .or_else(|| n.as_f64().map(|f| json!(f as i64)))
                .unwrap_or(Value::Null),
            _ => Value::Null,
        },
        "number" => match v.as_f64() {
            Some(f) => json!(f),
            None => Value::Null,
        },
        "boolean" => match v {
            Value::Bool(b) => json!(b),
            _ => Value::Null,
        },
        "date" => match v.as_str() {
            Some(s) => match parse_time(s) {
                Some(_) => json!(since(s, now)),
                None => json!("<invalid>"),
            },
            None => Value::Null,
        },
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests;
