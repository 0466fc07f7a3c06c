//! Filters and scores, named and worded after upstream's plugins so that the reasons users see in
//! `FailedScheduling` events read the same.

use crate::cache::{NodeInfo, PodInfo};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Why a node was filtered out; the text is upstream's.
pub fn filter(pod: &Value, info: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    if node.unschedulable && !tolerates_unschedulable(pod) {
        reasons.push("node(s) were unschedulable".to_string());
        return reasons;
    }
    if !matches_node_selector(pod, node) {
        reasons.push("node(s) didn't match Pod's node affinity/selector".to_string());
        return reasons;
    }
    if let Some(t) = untolerated_taint(pod, node) {
        reasons.push(t);
        return reasons;
    }
    if node
        .host_ports
        .iter()
        .any(|used| info.host_ports.iter().any(|want| want.conflicts(used)))
    {
        reasons.push("node(s) didn't have free ports for the requested pod ports".to_string());
    }
    let allowed_pods = node
        .allocatable
        .get("pods")
        .map(|p| p / 1000)
        .unwrap_or(110);
    if node.pod_count + 1 > allowed_pods {
        reasons.push("Too many pods".to_string());
    }
    for (res, want) in &info.requests {
        if *want <= 0 {
            continue;
        }
        let alloc = node.allocatable.get(res).copied().unwrap_or(0);
        let used = node.requested.get(res).copied().unwrap_or(0);
        if used + want > alloc {
            reasons.push(format!("Insufficient {res}"));
        }
    }
    reasons
}

fn tolerates_unschedulable(pod: &Value) -> bool {
    tolerations(pod)
        .any(|t| toleration_matches(t, "node.kubernetes.io/unschedulable", "", "NoSchedule"))
}

fn tolerations(pod: &Value) -> impl Iterator<Item = &Value> {
    pod["spec"]["tolerations"].as_array().into_iter().flatten()
}

/// Upstream's `Toleration.ToleratesTaint`.
pub fn toleration_matches(t: &Value, key: &str, value: &str, effect: &str) -> bool {
    let t_effect = t["effect"].as_str().unwrap_or("");
    if !t_effect.is_empty() && t_effect != effect {
        return false;
    }
    let t_key = t["key"].as_str().unwrap_or("");
    if !t_key.is_empty() && t_key != key {
        return false;
    }
    match t["operator"].as_str().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t_key == key && t["value"].as_str().unwrap_or("") == value,
        _ => false,
    }
}

pub(crate) fn untolerated_taint(pod: &Value, node: &NodeInfo) -> Option<String> {
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerations(pod).any(|tol| toleration_matches(tol, &t.key, &t.value, &t.effect)))
        .map(|t| format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value))
}

pub(crate) fn matches_node_selector(pod: &Value, node: &NodeInfo) -> bool {
    if let Some(sel) = pod["spec"]["nodeSelector"].as_object() {
        for (k, v) in sel {
            if node.labels.get(k) != Some(v) {
                return false;
            }
        }
    }
    let required = &pod["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    match required.as_array() {
        Some(terms) if !terms.is_empty() => terms.iter().any(|t| term_matches(t, node)),
        _ => true,
    }
}

/// One NodeSelectorTerm: all of its expressions and fields must match (an empty term matches nothing).
pub fn term_matches(term: &Value, node: &NodeInfo) -> bool {
    let exprs = term["matchExpressions"].as_array();
    let fields = term["matchFields"].as_array();
    if exprs.is_none_or(|e| e.is_empty()) && fields.is_none_or(|f| f.is_empty()) {
        return false;
    }
    let mut name_labels = Map::new();
    name_labels.insert("metadata.name".into(), Value::String(node.name.clone()));
    exprs
        .into_iter()
        .flatten()
        .all(|e| expression_matches(e, &node.labels))
        && fields
            .into_iter()
            .flatten()
            .all(|e| expression_matches(e, &name_labels))
}

