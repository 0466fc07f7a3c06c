//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector, adopting
//! orphans, and reports replicas/ready/available/fullyLabeled/observedGeneration. The same
//! controller runs ReplicationControllers (core/v1), whose selector is a plain label map.

use crate::informer::{key_of, Expectations, Informer, Queue};
use crate::selector::{
    self, available, controller_key, controller_of, is_active, is_deleting, split_key,
};
use crate::{enqueue, Ctx, Error};
use k3rs_client::{DeleteParams, Patch, Resource};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// At most this many pods are created or deleted per sync (upstream's burstReplicas).
const BURST: usize = 500;

pub fn resource() -> Resource {
    Resource::new("apps", "v1", "replicasets")
}

/// What differs between the two kinds this controller runs.
#[derive(Clone, Copy)]
pub struct Kind {
    pub kind: &'static str,
    pub api_version: &'static str,
    manager: &'static str,
    resource: fn() -> Resource,
    informer: fn(&Ctx) -> &Informer,
    /// The object's selector as a LabelSelector.
    selector: fn(&Value) -> Value,
}

pub const REPLICA_SET: Kind = Kind {
    kind: "ReplicaSet",
    api_version: "apps/v1",
    manager: "replicaset-controller",
    resource,
    informer: |ctx| &ctx.replicasets,
    selector: |rs| rs["spec"]["selector"].clone(),
};

pub const REPLICATION_CONTROLLER: Kind = Kind {
    kind: "ReplicationController",
    api_version: "v1",
    manager: "replication-controller",
    resource: || Resource::core("replicationcontrollers"),
    informer: |ctx| &ctx.replicationcontrollers,
    selector: rc_selector,
};

/// An RC's `spec.selector` is an equality map; when absent it defaults to the template's labels.
fn rc_selector(rc: &Value) -> Value {
    let sel = match &rc["spec"]["selector"] {
        Value::Object(m) if !m.is_empty() => Value::Object(m.clone()),
        _ => rc["spec"]["template"]["metadata"]["labels"].clone(),
    };
    if sel.as_object().is_none_or(|m| m.is_empty()) {
        return Value::Null; // matches nothing
    }
    json!({ "matchLabels": sel })
}

#[derive(Clone)]
pub struct ReplicaSetController {
    ctx: Arc<Ctx>,
    kind: Kind,
    queue: Queue,
    exp: Expectations,
}

