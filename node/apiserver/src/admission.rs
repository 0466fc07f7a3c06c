//! Built-in admission steps that need the store: Service IP and node-port allocation, and the
//! CustomResourceDefinition lifecycle (accepted names, Established, re-indexing).

use crate::meta;
use crate::objects::Target;
use crate::state::Api;
use crate::status::{ApiError, Cause};
use k3rs_resources::ResourceType;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;

pub async fn on_create(api: &Api, t: &Target<'_>, obj: &mut Value) -> Result<(), ApiError> {
    if t.rt.group.is_empty() && t.rt.kind == "Service" {
        allocate_service(api, obj).await?;
    }
    if t.rt.group == "apiextensions.k8s.io" && t.rt.kind == "CustomResourceDefinition" {
        crd_status(obj);
    }
    if t.rt.group.is_empty() {
        let namespace = t.namespace.unwrap_or("default");
        crate::limitrange::on_create(api, &t.rt.plural, namespace, obj).await?;
    }
    if t.rt.group.is_empty() && t.rt.kind == "Pod" {
        service_account(api, t.namespace.unwrap_or("default"), obj).await?;
        default_tolerations(obj);
        priority(api, obj).await?;
    }
    Ok(())
}

/// Upstream's ServiceAccount admission: a pod runs as `default` unless told otherwise, the
/// account must exist, and its token, the cluster CA and the namespace are mounted at
/// /var/run/secrets/kubernetes.io/serviceaccount unless automounting is switched off.
async fn service_account(api: &Api, namespace: &str, pod: &mut Value) -> Result<(), ApiError> {
    let sa_name = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    pod["spec"]["serviceAccountName"] = json!(sa_name);
    pod["spec"]["serviceAccount"] = json!(sa_name);
    let name = meta::name(pod).unwrap_or_default().to_string();
    let sa = match api.store.get(&format!("/registry/core/serviceaccounts/{namespace}/{sa_name}")).await? {
        Some(kv) => meta::decode_from_store(&kv.value, kv.mod_revision),
        None => {
            return Err(ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: error looking up service account {namespace}/{sa_name}: serviceaccount \"{sa_name}\" not found"
            )))
        }
    };
    let automount = pod
        .pointer("/spec/automountServiceAccountToken")
        .or_else(|| sa.get("automountServiceAccountToken"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let already = ["containers", "initContainers"].iter().any(|k| {
        pod.pointer(&format!("/spec/{k}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["mountPath"] == MOUNT_PATH)
            })
    });
    if !automount || already {
        return Ok(());
    }
    let volume = format!("kube-api-access-{}", meta::generated_suffix());
    let vols = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut vols = vols;
    vols.push(json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}));
    pod["spec"]["volumes"] = json!(vols);
    for k in ["containers", "initContainers"] {
        if let Some(list) = pod
            .pointer_mut(&format!("/spec/{k}"))
            .and_then(Value::as_array_mut)
        {
            for c in list {
                let mut mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
                mounts.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
                c["volumeMounts"] = json!(mounts);
            }
        }
    }
    Ok(())
}

