//! The disruption controller: keeps each PodDisruptionBudget's status (upstream's
//! `pkg/controller/disruption`): the pods its selector picks, how many of them are healthy
//! (Ready, not being deleted, not just evicted), how many must stay healthy (`minAvailable`, or the
//! controllers' scale minus `maxUnavailable`, as numbers or percentages of that scale), the
//! disruptions that leaves, and the `DisruptionAllowed` condition. The API server's
//! `pods/eviction` spends those disruptions; this controller forgets an evicted pod once it is
//! gone or after two minutes.

use crate::informer::{key_of, Informer, Queue};
use crate::selector::{self, controller_of, is_deleting, split_key};
use crate::{enqueue, Ctx, Error};
use k3rs_client::Resource;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info_span, Instrument};

const MANAGER: &str = "disruption-controller";
/// An evicted pod counts as disrupted until its deletion shows up, or this long
/// (upstream's DeletionTimeout).
const DELETION_TIMEOUT: chrono::Duration = chrono::Duration::minutes(2);

pub fn resource() -> Resource {
    Resource::new("policy", "v1", "poddisruptionbudgets")
}

#[derive(Clone)]
pub struct DisruptionController {
    ctx: Arc<Ctx>,
    pdbs: Informer,
    queue: Queue,
}

/// `minAvailable`/`maxUnavailable`: an integer, or a percentage of `total` rounded up.
pub fn scaled(v: &Value, total: i64) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let s = v.as_str()?;
    if let Some(p) = s.strip_suffix('%') {
        let p: i64 = p.trim().parse().ok()?;
        return Some((p * total + 99) / 100);
    }
    s.parse().ok()
}

