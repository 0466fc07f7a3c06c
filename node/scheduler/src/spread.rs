//! Upstream's PodTopologySpread plugin: `topologySpreadConstraints` with `DoNotSchedule` filter
//! nodes whose domain would exceed `maxSkew` over the least-loaded domain (`minDomains` treats
//! too few domains as a minimum of zero), `ScheduleAnyway` ones score; `nodeAffinityPolicy`
//! (default Honor) and `nodeTaintsPolicy` (default Ignore) decide which nodes' pods count;
//! `matchLabelKeys` join the pod's own values to the selector.
//!
//! Pods without constraints that a ReplicaSet, ReplicationController or StatefulSet owns get
//! upstream's system default for zones (maxSkew 5, ScheduleAnyway), counted by owner from the
//! cache's per-node owner counts, so it costs nothing per pod. The hostname default (maxSkew 3)
//! is not added: `plugins::score` already spreads a workload's pods over nodes by owner.

use crate::cache::{NodeInfo, PodInfo};
use crate::plugins;
use k3rs_client::labels;
use serde_json::{json, Value};
use std::collections::HashMap;

pub const CONSTRAINTS_MISMATCH: &str = "node(s) didn't match pod topology spread constraints";
pub const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Which pods a constraint counts.
enum Selects {
    /// A LabelSelector, within the incoming pod's namespace.
    Labels(Value),
    /// The pods of one controller (the system default constraints).
    Owner(String),
}

struct Constraint {
    max_skew: i64,
    key: String,
    selects: Selects,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
    /// 1 if the incoming pod itself matches the selector.
    self_match: i64,
}

impl Constraint {
    fn parse(c: &Value, pod: &Value) -> Constraint {
        let own_labels = &pod["metadata"]["labels"];
        let mut selector = c["labelSelector"].clone();
        if selector.is_object() {
            let extra: Vec<Value> = c["matchLabelKeys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|k| {
                    own_labels
                        .get(k)
                        .map(|v| json!({"key": k, "operator": "In", "values": [v]}))
                })
                .collect();
            if !extra.is_empty() {
                let mut exprs = selector["matchExpressions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                exprs.extend(extra);
                selector["matchExpressions"] = Value::Array(exprs);
            }
        }
        Constraint {
            max_skew: c["maxSkew"].as_i64().unwrap_or(1).max(1),
            key: c["topologyKey"].as_str().unwrap_or("").to_string(),
            self_match: labels::matches(&selector, own_labels) as i64,
            selects: Selects::Labels(selector),
            min_domains: c["minDomains"].as_i64().unwrap_or(1).max(1),
            honor_affinity: c["nodeAffinityPolicy"].as_str() != Some("Ignore"),
            honor_taints: c["nodeTaintsPolicy"].as_str() == Some("Honor"),
        }
    }

    /// Matching pods on `node` (terminating ones do not count).
    fn count(&self, node: &NodeInfo, namespace: &str) -> i64 {
        match &self.selects {
            Selects::Labels(sel) => node
                .pods
                .values()
                .filter(|p| {
                    !p.terminating && p.namespace == namespace && labels::matches(sel, &p.labels)
                })
                .count() as i64,
            Selects::Owner(uid) => node.owner_counts.get(uid).copied().unwrap_or(0) as i64,
        }
    }

    /// Upstream's `MatchNodeInclusionPolicies`: whether the node's pods count at all.
    fn includes(&self, pod: &Value, node: &NodeInfo) -> bool {
        (!self.honor_affinity || plugins::matches_node_selector(pod, node))
            && (!self.honor_taints || plugins::untolerated_taint(pod, node).is_none())
    }
}

fn has_keys(node: &NodeInfo, constraints: &[Constraint]) -> bool {
    constraints.iter().all(|c| node.labels.contains_key(&c.key))
}

fn label<'n>(node: &'n NodeInfo, key: &str) -> Option<&'n str> {
    node.labels.get(key).and_then(Value::as_str)
}