/// Upstream's Priority admission: `spec.priorityClassName` (or the `globalDefault` class) is
/// resolved into `spec.priority` and `spec.preemptionPolicy`; an unknown class is refused, and so
/// is a priority given in the spec that differs from the class's.
async fn priority(api: &Api, pod: &mut Value) -> Result<(), ApiError> {
    let pod_name = meta::name(pod).unwrap_or_default().to_string();
    let wanted = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let classes = api
        .store
        .list(
            "/registry/scheduling.k8s.io/priorityclasses/",
            None,
            None,
            None,
        )
        .await?;
    let classes = classes
        .items
        .iter()
        .map(|kv| meta::decode_from_store(&kv.value, kv.mod_revision));
    let class = match &wanted {
        Some(name) => {
            let found = classes
                .into_iter()
                .find(|c| meta::name(c) == Some(name.as_str()));
            if found.is_none() {
                return Err(ApiError::forbidden(format!(
                    "pods \"{pod_name}\" is forbidden: no PriorityClass with name {name} was found"
                )));
            }
            found
        }
        // Upstream picks the lowest-valued default when there are several.
        None => classes
            .filter(|c| c["globalDefault"].as_bool() == Some(true))
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0)),
    };
    let (value, policy) = match &class {
        Some(c) => {
            pod["spec"]["priorityClassName"] = c["metadata"]["name"].clone();
            (
                c["value"].as_i64().unwrap_or(0),
                c["preemptionPolicy"]
                    .as_str()
                    .unwrap_or("PreemptLowerPriority")
                    .to_string(),
            )
        }
        None => (0, "PreemptLowerPriority".to_string()),
    };
    if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
        if given != value {
            return Err(ApiError::forbidden(format!(
                "pods \"{pod_name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
    }
    pod["spec"]["priority"] = json!(value);
    match pod
        .pointer("/spec/preemptionPolicy")
        .and_then(Value::as_str)
    {
        Some(given) if given != policy && class.is_some() => {
            return Err(ApiError::forbidden(format!(
                "pods \"{pod_name}\" is forbidden: the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
            )));
        }
        Some(_) => {}
        None => pod["spec"]["preemptionPolicy"] = json!(policy),
    }
    Ok(())
}

/// Upstream's DefaultTolerationSeconds admission: pods tolerate a not-ready or unreachable
/// node for 300 s before eviction.
fn default_tolerations(pod: &mut Value) {
    let mut tolerations = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let present = tolerations
            .iter()
            .any(|t| t["key"] == key && (t["effect"] == "NoExecute" || t.get("effect").is_none()));
        if !present {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    pod["spec"]["tolerations"] = json!(tolerations);
}

/// After a write: CRD changes re-index served types and rebuild OpenAPI.
pub async fn after_write(api: &Api, rt: &ResourceType, _obj: &Value) {
    if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
        if let Err(e) = api.reload_crds().await {
            tracing::warn!(error = %e, "reloading CustomResourceDefinitions failed");
        }
    }
}

/// After a delete: a removed CRD stops being served and its custom objects are deleted
/// (upstream's `customresourcecleanup`).
pub async fn after_delete(api: &Api, rt: &ResourceType, obj: &Value) {
    if !(rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition") {
        return;
    }
    if let Err(e) = api.reload_crds().await {
        tracing::warn!(error = %e, "reloading CustomResourceDefinitions failed");
    }
    let group = obj
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = obj
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if group.is_empty() || plural.is_empty() {
        return;
    }
    let prefix = format!("/registry/{group}/{plural}/");
    match api.store.list(&prefix, None, None, None).await {
        Ok(list) => {
            for kv in list.items {
                if let Err(e) = api.store.delete(&kv.key, None).await {
                    tracing::warn!(key = %kv.key, error = %e, "removing custom object of a deleted CRD");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing custom objects of a deleted CRD"),
    }
}

fn crd_status(obj: &mut Value) {
    let now = meta::now_rfc3339();
    let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let versions: Vec<Value> = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"] == json!(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": versions,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
}

fn service_range(api: &Api) -> (u32, u32) {
    let base = u32::from(api.info.service_cidr.0);
    let size = 1u32 << (32 - api.info.service_cidr.1.min(32) as u32).min(31);
    (base, size)
}

async fn allocate_service(api: &Api, obj: &mut Value) -> Result<(), ApiError> {
    let typ = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if typ == "ExternalName" {
        return Ok(());
    }
    let services = api
        .store
        .list("/registry/core/services/", None, None, None)
        .await?;
    let mut used_ips = HashSet::new();
    let mut used_ports = HashSet::new();
    for kv in &services.items {
        let s: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if let Some(ip) = s.pointer("/spec/clusterIP").and_then(Value::as_str) {
            used_ips.insert(ip.to_string());
        }
        for p in s
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p["nodePort"].as_i64() {
                used_ports.insert(n);
            }
        }
    }
    let name = meta::name(obj).unwrap_or_default().to_string();
    let requested = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let (base, size) = service_range(api);
    let ip = if requested == "None" {
        "None".to_string()
    } else if !requested.is_empty() {
        let parsed: Ipv4Addr = requested.parse().map_err(|_| {
            invalid(
                &name,
                "spec.clusterIP",
                format!("Invalid value: \"{requested}\": must be a valid IP address"),
            )
        })?;
        let n = u32::from(parsed);
        if n < base || n >= base + size {
            return Err(invalid(&name, "spec.clusterIP", format!("Invalid value: \"{requested}\": provided IP is not in the valid range. The range of valid IPs is {}/{}", api.info.service_cidr.0, api.info.service_cidr.1)));
        }
        if used_ips.contains(&requested) {
            return Err(invalid(
                &name,
                "spec.clusterIP",
                format!("Invalid value: \"{requested}\": provided IP is already allocated"),
            ));
        }
        requested
    } else {
        // Skip the network address and the first IP (kept for the `kubernetes` service) and .10 (DNS).
        let start = (rand::random::<u32>() % size.saturating_sub(20).max(1)) + 11;
        (0..size)
            .map(|i| Ipv4Addr::from(base + (start + i) % size))
            .filter(|ip| u32::from(*ip) != base && u32::from(*ip) != base + size - 1)
            .map(|ip| ip.to_string())
            .find(|ip| !used_ips.contains(ip))
            .ok_or_else(|| ApiError::internal("failed to allocate a serviceIP: range is full"))?
    };
    obj["spec"]["clusterIP"] = json!(ip);
    obj["spec"]["clusterIPs"] = json!([ip]);
    if ip != "None" {
        obj["spec"]["ipFamilies"] = json!(["IPv4"]);
        if obj.pointer("/spec/ipFamilyPolicy").is_none() {
            obj["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        }
    }
    if typ == "NodePort" || typ == "LoadBalancer" {
        if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports {
                if p.get("nodePort").and_then(Value::as_i64).is_none() {
                    let start = 30000 + (rand::random::<u32>() % 2768) as i64;
                    let port = (0..2768)
                        .map(|i| 30000 + (start - 30000 + i) % 2768)
                        .find(|n| !used_ports.contains(n))
                        .ok_or_else(|| {
                            ApiError::internal("failed to allocate a nodePort: range is full")
                        })?;
                    used_ports.insert(port);
                    p["nodePort"] = json!(port);
                } else if let Some(n) = p["nodePort"].as_i64() {
                    if !(30000..=32767).contains(&n) {
                        return Err(invalid(&name, "spec.ports[0].nodePort", format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is 30000-32767")));
                    }
                }
            }
        }
    }
    Ok(())
}

fn invalid(name: &str, field: &str, message: String) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        name,
        vec![Cause {
            reason: "FieldValueInvalid".into(),
            message,
            field: field.into(),
        }],
    )
}
