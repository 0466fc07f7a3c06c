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
            bootstrap,
        ),
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
