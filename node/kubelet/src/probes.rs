//! Container probes (startupProbe, livenessProbe, readinessProbe) and lifecycle hooks
//! (postStart, preStop), as the upstream kubelet runs them.
//!
//! Each running container with probes gets one task that runs its probes on their schedule and
//! keeps the results in a [`ContainerProber`] — a pure state machine (thresholds, initial delay,
//! period, startup gating) driven by instants, so it is unit-tested with a fake clock. The task
//! publishes `started`/`ready` to the pod worker and wakes it when a result changes (so a
//! readiness flip reaches the API within a period, not at the next sync); a liveness or startup
//! failure asks the worker to kill the container, which then restarts it per `restartPolicy`.
//! Nothing is written to the API unless a result changes or a probe fails (an `Unhealthy` event).

use k3rs_client::events::Recorder;
use k3rs_runtime::{ContainerState, ExecConfig, Runtime};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, info, info_span, warn, Instrument};

/// Output kept from a failed exec probe or hook (upstream keeps 10 KiB).
const MAX_OUTPUT: usize = 10 * 1024;
/// Upstream's minimum grace period left for the stop signal after a preStop hook.
const MIN_GRACE_AFTER_PRESTOP: Duration = Duration::from_secs(2);
/// A postStart hook has no timeout upstream; this one only keeps a stuck hook from pinning a worker forever.
const POST_START_LIMIT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("probe or hook has no handler (exec, httpGet, tcpSocket, grpc or sleep)")]
    NoHandler,
    #[error("port {0:?} is not a named port of the container")]
    UnknownPort(String),
    #[error("invalid port {0}")]
    BadPort(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Kind::Startup => "startupProbe",
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
        }
    }
}

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    Exec {
        command: Vec<String>,
    },
    Http {
        https: bool,
        /// None: the pod IP.
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Grpc {
        port: u16,
        service: String,
    },
    /// `lifecycle.*.sleep` (hooks only).
    Sleep(Duration),
    /// A probe that cannot run as written (e.g. an unknown named port): it fails every time
    /// with this message, as upstream's does.
    Invalid(String),
}

/// A port as probes name it: a number, or the name of one of the container's ports.
fn resolve_port(port: &Value, container: &Value) -> Result<u16, SpecError> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| SpecError::BadPort(port.clone()));
    }
    let Some(name) = port.as_str() else {
        return Err(SpecError::BadPort(port.clone()));
    };
    if let Ok(n) = name.parse::<u16>() {
        return Ok(n);
    }
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| SpecError::UnknownPort(name.to_string()))
}

impl Handler {
    /// Whether it goes to the pod IP (no `host` of its own).
    fn needs_pod_ip(&self) -> bool {
        match self {
            Handler::Http { host, .. } | Handler::Tcp { host, .. } => host.is_none(),
            Handler::Grpc { .. } => true,
            _ => false,
        }
    }

