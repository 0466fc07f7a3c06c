//! The table of resource types the API server serves: built-in kinds (static) and, at run time,
//! the kinds that CustomResourceDefinitions add.

use serde::Serialize;

/// One servable resource: a group/version/kind reachable under a plural name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served under `<plural>/<sub>`: "status", "scale", "log", "exec", ...
    pub subresources: Vec<String>,
    pub verbs: Vec<String>,
    /// Whether objects live in the store (false for virtual kinds such as SelfSubjectAccessReview).
    pub stored: bool,
}

/// Verbs of an ordinary stored resource, as discovery lists them.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key prefix under which objects of this resource are stored (ends with '/').
    pub fn storage_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{}/{}/", group, self.plural)
    }

    /// The store key of one object.
    pub fn storage_key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{}/{}", self.storage_prefix(), ns, name),
            _ => format!("{}{}", self.storage_prefix(), name),
        }
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s == sub)
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    /// None = ALL_VERBS.
    verbs: Option<&'static [&'static str]>,
    stored: bool,
}

const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        verbs: None,
        stored: true,
    }
}

impl Builtin {
    const fn short(mut self, s: &'static [&'static str]) -> Self {
        self.short_names = s;
        self
    }
    const fn cats(mut self, c: &'static [&'static str]) -> Self {
        self.categories = c;
        self
    }
    const fn subs(mut self, s: &'static [&'static str]) -> Self {
        self.subresources = s;
        self
    }
    /// A virtual resource that only accepts the given verbs and is never stored.
    const fn virtual_only(mut self, v: &'static [&'static str]) -> Self {
        self.verbs = Some(v);
        self.stored = false;
        self
    }
    const fn verbs(mut self, v: &'static [&'static str]) -> Self {
        self.verbs = Some(v);
        self
    }
}

const ALL: &[&str] = &["all"];
const ST: &[&str] = &["status"];
const ST_SCALE: &[&str] = &["status", "scale"];
const CREATE: &[&str] = &["create"];

