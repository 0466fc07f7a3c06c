//! Patch strategies of the built-in types, transcribed from the `patchStrategy` /
//! `patchMergeKey` struct tags (and `+listType`/`+listMapKey` markers) of
//! k8s.io/api, plus the small type graph needed to resolve a path such as
//! `Deployment.spec.template.spec.containers[].env` to its definition.
//!
//! Only fields that lead to a field with a strategy are listed; everything else
//! behaves like JSON merge patch (maps merge, lists replace / are atomic).

/// Patch strategy of one field, as emitted in OpenAPI as `x-kubernetes-patch-strategy`
/// and `x-kubernetes-patch-merge-key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldStrategy {
    /// `"merge"`, `"retainKeys"`, `"merge,retainKeys"` or `"replace"`.
    pub strategy: &'static str,
    /// Merge key for lists of objects with strategy `merge`.
    pub merge_key: Option<&'static str>,
}

/// How server-side apply treats a list (`x-kubernetes-list-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListType {
    Atomic,
    Set,
    Map(&'static [&'static str]),
}

/// What the schema knows about one property of a definition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prop {
    /// Definition of the value (of the list element, for lists), if known.
    pub child: Option<&'static str>,
    pub strategy: Option<&'static str>,
    pub merge_key: Option<&'static str>,
    pub list: ListType,
}

impl Prop {
    pub(crate) const UNKNOWN: Prop = Prop {
        child: None,
        strategy: None,
        merge_key: None,
        list: ListType::Atomic,
    };

    /// True when lists of this field merge (strategic merge patch `merge` strategy).
    pub(crate) fn merges_list(&self) -> bool {
        self.strategy
            .is_some_and(|s| s.split(',').any(|p| p == "merge"))
    }

    /// True when the field's map is replaced rather than merged.
    pub(crate) fn replaces(&self) -> bool {
        self.strategy == Some("replace")
    }
}

/// Definition used for the root of objects whose kind has no entry in the table:
/// only `metadata` (ObjectMeta) is known.
pub(crate) const UNKNOWN_ROOT: &str = "<object>";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

struct Row {
    def: &'static str,
    prop: &'static str,
    child: Option<&'static str>,
    strategy: Option<&'static str>,
    merge_key: Option<&'static str>,
    /// Server-side apply list-map keys when they differ from `[merge_key]`, or
    /// for `+listType=map` lists that have no patch strategy.
    ssa_keys: Option<&'static [&'static str]>,
}

macro_rules! core {
    ($n:literal) => {
        concat!("io.k8s.api.core.v1.", $n)
    };
}
macro_rules! apps {
    ($n:literal) => {
        concat!("io.k8s.api.apps.v1.", $n)
    };
}
macro_rules! batch {
    ($n:literal) => {
        concat!("io.k8s.api.batch.v1.", $n)
    };
}
macro_rules! meta {
    ($n:literal) => {
        concat!("io.k8s.apimachinery.pkg.apis.meta.v1.", $n)
    };
}

/// A struct-valued (or list-of-struct) field without a strategy: only a type-graph edge.
const fn edge(def: &'static str, prop: &'static str, child: &'static str) -> Row {
    Row {
        def,
        prop,
        child: Some(child),
        strategy: None,
        merge_key: None,
        ssa_keys: None,
    }
}

/// A list of objects with `patchStrategy:"merge" patchMergeKey:key`.
const fn keyed(
    def: &'static str,
    prop: &'static str,
    child: &'static str,
    key: &'static str,
) -> Row {
    Row {
        def,
        prop,
        child: Some(child),
        strategy: Some("merge"),
        merge_key: Some(key),
        ssa_keys: None,
    }
}

const fn with_strategy(mut row: Row, strategy: &'static str) -> Row {
    row.strategy = Some(strategy);
    row
}

const fn with_ssa_keys(mut row: Row, keys: &'static [&'static str]) -> Row {
    row.ssa_keys = Some(keys);
    row
}

/// A list of scalars with `patchStrategy:"merge"` (a set).
const fn set(def: &'static str, prop: &'static str) -> Row {
    Row {
        def,
        prop,
        child: None,
        strategy: Some("merge"),
        merge_key: None,
        ssa_keys: None,
    }
}