impl DisruptionController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = DisruptionController {
            ctx: ctx.clone(),
            pdbs: Informer::new(resource()),
            queue: Queue::default(),
        };
        enqueue::own_objects(&me.pdbs, &me.queue);
        let m = me.clone();
        ctx.pods.on_change(Box::new(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                for key in m.budgets_for(p) {
                    m.queue.add(key);
                }
            }
        }));
        // A controller's scale decides percentages and maxUnavailable.
        for informer in [&ctx.replicasets, &ctx.deployments] {
            let m = me.clone();
            informer.on_change(Box::new(move |old, new| {
                let Some(o) = new.or(old) else { return };
                let ns = o["metadata"]["namespace"].as_str();
                for pdb in m.pdbs.list(ns) {
                    m.queue.add(key_of(&pdb));
                }
            }));
        }
        me
    }

    /// Keys of the budgets in the pod's namespace whose selector picks it.
    fn budgets_for(&self, pod: &Value) -> Vec<String> {
        let ns = pod["metadata"]["namespace"].as_str();
        let labels = &pod["metadata"]["labels"];
        self.pdbs
            .list(ns)
            .iter()
            .filter(|b| selects(b, labels))
            .map(key_of)
            .collect()
    }

    /// Watches the budgets and reconciles them, until dropped.
    pub async fn run(self) {
        let feed = self.pdbs.clone().run(self.ctx.client.clone());
        let work = async {
            self.pdbs.wait_synced().await;
            for pdb in self.pdbs.list(None) {
                self.queue.add(key_of(&pdb));
            }
            loop {
                let key = self.queue.pop().await;
                let (ns, name) = split_key(&key);
                let span = info_span!("reconcile", kind = "PodDisruptionBudget", namespace = %ns, name = %name);
                match self.reconcile(&key).instrument(span.clone()).await {
                    Ok(Some(after)) => self.queue.add_after(key, after),
                    Ok(None) => {}
                    Err(e) => {
                        span.in_scope(|| tracing::warn!(error = %e, "reconcile failed"));
                        self.queue.add_after(key, Duration::from_secs(1));
                    }
                }
            }
        };
        tokio::select! {
            _ = feed => {}
            _ = work => {}
        }
    }

    pub async fn reconcile(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(pdb) = self.pdbs.get(key) else {
            return Ok(None);
        };
        if is_deleting(&pdb) {
            return Ok(None);
        }
        let (ns, _) = split_key(key);
        let pods: Vec<Value> = self
            .ctx
            .pods
            .list(Some(ns))
            .into_iter()
            .filter(|p| selects(&pdb, &p["metadata"]["labels"]))
            .collect();
        let now = chrono::Utc::now();
        let mut recheck = None;
        let computed = self.expected(&pdb, &pods).await;
        let mut status: Map<String, Value> = pdb["status"].as_object().cloned().unwrap_or_default();
        let generation = pdb["metadata"]["generation"].clone();
        match computed {
            Ok((expected, desired)) => {
                // Pods evicted a moment ago stay disrupted until their deletion is seen.
                let mut disrupted = Map::new();
                let present: HashSet<&str> = pods
                    .iter()
                    .filter(|p| !is_deleting(p))
                    .filter_map(|p| p["metadata"]["name"].as_str())
                    .collect();
                for (pod, at) in pdb["status"]["disruptedPods"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    let Some(at) = at
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    else {
                        continue;
                    };
                    let expires = at.with_timezone(&chrono::Utc) + DELETION_TIMEOUT;
                    if present.contains(pod.as_str()) && expires > now {
                        disrupted.insert(pod.clone(), json!(at.to_rfc3339()));
                        let left = (expires - now).to_std().unwrap_or_default();
                        recheck = Some(recheck.map_or(left, |r: Duration| r.min(left)));
                    }
                }
                let healthy = pods
                    .iter()
                    .filter(|p| !is_deleting(p) && selector::is_ready(p))
                    .filter(|p| {
                        !disrupted.contains_key(p["metadata"]["name"].as_str().unwrap_or(""))
                    })
                    .count() as i64;
                let allowed = (healthy - desired).max(0);
                status.insert("currentHealthy".into(), json!(healthy));
                status.insert("desiredHealthy".into(), json!(desired));
                status.insert("expectedPods".into(), json!(expected));
                status.insert("disruptionsAllowed".into(), json!(allowed));
                if disrupted.is_empty() {
                    status.remove("disruptedPods");
                } else {
                    status.insert("disruptedPods".into(), Value::Object(disrupted));
                }
                let (st, reason) = if allowed > 0 {
                    ("True", "SufficientPods")
                } else {
                    ("False", "InsufficientPods")
                };
                set_condition(&mut status, st, reason, "", &generation);
            }
            Err(message) => {
                // Upstream's failSafe: no disruption is allowed while the numbers are unknown.
                status.insert("disruptionsAllowed".into(), json!(0));
                set_condition(&mut status, "False", "SyncFailed", &message, &generation);
                self.ctx
                    .recorder
                    .warning(&pdb, "CalculateExpectedPodCountFailed", &message, "Sync")
                    .await;
            }
        }
        status.insert("observedGeneration".into(), generation);
        let status = Value::Object(status);
        if status == pdb["status"] {
            return Ok(recheck);
        }
        let mut updated = pdb.clone();
        updated["status"] = status;
        let name = pdb["metadata"]["name"].as_str().unwrap_or("");
        match self
            .ctx
            .client
            .replace(
                &resource(),
                Some(ns),
                name,
                updated,
                Some("status"),
                MANAGER,
            )
            .await
        {
            Ok(written) => {
                self.pdbs.observe(&written);
                Ok(recheck)
            }
            // An eviction took a disruption meanwhile: the watch brings the new copy.
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(recheck),
            Err(e) => Err(Error::Api("writing PodDisruptionBudget status", e)),
        }
    }

    /// (expected pods, desired healthy), or why they cannot be known.
    async fn expected(&self, pdb: &Value, pods: &[Value]) -> Result<(i64, i64), String> {
        let spec = &pdb["spec"];
        if !spec["maxUnavailable"].is_null() {
            let expected = self.expected_scale(pods).await?;
            let max = scaled(&spec["maxUnavailable"], expected)
                .ok_or("invalid maxUnavailable".to_string())?;
            return Ok((expected, (expected - max).max(0)));
        }
        match &spec["minAvailable"] {
            Value::Number(n) => Ok((pods.len() as i64, n.as_i64().unwrap_or(0))),
            Value::String(s) if !s.ends_with('%') => {
                Ok((pods.len() as i64, s.parse().unwrap_or(0)))
            }
            v @ Value::String(_) => {
                let expected = self.expected_scale(pods).await?;
                let min = scaled(v, expected).ok_or("invalid minAvailable".to_string())?;
                Ok((expected, min))
            }
            _ => Ok((pods.len() as i64, 0)),
        }
    }

    /// The summed scale of the pods' controllers (a ReplicaSet owned by a Deployment counts as
    /// its Deployment), each counted once.
    async fn expected_scale(&self, pods: &[Value]) -> Result<i64, String> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut total = 0;
        for p in pods {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
            let Some((kind, name, uid)) = controller_of(p) else {
                return Err(format!(
                    "found no controllers for pod {:?}",
                    p["metadata"]["name"].as_str().unwrap_or("")
                ));
            };
            let (kind, name, uid, owner) = if kind == "ReplicaSet" {
                let rs = self.ctx.replicasets.get(&format!("{ns}/{name}"));
                match rs.as_ref().and_then(controller_of) {
                    Some(("Deployment", d, du)) => {
                        ("Deployment", d.to_string(), du.to_string(), None)
                    }
                    _ => ("ReplicaSet", name.to_string(), uid.to_string(), rs.clone()),
                }
            } else {
                (kind, name.to_string(), uid.to_string(), None)
            };
            if !seen.insert(uid.clone()) {
                continue;
            }
            let owner = match owner {
                Some(o) => o,
                None => self.controller(kind, ns, &name).await?,
            };
            if owner["metadata"]["uid"].as_str() != Some(uid.as_str()) {
                return Err(format!("controller {kind} {ns}/{name} not found"));
            }
            total += owner["spec"]["replicas"].as_i64().unwrap_or(1);
        }
        Ok(total)
    }

    async fn controller(&self, kind: &str, ns: &str, name: &str) -> Result<Value, String> {
        let cached = match kind {
            "Deployment" => self.ctx.deployments.get(&format!("{ns}/{name}")),
            "ReplicaSet" => self.ctx.replicasets.get(&format!("{ns}/{name}")),
            _ => None,
        };
        if let Some(c) = cached {
            return Ok(c);
        }
        let r = match kind {
            "StatefulSet" => Resource::new("apps", "v1", "statefulsets"),
            "ReplicationController" => Resource::core("replicationcontrollers"),
            "Deployment" => Resource::new("apps", "v1", "deployments"),
            "ReplicaSet" => Resource::new("apps", "v1", "replicasets"),
            other => {
                return Err(format!(
                    "{other} {ns}/{name} has no scale this controller knows"
                ))
            }
        };
        self.ctx
            .client
            .get(&r, Some(ns), name)
            .await
            .map_err(|e| format!("getting {kind} {ns}/{name}: {e}"))
    }
}