fn expression_matches(e: &Value, labels: &Map<String, Value>) -> bool {
    let key = e["key"].as_str().unwrap_or("");
    let values: Vec<&str> = e["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let have = labels.get(key).and_then(Value::as_str);
    match e["operator"].as_str().unwrap_or("") {
        "In" => have.is_some_and(|h| values.contains(&h)),
        "NotIn" => have.is_none_or(|h| !values.contains(&h)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(h), Some(v)) = (
                have.and_then(|h| h.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if e["operator"] == "Gt" {
                h > v
            } else {
                h < v
            }
        }
        _ => false,
    }
}

/// Score 0..=100 per plugin, summed with weights: least-allocated (cpu, memory), spreading of the
/// pod's owner, preferred node affinity, PreferNoSchedule taints.
pub fn score(pod: &Value, info: &PodInfo, node: &NodeInfo, max_owner_count: u32) -> i64 {
    let least = |alloc: i64, used: i64| -> i64 {
        if alloc <= 0 || used > alloc {
            0
        } else {
            (alloc - used) * 100 / alloc
        }
    };
    let cpu = least(
        node.allocatable.get("cpu").copied().unwrap_or(0),
        node.nonzero_cpu + info.nonzero_cpu,
    );
    let mem = least(
        node.allocatable.get("memory").copied().unwrap_or(0),
        node.nonzero_memory + info.nonzero_memory,
    );
    let mut total = (cpu + mem) / 2;
    // Spreading (upstream's SelectorSpread / PodTopologySpread default): fewer pods of the same owner is better.
    if let Some(uid) = &info.owner_uid {
        let count = node.owner_counts.get(uid).copied().unwrap_or(0) as i64;
        let max = max_owner_count as i64;
        let spread = if max == 0 {
            100
        } else {
            (max - count) * 100 / max
        };
        total += 2 * spread;
    }
    let preferred = pod["spec"]["affinity"]["nodeAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array();
    if let Some(prefs) = preferred {
        let mut sum = 0;
        let mut max = 0;
        for p in prefs {
            let w = p["weight"].as_i64().unwrap_or(0);
            max += w;
            if term_matches(&p["preference"], node) {
                sum += w;
            }
        }
        if max > 0 {
            total += sum * 100 / max;
        }
    }
    let intolerable = node
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| {
            !tolerations(pod).any(|tol| toleration_matches(tol, &t.key, &t.value, &t.effect))
        })
        .count() as i64;
    total -= intolerable * 50;
    total
}

/// "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu."
pub fn unschedulable_message(total_nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if total_nodes == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: Value) -> NodeInfo {
        let mut n = NodeInfo::default();
        n.set_node(&v);
        n
    }

    #[test]
    fn tolerations_and_taints() {
        let n = node(json!({"metadata": {"name": "n"}, "spec": {"taints": [
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"}}}));
        let pod = json!({"spec": {"containers": [{"name": "c"}]}});
        let info = PodInfo::from_pod(&pod);
        assert_eq!(
            filter(&pod, &info, &n),
            vec!["node(s) had untolerated taint {dedicated: gpu}"]
        );
        let pod = json!({"spec": {"containers": [{"name": "c"}], "tolerations": [
            {"key": "dedicated", "operator": "Exists"}]}});
        assert!(filter(&pod, &info, &n).is_empty());
    }

    #[test]
    fn extended_resources_fit_like_any_other() {
        let mut n = node(json!({"metadata": {"name": "n"},
            "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "10", "example.com/gpu": "2"}}}));
        let gpus = |count: &str| {
            json!({"spec": {"containers": [{"name": "c", "resources": {
                "requests": {"example.com/gpu": count}, "limits": {"example.com/gpu": count}}}]}})
        };
        let two = gpus("2");
        assert!(filter(&two, &PodInfo::from_pod(&two), &n).is_empty());
        n.add_pod(&PodInfo::from_pod(&gpus("1")));
        assert_eq!(
            filter(&two, &PodInfo::from_pod(&two), &n),
            vec!["Insufficient example.com/gpu"]
        );
        let plain = node(json!({"metadata": {"name": "cpu-only"},
            "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "10"}}}));
        let one = gpus("1");
        assert_eq!(
            filter(&one, &PodInfo::from_pod(&one), &plain),
            vec!["Insufficient example.com/gpu"]
        );
    }

    #[test]
    fn affinity_and_resources() {
        let n = node(
            json!({"metadata": {"name": "n", "labels": {"zone": "a", "gen": "5"}},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"}}}),
        );
        let pod = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]}}}}});
        let info = PodInfo::from_pod(&pod);
        assert_eq!(filter(&pod, &info, &n), vec!["Insufficient cpu"]);
        let pod = json!({"spec": {"containers": [{"name": "c"}], "nodeSelector": {"zone": "b"}}});
        assert_eq!(
            filter(&pod, &PodInfo::from_pod(&pod), &n),
            vec!["node(s) didn't match Pod's node affinity/selector"]
        );
        let mut reasons = BTreeMap::new();
        reasons.insert("Insufficient cpu".to_string(), 2);
        reasons.insert(
            "node(s) didn't match Pod's node affinity/selector".to_string(),
            1,
        );
        assert_eq!(
            unschedulable_message(3, &reasons),
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu."
        );
    }
}