/// A list treated as a map by server-side apply only (`+listType=map`, no patch strategy).
const fn ssa_map(
    def: &'static str,
    prop: &'static str,
    child: &'static str,
    keys: &'static [&'static str],
) -> Row {
    Row {
        def,
        prop,
        child: Some(child),
        strategy: None,
        merge_key: None,
        ssa_keys: Some(keys),
    }
}

const CONTAINER_LIKE: [&str; 2] = [core!("Container"), core!("EphemeralContainer")];

static TABLE: &[Row] = &[
    // --- meta/v1
    set(meta!("ObjectMeta"), "finalizers"),
    keyed(
        meta!("ObjectMeta"),
        "ownerReferences",
        meta!("OwnerReference"),
        "uid",
    ),
    edge(
        meta!("ObjectMeta"),
        "managedFields",
        meta!("ManagedFieldsEntry"),
    ),
    edge(
        meta!("LabelSelector"),
        "matchExpressions",
        meta!("LabelSelectorRequirement"),
    ),
    // --- core/v1 Pod
    edge(core!("Pod"), "spec", core!("PodSpec")),
    edge(core!("Pod"), "status", core!("PodStatus")),
    edge(core!("PodTemplate"), "template", core!("PodTemplateSpec")),
    edge(core!("PodTemplateSpec"), "spec", core!("PodSpec")),
    with_strategy(
        keyed(core!("PodSpec"), "volumes", core!("Volume"), "name"),
        "merge,retainKeys",
    ),
    keyed(
        core!("PodSpec"),
        "initContainers",
        core!("Container"),
        "name",
    ),
    keyed(core!("PodSpec"), "containers", core!("Container"), "name"),
    keyed(
        core!("PodSpec"),
        "ephemeralContainers",
        core!("EphemeralContainer"),
        "name",
    ),
    keyed(
        core!("PodSpec"),
        "imagePullSecrets",
        core!("LocalObjectReference"),
        "name",
    ),
    keyed(core!("PodSpec"), "hostAliases", core!("HostAlias"), "ip"),
    with_ssa_keys(
        keyed(
            core!("PodSpec"),
            "topologySpreadConstraints",
            core!("TopologySpreadConstraint"),
            "topologyKey",
        ),
        &["topologyKey", "whenUnsatisfiable"],
    ),
    with_strategy(
        keyed(
            core!("PodSpec"),
            "resourceClaims",
            core!("PodResourceClaim"),
            "name",
        ),
        "merge,retainKeys",
    ),
    keyed(
        core!("PodSpec"),
        "schedulingGates",
        core!("PodSchedulingGate"),
        "name",
    ),
    edge(core!("PodSpec"), "tolerations", core!("Toleration")),
    edge(core!("PodSpec"), "affinity", core!("Affinity")),
    edge(
        core!("PodSpec"),
        "securityContext",
        core!("PodSecurityContext"),
    ),
    edge(core!("PodSpec"), "dnsConfig", core!("PodDNSConfig")),
    edge(core!("PodSpec"), "resources", core!("ResourceRequirements")),
    with_ssa_keys(
        keyed(
            CONTAINER_LIKE[0],
            "ports",
            core!("ContainerPort"),
            "containerPort",
        ),
        &["containerPort", "protocol"],
    ),
    keyed(CONTAINER_LIKE[0], "env", core!("EnvVar"), "name"),
    keyed(
        CONTAINER_LIKE[0],
        "volumeMounts",
        core!("VolumeMount"),
        "mountPath",
    ),
    keyed(
        CONTAINER_LIKE[0],
        "volumeDevices",
        core!("VolumeDevice"),
        "devicePath",
    ),
    edge(
        CONTAINER_LIKE[0],
        "resources",
        core!("ResourceRequirements"),
    ),
    edge(CONTAINER_LIKE[0], "envFrom", core!("EnvFromSource")),
    edge(
        CONTAINER_LIKE[0],
        "securityContext",
        core!("SecurityContext"),
    ),
    with_ssa_keys(
        keyed(
            CONTAINER_LIKE[1],
            "ports",
            core!("ContainerPort"),
            "containerPort",
        ),
        &["containerPort", "protocol"],
    ),
    keyed(CONTAINER_LIKE[1], "env", core!("EnvVar"), "name"),
    keyed(
        CONTAINER_LIKE[1],
        "volumeMounts",
        core!("VolumeMount"),
        "mountPath",
    ),
    keyed(
        CONTAINER_LIKE[1],
        "volumeDevices",
        core!("VolumeDevice"),
        "devicePath",
    ),
    edge(
        CONTAINER_LIKE[1],
        "resources",
        core!("ResourceRequirements"),
    ),
    ssa_map(
        core!("ResourceRequirements"),
        "claims",
        core!("ResourceClaim"),
        &["name"],
    ),
    keyed(
        core!("PodStatus"),
        "conditions",
        core!("PodCondition"),
        "type",
    ),
    keyed(core!("PodStatus"), "podIPs", core!("PodIP"), "ip"),
    keyed(core!("PodStatus"), "hostIPs", core!("HostIP"), "ip"),
    with_strategy(
        keyed(
            core!("PodStatus"),
            "resourceClaimStatuses",
            core!("PodResourceClaimStatus"),
            "name",
        ),
        "merge,retainKeys",
    ),
    edge(
        core!("PodStatus"),
        "initContainerStatuses",
        core!("ContainerStatus"),
    ),
    edge(
        core!("PodStatus"),
        "containerStatuses",
        core!("ContainerStatus"),
    ),
    edge(
        core!("PodStatus"),
        "ephemeralContainerStatuses",
        core!("ContainerStatus"),
    ),
    keyed(
        core!("ContainerStatus"),
        "volumeMounts",
        core!("VolumeMountStatus"),
        "mountPath",
    ),
    keyed(
        core!("ContainerStatus"),
        "allocatedResourcesStatus",
        core!("ResourceStatus"),
        "name",
    ),
    // --- core/v1 ReplicationController
    edge(
        core!("ReplicationController"),
        "spec",
        core!("ReplicationControllerSpec"),
    ),
    edge(
        core!("ReplicationController"),
        "status",
        core!("ReplicationControllerStatus"),
    ),
    edge(
        core!("ReplicationControllerSpec"),
        "template",
        core!("PodTemplateSpec"),
    ),
    keyed(
        core!("ReplicationControllerStatus"),
        "conditions",
        core!("ReplicationControllerCondition"),
        "type",
    ),
    // --- core/v1 Service
    edge(core!("Service"), "spec", core!("ServiceSpec")),
    edge(core!("Service"), "status", core!("ServiceStatus")),
    with_ssa_keys(
        keyed(core!("ServiceSpec"), "ports", core!("ServicePort"), "port"),
        &["port", "protocol"],
    ),
    keyed(
        core!("ServiceStatus"),
        "conditions",
        meta!("Condition"),
        "type",
    ),
    // --- core/v1 Node (taints and tolerations have no patch strategy upstream: they replace)
    edge(core!("Node"), "spec", core!("NodeSpec")),
    edge(core!("Node"), "status", core!("NodeStatus")),
    set(core!("NodeSpec"), "podCIDRs"),
    edge(core!("NodeSpec"), "taints", core!("Taint")),
    keyed(
        core!("NodeStatus"),
        "conditions",
        core!("NodeCondition"),
        "type",
    ),
    keyed(
        core!("NodeStatus"),
        "addresses",
        core!("NodeAddress"),
        "type",
    ),
    // --- core/v1 others
    edge(core!("Namespace"), "status", core!("NamespaceStatus")),
    keyed(
        core!("NamespaceStatus"),
        "conditions",
        core!("NamespaceCondition"),
        "type",
    ),
    edge(
        core!("PersistentVolumeClaim"),
        "status",
        core!("PersistentVolumeClaimStatus"),
    ),
    keyed(
        core!("PersistentVolumeClaimStatus"),
        "conditions",
        core!("PersistentVolumeClaimCondition"),
        "type",
    ),
    keyed(
        core!("ServiceAccount"),
        "secrets",
        core!("ObjectReference"),
        "name",
    ),
    // --- apps/v1
    edge(apps!("Deployment"), "spec", apps!("DeploymentSpec")),
    edge(apps!("Deployment"), "status", apps!("DeploymentStatus")),
    edge(
        apps!("DeploymentSpec"),
        "template",
        core!("PodTemplateSpec"),
    ),
    edge(apps!("DeploymentSpec"), "selector", meta!("LabelSelector")),
    with_strategy(
        edge(
            apps!("DeploymentSpec"),
            "strategy",
            apps!("DeploymentStrategy"),
        ),
        "retainKeys",
    ),
    keyed(
        apps!("DeploymentStatus"),
        "conditions",
        apps!("DeploymentCondition"),
        "type",
    ),
    edge(apps!("ReplicaSet"), "spec", apps!("ReplicaSetSpec")),
    edge(apps!("ReplicaSet"), "status", apps!("ReplicaSetStatus")),
    edge(
        apps!("ReplicaSetSpec"),
        "template",
        core!("PodTemplateSpec"),
    ),
    edge(apps!("ReplicaSetSpec"), "selector", meta!("LabelSelector")),
    keyed(
        apps!("ReplicaSetStatus"),
        "conditions",
        apps!("ReplicaSetCondition"),
        "type",
    ),
    edge(apps!("StatefulSet"), "spec", apps!("StatefulSetSpec")),
    edge(apps!("StatefulSet"), "status", apps!("StatefulSetStatus")),
    edge(
        apps!("StatefulSetSpec"),
        "template",
        core!("PodTemplateSpec"),
    ),
    edge(apps!("StatefulSetSpec"), "selector", meta!("LabelSelector")),
    edge(
        apps!("StatefulSetSpec"),
        "volumeClaimTemplates",
        core!("PersistentVolumeClaim"),
    ),
    keyed(
        apps!("StatefulSetStatus"),
        "conditions",
        apps!("StatefulSetCondition"),
        "type",
    ),
    edge(apps!("DaemonSet"), "spec", apps!("DaemonSetSpec")),
    edge(apps!("DaemonSet"), "status", apps!("DaemonSetStatus")),
    edge(apps!("DaemonSetSpec"), "template", core!("PodTemplateSpec")),
    edge(apps!("DaemonSetSpec"), "selector", meta!("LabelSelector")),
    keyed(
        apps!("DaemonSetStatus"),
        "conditions",
        apps!("DaemonSetCondition"),
        "type",
    ),
    // --- batch/v1
    edge(batch!("Job"), "spec", batch!("JobSpec")),
    edge(batch!("Job"), "status", batch!("JobStatus")),
    edge(batch!("JobSpec"), "template", core!("PodTemplateSpec")),
    edge(batch!("JobSpec"), "selector", meta!("LabelSelector")),
    keyed(
        batch!("JobStatus"),
        "conditions",
        batch!("JobCondition"),
        "type",
    ),
    edge(batch!("CronJob"), "spec", batch!("CronJobSpec")),
    edge(
        batch!("CronJobSpec"),
        "jobTemplate",
        batch!("JobTemplateSpec"),
    ),
    edge(batch!("JobTemplateSpec"), "spec", batch!("JobSpec")),
    // --- policy/v1
    edge(
        "io.k8s.api.policy.v1.PodDisruptionBudget",
        "status",
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
    ),
    keyed(
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        meta!("Condition"),
        "type",
    ),
];

