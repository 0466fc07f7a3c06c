//! The node lifecycle controller (upstream's `pkg/controller/nodelifecycle`) and its NoExecute
//! taint manager.
//!
//! Health: a node's last heartbeat is the newer of its Lease's `renewTime` (in
//! `kube-node-lease`) and its Ready condition's `lastHeartbeatTime`. When that is older than the
//! grace period (`--node-monitor-grace-period`, 40 s, or the Lease's own duration when that is
//! longer: the kubelet inside `k3rs server` renews a 360 s lease every 300 s to spare the disk),
//! every condition turns `Unknown` ("Kubelet stopped posting node status."). A node that never
//! sent a heartbeat — a Node object written by hand or by a test, with no kubelet behind it — is
//! left alone rather than declared dead.
//!
//! Taints follow the Ready condition: False → `node.kubernetes.io/not-ready`, Unknown →
//! `node.kubernetes.io/unreachable`, each as NoSchedule and NoExecute; they go away when the node
//! is Ready again. The taint manager deletes the node's pods that do not tolerate a NoExecute
//! taint, at once, or `tolerationSeconds` after the taint was added (the API server gives every
//! pod 300 s for these two taints).

use crate::informer::{key_of, Informer, Queue};
use crate::selector::{is_deleting, is_terminal};
use crate::{Ctx, Error};
use chrono::{DateTime, Utc};
use k3rs_client::{DeleteParams, Resource};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, info_span, Instrument};

const MANAGER: &str = "node-lifecycle-controller";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Upstream's `--node-monitor-grace-period` default.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(40);
const LEASE_NAMESPACE: &str = "kube-node-lease";

#[derive(Clone)]
pub struct NodeLifecycleController {
    ctx: Arc<Ctx>,
    nodes: Informer,
    leases: Informer,
    queue: Queue,
    grace_period: Duration,
    /// The earliest timed re-check already waiting per node, so a busy node does not pile up a
    /// sleeping task per pod change.
    wakeups: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
}

