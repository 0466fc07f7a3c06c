//! The Deployment controller: one ReplicaSet per pod template (`<deploy>-<pod-template-hash>`),
//! RollingUpdate (maxSurge/maxUnavailable) and Recreate, revisions and history cleanup, pause,
//! and the status and conditions `kubectl rollout status` reads.

use crate::informer::{key_of, Queue};
use crate::selector::{self, controller_key, controller_of, is_deleting};
use crate::{enqueue, replicaset, Ctx, Error};
use k3rs_client::{DeleteParams, Patch, Resource};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

const MANAGER: &str = "deployment-controller";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
pub const HASH_LABEL: &str = "pod-template-hash";

pub fn resource() -> Resource {
    Resource::new("apps", "v1", "deployments")
}

/// Upstream's `ComputeHash`: FNV-32a of the template (plus the collision count), encoded with
/// `rand.SafeEncodeString`. Upstream hashes Go's printed struct; we hash the template's JSON, so
/// the value differs from kube-controller-manager's but has the same form and stability.
pub fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut h: u32 = 2166136261;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u32;
            h = h.wrapping_mul(16777619);
        }
    };
    feed(
        serde_json::to_string(&without_hash(template))
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(c) = collision_count {
        feed(&(c as u32).to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// The template as compared and hashed: without the hash label and without nulls (kubectl's
/// `rollout undo` sends `creationTimestamp: null`, which Go treats as absent — so do we).
fn without_hash(template: &Value) -> Value {
    let mut t = strip_nulls(template);
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove(HASH_LABEL);
    }
    t
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

fn revision(o: &Value) -> i64 {
    o["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(o: &Value) -> i64 {
    o["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn status_i(o: &Value, f: &str) -> i64 {
    o["status"][f].as_i64().unwrap_or(0)
}

/// An IntOrString as an absolute count of `total` (percentages round up for surge, down for unavailable).
fn scaled_value(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            if round_up {
                (p * total + 99) / 100
            } else {
                p * total / 100
            }
        }
        _ => 0,
    }
}

/// (maxSurge, maxUnavailable) as counts; never both zero.
fn fenceposts(d: &Value) -> (i64, i64) {
    let r = spec_replicas(d);
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = scaled_value(ru.get("maxSurge").unwrap_or(&json!("25%")), r, true);
    let mut unavailable = scaled_value(ru.get("maxUnavailable").unwrap_or(&json!("25%")), r, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(r))
}

#[derive(Clone)]
pub struct DeploymentController {
    ctx: Arc<Ctx>,
    queue: Queue,
}

impl DeploymentController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = DeploymentController {
            ctx: ctx.clone(),
            queue: Queue::default(),
        };
        enqueue::own_objects(&ctx.deployments, &me.queue);
        let m = me.clone();
        ctx.replicasets.on_change(Box::new(move |old, new| {
            if let Some(rs) = new.or(old) {
                m.enqueue_owner(rs);
            }
        }));
        // Recreate waits for the old pods to be gone.
        let m = me.clone();
        ctx.pods.on_change(Box::new(move |old, new| {
            if let (Some(p), None) = (old, new) {
                let rs = controller_key(p, "ReplicaSet").and_then(|k| m.ctx.replicasets.get(&k));
                if let Some(rs) = rs {
                    m.enqueue_owner(&rs);
                }
            }
        }));
        me
    }

    fn enqueue_owner(&self, rs: &Value) {
        enqueue::controller_or_adopters(&self.queue, &self.ctx.deployments, "Deployment", rs);
    }

    pub async fn run(self) {
        let me = &self;
        crate::reconcile_keys(&self.queue, "Deployment", |key| async move {
            me.reconcile(&key).await
        })
        .await
    }

    /// The ReplicaSets this Deployment controls (adopting matching orphans).
    async fn replicasets(&self, d: &Value) -> Result<Vec<Value>, Error> {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("");
        let uid = d["metadata"]["uid"].as_str().unwrap_or("");
        let mut out = Vec::new();
        for rs in self.ctx.replicasets.list(Some(ns)) {
            match controller_of(&rs) {
                Some((_, _, u)) if u == uid => out.push(rs),
                None if !is_deleting(&rs)
                    && selector::matches(&d["spec"]["selector"], &rs["metadata"]["labels"]) =>
                {
                    let patch = json!({"metadata": {"ownerReferences": [
                        selector::owner_ref("apps/v1", "Deployment", d)]}});
                    let name = rs["metadata"]["name"].as_str().unwrap_or("");
                    let adopted = self
                        .ctx
                        .client
                        .patch(
                            &replicaset::resource(),
                            Some(ns),
                            name,
                            Patch::Strategic(patch),
                            None,
                            MANAGER,
                        )
                        .await
                        .map_err(|e| Error::Api("adopting a replica set", e))?;
                    self.ctx.replicasets.observe(&adopted);
                    out.push(adopted);
                }
                _ => {}
            }
        }
        out.sort_by_key(|rs| {
            (
                rs["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                rs["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        });
        Ok(out)
    }

    pub async fn reconcile(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(d) = self.ctx.deployments.get(key) else {
            return Ok(None);
        };
        if is_deleting(&d) {
            return Ok(None);
        }
        let all = self.replicasets(&d).await?;
        let template = without_hash(&d["spec"]["template"]);
        let existing_new = all
            .iter()
            .find(|rs| without_hash(&rs["spec"]["template"]) == template)
            .cloned();
        let old: Vec<Value> = all
            .iter()
            .filter(|rs| {
                Some(rs["metadata"]["uid"].clone())
                    != existing_new.as_ref().map(|n| n["metadata"]["uid"].clone())
            })
            .cloned()
            .collect();
        let paused = d["spec"]["paused"].as_bool().unwrap_or(false);
        let recreate = d["spec"]["strategy"]["type"].as_str() == Some("Recreate");
        let mut new_rs = existing_new;
        let mut created = None;
        if paused {
            // Paused: no rollout, only scaling of a lone current ReplicaSet.
            if let Some(n) = &new_rs {
                if old.iter().all(|o| spec_replicas(o) == 0)
                    && spec_replicas(n) != spec_replicas(&d)
                {
                    self.scale(&d, n, spec_replicas(&d)).await?;
                }
            }
        } else if recreate {
            self.recreate(&d, &old, &mut new_rs, &mut created).await?;
        } else {
            self.rolling(&d, &old, &mut new_rs, &mut created).await?;
        }
        self.sync_status(&d, created).await
    }

    async fn recreate(
        &self,
        d: &Value,
        old: &[Value],
        new_rs: &mut Option<Value>,
        created: &mut Option<String>,
    ) -> Result<(), Error> {
        let mut scaled = false;
        for o in old.iter().filter(|o| spec_replicas(o) > 0) {
            self.scale(d, o, 0).await?;
            scaled = true;
        }
        if scaled {
            return Ok(());
        }
        let ns = d["metadata"]["namespace"].as_str();
        let old_uids: Vec<&str> = old
            .iter()
            .filter_map(|o| o["metadata"]["uid"].as_str())
            .collect();
        let old_pods_left = self.ctx.pods.list(ns).iter().any(|p| {
            !selector::is_terminal(p)
                && controller_of(p).is_some_and(|(_, _, u)| old_uids.contains(&u))
        });
        if old_pods_left {
            return Ok(());
        }
        let n = self
            .new_replicaset(d, old, new_rs.take(), spec_replicas(d), created)
            .await?;
        if spec_replicas(&n) != spec_replicas(d) {
            let n2 = self.scale(d, &n, spec_replicas(d)).await?;
            *new_rs = Some(n2);
        } else {
            *new_rs = Some(n);
        }
        if self.complete(d) {
            self.cleanup(d, old).await?;
        }
        Ok(())
    }

    async fn rolling(
        &self,
        d: &Value,
        old: &[Value],
        new_rs: &mut Option<Value>,
        created: &mut Option<String>,
    ) -> Result<(), Error> {
        let replicas = spec_replicas(d);
        let (surge, max_unavailable) = fenceposts(d);
        let old_total: i64 = old.iter().map(spec_replicas).sum();
        // The new ReplicaSet's size on creation (upstream's NewRSNewReplicas).
        let initial = (replicas + surge - old_total).clamp(0, replicas);
        let mut n = self
            .new_replicaset(d, old, new_rs.take(), initial, created)
            .await?;
        // Scale the new ReplicaSet up within maxSurge (or down to the desired count).
        let cur = spec_replicas(&n);
        if cur > replicas {
            n = self.scale(d, &n, replicas).await?;
        } else if cur < replicas {
            let total = old_total + cur;
            let max_total = replicas + surge;
            if total < max_total {
                let up = (max_total - total).min(replicas - cur);
                n = self.scale(d, &n, cur + up).await?;
            }
        }
        // Scale old ReplicaSets down as far as maxUnavailable allows.
        let old_total: i64 = old.iter().map(spec_replicas).sum();
        if old_total > 0 {
            let all_total = old_total + spec_replicas(&n);
            let min_available = replicas - max_unavailable;
            let new_unavailable = spec_replicas(&n) - status_i(&n, "availableReplicas");
            let mut max_down = all_total - min_available - new_unavailable;
            let mut olds: Vec<Value> = old.to_vec();
            if max_down > 0 {
                // First the unhealthy (unavailable) pods of old ReplicaSets.
                for o in olds.iter_mut() {
                    if max_down <= 0 {
                        break;
                    }
                    let unhealthy = spec_replicas(o) - status_i(o, "availableReplicas");
                    if unhealthy <= 0 || spec_replicas(o) == 0 {
                        continue;
                    }
                    let down = unhealthy.min(max_down);
                    *o = self.scale(d, o, spec_replicas(o) - down).await?;
                    max_down -= down;
                }
                // Then available ones, keeping minAvailable.
                let available: i64 = olds
                    .iter()
                    .map(|o| status_i(o, "availableReplicas"))
                    .sum::<i64>()
                    + status_i(&n, "availableReplicas");
                let cleaned_total: i64 =
                    olds.iter().map(spec_replicas).sum::<i64>() + spec_replicas(&n);
                let mut budget = (available - min_available)
                    .min(cleaned_total - min_available - new_unavailable);
                for o in olds.iter_mut() {
                    if budget <= 0 {
                        break;
                    }
                    let r = spec_replicas(o);
                    if r == 0 {
                        continue;
                    }
                    let down = r.min(budget);
                    *o = self.scale(d, o, r - down).await?;
                    budget -= down;
                }
            }
        }
        *new_rs = Some(n);
        if self.complete(d) {
            self.cleanup(d, old).await?;
        }
        Ok(())
    }

    fn complete(&self, d: &Value) -> bool {
        let r = spec_replicas(d);
        status_i(d, "updatedReplicas") == r
            && status_i(d, "replicas") == r
            && status_i(d, "availableReplicas") == r
            && d["status"]["observedGeneration"] == d["metadata"]["generation"]
    }

    /// Finds or creates the ReplicaSet for the current template and brings its revision annotations up to date.
    async fn new_replicaset(
        &self,
        d: &Value,
        old: &[Value],
        existing: Option<Value>,
        initial: i64,
        created: &mut Option<String>,
    ) -> Result<Value, Error> {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("");
        let max_old = old.iter().map(revision).max().unwrap_or(0);
        let new_rev = max_old + 1;
        let (surge, _) = fenceposts(d);
        let replicas = spec_replicas(d);
        if let Some(rs) = existing {
            let mut annotations = Map::new();
            let cur = revision(&rs);
            if cur < new_rev {
                annotations.insert(REVISION.into(), json!(new_rev.to_string()));
                if cur > 0 {
                    let hist = rs["metadata"]["annotations"][REVISION_HISTORY]
                        .as_str()
                        .unwrap_or("");
                    let hist = if hist.is_empty() {
                        cur.to_string()
                    } else {
                        format!("{hist},{cur}")
                    };
                    annotations.insert(REVISION_HISTORY.into(), json!(hist));
                }
            }
            if let Some(cc) = d["metadata"]["annotations"][CHANGE_CAUSE].as_str() {
                if rs["metadata"]["annotations"][CHANGE_CAUSE].as_str() != Some(cc) {
                    annotations.insert(CHANGE_CAUSE.into(), json!(cc));
                }
            }
            let mut patch = Map::new();
            if !annotations.is_empty() {
                patch.insert("metadata".into(), json!({"annotations": annotations}));
            }
            if rs["spec"]["minReadySeconds"] != d["spec"]["minReadySeconds"]
                && !d["spec"]["minReadySeconds"].is_null()
            {
                patch.insert(
                    "spec".into(),
                    json!({"minReadySeconds": d["spec"]["minReadySeconds"]}),
                );
            }
            let rs = if patch.is_empty() {
                rs
            } else {
                let name = rs["metadata"]["name"].as_str().unwrap_or("");
                let o = self
                    .ctx
                    .client
                    .patch(
                        &replicaset::resource(),
                        Some(ns),
                        name,
                        Patch::Merge(Value::Object(patch)),
                        None,
                        MANAGER,
                    )
                    .await
                    .map_err(|e| Error::Api("updating the new replica set", e))?;
                self.ctx.replicasets.observe(&o);
                o
            };
            self.set_deployment_revision(d, revision(&rs)).await?;
            return Ok(rs);
        }
        let collision = d["status"]["collisionCount"].as_i64();
        let hash = template_hash(&d["spec"]["template"], collision);
        let dname = d["metadata"]["name"].as_str().unwrap_or("");
        let name = format!("{dname}-{hash}");
        let mut template = strip_nulls(&d["spec"]["template"]);
        if template["metadata"]["labels"].is_null() {
            template["metadata"]["labels"] = json!({});
        }
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d["spec"]["selector"].clone();
        if selector["matchLabels"].is_null() {
            selector["matchLabels"] = json!({});
        }
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut annotations = json!({REVISION: new_rev.to_string(), DESIRED: replicas.to_string(),
            MAX_REPLICAS: (replicas + surge).to_string()});
        if let Some(cc) = d["metadata"]["annotations"][CHANGE_CAUSE].as_str() {
            annotations[CHANGE_CAUSE] = json!(cc);
        }
        let mut spec = json!({"replicas": initial, "selector": selector, "template": template});
        if let Some(m) = d["spec"]["minReadySeconds"].as_i64() {
            spec["minReadySeconds"] = json!(m);
        }
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": ns, "labels": template["metadata"]["labels"],
                "annotations": annotations,
                "ownerReferences": [selector::owner_ref("apps/v1", "Deployment", d)]},
            "spec": spec});
        match self
            .ctx
            .client
            .create(&replicaset::resource(), Some(ns), rs, MANAGER)
            .await
        {
            Ok(o) => {
                self.ctx.replicasets.observe(&o);
                self.ctx
                    .recorder
                    .normal(
                        d,
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {name} from 0 to {initial}"),
                        "Scaling",
                    )
                    .await;
                *created = Some(name);
                self.set_deployment_revision(d, new_rev).await?;
                Ok(o)
            }
            Err(e) if e.is_already_exists() => {
                // Another template hashed to this name: bump collisionCount and retry.
                let c = collision.unwrap_or(0) + 1;
                self.ctx
                    .client
                    .patch(
                        &resource(),
                        Some(ns),
                        dname,
                        Patch::Merge(json!({"status": {"collisionCount": c}})),
                        Some("status"),
                        MANAGER,
                    )
                    .await
                    .map_err(|e| Error::Api("updating collisionCount", e))?;
                Err(Error::Api(
                    "creating the new replica set (hash collision)",
                    e,
                ))
            }
            Err(e) => Err(Error::Api("creating the new replica set", e)),
        }
    }

    async fn set_deployment_revision(&self, d: &Value, rev: i64) -> Result<(), Error> {
        if revision(d) == rev {
            return Ok(());
        }
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("");
        let name = d["metadata"]["name"].as_str().unwrap_or("");
        let o = self
            .ctx
            .client
            .patch(
                &resource(),
                Some(ns),
                name,
                Patch::Merge(json!({"metadata": {"annotations": {REVISION: rev.to_string()}}})),
                None,
                MANAGER,
            )
            .await
            .map_err(|e| Error::Api("setting the revision", e))?;
        self.ctx.deployments.observe(&o);
        Ok(())
    }

    async fn scale(&self, d: &Value, rs: &Value, to: i64) -> Result<Value, Error> {
        let from = spec_replicas(rs);
        let (surge, _) = fenceposts(d);
        let replicas = spec_replicas(d);
        let desired = replicas.to_string();
        let max = (replicas + surge).to_string();
        let ann = &rs["metadata"]["annotations"];
        if from == to
            && ann[DESIRED].as_str() == Some(&desired)
            && ann[MAX_REPLICAS].as_str() == Some(&max)
        {
            return Ok(rs.clone());
        }
        let ns = rs["metadata"]["namespace"].as_str().unwrap_or("");
        let name = rs["metadata"]["name"].as_str().unwrap_or("");
        let o = self.ctx.client
            .patch(&replicaset::resource(), Some(ns), name,
                Patch::Merge(json!({"metadata": {"annotations": {DESIRED: desired, MAX_REPLICAS: max}}, "spec": {"replicas": to}})),
                None, MANAGER)
            .await
            .map_err(|e| Error::Api("scaling a replica set", e))?;
        self.ctx.replicasets.observe(&o);
        if from != to {
            let op = if to > from { "up" } else { "down" };
            debug!(replicaset = name, from, to, "scaled");
            self.ctx
                .recorder
                .normal(
                    d,
                    "ScalingReplicaSet",
                    &format!("Scaled {op} replica set {name} from {from} to {to}"),
                    "Scaling",
                )
                .await;
        }
        Ok(o)
    }

    /// Deletes the oldest fully scaled-down ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(&self, d: &Value, old: &[Value]) -> Result<(), Error> {
        let limit = d["spec"]["revisionHistoryLimit"]
            .as_i64()
            .unwrap_or(10)
            .max(0) as usize;
        let mut dead: Vec<&Value> = old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0 && status_i(rs, "replicas") == 0 && !is_deleting(rs)
            })
            .collect();
        if dead.len() <= limit {
            return Ok(());
        }
        dead.sort_by_key(|rs| revision(rs));
        let n = dead.len() - limit;
        for rs in dead.into_iter().take(n) {
            let ns = rs["metadata"]["namespace"].as_str().unwrap_or("");
            let name = rs["metadata"]["name"].as_str().unwrap_or("");
            match self
                .ctx
                .client
                .delete(
                    &replicaset::resource(),
                    Some(ns),
                    name,
                    &DeleteParams::default(),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::Api("deleting an old replica set", e)),
            }
        }
        Ok(())
    }

    async fn sync_status(
        &self,
        d: &Value,
        created: Option<String>,
    ) -> Result<Option<Duration>, Error> {
        let key = key_of(d);
        let d = self.ctx.deployments.get(&key).unwrap_or_else(|| d.clone());
        let all = self.replicasets(&d).await?;
        let template = without_hash(&d["spec"]["template"]);
        let new_rs = all
            .iter()
            .find(|rs| without_hash(&rs["spec"]["template"]) == template);
        let replicas = spec_replicas(&d);
        let (_, max_unavailable) = fenceposts(&d);
        let actual: i64 = all.iter().map(|r| status_i(r, "replicas")).sum();
        let updated = new_rs.map(|r| status_i(r, "replicas")).unwrap_or(0);
        let ready: i64 = all.iter().map(|r| status_i(r, "readyReplicas")).sum();
        let available: i64 = all.iter().map(|r| status_i(r, "availableReplicas")).sum();
        let total_spec: i64 = all.iter().map(spec_replicas).sum();
        let unavailable = (total_spec.max(replicas) - available).max(0);
        let now = selector::now_rfc3339();
        let old_status = &d["status"];
        let mut conds: Vec<Value> = old_status["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (a_status, a_reason, a_msg) = if available >= replicas - max_unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        set_condition(
            &mut conds,
            "Available",
            a_status,
            a_reason,
            a_msg,
            &now,
            false,
        );
        let rs_name = new_rs
            .and_then(|r| r["metadata"]["name"].as_str())
            .unwrap_or("")
            .to_string();
        let paused = d["spec"]["paused"].as_bool().unwrap_or(false);
        let complete =
            updated == replicas && available == replicas && actual == replicas && new_rs.is_some();
        let progressed = old_status["updatedReplicas"].as_i64().unwrap_or(0) != updated
            || old_status["replicas"].as_i64().unwrap_or(0) != actual
            || old_status["readyReplicas"].as_i64().unwrap_or(0) != ready
            || old_status["availableReplicas"].as_i64().unwrap_or(0) != available;
        let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
        let progressing = conds.iter().find(|c| c["type"] == "Progressing").cloned();
        let mut recheck = None;
        if paused {
            set_condition(
                &mut conds,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
                &now,
                false,
            );
        } else if progressing
            .as_ref()
            .is_some_and(|c| c["reason"] == "DeploymentPaused")
        {
            set_condition(
                &mut conds,
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed",
                &now,
                false,
            );
        } else if complete {
            set_condition(
                &mut conds,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                &now,
                false,
            );
        } else if let Some(name) = &created {
            set_condition(
                &mut conds,
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                &format!("Created new replica set \"{name}\""),
                &now,
                true,
            );
        } else if progressed || progressing.is_none() {
            let (reason, msg) = if progressing.is_none() {
                (
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{rs_name}\""),
                )
            } else {
                (
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                )
            };
            set_condition(&mut conds, "Progressing", "True", reason, &msg, &now, true);
        } else if let Some(c) = &progressing {
            // No progress: has the deadline passed since the last progress?
            if c["status"] == "True" && c["reason"] != "NewReplicaSetAvailable" {
                let last = c["lastUpdateTime"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                if let Some(last) = last {
                    let due =
                        last.with_timezone(&chrono::Utc) + chrono::Duration::seconds(deadline);
                    let nowt = chrono::Utc::now();
                    if due <= nowt {
                        set_condition(
                            &mut conds,
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                            &now,
                            false,
                        );
                    } else {
                        recheck = (due - nowt)
                            .to_std()
                            .ok()
                            .map(|d| d + Duration::from_millis(200));
                    }
                }
            }
        }
        if !complete && !paused && recheck.is_none() {
            recheck =
                Some(Duration::from_secs(deadline.max(1) as u64) + Duration::from_millis(200));
        }
        let mut status = Map::new();
        status.insert(
            "observedGeneration".into(),
            d["metadata"]["generation"].clone(),
        );
        for (k, v) in [
            ("replicas", actual),
            ("updatedReplicas", updated),
            ("readyReplicas", ready),
            ("availableReplicas", available),
            ("unavailableReplicas", unavailable),
        ] {
            if v != 0 {
                status.insert(k.into(), json!(v));
            }
        }
        status.insert("conditions".into(), json!(conds));
        if let Some(c) = old_status.get("collisionCount") {
            status.insert("collisionCount".into(), c.clone());
        }
        let (client, cache) = (self.ctx.client.as_ref(), &self.ctx.deployments);
        let new = Value::Object(status);
        crate::status::write_if_changed(client, cache, &resource(), MANAGER, &d, new).await?;
        Ok(recheck)
    }
}