    /// The handler of a probe or a lifecycle hook; named ports are resolved against `container`.
    pub fn parse(v: &Value, container: &Value) -> Result<Handler, SpecError> {
        let host = |h: &Value| {
            h["host"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        if let Some(e) = v.get("exec").filter(|e| !e.is_null()) {
            let command = e["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            return Ok(Handler::Exec { command });
        }
        if let Some(h) = v.get("httpGet").filter(|e| !e.is_null()) {
            let path = h["path"].as_str().unwrap_or("/");
            let path = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            };
            let headers = h["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    (
                        x["name"].as_str().unwrap_or("").to_string(),
                        x["value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .filter(|(n, _)| !n.is_empty())
                .collect();
            return Ok(Handler::Http {
                https: h["scheme"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")),
                host: host(h),
                port: resolve_port(&h["port"], container)?,
                path,
                headers,
            });
        }
        if let Some(t) = v.get("tcpSocket").filter(|e| !e.is_null()) {
            return Ok(Handler::Tcp {
                host: host(t),
                port: resolve_port(&t["port"], container)?,
            });
        }
        if let Some(g) = v.get("grpc").filter(|e| !e.is_null()) {
            return Ok(Handler::Grpc {
                port: resolve_port(&g["port"], container)?,
                service: g["service"].as_str().unwrap_or("").to_string(),
            });
        }
        if let Some(s) = v.get("sleep").filter(|e| !e.is_null()) {
            return Ok(Handler::Sleep(Duration::from_secs(
                s["seconds"].as_u64().unwrap_or(0),
            )));
        }
        Err(SpecError::NoHandler)
    }
}

/// A probe as the container spec gives it, with upstream's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// `terminationGracePeriodSeconds` on the probe: overrides the pod's when it kills.
    pub termination_grace: Option<Duration>,
}

impl ProbeSpec {
    /// A probe; one whose handler cannot be resolved is kept as [`Handler::Invalid`].
    pub fn parse(kind: Kind, v: &Value, container: &Value) -> ProbeSpec {
        let secs = |k: &str, default: u64, min: u64| {
            Duration::from_secs(v[k].as_u64().unwrap_or(default).max(min))
        };
        let count =
            |k: &str, default: u64| v[k].as_u64().unwrap_or(default).clamp(1, 1 << 20) as u32;
        let mut success_threshold = count("successThreshold", 1);
        if kind != Kind::Readiness {
            // Validation demands 1 for liveness and startup probes.
            success_threshold = 1;
        }
        ProbeSpec {
            handler: Handler::parse(v, container)
                .unwrap_or_else(|e| Handler::Invalid(e.to_string())),
            initial_delay: secs("initialDelaySeconds", 0, 0),
            period: secs("periodSeconds", 10, 1),
            timeout: secs("timeoutSeconds", 1, 1),
            success_threshold,
            failure_threshold: count("failureThreshold", 3),
            termination_grace: v["terminationGracePeriodSeconds"]
                .as_u64()
                .map(Duration::from_secs),
        }
    }
}

/// The probes of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerProbes {
    pub startup: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
}

impl ContainerProbes {
    /// The container's probes; a probe that cannot be parsed is left out with a warning.
    pub fn of(container: &Value) -> ContainerProbes {
        let parse = |kind: Kind| {
            let v = container.get(kind.field()).filter(|v| v.is_object())?;
            Some(ProbeSpec::parse(kind, v, container))
        };
        ContainerProbes {
            startup: parse(Kind::Startup),
            liveness: parse(Kind::Liveness),
            readiness: parse(Kind::Readiness),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.liveness.is_none() && self.readiness.is_none()
    }

    pub fn get(&self, kind: Kind) -> Option<&ProbeSpec> {
        match kind {
            Kind::Startup => self.startup.as_ref(),
            Kind::Liveness => self.liveness.as_ref(),
            Kind::Readiness => self.readiness.as_ref(),
        }
    }
}

/// One probe's memory (upstream's prober worker).
#[derive(Debug, Clone)]
struct ProbeState {
    /// The result reported; None = not known yet.
    result: Option<bool>,
    /// The last raw outcome and how many times in a row it came.
    last: Option<bool>,
    run: u32,
    next_due: Instant,
    /// Stopped: startup succeeded, or a liveness/startup failure is waiting for the restart.
    on_hold: bool,
    period: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

impl ProbeState {
    fn new(spec: &ProbeSpec, kind: Kind, started_at: Instant) -> Self {
        ProbeState {
            // Readiness starts as failure, liveness as success, startup unknown (not started).
            result: match kind {
                Kind::Readiness => Some(false),
                Kind::Liveness => Some(true),
                Kind::Startup => None,
            },
            last: None,
            run: 0,
            next_due: started_at + spec.initial_delay,
            on_hold: false,
            period: spec.period,
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
        }
    }
}

/// What a probe run changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The reported result stays as it was.
    Unchanged,
    /// `started` or `ready` changed.
    Changed,
    /// A liveness or startup probe reached its failure threshold: kill the container.
    Kill,
}

/// The probe state machine of one container run (pure: time comes in as arguments).
#[derive(Debug, Clone)]
pub struct ContainerProber {
    startup: Option<ProbeState>,
    liveness: Option<ProbeState>,
    readiness: Option<ProbeState>,
}

impl ContainerProber {
    pub fn new(specs: &ContainerProbes, started_at: Instant) -> Self {
        let mk = |s: &Option<ProbeSpec>, k| s.as_ref().map(|s| ProbeState::new(s, k, started_at));
        ContainerProber {
            startup: mk(&specs.startup, Kind::Startup),
            liveness: mk(&specs.liveness, Kind::Liveness),
            readiness: mk(&specs.readiness, Kind::Readiness),
        }
    }

    /// Carries results over a restart of the node daemon, so an adopted container that was
    /// started and ready does not flap.
    pub fn resume(&mut self, started: bool, ready: bool) {
        if started {
            if let Some(s) = self.startup.as_mut() {
                s.result = Some(true);
                s.on_hold = true;
            }
        }
        if ready && started {
            if let Some(r) = self.readiness.as_mut() {
                r.result = Some(true);
            }
        }
    }

    fn state(&self, kind: Kind) -> Option<&ProbeState> {
        match kind {
            Kind::Startup => self.startup.as_ref(),
            Kind::Liveness => self.liveness.as_ref(),
            Kind::Readiness => self.readiness.as_ref(),
        }
    }

    fn state_mut(&mut self, kind: Kind) -> Option<&mut ProbeState> {
        match kind {
            Kind::Startup => self.startup.as_mut(),
            Kind::Liveness => self.liveness.as_mut(),
            Kind::Readiness => self.readiness.as_mut(),
        }
    }

    /// `containerStatuses[].started`: the startup probe succeeded (or there is none).
    pub fn started(&self) -> bool {
        self.startup.as_ref().is_none_or(|s| s.result == Some(true))
    }

    /// `containerStatuses[].ready`: started, and the readiness probe succeeds (or there is none).
    pub fn ready(&self) -> bool {
        self.started()
            && self
                .readiness
                .as_ref()
                .is_none_or(|r| r.result == Some(true))
    }

    /// The probe to run next and when; None when nothing is left to probe.
    /// Liveness and readiness wait until the startup probe has succeeded.
    pub fn next(&self) -> Option<(Kind, Instant)> {
        let started = self.started();
        [Kind::Startup, Kind::Liveness, Kind::Readiness]
            .into_iter()
            .filter(|k| started || *k == Kind::Startup)
            .filter_map(|k| {
                let s = self.state(k)?;
                (!s.on_hold).then_some((k, s.next_due))
            })
            .min_by_key(|(_, due)| *due)
    }

    /// Records one probe outcome observed at `at`.
    pub fn record(&mut self, kind: Kind, at: Instant, ok: bool) -> Verdict {
        let (started, ready) = (self.started(), self.ready());
        let Some(s) = self.state_mut(kind) else {
            return Verdict::Unchanged;
        };
        s.next_due = at + s.period;
        if s.last == Some(ok) {
            s.run = s.run.saturating_add(1);
        } else {
            s.last = Some(ok);
            s.run = 1;
        }
        let threshold = if ok {
            s.success_threshold
        } else {
            s.failure_threshold
        };
        if s.run < threshold {
            return Verdict::Unchanged;
        }
        s.result = Some(ok);
        match (kind, ok) {
            (Kind::Startup, true) => s.on_hold = true,
            (Kind::Startup | Kind::Liveness, false) => {
                s.on_hold = true;
                s.run = 0;
                return Verdict::Kill;
            }
            _ => {}
        }
        if (self.started(), self.ready()) != (started, ready) {
            Verdict::Changed
        } else {
            Verdict::Unchanged
        }
    }
}

/// Why the prober wants a container killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    pub kind: Kind,
    /// The probe's own `terminationGracePeriodSeconds`, if set.
    pub grace: Option<Duration>,
}

/// What a probe task tells the pod worker.
#[derive(Debug, Default)]
struct Published {
    started: bool,
    ready: bool,
    kill: Option<KillRequest>,
}

struct Probing {
    /// Container id (one per attempt).
    id: String,
    published: Arc<Mutex<Published>>,
    task: tokio::task::JoinHandle<()>,
}

/// The probes of one pod's containers, owned by its worker.
#[derive(Default)]
pub struct PodProbes {
    running: HashMap<String, Probing>,
    notify: Arc<Notify>,
    /// Where httpGet/tcpSocket/grpc go when the probe names no host.
    pod_ip: Arc<Mutex<Option<String>>>,
}

impl Drop for PodProbes {
    fn drop(&mut self) {
        for p in self.running.values() {
            p.task.abort();
        }
    }
}

impl PodProbes {
    /// Resolves when a probe result changed (or a container must be killed).
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// `(started, ready)` of a running container.
    pub fn status(&self, container: &Value, id: &str) -> (bool, bool) {
        let name = container["name"].as_str().unwrap_or("");
        match self.running.get(name).filter(|p| p.id == id) {
            Some(p) => {
                let g = p.published.lock().expect("probe results");
                (g.started, g.ready)
            }
            None => {
                // Not probing (yet): what the initial results say.
                let probes = ContainerProbes::of(container);
                let started = probes.startup.is_none();
                (started, started && probes.readiness.is_none())
            }
        }
    }

    /// Stops probing every container.
    pub fn stop_all(&mut self) {
        for (_, p) in self.running.drain() {
            p.task.abort();
        }
    }
}

/// Where a probe of one container goes.
#[derive(Clone)]
struct Target {
    runtime: Runtime,
    id: String,
    pod_ip: Arc<Mutex<Option<String>>>,
}

impl Target {
    async fn running(&self) -> bool {
        let (rt, id) = (self.runtime.clone(), self.id.clone());
        tokio::task::spawn_blocking(move || rt.status(&id).is_ok_and(|s| s.is_running()))
            .await
            .unwrap_or(false)
    }

    fn host(&self, host: &Option<String>) -> Result<String, String> {
        if let Some(h) = host {
            return Ok(h.clone());
        }
        self.pod_ip
            .lock()
            .expect("pod ip")
            .clone()
            .ok_or_else(|| "the pod has no IP address yet".to_string())
    }
}

/// Where a pod's IP is known first (the pod network, by pod uid), before any status carries it.
pub type PodIpSource = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Runs probes and hooks for the pod workers.
#[derive(Clone)]
pub struct Prober {
    runtime: Runtime,
    recorder: Recorder,
    host_ip: String,
    pod_ips: Option<PodIpSource>,
}

/// Container name from a container id `<uid>_<name>_<attempt>`.
fn name_of(uid: &str, id: &str) -> Option<String> {
    let rest = id.strip_prefix(uid)?.strip_prefix('_')?;
    rest.rsplit_once('_').map(|(n, _)| n.to_string())
}

fn instant_of(t: chrono::DateTime<chrono::Utc>) -> Instant {
    let ago = (chrono::Utc::now() - t).to_std().unwrap_or_default();
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

fn pod_grace(pod: &Value) -> Duration {
    Duration::from_secs(
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30),
    )
}

fn pod_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |k| {
            pod["spec"][k]
                .as_array()
                .into_iter()
                .flatten()
                .filter(move |c| k == "containers" || c["restartPolicy"] == "Always")
        })
}

impl Prober {
    pub fn new(runtime: Runtime, recorder: Recorder, host_ip: String) -> Prober {
        Prober {
            runtime,
            recorder,
            host_ip,
            pod_ips: None,
        }
    }