const BUILTINS: &[Builtin] = &[
    // core/v1
    res("", "v1", "Binding", "bindings", true).virtual_only(CREATE),
    res("", "v1", "ComponentStatus", "componentstatuses", false)
        .short(&["cs"])
        .virtual_only(&["get", "list"]),
    res("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
    res("", "v1", "Endpoints", "endpoints", true).short(&["ep"]),
    res("", "v1", "Event", "events", true).short(&["ev"]),
    res("", "v1", "LimitRange", "limitranges", true).short(&["limits"]),
    res("", "v1", "Namespace", "namespaces", false)
        .short(&["ns"])
        .subs(&["finalize", "status"])
        .verbs(&[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ]),
    res("", "v1", "Node", "nodes", false)
        .short(&["no"])
        .subs(&["proxy", "status"]),
    res(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    )
    .short(&["pvc"])
    .subs(ST),
    res("", "v1", "PersistentVolume", "persistentvolumes", false)
        .short(&["pv"])
        .subs(ST),
    res("", "v1", "Pod", "pods", true)
        .short(&["po"])
        .cats(ALL)
        .subs(&[
            "attach",
            "binding",
            "ephemeralcontainers",
            "eviction",
            "exec",
            "log",
            "portforward",
            "proxy",
            "resize",
            "status",
        ]),
    res("", "v1", "PodTemplate", "podtemplates", true),
    res(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        true,
    )
    .short(&["rc"])
    .cats(ALL)
    .subs(ST_SCALE),
    res("", "v1", "ResourceQuota", "resourcequotas", true)
        .short(&["quota"])
        .subs(ST),
    res("", "v1", "Secret", "secrets", true),
    res("", "v1", "ServiceAccount", "serviceaccounts", true)
        .short(&["sa"])
        .subs(&["token"]),
    res("", "v1", "Service", "services", true)
        .short(&["svc"])
        .cats(ALL)
        .subs(&["proxy", "status"])
        .verbs(&[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]),
    // admissionregistration.k8s.io/v1
    res(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
    res(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
    ),
    res(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        false,
    )
    .subs(ST),
    res(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        false,
    ),
    // apiextensions.k8s.io/v1
    res(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    )
    .short(&["crd", "crds"])
    .subs(ST),
    // apps/v1
    res(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
    ),
    res("apps", "v1", "DaemonSet", "daemonsets", true)
        .short(&["ds"])
        .cats(ALL)
        .subs(ST),
    res("apps", "v1", "Deployment", "deployments", true)
        .short(&["deploy"])
        .cats(ALL)
        .subs(ST_SCALE),
    res("apps", "v1", "ReplicaSet", "replicasets", true)
        .short(&["rs"])
        .cats(ALL)
        .subs(ST_SCALE),
    res("apps", "v1", "StatefulSet", "statefulsets", true)
        .short(&["sts"])
        .cats(ALL)
        .subs(ST_SCALE),
    // authentication / authorization (virtual)
    res(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        false,
    )
    .virtual_only(CREATE),
    res(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        false,
    )
    .virtual_only(CREATE),
    res(
        "authorization.k8s.io",
        "v1",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        true,
    )
    .virtual_only(CREATE),
    res(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
    )
    .virtual_only(CREATE),
    res(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        false,
    )
    .virtual_only(CREATE),
    res(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        false,
    )
    .virtual_only(CREATE),
    // autoscaling
    res(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
    )
    .short(&["hpa"])
    .cats(ALL)
    .subs(ST),
    res(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
    )
    .short(&["hpa"])
    .cats(ALL)
    .subs(ST),
    // batch/v1
    res("batch", "v1", "CronJob", "cronjobs", true)
        .short(&["cj"])
        .cats(ALL)
        .subs(ST),
    res("batch", "v1", "Job", "jobs", true).cats(ALL).subs(ST),
    // certificates.k8s.io/v1
    res(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        false,
    )
    .short(&["csr"])
    .subs(&["approval", "status"]),
    // coordination.k8s.io/v1
    res("coordination.k8s.io", "v1", "Lease", "leases", true),
    // discovery.k8s.io/v1
    res(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    // events.k8s.io/v1
    res("events.k8s.io", "v1", "Event", "events", true).short(&["ev"]),
    // flowcontrol is not served.
    // networking.k8s.io/v1
    res(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        false,
    ),
    res("networking.k8s.io", "v1", "Ingress", "ingresses", true)
        .short(&["ing"])
        .subs(ST),
    res(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
    )
    .short(&["netpol"]),
    // node.k8s.io/v1
    res("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", false),
    // policy/v1
    res(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    )
    .short(&["pdb"])
    .subs(ST),
    // rbac.authorization.k8s.io/v1
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    res(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    res("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
    // scheduling.k8s.io/v1
    res(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        false,
    )
    .short(&["pc"]),
    // storage.k8s.io/v1
    res("storage.k8s.io", "v1", "CSIDriver", "csidrivers", false),
    res("storage.k8s.io", "v1", "CSINode", "csinodes", false),
    res(
        "storage.k8s.io",
        "v1",
        "CSIStorageCapacity",
        "csistoragecapacities",
        true,
    ),
    res(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        false,
    )
    .short(&["sc"]),
    res(
        "storage.k8s.io",
        "v1",
        "VolumeAttachment",
        "volumeattachments",
        false,
    )
    .subs(ST),
];

/// Group versions in the order discovery lists them (preferred version first within a group).
pub const GROUP_ORDER: &[(&str, &[&str])] = &[
    ("", &["v1"]),
    ("apiregistration.k8s.io", &[]),
    ("apps", &["v1"]),
    ("events.k8s.io", &["v1"]),
    ("authentication.k8s.io", &["v1"]),
    ("authorization.k8s.io", &["v1"]),
    ("autoscaling", &["v2", "v1"]),
    ("batch", &["v1"]),
    ("certificates.k8s.io", &["v1"]),
    ("networking.k8s.io", &["v1"]),
    ("policy", &["v1"]),
    ("rbac.authorization.k8s.io", &["v1"]),
    ("storage.k8s.io", &["v1"]),
    ("admissionregistration.k8s.io", &["v1"]),
    ("apiextensions.k8s.io", &["v1"]),
    ("scheduling.k8s.io", &["v1"]),
    ("coordination.k8s.io", &["v1"]),
    ("node.k8s.io", &["v1"]),
    ("discovery.k8s.io", &["v1"]),
];

fn to_owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Every built-in resource type.
pub fn builtin_resources() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|b| ResourceType {
            group: b.group.to_string(),
            version: b.version.to_string(),
            kind: b.kind.to_string(),
            plural: b.plural.to_string(),
            singular: b.kind.to_ascii_lowercase(),
            namespaced: b.namespaced,
            short_names: to_owned(b.short_names),
            categories: to_owned(b.categories),
            subresources: to_owned(b.subresources),
            verbs: to_owned(b.verbs.unwrap_or(ALL_VERBS)),
            stored: b.stored,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_versions() {
        let all = builtin_resources();
        let cm = all.iter().find(|r| r.kind == "ConfigMap").unwrap();
        assert_eq!(cm.api_version(), "v1");
        assert_eq!(
            cm.storage_key(Some("default"), "x"),
            "/registry/core/configmaps/default/x"
        );
        let deploy = all.iter().find(|r| r.plural == "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert!(deploy.has_subresource("scale"));
        let ns = all.iter().find(|r| r.kind == "Namespace").unwrap();
        assert_eq!(
            ns.storage_key(None, "kube-system"),
            "/registry/core/namespaces/kube-system"
        );
    }

    #[test]
    fn every_group_in_order_table() {
        for r in builtin_resources() {
            let found = GROUP_ORDER
                .iter()
                .any(|(g, vs)| *g == r.group && vs.contains(&r.version.as_str()));
            assert!(found, "{} missing from GROUP_ORDER", r.api_version());
        }
    }
}
