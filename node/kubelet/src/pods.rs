//! Pod workers: one task per pod bound to this node. Each sync makes the node match the pod —
//! sandbox, volumes, init containers in order, then the app containers under the restart policy
//! with back-off — and posts the resulting status only when it changed. Deleting a pod stops its
//! containers within the grace period and removes everything it had on the node.

use crate::container_spec::{self, command_line, field_ref, limits, user_ids};
use crate::probes::{PodProbes, Prober};
use crate::volumes::{self, VolumeContext};
use k3rs_client::{Client, DeleteParams, ListParams, Patch, Resource, WatchEvent};
use k3rs_images::{ImageStore, PullOptions};
use k3rs_runtime::{
    ContainerConfig, ContainerState, Mount, Resources, Runtime, Sandbox, SandboxConfig, User,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a worker looks at its containers when nothing else happens.
const POLL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct PodsConfig {
    pub node_name: String,
    pub host_ip: String,
    /// `<data-dir>/agent`: pods/, containers/, logs/ live below it.
    pub root: PathBuf,
    pub cluster_dns: Option<String>,
    pub cluster_domain: String,
    /// Mirrors and registry credentials (`registries.yaml`).
    pub registries: Arc<k3rs_images::registries::Registries>,
    /// Notified after every pull so image GC looks at disk usage.
    pub image_gc_kick: Arc<tokio::sync::Notify>,
    /// `--resolv-conf`: the node's resolver for dnsPolicy Default (else /etc/resolv.conf).
    pub resolv_conf: Option<PathBuf>,
    /// The pod network (bridge, veths, addresses) pods that are not hostNetwork attach to.
    pub network: Arc<crate::network::Network>,
    /// `containerLogMaxSize` / `containerLogMaxFiles`.
    pub container_log: k3rs_runtime::crilog::LogRotation,
}

impl PodsConfig {
    pub fn logs_root(&self) -> PathBuf {
        self.root.join("logs").join("pods")
    }
}

/// CRI log layout: `<logs>/<ns>_<name>_<uid>/<container>/<restart>.log`.
pub fn log_path(
    logs_root: &Path,
    ns: &str,
    name: &str,
    uid: &str,
    container: &str,
    restart: u32,
) -> PathBuf {
    logs_root
        .join(format!("{ns}_{name}_{uid}"))
        .join(container)
        .join(format!("{restart}.log"))
}

pub struct Pods {
    client: Arc<dyn Client>,
    runtime: Runtime,
    images: ImageStore,
    cfg: PodsConfig,
    /// Deduplicates image pulls across workers.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Probes and lifecycle hooks (`probes.rs`).
    prober: Prober,
    /// ImagePullBackOff per pod and image.
    pull_backoff: crate::images::PullBackoff,
    /// Pulling/Pulled/Failed events.
    image_events: k3rs_client::events::Recorder,
}

enum Msg {
    Update(Value),
    Gone,
}

/// Per-container memory of a worker.
#[derive(Default, Clone)]
struct ContainerMemo {
    /// Number of the current attempt (= restartCount).
    attempt: u32,
    backoff_until: Option<Instant>,
    backoff: Duration,
    waiting: Option<(String, String)>,
    /// Image reference → imageID once known.
    image_id: String,
}

struct Worker {
    memo: HashMap<String, ContainerMemo>,
    last_status: Value,
    /// The pod as our last status write returned it: newer than the watch events still queued.
    written: Option<Value>,
    probes: PodProbes,
}

/// A pod's `metadata.resourceVersion` as a number (the store's revision); None if it is not one.
fn resource_version(pod: &Value) -> Option<u64> {
    pod.pointer("/metadata/resourceVersion")?
        .as_str()?
        .parse()
        .ok()
}

/// Whether `candidate` is at least as new as `current`. A stale watch event must not replace
/// the pod a status write returned: the worker would compute its status from older conditions
/// (e.g. without `PodScheduled`), write them back, get the newer event, write again, and so on
/// forever — every pod patched tens of times a second.
fn not_older(candidate: &Value, current: &Value) -> bool {
    match (resource_version(candidate), resource_version(current)) {
        (Some(a), Some(b)) => a >= b,
        _ => true,
    }
}

fn pod_key(pod: &Value) -> (String, String, String) {
    let m = &pod["metadata"];
    (
        m["namespace"].as_str().unwrap_or("default").to_string(),
        m["name"].as_str().unwrap_or("").to_string(),
        m["uid"].as_str().unwrap_or("").to_string(),
    )
}

/// `state.terminated.reason` as containerd reports it: a process that never started (the shim
/// recorded an error and no start time) is `StartError`.
fn termination_reason(
    oom_killed: bool,
    error: &Option<String>,
    started_at: &Option<chrono::DateTime<chrono::Utc>>,
    code: i32,
) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if error.is_some() && started_at.is_none() {
        "StartError"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{uid}_{name}_{attempt}")
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Pods {
    pub fn new(
        client: Arc<dyn Client>,
        runtime: Runtime,
        images: ImageStore,
        cfg: PodsConfig,
    ) -> Arc<Pods> {
        let network = cfg.network.clone();
        let image_events = k3rs_client::events::Recorder::new(client.clone(), "kubelet");
        let prober = Prober::new(
            runtime.clone(),
            k3rs_client::events::Recorder::new(client.clone(), "kubelet"),
            cfg.host_ip.clone(),
        )
        .with_pod_ips(Arc::new(move |uid: &str| {
            network.pod_ips(uid).and_then(|ips| ips.into_iter().next())
        }));
        Arc::new(Pods {
            client,
            runtime,
            images,
            cfg,
            pulling: Mutex::new(HashMap::new()),
            prober,
            pull_backoff: Default::default(),
            image_events,
        })
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The pod network (pod addresses for port-forward).
    pub fn network(&self) -> &Arc<crate::network::Network> {
        &self.cfg.network
    }

    pub fn logs_root(&self) -> PathBuf {
        self.cfg.logs_root()
    }

    /// Watches pods bound to this node and runs a worker per pod, forever.
    pub async fn run(self: Arc<Self>) {
        let pods = Resource::core("pods");
        let mut workers: HashMap<String, mpsc::Sender<Msg>> = HashMap::new();
        loop {
            let params = ListParams {
                field_selector: Some(format!("spec.nodeName={}", self.cfg.node_name)),
                ..Default::default()
            };
            let mut watch = match self.client.watch(&pods, None, &params).await {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "watching pods");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Sandboxes of pods that no longer exist are removed once the initial state is in.
            let mut seen = std::collections::HashSet::new();
            let mut cleaned = false;
            let started = Instant::now();
            loop {
                let ev = tokio::select! {
                    ev = watch.next() => ev,
                    _ = tokio::time::sleep(Duration::from_millis(500)), if !cleaned => {
                        if started.elapsed() > Duration::from_secs(1) {
                            cleaned = true;
                            self.clone().remove_orphans(seen.clone()).await;
                        }
                        continue;
                    }
                };
                match ev {
                    Some(WatchEvent::Added(p)) | Some(WatchEvent::Modified(p)) => {
                        let (_, _, uid) = pod_key(&p);
                        seen.insert(uid.clone());
                        let alive = workers.get(&uid).is_some_and(|w| !w.is_closed());
                        if alive {
                            let _ = workers[&uid].send(Msg::Update(p)).await;
                        } else {
                            let (tx, rx) = mpsc::channel(8);
                            let me = self.clone();
                            let (ns, name, _) = pod_key(&p);
                            tokio::spawn(
                                me.worker(p, rx)
                                    .instrument(info_span!("pod", namespace = %ns, name = %name)),
                            );
                            workers.insert(uid, tx);
                        }
                    }
                    Some(WatchEvent::Deleted(p)) => {
                        let (_, _, uid) = pod_key(&p);
                        if let Some(w) = workers.remove(&uid) {
                            let _ = w.send(Msg::Gone).await;
                        }
                    }
                    Some(WatchEvent::Bookmark { .. }) => {}
                    Some(WatchEvent::Error(e)) => {
                        warn!(error = %e, "pod watch ended");
                        break;
                    }
                    None => break,
                }
            }
            workers.retain(|_, w| !w.is_closed());
        }
    }

    async fn remove_orphans(self: Arc<Self>, live: std::collections::HashSet<String>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(sandboxes) = me.runtime.list_sandboxes() else {
                return;
            };
            let containers = me.runtime.list().unwrap_or_default();
            for sb in sandboxes.into_iter().filter(|s| !live.contains(&s.pod_uid)) {
                info!(pod_uid = %sb.pod_uid, "removing sandbox of a pod that no longer exists");
                for c in containers.iter().filter(|c| c.pod_uid == sb.pod_uid) {
                    let _ = me.runtime.stop(&c.id, Duration::from_secs(2));
                    let _ = me.runtime.remove(&c.id);
                    let _ = me.images.release_rootfs(&c.id);
                }
                me.cfg.network.detach(&sb.pod_uid);
                let _ = me.runtime.remove_sandbox(&sb.pod_uid);
                volumes::cleanup(&me.cfg.root.join("pods").join(&sb.pod_uid));
            }
        })
        .await;
    }

    async fn worker(self: Arc<Self>, mut pod: Value, mut rx: mpsc::Receiver<Msg>) {
        let mut w = Worker {
            memo: HashMap::new(),
            last_status: pod["status"].clone(),
            written: None,
            probes: PodProbes::default(),
        };
        self.adopt(&pod, &mut w).await;
        loop {
            match self.sync(&pod, &mut w).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "sync failed"),
            }
            if let Some(p) = w.written.take() {
                if not_older(&p, &pod) {
                    pod = p;
                }
            }
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Update(p)) if not_older(&p, &pod) => pod = p,
                    Some(Msg::Update(_)) => {}
                    Some(Msg::Gone) | None => {
                        self.teardown(&pod, Duration::from_secs(0)).await;
                        return;
                    }
                },
                _ = tokio::time::sleep(POLL) => {}
                // A probe result changed: post it now, not at the next poll.
                _ = w.probes.changed() => {}
            }
        }
    }

    /// After a restart of the node daemon: continue counting attempts from the containers found.
    async fn adopt(&self, pod: &Value, w: &mut Worker) {
        let (_, _, uid) = pod_key(pod);
        let rt = self.runtime.clone();
        let list = tokio::task::spawn_blocking(move || rt.list().unwrap_or_default())
            .await
            .unwrap_or_default();
        for c in list.into_iter().filter(|c| c.pod_uid == uid) {
            let mut parts = c.id.rsplitn(2, '_');
            let attempt: u32 = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0);
            let name = parts
                .next()
                .and_then(|p| p.split_once('_'))
                .map(|(_, n)| n.to_string())
                .unwrap_or_default();
            let memo = w.memo.entry(name).or_default();
            memo.attempt = memo.attempt.max(attempt);
            if memo.image_id.is_empty() {
                // What the status already says, so adopting does not rewrite imageID as "".
                let id = format!("k3rs://{}", c.id);
                memo.image_id = ["containerStatuses", "initContainerStatuses"]
                    .iter()
                    .flat_map(|k| pod["status"][k].as_array().into_iter().flatten())
                    .find(|s| s["containerID"] == id.as_str())
                    .and_then(|s| s["imageID"].as_str())
                    .unwrap_or_default()
                    .to_string();
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Runtime) -> T + Send + 'static,
    ) -> T {
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || f(rt))
            .await
            .expect("runtime task panicked")
    }

    /// One reconciliation. Returns true when the pod is gone and the worker should end.
    async fn sync(&self, pod: &Value, w: &mut Worker) -> Result<bool, String> {
        let (ns, name, uid) = pod_key(pod);
        if pod
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            let grace = pod
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
                .max(0) as u64;
            self.teardown(pod, Duration::from_secs(grace)).await;
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                precondition_uid: Some(uid.clone()),
                ..Default::default()
            };
            match self
                .client
                .delete(&Resource::core("pods"), Some(&ns), &name, &params)
                .await
            {
                Ok(_) => info!("pod deleted"),
                Err(e) if e.is_not_found() || e.code == 409 => {}
                Err(e) => return Err(e.to_string()),
            }
            return Ok(true);
        }
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" {
            w.probes.stop_all();
            return Ok(false);
        }
        // Liveness/startup failures: kill now; the loops below restart per restartPolicy.
        self.prober.kill_unhealthy(&mut w.probes, pod).await;
        let host_network = pod.pointer("/spec/hostNetwork") == Some(&json!(true));
        let hostname = pod
            .pointer("/spec/hostname")
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_string();
        let sb_cfg = SandboxConfig {
            hostname,
            dns: self.dns_config(pod),
            host_network,
            extra_hosts: host_aliases(pod),
            cgroup: container_spec::pod_cgroup(pod),
        };
        let uid2 = uid.clone();
        let sandbox = self
            .blocking(move |rt| rt.create_sandbox(&uid2, &sb_cfg))
            .await
            .map_err(|e| format!("creating sandbox: {e}"))?;
        if !host_network {
            self.cfg.network.attach(pod, &sandbox).await?;
        }
        let pod_dir = self.cfg.root.join("pods").join(&uid);
        let ctx = VolumeContext {
            client: self.client.as_ref(),
            pod,
            pod_dir: &pod_dir,
            host_ip: &self.cfg.host_ip,
        };
        let volume_paths = match volumes::prepare(&ctx).await {
            Ok(v) => v,
            Err(e) => {
                // Containers wait in ContainerCreating until their volumes can be set up.
                for c in all_containers(pod) {
                    let m = w
                        .memo
                        .entry(c["name"].as_str().unwrap_or("").to_string())
                        .or_default();
                    m.waiting = Some(("ContainerCreating".into(), e.to_string()));
                }
                self.post_status(pod, w, &HashMap::new()).await?;
                return Err(e.to_string());
            }
        };
        let restart_policy = pod
            .pointer("/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always")
            .to_string();
        let mut states: HashMap<String, (ContainerState, u32)> = HashMap::new();

        // Init containers run one at a time, each to success; sidecars (restartPolicy Always) keep running.
        let mut initialized = true;
        for c in pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cname = c["name"].as_str().unwrap_or("").to_string();
            let sidecar = c["restartPolicy"] == "Always";
            let policy = if sidecar {
                "Always"
            } else if restart_policy == "Never" {
                "Never"
            } else {
                "OnFailure"
            };
            let st = self
                .ensure_container(pod, c, &sandbox, &volume_paths, policy, w)
                .await;
            let done = match &st {
                Some((ContainerState::Exited { code: 0, .. }, _)) => !sidecar,
                // A sidecar lets the next init container start once its startup probe passed.
                Some((ContainerState::Running { .. }, a)) => {
                    sidecar && w.probes.status(c, &container_id(&uid, &cname, *a)).0
                }
                _ => false,
            };
            if let Some(s) = st {
                states.insert(cname, s);
            }
            if !done {
                initialized = false;
                break;
            }
        }
        if initialized {
            for c in pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let cname = c["name"].as_str().unwrap_or("").to_string();
                if let Some(s) = self
                    .ensure_container(pod, c, &sandbox, &volume_paths, &restart_policy, w)
                    .await
                {
                    states.insert(cname, s);
                }
            }
        }
        let running = states
            .iter()
            .filter_map(|(n, (s, a))| match s {
                ContainerState::Running { started_at, .. } => {
                    Some((n.clone(), (container_id(&uid, n, *a), *started_at)))
                }
                _ => None,
            })
            .collect();
        // Before the post, so a container's first status already carries its probe results
        // (an adopted container stays ready). The pod IP comes from the last posted status.
        self.prober
            .update(&mut w.probes, pod, &w.last_status, &running);
        self.post_status(pod, w, &states).await?;
        Ok(false)
    }

    fn dns_config(&self, pod: &Value) -> Option<k3rs_runtime::DnsConfig> {
        let policy = pod
            .pointer("/spec/dnsPolicy")
            .and_then(Value::as_str)
            .unwrap_or("ClusterFirst");
        let host_network = pod.pointer("/spec/hostNetwork") == Some(&json!(true));
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let dom = &self.cfg.cluster_domain;
        let mut cfg = match (policy, &self.cfg.cluster_dns) {
            ("ClusterFirst", Some(dns)) if !host_network => k3rs_runtime::DnsConfig {
                nameservers: vec![dns.clone()],
                searches: vec![format!("{ns}.svc.{dom}"), format!("svc.{dom}"), dom.clone()],
                options: vec!["ndots:5".into()],
            },
            ("ClusterFirstWithHostNet", Some(dns)) => k3rs_runtime::DnsConfig {
                nameservers: vec![dns.clone()],
                searches: vec![format!("{ns}.svc.{dom}"), format!("svc.{dom}"), dom.clone()],
                options: vec!["ndots:5".into()],
            },
            ("None", _) => k3rs_runtime::DnsConfig::default(),
            // Default (and ClusterFirst without cluster DNS): the node's resolver.
            _ => node_resolver(self.cfg.resolv_conf.as_deref()),
        };
        if let Some(dc) = pod.pointer("/spec/dnsConfig") {
            let strs = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            cfg.nameservers.extend(strs(&dc["nameservers"]));
            cfg.searches.extend(strs(&dc["searches"]));
            for o in dc["options"].as_array().into_iter().flatten() {
                let name = o["name"].as_str().unwrap_or("");
                cfg.options.retain(|x| x.split(':').next() != Some(name));
                cfg.options.push(match o["value"].as_str() {
                    Some(v) => format!("{name}:{v}"),
                    None => name.to_string(),
                });
            }
        }
        Some(cfg)
    }

    /// Brings one container to the state its restart policy asks for; returns its state and attempt.
    async fn ensure_container(
        &self,
        pod: &Value,
        c: &Value,
        sandbox: &Sandbox,
        vols: &HashMap<String, PathBuf>,
        policy: &str,
        w: &mut Worker,
    ) -> Option<(ContainerState, u32)> {
        let (_, _, uid) = pod_key(pod);
        let cname = c["name"].as_str().unwrap_or("").to_string();
        let memo = w.memo.entry(cname.clone()).or_default().clone();
        let id = container_id(&uid, &cname, memo.attempt);
        let id2 = id.clone();
        let current = self.blocking(move |rt| rt.status(&id2).ok()).await;
        match current {
            Some(s @ ContainerState::Running { .. }) | Some(s @ ContainerState::Created) => {
                w.memo.entry(cname).or_default().waiting = None;
                return Some((s, memo.attempt));
            }
            Some(s @ ContainerState::Exited { .. }) => {
                let code = match &s {
                    ContainerState::Exited { code, .. } => *code,
                    _ => 0,
                };
                let restart = match policy {
                    "Always" => true,
                    "OnFailure" => code != 0,
                    _ => false,
                };
                if !restart {
                    return Some((s, memo.attempt));
                }
                let now = Instant::now();
                let m = w.memo.entry(cname.clone()).or_default();
                match m.backoff_until {
                    None => {
                        // The first restart is immediate; then 10s, 20s, 40s ... up to 5 minutes, as upstream.
                        let delay = if memo.attempt == 0 {
                            Duration::ZERO
                        } else if m.backoff.is_zero() {
                            INITIAL_BACKOFF
                        } else {
                            (m.backoff * 2).min(MAX_BACKOFF)
                        };
                        if !delay.is_zero() {
                            m.backoff = delay;
                        }
                        m.backoff_until = Some(now + delay);
                        if !delay.is_zero() {
                            m.waiting = Some((
                                "CrashLoopBackOff".into(),
                                format!(
                                    "back-off {}s restarting failed container={cname} pod={}_{}",
                                    delay.as_secs(),
                                    pod["metadata"]["name"].as_str().unwrap_or(""),
                                    pod["metadata"]["namespace"].as_str().unwrap_or("")
                                ),
                            ));
                            return Some((s, memo.attempt));
                        }
                    }
                    Some(until) if until > now => return Some((s, memo.attempt)),
                    Some(_) => {}
                }
                m.backoff_until = None;
                m.attempt += 1;
                // Keep only the previous attempt (for --previous logs and lastState).
                if memo.attempt >= 1 {
                    let old = container_id(&uid, &cname, memo.attempt - 1);
                    let images = self.images.clone();
                    let _ = self
                        .blocking(move |rt| {
                            let _ = rt.remove(&old);
                            let _ = images.release_rootfs(&old);
                        })
                        .await;
                }
            }
            None => {}
        }
        let attempt = w.memo.entry(cname.clone()).or_default().attempt;
        match self.start_container(pod, c, sandbox, vols, attempt).await {
            Ok((state, image_id)) => {
                let m = w.memo.entry(cname).or_default();
                m.waiting = None;
                m.image_id = image_id;
                Some((state, attempt))
            }
            Err((reason, message)) => {
                warn!(container = %cname, %reason, %message, "container did not start");
                let m = w.memo.entry(cname).or_default();
                m.waiting = Some((reason, message));
                None
            }
        }
    }

    async fn ensure_image(
        &self,
        pod: &Value,
        image: &str,
        policy: &str,
    ) -> Result<k3rs_images::Image, (String, String)> {
        let have = self.images.get(image).ok().flatten();
        let must_pull = match policy {
            "Always" => true,
            "Never" => false,
            _ => have.is_none(),
        };
        if !must_pull {
            return have.ok_or_else(|| {
                (
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                )
            });
        }
        let (_, _, uid) = pod_key(pod);
        if let Some(last) = self.pull_backoff.waiting(&uid, image) {
            return Err((
                "ImagePullBackOff".into(),
                format!("Back-off pulling image \"{image}\": ErrImagePull: {last}"),
            ));
        }
        let lock = {
            let mut map = self.pulling.lock().expect("pull map");
            map.entry(image.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let auth = crate::images::pull_credentials(self.client.as_ref(), pod, image).await;
        let opts = PullOptions {
            auth,
            plain_http: false,
            registries: self.cfg.registries.clone(),
        };
        let recorder = &self.image_events;
        recorder
            .normal(
                pod,
                "Pulling",
                &format!("Pulling image \"{image}\""),
                "Pull",
            )
            .await;
        let started = Instant::now();
        let result = self.images.pull(image, &opts).await;
        self.cfg.image_gc_kick.notify_one();
        match result {
            Ok(img) => {
                self.pull_backoff.succeeded(&uid, image);
                let message = format!(
                    "Successfully pulled image \"{image}\" in {:.3}s. Image size: {} bytes.",
                    started.elapsed().as_secs_f64(),
                    img.size
                );
                recorder.normal(pod, "Pulled", &message, "Pull").await;
                Ok(img)
            }
            Err(e) => {
                let cause = match e {
                    k3rs_images::Error::Pull { message, .. } => message,
                    other => other.to_string(),
                };
                let message = format!("failed to pull image \"{image}\": {cause}");
                recorder
                    .warning(
                        pod,
                        "Failed",
                        &format!("Failed to pull image \"{image}\": {cause}"),
                        "Pull",
                    )
                    .await;
                self.pull_backoff.failed(&uid, image, message.clone());
                Err(("ErrImagePull".into(), message))
            }
        }
    }

    async fn start_container(
        &self,
        pod: &Value,
        c: &Value,
        sandbox: &Sandbox,
        vols: &HashMap<String, PathBuf>,
        attempt: u32,
    ) -> Result<(ContainerState, String), (String, String)> {
        let (ns, name, uid) = pod_key(pod);
        let cname = c["name"].as_str().unwrap_or("");
        let image_ref = c["image"].as_str().unwrap_or("");
        let policy = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
        let image = self.ensure_image(pod, image_ref, policy).await?;
        let id = container_id(&uid, cname, attempt);
        let images = self.images.clone();
        let (rref, rid) = (image.reference.clone(), id.clone());
        let rootfs = tokio::task::spawn_blocking(move || images.prepare_rootfs(&rref, &rid))
            .await
            .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?
            .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
        let env = self
            .environment(pod, c, &image.config.env)
            .await
            .map_err(|m| ("CreateContainerConfigError".to_string(), m))?;
        let env_map: BTreeMap<String, String> = env.iter().cloned().collect();
        let args = command_line(c, &image.config.entrypoint, &image.config.cmd, &env_map);
        if args.is_empty() {
            return Err(("CreateContainerError".into(), "no command specified".into()));
        }
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).ok();
        let (uid_n, gid_n) = user_ids(pod, c, &image.config.user, passwd.as_deref());
        let security =
            match container_spec::verify_run_as_non_root(pod, c, &image.config.user, uid_n)
                .and_then(|()| container_spec::security(pod, c))
            {
                Ok(s) => s,
                Err(m) => {
                    // Nothing will run on this root: unmount it now (teardown only sees containers
                    // the runtime knows).
                    let images = self.images.clone();
                    let rid = id.clone();
                    let _ = tokio::task::spawn_blocking(move || images.release_rootfs(&rid)).await;
                    return Err(("CreateContainerConfigError".to_string(), m));
                }
            };
        let mut mounts = Vec::new();
        for vm in c["volumeMounts"].as_array().into_iter().flatten() {
            let vname = vm["name"].as_str().unwrap_or("");
            let Some(src) = vols.get(vname) else {
                return Err((
                    "CreateContainerConfigError".into(),
                    format!("volume {vname:?} not found"),
                ));
            };
            let src = match vm["subPath"].as_str().filter(|s| !s.is_empty()) {
                Some(sp) => {
                    let p = src.join(sp);
                    if !p.exists() {
                        let _ = std::fs::create_dir_all(&p);
                    }
                    p
                }
                None => src.clone(),
            };
            mounts.push(Mount {
                source: src,
                destination: PathBuf::from(vm["mountPath"].as_str().unwrap_or("/")),
                read_only: vm["readOnly"] == json!(true),
            });
        }
        // The termination message file, read back when the container ends.
        let term_dir = self.cfg.root.join("pods").join(&uid).join("termination");
        let _ = std::fs::create_dir_all(&term_dir);
        let term_file = term_dir.join(&id);
        let _ = std::fs::write(&term_file, b"");
        mounts.push(Mount {
            source: term_file,
            destination: PathBuf::from(
                c["terminationMessagePath"]
                    .as_str()
                    .unwrap_or("/dev/termination-log"),
            ),
            read_only: false,
        });
        let (memory_limit_bytes, cpu_limit_millis, cpu_shares) = limits(c);
        let cwd = c["workingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
            .unwrap_or_else(|| {
                if image.config.working_dir.is_empty() {
                    "/".into()
                } else {
                    image.config.working_dir.clone()
                }
            });
        let cfg = ContainerConfig {
            id: id.clone(),
            rootfs,
            args,
            env,
            cwd,
            user: User {
                uid: uid_n,
                gid: gid_n,
                additional_gids: supplemental_groups(pod),
            },
            mounts,
            resources: Resources {
                memory_limit_bytes,
                cpu_limit_millis,
                cpu_shares,
                pids_limit: None,
            },
            log_path: log_path(&self.cfg.logs_root(), &ns, &name, &uid, cname, attempt),
            log_rotation: self.cfg.container_log,
            // stdio for attach: a terminal, stdin kept open, closed after the first session.
            tty: c["tty"] == json!(true),
            stdin: c["stdin"] == json!(true),
            stdin_once: c["stdinOnce"] == json!(true),
            readonly_rootfs: c.pointer("/securityContext/readOnlyRootFilesystem")
                == Some(&json!(true)),
            oom_score_adj: None,
            security,
        };
        let sb = sandbox.clone();
        let id2 = id.clone();
        let result = self
            .blocking(move |rt| match rt.run_container(&sb, &cfg) {
                Err(e) => match rt.status(&id2) {
                    // The shim recorded why the process never ran: the container is kept as
                    // exited so its restart policy decides what follows (a Never pod fails, as
                    // upstream's StartError does, instead of being retried forever).
                    Ok(s @ ContainerState::Exited { error: Some(_), .. }) => Ok(s),
                    _ => {
                        let _ = rt.remove(&id2);
                        Err(e)
                    }
                },
                ok => ok,
            })
            .await;
        let image_id = format!(
            "{}@{}",
            image
                .reference
                .rsplit_once(':')
                .map(|(r, _)| r)
                .unwrap_or(&image.reference),
            image.manifest_digest
        );
        match result {
            Ok(
                state @ ContainerState::Exited {
                    error: Some(_),
                    started_at: None,
                    ..
                },
            ) => {
                warn!(container = %cname, attempt, "container could not start");
                Ok((state, image_id))
            }
            Ok(state) => {
                info!(container = %cname, attempt, "container started");
                // The container is not Running until its postStart hook returned.
                if let Err(m) = self.prober.post_start(pod, c, &id).await {
                    return Err(("PostStartHookError".into(), m));
                }
                Ok((state, image_id))
            }
            Err(e) => {
                let images = self.images.clone();
                let _ = tokio::task::spawn_blocking(move || images.release_rootfs(&id)).await;
                Err(("RunContainerError".into(), e.to_string()))
            }
        }
    }

    /// Image env, then `envFrom`, then `env` (later wins), with `$(VAR)` expansion in values.
    async fn environment(
        &self,
        pod: &Value,
        c: &Value,
        image_env: &[String],
    ) -> Result<Vec<(String, String)>, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let mut env: Vec<(String, String)> = image_env
            .iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(x, _)| *x != k);
            env.push((k, v));
        };
        set(
            &mut env,
            "KUBERNETES_SERVICE_HOST".into(),
            "10.43.0.1".into(),
        );
        set(&mut env, "KUBERNETES_SERVICE_PORT".into(), "443".into());
        for ef in c["envFrom"].as_array().into_iter().flatten() {
            let prefix = ef["prefix"].as_str().unwrap_or("");
            let (kind, src) = if let Some(s) = ef.get("secretRef") {
                ("secrets", s)
            } else {
                ("configmaps", &ef["configMapRef"])
            };
            let optional = src["optional"] == json!(true);
            match self
                .client
                .get(
                    &Resource::core(kind),
                    Some(ns),
                    src["name"].as_str().unwrap_or(""),
                )
                .await
            {
                Ok(obj) => {
                    for (k, v) in obj["data"].as_object().into_iter().flatten() {
                        let v = decode_value(kind, v);
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                Err(e) if e.is_not_found() && optional => {}
                Err(e) => return Err(format!("{kind} {:?}: {}", src["name"], e.message)),
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or("").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                let known: BTreeMap<String, String> = env.iter().cloned().collect();
                container_spec::expand(v, &known)
            } else if let Some(vf) = e.get("valueFrom") {
                if let Some(path) = vf.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
                    field_ref(pod, path, &self.cfg.host_ip).unwrap_or_default()
                } else if let Some(r) = vf.get("resourceFieldRef") {
                    resource_field(c, r)
                } else {
                    let (kind, sel) = if let Some(s) = vf.get("secretKeyRef") {
                        ("secrets", s)
                    } else {
                        ("configmaps", &vf["configMapKeyRef"])
                    };
                    let optional = sel["optional"] == json!(true);
                    let key = sel["key"].as_str().unwrap_or("");
                    match self
                        .client
                        .get(
                            &Resource::core(kind),
                            Some(ns),
                            sel["name"].as_str().unwrap_or(""),
                        )
                        .await
                    {
                        Ok(obj) => match obj["data"].get(key) {
                            Some(v) => decode_value(kind, v),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {key} in {kind} {ns}/{}",
                                    sel["name"].as_str().unwrap_or("")
                                ))
                            }
                        },
                        Err(e) if e.is_not_found() && optional => continue,
                        Err(e) => return Err(format!("{kind} {:?}: {}", sel["name"], e.message)),
                    }
                }
            } else {
                String::new()
            };
            set(&mut env, name, value);
        }
        Ok(env)
    }

    /// Posts the pod's status if it differs from what was last posted.
    async fn post_status(
        &self,
        pod: &Value,
        w: &mut Worker,
        states: &HashMap<String, (ContainerState, u32)>,
    ) -> Result<(), String> {
        let (ns, name, _) = pod_key(pod);
        let status = self.compute_status(pod, w, states);
        let comparable = |s: &Value| {
            let mut s = s.clone();
            // Condition probe times are not compared.
            if let Some(conds) = s["conditions"].as_array_mut() {
                for c in conds {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("lastTransitionTime");
                        m.remove("lastProbeTime");
                    }
                }
            }
            s
        };
        if comparable(&status) == comparable(&w.last_status) {
            return Ok(());
        }
        match self
            .client
            .patch(
                &Resource::core("pods"),
                Some(&ns),
                &name,
                Patch::Merge(json!({"status": status})),
                Some("status"),
                "kubelet",
            )
            .await
        {
            Ok(p) => {
                w.last_status = p["status"].clone();
                w.written = Some(p);
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn compute_status(
        &self,
        pod: &Value,
        w: &Worker,
        states: &HashMap<String, (ContainerState, u32)>,
    ) -> Value {
        let now = rfc3339(chrono::Utc::now());
        let (ns, name, uid) = pod_key(pod);
        let restart_policy = pod
            .pointer("/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always");
        let status_of = |c: &Value| -> Value {
            let cname = c["name"].as_str().unwrap_or("");
            let memo = w.memo.get(cname).cloned().unwrap_or_default();
            let image = c["image"].clone();
            let mut s = json!({"name": cname, "image": image, "imageID": memo.image_id, "restartCount": memo.attempt, "ready": false, "started": false});
            let state = states.get(cname);
            let id = container_id(&uid, cname, state.map(|(_, a)| *a).unwrap_or(memo.attempt));
            match state.map(|(s, _)| s) {
                Some(ContainerState::Running { started_at, .. }) => {
                    s["state"] = json!({"running": {"startedAt": rfc3339(*started_at)}});
                    let (started, ready) = w.probes.status(c, &id);
                    s["ready"] = json!(ready);
                    s["started"] = json!(started);
                    s["containerID"] = json!(format!("k3rs://{id}"));
                }
                Some(ContainerState::Exited {
                    code,
                    signal: _,
                    started_at,
                    finished_at,
                    oom_killed,
                    error,
                }) => {
                    let reason = termination_reason(*oom_killed, error, started_at, *code);
                    let message = std::fs::read_to_string(
                        self.cfg
                            .root
                            .join("pods")
                            .join(&uid)
                            .join("termination")
                            .join(&id),
                    )
                    .ok()
                    .filter(|m| !m.is_empty())
                    .or(error.clone());
                    let mut term = json!({"exitCode": code, "reason": reason, "finishedAt": rfc3339(*finished_at), "containerID": format!("k3rs://{id}")});
                    if let Some(sa) = started_at {
                        term["startedAt"] = json!(rfc3339(*sa));
                    }
                    if let Some(m) = message {
                        term["message"] = json!(m);
                    }
                    match &memo.waiting {
                        Some((reason, message)) if reason == "CrashLoopBackOff" => {
                            s["state"] = json!({"waiting": {"reason": reason, "message": message}});
                            s["lastState"] = json!({"terminated": term});
                        }
                        _ => s["state"] = json!({"terminated": term}),
                    }
                    s["containerID"] = json!(format!("k3rs://{id}"));
                }
                _ => {
                    let (reason, message) = memo
                        .waiting
                        .clone()
                        .unwrap_or(("ContainerCreating".into(), String::new()));
                    let mut waiting = json!({"reason": reason});
                    if !message.is_empty() {
                        waiting["message"] = json!(message);
                    }
                    s["state"] = json!({"waiting": waiting});
                }
            }
            if memo.attempt > 0 && s.get("lastState").is_none() {
                if let Some(prev) = self.previous_termination(&uid, cname, memo.attempt) {
                    s["lastState"] = json!({"terminated": prev});
                }
            }
            if s.get("lastState").is_none() {
                s["lastState"] = json!({});
            }
            s
        };
        let init: Vec<Value> = pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(&status_of)
            .collect();
        let main: Vec<Value> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(&status_of)
            .collect();
        let initialized = init
            .iter()
            .zip(
                pod.pointer("/spec/initContainers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            )
            .all(|(s, c)| {
                s.pointer("/state/terminated/exitCode") == Some(&json!(0))
                    || (c["restartPolicy"] == "Always" && s["started"] == json!(true))
            });
        let running = main.iter().any(|s| s.pointer("/state/running").is_some());
        let all_terminated = !main.is_empty()
            && main
                .iter()
                .all(|s| s.pointer("/state/terminated").is_some());
        let all_succeeded = all_terminated
            && main
                .iter()
                .all(|s| s.pointer("/state/terminated/exitCode") == Some(&json!(0)));
        let init_failed_for_good = restart_policy == "Never"
            && init.iter().any(|s| {
                s.pointer("/state/terminated/exitCode")
                    .and_then(Value::as_i64)
                    .is_some_and(|c| c != 0)
            });
        let phase = if init_failed_for_good {
            "Failed"
        } else if all_terminated && restart_policy != "Always" {
            if all_succeeded {
                "Succeeded"
            } else if restart_policy == "Never" {
                "Failed"
            } else {
                "Running"
            }
        } else if initialized && (running || all_terminated) {
            "Running"
        } else {
            "Pending"
        };
        let ready = phase == "Running" && main.iter().all(|s| s["ready"] == json!(true));
        let old_conds: Vec<Value> = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let cond = |t: &str, ok: bool, reason: Option<&str>| {
            let status = if ok { "True" } else { "False" };
            let transition = old_conds
                .iter()
                .find(|c| c["type"] == t && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
                .unwrap_or_else(|| now.clone());
            let mut c = json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
            if let Some(r) = reason.filter(|_| !ok) {
                c["reason"] = json!(r);
            }
            c
        };
        let mut conditions = vec![
            cond("PodReadyToStartContainers", true, None),
            cond("Initialized", initialized, Some("ContainersNotInitialized")),
            cond(
                "Ready",
                ready,
                Some(if phase == "Succeeded" {
                    "PodCompleted"
                } else {
                    "ContainersNotReady"
                }),
            ),
            cond(
                "ContainersReady",
                ready,
                Some(if phase == "Succeeded" {
                    "PodCompleted"
                } else {
                    "ContainersNotReady"
                }),
            ),
        ];
        if let Some(s) = old_conds.iter().find(|c| c["type"] == "PodScheduled") {
            conditions.push(s.clone());
        }
        let host_network = pod.pointer("/spec/hostNetwork") == Some(&json!(true));
        let start_time = pod
            .pointer("/status/startTime")
            .cloned()
            .unwrap_or_else(|| json!(now));
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.cfg.host_ip,
            "hostIPs": [{"ip": self.cfg.host_ip}],
            "startTime": start_time,
            "containerStatuses": main,
            "qosClass": container_spec::qos_class(pod).as_str(),
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init);
        }
        // Pod networking arrives with the network issue; host-network pods have the node's IP.
        if host_network {
            status["podIP"] = json!(self.cfg.host_ip);
            status["podIPs"] = json!([{"ip": self.cfg.host_ip}]);
        } else if let Some(ips) = self.cfg.network.pod_ips(&uid) {
            status["podIP"] = json!(ips[0]);
            status["podIPs"] = ips.iter().map(|ip| json!({"ip": ip})).collect();
        }
        let _ = (ns, name);
        status
    }

    fn previous_termination(&self, uid: &str, cname: &str, attempt: u32) -> Option<Value> {
        let prev = container_id(uid, cname, attempt.checked_sub(1)?);
        match self.runtime.status(&prev).ok()? {
            ContainerState::Exited {
                code,
                started_at,
                finished_at,
                oom_killed,
                error,
                ..
            } => {
                let reason = termination_reason(oom_killed, &error, &started_at, code);
                let mut t = json!({"exitCode": code, "reason": reason, "finishedAt": rfc3339(finished_at), "containerID": format!("k3rs://{prev}")});
                if let Some(sa) = started_at {
                    t["startedAt"] = json!(rfc3339(sa));
                }
                Some(t)
            }
            _ => None,
        }
    }

    /// Stops every container of the pod within `grace`, then removes them, the sandbox, volumes
    /// and the pod's log directory (as the kubelet does once a pod is gone).
    async fn teardown(&self, pod: &Value, grace: Duration) {
        let (ns, name, uid) = pod_key(pod);
        self.pull_backoff.forget_pod(&uid);
        let pod_logs = self.cfg.logs_root().join(format!("{ns}_{name}_{uid}"));
        // preStop hooks run first, within the grace period; the stop signal gets what is left.
        let grace = self.prober.pre_stop_pod(pod, grace).await;
        let images = self.images.clone();
        let root = self.cfg.root.clone();
        let network = self.cfg.network.clone();
        let uid2 = uid.clone();
        self.blocking(move |rt| {
            let containers: Vec<_> = rt
                .list()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.pod_uid == uid2)
                .collect();
            // Stop in parallel so the whole pod honours one grace period.
            std::thread::scope(|s| {
                for c in &containers {
                    let rt = &rt;
                    s.spawn(move || {
                        if let Err(e) = rt.stop(&c.id, grace) {
                            warn!(id = %c.id, error = %e, "stopping container");
                        }
                    });
                }
            });
            for c in &containers {
                let _ = rt.remove(&c.id);
                let _ = images.release_rootfs(&c.id);
            }
            network.detach(&uid2);
            let _ = rt.remove_sandbox(&uid2);
            volumes::cleanup(&root.join("pods").join(&uid2));
            if let Err(e) = std::fs::remove_dir_all(&pod_logs) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(dir = %pod_logs.display(), error = %e, "removing pod logs");
                }
            }
        })
        .await;
        info!(pod_uid = %uid, "pod torn down");
    }
}

