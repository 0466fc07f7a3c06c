//! Priority preemption (upstream's DefaultPreemption plugin): a pod that fits nowhere looks for a
//! node where evicting pods of lower priority makes it fit. On each node every lower-priority pod
//! is removed in a what-if copy; if the pod then fits, the removed pods are reprieved one by one,
//! most important first (those whose PodDisruptionBudget would be violated before the others),
//! and the ones that cannot be are the victims. The node chosen has the fewest PDB violations,
//! then the lowest highest-victim priority, the lowest sum of priorities, the fewest victims.
//! Victims get a `DisruptionTarget` condition, a `Preempted` event and are deleted gracefully;
//! the preemptor gets `status.nominatedNodeName` and is retried when they are gone, with the
//! room on that node held for it against pods of lower priority (nominated pods).

use crate::cache::{NodeInfo, PodInfo};
use crate::interpod::{InterPod, NamespaceLabels};
use crate::podmeta::PodMeta;
use crate::spread::Spread;
use crate::volumes::VolumeNeeds;
use crate::{events, plugins};
use k3rs_client::{labels, Client, DeleteParams, ListParams, Patch, Resource};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tracing::{debug, info};

/// Pods that preempted and wait for their victims to go, by node.
#[derive(Debug, Default)]
pub struct Nominations {
    by_node: HashMap<String, HashMap<String, PodInfo>>,
    node_of: HashMap<String, String>,
}

impl Nominations {
    pub fn nominate(&mut self, key: &str, node: &str, info: PodInfo) {
        self.forget(key);
        self.by_node
            .entry(node.to_string())
            .or_default()
            .insert(key.to_string(), info);
        self.node_of.insert(key.to_string(), node.to_string());
    }

    pub fn forget(&mut self, key: &str) {
        if let Some(node) = self.node_of.remove(key) {
            if let Some(pods) = self.by_node.get_mut(&node) {
                pods.remove(key);
                if pods.is_empty() {
                    self.by_node.remove(&node);
                }
            }
        }
    }

    /// `node` as a pod (`key`, `priority`) must see it: with the pods nominated to it that are
    /// at least as important, other than itself. None when there are none (use the node as is).
    pub fn node_view(&self, key: &str, priority: i64, node: &NodeInfo) -> Option<NodeInfo> {
        if self.by_node.is_empty() {
            return None;
        }
        let pods = self.by_node.get(&node.name)?;
        let mut view: Option<NodeInfo> = None;
        for (k, p) in pods {
            if k != key && p.meta.priority >= priority {
                view.get_or_insert_with(|| node.clone()).add_pod(p);
            }
        }
        view
    }
}

/// Upstream's `PodEligibleToPreemptOthers`: not with `preemptionPolicy: Never`, and not again
/// while victims of an earlier preemption on its nominated node are still terminating.
pub fn may_preempt(pod: &Value, meta: &PodMeta, nodes: &BTreeMap<String, NodeInfo>) -> bool {
    if pod["spec"]["preemptionPolicy"].as_str() == Some("Never") {
        return false;
    }
    if let Some(node) = pod["status"]["nominatedNodeName"]
        .as_str()
        .and_then(|n| nodes.get(n))
    {
        if node
            .pods
            .values()
            .any(|p| p.terminating && p.priority < meta.priority)
        {
            return false;
        }
    }
    nodes
        .values()
        .any(|n| n.pods.values().any(|p| p.priority < meta.priority))
}

/// Whether the pod passes every filter on `node`, a what-if copy of its namesake in `nodes`.
fn fits(
    pod: &Value,
    info: &PodInfo,
    node: &NodeInfo,
    nodes: &BTreeMap<String, NodeInfo>,
    volumes: &VolumeNeeds,
    ns: &NamespaceLabels,
) -> bool {
    if !plugins::filter(pod, info, node).is_empty() {
        return false;
    }
    if !volumes.is_empty() && volumes.filter(node).is_some() {
        return false;
    }
    let view = || {
        nodes
            .values()
            .map(move |n| if n.name == node.name { node } else { n })
    };
    Spread::new(pod, info, view()).filter(node).is_none()
        && InterPod::new(&info.meta, view(), ns).filter(node).is_none()
}

