//! The k3rs scheduler: binds pending pods whose `schedulerName` is ours to nodes, the way
//! kube-scheduler does with its default plugins.
//!
//! One task owns all state (no locks): node and pod watches feed it messages; it keeps a cache of
//! nodes and the pods assigned to them, a priority queue of pending pods and a set of unschedulable
//! pods. A scheduled pod is *assumed* onto its node at once (so the next pod sees its requests) and
//! bound asynchronously through `pods/binding` by a bounded number of concurrent binders; a failed
//! binding forgets the assumption and retries the pod. Unschedulable pods get a `PodScheduled=False`
//! condition and a `FailedScheduling` event, and are retried only when a node or an assigned pod
//! changes — an idle cluster makes the scheduler write nothing.
#![forbid(unsafe_code)]

pub mod cache;
pub use k3rs_client::events;
pub mod interpod;
pub mod plugins;
pub mod podmeta;
pub mod preemption;
pub mod spread;
pub mod volumes;

use cache::{NodeInfo, PodInfo};
use k3rs_client::{Client, ClientError, ListParams, Patch, Resource, WatchEvent};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, info_span, warn, Instrument};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Pods whose `spec.schedulerName` is this are ours; others are left alone.
    pub scheduler_name: String,
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            scheduler_name: "default-scheduler".into(),
            bind_concurrency: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("watching {0}")]
    Watch(&'static str, #[source] ClientError),
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// Runs the scheduler forever, restarting its watches when they fail.
pub async fn run(client: Arc<dyn Client>, config: SchedulerConfig) {
    info!(name = %config.scheduler_name, "scheduler starting");
    loop {
        if let Err(e) = run_once(client.clone(), &config).await {
            warn!(error = %e, "scheduler restarting");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

enum Msg {
    Node(WatchEvent),
    Pod(WatchEvent),
    /// (pod key, error) of a failed binding.
    BindFailed(String, ClientError),
    Retry(String),
}

fn pod_key(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or(""),
        pod["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// Lists then watches `r`, sending every event (the list as ADDED) into `tx`; a relist's missing
/// objects come as DELETED. Returns when the watch fails.
async fn feed(
    client: Arc<dyn Client>,
    r: Resource,
    what: &'static str,
    tx: mpsc::UnboundedSender<Msg>,
    wrap: fn(WatchEvent) -> Msg,
) -> Result<(), Error> {
    let list = client
        .list(&r, None, &ListParams::default())
        .await
        .map_err(|e| Error::Watch(what, e))?;
    let mut stream = client
        .watch(
            &r,
            None,
            &ListParams {
                resource_version: Some(list.resource_version.clone()),
                allow_bookmarks: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::Watch(what, e))?;
    for item in list.items {
        if tx.send(wrap(WatchEvent::Added(item))).is_err() {
            return Ok(());
        }
    }
    while let Some(ev) = stream.next().await {
        if let WatchEvent::Error(e) = ev {
            return Err(Error::Watch(what, e));
        }
        if tx.send(wrap(ev)).is_err() {
            return Ok(());
        }
    }
    Err(Error::WatchEnded(what))
}

struct Pending {
    pod: Value,
    seq: u64,
    priority: i64,
}

struct State {
    client: Arc<dyn Client>,
    config: SchedulerConfig,
    nodes: BTreeMap<String, NodeInfo>,
    /// Assigned (bound or assumed) pods and where they are.
    assigned: HashMap<String, PodInfo>,
    /// Pending pods by key; the queue orders them by (-priority, arrival).
    pending: HashMap<String, Pending>,
    queue: BTreeMap<(i64, u64), String>,
    /// Pods that fit nowhere, with the spec they were tried with.
    unschedulable: HashMap<String, Value>,
    seq: u64,
    binders: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Msg>,
    recorder: events::Recorder,
    /// Rotates tie-breaking between equally scored nodes.
    tie: usize,
    /// Pods that preempted, holding room on their node (`preemption.rs`).
    nominated: preemption::Nominations,
    /// Unschedulable pods that a newly placed pod may let in (required pod affinity, topology
    /// spread): retried on the next assignment.
    awaiting_pods: HashSet<String>,
}

async fn run_once(client: Arc<dyn Client>, config: &SchedulerConfig) -> Result<(), Error> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let nodes = tokio::spawn(feed(
        client.clone(),
        Resource::core("nodes"),
        "nodes",
        tx.clone(),
        Msg::Node,
    ));
    let pods = tokio::spawn(feed(
        client.clone(),
        Resource::core("pods"),
        "pods",
        tx.clone(),
        Msg::Pod,
    ));
    let mut st = State {
        client: client.clone(),
        config: config.clone(),
        nodes: BTreeMap::new(),
        assigned: HashMap::new(),
        pending: HashMap::new(),
        queue: BTreeMap::new(),
        unschedulable: HashMap::new(),
        seq: 0,
        binders: Arc::new(Semaphore::new(config.bind_concurrency.max(1))),
        tx,
        recorder: events::Recorder::new(client.clone(), "default-scheduler"),
        tie: 0,
        nominated: Default::default(),
        awaiting_pods: HashSet::new(),
    };
    let result = loop {
        // Take in everything the watches have, then schedule one pod.
        let msg = if st.queue.is_empty() {
            rx.recv().await
        } else {
            match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) => {
                    st.schedule_next().await;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        };
        let Some(msg) = msg else {
            break Ok(());
        };
        if let Err(e) = st.handle(msg) {
            break Err(e);
        }
    };
    nodes.abort();
    pods.abort();
    result
}

impl State {
    fn handle(&mut self, msg: Msg) -> Result<(), Error> {
        match msg {
            Msg::Node(ev) => match ev {
                WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                    let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
                    let info = self.nodes.entry(name).or_default();
                    let fp = NodeInfo::fingerprint(&n);
                    if info.name.is_empty() || info.fingerprint != fp {
                        info.set_node(&n);
                        self.retry_unschedulable();
                    }
                }
                WatchEvent::Deleted(n) => {
                    if let Some(name) = n["metadata"]["name"].as_str() {
                        self.nodes.remove(name);
                    }
                }
                WatchEvent::Bookmark { .. } => {}
                WatchEvent::Error(e) => return Err(Error::Watch("nodes", e)),
            },
            Msg::Pod(ev) => match ev {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => self.pod_changed(p),
                WatchEvent::Deleted(p) => {
                    let key = pod_key(&p);
                    self.forget_pending(&key);
                    self.unschedulable.remove(&key);
                    if self.unassign(&key) {
                        self.retry_unschedulable();
                    }
                }
                WatchEvent::Bookmark { .. } => {}
                WatchEvent::Error(e) => return Err(Error::Watch("pods", e)),
            },
            Msg::BindFailed(key, e) => {
                debug!(pod = %key, error = %e, "binding failed");
                self.unassign(&key);
                if !e.is_not_found() {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = tx.send(Msg::Retry(key));
                    });
                }
            }
            Msg::Retry(key) => {
                let client = self.client.clone();
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let (ns, name) = key.split_once('/').unwrap_or(("", &key));
                    if let Ok(p) = client.get(&Resource::core("pods"), Some(ns), name).await {
                        let _ = tx.send(Msg::Pod(WatchEvent::Modified(p)));
                    }
                });
            }
        }
        Ok(())
    }

    fn pod_changed(&mut self, p: Value) {
        let key = pod_key(&p);
        let node = p["spec"]["nodeName"].as_str().unwrap_or("");
        let phase = p["status"]["phase"].as_str().unwrap_or("");
        let terminal = phase == "Succeeded" || phase == "Failed";
        if !node.is_empty() {
            self.forget_pending(&key);
            self.unschedulable.remove(&key);
            if terminal {
                if self.unassign(&key) {
                    self.retry_unschedulable();
                }
                return;
            }
            let info = PodInfo::from_pod(&p);
            if let Some(old) = self.assigned.get(&key) {
                if old.node == info.node && old.requests == info.requests && old.meta == info.meta {
                    return;
                }
                self.unassign(&key);
            }
            self.assign(key, info);
            return;
        }
        if self.assigned.contains_key(&key) {
            // Assumed and being bound: an older event of the pending pod.
            return;
        }
        let ours = p["spec"]["schedulerName"]
            .as_str()
            .unwrap_or("default-scheduler")
            == self.config.scheduler_name;
        if !ours || terminal || !p["metadata"]["deletionTimestamp"].is_null() {
            self.forget_pending(&key);
            self.unschedulable.remove(&key);
            return;
        }
        if let Some(spec) = self.unschedulable.get(&key) {
            if *spec == pod_scheduling_inputs(&p) {
                // Our own status patch, or a change that cannot make it fit.
                return;
            }
            self.unschedulable.remove(&key);
        }
        self.enqueue(key, p);
    }

    fn enqueue(&mut self, key: String, pod: Value) {
        if let Some(old) = self.pending.get_mut(&key) {
            old.pod = pod;
            return;
        }
        self.seq += 1;
        let priority = pod["spec"]["priority"].as_i64().unwrap_or(0);
        self.queue.insert((-priority, self.seq), key.clone());
        self.pending.insert(
            key,
            Pending {
                pod,
                seq: self.seq,
                priority,
            },
        );
    }

    fn forget_pending(&mut self, key: &str) {
        self.nominated.forget(key);
        if let Some(p) = self.pending.remove(key) {
            self.queue.remove(&(-p.priority, p.seq));
        }
    }

    fn assign(&mut self, key: String, info: PodInfo) {
        self.nominated.forget(&key);
        if !self.awaiting_pods.is_empty() {
            for k in std::mem::take(&mut self.awaiting_pods) {
                if self.unschedulable.remove(&k).is_some() {
                    let _ = self.tx.send(Msg::Retry(k));
                }
            }
        }
        if let Some(n) = self.nodes.get_mut(&info.node) {
            n.add_pod(&info);
        } else {
            // A pod on a node we have not seen yet: account it when the node appears.
            let n = self.nodes.entry(info.node.clone()).or_default();
            n.add_pod(&info);
        }
        self.assigned.insert(key, info);
    }

    /// Removes an assigned pod from its node; true if it was there.
    fn unassign(&mut self, key: &str) -> bool {
        let Some(info) = self.assigned.remove(key) else {
            return false;
        };
        if let Some(n) = self.nodes.get_mut(&info.node) {
            n.remove_pod(&info);
        }
        true
    }

    fn retry_unschedulable(&mut self) {
        if self.unschedulable.is_empty() {
            return;
        }
        let keys: Vec<String> = self.unschedulable.keys().cloned().collect();
        let tx = self.tx.clone();
        for k in keys {
            let _ = tx.send(Msg::Retry(k));
        }
        self.unschedulable.clear();
    }

    async fn schedule_next(&mut self) {
        let Some((_, key)) = self.queue.pop_first() else {
            return;
        };
        let Some(pending) = self.pending.remove(&key) else {
            return;
        };
        let pod = pending.pod;
        let (ns, name) = key.split_once('/').unwrap_or(("", &key));
        let span = info_span!("reconcile", kind = "Pod", namespace = %ns, name = %name);
        // Only pods with PersistentVolumeClaims read anything here.
        let volumes = volumes::VolumeNeeds::load(self.client.as_ref(), &pod)
            .instrument(span.clone())
            .await;
        // Only pods whose affinity terms select namespaces by label read anything here.
        let namespaces = interpod::NamespaceLabels::load(self.client.as_ref(), &pod, &self.nodes)
            .instrument(span.clone())
            .await;
        let chosen = span.in_scope(|| self.decide(&key, &pod, &volumes, &namespaces));
        if let Some(node) = chosen {
            self.bind(key, pod, node, volumes, span).await;
        } else {
            self.preempt(&key, &pod, &volumes, &namespaces)
                .instrument(span)
                .await;
        }
    }

    /// Filters and scores the nodes for one pod; assumes it onto the best node, or reports it
    /// unschedulable.
    fn decide(
        &mut self,
        key: &str,
        pod: &Value,
        volumes: &volumes::VolumeNeeds,
        namespaces: &interpod::NamespaceLabels,
    ) -> Option<String> {
        let info = PodInfo::from_pod(pod);
        let interpod = interpod::InterPod::new(&info.meta, self.nodes.values(), namespaces);
        let spread = spread::Spread::new(pod, &info, self.nodes.values());
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut candidates: Vec<&NodeInfo> = Vec::new();
        // Nodes known only from their pods (not yet watched) have no name.
        let mut total = 0;
        for n in self.nodes.values().filter(|n| !n.name.is_empty()) {
            total += 1;
            // Room held for preempting pods of at least this priority counts as taken.
            let view = self.nominated.node_view(key, info.meta.priority, n);
            let viewed = view.as_ref().unwrap_or(n);
            let mut r = plugins::filter(pod, &info, viewed);
            if r.is_empty() && !volumes.is_empty() {
                r.extend(volumes.filter(n));
            }
            if r.is_empty() {
                r.extend(
                    spread
                        .filter(n)
                        .or_else(|| interpod.filter(n))
                        .map(String::from),
                );
            }
            if r.is_empty() {
                candidates.push(n);
            } else {
                for reason in r {
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
        if candidates.is_empty() {
            let message = plugins::unschedulable_message(total, &reasons);
            debug!(%message, "unschedulable");
            if spread.has_hard() || reasons.contains_key(interpod::AFFINITY_MISMATCH) {
                self.awaiting_pods.insert(key.to_string());
            }
            if volumes.is_empty() {
                self.unschedulable
                    .insert(key.to_string(), pod_scheduling_inputs(pod));
            } else {
                // Claims and volumes are not watched here: look again in a while (a Null entry
                // never matches, so the retry re-queues the pod).
                self.unschedulable.insert(key.to_string(), Value::Null);
                let (tx, key) = (self.tx.clone(), key.to_string());
                tokio::spawn(async move {
                    tokio::time::sleep(volumes::RETRY).await;
                    let _ = tx.send(Msg::Retry(key));
                });
            }
            self.report_unschedulable(pod.clone(), message);
            return None;
        }
        let max_owner = info
            .owner_uid
            .as_ref()
            .map(|u| {
                candidates
                    .iter()
                    .map(|n| n.owner_counts.get(u).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let all_nodes = || self.nodes.values();
        let interpod_scores = interpod.scores(&candidates, all_nodes());
        let spread_scores = spread.scores(&candidates, all_nodes());
        let mut best_score = i64::MIN;
        let mut best: Vec<usize> = Vec::new();
        for (i, n) in candidates.iter().enumerate() {
            // Upstream's default weights: InterPodAffinity 2, PodTopologySpread 2.
            let s = plugins::score(pod, &info, n, max_owner)
                + 2 * interpod_scores.as_ref().map_or(0, |v| v[i])
                + 2 * spread_scores.as_ref().map_or(0, |v| v[i]);
            if s > best_score {
                best_score = s;
                best.clear();
                best.push(i);
            } else if s == best_score {
                best.push(i);
            }
        }
        self.tie = self.tie.wrapping_add(1);
        let chosen = candidates[best[self.tie % best.len()]].name.clone();
        debug!(node = %chosen, score = best_score, "assumed");
        let mut assumed = info;
        assumed.node = chosen.clone();
        self.assign(key.to_string(), assumed);
        Some(chosen)
    }

    async fn bind(
        &self,
        key: String,
        pod: Value,
        node: String,
        volumes: volumes::VolumeNeeds,
        span: tracing::Span,
    ) {
        let Ok(permit) = self.binders.clone().acquire_owned().await else {
            return;
        };
        let client = self.client.clone();
        let tx = self.tx.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                volumes.select_node(client.as_ref(), &node).await;
                let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
                let name = pod["metadata"]["name"].as_str().unwrap_or("");
                let body = json!({
                    "apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns, "uid": pod["metadata"]["uid"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                });
                match client
                    .create_subresource(&Resource::core("pods"), Some(ns), name, "binding", body)
                    .await
                {
                    Ok(_) => debug!(%node, "bound"),
                    Err(e) => {
                        let _ = tx.send(Msg::BindFailed(key, e));
                    }
                }
            }
            .instrument(span),
        );
    }

    fn report_unschedulable(&self, pod: Value, message: String) {
        let current = pod["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
            .cloned();
        let unchanged = current.as_ref().is_some_and(|c| {
            c["status"] == "False" && c["reason"] == "Unschedulable" && c["message"] == message
        });
        if unchanged {
            // Same verdict as last time: write nothing.
            return;
        }
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = pod["metadata"]["name"].as_str().unwrap_or("");
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastProbeTime": null, "lastTransitionTime": now,
            }]}});
            if let Err(e) = client
                .patch(
                    &Resource::core("pods"),
                    Some(ns),
                    name,
                    Patch::Strategic(patch),
                    Some("status"),
                    "default-scheduler",
                )
                .await
            {
                debug!(error = %e, "recording PodScheduled=False");
                return;
            }
            recorder
                .warning(&pod, "FailedScheduling", &message, "Scheduling")
                .await;
        });
    }
}

/// The parts of a pending pod that decide where it fits: a change elsewhere (our own status patch)
/// does not need another try.
fn pod_scheduling_inputs(pod: &Value) -> Value {
    let mut spec = pod["spec"].clone();
    if let Some(m) = spec.as_object_mut() {
        m.remove("nodeName");
    }
    json!([spec, pod["metadata"]["labels"]])
}
