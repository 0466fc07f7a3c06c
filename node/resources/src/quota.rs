//! What an object charges to a ResourceQuota (upstream's quota evaluators in
//! `pkg/quota/v1/evaluator/core`), with no I/O: the API server's admission charges it, the quota
//! controller sums it to recalculate `status.used`.

use crate::quantity::Quantity;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Resource name → amount, ordered like upstream's sorted output.
pub type ResourceList = BTreeMap<String, Quantity>;

pub fn parse_list(v: &Value) -> ResourceList {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Quantity::from_json(q).map(|q| (k.clone(), q)))
        .collect()
}

pub fn list_to_json(list: &ResourceList) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, q)| (k.clone(), json!(q.to_string())))
            .collect::<Map<_, _>>(),
    )
}

pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, q) in b {
        out.entry(k.clone())
            .and_modify(|v| *v = v.add(q))
            .or_insert(*q);
    }
    out
}

/// Only the entries named in `keys`.
pub fn mask<'a>(list: &ResourceList, keys: impl IntoIterator<Item = &'a String>) -> ResourceList {
    keys.into_iter()
        .filter_map(|k| list.get(k).map(|q| (k.clone(), *q)))
        .collect()
}

/// Names in `used` that exceed `hard` (a name missing from `hard` is not limited).
pub fn exceeded(used: &ResourceList, hard: &ResourceList) -> Vec<String> {
    used.iter()
        .filter(|(k, q)| hard.get(*k).is_some_and(|h| *q > h))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Upstream's `prettyPrint`: `k=v` sorted by name, comma-separated.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, q)| format!("{k}={q}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn container_list(c: &Value, bucket: &str) -> ResourceList {
    parse_list(&c["resources"][bucket])
}

fn max_into(acc: &mut ResourceList, other: &ResourceList) {
    for (k, q) in other {
        match acc.get(k) {
            Some(v) if v >= q => {}
            _ => {
                acc.insert(k.clone(), *q);
            }
        }
    }
}

/// Upstream's `PodRequests`/`PodLimits` (`bucket` = "requests" or "limits"): app containers
/// and restartable init containers (sidecars) add up; each ordinary init container runs alone
/// (next to the sidecars started before it), so the pod needs the largest of those.
pub fn pod_resources(pod: &Value, bucket: &str) -> ResourceList {
    let spec = &pod["spec"];
    let mut total = ResourceList::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        total = add(&total, &container_list(c, bucket));
    }
    let mut sidecars = ResourceList::new();
    let mut init_peak = ResourceList::new();
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let own = container_list(c, bucket);
        if c["restartPolicy"] == "Always" {
            total = add(&total, &own);
            sidecars = add(&sidecars, &own);
            max_into(&mut init_peak, &sidecars);
        } else {
            max_into(&mut init_peak, &add(&own, &sidecars));
        }
    }
    max_into(&mut total, &init_peak);
    total
}

/// A pod that finished (Succeeded/Failed) is not charged for compute resources.
pub fn pod_is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// Upstream's `podComputeUsageHelper`.
fn pod_compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("pods".into(), Quantity::count(1));
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(r) {
            out.insert(r.into(), *q);
            out.insert(format!("requests.{r}"), *q);
        }
        if let Some(q) = limits.get(r) {
            out.insert(format!("limits.{r}"), *q);
        }
    }
    for (r, q) in requests {
        if r.starts_with("hugepages-") {
            out.insert(r.clone(), *q);
            out.insert(format!("requests.{r}"), *q);
        } else if r.contains('/') && !r.starts_with("kubernetes.io/") {
            out.insert(format!("requests.{r}"), *q);
        }
    }
    out
}