/// The pods a PodDisruptionBudget protects that cannot be disrupted any more, given the
/// budgets' `status.disruptionsAllowed` spent in the order of `victims`.
fn split_by_pdb<'v>(
    victims: Vec<&'v PodInfo>,
    pdbs: &[Value],
) -> (Vec<&'v PodInfo>, Vec<&'v PodInfo>) {
    let mut allowed: Vec<i64> = pdbs
        .iter()
        .map(|p| p["status"]["disruptionsAllowed"].as_i64().unwrap_or(0))
        .collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for v in victims {
        let mut violates = false;
        for (i, pdb) in pdbs.iter().enumerate() {
            let selector = &pdb["spec"]["selector"];
            let empty = selector.as_object().is_none_or(|s| s.is_empty());
            if pdb["metadata"]["namespace"].as_str() != Some(v.meta.namespace.as_str())
                || empty
                || !labels::matches(selector, &v.meta.labels)
            {
                continue;
            }
            allowed[i] -= 1;
            if allowed[i] < 0 {
                violates = true;
            }
        }
        if violates {
            violating.push(v);
        } else {
            fine.push(v);
        }
    }
    (violating, fine)
}

/// Where to preempt, and whom.
#[derive(Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<PodMeta>>,
    pub pdb_violations: usize,
}

impl Candidate {
    /// Upstream's `pickOneNodeForPreemption` order, smallest first.
    fn rank(&self) -> (usize, i64, i64, usize) {
        let highest = self
            .victims
            .iter()
            .map(|v| v.priority)
            .max()
            .unwrap_or(i64::MIN);
        // Offset so that negative priorities still sum up as "less".
        let sum = self
            .victims
            .iter()
            .map(|v| v.priority + i32::MAX as i64 + 1)
            .sum();
        (self.pdb_violations, highest, sum, self.victims.len())
    }
}

#[allow(clippy::too_many_arguments)]
fn victims_on(
    pod: &Value,
    info: &PodInfo,
    node: &NodeInfo,
    nodes: &BTreeMap<String, NodeInfo>,
    assigned: &HashMap<String, PodInfo>,
    pdbs: &[Value],
    volumes: &VolumeNeeds,
    ns: &NamespaceLabels,
) -> Option<Candidate> {
    let mut potential: Vec<&PodInfo> = node
        .pods
        .iter()
        .filter(|(_, p)| p.priority < info.meta.priority)
        .filter_map(|(k, _)| assigned.get(k))
        .collect();
    if potential.is_empty() {
        return None;
    }
    let mut what_if = node.clone();
    for v in &potential {
        what_if.remove_pod(v);
    }
    if !fits(pod, info, &what_if, nodes, volumes, ns) {
        return None;
    }
    // Most important first: they are the ones to keep if the pod fits without evicting them.
    potential.sort_by(|a, b| {
        b.meta
            .priority
            .cmp(&a.meta.priority)
            .then_with(|| a.meta.key().cmp(&b.meta.key()))
    });
    let (violating, fine) = split_by_pdb(potential, pdbs);
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (list, violates) in [(violating, true), (fine, false)] {
        for v in list {
            what_if.add_pod(v);
            if !fits(pod, info, &what_if, nodes, volumes, ns) {
                what_if.remove_pod(v);
                victims.push(v.meta.clone());
                pdb_violations += violates as usize;
            }
        }
    }
    Some(Candidate {
        node: node.name.clone(),
        victims,
        pdb_violations,
    })
}

/// The best node to preempt on, if evicting lower-priority pods anywhere makes the pod fit.
#[allow(clippy::too_many_arguments)]
pub fn find(
    pod: &Value,
    info: &PodInfo,
    nodes: &BTreeMap<String, NodeInfo>,
    assigned: &HashMap<String, PodInfo>,
    pdbs: &[Value],
    volumes: &VolumeNeeds,
    ns: &NamespaceLabels,
) -> Option<Candidate> {
    nodes
        .values()
        .filter(|n| !n.name.is_empty())
        .filter_map(|n| victims_on(pod, info, n, nodes, assigned, pdbs, volumes, ns))
        .min_by_key(Candidate::rank)
}