/// The per-cycle state (upstream's preFilterState for the hard constraints).
pub struct Spread<'a> {
    pod: &'a Value,
    namespace: &'a str,
    hard: Vec<Constraint>,
    soft: Vec<Constraint>,
    /// Per hard constraint: matching pods per domain, and the minimum over domains.
    hard_counts: Vec<HashMap<String, i64>>,
    hard_min: Vec<i64>,
}

impl<'a> Spread<'a> {
    pub fn new<'n>(
        pod: &'a Value,
        info: &'a PodInfo,
        nodes: impl IntoIterator<Item = &'n NodeInfo>,
    ) -> Spread<'a> {
        let mut hard = Vec::new();
        let mut soft = Vec::new();
        let given = pod["spec"]["topologySpreadConstraints"].as_array();
        for c in given.into_iter().flatten() {
            let parsed = Constraint::parse(c, pod);
            if c["whenUnsatisfiable"].as_str() == Some("ScheduleAnyway") {
                soft.push(Constraint {
                    min_domains: 1,
                    ..parsed
                });
            } else {
                hard.push(parsed);
            }
        }
        if given.is_none_or(|g| g.is_empty()) {
            if let Some(uid) = default_spread_owner(pod) {
                soft.push(Constraint {
                    max_skew: 5,
                    key: ZONE.to_string(),
                    selects: Selects::Owner(uid),
                    min_domains: 1,
                    honor_affinity: true,
                    honor_taints: false,
                    self_match: 1,
                });
            }
        }
        let mut s = Spread {
            pod,
            namespace: &info.meta.namespace,
            hard_counts: hard.iter().map(|_| HashMap::new()).collect(),
            hard_min: vec![0; hard.len()],
            hard,
            soft,
        };
        if s.hard.is_empty() {
            return s;
        }
        for node in nodes {
            if node.name.is_empty() || !has_keys(node, &s.hard) {
                continue;
            }
            for (i, c) in s.hard.iter().enumerate() {
                if !c.includes(pod, node) {
                    continue;
                }
                let value = label(node, &c.key).unwrap_or("").to_string();
                *s.hard_counts[i].entry(value).or_default() += c.count(node, s.namespace);
            }
        }
        for (i, c) in s.hard.iter().enumerate() {
            let counts = &s.hard_counts[i];
            s.hard_min[i] = if (counts.len() as i64) < c.min_domains {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            };
        }
        s
    }

    /// Why `node` is out under the DoNotSchedule constraints, if it is.
    pub fn filter(&self, node: &NodeInfo) -> Option<&'static str> {
        for (i, c) in self.hard.iter().enumerate() {
            let Some(value) = label(node, &c.key) else {
                return Some(MISSING_LABEL);
            };
            let matching = self.hard_counts[i].get(value).copied().unwrap_or(0);
            if matching + c.self_match - self.hard_min[i] > c.max_skew {
                return Some(CONSTRAINTS_MISMATCH);
            }
        }
        None
    }

    /// Scores 0..=100 for the candidates under the ScheduleAnyway constraints (fewer matching
    /// pods in the node's domains is better), or None without such constraints.
    pub fn scores<'n>(
        &self,
        candidates: &[&NodeInfo],
        nodes: impl IntoIterator<Item = &'n NodeInfo>,
    ) -> Option<Vec<i64>> {
        if self.soft.is_empty() {
            return None;
        }
        let ignored: Vec<bool> = candidates
            .iter()
            .map(|n| !has_keys(n, &self.soft))
            .collect();
        // Domains that hold a candidate; only those are counted (hostname: per node, below).
        let mut counts: Vec<HashMap<String, i64>> =
            self.soft.iter().map(|_| HashMap::new()).collect();
        for (n, _) in candidates.iter().zip(&ignored).filter(|(_, ig)| !**ig) {
            for (i, c) in self.soft.iter().enumerate() {
                if c.key != HOSTNAME {
                    counts[i].insert(label(n, &c.key).unwrap_or("").to_string(), 0);
                }
            }
        }
        let scored = ignored.iter().filter(|i| !**i).count();
        let weights: Vec<f64> = self
            .soft
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let size = if c.key == HOSTNAME {
                    scored
                } else {
                    counts[i].len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        for node in nodes {
            if node.name.is_empty() || !has_keys(node, &self.soft) {
                continue;
            }
            for (i, c) in self.soft.iter().enumerate() {
                if c.key == HOSTNAME || !c.includes(self.pod, node) {
                    continue;
                }
                let value = label(node, &c.key).unwrap_or("");
                if let Some(count) = counts[i].get_mut(value) {
                    *count += c.count(node, self.namespace);
                }
            }
        }
        let raw: Vec<Option<i64>> = candidates
            .iter()
            .zip(&ignored)
            .map(|(n, ignored)| {
                if *ignored {
                    return None;
                }
                let mut score = 0.0;
                for (i, c) in self.soft.iter().enumerate() {
                    let Some(value) = label(n, &c.key) else {
                        continue;
                    };
                    let count = if c.key == HOSTNAME {
                        c.count(n, self.namespace)
                    } else {
                        counts[i].get(value).copied().unwrap_or(0)
                    };
                    score += count as f64 * weights[i] + (c.max_skew - 1) as f64;
                }
                Some(score.round() as i64)
            })
            .collect();
        let max = raw.iter().flatten().copied().max().unwrap_or(0);
        let min = raw.iter().flatten().copied().min().unwrap_or(0);
        Some(
            raw.into_iter()
                .map(|s| match s {
                    None => 0,
                    Some(_) if max == 0 => 100,
                    Some(s) => 100 * (max + min - s) / max,
                })
                .collect(),
        )
    }

    /// Whether a DoNotSchedule constraint is in play (a placed pod can change the verdict).
    pub fn has_hard(&self) -> bool {
        !self.hard.is_empty()
    }
}