    /// Asks `source` for pod IPs, so hooks and the first probes of a container need not wait
    /// for a status that carries the address (a postStart httpGet runs before any is posted).
    pub fn with_pod_ips(mut self, source: PodIpSource) -> Prober {
        self.pod_ips = Some(source);
        self
    }

    fn pod_ip(&self, pod: &Value) -> Option<String> {
        self.pod_ip_in(pod, &pod["status"])
    }

    fn pod_ip_in(&self, pod: &Value, status: &Value) -> Option<String> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let host_network = pod.pointer("/spec/hostNetwork") == Some(&json!(true));
        self.pod_ips
            .as_ref()
            .filter(|_| !host_network)
            .and_then(|f| f(uid))
            .or_else(|| {
                status["podIP"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(String::from)
            })
            .or_else(|| {
                (pod.pointer("/spec/hostNetwork") == Some(&json!(true)))
                    .then(|| self.host_ip.clone())
            })
    }

    /// Starts probing containers that started running and stops probing those that ended.
    /// `status` is the pod status last posted (its `podIP` is where probes go);
    /// `running` maps container name → (container id, started at).
    pub fn update(
        &self,
        probes: &mut PodProbes,
        pod: &Value,
        status: &Value,
        running: &HashMap<String, (String, chrono::DateTime<chrono::Utc>)>,
    ) {
        let ip = self.pod_ip_in(pod, status).or_else(|| self.pod_ip(pod));
        *probes.pod_ip.lock().expect("pod ip") = ip;
        probes.running.retain(|name, p| {
            let keep = running.get(name).is_some_and(|(id, _)| *id == p.id);
            if !keep {
                p.task.abort();
            }
            keep
        });
        for c in pod_containers(pod) {
            let name = c["name"].as_str().unwrap_or("").to_string();
            let Some((id, started_at)) = running.get(&name) else {
                continue;
            };
            if probes.running.contains_key(&name) {
                continue;
            }
            let specs = ContainerProbes::of(c);
            if specs.is_empty() {
                continue;
            }
            let mut machine = ContainerProber::new(&specs, instant_of(*started_at));
            // After a restart of the node daemon: what the pod's status said about this run.
            let previous = pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(
                    pod.pointer("/status/initContainerStatuses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                )
                .find(|s| s["name"] == name.as_str() && s["containerID"] == format!("k3rs://{id}"));
            if let Some(s) = previous {
                machine.resume(s["started"] == json!(true), s["ready"] == json!(true));
            }
            let published = Arc::new(Mutex::new(Published {
                started: machine.started(),
                ready: machine.ready(),
                kill: None,
            }));
            let target = Target {
                runtime: self.runtime.clone(),
                id: id.clone(),
                pod_ip: probes.pod_ip.clone(),
            };
            let task = tokio::spawn(
                probe_loop(
                    machine,
                    specs,
                    target,
                    published.clone(),
                    probes.notify.clone(),
                    self.recorder.clone(),
                    event_object(pod),
                    name.clone(),
                )
                .instrument(info_span!("probe", container = %name, id = %id)),
            );
            probes.running.insert(
                name,
                Probing {
                    id: id.clone(),
                    published,
                    task,
                },
            );
        }
    }

    /// Kills the containers whose liveness or startup probe failed (preStop first, then the stop
    /// signal within the grace period). The worker restarts them per `restartPolicy`.
    /// Returns whether any container was killed.
    pub async fn kill_unhealthy(&self, probes: &mut PodProbes, pod: &Value) -> bool {
        let mut kills = Vec::new();
        for (name, p) in &probes.running {
            if let Some(k) = p.published.lock().expect("probe results").kill.take() {
                kills.push((name.clone(), p.id.clone(), k));
            }
        }
        for (name, id, k) in &kills {
            if let Some(p) = probes.running.remove(name) {
                p.task.abort();
            }
            let what = match k.kind {
                Kind::Startup => "startup",
                _ => "liveness",
            };
            let msg = format!("Container {name} failed {what} probe, will be restarted");
            info!(container = %name, "{msg}");
            self.recorder
                .normal(&event_object(pod), "Killing", &msg, "Killing")
                .await;
            let grace = k.grace.unwrap_or_else(|| pod_grace(pod));
            self.kill(pod, name, id, grace).await;
        }
        !kills.is_empty()
    }

    fn container_spec<'a>(&self, pod: &'a Value, name: &str) -> Option<&'a Value> {
        ["initContainers", "containers"]
            .into_iter()
            .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
            .find(|c| c["name"] == name)
    }

