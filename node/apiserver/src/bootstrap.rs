//! Objects every cluster has from the first start: system namespaces, the `kubernetes` Service
//! and its endpoints, default RBAC roles and bindings, and the system priority classes.
//! Existing objects are left as they are, so a restart rewrites nothing.

use crate::objects::{self, Query, Target};
use crate::state::Api;
use crate::status::ApiError;
use serde_json::{json, Value};

async fn ensure(
    api: &Api,
    group: &str,
    kind: &str,
    namespace: Option<&str>,
    obj: Value,
) -> Result<(), ApiError> {
    let rt = api
        .by_kind(group, kind)
        .ok_or_else(|| ApiError::internal(format!("bootstrap: unknown kind {kind}")))?;
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = rt.storage_key(namespace, &name);
    if api.store.get(&key).await?.is_some() {
        return Ok(());
    }
    let t = Target {
        rt: &rt,
        namespace,
        name: None,
    };
    let mut q = Query::new();
    q.insert("fieldManager".into(), "k3rs-bootstrap".into());
    match objects::create(api, &t, obj, &q).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn workload_rules(verbs: &[&str], include_secrets: bool) -> Vec<Value> {
    let mut core = vec![
        "pods",
        "pods/log",
        "pods/status",
        "services",
        "services/status",
        "endpoints",
        "configmaps",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "serviceaccounts",
        "events",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces/status",
        "pods/eviction",
    ];
    if include_secrets {
        core.push("secrets");
        core.push("pods/exec");
        core.push("pods/attach");
        core.push("pods/portforward");
        core.push("serviceaccounts/token");
    }
    vec![
        rule(&[""], &core, verbs),
        rule(
            &["apps"],
            &[
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
                "daemonsets",
                "daemonsets/status",
                "controllerrevisions",
            ],
            verbs,
        ),
        rule(
            &["batch"],
            &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
            verbs,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            verbs,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            verbs,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            verbs,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], verbs),
        rule(&["events.k8s.io"], &["events"], verbs),
        rule(&["coordination.k8s.io"], &["leases"], verbs),
    ]
}