/// Patch strategy of `property` of the OpenAPI definition `definition`
/// (e.g. `("io.k8s.api.core.v1.PodSpec", "containers")` → merge by `name`).
pub fn field_strategy(definition: &str, property: &str) -> Option<FieldStrategy> {
    TABLE
        .iter()
        .find(|r| r.def == definition && r.prop == property)
        .and_then(|r| {
            r.strategy.map(|strategy| FieldStrategy {
                strategy,
                merge_key: r.merge_key,
            })
        })
}

/// Looks up a property of a definition (`None` = unknown schema).
pub(crate) fn lookup(def: Option<&'static str>, prop: &str) -> Prop {
    let Some(def) = def else {
        return Prop::UNKNOWN;
    };
    if let Some(r) = TABLE.iter().find(|r| r.def == def && r.prop == prop) {
        let list = match (r.ssa_keys, r.strategy, r.merge_key) {
            (Some(keys), _, _) => ListType::Map(keys),
            (None, Some(s), Some(k)) if s.contains("merge") => ListType::Map(key_slice(k)),
            (None, Some(s), None) if s.contains("merge") => ListType::Set,
            _ => ListType::Atomic,
        };
        return Prop {
            child: r.child,
            strategy: r.strategy,
            merge_key: r.merge_key,
            list,
        };
    }
    if prop == "metadata" {
        return Prop {
            child: Some(OBJECT_META),
            ..Prop::UNKNOWN
        };
    }
    Prop::UNKNOWN
}