/// Sets a condition; keeps it (and its timestamps) when nothing changed. `bump` refreshes
/// lastUpdateTime even when the reason and message stay the same (progress was made).
fn set_condition(
    conds: &mut Vec<Value>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
    bump: bool,
) {
    if let Some(c) = conds.iter_mut().find(|c| c["type"] == type_) {
        if c["status"] == status && c["reason"] == reason && c["message"] == message && !bump {
            return;
        }
        let transition = if c["status"] == status {
            c["lastTransitionTime"].clone()
        } else {
            json!(now)
        };
        *c = json!({"type": type_, "status": status, "lastUpdateTime": now,
            "lastTransitionTime": transition, "reason": reason, "message": message});
    } else {
        conds.push(
            json!({"type": type_, "status": status, "lastUpdateTime": now,
            "lastTransitionTime": now, "reason": reason, "message": message}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_fenceposts() {
        let t = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let h = template_hash(&t, None);
        assert!(!h.is_empty() && h.len() <= 10);
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut t2 = t.clone();
        t2["metadata"]["labels"][HASH_LABEL] = json!(h.clone());
        assert_eq!(
            template_hash(&t2, None),
            h,
            "the hash label does not change the hash"
        );
        assert_ne!(template_hash(&t, Some(1)), h);
        let mut t3 = t.clone();
        t3["metadata"]["creationTimestamp"] = Value::Null;
        assert_eq!(without_hash(&t3), without_hash(&t), "null is absent");
        let d = json!({"spec": {"replicas": 10, "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}});
        assert_eq!(fenceposts(&d), (3, 2));
        let d = json!({"spec": {"replicas": 3, "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}});
        assert_eq!(fenceposts(&d), (0, 1));
    }
}
