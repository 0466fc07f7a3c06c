//! Upstream's InterPodAffinity plugin: required pod affinity and anti-affinity (the incoming pod's
//! terms, and — symmetrically — the anti-affinity terms of pods already placed), and preferred
//! terms in scoring. Terms select pods by label selector within namespaces (a list, a namespace
//! selector, or the pod's own) and count per topology domain (the node label `topologyKey`).
//!
//! Work per scheduling cycle, as upstream's PreFilter: one pass over the pods on every node, but
//! only when the incoming pod has terms; otherwise only over the pods that have terms of their
//! own (`NodeInfo::affinity_pods`), which is usually none.

use crate::cache::NodeInfo;
use crate::podmeta::PodMeta;
use k3rs_client::{labels, Client, ListParams, Resource};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

pub const AFFINITY_MISMATCH: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY_MISMATCH: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
/// Upstream's `hardPodAffinityWeight` default: how much an existing pod's *required* affinity
/// to the incoming pod counts in scoring.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// One PodAffinityTerm, parsed once per pod.
#[derive(Debug, PartialEq)]
pub struct Term {
    /// A LabelSelector (null selects nothing), with `matchLabelKeys`/`mismatchLabelKeys` merged in.
    pub selector: Value,
    pub namespaces: Vec<String>,
    /// `namespaceSelector` as given (`{}` = every namespace); None = not given.
    pub namespace_selector: Option<Value>,
    pub topology_key: String,
}

impl Term {
    fn parse(t: &Value, own_namespace: &str, own_labels: &Value) -> Term {
        let mut selector = t["labelSelector"].clone();
        if selector.is_object() {
            // matchLabelKeys / mismatchLabelKeys: the pod's own values for those keys join the
            // selector (upstream merges them at admission; doing it again here is idempotent).
            let mut extra = Vec::new();
            for (field, op) in [("matchLabelKeys", "In"), ("mismatchLabelKeys", "NotIn")] {
                for key in t[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if let Some(v) = own_labels.get(key) {
                        extra.push(json!({"key": key, "operator": op, "values": [v]}));
                    }
                }
            }
            if !extra.is_empty() {
                let mut exprs = selector["matchExpressions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                exprs.extend(extra);
                selector["matchExpressions"] = Value::Array(exprs);
            }
        }
        let mut namespaces: Vec<String> = t["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect();
        let namespace_selector = t["namespaceSelector"]
            .is_object()
            .then(|| t["namespaceSelector"].clone());
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.push(own_namespace.to_string());
        }
        Term {
            selector,
            namespaces,
            namespace_selector,
            topology_key: t["topologyKey"].as_str().unwrap_or("").to_string(),
        }
    }

    /// Upstream's `AffinityTerm.Matches`: the pod is in one of the term's namespaces and its
    /// labels match the selector.
    pub fn matches(&self, pod: &PodMeta, ns: &NamespaceLabels) -> bool {
        let in_namespace = self.namespaces.contains(&pod.namespace)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| labels::matches(s, ns.get(&pod.namespace)));
        in_namespace && labels::matches(&self.selector, &pod.labels)
    }

    /// A namespace selector that needs namespace labels to be evaluated (`{}` does not).
    fn needs_namespace_labels(&self) -> bool {
        self.namespace_selector
            .as_ref()
            .is_some_and(|s| s.as_object().is_some_and(|o| !o.is_empty()))
    }
}

/// A pod's own pod affinity and anti-affinity.
#[derive(Debug, Default, PartialEq)]
pub struct Affinity {
    pub required: Vec<Term>,
    pub required_anti: Vec<Term>,
    pub preferred: Vec<(i64, Term)>,
    pub preferred_anti: Vec<(i64, Term)>,
}

