//! The StatefulSet controller: pods with stable names `<set>-<ordinal>`, created in order and
//! each only once its predecessor is Running and Ready (OrderedReady) or all at once (Parallel),
//! removed highest ordinal first; claims from `volumeClaimTemplates` (`<claim>-<set>-<ordinal>`)
//! created before their pod and kept on scale-down unless the retention policy says Delete;
//! template history in ControllerRevisions (`controller-revision-hash`); RollingUpdate (highest
//! ordinal first, one at a time, down to `partition`) and OnDelete; the status `kubectl rollout
//! status statefulset/x` reads.

use crate::history::{self, HASH_LABEL};
use crate::informer::Queue;
use crate::selector::{self, available, controller_of, is_deleting, is_terminal};
use crate::{enqueue, Ctx, Error};
use k3rs_client::{DeleteParams, Patch, Resource};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

const MANAGER: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub fn resource() -> Resource {
    Resource::new("apps", "v1", "statefulsets")
}

fn pods() -> Resource {
    Resource::core("pods")
}

fn claims() -> Resource {
    Resource::core("persistentvolumeclaims")
}

/// The ordinal of `<set>-<ordinal>`, if the pod name has that form.
pub fn ordinal_of(set_name: &str, pod_name: &str) -> Option<i64> {
    let rest = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

pub fn claim_name(claim: &str, set_name: &str, ordinal: i64) -> String {
    format!("{claim}-{set_name}-{ordinal}")
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

/// Running, Ready and not being deleted (upstream's isRunningAndReady, plus not terminating).
fn healthy(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && selector::is_ready(pod) && !is_deleting(pod)
}

fn claim_templates(set: &Value) -> impl Iterator<Item = &Value> {
    set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
}

/// The pod for `ordinal` made from `template` (a revision's), named and labelled as upstream.
pub fn new_pod(set: &Value, template: &Value, hash: &str, ordinal: i64) -> Value {
    let set_name = name_of(set);
    let pod_name = format!("{set_name}-{ordinal}");
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[POD_NAME_LABEL] = json!(pod_name);
    labels[POD_INDEX_LABEL] = json!(ordinal.to_string());
    labels[HASH_LABEL] = json!(hash);
    let mut meta = json!({"name": pod_name, "labels": labels,
        "ownerReferences": [selector::owner_ref("apps/v1", "StatefulSet", set)]});
    if let Some(a) = template["metadata"]["annotations"]
        .as_object()
        .filter(|a| !a.is_empty())
    {
        meta["annotations"] = json!(a);
    }
    let mut spec = template["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    spec["hostname"] = json!(pod_name);
    if let Some(svc) = set["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(svc);
    }
    let mut volumes: Vec<Value> = spec["volumes"].as_array().cloned().unwrap_or_default();
    for ct in claim_templates(set) {
        let claim = ct["metadata"]["name"].as_str().unwrap_or("");
        volumes.retain(|v| v["name"] != claim);
        volumes.push(json!({"name": claim, "persistentVolumeClaim": {
            "claimName": claim_name(claim, set_name, ordinal)}}));
    }
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// The claims the pod for `ordinal` needs, from `volumeClaimTemplates`.
pub fn new_claims(set: &Value, ordinal: i64) -> Vec<Value> {
    let set_name = name_of(set);
    let delete_with_set =
        set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete";
    claim_templates(set)
        .map(|ct| {
            let claim = ct["metadata"]["name"].as_str().unwrap_or("");
            let mut labels = ct["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            // Upstream labels claims with the set's matchLabels.
            for (k, v) in set["spec"]["selector"]["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
            {
                labels[k] = v.clone();
            }
            let mut meta = json!({"name": claim_name(claim, set_name, ordinal), "labels": labels});
            if let Some(a) = ct["metadata"]["annotations"].as_object() {
                meta["annotations"] = json!(a);
            }
            if delete_with_set {
                let mut owner = selector::owner_ref("apps/v1", "StatefulSet", set);
                owner["controller"] = json!(false);
                meta["ownerReferences"] = json!([owner]);
            }
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
                "spec": ct["spec"]})
        })
        .collect()
}

#[derive(Clone)]
pub struct StatefulSetController {
    ctx: Arc<Ctx>,
    queue: Queue,
}

impl StatefulSetController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = StatefulSetController {
            ctx: ctx.clone(),
            queue: Queue::default(),
        };
        enqueue::own_objects(&ctx.statefulsets, &me.queue);
        let m = me.clone();
        ctx.pods.on_change(Box::new(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                enqueue::controller_or_adopters(&m.queue, &m.ctx.statefulsets, "StatefulSet", p);
            }
        }));
        me
    }

    pub async fn run(self) {
        let me = &self;
        crate::reconcile_keys(&self.queue, "StatefulSet", |key| async move {
            me.reconcile(&key).await
        })
        .await
    }

    /// The pods this set controls, adopting orphans named like its pods.
    async fn owned_pods(&self, set: &Value) -> Result<Vec<Value>, Error> {
        let ns = set["metadata"]["namespace"].as_str().unwrap_or("");
        let uid = set["metadata"]["uid"].as_str().unwrap_or("");
        let mut out = Vec::new();
        for p in self.ctx.pods.list(Some(ns)) {
            match controller_of(&p) {
                Some((_, _, u)) if u == uid => out.push(p),
                None if !is_deleting(&p)
                    && ordinal_of(name_of(set), name_of(&p)).is_some()
                    && selector::matches(&set["spec"]["selector"], &p["metadata"]["labels"]) =>
                {
                    let patch = json!({"metadata": {"ownerReferences": [
                        selector::owner_ref("apps/v1", "StatefulSet", set)]}});
                    match self
                        .ctx
                        .client
                        .patch(
                            &pods(),
                            Some(ns),
                            name_of(&p),
                            Patch::Strategic(patch),
                            None,
                            MANAGER,
                        )
                        .await
                    {
                        Ok(o) => out.push(o),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(Error::Api("adopting a pod", e)),
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    pub async fn reconcile(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(set) = self.ctx.statefulsets.get(key) else {
            return Ok(None);
        };
        if is_deleting(&set) {
            return Ok(None);
        }
        let mut revs = history::owned(&self.ctx, &set);
        let update_rev =
            history::current(&self.ctx, &set, "apps/v1", "StatefulSet", &revs, MANAGER).await?;
        if !revs.iter().any(|r| name_of(r) == name_of(&update_rev)) {
            revs.push(update_rev.clone());
        }
        let current_rev = set["status"]["currentRevision"]
            .as_str()
            .and_then(|n| revs.iter().find(|r| name_of(r) == n))
            .cloned()
            .unwrap_or_else(|| update_rev.clone());
        let pods = self.owned_pods(&set).await?;
        self.manage(&set, &pods, &current_rev, &update_rev).await?;
        // Status from the cache as it is now (it saw our own writes).
        let pods = self.owned_pods(&set).await?;
        let live: HashSet<String> = pods
            .iter()
            .filter_map(|p| p["metadata"]["labels"][HASH_LABEL].as_str())
            .map(|h| format!("{}-{h}", name_of(&set)))
            .chain([
                name_of(&current_rev).to_string(),
                name_of(&update_rev).to_string(),
            ])
            .collect();
        history::truncate(&self.ctx, &set, &revs, &live).await?;
        self.update_status(&set, &pods, &current_rev, &update_rev)
            .await
    }

    /// One step of creating, deleting or updating pods (several at once only when Parallel).
    async fn manage(
        &self,
        set: &Value,
        pods: &[Value],
        current_rev: &Value,
        update_rev: &Value,
    ) -> Result<(), Error> {
        let set_name = name_of(set);
        let replicas = set["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let start = set["spec"]["ordinals"]["start"]
            .as_i64()
            .unwrap_or(0)
            .max(0);
        let monotonic = set["spec"]["podManagementPolicy"].as_str() != Some("Parallel");
        let rolling = set["spec"]["updateStrategy"]["type"].as_str() != Some("OnDelete");
        // Ordinals below this keep the current revision (the partition counts from the start
        // ordinal).
        let partition = start
            + if rolling {
                set["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
                    .as_i64()
                    .unwrap_or(0)
                    .max(0)
            } else {
                0
            };
        let update_hash = history::hash_of(update_rev);
        let mut in_range: BTreeMap<i64, &Value> = BTreeMap::new();
        let mut condemned: Vec<(i64, &Value)> = Vec::new();
        for p in pods {
            let Some(ord) = ordinal_of(set_name, name_of(p)) else {
                continue;
            };
            if ord >= start && ord < start + replicas {
                in_range.insert(ord, p);
            } else {
                condemned.push((ord, p));
            }
        }
        condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));

        // Create missing pods (and their claims), replace failed ones, in ordinal order.
        let mut blocked = false;
        for ord in start..start + replicas {
            match in_range.get(&ord) {
                None => {
                    let rev = if ord < partition {
                        current_rev
                    } else {
                        update_rev
                    };
                    self.create_pod(set, rev, ord).await?;
                    if monotonic {
                        return Ok(());
                    }
                }
                Some(p) if is_terminal(p) && !is_deleting(p) => {
                    self.ctx
                        .recorder
                        .warning(
                            set,
                            "RecreatingFailedPod",
                            &format!(
                                "StatefulSet {}/{set_name} is recreating failed Pod {}",
                                set["metadata"]["namespace"].as_str().unwrap_or(""),
                                name_of(p)
                            ),
                            "Recreate",
                        )
                        .await;
                    self.delete_pod(set, p).await?;
                    if monotonic {
                        return Ok(());
                    }
                }
                Some(p) if !healthy(p) => {
                    blocked = true;
                    if monotonic {
                        break;
                    }
                }
                Some(_) => {}
            }
        }

        // Remove pods beyond the replica count, highest ordinal first.
        if !condemned.is_empty() {
            for (i, (_, p)) in condemned.iter().enumerate() {
                if is_deleting(p) {
                    if monotonic {
                        return Ok(());
                    }
                    continue;
                }
                // OrderedReady: only when every other pod is healthy.
                let others_unhealthy = blocked
                    || condemned
                        .iter()
                        .skip(i + 1)
                        .any(|(_, q)| !healthy(q) && !is_terminal(q));
                if monotonic && others_unhealthy {
                    return Ok(());
                }
                self.delete_pod(set, p).await?;
                if set["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete" {
                    self.delete_claims(set, p).await?;
                }
                if monotonic {
                    return Ok(());
                }
            }
            return Ok(());
        }

        // RollingUpdate: once all pods run, replace the highest ordinal at an old revision.
        if !rolling || blocked || in_range.len() as i64 != replicas {
            return Ok(());
        }
        if in_range.values().any(|p| !healthy(p)) {
            return Ok(());
        }
        let target = in_range
            .iter()
            .rev()
            .filter(|(ord, _)| **ord >= partition)
            .find(|(_, p)| p["metadata"]["labels"][HASH_LABEL].as_str() != Some(&update_hash));
        if let Some((_, p)) = target {
            debug!(pod = name_of(p), "rolling update");
            self.delete_pod(set, p).await?;
        }
        Ok(())
    }

    async fn create_pod(&self, set: &Value, rev: &Value, ord: i64) -> Result<(), Error> {
        let ns = set["metadata"]["namespace"].as_str().unwrap_or("");
        let set_name = name_of(set);
        let pod_name = format!("{set_name}-{ord}");
        for claim in new_claims(set, ord) {
            let cname = name_of(&claim).to_string();
            if self
                .ctx
                .persistentvolumeclaims
                .get(&format!("{ns}/{cname}"))
                .is_some()
            {
                continue;
            }
            match self
                .ctx
                .client
                .create(&claims(), Some(ns), claim, MANAGER)
                .await
            {
                Ok(o) => {
                    self.ctx.persistentvolumeclaims.observe(&o);
                    self.ctx
                        .recorder
                        .normal(
                            set,
                            "SuccessfulCreate",
                            &format!(
                                "create Claim {cname} Pod {pod_name} in StatefulSet {set_name} success"
                            ),
                            "Create",
                        )
                        .await;
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => {
                    self.ctx
                        .recorder
                        .warning(
                            set,
                            "FailedCreate",
                            &format!(
                                "create Claim {cname} for Pod {pod_name} in StatefulSet {set_name} failed error: {}",
                                e.message
                            ),
                            "Create",
                        )
                        .await;
                    return Err(Error::Api("creating a claim", e));
                }
            }
        }
        let pod = new_pod(set, &history::template_of(rev), &history::hash_of(rev), ord);
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
                        set,
                        "SuccessfulCreate",
                        &format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                        "Create",
                    )
                    .await;
                Ok(())
            }
            // The old pod of this name is still going away; its deletion event requeues us.
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => {
                self.ctx
                    .recorder
                    .warning(
                        set,
                        "FailedCreate",
                        &format!(
                            "create Pod {pod_name} in StatefulSet {set_name} failed error: {}",
                            e.message
                        ),
                        "Create",
                    )
                    .await;
                Err(Error::Api("creating a pod", e))
            }
        }
    }

    async fn delete_pod(&self, set: &Value, p: &Value) -> Result<(), Error> {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
        let pn = name_of(p);
        let params = DeleteParams {
            precondition_uid: p["metadata"]["uid"].as_str().map(String::from),
            ..Default::default()
        };
        match self.ctx.client.delete(&pods(), Some(ns), pn, &params).await {
            Ok(o) => {
                if is_deleting(&o) {
                    self.ctx.pods.observe(&o);
                }
                self.ctx
                    .recorder
                    .normal(
                        set,
                        "SuccessfulDelete",
                        &format!("delete Pod {pn} in StatefulSet {} successful", name_of(set)),
                        "Delete",
                    )
                    .await;
                Ok(())
            }
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(Error::Api("deleting a pod", e)),
        }
    }

    /// persistentVolumeClaimRetentionPolicy.whenScaled = Delete: a condemned pod's claims go too.
    async fn delete_claims(&self, set: &Value, p: &Value) -> Result<(), Error> {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
        let Some(ord) = ordinal_of(name_of(set), name_of(p)) else {
            return Ok(());
        };
        for c in new_claims(set, ord) {
            match self
                .ctx
                .client
                .delete(&claims(), Some(ns), name_of(&c), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(Error::Api("deleting a claim", e)),
            }
        }
        Ok(())
    }

    async fn update_status(
        &self,
        set: &Value,
        pods: &[Value],
        current_rev: &Value,
        update_rev: &Value,
    ) -> Result<Option<Duration>, Error> {
        let min_ready = set["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = chrono::Utc::now();
        let current_hash = history::hash_of(current_rev);
        let update_hash = history::hash_of(update_rev);
        let (mut replicas, mut ready, mut avail, mut current, mut updated) = (0, 0, 0, 0, 0);
        let mut recheck: Option<Duration> = None;
        for p in pods.iter().filter(|p| !is_terminal(p)) {
            replicas += 1;
            if p["status"]["phase"] == "Running" && selector::is_ready(p) {
                ready += 1;
                match available(p, min_ready, now) {
                    Ok(()) => avail += 1,
                    Err(Some(d)) => recheck = Some(recheck.map_or(d, |r| r.min(d))),
                    Err(None) => {}
                }
            }
            if !is_deleting(p) {
                let h = p["metadata"]["labels"][HASH_LABEL].as_str();
                if h == Some(&current_hash) {
                    current += 1;
                }
                if h == Some(&update_hash) {
                    updated += 1;
                }
            }
        }
        let mut current_name = name_of(current_rev).to_string();
        // A finished rollout makes the update revision current (upstream's completeRollingUpdate).
        if updated == replicas && ready == replicas {
            current = updated;
            current_name = name_of(update_rev).to_string();
        }
        let mut status = Map::new();
        status.insert(
            "observedGeneration".into(),
            set["metadata"]["generation"].clone(),
        );
        status.insert("replicas".into(), json!(replicas));
        for (k, v) in [
            ("readyReplicas", ready),
            ("currentReplicas", current),
            ("updatedReplicas", updated),
            ("availableReplicas", avail),
        ] {
            status.insert(k.into(), json!(v));
        }
        status.insert("currentRevision".into(), json!(current_name));
        status.insert("updateRevision".into(), json!(name_of(update_rev)));
        status.insert(
            "collisionCount".into(),
            json!(set["status"]["collisionCount"].as_i64().unwrap_or(0)),
        );
        let (client, cache) = (self.ctx.client.as_ref(), &self.ctx.statefulsets);
        let new = Value::Object(status);
        crate::status::write_if_changed(client, cache, &resource(), MANAGER, set, new).await?;
        Ok(recheck.map(|d| d + Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"replicas": 3, "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}],
                        "volumes": [{"name": "www", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web-1-2"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web--1"), None);
    }

    #[test]
    fn pods_have_stable_identity_and_claims() {
        let s = set();
        let p = new_pod(&s, &s["spec"]["template"], "abc", 2);
        assert_eq!(p["metadata"]["name"], "web-2");
        let l = &p["metadata"]["labels"];
        assert_eq!(l["app"], "web");
        assert_eq!(l[POD_NAME_LABEL], "web-2");
        assert_eq!(l[POD_INDEX_LABEL], "2");
        assert_eq!(l[HASH_LABEL], "abc");
        assert_eq!(p["spec"]["hostname"], "web-2");
        assert_eq!(p["spec"]["subdomain"], "nginx");
        assert_eq!(
            p["spec"]["volumes"],
            json!([{"name": "www", "persistentVolumeClaim": {"claimName": "www-web-2"}}]),
            "the claim replaces a template volume of the same name"
        );
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        let c = new_claims(&s, 2);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["metadata"]["name"], "www-web-2");
        assert_eq!(c[0]["metadata"]["labels"]["app"], "web");
        assert!(
            c[0]["metadata"]["ownerReferences"].is_null(),
            "Retain: no owner"
        );
        let mut s2 = s.clone();
        s2["spec"]["persistentVolumeClaimRetentionPolicy"] = json!({"whenDeleted": "Delete"});
        let c = new_claims(&s2, 0);
        assert_eq!(c[0]["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(c[0]["metadata"]["ownerReferences"][0]["controller"], false);
    }
}