fn key_slice(key: &'static str) -> &'static [&'static str] {
    match key {
        "name" => &["name"],
        "type" => &["type"],
        "uid" => &["uid"],
        "ip" => &["ip"],
        "mountPath" => &["mountPath"],
        "devicePath" => &["devicePath"],
        "containerPort" => &["containerPort"],
        "port" => &["port"],
        "topologyKey" => &["topologyKey"],
        _ => &[],
    }
}

/// Splits `"apps/v1"` into `("apps", "v1")` and `"v1"` into `("", "v1")`.
fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

const BUILTIN_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "storagemigration.k8s.io",
];

/// Whether strategic merge patch applies to this kind. Upstream only supports it for
/// built-in (compiled-in) types; custom resources get 415 Unsupported Media Type.
pub fn supports_strategic_merge(api_version: &str, _kind: &str) -> bool {
    let (group, _) = split_api_version(api_version);
    BUILTIN_GROUPS.contains(&group)
}

/// OpenAPI definition name of a built-in kind, e.g. `("apps/v1", "Deployment")` →
/// `io.k8s.api.apps.v1.Deployment`.
pub fn root_definition(api_version: &str, kind: &str) -> String {
    let (group, version) = split_api_version(api_version);
    let prefix = match group {
        "" => "io.k8s.api.core".to_string(),
        "apiextensions.k8s.io" => {
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_string()
        }
        "apiregistration.k8s.io" => "io.k8s.kube-aggregator.pkg.apis.apiregistration".to_string(),
        "internal.apiserver.k8s.io" => "io.k8s.api.apiserverinternal".to_string(),
        g => {
            let short = g.split('.').next().unwrap_or(g);
            format!("io.k8s.api.{short}")
        }
    };
    format!("{prefix}.{version}.{kind}")
}

