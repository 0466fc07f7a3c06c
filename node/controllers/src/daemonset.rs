//! The DaemonSet controller: one pod per eligible node (nodeSelector, required node affinity,
//! NoSchedule/NoExecute taints tolerated), each pinned to its node with a required node affinity
//! term `matchFields metadata.name` and bound by the scheduler, as upstream does. Pods get
//! upstream's automatic tolerations. RollingUpdate (maxUnavailable, maxSurge) and OnDelete, the
//! template history in ControllerRevisions, and the status `kubectl rollout status ds/x` reads.

use crate::history::{self, HASH_LABEL};
use crate::informer::{key_of, Queue};
use crate::selector::{self, available, controller_of, is_deleting, is_terminal, split_key};
use crate::{enqueue, Ctx, Error};
use k3rs_client::{DeleteParams, Resource};
use k3rs_scheduler::cache::NodeInfo;
use k3rs_scheduler::plugins::{term_matches, toleration_matches};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const MANAGER: &str = "daemon-set-controller";
/// The deprecated label upstream still sets: the DaemonSet's generation when the pod was made.
const TEMPLATE_GENERATION: &str = "pod-template-generation";

pub fn resource() -> Resource {
    Resource::new("apps", "v1", "daemonsets")
}

fn pods() -> Resource {
    Resource::core("pods")
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

/// Upstream's `AddOrUpdateDaemonPodTolerations`: what every DaemonSet pod tolerates.
pub fn with_daemon_tolerations(spec: &mut Value) {
    let mut tolerations: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let t = json!({"key": key, "operator": "Exists", "effect": effect});
        if !tolerations
            .iter()
            .any(|x| x["key"] == key && x["operator"] == "Exists" && x["effect"] == effect)
        {
            tolerations.push(t);
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec["hostNetwork"].as_bool() == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    spec["tolerations"] = json!(tolerations);
}

/// The pod template's required node affinity replaced by a single term pinning it to `node`
/// (upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`; the node already passed the original).
pub fn pin_to_node(spec: &mut Value, node: &str) {
    if !spec["affinity"].is_object() {
        spec["affinity"] = json!({});
    }
    if !spec["affinity"]["nodeAffinity"].is_object() {
        spec["affinity"]["nodeAffinity"] = json!({});
    }
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]});
}

/// The node a daemon pod is for: where it runs, or where its affinity pins it.
pub fn target_node(pod: &Value) -> Option<&str> {
    if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()?
        .iter()
        .flat_map(|t| t["matchFields"].as_array().into_iter().flatten())
        .find(|f| f["key"] == "metadata.name" && f["operator"] == "In")
        .and_then(|f| f["values"][0].as_str())
}

/// (should run a new pod there, should keep an existing one running): upstream's
/// `NodeShouldRunDaemonPod`. A NoSchedule taint keeps new pods off; only NoExecute evicts.
pub fn node_should_run(template_spec: &Value, node: &Value) -> (bool, bool) {
    let mut info = NodeInfo::default();
    info.set_node(node);
    if let Some(n) = template_spec["nodeName"].as_str().filter(|n| !n.is_empty()) {
        if n != info.name {
            return (false, false);
        }
    }
    if let Some(sel) = template_spec["nodeSelector"].as_object() {
        if sel.iter().any(|(k, v)| info.labels.get(k) != Some(v)) {
            return (false, false);
        }
    }
    if let Some(terms) = template_spec["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .filter(|t| !t.is_empty())
    {
        if !terms.iter().any(|t| term_matches(t, &info)) {
            return (false, false);
        }
    }
    let mut spec = template_spec.clone();
    with_daemon_tolerations(&mut spec);
    let tolerations: Vec<&Value> = spec["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let tolerated = |effect: &str| {
        info.taints.iter().filter(|t| t.effect == effect).all(|t| {
            tolerations
                .iter()
                .any(|tol| toleration_matches(tol, &t.key, &t.value, &t.effect))
        })
    };
    let no_execute = tolerated("NoExecute");
    (no_execute && tolerated("NoSchedule"), no_execute)
}

/// An IntOrString as a count of `total`; percentages round up (upstream's maxUnavailable and
/// maxSurge for DaemonSets both round up).
fn scaled(v: &Value, total: i64) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            (p * total + 99) / 100
        }
        _ => 0,
    }
}