impl Affinity {
    /// None when the pod has no pod (anti-)affinity terms.
    pub fn from_pod(pod: &Value, namespace: &str, own_labels: &Value) -> Option<Affinity> {
        let affinity = &pod["spec"]["affinity"];
        let (pa, paa) = (&affinity["podAffinity"], &affinity["podAntiAffinity"]);
        if pa.is_null() && paa.is_null() {
            return None;
        }
        let required = |v: &Value| -> Vec<Term> {
            v["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| Term::parse(t, namespace, own_labels))
                .collect()
        };
        let preferred = |v: &Value| -> Vec<(i64, Term)> {
            v["preferredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    (
                        w["weight"].as_i64().unwrap_or(0),
                        Term::parse(&w["podAffinityTerm"], namespace, own_labels),
                    )
                })
                .collect()
        };
        let a = Affinity {
            required: required(pa),
            required_anti: required(paa),
            preferred: preferred(pa),
            preferred_anti: preferred(paa),
        };
        let empty = a.required.is_empty()
            && a.required_anti.is_empty()
            && a.preferred.is_empty()
            && a.preferred_anti.is_empty();
        (!empty).then_some(a)
    }

    fn terms(&self) -> impl Iterator<Item = &Term> {
        self.required
            .iter()
            .chain(&self.required_anti)
            .chain(self.preferred.iter().map(|(_, t)| t))
            .chain(self.preferred_anti.iter().map(|(_, t)| t))
    }
}

/// Namespace labels for `namespaceSelector`s, read only when a term in play has a non-empty one.
#[derive(Debug, Default)]
pub struct NamespaceLabels(HashMap<String, Value>);

impl NamespaceLabels {
    pub fn get(&self, namespace: &str) -> &Value {
        static NONE: Value = Value::Null;
        self.0.get(namespace).unwrap_or(&NONE)
    }

    pub fn from_namespaces(namespaces: &[Value]) -> NamespaceLabels {
        NamespaceLabels(
            namespaces
                .iter()
                .map(|n| {
                    (
                        n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        n["metadata"]["labels"].clone(),
                    )
                })
                .collect(),
        )
    }

    /// Lists namespaces if the incoming pod's terms or any placed pod's terms select namespaces
    /// by label; otherwise reads nothing.
    pub async fn load(
        client: &dyn Client,
        pod: &Value,
        nodes: &BTreeMap<String, NodeInfo>,
    ) -> NamespaceLabels {
        let needs = |a: &Affinity| a.terms().any(Term::needs_namespace_labels);
        let own = Affinity::from_pod(
            pod,
            pod["metadata"]["namespace"].as_str().unwrap_or("default"),
            &pod["metadata"]["labels"],
        );
        let needed = own.as_ref().is_some_and(needs)
            || nodes.values().any(|n| {
                n.affinity_pods
                    .values()
                    .any(|p| p.affinity.as_deref().is_some_and(needs))
            });
        if !needed {
            return NamespaceLabels::default();
        }
        match client
            .list(&Resource::core("namespaces"), None, &ListParams::default())
            .await
        {
            Ok(list) => NamespaceLabels::from_namespaces(&list.items),
            Err(e) => {
                tracing::debug!(error = %e, "listing namespaces for namespaceSelector");
                NamespaceLabels::default()
            }
        }
    }
}

type Pair = (String, String);

fn bump(counts: &mut HashMap<Pair, i64>, node: &NodeInfo, key: &str, by: i64) {
    if let Some(v) = node.labels.get(key).and_then(Value::as_str) {
        *counts.entry((key.to_string(), v.to_string())).or_default() += by;
    }
}

/// The per-cycle state of the filter (upstream's preFilterState): pod counts per topology pair.
pub struct InterPod<'p> {
    pod: &'p PodMeta,
    ns: &'p NamespaceLabels,
    /// Pods matching all of the incoming pod's required affinity terms.
    affinity_counts: HashMap<Pair, i64>,
    /// Pods matching one of the incoming pod's required anti-affinity terms.
    anti_counts: HashMap<Pair, i64>,
    /// Placed pods whose required anti-affinity terms match the incoming pod.
    existing_anti_counts: HashMap<Pair, i64>,
}