/// The controller whose pods the system default constraints spread: a ReplicaSet,
/// ReplicationController or StatefulSet (upstream derives the selector from those and from
/// Services; Services are not watched here).
fn default_spread_owner(pod: &Value) -> Option<String> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| {
            r["controller"].as_bool() == Some(true)
                && matches!(
                    r["kind"].as_str(),
                    Some("ReplicaSet" | "ReplicationController" | "StatefulSet")
                )
        })
        .and_then(|r| r["uid"].as_str())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, zone: Option<&str>, taint: bool) -> NodeInfo {
        let mut labels = json!({"kubernetes.io/hostname": name});
        if let Some(z) = zone {
            labels[ZONE] = json!(z);
        }
        let taints = if taint {
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}])
        } else {
            json!([])
        };
        let mut n = NodeInfo::default();
        n.set_node(
            &json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "10"}}}),
        );
        n
    }

    fn web(name: &str, constraints: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "c"}], "topologySpreadConstraints": constraints}})
    }

    fn place(n: &mut NodeInfo, p: &Value) {
        let mut info = PodInfo::from_pod(p);
        info.node = n.name.clone();
        n.add_pod(&info);
    }

    fn zone_spread(extra: Value) -> Value {
        let mut c = json!({"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        json!([c])
    }

    fn verdicts(p: &Value, nodes: &[NodeInfo]) -> Vec<Option<&'static str>> {
        let info = PodInfo::from_pod(p);
        let s = Spread::new(p, &info, nodes);
        nodes.iter().map(|n| s.filter(n)).collect()
    }

    #[test]
    fn max_skew_filters_the_fuller_zone() {
        let mut nodes = vec![
            node("a", Some("z1"), false),
            node("b", Some("z1"), false),
            node("c", Some("z2"), false),
            node("d", None, false),
        ];
        let p = web("w", zone_spread(json!({})));
        assert_eq!(
            verdicts(&p, &nodes),
            vec![None, None, None, Some(MISSING_LABEL)]
        );
        place(&mut nodes[0], &web("w1", Value::Null));
        assert_eq!(
            verdicts(&p, &nodes),
            vec![
                Some(CONSTRAINTS_MISMATCH),
                Some(CONSTRAINTS_MISMATCH),
                None,
                Some(MISSING_LABEL)
            ]
        );
        place(&mut nodes[2], &web("w2", Value::Null));
        assert_eq!(verdicts(&p, &nodes)[..3], [None, None, None]);
        // Pods of another app or namespace do not count; terminating ones neither.
        let mut other = web("o", Value::Null);
        other["metadata"]["labels"]["app"] = json!("db");
        place(&mut nodes[2], &other);
        let mut leaving = web("l", Value::Null);
        leaving["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        place(&mut nodes[2], &leaving);
        assert_eq!(verdicts(&p, &nodes)[..3], [None, None, None]);
    }

    #[test]
    fn min_domains_and_inclusion_policies() {
        let mut nodes = vec![node("a", Some("z1"), false), node("b", Some("z2"), true)];
        place(&mut nodes[0], &web("w1", Value::Null));
        // One domain counted when minDomains is 3: the minimum is taken as 0, so z1 (1+1) is over.
        let p = web("w", zone_spread(json!({"minDomains": 3, "maxSkew": 1})));
        assert_eq!(verdicts(&p, &nodes), vec![Some(CONSTRAINTS_MISMATCH), None]);
        // Tainted z2 is ignored under nodeTaintsPolicy Honor: z1 is the only domain, skew 1.
        let p = web("w", zone_spread(json!({"nodeTaintsPolicy": "Honor"})));
        assert_eq!(verdicts(&p, &nodes), vec![None, None]);
        // Under the default (Ignore) z2 counts with 0: z1 would reach skew 2.
        let p = web("w", zone_spread(json!({})));
        assert_eq!(verdicts(&p, &nodes), vec![Some(CONSTRAINTS_MISMATCH), None]);
        // nodeAffinityPolicy Honor (default): a nodeSelector leaving z2 out removes that domain.
        let mut p = web("w", zone_spread(json!({})));
        p["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "a"});
        assert_eq!(verdicts(&p, &nodes)[0], None);
    }

    #[test]
    fn match_label_keys_narrow_the_selector() {
        let mut nodes = vec![node("a", Some("z1"), false), node("b", Some("z2"), false)];
        let mut old = web("old", Value::Null);
        old["metadata"]["labels"]["pod-template-hash"] = json!("1");
        place(&mut nodes[0], &old);
        let mut p = web(
            "w",
            zone_spread(json!({"matchLabelKeys": ["pod-template-hash"]})),
        );
        p["metadata"]["labels"]["pod-template-hash"] = json!("2");
        assert_eq!(verdicts(&p, &nodes), vec![None, None]);
    }

    #[test]
    fn schedule_anyway_scores_emptier_domains_higher() {
        let mut nodes = vec![
            node("a", Some("z1"), false),
            node("b", Some("z1"), false),
            node("c", Some("z2"), false),
        ];
        place(&mut nodes[0], &web("w1", Value::Null));
        place(&mut nodes[1], &web("w2", Value::Null));
        let p = web(
            "w",
            json!([{"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "web"}}}]),
        );
        let info = PodInfo::from_pod(&p);
        let s = Spread::new(&p, &info, &nodes);
        assert!(!s.has_hard());
        let candidates: Vec<&NodeInfo> = nodes.iter().collect();
        let scores = s.scores(&candidates, &nodes).expect("scored");
        assert!(
            scores[2] > scores[0] && scores[0] == scores[1],
            "{scores:?}"
        );
        assert_eq!(scores[2], 100);
    }

    #[test]
    fn system_default_spreads_a_replica_sets_pods_over_zones() {
        let mut nodes = vec![node("a", Some("z1"), false), node("b", Some("z2"), false)];
        let owned = |name: &str| {
            json!({"metadata": {"name": name, "namespace": "default", "ownerReferences": [
                {"kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}]},
                "spec": {"containers": [{"name": "c"}]}})
        };
        place(&mut nodes[0], &owned("p1"));
        let p = owned("p2");
        let info = PodInfo::from_pod(&p);
        let s = Spread::new(&p, &info, &nodes);
        let candidates: Vec<&NodeInfo> = nodes.iter().collect();
        let scores = s.scores(&candidates, &nodes).expect("defaulted");
        assert!(scores[1] > scores[0], "{scores:?}");
        // A bare pod gets no default constraint.
        let bare = web("bare", Value::Null);
        let info = PodInfo::from_pod(&bare);
        assert_eq!(
            Spread::new(&bare, &info, &nodes).scores(&candidates, &nodes),
            None
        );
    }
}