/// policy/v1: an empty selector selects every pod in the namespace; none selects none.
fn selects(pdb: &Value, labels: &Value) -> bool {
    let sel = &pdb["spec"]["selector"];
    !sel.is_null() && selector::matches(sel, labels)
}

fn set_condition(
    status: &mut Map<String, Value>,
    st: &str,
    reason: &str,
    message: &str,
    generation: &Value,
) {
    let mut conds: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let transition = conds
        .iter()
        .find(|c| c["type"] == "DisruptionAllowed" && c["status"] == st)
        .map(|c| c["lastTransitionTime"].clone())
        .unwrap_or_else(|| json!(selector::now_rfc3339()));
    conds.retain(|c| c["type"] != "DisruptionAllowed");
    conds.push(
        json!({"type": "DisruptionAllowed", "status": st, "reason": reason,
        "message": message, "observedGeneration": generation, "lastTransitionTime": transition}),
    );
    status.insert("conditions".into(), json!(conds));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(&json!(2), 10), Some(2));
        assert_eq!(scaled(&json!("50%"), 3), Some(2));
        assert_eq!(scaled(&json!("10%"), 5), Some(1));
        assert_eq!(scaled(&json!("0%"), 5), Some(0));
        assert_eq!(scaled(&json!("3"), 5), Some(3));
    }
}