    /// preStop (bounded by `grace`), then the stop signal with what is left of it.
    async fn kill(&self, pod: &Value, name: &str, id: &str, grace: Duration) {
        let t0 = Instant::now();
        let ran = match self.container_spec(pod, name) {
            Some(c) => self.pre_stop(pod, c, id, grace).await,
            None => false,
        };
        let left = if ran {
            grace
                .saturating_sub(t0.elapsed())
                .max(MIN_GRACE_AFTER_PRESTOP)
        } else {
            grace
        };
        let rt = self.runtime.clone();
        let id2 = id.to_string();
        let stopped = tokio::task::spawn_blocking(move || rt.stop(&id2, left)).await;
        if let Ok(Err(e)) = stopped {
            warn!(id, error = %e, "stopping container");
        }
    }

    /// Runs the container's postStart hook; on failure records `FailedPostStartHook`, kills the
    /// container and returns the message.
    pub async fn post_start(&self, pod: &Value, c: &Value, id: &str) -> Result<(), String> {
        let Some(h) = c.pointer("/lifecycle/postStart").filter(|v| v.is_object()) else {
            return Ok(());
        };
        let handler = Handler::parse(h, c).map_err(|e| e.to_string())?;
        let target = Target {
            runtime: self.runtime.clone(),
            id: id.to_string(),
            pod_ip: Arc::new(Mutex::new(self.pod_ip(pod))),
        };
        let Err(e) = run_handler(&handler, &target, POST_START_LIMIT).await else {
            return Ok(());
        };
        let msg = hook_failure(&handler, pod, c, &e);
        warn!(container = %c["name"], "{msg}");
        self.recorder
            .warning(&event_object(pod), "FailedPostStartHook", &msg, "Killing")
            .await;
        let name = c["name"].as_str().unwrap_or("");
        self.kill(pod, name, id, pod_grace(pod)).await;
        Err(msg)
    }

    /// Runs the container's preStop hook, bounded by `grace`. Returns whether there was one.
    async fn pre_stop(&self, pod: &Value, c: &Value, id: &str, grace: Duration) -> bool {
        let Some(h) = c.pointer("/lifecycle/preStop").filter(|v| v.is_object()) else {
            return false;
        };
        let handler = match Handler::parse(h, c) {
            Ok(h) => h,
            Err(e) => {
                warn!(container = %c["name"], error = %e, "ignoring preStop hook");
                return false;
            }
        };
        if grace.is_zero() {
            return false;
        }
        let target = Target {
            runtime: self.runtime.clone(),
            id: id.to_string(),
            pod_ip: Arc::new(Mutex::new(self.pod_ip(pod))),
        };
        match tokio::time::timeout(grace, run_handler(&handler, &target, grace)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let msg = hook_failure(&handler, pod, c, &e);
                warn!(container = %c["name"], "{msg}");
                self.recorder
                    .warning(&event_object(pod), "FailedPreStopHook", &msg, "Killing")
                    .await;
            }
            Err(_) => {
                warn!(container = %c["name"], "preStop hook did not finish within the grace period")
            }
        }
        true
    }

    /// Before a pod's containers are stopped: their preStop hooks, all at once, within `grace`.
    /// Returns the grace period left for the stop signal.
    pub async fn pre_stop_pod(&self, pod: &Value, grace: Duration) -> Duration {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let rt = self.runtime.clone();
        let uid2 = uid.clone();
        let running: Vec<(String, String)> = tokio::task::spawn_blocking(move || {
            rt.list()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.pod_uid == uid2 && matches!(c.state, ContainerState::Running { .. }))
                .filter_map(|c| Some((name_of(&uid2, &c.id)?, c.id)))
                .collect()
        })
        .await
        .unwrap_or_default();
        let t0 = Instant::now();
        if !grace.is_zero() {
            for (name, _) in &running {
                let msg = format!("Stopping container {name}");
                self.recorder
                    .normal(&event_object(pod), "Killing", &msg, "Killing")
                    .await;
            }
        }
        let mut hooks = tokio::task::JoinSet::new();
        for (name, id) in running {
            let Some(c) = self.container_spec(pod, &name) else {
                continue;
            };
            if c.pointer("/lifecycle/preStop")
                .is_some_and(Value::is_object)
            {
                let (me, pod, c) = (self.clone(), pod.clone(), c.clone());
                hooks.spawn(
                    async move { me.pre_stop(&pod, &c, &id, grace).await }.in_current_span(),
                );
            }
        }
        if hooks.is_empty() {
            return grace;
        }
        while hooks.join_next().await.is_some() {}
        grace
            .saturating_sub(t0.elapsed())
            .max(MIN_GRACE_AFTER_PRESTOP.min(grace))
    }
}