/// Evicts the victims (DisruptionTarget condition, Preempted event, graceful delete) and
/// records the preemptor's `status.nominatedNodeName`.
pub async fn execute(
    client: Arc<dyn Client>,
    recorder: events::Recorder,
    pod: Value,
    candidate: Candidate,
) {
    let pods = Resource::core("pods");
    let scheduler = pod["spec"]["schedulerName"]
        .as_str()
        .unwrap_or("default-scheduler")
        .to_string();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
    for v in &candidate.victims {
        info!(victim = %v.key(), node = %candidate.node, "preempting");
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": now,
        }]}});
        if let Err(e) = client
            .patch(
                &pods,
                Some(&v.namespace),
                &v.name,
                Patch::Strategic(condition),
                Some("status"),
                "default-scheduler",
            )
            .await
        {
            debug!(victim = %v.key(), error = %e, "DisruptionTarget condition");
        }
        let params = DeleteParams {
            precondition_uid: Some(v.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        };
        match client
            .delete(&pods, Some(&v.namespace), &v.name, &params)
            .await
        {
            Ok(_) => {
                let victim = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": v.name, "namespace": v.namespace, "uid": v.uid}});
                recorder
                    .normal(
                        &victim,
                        "Preempted",
                        &format!("Preempted by pod {uid} on node {}", candidate.node),
                        "Preempting",
                    )
                    .await;
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => debug!(victim = %v.key(), error = %e, "deleting victim"),
        }
    }
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    if let Err(e) = client
        .patch(
            &pods,
            Some(ns),
            name,
            Patch::Merge(json!({"status": {"nominatedNodeName": candidate.node}})),
            Some("status"),
            "default-scheduler",
        )
        .await
    {
        debug!(error = %e, "recording nominatedNodeName");
    }
}