impl<'p> InterPod<'p> {
    pub fn new<'n>(
        pod: &'p PodMeta,
        nodes: impl IntoIterator<Item = &'n NodeInfo>,
        ns: &'p NamespaceLabels,
    ) -> InterPod<'p> {
        let mut s = InterPod {
            pod,
            ns,
            affinity_counts: HashMap::new(),
            anti_counts: HashMap::new(),
            existing_anti_counts: HashMap::new(),
        };
        let own = pod.affinity.as_deref();
        let own_required =
            own.is_some_and(|a| !a.required.is_empty() || !a.required_anti.is_empty());
        for node in nodes {
            if node.name.is_empty() {
                continue;
            }
            for existing in node.affinity_pods.values() {
                let Some(a) = &existing.affinity else {
                    continue;
                };
                for t in &a.required_anti {
                    if t.matches(pod, ns) {
                        bump(&mut s.existing_anti_counts, node, &t.topology_key, 1);
                    }
                }
            }
            let Some(own) = own.filter(|_| own_required) else {
                continue;
            };
            for existing in node.pods.values() {
                if !own.required.is_empty() && own.required.iter().all(|t| t.matches(existing, ns))
                {
                    for t in &own.required {
                        bump(&mut s.affinity_counts, node, &t.topology_key, 1);
                    }
                }
                for t in &own.required_anti {
                    if t.matches(existing, ns) {
                        bump(&mut s.anti_counts, node, &t.topology_key, 1);
                    }
                }
            }
        }
        s
    }

    /// Why `node` is out, if it is (upstream's order: affinity, anti-affinity, existing pods'
    /// anti-affinity).
    pub fn filter(&self, node: &NodeInfo) -> Option<&'static str> {
        let label = |k: &str| node.labels.get(k).and_then(Value::as_str);
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        if let Some(own) = self.pod.affinity.as_deref() {
            let mut pods_exist = true;
            for t in &own.required {
                let Some(v) = label(&t.topology_key) else {
                    // Every topology label must exist on the node.
                    return Some(AFFINITY_MISMATCH);
                };
                if self
                    .affinity_counts
                    .get(&pair(&t.topology_key, v))
                    .copied()
                    .unwrap_or(0)
                    <= 0
                {
                    pods_exist = false;
                }
            }
            // The first pod of a group with affinity to itself: if no pod anywhere matches and
            // the pod matches its own terms, let it in (upstream does the same).
            let first_of_group = self.affinity_counts.is_empty()
                && own.required.iter().all(|t| t.matches(self.pod, self.ns));
            if !(pods_exist || first_of_group) {
                return Some(AFFINITY_MISMATCH);
            }
            if !self.anti_counts.is_empty() {
                for t in &own.required_anti {
                    if let Some(v) = label(&t.topology_key) {
                        if self
                            .anti_counts
                            .get(&pair(&t.topology_key, v))
                            .copied()
                            .unwrap_or(0)
                            > 0
                        {
                            return Some(ANTI_AFFINITY_MISMATCH);
                        }
                    }
                }
            }
        }
        if !self.existing_anti_counts.is_empty() {
            for (k, v) in &node.labels {
                if let Some(v) = v.as_str() {
                    if self
                        .existing_anti_counts
                        .get(&pair(k, v))
                        .copied()
                        .unwrap_or(0)
                        > 0
                    {
                        return Some(EXISTING_ANTI_AFFINITY);
                    }
                }
            }
        }
        None
    }

    /// Scores 0..=100 for the candidates (upstream's Score + NormalizeScore), or None when no
    /// preferred term is in play (every node would score the same).
    pub fn scores<'n>(
        &self,
        candidates: &[&NodeInfo],
        nodes: impl IntoIterator<Item = &'n NodeInfo>,
    ) -> Option<Vec<i64>> {
        let own = self.pod.affinity.as_deref();
        let own_preferred =
            own.is_some_and(|a| !a.preferred.is_empty() || !a.preferred_anti.is_empty());
        let mut topo: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let mut any = false;
        let mut add = |term: &Term, weight: i64, node: &NodeInfo| {
            any = true;
            if let Some(v) = node.labels.get(&term.topology_key).and_then(Value::as_str) {
                *topo
                    .entry(term.topology_key.clone())
                    .or_default()
                    .entry(v.to_string())
                    .or_default() += weight;
            }
        };
        for node in nodes {
            if node.name.is_empty() {
                continue;
            }
            if let Some(own) = own.filter(|_| own_preferred) {
                for existing in node.pods.values() {
                    for (w, t) in &own.preferred {
                        if t.matches(existing, self.ns) {
                            add(t, *w, node);
                        }
                    }
                    for (w, t) in &own.preferred_anti {
                        if t.matches(existing, self.ns) {
                            add(t, -*w, node);
                        }
                    }
                }
            }
            for existing in node.affinity_pods.values() {
                let Some(a) = existing.affinity.as_deref() else {
                    continue;
                };
                for t in &a.required {
                    if t.matches(self.pod, self.ns) {
                        add(t, HARD_POD_AFFINITY_WEIGHT, node);
                    }
                }
                for (w, t) in &a.preferred {
                    if t.matches(self.pod, self.ns) {
                        add(t, *w, node);
                    }
                }
                for (w, t) in &a.preferred_anti {
                    if t.matches(self.pod, self.ns) {
                        add(t, -*w, node);
                    }
                }
            }
        }
        if !any {
            return None;
        }
        let raw: Vec<i64> = candidates
            .iter()
            .map(|n| {
                topo.iter()
                    .map(|(k, by_value)| {
                        n.labels
                            .get(k.as_str())
                            .and_then(Value::as_str)
                            .and_then(|v| by_value.get(v))
                            .copied()
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .collect();
        let (min, max) = (
            raw.iter().copied().min().unwrap_or(0),
            raw.iter().copied().max().unwrap_or(0),
        );
        Some(
            raw.into_iter()
                .map(|s| {
                    if max > min {
                        (s - min) * 100 / (max - min)
                    } else {
                        0
                    }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::PodInfo;
    use serde_json::json;

    fn node(name: &str, zone: &str) -> NodeInfo {
        let mut n = NodeInfo::default();
        n.set_node(&json!({"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}},
            "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "10"}}}));
        n
    }

    fn pod(name: &str, ns: &str, labels: Value, affinity: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
               "spec": {"containers": [{"name": "c"}], "affinity": affinity}})
    }

    fn place(n: &mut NodeInfo, p: &Value) {
        let mut info = PodInfo::from_pod(p);
        info.node = n.name.clone();
        n.add_pod(&info);
    }

    fn verdicts(p: &Value, nodes: &[NodeInfo]) -> Vec<Option<&'static str>> {
        let meta = PodMeta::from_pod(p);
        let ns = NamespaceLabels::default();
        let s = InterPod::new(&meta, nodes, &ns);
        nodes.iter().map(|n| s.filter(n)).collect()
    }

    fn anti(key: &str, app: &str) -> Value {
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}})
    }

    fn with(key: &str, app: &str) -> Value {
        json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}})
    }

    #[test]
    fn required_anti_affinity_and_its_symmetry() {
        let mut nodes = vec![node("a", "z1"), node("b", "z1"), node("c", "z2")];
        let web = |n: &str| {
            pod(
                n,
                "default",
                json!({"app": "web"}),
                anti("kubernetes.io/hostname", "web"),
            )
        };
        place(&mut nodes[0], &web("w1"));
        let v = verdicts(&web("w2"), &nodes);
        assert_eq!(v, vec![Some(ANTI_AFFINITY_MISMATCH), None, None]);
        // A pod without terms is kept away by the placed pod's anti-affinity to it.
        let plain = pod("x", "default", json!({"app": "web"}), Value::Null);
        assert_eq!(
            verdicts(&plain, &nodes),
            vec![Some(EXISTING_ANTI_AFFINITY), None, None]
        );
        // ...but not in another namespace, which the term does not cover.
        let other = pod("x", "other", json!({"app": "web"}), Value::Null);
        assert_eq!(verdicts(&other, &nodes), vec![None, None, None]);
        // Zone-wide anti-affinity takes out the whole zone.
        let zonal = pod(
            "z",
            "default",
            json!({"app": "db"}),
            anti("topology.kubernetes.io/zone", "web"),
        );
        assert_eq!(
            verdicts(&zonal, &nodes),
            vec![
                Some(ANTI_AFFINITY_MISMATCH),
                Some(ANTI_AFFINITY_MISMATCH),
                None
            ]
        );
    }

    #[test]
    fn required_affinity_colocates_and_lets_the_first_pod_in() {
        let mut nodes = vec![node("a", "z1"), node("b", "z1"), node("c", "z2")];
        let cache = |n: &str| {
            pod(
                n,
                "default",
                json!({"app": "cache"}),
                with("kubernetes.io/hostname", "cache"),
            )
        };
        // No pod matches anywhere and the pod matches itself: it may go anywhere.
        assert_eq!(verdicts(&cache("c1"), &nodes), vec![None, None, None]);
        // A pod that does not match its own term has nowhere to go.
        let lonely = pod(
            "l",
            "default",
            json!({"app": "x"}),
            with("kubernetes.io/hostname", "cache"),
        );
        assert_eq!(verdicts(&lonely, &nodes), vec![Some(AFFINITY_MISMATCH); 3]);
        place(&mut nodes[1], &cache("c1"));
        assert_eq!(
            verdicts(&cache("c2"), &nodes),
            vec![Some(AFFINITY_MISMATCH), None, Some(AFFINITY_MISMATCH)]
        );
        let zonal = pod(
            "z",
            "default",
            json!({}),
            with("topology.kubernetes.io/zone", "cache"),
        );
        assert_eq!(
            verdicts(&zonal, &nodes),
            vec![None, None, Some(AFFINITY_MISMATCH)]
        );
    }

    #[test]
    fn namespace_selectors_and_match_label_keys() {
        let mut nodes = vec![node("a", "z1"), node("b", "z2")];
        place(
            &mut nodes[0],
            &pod("p", "team-a", json!({"app": "db", "rev": "1"}), Value::Null),
        );
        let ns = NamespaceLabels::from_namespaces(&[
            json!({"metadata": {"name": "team-a", "labels": {"team": "a"}}}),
            json!({"metadata": {"name": "default"}}),
        ]);
        let term = |ns_sel: Value| {
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": ns_sel,
                 "matchLabelKeys": ["rev"], "topologyKey": "kubernetes.io/hostname"}]}})
        };
        let check = |p: Value| {
            let meta = PodMeta::from_pod(&p);
            let s = InterPod::new(&meta, &nodes, &ns);
            nodes.iter().map(|n| s.filter(n)).collect::<Vec<_>>()
        };
        let by_label = pod(
            "q",
            "default",
            json!({"rev": "1"}),
            term(json!({"matchLabels": {"team": "a"}})),
        );
        assert_eq!(check(by_label), vec![None, Some(AFFINITY_MISMATCH)]);
        let every_ns = pod("q", "default", json!({"rev": "1"}), term(json!({})));
        assert_eq!(check(every_ns), vec![None, Some(AFFINITY_MISMATCH)]);
        // matchLabelKeys: rev=2 selects no placed pod (and the pod does not match app=db itself).
        let other_rev = pod("q", "default", json!({"rev": "2"}), term(json!({})));
        assert_eq!(check(other_rev), vec![Some(AFFINITY_MISMATCH); 2]);
    }

    #[test]
    fn preferred_terms_score_both_ways() {
        let mut nodes = vec![node("a", "z1"), node("b", "z1"), node("c", "z2")];
        place(
            &mut nodes[0],
            &pod("db", "default", json!({"app": "db"}), Value::Null),
        );
        let p = pod(
            "web",
            "default",
            json!({"app": "web"}),
            json!({"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm":
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}}]}}),
        );
        let meta = PodMeta::from_pod(&p);
        let ns = NamespaceLabels::default();
        let s = InterPod::new(&meta, &nodes, &ns);
        let candidates: Vec<&NodeInfo> = nodes.iter().collect();
        assert_eq!(s.scores(&candidates, &nodes), Some(vec![100, 100, 0]));
        // A placed pod's preferred anti-affinity to web pushes web away from its node.
        place(
            &mut nodes[2],
            &pod(
                "lone",
                "default",
                json!({}),
                json!({"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm":
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}}]}}),
            ),
        );
        let s = InterPod::new(&meta, &nodes, &ns);
        let candidates: Vec<&NodeInfo> = nodes.iter().collect();
        assert_eq!(s.scores(&candidates, &nodes), Some(vec![100, 100, 0]));
        let plain = PodMeta::from_pod(&pod("x", "default", json!({"app": "x"}), Value::Null));
        let s = InterPod::new(&plain, &nodes, &ns);
        assert_eq!(s.scores(&candidates, &nodes), None);
    }
}