/// The pod as events refer to it.
fn event_object(pod: &Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "namespace": pod["metadata"]["namespace"],
        "name": pod["metadata"]["name"],
        "uid": pod["metadata"]["uid"],
        "resourceVersion": pod["metadata"]["resourceVersion"],
    }})
}

fn hook_failure(handler: &Handler, pod: &Value, c: &Value, error: &str) -> String {
    let (cname, pname, ns) = (
        c["name"].as_str().unwrap_or(""),
        pod["metadata"]["name"].as_str().unwrap_or(""),
        pod["metadata"]["namespace"].as_str().unwrap_or(""),
    );
    match handler {
        Handler::Exec { command } => format!(
            "Exec lifecycle hook ({command:?}) for Container \"{cname}\" in Pod \"{pname}_{ns}\" failed - error: {error}"
        ),
        Handler::Http { path, .. } => format!(
            "HTTP lifecycle hook ({path}) for Container \"{cname}\" in Pod \"{pname}_{ns}\" failed - error: {error}"
        ),
        _ => format!("lifecycle hook for Container \"{cname}\" in Pod \"{pname}_{ns}\" failed - error: {error}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    mut machine: ContainerProber,
    specs: ContainerProbes,
    target: Target,
    published: Arc<Mutex<Published>>,
    notify: Arc<Notify>,
    recorder: Recorder,
    pod: Value,
    cname: String,
) {
    while let Some((kind, due)) = machine.next() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        let Some(spec) = specs.get(kind) else {
            return;
        };
        if spec.handler.needs_pod_ip() && target.pod_ip.lock().expect("pod ip").is_none() {
            // The network has not given the pod its address yet: not a failure, try again soon.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let outcome = run_handler(&spec.handler, &target, spec.timeout).await;
        debug!(probe = kind.name(), ok = outcome.is_ok(), "probed");
        if outcome.is_err() && !target.running().await {
            // The container ended (or is being stopped): not a probe failure. The worker
            // sees the exit and probes the next attempt afresh.
            return;
        }
        if let Err(e) = &outcome {
            recorder
                .warning(
                    &pod,
                    "Unhealthy",
                    &format!("{} probe failed: {e}", kind.name()),
                    "Probe",
                )
                .await;
        }
        let verdict = machine.record(kind, Instant::now(), outcome.is_ok());
        if verdict == Verdict::Unchanged {
            continue;
        }
        {
            let mut g = published.lock().expect("probe results");
            g.started = machine.started();
            g.ready = machine.ready();
            if verdict == Verdict::Kill {
                g.kill = Some(KillRequest {
                    kind,
                    grace: spec.termination_grace,
                });
            }
        }
        info!(container = %cname, probe = kind.name(), started = machine.started(), ready = machine.ready(), kill = verdict == Verdict::Kill, "probe result changed");
        notify.notify_one();
    }
}

/// Runs a handler once; Err carries upstream-style failure output.
async fn run_handler(handler: &Handler, target: &Target, timeout: Duration) -> Result<(), String> {
    match handler {
        Handler::Exec { command } => exec(target, command, timeout).await,
        Handler::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let host = target.host(host)?;
            http_get(*https, &host, *port, path, headers, timeout).await
        }
        Handler::Tcp { host, port } => {
            let host = target.host(host)?;
            match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {}: {e}", join_host_port(&host, *port))),
                Err(_) => Err(format!(
                    "dial tcp {}: i/o timeout",
                    join_host_port(&host, *port)
                )),
            }
        }
        Handler::Grpc { port, service } => {
            let host = target.host(&None)?;
            grpc::check(&host, *port, service, timeout).await
        }
        Handler::Invalid(e) => Err(e.clone()),
        Handler::Sleep(d) => {
            tokio::time::sleep((*d).min(timeout)).await;
            Ok(())
        }
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An exec probe: the command in the container; exit 0 is success.
async fn exec(target: &Target, command: &[String], timeout: Duration) -> Result<(), String> {
    let rt = target.runtime.clone();
    let id = target.id.clone();
    let cfg = ExecConfig {
        args: command.to_vec(),
        env: Vec::new(),
        cwd: None,
    };
    let cmd = command.join(" ");
    tokio::task::spawn_blocking(move || {
        let mut child = rt
            .exec(&id, &cfg, Stdio::null(), Stdio::piped(), Stdio::piped())
            .map_err(|e| e.to_string())?;
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut r| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = (&mut r).take(MAX_OUTPUT as u64).read_to_end(&mut buf);
                // Drain the rest so the process never blocks on a full pipe.
                let _ = std::io::copy(&mut r, &mut std::io::sink());
                buf
            })
        })
        .collect();
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    // The command runs as the exec shim's child: kill it (and what it started)
                    // too, so a hanging probe does not leave a process behind every period.
                    kill_descendants(child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("command \"{cmd}\" timed out"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("waiting for \"{cmd}\": {e}")),
            }
        };
        let mut out = Vec::new();
        for r in readers {
            out.extend(r.join().unwrap_or_default());
        }
        out.truncate(MAX_OUTPUT);
        if status.success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&out).trim_end().to_string();
            if text.is_empty() {
                Err(format!(
                    "command \"{cmd}\" exited with {}",
                    status.code().unwrap_or(255)
                ))
            } else {
                Err(text)
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Every descendant of `pid` (from `/proc/<pid>/task/*/children`), parents first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let mut next = 0;
    let mut current = pid;
    loop {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{current}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        if next >= out.len() || out.len() > 4096 {
            return out;
        }
        current = out[next];
        next += 1;
    }
}