/// (maxSurge, maxUnavailable) for `desired` nodes; never both zero.
pub fn fenceposts(ds: &Value, desired: i64) -> (i64, i64) {
    let ru = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    let surge = scaled(ru.get("maxSurge").unwrap_or(&json!(0)), desired);
    let mut unavailable = scaled(ru.get("maxUnavailable").unwrap_or(&json!(1)), desired);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

#[derive(Clone)]
pub struct DaemonSetController {
    ctx: Arc<Ctx>,
    queue: Queue,
}

impl DaemonSetController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = DaemonSetController {
            ctx: ctx.clone(),
            queue: Queue::default(),
        };
        enqueue::own_objects(&ctx.daemonsets, &me.queue);
        enqueue::controllers_of(&ctx.pods, "DaemonSet", &me.queue);
        // Nodes: added, removed, or changed in what eligibility depends on (not heartbeats).
        let m = me.clone();
        ctx.nodes.on_change(Box::new(move |old, new| {
            let relevant = match (old, new) {
                (Some(o), Some(n)) => NodeInfo::fingerprint(o) != NodeInfo::fingerprint(n),
                _ => true,
            };
            if relevant {
                for d in m.ctx.daemonsets.list(None) {
                    m.queue.add(key_of(&d));
                }
            }
        }));
        me
    }

    pub async fn run(self) {
        let me = &self;
        crate::reconcile_keys(&self.queue, "DaemonSet", |key| async move {
            me.reconcile(&key).await
        })
        .await
    }

    pub async fn reconcile(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(ds) = self.ctx.daemonsets.get(key) else {
            return Ok(None);
        };
        if is_deleting(&ds) {
            return Ok(None);
        }
        let mut revs = history::owned(&self.ctx, &ds);
        let update_rev =
            history::current(&self.ctx, &ds, "apps/v1", "DaemonSet", &revs, MANAGER).await?;
        if !revs.iter().any(|r| name_of(r) == name_of(&update_rev)) {
            revs.push(update_rev.clone());
        }
        let hash = history::hash_of(&update_rev);
        let (ns, _) = split_key(key);
        let uid = ds["metadata"]["uid"].as_str().unwrap_or("");
        let owned: Vec<Value> = self
            .ctx
            .pods
            .list(Some(ns))
            .into_iter()
            .filter(|p| controller_of(p).is_some_and(|(_, _, u)| u == uid))
            .collect();
        // Pods per node (a pod for a node that is gone counts under that name).
        let mut by_node: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for p in &owned {
            if let Some(n) = target_node(p) {
                by_node.entry(n.to_string()).or_default().push(p);
            }
        }
        let nodes = self.ctx.nodes.list(None);
        let template_spec = &ds["spec"]["template"]["spec"];
        let mut eligible: BTreeMap<String, (bool, bool)> = BTreeMap::new();
        for n in &nodes {
            eligible.insert(name_of(n).to_string(), node_should_run(template_spec, n));
        }
        let desired = eligible.values().filter(|(run, _)| *run).count() as i64;
        let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = chrono::Utc::now();
        let is_available =
            |p: &Value| !is_deleting(p) && !is_terminal(p) && available(p, min_ready, now).is_ok();
        let is_new = |p: &Value| p["metadata"]["labels"][HASH_LABEL].as_str() == Some(&hash);

        let mut create: Vec<String> = Vec::new();
        let mut delete: Vec<&Value> = Vec::new();
        for (node, (should_run, keep)) in &eligible {
            let live: Vec<&Value> = by_node
                .get(node)
                .map(|v| v.iter().copied().filter(|p| !is_deleting(p)).collect())
                .unwrap_or_default();
            // Failed pods are replaced.
            let (failed, live): (Vec<&Value>, Vec<&Value>) =
                live.into_iter().partition(|p| is_terminal(p));
            delete.extend(failed);
            if *should_run || (*keep && !live.is_empty()) {
                if live.is_empty() {
                    if *should_run
                        && !by_node
                            .get(node)
                            .is_some_and(|v| v.iter().any(|p| is_deleting(p)))
                    {
                        create.push(node.clone());
                    }
                } else if live.len() > 1 {
                    // More than one: keep the oldest new-revision one (a surge pod replaces
                    // its old pod in the rolling update below).
                    let (new, old): (Vec<&Value>, Vec<&Value>) =
                        live.iter().partition(|p| is_new(p));
                    if new.len() > 1 {
                        let mut sorted = new.clone();
                        sorted.sort_by_key(|p| {
                            p["metadata"]["creationTimestamp"]
                                .as_str()
                                .map(String::from)
                        });
                        delete.extend(sorted.into_iter().skip(1));
                    }
                    if new.is_empty() && old.len() > 1 {
                        delete.extend(old.into_iter().skip(1));
                    }
                }
            } else {
                delete.extend(live);
            }
        }
        // Pods for nodes that no longer exist.
        for (node, ps) in &by_node {
            if !eligible.contains_key(node) {
                delete.extend(ps.iter().copied().filter(|p| !is_deleting(p)));
            }
        }

        if ds["spec"]["updateStrategy"]["type"].as_str() != Some("OnDelete") {
            let (surge, max_unavailable) = fenceposts(&ds, desired);
            self.rolling_update(
                &eligible,
                &by_node,
                &is_new,
                &is_available,
                surge,
                max_unavailable,
                &mut create,
                &mut delete,
            );
        }
        let mut seen = HashSet::new();
        delete.retain(|p| seen.insert(name_of(p).to_string()));
        for node in &create {
            self.create_pod(&ds, &update_rev, node).await?;
        }
        for p in delete {
            self.delete_pod(&ds, p).await?;
        }
        let live_revs: HashSet<String> = owned
            .iter()
            .filter_map(|p| p["metadata"]["labels"][HASH_LABEL].as_str())
            .map(|h| format!("{}-{h}", name_of(&ds)))
            .chain([name_of(&update_rev).to_string()])
            .collect();
        history::truncate(&self.ctx, &ds, &revs, &live_revs).await?;
        self.update_status(&ds, &eligible, &hash).await
    }

    /// Upstream's rollingUpdate: old pods go while the unavailable count stays within
    /// maxUnavailable; with maxSurge, a new pod starts beside an available old one first, and
    /// the old one goes once the new one is available.
    #[allow(clippy::too_many_arguments)]
    fn rolling_update<'a>(
        &self,
        eligible: &BTreeMap<String, (bool, bool)>,
        by_node: &BTreeMap<String, Vec<&'a Value>>,
        is_new: &dyn Fn(&Value) -> bool,
        is_available: &dyn Fn(&Value) -> bool,
        surge: i64,
        max_unavailable: i64,
        create: &mut Vec<String>,
        delete: &mut Vec<&'a Value>,
    ) {
        let mut unavailable = 0;
        let mut candidates: Vec<(&str, &'a Value, bool)> = Vec::new(); // (node, old pod, old available)
        let mut surging = 0;
        let mut surge_ready: Vec<&'a Value> = Vec::new();
        for (node, (should_run, _)) in eligible {
            if !should_run {
                continue;
            }
            let live: Vec<&'a Value> = by_node
                .get(node)
                .map(|v| {
                    v.iter()
                        .copied()
                        .filter(|p| !is_deleting(p) && !is_terminal(p))
                        .collect()
                })
                .unwrap_or_default();
            let new: Vec<&&Value> = live.iter().filter(|p| is_new(p)).collect();
            let old: Vec<&&Value> = live.iter().filter(|p| !is_new(p)).collect();
            let any_available = live.iter().any(|p| is_available(p));
            if !any_available {
                unavailable += 1;
            }
            match (new.first(), old.first()) {
                (Some(n), Some(o)) => {
                    surging += 1;
                    if is_available(n) {
                        surge_ready.push(o);
                    }
                }
                (None, Some(o)) => candidates.push((node, o, is_available(o))),
                _ => {}
            }
        }
        // Old pods whose replacement on the same node is available go now.
        delete.extend(surge_ready.iter().copied());
        if surge > 0 {
            for (node, o, old_available) in &candidates {
                if !old_available {
                    // An unavailable old pod is replaced in place.
                    delete.push(o);
                } else if surging < surge {
                    create.push(node.to_string());
                    surging += 1;
                }
            }
            return;
        }
        // Unavailable old pods first: deleting them costs no availability.
        for (_, o, old_available) in &candidates {
            if !old_available {
                delete.push(o);
            }
        }
        for (_, o, old_available) in &candidates {
            if *old_available && unavailable < max_unavailable {
                delete.push(o);
                unavailable += 1;
            }
        }
    }

    async fn create_pod(&self, ds: &Value, rev: &Value, node: &str) -> Result<(), Error> {
        let ns = ds["metadata"]["namespace"].as_str().unwrap_or("");
        let template = history::template_of(rev);
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels[HASH_LABEL] = json!(history::hash_of(rev));
        labels[TEMPLATE_GENERATION] = json!(ds["metadata"]["generation"]
            .as_i64()
            .unwrap_or(1)
            .to_string());
        let mut meta = json!({"generateName": format!("{}-", name_of(ds)), "labels": labels,
            "ownerReferences": [selector::owner_ref("apps/v1", "DaemonSet", ds)]});
        if let Some(a) = template["metadata"]["annotations"].as_object() {
            meta["annotations"] = json!(a);
        }
        let mut spec = template["spec"].clone();
        with_daemon_tolerations(&mut spec);
        pin_to_node(&mut spec, node);
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec});
        match self
            .ctx
            .client
            .create(&pods(), Some(ns), pod, MANAGER)
            .await
        {
            Ok(o) => {
                self.ctx.pods.observe(&o);
                self.ctx
                    .recorder
                    .normal(
                        ds,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", name_of(&o)),
                        "Create",
                    )
                    .await;
                Ok(())
            }
            Err(e) => {
                self.ctx
                    .recorder
                    .warning(
                        ds,
                        "FailedCreate",
                        &format!("Error creating: {}", e.message),
                        "Create",
                    )
                    .await;
                Err(Error::Api("creating a pod", e))
            }
        }
    }

    async fn delete_pod(&self, ds: &Value, p: &Value) -> Result<(), Error> {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
        let params = DeleteParams {
            precondition_uid: p["metadata"]["uid"].as_str().map(String::from),
            ..Default::default()
        };
        match self
            .ctx
            .client
            .delete(&pods(), Some(ns), name_of(p), &params)
            .await
        {
            Ok(o) => {
                if is_deleting(&o) {
                    self.ctx.pods.observe(&o);
                }
                self.ctx
                    .recorder
                    .normal(
                        ds,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", name_of(p)),
                        "Delete",
                    )
                    .await;
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(Error::Api("deleting a pod", e)),
        }
    }

    async fn update_status(
        &self,
        ds: &Value,
        eligible: &BTreeMap<String, (bool, bool)>,
        hash: &str,
    ) -> Result<Option<Duration>, Error> {
        let ns = ds["metadata"]["namespace"].as_str().unwrap_or("");
        let uid = ds["metadata"]["uid"].as_str().unwrap_or("");
        let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = chrono::Utc::now();
        let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for p in self.ctx.pods.list(Some(ns)) {
            if controller_of(&p).is_some_and(|(_, _, u)| u == uid)
                && !is_deleting(&p)
                && !is_terminal(&p)
            {
                if let Some(n) = target_node(&p).map(String::from) {
                    by_node.entry(n).or_default().push(p);
                }
            }
        }
        let (mut desired, mut current, mut miss, mut ready, mut avail, mut updated) =
            (0, 0, 0, 0, 0, 0);
        let mut recheck: Option<Duration> = None;
        for (node, ps) in &by_node {
            let should_run = eligible.get(node).is_some_and(|(run, _)| *run);
            if !should_run {
                miss += 1;
                continue;
            }
            current += 1;
            // The newest pod on the node speaks for it.
            let p = ps
                .iter()
                .max_by_key(|p| {
                    p["metadata"]["creationTimestamp"]
                        .as_str()
                        .map(String::from)
                })
                .expect("non-empty");
            if selector::is_ready(p) {
                ready += 1;
                match available(p, min_ready, now) {
                    Ok(()) => avail += 1,
                    Err(Some(d)) => recheck = Some(recheck.map_or(d, |r| r.min(d))),
                    Err(None) => {}
                }
            }
            if ps
                .iter()
                .any(|p| p["metadata"]["labels"][HASH_LABEL].as_str() == Some(hash))
            {
                updated += 1;
            }
        }
        for (run, _) in eligible.values() {
            if *run {
                desired += 1;
            }
        }
        let mut status = Map::new();
        for (k, v) in [
            ("currentNumberScheduled", current),
            ("desiredNumberScheduled", desired),
            ("numberMisscheduled", miss),
            ("numberReady", ready),
        ] {
            status.insert(k.into(), json!(v));
        }
        status.insert(
            "observedGeneration".into(),
            ds["metadata"]["generation"].clone(),
        );
        for (k, v) in [
            ("updatedNumberScheduled", updated),
            ("numberAvailable", avail),
            ("numberUnavailable", (desired - avail).max(0)),
        ] {
            if v != 0 {
                status.insert(k.into(), json!(v));
            }
        }
        if let Some(c) = ds["status"].get("collisionCount") {
            status.insert("collisionCount".into(), c.clone());
        }
        let (client, cache) = (self.ctx.client.as_ref(), &self.ctx.daemonsets);
        let new = Value::Object(status);
        crate::status::write_if_changed(client, cache, &resource(), MANAGER, ds, new).await?;
        Ok(recheck.map(|d| d + Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn eligibility_follows_selectors_affinity_and_taints() {
        let plain = json!({"containers": [{"name": "c", "image": "i"}]});
        let n = node("a", json!({"disk": "ssd"}), json!([]));
        assert_eq!(node_should_run(&plain, &n), (true, true));
        let sel = json!({"nodeSelector": {"disk": "hdd"}});
        assert_eq!(node_should_run(&sel, &n), (false, false));
        let aff = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}});
        assert_eq!(node_should_run(&aff, &n), (true, true));
        let tainted = node(
            "b",
            json!({}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            node_should_run(&plain, &tainted),
            (false, true),
            "NoSchedule: no new pod, an existing one stays"
        );
        let tol = json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]});
        assert_eq!(node_should_run(&tol, &tainted), (true, true));
        let evicting = node("c", json!({}), json!([{"key": "x", "effect": "NoExecute"}]));
        assert_eq!(node_should_run(&plain, &evicting), (false, false));
        // The automatic tolerations cover the node-condition taints.
        let cordoned = node(
            "d",
            json!({}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert_eq!(node_should_run(&plain, &cordoned), (true, true));
    }

    #[test]
    fn pods_are_pinned_and_tolerate_node_conditions() {
        let mut spec = json!({"containers": [], "hostNetwork": true,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]});
        with_daemon_tolerations(&mut spec);
        let t = spec["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 7, "{t:?}");
        assert!(t
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/network-unavailable"));
        pin_to_node(&mut spec, "node-a");
        let pod = json!({"spec": spec});
        assert_eq!(target_node(&pod), Some("node-a"));
        let bound = json!({"spec": {"nodeName": "node-b"}});
        assert_eq!(target_node(&bound), Some("node-b"));
    }

    #[test]
    fn rolling_fenceposts() {
        let ds = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}}}});
        assert_eq!(fenceposts(&ds, 15), (0, 2));
        let ds = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "20%"}}}});
        assert_eq!(fenceposts(&ds, 3), (1, 0));
        assert_eq!(fenceposts(&json!({}), 3), (0, 1));
    }
}