impl crate::State {
    /// Called for a pod that fits nowhere: preempts if it may and somewhere it helps.
    pub(crate) async fn preempt(
        &mut self,
        key: &str,
        pod: &Value,
        volumes: &VolumeNeeds,
        ns: &NamespaceLabels,
    ) {
        let info = PodInfo::from_pod(pod);
        if !may_preempt(pod, &info.meta, &self.nodes) {
            return;
        }
        let pdbs = match self
            .client
            .list(
                &Resource::new("policy", "v1", "poddisruptionbudgets"),
                None,
                &ListParams::default(),
            )
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                debug!(error = %e, "listing PodDisruptionBudgets");
                Vec::new()
            }
        };
        let Some(candidate) = find(pod, &info, &self.nodes, &self.assigned, &pdbs, volumes, ns)
        else {
            return;
        };
        debug!(node = %candidate.node, victims = candidate.victims.len(), "preemption");
        self.nominated.nominate(key, &candidate.node, info);
        tokio::spawn(execute(
            self.client.clone(),
            self.recorder.clone(),
            pod.clone(),
            candidate,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str) -> NodeInfo {
        let mut n = NodeInfo::default();
        n.set_node(
            &json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "10"}}}),
        );
        n
    }

    fn pod(name: &str, cpu: &str, priority: i64, app: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                            "labels": {"app": app}},
               "spec": {"priority": priority,
                        "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}})
    }

    struct Cluster {
        nodes: BTreeMap<String, NodeInfo>,
        assigned: HashMap<String, PodInfo>,
    }

    impl Cluster {
        fn new(nodes: &[(&str, &str)]) -> Cluster {
            Cluster {
                nodes: nodes
                    .iter()
                    .map(|(n, cpu)| (n.to_string(), node(n, cpu)))
                    .collect(),
                assigned: HashMap::new(),
            }
        }

        fn place(&mut self, node: &str, p: Value) {
            let mut info = PodInfo::from_pod(&p);
            info.node = node.to_string();
            self.nodes.get_mut(node).expect("node").add_pod(&info);
            self.assigned.insert(info.meta.key(), info);
        }

        fn find(&self, p: &Value, pdbs: &[Value]) -> Option<(String, Vec<String>, usize)> {
            let info = PodInfo::from_pod(p);
            let c = find(
                p,
                &info,
                &self.nodes,
                &self.assigned,
                pdbs,
                &VolumeNeeds::default(),
                &NamespaceLabels::default(),
            )?;
            let mut victims: Vec<String> = c.victims.iter().map(|v| v.name.clone()).collect();
            victims.sort();
            Some((c.node, victims, c.pdb_violations))
        }
    }

    #[test]
    fn evicts_the_fewest_lowest_priority_pods() {
        let mut c = Cluster::new(&[("a", "2"), ("b", "2")]);
        c.place("a", pod("a-low", "1", 1, "x"));
        c.place("a", pod("a-mid", "1", 5, "x"));
        c.place("b", pod("b-mid1", "1", 5, "x"));
        c.place("b", pod("b-mid2", "1", 5, "x"));
        // 1 cpu is enough: one victim, the lowest-priority one.
        assert_eq!(
            c.find(&pod("hi", "1", 10, "y"), &[]),
            Some(("a".into(), vec!["a-low".into()], 0))
        );
        // 2 cpus: both nodes need two victims; a's highest victim (5) ties b's, but a's sum is lower.
        assert_eq!(
            c.find(&pod("hi", "2", 10, "y"), &[]),
            Some(("a".into(), vec!["a-low".into(), "a-mid".into()], 0))
        );
        // Nothing of lower priority to evict, or too big for any node: no preemption.
        assert_eq!(c.find(&pod("eq", "1", 1, "y"), &[]), None);
        assert_eq!(c.find(&pod("huge", "3", 100, "y"), &[]), None);
    }

    #[test]
    fn prefers_victims_whose_budget_allows_disruption() {
        let mut c = Cluster::new(&[("a", "1"), ("b", "1")]);
        c.place("a", pod("guarded", "1", 1, "db"));
        c.place("b", pod("free", "1", 1, "web"));
        let pdb = json!({"metadata": {"name": "db", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}},
            "status": {"disruptionsAllowed": 0}});
        assert_eq!(
            c.find(&pod("hi", "1", 10, "y"), std::slice::from_ref(&pdb)),
            Some(("b".into(), vec!["free".into()], 0))
        );
        // Only the guarded pod left: preempted anyway (best effort), counted as a violation.
        let mut c = Cluster::new(&[("a", "1")]);
        c.place("a", pod("guarded", "1", 1, "db"));
        assert_eq!(
            c.find(&pod("hi", "1", 10, "y"), &[pdb]),
            Some(("a".into(), vec!["guarded".into()], 1))
        );
    }

    #[test]
    fn eligibility_and_nominated_room() {
        let mut c = Cluster::new(&[("a", "1")]);
        c.place("a", pod("low", "1", 1, "x"));
        let hi = pod("hi", "1", 10, "y");
        let meta = PodMeta::from_pod(&hi);
        assert!(may_preempt(&hi, &meta, &c.nodes));
        let mut never = hi.clone();
        never["spec"]["preemptionPolicy"] = json!("Never");
        assert!(!may_preempt(&never, &meta, &c.nodes));
        // Victims still terminating on the nominated node: wait instead of evicting more.
        let mut leaving = pod("low", "1", 1, "x");
        leaving["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        c.place("a", leaving);
        let mut nominated = hi.clone();
        nominated["status"]["nominatedNodeName"] = json!("a");
        assert!(!may_preempt(&nominated, &meta, &c.nodes));

        let mut noms = Nominations::default();
        let empty = node("a", "1");
        noms.nominate("default/hi", "a", PodInfo::from_pod(&hi));
        let low = pod("other", "1", 1, "x");
        let view = noms.node_view("default/other", 1, &empty).expect("held");
        assert_eq!(
            plugins::filter(&low, &PodInfo::from_pod(&low), &view),
            vec!["Insufficient cpu"]
        );
        assert!(
            noms.node_view("default/hi", 10, &empty).is_none(),
            "not against itself"
        );
        assert!(
            noms.node_view("default/top", 20, &empty).is_none(),
            "not against higher"
        );
        noms.forget("default/hi");
        assert!(noms.node_view("default/other", 1, &empty).is_none());
    }
}