/// SIGKILLs every descendant of `pid`: the whole tree is read first, so none is reparented
/// away before it is found.
fn kill_descendants(pid: u32) {
    for c in descendants(pid) {
        if let Some(p) = i32::try_from(c)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// Redirects an httpGet probe follows, as upstream's client.
const MAX_REDIRECTS: usize = 10;

/// An httpGet probe: HTTP/1.1 GETs; 200–399 is success. HTTPS does not verify the certificate.
/// Redirects to the same host are followed (at most 10, within one timeout); a redirect to another
/// host is not followed and counts as success, as upstream.
async fn http_get(
    https: bool,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut https, mut port, mut path) = (https, port, path.to_string());
    let mut url = String::new();
    for _ in 0..=MAX_REDIRECTS {
        let scheme = if https { "https" } else { "http" };
        url = format!("{scheme}://{}{path}", join_host_port(host, port));
        let req = http_request(host, port, &path, headers);
        let attempt = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("dial tcp {}: {e}", join_host_port(host, port)))?;
            if https {
                let tls = tls::connect(host, tcp).await?;
                http_exchange(tls, &req).await
            } else {
                http_exchange(tcp, &req).await
            }
        };
        let (code, location) = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("Get \"{url}\": {e}")),
            Err(_) => {
                return Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                ))
            }
        };
        if (300..400).contains(&code) {
            if let Some(loc) = location {
                match redirect_target(&loc, https, host, port, &path) {
                    Some(next) => {
                        (https, port, path) = next;
                        continue;
                    }
                    None => {
                        debug!(location = %loc, "probe not following a redirect to another host");
                        return Ok(());
                    }
                }
            }
        }
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    Err(format!(
        "Get \"{url}\": stopped after {MAX_REDIRECTS} redirects"
    ))
}

fn http_request(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> String {
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        req += &format!("Host: {}\r\n", join_host_port(host, port));
    }
    if !has("user-agent") {
        req += "User-Agent: kube-probe/1.33\r\n";
    }
    if !has("accept") {
        req += "Accept: */*\r\n";
    }
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req + "Connection: close\r\n\r\n"
}

/// Where a redirect from `https://host:port/path` to `location` goes: (https, port, path), or
/// None when it leaves the host.
fn redirect_target(
    location: &str,
    https: bool,
    host: &str,
    port: u16,
    path: &str,
) -> Option<(bool, u16, String)> {
    let absolute = location
        .strip_prefix("http://")
        .map(|r| (false, r))
        .or_else(|| location.strip_prefix("https://").map(|r| (true, r)));
    let Some((to_https, rest)) = absolute else {
        if location.starts_with('/') {
            return Some((https, port, location.to_string()));
        }
        // Relative to the current path's directory.
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        return Some((https, port, format!("{dir}{location}")));
    };
    let (authority, new_path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let default_port = if to_https { 443 } else { 80 };
    let (h, p) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, default_port),
    };
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case(host)
        .then_some((to_https, p, new_path))
}

/// Sends `req` and reads the status code and `Location` of the response.
async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
) -> Result<(u16, Option<String>), String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            if head.contains(&b'\n') {
                break;
            }
            return Err("EOF".into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            return Err("malformed HTTP response".into());
        }
    }
    let code = parse_status_line(&head).ok_or_else(|| {
        format!(
            "malformed HTTP response {:?}",
            String::from_utf8_lossy(&head[..head.len().min(64)])
        )
    })?;
    let location = String::from_utf8_lossy(&head)
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        });
    Ok((code, location))
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// TLS for HTTPS probes without certificate verification, as upstream (`InsecureSkipVerify`).
mod tls {
    use rustls::pki_types::ServerName;
    use std::sync::Arc;
    use tokio::net::TcpStream;

    pub(super) async fn connect(
        host: &str,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let config = k3rs_pki::unverified::client_config().map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))
    }
}

/// gRPC probes: `grpc.health.v1.Health/Check` over cleartext HTTP/2; SERVING is success.
mod grpc {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::time::Duration;
    use tokio::net::TcpStream;

    /// `HealthCheckRequest { service = 1 }` in a gRPC frame.
    pub(super) fn request_frame(service: &str) -> Vec<u8> {
        let mut msg = Vec::new();
        if !service.is_empty() {
            msg.push(0x0a);
            let mut n = service.len();
            while n >= 0x80 {
                msg.push((n as u8) | 0x80);
                n >>= 7;
            }
            msg.push(n as u8);
            msg.extend_from_slice(service.as_bytes());
        }
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend(msg);
        frame
    }

    /// `HealthCheckResponse.status` (field 1, enum) from a gRPC frame; 0 when absent.
    pub(super) fn response_status(frame: &[u8]) -> Option<u64> {
        let msg = frame.get(5..)?;
        let mut i = 0;
        while i < msg.len() {
            let key = msg[i];
            i += 1;
            let mut v: u64 = 0;
            let mut shift = 0;
            match key & 7 {
                0 => loop {
                    let b = *msg.get(i)?;
                    i += 1;
                    v |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                },
                2 => {
                    let len = *msg.get(i)? as usize;
                    i += 1 + len;
                    continue;
                }
                _ => return None,
            }
            if key >> 3 == 1 {
                return Some(v);
            }
        }
        Some(0)
    }