/// The node's resolv.conf as a pod's DNS settings (`domain` counts as a search entry).
fn node_resolver(path: Option<&std::path::Path>) -> k3rs_runtime::DnsConfig {
    let text = std::fs::read_to_string(path.unwrap_or(std::path::Path::new("/etc/resolv.conf")))
        .unwrap_or_default();
    parse_resolv_conf(&text)
}

fn parse_resolv_conf(text: &str) -> k3rs_runtime::DnsConfig {
    let mut cfg = k3rs_runtime::DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => cfg.nameservers.extend(words.next().map(String::from)),
            Some("search") | Some("domain") => cfg.searches = words.map(String::from).collect(),
            Some("options") => cfg.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    cfg
}

fn all_containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| {
            pod.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect()
}

fn host_aliases(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/hostAliases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|h| {
            let names: Vec<&str> = h["hostnames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!("{}\t{}", h["ip"].as_str().unwrap_or(""), names.join("\t"))
        })
        .collect()
}

fn supplemental_groups(pod: &Value) -> Vec<u32> {
    let sc = &pod["spec"]["securityContext"];
    let mut g: Vec<u32> = sc["supplementalGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64().map(|n| n as u32))
        .collect();
    if let Some(fs) = sc["fsGroup"].as_u64() {
        g.push(fs as u32);
    }
    g
}

fn decode_value(kind: &str, v: &Value) -> String {
    use base64::Engine;
    let s = v.as_str().unwrap_or("");
    if kind == "secrets" {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    } else {
        s.to_string()
    }
}

fn resource_field(c: &Value, r: &Value) -> String {
    let res = r["resource"].as_str().unwrap_or("");
    let (section, name) = res.split_once('.').unwrap_or(("", ""));
    let raw = c["resources"][section][name].as_str().map(String::from);
    match (name, raw) {
        ("cpu", Some(q)) => container_spec::cpu_millis(&q)
            .map(|m| m.div_ceil(1000).to_string())
            .unwrap_or(q),
        ("memory", Some(q)) => container_spec::memory_bytes(&q)
            .map(|b| b.to_string())
            .unwrap_or(q),
        (_, Some(q)) => q,
        // Unset limits default to node allocatable upstream; report 0 rather than guess.
        _ => "0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_never_started_is_a_start_error() {
        let at = Some(chrono::Utc::now());
        let failed = Some("exec failed".to_string());
        assert_eq!(termination_reason(false, &failed, &None, 128), "StartError");
        // A shim that vanished after the start is an ordinary error, not a start failure.
        assert_eq!(termination_reason(false, &failed, &at, 255), "Error");
        assert_eq!(termination_reason(true, &None, &at, 137), "OOMKilled");
        assert_eq!(termination_reason(false, &None, &at, 0), "Completed");
        assert_eq!(termination_reason(false, &None, &at, 3), "Error");
    }

    #[test]
    fn stale_pod_events_do_not_replace_a_newer_pod() {
        let at = |rv: &str| json!({"metadata": {"resourceVersion": rv}});
        assert!(not_older(&at("12"), &at("11")));
        assert!(not_older(&at("12"), &at("12")));
        // Numeric, not lexicographic: revision 9 is older than 10.
        assert!(!not_older(&at("9"), &at("10")));
        // Without a numeric revision on either side the event is taken.
        assert!(not_older(&json!({}), &at("10")));
        assert!(not_older(&at("x"), &at("10")));
    }

    #[test]
    fn log_layout_follows_cri() {
        let p = log_path(Path::new("/var/log/pods"), "ns", "web", "u1", "c", 2);
        assert_eq!(p, PathBuf::from("/var/log/pods/ns_web_u1/c/2.log"));
        assert_eq!(container_id("u1", "c", 3), "u1_c_3");
    }

    #[test]
    fn node_resolv_conf_parses() {
        let c = parse_resolv_conf(
            "# comment\nnameserver 10.0.0.2\nnameserver 10.0.0.3\ndomain a.example\nsearch b.example c.example\noptions ndots:2 edns0\n",
        );
        assert_eq!(c.nameservers, ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(c.searches, ["b.example", "c.example"]);
        assert_eq!(c.options, ["ndots:2", "edns0"]);
    }

    #[test]
    fn aliases_and_groups() {
        let pod = json!({"spec": {"hostAliases": [{"ip": "1.2.3.4", "hostnames": ["a", "b"]}], "securityContext": {"supplementalGroups": [5], "fsGroup": 6}}});
        assert_eq!(host_aliases(&pod), vec!["1.2.3.4\ta\tb".to_string()]);
        assert_eq!(supplemental_groups(&pod), vec![5, 6]);
        assert_eq!(decode_value("secrets", &json!("aGk=")), "hi");
    }
}