/// Schema node for the root of an object: its table definition when known,
/// otherwise [`UNKNOWN_ROOT`] (which still knows `metadata`).
pub(crate) fn root_node(api_version: &str, kind: &str) -> Option<&'static str> {
    let name = root_definition(api_version, kind);
    Some(
        TABLE
            .iter()
            .find(|r| r.def == name)
            .map(|r| r.def)
            .unwrap_or(UNKNOWN_ROOT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies() {
        let s = field_strategy("io.k8s.api.core.v1.PodSpec", "containers").unwrap();
        assert_eq!((s.strategy, s.merge_key), ("merge", Some("name")));
        let s = field_strategy("io.k8s.api.core.v1.PodSpec", "volumes").unwrap();
        assert_eq!(
            (s.strategy, s.merge_key),
            ("merge,retainKeys", Some("name"))
        );
        let s = field_strategy(
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "finalizers",
        )
        .unwrap();
        assert_eq!((s.strategy, s.merge_key), ("merge", None));
        assert!(field_strategy("io.k8s.api.core.v1.PodSpec", "tolerations").is_none());
        assert!(field_strategy("io.k8s.api.core.v1.NodeSpec", "taints").is_none());
    }

    #[test]
    fn type_graph_resolves_deployment_env() {
        let mut node = root_node("apps/v1", "Deployment");
        for p in ["spec", "template", "spec", "containers", "env"] {
            node = lookup(node, p).child;
        }
        assert_eq!(node, Some("io.k8s.api.core.v1.EnvVar"));
        let meta = lookup(root_node("v1", "ConfigMap"), "metadata").child;
        assert_eq!(meta, Some(OBJECT_META));
        assert_eq!(lookup(meta, "ownerReferences").merge_key, Some("uid"));
    }

    #[test]
    fn smp_support() {
        assert!(supports_strategic_merge("v1", "Pod"));
        assert!(supports_strategic_merge("apps/v1", "Deployment"));
        assert!(supports_strategic_merge("networking.k8s.io/v1", "Ingress"));
        assert!(!supports_strategic_merge("example.com/v1", "Widget"));
        assert_eq!(
            root_definition("rbac.authorization.k8s.io/v1", "Role"),
            "io.k8s.api.rbac.v1.Role"
        );
    }
}