/// Upstream's `count/<resource>[.<group>]` object-count name.
pub fn object_count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// What `obj` (of `group`/`plural`) charges to a quota.
pub fn usage(group: &str, plural: &str, obj: &Value) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert(object_count_name(group, plural), Quantity::count(1));
    if !group.is_empty() {
        return out;
    }
    match plural {
        "pods" if !pod_is_terminal(obj) => {
            let requests = pod_resources(obj, "requests");
            let limits = pod_resources(obj, "limits");
            out = add(&out, &pod_compute_usage(&requests, &limits));
        }
        "services" => {
            out.insert("services".into(), Quantity::count(1));
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as i64;
            match obj.pointer("/spec/type").and_then(Value::as_str) {
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), Quantity::count(ports));
                }
                Some("LoadBalancer") => {
                    let allocate = obj
                        .pointer("/spec/allocateLoadBalancerNodePorts")
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    let n = if allocate { ports } else { 0 };
                    out.insert("services.nodeports".into(), Quantity::count(n));
                    out.insert("services.loadbalancers".into(), Quantity::count(1));
                }
                _ => {}
            }
        }
        "persistentvolumeclaims" => {
            out.insert("persistentvolumeclaims".into(), Quantity::count(1));
            let class = obj
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            if let Some(c) = class {
                out.insert(
                    format!("{c}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                    Quantity::count(1),
                );
            }
            let spec = obj
                .pointer("/spec/resources/requests/storage")
                .and_then(Quantity::from_json);
            let allocated = obj
                .pointer("/status/allocatedResources/storage")
                .and_then(Quantity::from_json);
            if let Some(storage) = spec.into_iter().chain(allocated).max() {
                out.insert("requests.storage".into(), storage);
                if let Some(c) = class {
                    out.insert(
                        format!("{c}.storageclass.storage.k8s.io/requests.storage"),
                        storage,
                    );
                }
            }
        }
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
            out.insert(plural.into(), Quantity::count(1));
        }
        _ => {}
    }
    out
}

fn is_pod_resource(name: &str) -> bool {
    const POD: [&str; 11] = [
        "pods",
        "count/pods",
        "cpu",
        "memory",
        "ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
    ];
    POD.contains(&name)
        || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-")
        || (name.starts_with("requests.") && name.contains('/'))
}

/// The names in `hard` that `group`/`plural` objects can charge (upstream's
/// `MatchingResources`).
pub fn matching_resources<'a>(
    group: &str,
    plural: &str,
    hard: &'a ResourceList,
) -> Vec<&'a String> {
    let count = object_count_name(group, plural);
    hard.keys()
        .filter(|k| {
            **k == count
                || (group.is_empty()
                    && match plural {
                        "pods" => is_pod_resource(k),
                        "services" => {
                            matches!(
                                k.as_str(),
                                "services" | "services.nodeports" | "services.loadbalancers"
                            )
                        }
                        "persistentvolumeclaims" => {
                            k.as_str() == "persistentvolumeclaims"
                                || k.as_str() == "requests.storage"
                                || k.contains(".storageclass.storage.k8s.io/")
                        }
                        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
                            k.as_str() == plural
                        }
                        _ => false,
                    })
        })
        .collect()
}

fn pod_is_best_effort(pod: &Value) -> bool {
    let spec = &pod["spec"];
    ["containers", "initContainers"].iter().all(|k| {
        spec[*k].as_array().into_iter().flatten().all(|c| {
            ["requests", "limits"].iter().all(|b| {
                c["resources"][*b]
                    .as_object()
                    .is_none_or(|m| !m.keys().any(|r| r == "cpu" || r == "memory"))
            })
        })
    })
}

/// The quota's scopes as (scopeName, operator, values), from `spec.scopes` and
/// `spec.scopeSelector.matchExpressions`.
fn scopes(quota: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out: Vec<(String, String, Vec<String>)> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push((
            e["scopeName"].as_str().unwrap_or("").to_string(),
            e["operator"].as_str().unwrap_or("Exists").to_string(),
            e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
        ));
    }
    out
}