    pub(super) async fn check(
        host: &str,
        port: u16,
        service: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let addr = super::join_host_port(host, port);
        let attempt = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("failed to connect service {addr:?}: {e}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("user-agent", "kube-probe/1.33")
                .body(Full::new(Bytes::from(request_frame(service))))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let header_status = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            let trailer_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let grpc_status = trailer_status.or(header_status).unwrap_or_default();
            if grpc_status != "0" {
                return Err(format!("rpc error: code = {grpc_status}"));
            }
            let body = collected.to_bytes();
            match response_status(&body) {
                Some(1) => Ok(()),
                _ => Err("service unhealthy (responded with \"NOT_SERVING\")".to_string()),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timeout: health rpc did not complete within {}s",
                timeout.as_secs()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> ProbeSpec {
        ProbeSpec::parse(Kind::Readiness, &v, &json!({}))
    }

    fn probes(
        startup: Option<Value>,
        liveness: Option<Value>,
        readiness: Option<Value>,
    ) -> ContainerProbes {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}]});
        ContainerProbes {
            startup: startup.map(|v| ProbeSpec::parse(Kind::Startup, &v, &c)),
            liveness: liveness.map(|v| ProbeSpec::parse(Kind::Liveness, &v, &c)),
            readiness: readiness.map(|v| ProbeSpec::parse(Kind::Readiness, &v, &c)),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn parses_handlers_and_defaults() {
        let c = json!({"ports": [{"name": "web", "containerPort": 8080}]});
        let p = ProbeSpec::parse(
            Kind::Liveness,
            &json!({"httpGet": {"path": "healthz", "port": "web", "scheme": "HTTPS", "httpHeaders": [{"name": "X-A", "value": "b"}]}, "successThreshold": 5}),
            &c,
        );
        assert_eq!(
            p.handler,
            Handler::Http {
                https: true,
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-A".into(), "b".into())]
            }
        );
        assert_eq!(
            (p.period, p.timeout, p.initial_delay),
            (10 * S, S, Duration::ZERO)
        );
        assert_eq!(
            (p.success_threshold, p.failure_threshold),
            (1, 3),
            "liveness success threshold is 1"
        );
        assert_eq!(
            Handler::parse(&json!({"tcpSocket": {"port": 53, "host": "10.0.0.1"}}), &c).unwrap(),
            Handler::Tcp {
                host: Some("10.0.0.1".into()),
                port: 53
            }
        );
        assert_eq!(
            Handler::parse(&json!({"tcpSocket": {"port": "nope"}}), &c),
            Err(SpecError::UnknownPort("nope".into()))
        );
        assert_eq!(Handler::parse(&json!({}), &c), Err(SpecError::NoHandler));
        // A probe on an unknown port stays, and fails with the reason.
        let bad = ContainerProbes::of(&json!({"readinessProbe": {"httpGet": {"port": "nope"}}}));
        assert_eq!(
            bad.readiness.map(|r| r.handler),
            Some(Handler::Invalid(
                SpecError::UnknownPort("nope".into()).to_string()
            ))
        );
        let r = spec(
            json!({"exec": {"command": ["true"]}, "successThreshold": 2, "periodSeconds": 0, "terminationGracePeriodSeconds": 7}),
        );
        assert_eq!(r.success_threshold, 2);
        assert_eq!(r.period, S, "period is at least 1s");
        assert_eq!(r.termination_grace, Some(7 * S));
    }

    #[test]
    fn readiness_follows_thresholds() {
        let t0 = Instant::now();
        let p = probes(
            None,
            None,
            Some(
                json!({"exec": {"command": ["x"]}, "initialDelaySeconds": 5, "periodSeconds": 2, "successThreshold": 2, "failureThreshold": 3}),
            ),
        );
        let mut m = ContainerProber::new(&p, t0);
        assert!(m.started() && !m.ready(), "readiness starts as failure");
        assert_eq!(
            m.next(),
            Some((Kind::Readiness, t0 + 5 * S)),
            "initial delay"
        );
        assert_eq!(
            m.record(Kind::Readiness, t0 + 5 * S, true),
            Verdict::Unchanged
        );
        assert_eq!(
            m.next(),
            Some((Kind::Readiness, t0 + 7 * S)),
            "then every period"
        );
        assert_eq!(
            m.record(Kind::Readiness, t0 + 7 * S, true),
            Verdict::Changed
        );
        assert!(m.ready());
        // Failures below the threshold keep the container ready; a success resets the count.
        assert_eq!(
            m.record(Kind::Readiness, t0 + 9 * S, false),
            Verdict::Unchanged
        );
        assert_eq!(
            m.record(Kind::Readiness, t0 + 11 * S, false),
            Verdict::Unchanged
        );
        assert_eq!(
            m.record(Kind::Readiness, t0 + 13 * S, true),
            Verdict::Unchanged
        );
        assert_eq!(
            m.record(Kind::Readiness, t0 + 15 * S, false),
            Verdict::Unchanged
        );
        assert_eq!(
            m.record(Kind::Readiness, t0 + 17 * S, false),
            Verdict::Unchanged
        );
        assert!(m.ready());
        assert_eq!(
            m.record(Kind::Readiness, t0 + 19 * S, false),
            Verdict::Changed
        );
        assert!(!m.ready());
        assert_eq!(
            m.record(Kind::Readiness, t0 + 21 * S, false),
            Verdict::Unchanged
        );
        assert!(m.next().is_some(), "readiness never stops");
    }

    #[test]
    fn startup_gates_liveness_and_readiness() {
        let t0 = Instant::now();
        let p = probes(
            Some(json!({"exec": {"command": ["x"]}, "periodSeconds": 1, "failureThreshold": 3})),
            Some(json!({"exec": {"command": ["x"]}, "periodSeconds": 10})),
            Some(json!({"exec": {"command": ["x"]}, "periodSeconds": 5})),
        );
        let mut m = ContainerProber::new(&p, t0);
        assert!(!m.started() && !m.ready());
        assert_eq!(
            m.next(),
            Some((Kind::Startup, t0)),
            "only startup runs at first"
        );
        assert_eq!(m.record(Kind::Startup, t0, false), Verdict::Unchanged);
        assert_eq!(m.next(), Some((Kind::Startup, t0 + S)));
        assert_eq!(m.record(Kind::Startup, t0 + S, true), Verdict::Changed);
        assert!(m.started() && !m.ready(), "started, not yet ready");
        // Startup is done; liveness and readiness (due since t0) run now.
        let (k, due) = m.next().unwrap();
        assert!(k != Kind::Startup && due == t0);
        assert_eq!(m.record(Kind::Liveness, t0 + S, true), Verdict::Unchanged);
        assert_eq!(m.next(), Some((Kind::Readiness, t0)));
        assert_eq!(m.record(Kind::Readiness, t0 + S, true), Verdict::Changed);
        assert!(m.ready());
        assert_eq!(m.next(), Some((Kind::Readiness, t0 + 6 * S)));
    }

    #[test]
    fn liveness_failure_kills_once() {
        let t0 = Instant::now();
        let p = probes(
            None,
            Some(json!({"exec": {"command": ["x"]}, "periodSeconds": 1, "failureThreshold": 2})),
            None,
        );
        let mut m = ContainerProber::new(&p, t0);
        assert!(m.ready(), "liveness alone does not gate readiness");
        assert_eq!(m.record(Kind::Liveness, t0, false), Verdict::Unchanged);
        assert_eq!(m.record(Kind::Liveness, t0 + S, false), Verdict::Kill);
        assert_eq!(m.next(), None, "on hold until the container is restarted");
    }

    #[test]
    fn startup_failure_kills() {
        let t0 = Instant::now();
        let p = probes(
            Some(json!({"tcpSocket": {"port": "http"}, "failureThreshold": 1})),
            None,
            None,
        );
        let mut m = ContainerProber::new(&p, t0);
        assert_eq!(m.record(Kind::Startup, t0, false), Verdict::Kill);
        assert!(!m.started());
        assert_eq!(m.next(), None);
    }

    #[test]
    fn adopted_containers_keep_their_results() {
        let t0 = Instant::now();
        let p = probes(
            Some(json!({"exec": {"command": ["x"]}})),
            None,
            Some(json!({"exec": {"command": ["x"]}})),
        );
        let mut m = ContainerProber::new(&p, t0);
        m.resume(true, true);
        assert!(m.started() && m.ready());
        assert_eq!(m.next().map(|(k, _)| k), Some(Kind::Readiness));
    }

    #[test]
    fn names_and_wire_formats() {
        assert_eq!(name_of("u-1", "u-1_my_c_3").as_deref(), Some("my_c"));
        assert_eq!(name_of("u-1", "u-2_c_3"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 302 Found\r\n"), Some(302));
        assert_eq!(parse_status_line(b"SSH-2.0\r\n"), None);
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(grpc::request_frame(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            grpc::request_frame("ab"),
            vec![0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
        assert_eq!(grpc::response_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc::response_status(&[0, 0, 0, 0, 0]), Some(0));
    }

    #[tokio::test]
    async fn https_probes_skip_verification() {
        use tokio::net::TcpListener;
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut tls = acceptor.accept(s).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = tls.read(&mut buf).await.unwrap();
            tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            tls.shutdown().await.ok();
        });
        assert_eq!(
            http_get(true, "127.0.0.1", port, "/", &[], 5 * S).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn grpc_health_checks() {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        // The whole server is SERVING; any named service is NOT_SERVING (2).
                        let status = if body.len() == 5 { 1 } else { 2 };
                        let frame = bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body =
                            Full::new(frame).with_trailers(async move { Some(Ok(trailers)) });
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(body)
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        assert_eq!(grpc::check("127.0.0.1", port, "", S).await, Ok(()));
        let err = grpc::check("127.0.0.1", port, "db", S).await.unwrap_err();
        assert!(err.contains("NOT_SERVING"), "{err}");
        let closed = free_port_for_test();
        assert!(grpc::check("127.0.0.1", closed, "", S).await.is_err());
    }

    fn free_port_for_test() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    #[test]
    fn status_before_probing_follows_the_initial_results() {
        let p = PodProbes::default();
        let exec = json!({"exec": {"command": ["x"]}});
        assert_eq!(p.status(&json!({"name": "a"}), "id"), (true, true));
        assert_eq!(
            p.status(&json!({"name": "a", "livenessProbe": exec}), "id"),
            (true, true)
        );
        assert_eq!(
            p.status(&json!({"name": "a", "readinessProbe": exec}), "id"),
            (true, false)
        );
        assert_eq!(
            p.status(&json!({"name": "a", "startupProbe": exec}), "id"),
            (false, false)
        );
    }

    #[test]
    fn timed_out_commands_leave_no_processes() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & (sleep 30 & wait) & wait"])
            .spawn()
            .unwrap();
        let mut tree = Vec::new();
        for _ in 0..200 {
            tree = descendants(sh.id());
            if tree.len() >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(tree.len() >= 3, "sleep, subshell, its sleep: {tree:?}");
        kill_descendants(sh.id());
        let _ = sh.wait();
        std::thread::sleep(Duration::from_millis(100));
        for p in tree {
            let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let alive = state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'));
            assert!(!alive, "{p} survived: {state}");
        }
    }

    #[test]
    fn redirect_targets() {
        let t = |loc| redirect_target(loc, false, "10.0.0.5", 8080, "/a/b");
        assert_eq!(t("/c"), Some((false, 8080, "/c".into())));
        assert_eq!(t("c"), Some((false, 8080, "/a/c".into())));
        assert_eq!(t("https://10.0.0.5/x"), Some((true, 443, "/x".into())));
        assert_eq!(t("http://10.0.0.5:81"), Some((false, 81, "/".into())));
        assert_eq!(
            t("http://example.com/"),
            None,
            "another host is not followed"
        );
        assert_eq!(
            redirect_target("http://[::1]:90/z", false, "::1", 80, "/"),
            Some((false, 90, "/z".into()))
        );
    }

    #[tokio::test]
    async fn http_follows_redirects_on_the_same_host() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let resp = if req.starts_with("GET /old ") {
                    "HTTP/1.1 301 Moved\r\nLocation: /gone\r\nContent-Length: 0\r\n\r\n"
                } else if req.starts_with("GET /away ") {
                    "HTTP/1.1 302 Found\r\nLocation: http://example.invalid/\r\nContent-Length: 0\r\n\r\n"
                } else if req.starts_with("GET /loop ") {
                    "HTTP/1.1 302 Found\r\nlocation: /loop\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let get = |p: &'static str| http_get(false, "127.0.0.1", port, p, &[], 5 * S);
        assert_eq!(
            get("/old").await,
            Err("HTTP probe failed with statuscode: 404".into()),
            "the redirect is followed to the 404"
        );
        assert_eq!(
            get("/away").await,
            Ok(()),
            "another host: the 302 itself counts"
        );
        let looped = get("/loop").await.unwrap_err();
        assert!(looped.contains("stopped after 10 redirects"), "{looped}");
    }

    #[tokio::test]
    async fn http_and_tcp_handlers() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for code in [200u16, 500] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            seen
        });
        let headers = vec![("X-Probe".to_string(), "yes".to_string())];
        assert_eq!(
            http_get(false, "127.0.0.1", port, "/ok", &headers, S).await,
            Ok(())
        );
        assert_eq!(
            http_get(false, "127.0.0.1", port, "/bad", &[], S).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("GET /ok HTTP/1.1\r\n") && seen[0].contains("X-Probe: yes\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("User-Agent: kube-probe/"), "{}", seen[0]);
        // The listener is gone: connection refused.
        let refused = http_get(false, "127.0.0.1", port, "/", &[], S)
            .await
            .unwrap_err();
        assert!(refused.contains("refused"), "{refused}");
    }
}