impl ReplicaSetController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self::for_kind(ctx, REPLICA_SET)
    }

    pub fn replication_controllers(ctx: Arc<Ctx>) -> Self {
        Self::for_kind(ctx, REPLICATION_CONTROLLER)
    }

    fn for_kind(ctx: Arc<Ctx>, kind: Kind) -> Self {
        let me = ReplicaSetController {
            ctx: ctx.clone(),
            kind,
            queue: Queue::default(),
            exp: Expectations::default(),
        };
        enqueue::own_objects((kind.informer)(&ctx), &me.queue);
        let m = me.clone();
        ctx.pods
            .on_change(Box::new(move |old, new| m.pod_changed(old, new)));
        me
    }

    fn informer(&self) -> &Informer {
        (self.kind.informer)(&self.ctx)
    }

    fn owner_key(&self, pod: &Value) -> Option<String> {
        controller_key(pod, self.kind.kind)
    }

    fn pod_changed(&self, old: Option<&Value>, new: Option<&Value>) {
        match (old, new) {
            (None, Some(p)) => {
                if let Some(k) = self.owner_key(p) {
                    self.exp.creation_observed(&k);
                    self.queue.add(k);
                } else {
                    self.enqueue_matching(p);
                }
            }
            (Some(o), Some(p)) => {
                let (ok, nk) = (self.owner_key(o), self.owner_key(p));
                if is_deleting(p) && !is_deleting(o) {
                    if let Some(k) = &nk {
                        self.exp.deletion_observed(k, &key_of(p));
                    }
                }
                if ok != nk {
                    if let Some(k) = ok {
                        self.queue.add(k);
                    }
                }
                match nk {
                    Some(k) => self.queue.add(k),
                    None => self.enqueue_matching(p),
                }
            }
            (Some(o), None) => {
                if let Some(k) = self.owner_key(o) {
                    self.exp.deletion_observed(&k, &key_of(o));
                    self.queue.add(k);
                }
            }
            (None, None) => {}
        }
    }

    /// An orphan pod: the ReplicaSets whose selector matches it may adopt it.
    fn enqueue_matching(&self, pod: &Value) {
        if !is_active(pod) {
            return;
        }
        let ns = pod["metadata"]["namespace"].as_str();
        for rs in self.informer().list(ns) {
            if selector::matches(&(self.kind.selector)(&rs), &pod["metadata"]["labels"]) {
                self.queue.add(key_of(&rs));
            }
        }
    }

    pub async fn run(self) {
        let me = &self;
        crate::reconcile_keys(&self.queue, self.kind.kind, |key| async move {
            me.reconcile(&key).await
        })
        .await
    }

    /// One sync; returns when to look again (minReadySeconds), if needed.
    pub async fn reconcile(&self, key: &str) -> Result<Option<Duration>, Error> {
        let Some(rs) = self.informer().get(key) else {
            self.exp.forget(key);
            return Ok(None);
        };
        let (ns, _) = split_key(key);
        let uid = rs["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let sel = &(self.kind.selector)(&rs);
        // Read before the pod cache (upstream's order): satisfied here means every pod this
        // controller created or deleted is already reflected in the list below, so it cannot
        // act on a list that predates its own writes.
        let needs_sync = self.exp.satisfied(key);
        let mut pods = Vec::new();
        for p in self.ctx.pods.list(Some(ns)) {
            match controller_of(&p) {
                Some((_, _, u)) if u == uid => pods.push(p),
                None if !is_deleting(&rs)
                    && is_active(&p)
                    && selector::matches(sel, &p["metadata"]["labels"]) =>
                {
                    // Adopt the orphan.
                    let patch = json!({"metadata": {
                        "ownerReferences": [selector::owner_ref(self.kind.api_version, self.kind.kind, &rs)]}});
                    let pn = p["metadata"]["name"].as_str().unwrap_or("");
                    match self
                        .ctx
                        .client
                        .patch(
                            &Resource::core("pods"),
                            Some(ns),
                            pn,
                            Patch::Strategic(patch),
                            None,
                            self.kind.manager,
                        )
                        .await
                    {
                        Ok(adopted) => pods.push(adopted),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(Error::Api("adopting a pod", e)),
                    }
                }
                _ => {}
            }
        }
        let active: Vec<Value> = pods.into_iter().filter(is_active).collect();
        let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        if needs_sync && !is_deleting(&rs) {
            self.manage(&rs, key, &active, want).await?;
        }
        self.update_status(&rs, &active).await
    }

    async fn manage(
        &self,
        rs: &Value,
        key: &str,
        active: &[Value],
        want: usize,
    ) -> Result<(), Error> {
        let (ns, name) = split_key(key);
        let pods = Resource::core("pods");
        if active.len() < want {
            let n = (want - active.len()).min(BURST);
            self.exp.expect(key, n as i64, HashSet::new());
            let template = &rs["spec"]["template"];
            for _ in 0..n {
                let pod = pod_from_template(
                    template,
                    name,
                    &selector::owner_ref(self.kind.api_version, self.kind.kind, rs),
                );
                match self
                    .ctx
                    .client
                    .create(&pods, Some(ns), pod, self.kind.manager)
                    .await
                {
                    Ok(p) => {
                        let pn = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                        self.ctx
                            .recorder
                            .normal(
                                rs,
                                "SuccessfulCreate",
                                &format!("Created pod: {pn}"),
                                "Create",
                            )
                            .await;
                    }
                    Err(e) => {
                        self.exp.creation_observed(key);
                        self.ctx
                            .recorder
                            .warning(
                                rs,
                                "FailedCreate",
                                &format!("Error creating: {}", e.message),
                                "Create",
                            )
                            .await;
                        return Err(Error::Api("creating a pod", e));
                    }
                }
            }
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST);
            let mut ranked: Vec<&Value> = active.iter().collect();
            ranked.sort_by_key(|p| deletion_rank(p));
            let victims: Vec<&Value> = ranked.into_iter().take(n).collect();
            self.exp
                .expect(key, 0, victims.iter().map(|p| key_of(p)).collect());
            for p in victims {
                let pn = p["metadata"]["name"].as_str().unwrap_or("");
                match self
                    .ctx
                    .client
                    .delete(&pods, Some(ns), pn, &DeleteParams::default())
                    .await
                {
                    Ok(_) => {
                        self.ctx
                            .recorder
                            .normal(
                                rs,
                                "SuccessfulDelete",
                                &format!("Deleted pod: {pn}"),
                                "Delete",
                            )
                            .await
                    }
                    Err(e) if e.is_not_found() => self.exp.deletion_observed(key, &key_of(p)),
                    Err(e) => {
                        self.exp.deletion_observed(key, &key_of(p));
                        return Err(Error::Api("deleting a pod", e));
                    }
                }
            }
        }
        Ok(())
    }

    async fn update_status(&self, rs: &Value, active: &[Value]) -> Result<Option<Duration>, Error> {
        let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = chrono::Utc::now();
        let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
        let mut ready = 0;
        let mut avail = 0;
        let mut fully = 0;
        let mut recheck: Option<Duration> = None;
        for p in active {
            if selector::is_ready(p) {
                ready += 1;
            }
            match available(p, min_ready, now) {
                Ok(()) => avail += 1,
                Err(Some(d)) => recheck = Some(recheck.map_or(d, |r| r.min(d))),
                Err(None) => {}
            }
            let labels = &p["metadata"]["labels"];
            if template_labels
                .as_object()
                .is_none_or(|t| t.iter().all(|(k, v)| labels.get(k) == Some(v)))
            {
                fully += 1;
            }
        }
        let mut status = rs["status"].as_object().cloned().unwrap_or_default();
        let set = |k: &str, v: Value, status: &mut Map<String, Value>| {
            if v == json!(0) && k != "replicas" {
                status.remove(k);
            } else {
                status.insert(k.into(), v);
            }
        };
        set("replicas", json!(active.len()), &mut status);
        set("fullyLabeledReplicas", json!(fully), &mut status);
        set("readyReplicas", json!(ready), &mut status);
        set("availableReplicas", json!(avail), &mut status);
        set(
            "observedGeneration",
            rs["metadata"]["generation"].clone(),
            &mut status,
        );
        let new = Value::Object(status);
        if new != rs["status"] {
            debug!(?new, "status");
        }
        let (client, resource) = (self.ctx.client.as_ref(), (self.kind.resource)());
        let (cache, manager) = (self.informer(), self.kind.manager);
        crate::status::write_if_changed(client, cache, &resource, manager, rs, new).await?;
        Ok(recheck.map(|d| d + Duration::from_millis(100)))
    }
}

/// Pods to delete first sort first (upstream's ActivePodsWithRanks, simplified): unassigned, then
/// pending, not ready, more restarts, newer.
fn deletion_rank(
    p: &Value,
) -> (
    bool,
    u8,
    bool,
    std::cmp::Reverse<i64>,
    std::cmp::Reverse<String>,
) {
    let assigned = p["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let phase = match p["status"]["phase"].as_str() {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let restarts: i64 = p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    let created = p["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (
        assigned,
        phase,
        selector::is_ready(p),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(created),
    )
}

/// A pod for a controller: the template's labels, annotations and spec, `generateName` `<owner>-`.
pub fn pod_from_template(template: &Value, owner_name: &str, owner_ref: &Value) -> Value {
    let mut meta = Map::new();
    meta.insert("generateName".into(), json!(format!("{owner_name}-")));
    for k in ["labels", "annotations"] {
        if let Some(v) = template["metadata"].get(k).filter(|v| v.is_object()) {
            meta.insert(k.into(), v.clone());
        }
    }
    meta.insert("ownerReferences".into(), json!([owner_ref]));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
}