fn pod_matches_scope(pod: &Value, name: &str, op: &str, values: &[String]) -> bool {
    let terminating = pod
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|s| s >= 0);
    match name {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => pod_is_best_effort(pod),
        "NotBestEffort" => !pod_is_best_effort(pod),
        "PriorityClass" => {
            let class = pod
                .pointer("/spec/priorityClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            match op {
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                "In" => class.is_some_and(|c| values.iter().any(|v| v == c)),
                "NotIn" => class.is_none_or(|c| !values.iter().any(|v| v == c)),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether `quota` tracks `obj` at all: it limits something the object charges, and every scope
/// matches (scopes only ever match pods, as upstream).
pub fn quota_matches(
    quota: &Value,
    hard: &ResourceList,
    group: &str,
    plural: &str,
    obj: &Value,
) -> bool {
    if matching_resources(group, plural, hard).is_empty() {
        return false;
    }
    scopes(quota).iter().all(|(name, op, values)| {
        group.is_empty() && plural == "pods" && pod_matches_scope(obj, name, op, values)
    })
}

/// Upstream's pod `Constraints`: a quota on cpu or memory requires every container to state it.
pub fn pod_constraints(hard_names: &[&String], pod: &Value) -> Result<(), String> {
    const VALIDATED: [&str; 6] = [
        "cpu",
        "memory",
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ];
    let required: BTreeSet<&str> = hard_names
        .iter()
        .map(|s| s.as_str())
        .filter(|s| VALIDATED.contains(s))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for k in ["containers", "initContainers"] {
        for c in pod["spec"][k].as_array().into_iter().flatten() {
            let usage =
                pod_compute_usage(&container_list(c, "requests"), &container_list(c, "limits"));
            for r in &required {
                if !usage.contains_key(*r) {
                    missing
                        .entry(r)
                        .or_default()
                        .insert(c["name"].as_str().unwrap_or("").to_string());
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> ResourceList {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity::parse(v).unwrap()))
            .collect()
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn pod_usage_sums_containers_and_takes_the_init_peak() {
        let mut p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "0.4", "memory": "64Mi"}}},
        ]));
        p["spec"]["initContainers"] =
            json!([{"name": "i", "resources": {"requests": {"cpu": "1"}}}]);
        let u = usage("", "pods", &p);
        assert_eq!(u["pods"].to_string(), "1");
        assert_eq!(u["count/pods"].to_string(), "1");
        assert_eq!(
            u["requests.cpu"].to_string(),
            "1",
            "init container peak wins"
        );
        assert_eq!(u["requests.memory"].to_string(), "128Mi");
        assert_eq!(u["limits.cpu"].to_string(), "200m");
        assert!(!u.contains_key("limits.memory"));
        p["status"] = json!({"phase": "Succeeded"});
        let u = usage("", "pods", &p);
        assert_eq!(u.keys().collect::<Vec<_>>(), vec!["count/pods"]);
    }

    #[test]
    fn quota_arithmetic_finds_what_is_exceeded() {
        let hard = list(&[("pods", "2"), ("requests.cpu", "1")]);
        let used = list(&[("pods", "2"), ("requests.cpu", "500m")]);
        let req = mask(
            &list(&[("pods", "1"), ("requests.cpu", "500m"), ("memory", "1Gi")]),
            hard.keys(),
        );
        assert_eq!(pretty(&req), "pods=1,requests.cpu=500m");
        let new = add(&used, &req);
        assert_eq!(exceeded(&new, &hard), vec!["pods".to_string()]);
        assert_eq!(
            pretty(&mask(&new, ["requests.cpu".to_string()].iter())),
            "requests.cpu=1"
        );
    }

    #[test]
    fn services_and_claims_charge_their_own_names() {
        let svc = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("", "services", &svc);
        assert_eq!(
            pretty(&u),
            "count/services=1,services=1,services.loadbalancers=1,services.nodeports=2"
        );
        let pvc = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
        let u = usage("", "persistentvolumeclaims", &pvc);
        assert_eq!(u["requests.storage"].to_string(), "1Gi");
        assert_eq!(
            u["fast.storageclass.storage.k8s.io/requests.storage"].to_string(),
            "1Gi"
        );
        let u = usage("apps", "deployments", &json!({}));
        assert_eq!(pretty(&u), "count/deployments.apps=1");
    }

    #[test]
    fn scopes_select_pods_only() {
        let hard = list(&[("pods", "1"), ("services", "1")]);
        let quota = json!({"spec": {"scopes": ["BestEffort"]}});
        let best_effort = pod(json!([{"name": "a"}]));
        let burstable = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        assert!(quota_matches(&quota, &hard, "", "pods", &best_effort));
        assert!(!quota_matches(&quota, &hard, "", "pods", &burstable));
        assert!(!quota_matches(&quota, &hard, "", "services", &json!({})));
        let mut terminating = best_effort.clone();
        terminating["spec"]["activeDeadlineSeconds"] = json!(30);
        let quota = json!({"spec": {"scopes": ["NotTerminating"]}});
        assert!(!quota_matches(&quota, &hard, "", "pods", &terminating));
    }

    #[test]
    fn constraints_name_the_missing_resources_like_upstream() {
        let hard = list(&[("limits.cpu", "2"), ("requests.cpu", "1"), ("pods", "3")]);
        let names: Vec<&String> = hard.keys().collect();
        let p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "1"}}},
            {"name": "b"},
        ]));
        assert_eq!(
            pod_constraints(&names, &p).unwrap_err(),
            "must specify limits.cpu for: a,b; requests.cpu for: b"
        );
        let ok = pod(
            json!([{"name": "a", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}]),
        );
        assert_eq!(pod_constraints(&names, &ok), Ok(()));
    }
}