/// What the node's heartbeats say at `now`.
#[derive(Debug, PartialEq, Eq)]
pub enum Health {
    /// Never heartbeated: not watched.
    Unmonitored,
    /// Heard from recently; look again after this long.
    Alive(Duration),
    /// Silent for longer than the grace period.
    Silent,
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// The node's health from its Ready heartbeat and Lease, with grace `grace` (or the Lease's
/// duration when longer).
pub fn health(node: &Value, lease: Option<&Value>, grace: Duration, now: DateTime<Utc>) -> Health {
    let ready_beat = ready_condition(node).and_then(|c| parse_time(&c["lastHeartbeatTime"]));
    let lease_beat = lease.and_then(|l| parse_time(&l["spec"]["renewTime"]));
    let Some(last) = ready_beat.max(lease_beat) else {
        return Health::Unmonitored;
    };
    let lease_duration = lease
        .and_then(|l| l["spec"]["leaseDurationSeconds"].as_u64())
        .map(Duration::from_secs)
        .unwrap_or_default();
    let grace = grace.max(lease_duration);
    let deadline = last + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    if deadline <= now {
        Health::Silent
    } else {
        Health::Alive((deadline - now).to_std().unwrap_or_default())
    }
}

/// Conditions of a silent node: every one Unknown, heartbeat times kept.
pub fn unknown_conditions(node: &Value, now: &str) -> Value {
    let mut conds: Vec<Value> = node["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        if !conds.iter().any(|c| c["type"] == t) {
            conds.push(json!({"type": t}));
        }
    }
    for c in conds.iter_mut() {
        if c["status"] != "Unknown" {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!("Unknown");
        c["reason"] = json!("NodeStatusUnknown");
        c["message"] = json!("Kubelet stopped posting node status.");
    }
    json!(conds)
}

/// The node's taints with our four (not-ready/unreachable × NoSchedule/NoExecute) made to match
/// its Ready status; other taints, and ours that stay, are kept as they are.
pub fn desired_taints(node: &Value, now: &str) -> Vec<Value> {
    let ready = ready_condition(node)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("");
    let want: Option<&str> = match ready {
        "False" => Some(NOT_READY),
        "Unknown" => Some(UNREACHABLE),
        _ => None,
    };
    let mut taints: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    taints.retain(|t| {
        let key = t["key"].as_str().unwrap_or("");
        let ours = key == NOT_READY || key == UNREACHABLE;
        !ours
            || (Some(key) == want
                && matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
    });
    if let Some(key) = want {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints
                .iter()
                .any(|t| t["key"] == key && t["effect"] == effect)
            {
                let mut t = json!({"key": key, "effect": effect});
                if effect == "NoExecute" {
                    t["timeAdded"] = json!(now);
                }
                taints.push(t);
            }
        }
    }
    taints
}

/// Whether `toleration` tolerates `taint` (upstream's `ToleratesTaint`).
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = toleration["effect"].as_str().unwrap_or("");
    if !effect.is_empty() && Some(effect) != taint["effect"].as_str() {
        return false;
    }
    let key = toleration["key"].as_str().unwrap_or("");
    let op = toleration["operator"].as_str().unwrap_or("Equal");
    if key.is_empty() {
        return op == "Exists";
    }
    if Some(key) != taint["key"].as_str() {
        return false;
    }
    match op {
        "Exists" => true,
        _ => toleration["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or(""),
    }
}

/// When a pod must go from a node with these NoExecute taints: None = it tolerates them all
/// forever; Some(t) = at t (t ≤ now: at once).
pub fn eviction_time(pod: &Value, taints: &[Value], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let tolerations: Vec<&Value> = pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut due: Option<DateTime<Utc>> = None;
    for taint in taints.iter().filter(|t| t["effect"] == "NoExecute") {
        let matching: Vec<&&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // The shortest tolerationSeconds among the matching tolerations; none = forever.
        let Some(secs) = matching
            .iter()
            .filter_map(|t| t["tolerationSeconds"].as_i64())
            .min()
        else {
            continue;
        };
        let added = parse_time(&taint["timeAdded"]).unwrap_or(now);
        let at = added + chrono::Duration::seconds(secs.max(0));
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    due
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl NodeLifecycleController {
    pub fn new(ctx: Arc<Ctx>, grace_period: Duration) -> Self {
        let me = NodeLifecycleController {
            ctx: ctx.clone(),
            nodes: Informer::new(Resource::core("nodes")),
            leases: Informer::new(Resource::new("coordination.k8s.io", "v1", "leases")),
            queue: Queue::default(),
            grace_period,
            wakeups: Arc::default(),
        };
        let q = me.queue.clone();
        me.nodes.on_change(Box::new(move |_, new| {
            if let Some(n) = new {
                q.add(key_of(n));
            }
        }));
        let q = me.queue.clone();
        me.leases.on_change(Box::new(move |_, new| {
            if let Some(l) = new.filter(|l| l["metadata"]["namespace"] == LEASE_NAMESPACE) {
                q.add(l["metadata"]["name"].as_str().unwrap_or("").to_string());
            }
        }));
        let q = me.queue.clone();
        ctx.pods.on_change(Box::new(move |_, new| {
            // A pod arriving on (or changing its tolerations on) a tainted node.
            if let Some(node) = new.and_then(|p| p["spec"]["nodeName"].as_str()) {
                q.add(node.to_string());
            }
        }));
        me
    }

    /// Watches nodes and leases and reconciles nodes, until dropped.
    pub async fn run(self) {
        let nodes = self.nodes.clone().run(self.ctx.client.clone());
        let leases = self.leases.clone().run(self.ctx.client.clone());
        let work = async {
            self.nodes.wait_synced().await;
            self.leases.wait_synced().await;
            for n in self.nodes.list(None) {
                self.queue.add(key_of(&n));
            }
            loop {
                let key = self.queue.pop().await;
                let span = info_span!("reconcile", kind = "Node", name = %key);
                match self.reconcile(&key).instrument(span.clone()).await {
                    Ok(Some(after)) => self.wake(key, after),
                    Ok(None) => {}
                    Err(e) => {
                        span.in_scope(|| tracing::warn!(error = %e, "reconcile failed"));
                        self.wake(key, Duration::from_secs(1));
                    }
                }
            }
        };
        tokio::select! {
            _ = nodes => {}
            _ = leases => {}
            _ = work => {}
        }
    }

    /// Re-checks `key` after `after`, unless an earlier re-check is already waiting.
    fn wake(&self, key: String, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        if let Ok(mut w) = self.wakeups.lock() {
            let now = tokio::time::Instant::now();
            if w.get(&key).is_some_and(|&t| t > now && t <= at) {
                return;
            }
            w.insert(key.clone(), at);
        }
        self.queue.add_after(key, after);
    }

    pub async fn reconcile(&self, name: &str) -> Result<Option<Duration>, Error> {
        let Some(mut node) = self.nodes.get(name) else {
            return Ok(None);
        };
        let now = Utc::now();
        let stamp = rfc3339(now);
        let lease = self.leases.get(&format!("{LEASE_NAMESPACE}/{name}"));
        let mut recheck: Option<Duration> = None;
        let nodes = Resource::core("nodes");
        match health(&node, lease.as_ref(), self.grace_period, now) {
            Health::Unmonitored => {}
            Health::Alive(left) => recheck = Some(left),
            Health::Silent => {
                let was = ready_condition(&node)
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("")
                    .to_string();
                if was != "Unknown" {
                    let mut updated = node.clone();
                    updated["status"]["conditions"] = unknown_conditions(&node, &stamp);
                    node = match self
                        .ctx
                        .client
                        .replace(&nodes, None, name, updated, Some("status"), MANAGER)
                        .await
                    {
                        Ok(n) => n,
                        Err(e) if e.is_conflict() => return Ok(Some(Duration::from_millis(100))),
                        Err(e) => return Err(Error::Api("marking node Unknown", e)),
                    };
                    self.nodes.observe(&node);
                    info!(node = %name, "node stopped posting status; Ready=Unknown");
                    self.ctx
                        .recorder
                        .normal(
                            &node,
                            "NodeNotReady",
                            &format!("Node {name} status is now: NodeNotReady"),
                            "NodeNotReady",
                        )
                        .await;
                }
            }
        }
        let taints = desired_taints(&node, &stamp);
        let current = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if taints != current {
            let mut updated = node.clone();
            updated["spec"]["taints"] = json!(taints);
            if taints.is_empty() {
                if let Some(spec) = updated["spec"].as_object_mut() {
                    spec.remove("taints");
                }
            }
            node = match self
                .ctx
                .client
                .replace(&nodes, None, name, updated, None, MANAGER)
                .await
            {
                Ok(n) => n,
                Err(e) if e.is_conflict() => return Ok(Some(Duration::from_millis(100))),
                Err(e) => return Err(Error::Api("writing node taints", e)),
            };
            self.nodes.observe(&node);
        }
        if let Some(after) = self.evict(&node, now).await? {
            recheck = Some(recheck.map_or(after, |r| r.min(after)));
        }
        Ok(recheck)
    }

    /// The taint manager: deletes the node's pods whose tolerations ran out; returns when to look
    /// again for the next one.
    async fn evict(&self, node: &Value, now: DateTime<Utc>) -> Result<Option<Duration>, Error> {
        let taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["effect"] == "NoExecute")
            .cloned()
            .collect();
        if taints.is_empty() {
            return Ok(None);
        }
        let name = node["metadata"]["name"].as_str().unwrap_or("");
        let mut next: Option<Duration> = None;
        for pod in self.ctx.pods.list(None) {
            if pod["spec"]["nodeName"].as_str() != Some(name)
                || is_deleting(&pod)
                || is_terminal(&pod)
            {
                continue;
            }
            let Some(due) = eviction_time(&pod, &taints, now) else {
                continue;
            };
            if due > now {
                let left = (due - now).to_std().unwrap_or_default();
                next = Some(next.map_or(left, |n| n.min(left)));
                continue;
            }
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
            let pn = pod["metadata"]["name"].as_str().unwrap_or("");
            match self
                .ctx
                .client
                .delete(
                    &Resource::core("pods"),
                    Some(ns),
                    pn,
                    &DeleteParams::default(),
                )
                .await
            {
                Ok(deleted) => {
                    self.ctx.pods.observe(&deleted);
                    info!(pod = %format!("{ns}/{pn}"), node = %name, "taint manager evicted pod");
                    self.ctx
                        .recorder
                        .normal(
                            &pod,
                            "TaintManagerEviction",
                            &format!("Marking for deletion Pod {ns}/{pn}"),
                            "Delete",
                        )
                        .await;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::Api("evicting pod", e)),
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(&json!(s)).unwrap()
    }

    fn node(ready: &str, beat: Option<&str>) -> Value {
        json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": beat}]}})
    }

    #[test]
    fn health_follows_the_newest_heartbeat() {
        let grace = Duration::from_secs(40);
        let n = node("True", Some("2024-01-01T00:00:00Z"));
        let now = at("2024-01-01T00:00:30Z");
        assert_eq!(
            health(&n, None, grace, now),
            Health::Alive(Duration::from_secs(10))
        );
        assert_eq!(
            health(&n, None, grace, at("2024-01-01T00:00:40Z")),
            Health::Silent
        );
        let lease = json!({"spec": {"renewTime": "2024-01-01T00:00:35.000000Z", "leaseDurationSeconds": 10}});
        assert_eq!(
            health(&n, Some(&lease), grace, at("2024-01-01T00:00:40Z")),
            Health::Alive(Duration::from_secs(35))
        );
        // A lease longer than the grace period stretches it (the in-process kubelet's 360 s).
        let long =
            json!({"spec": {"renewTime": "2024-01-01T00:00:00Z", "leaseDurationSeconds": 360}});
        assert_eq!(
            health(&n, Some(&long), grace, at("2024-01-01T00:01:00Z")),
            Health::Alive(Duration::from_secs(300))
        );
        assert_eq!(
            health(&node("True", None), None, grace, now),
            Health::Unmonitored
        );
    }

    #[test]
    fn taints_follow_ready() {
        let now = "2024-01-01T00:00:00Z";
        let mut n = node("Unknown", None);
        let t = desired_taints(&n, now);
        assert_eq!(t.len(), 3);
        assert!(t
            .iter()
            .any(|t| t["key"] == UNREACHABLE && t["effect"] == "NoSchedule"));
        assert!(t.iter().any(|t| t["key"] == UNREACHABLE
            && t["effect"] == "NoExecute"
            && t["timeAdded"] == now));
        n["spec"]["taints"] = json!(t);
        // Stable: nothing changes on the next pass (timeAdded kept).
        assert_eq!(desired_taints(&n, "2024-01-01T00:05:00Z"), t);
        n["status"]["conditions"][0]["status"] = json!("False");
        let t = desired_taints(&n, now);
        assert!(t.iter().all(|t| t["key"] != UNREACHABLE));
        assert_eq!(t.iter().filter(|t| t["key"] == NOT_READY).count(), 2);
        n["status"]["conditions"][0]["status"] = json!("True");
        n["spec"]["taints"] = json!(t);
        assert_eq!(
            desired_taints(&n, now),
            vec![json!({"key": "x", "effect": "NoSchedule"})]
        );
    }

    #[test]
    fn unknown_conditions_keep_heartbeats() {
        let n = node("True", Some("2024-01-01T00:00:00Z"));
        let c = unknown_conditions(&n, "2024-01-01T00:01:00Z");
        let ready = c
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "Unknown");
        assert_eq!(ready["reason"], "NodeStatusUnknown");
        assert_eq!(ready["message"], "Kubelet stopped posting node status.");
        assert_eq!(ready["lastHeartbeatTime"], "2024-01-01T00:00:00Z");
        assert_eq!(ready["lastTransitionTime"], "2024-01-01T00:01:00Z");
        assert_eq!(c.as_array().unwrap().len(), 4);
    }

    #[test]
    fn eviction_waits_for_toleration_seconds() {
        let now = at("2024-01-01T00:00:10Z");
        let taints = vec![
            json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2024-01-01T00:00:00Z"}),
        ];
        let intolerant = json!({"spec": {}});
        assert_eq!(eviction_time(&intolerant, &taints, now), Some(now));
        let default = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}});
        assert_eq!(
            eviction_time(&default, &taints, now),
            Some(at("2024-01-01T00:05:00Z"))
        );
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(eviction_time(&forever, &taints, now), None);
        let equal = json!({"spec": {"tolerations": [{"key": UNREACHABLE, "value": "x", "effect": "NoExecute"}]}});
        assert_eq!(eviction_time(&equal, &taints, now), Some(now));
        let no_schedule_only = vec![json!({"key": UNREACHABLE, "effect": "NoSchedule"})];
        assert_eq!(eviction_time(&intolerant, &no_schedule_only, now), None);
    }
}