fn cluster_roles() -> Vec<Value> {
    let mut view = workload_rules(READ, false);
    view.push(rule(&[""], &["namespaces"], READ));
    let mut edit = workload_rules(READ, true);
    edit.extend(workload_rules(WRITE, true));
    edit.push(rule(&[""], &["namespaces"], READ));
    let mut admin = edit.clone();
    admin.push(rule(
        &["rbac.authorization.k8s.io"],
        &["roles", "rolebindings"],
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
    ));
    admin.push(rule(
        &["authorization.k8s.io"],
        &["localsubjectaccessreviews"],
        &["create"],
    ));
    let role = |name: &str, rules: Vec<Value>, labels: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}, "rules": rules})
    };
    let bootstrap = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    vec![
        role(
            "cluster-admin",
            vec![
                rule(&["*"], &["*"], &["*"]),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
            bootstrap.clone(),
        ),
        role("admin", admin, bootstrap.clone()),
        role("edit", edit, bootstrap.clone()),
        role("view", view, bootstrap.clone()),
        role(
            "system:discovery",
            vec![
                json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/openapi", "/openapi/*", "/version", "/version/"], "verbs": ["get"]}),
            ],
            bootstrap.clone(),
        ),
        role(
            "system:public-info-viewer",
            vec![
                json!({"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}),
            ],
            bootstrap.clone(),
        ),
        role(
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
            bootstrap.clone(),
        ),
        role(
            "system:kube-scheduler",
            scheduler_rules(),
            bootstrap.clone(),
        ),
        role(
            "system:kube-controller-manager",
            controller_manager_rules(),
            bootstrap.clone(),
        ),
        role("system:node", node_rules(), bootstrap.clone()),
        role("system:node-proxier", proxier_rules(), bootstrap.clone()),
        // K3s's CoreDNS role; the embedded DNS needs the same reads.
        role(
            "system:coredns",
            vec![
                rule(
                    &[""],
                    &["endpoints", "services", "pods", "namespaces"],
                    &["list", "watch"],
                ),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["list", "watch"],
                ),
            ],
            json!({"kubernetes.io/bootstrapping": "rbac-defaults", "addonmanager.kubernetes.io/mode": "Reconcile"}),
        ),
    ]
}

const EVENTS: &[&str] = &["create", "patch", "update"];
const LEASE: &[&str] = &["create", "get", "list", "watch", "update", "patch"];

fn events_and_leases() -> Vec<Value> {
    vec![
        rule(&["", "events.k8s.io"], &["events"], EVENTS),
        rule(&["coordination.k8s.io"], &["leases"], LEASE),
    ]
}

/// What the scheduler reads and writes (upstream's `system:kube-scheduler`).
fn scheduler_rules() -> Vec<Value> {
    let mut r = events_and_leases();
    r.extend([
        rule(&[""], &["pods/binding", "bindings"], &["create"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
        rule(
            &[""],
            &[
                "nodes",
                "namespaces",
                "services",
                "replicationcontrollers",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
            READ,
        ),
        rule(&["apps"], &["replicasets", "statefulsets"], READ),
        rule(&["policy"], &["poddisruptionbudgets"], READ),
        rule(
            &["storage.k8s.io"],
            &[
                "storageclasses",
                "csinodes",
                "csidrivers",
                "csistoragecapacities",
            ],
            READ,
        ),
    ]);
    r
}

/// The controllers run with one identity (K3s does not split it per controller either).
fn controller_manager_rules() -> Vec<Value> {
    let all: &[&str] = &["*"];
    let mut r = events_and_leases();
    r.extend([
        rule(
            &[""],
            &[
                "pods",
                "pods/status",
                "services",
                "services/status",
                "endpoints",
                "nodes",
                "nodes/status",
                "namespaces",
                "namespaces/finalize",
                "serviceaccounts",
                "configmaps",
                "secrets",
                "replicationcontrollers",
                "replicationcontrollers/status",
                "persistentvolumes",
                "persistentvolumeclaims",
                "resourcequotas",
                "resourcequotas/status",
            ],
            all,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&["apps"], all, all),
        rule(&["batch"], all, all),
        rule(&["autoscaling"], all, all),
        rule(&["policy"], all, all),
        rule(&["discovery.k8s.io"], &["endpointslices"], all),
        rule(&["networking.k8s.io"], all, all),
        rule(&["storage.k8s.io"], all, all),
        rule(&["certificates.k8s.io"], all, all),
        rule(&["rbac.authorization.k8s.io"], all, READ),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
        json!({"nonResourceURLs": ["/healthz", "/livez", "/readyz"], "verbs": ["get"]}),
    ]);
    r
}

/// What a kubelet needs (upstream pairs this role with the Node authorizer).
fn node_rules() -> Vec<Value> {
    let mut r = events_and_leases();
    r.extend([
        rule(
            &[""],
            &["nodes"],
            &[
                "create", "get", "list", "watch", "patch", "update", "delete",
            ],
        ),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(
            &[""],
            &["pods"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "secrets",
                "services",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
            READ,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["storage.k8s.io"],
            &["csidrivers", "csinodes", "volumeattachments"],
            READ,
        ),
        rule(
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
            &["create", "get", "list", "watch"],
        ),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
        ),
    ]);
    r
}

/// What the Services proxy reads (upstream's `system:node-proxier`).
fn proxier_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &["endpoints", "services", "nodes"],
            &["list", "watch"],
        ),
        rule(&[""], &["nodes"], &["get"]),
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["list", "watch"],
        ),
        rule(&["", "events.k8s.io"], &["events"], EVENTS),
    ]
}

fn binding(name: &str, role: &str, subjects: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects})
}

pub async fn run(api: &Api) -> Result<(), ApiError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(
            api,
            "",
            "Namespace",
            None,
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}),
        )
        .await?;
    }
    // Pods need their ServiceAccount at admission: create the system namespaces' accounts now
    // rather than waiting for the lifecycle controller.
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(
            api,
            "",
            "ServiceAccount",
            Some(ns),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": ns}}),
        )
        .await?;
    }
    for role in cluster_roles() {
        ensure(api, "rbac.authorization.k8s.io", "ClusterRole", None, role).await?;
    }
    let group =
        |g: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g});
    let user =
        |u: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u});
    for (name, role, subjects) in [
        (
            "cluster-admin",
            "cluster-admin",
            json!([group("system:masters")]),
        ),
        (
            "system:discovery",
            "system:discovery",
            json!([group("system:authenticated")]),
        ),
        (
            "system:basic-user",
            "system:basic-user",
            json!([group("system:authenticated")]),
        ),
        (
            "system:kube-scheduler",
            "system:kube-scheduler",
            json!([user("system:kube-scheduler")]),
        ),
        (
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            json!([user("system:kube-controller-manager")]),
        ),
        // Agents authenticate as system:node:<name> in group system:nodes.
        ("system:node", "system:node", json!([group("system:nodes")])),
        (
            "system:node-proxier",
            "system:node-proxier",
            json!([user("system:kube-proxy")]),
        ),
        (
            "system:coredns",
            "system:coredns",
            json!([{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]),
        ),
        (
            "system:public-info-viewer",
            "system:public-info-viewer",
            json!([
                group("system:authenticated"),
                group("system:unauthenticated")
            ]),
        ),
    ] {
        ensure(
            api,
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            None,
            binding(name, role, subjects),
        )
        .await?;
    }
    for (name, value) in [
        ("system-node-critical", 2000001000),
        ("system-cluster-critical", 2000000000),
    ] {
        ensure(api, "scheduling.k8s.io", "PriorityClass", None, json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "description": "Used for system critical pods that must not be moved from their current node.", "preemptionPolicy": "PreemptLowerPriority"})).await?;
    }
    let ip = api.info.advertise_ip.to_string();
    let port = api.info.port;
    ensure(api, "", "Service", Some("default"), json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": api.info.service_ip.to_string(), "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}})).await?;
    ensure(api, "", "Endpoints", Some("default"), json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]})).await?;
    ensure(api, "discovery.k8s.io", "EndpointSlice", Some("default"), json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
        "addressType": "IPv4", "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})).await?;
    Ok(())
}
