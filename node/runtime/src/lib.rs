//! `k3rs-runtime`: runs OCI containers through youki's `libcontainer`.
//!
//! `libcontainer` makes its caller non-dumpable, writes the caller's `oom_score_adj` and forks with
//! raw `clone3`, and the container init becomes the caller's child. So the node daemon never calls
//! it: every container gets a small shim process (`k3rs shim run`, double-forked and `setsid`) that
//! creates and starts the container, writes its output to a CRI-format log file, reaps it, records
//! the exit status and OOM kill in `state.json`, handles stop requests (SIGTERM, grace period,
//! SIGKILL) and deletes the container's cgroups. The daemon only reads and writes files under the
//! root directory and signals shims, so a restarted daemon re-adopts running containers by reading
//! their directories.
//!
//! A pod sandbox is a set of network, IPC and UTS namespaces bind-mounted under the sandbox
//! directory (`k3rs shim sandbox` creates them); containers join them by path.
//!
//! Layout under the root directory:
//! ```text
//! sandboxes/<pod-uid>/{sandbox.json,ns/{net,ipc,uts},hostname,hosts,resolv.conf}
//! containers/<id>/{container.json,state.json,shim.pid,shim.log,stop,bundle/config.json}
//! libcontainer/<id>/          libcontainer's own state
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod attach;
pub mod crilog;
pub mod shim;
pub mod spec;
mod sys;

pub use spec::{PodCgroup, QosClass, SeccompProfile, Security};
mod tty;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tracing::{debug, info, info_span, warn};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid container spec: {0}")]
    Spec(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("invalid id {0:?}: use [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId(String),
    #[error("shim for {id} failed: {message}")]
    Shim { id: String, message: String },
    #[error("sandbox {pod_uid} failed: {message}")]
    Sandbox { pod_uid: String, message: String },
    #[error("corrupt state file {path}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("container {0} did not exit after SIGKILL")]
    StopTimeout(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Pod-level configuration of a sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub hostname: String,
    pub dns: Option<DnsConfig>,
    /// Share the host's network and UTS namespaces (`hostNetwork: true`).
    pub host_network: bool,
    /// Extra `/etc/hosts` lines (hostAliases).
    pub extra_hosts: Vec<String>,
    /// The pod-level cgroup its containers' cgroups go under.
    #[serde(default)]
    pub cgroup: PodCgroup,
}

/// The pod's `/etc/resolv.conf`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsConfig {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A pod sandbox: namespaces its containers join, and the files bind-mounted into them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub pod_uid: String,
    pub dir: PathBuf,
    pub hostname: String,
    pub host_network: bool,
    /// The pod cgroup (`/kubepods/<qos>/pod<uid>`); absent in sandboxes created before pod
    /// cgroups, whose containers live under `/k3rs/<pod-uid>`.
    #[serde(default)]
    pub cgroup_parent: Option<PathBuf>,
}

impl Sandbox {
    pub fn net_ns(&self) -> PathBuf {
        self.dir.join("ns/net")
    }
    pub fn ipc_ns(&self) -> PathBuf {
        self.dir.join("ns/ipc")
    }
    pub fn uts_ns(&self) -> PathBuf {
        self.dir.join("ns/uts")
    }
}

/// The process identity of a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// A bind mount into the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

/// Cgroup limits of a container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resources {
    pub memory_limit_bytes: Option<i64>,
    /// CPU limit in millicores (CFS quota over a 100 ms period).
    pub cpu_limit_millis: Option<u64>,
    /// cgroup v1 `cpu.shares` (the kubelet derives it from the CPU request).
    pub cpu_shares: Option<u64>,
    pub pids_limit: Option<i64>,
}

/// What to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Unique on the node: `[A-Za-z0-9_.-]`.
    pub id: String,
    /// A prepared root filesystem (e.g. `k3rs_images::ImageStore::prepare_rootfs`).
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub user: User,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    /// CRI-format log file (created, appended to).
    pub log_path: PathBuf,
    /// When the shim rotates `log_path` and how many files it keeps.
    pub log_rotation: crilog::LogRotation,
    /// Allocate a terminal for the main process (`tty: true`): its stdin, stdout and stderr are
    /// the pty, whose output is logged as stdout.
    pub tty: bool,
    /// Keep the main process's stdin open for attach (`stdin: true`); otherwise it is
    /// `/dev/null`.
    pub stdin: bool,
    /// Close the main process's stdin when the first attach session that wrote to it ends
    /// (`stdinOnce: true`).
    pub stdin_once: bool,
    pub readonly_rootfs: bool,
    pub oom_score_adj: Option<i32>,
    /// securityContext: capabilities, privileged, seccomp, host namespaces, sysctls.
    #[serde(default)]
    pub security: Security,
}

/// A process to start in a running container (`kubectl exec`, exec probes). It inherits the
/// container's environment (overridden by `env`), user and namespaces.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecConfig {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Absolute; the container's working directory when unset.
    pub cwd: Option<String>,
}

/// Result of [`Runtime::exec_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code; `128 + signal` when killed by a signal; 126 when it could not be started.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Exit code of an exec whose process could not be started (as in Docker).
pub const EXEC_START_FAILED: i32 = 126;

/// What a container is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ContainerState {
    /// The shim is creating it.
    Created,
    Running {
        pid: i32,
        started_at: DateTime<Utc>,
    },
    Exited {
        /// Exit code; `128 + signal` when killed by a signal (Kubernetes' convention).
        code: i32,
        signal: Option<i32>,
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
        oom_killed: bool,
        /// Set when the container could not be started or its shim vanished.
        error: Option<String>,
    },
}

impl ContainerState {
    pub fn is_running(&self) -> bool {
        matches!(self, ContainerState::Running { .. })
    }
}

/// A container as listed by [`Runtime::list`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub pod_uid: String,
    pub log_path: PathBuf,
    pub created_at: DateTime<Utc>,
    pub state: ContainerState,
}

/// `container.json`: written by the daemon before the shim starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContainerRecord {
    pub id: String,
    pub pod_uid: String,
    pub log_path: PathBuf,
    /// Absent in records written before rotation existed: upstream's defaults.
    #[serde(default)]
    pub log_rotation: crilog::LogRotation,
    pub created_at: DateTime<Utc>,
    /// cgroup path relative to each hierarchy root (for the OOM counter).
    pub cgroups_path: PathBuf,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
}

/// `state.json`: written by the shim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub shim_pid: i32,
    pub state: ContainerState,
}

/// How to start a shim: a program and the arguments before the shim's own (`k3rs shim`).
#[derive(Debug, Clone)]
pub struct ShimCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl ShimCommand {
    /// This executable with `shim` (the `k3rs shim` hidden subcommand).
    pub fn current_exe() -> Result<Self> {
        Ok(ShimCommand {
            program: std::env::current_exe().map_err(io_err("finding the current executable"))?,
            args: vec!["shim".into()],
        })
    }
}

/// The node's container runtime: a directory of sandboxes and containers.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    shim: ShimCommand,
}

const STOP_POLL: Duration = Duration::from_millis(2);

fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(value).expect("serializable");
    fs::write(&tmp, data).map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("renaming {}", tmp.display())))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let data = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
    serde_json::from_slice(&data).map_err(|source| Error::State {
        path: path.to_path_buf(),
        source,
    })
}

impl Runtime {
    /// A runtime whose shims are this executable's `shim` subcommand (the `k3rs` binary).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Self::with_shim(root, ShimCommand::current_exe()?)
    }

    /// A runtime with an explicit shim command (tests use the `k3rs-shim` binary).
    pub fn with_shim(root: impl Into<PathBuf>, shim: ShimCommand) -> Result<Self> {
        let root = root.into();
        for d in ["sandboxes", "containers", "libcontainer"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        Ok(Runtime { root, shim })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sandbox_dir(&self, pod_uid: &str) -> PathBuf {
        self.root.join("sandboxes").join(pod_uid)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    fn shim_command(&self) -> Command {
        let mut cmd = Command::new(&self.shim.program);
        cmd.args(&self.shim.args);
        cmd
    }

    /// Creates (or returns the existing) sandbox of a pod: fresh network, IPC and UTS namespaces
    /// with `lo` up and the hostname set, and the pod's `hostname`, `hosts` and `resolv.conf`.
    pub fn create_sandbox(&self, pod_uid: &str, cfg: &SandboxConfig) -> Result<Sandbox> {
        validate_id(pod_uid)?;
        let _span = info_span!("sandbox", pod = pod_uid).entered();
        let dir = self.sandbox_dir(pod_uid);
        if let Ok(sb) = self.sandbox(pod_uid) {
            return Ok(sb);
        }
        let ns = dir.join("ns");
        fs::create_dir_all(&ns).map_err(io_err(format!("creating {}", ns.display())))?;
        let hostname = if cfg.host_network {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| cfg.hostname.clone())
        } else {
            cfg.hostname.clone()
        };
        let write = |name: &str, content: String| {
            let p = dir.join(name);
            fs::write(&p, content).map_err(io_err(format!("writing {}", p.display())))
        };
        write("hostname", format!("{hostname}\n"))?;
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        );
        for l in &cfg.extra_hosts {
            hosts.push_str(l);
            hosts.push('\n');
        }
        write("hosts", hosts)?;
        let resolv = match &cfg.dns {
            Some(dns) => {
                let mut s = String::new();
                for n in &dns.nameservers {
                    s.push_str(&format!("nameserver {n}\n"));
                }
                if !dns.searches.is_empty() {
                    s.push_str(&format!("search {}\n", dns.searches.join(" ")));
                }
                if !dns.options.is_empty() {
                    s.push_str(&format!("options {}\n", dns.options.join(" ")));
                }
                s
            }
            None => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        write("resolv.conf", resolv)?;

        let mut cmd = self.shim_command();
        cmd.arg("sandbox").arg(&ns).arg(&hostname);
        if cfg.host_network {
            cmd.arg("--host-network");
        }
        let out = cmd
            .output()
            .map_err(io_err("starting the sandbox helper"))?;
        if !out.status.success() {
            let _ = sys::unmount_namespaces(&ns);
            let _ = fs::remove_dir_all(&dir);
            return Err(Error::Sandbox {
                pod_uid: pod_uid.into(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let cgroup = spec::pod_cgroup_path(cfg.cgroup.qos, pod_uid);
        if let Err(e) = sys::create_cgroup(&cgroup, &cfg.cgroup.resources) {
            let _ = sys::unmount_namespaces(&ns);
            let _ = fs::remove_dir_all(&dir);
            sys::remove_cgroup_tree(&cgroup);
            return Err(Error::Sandbox {
                pod_uid: pod_uid.into(),
                message: format!("creating the pod cgroup: {e}"),
            });
        }
        let sb = Sandbox {
            pod_uid: pod_uid.into(),
            dir: dir.clone(),
            hostname,
            host_network: cfg.host_network,
            cgroup_parent: Some(cgroup),
        };
        write_json_atomic(&dir.join("sandbox.json"), &sb)?;
        info!("sandbox created");
        Ok(sb)
    }

    /// Loads a sandbox created earlier (also by a previous daemon).
    pub fn sandbox(&self, pod_uid: &str) -> Result<Sandbox> {
        validate_id(pod_uid)?;
        let p = self.sandbox_dir(pod_uid).join("sandbox.json");
        if !p.exists() {
            return Err(Error::NotFound(pod_uid.into()));
        }
        read_json(&p)
    }

    /// All sandboxes on the node.
    pub fn list_sandboxes(&self) -> Result<Vec<Sandbox>> {
        let mut out = Vec::new();
        for e in read_dir(&self.root.join("sandboxes"))? {
            if let Ok(sb) = self.sandbox(&e) {
                out.push(sb);
            }
        }
        Ok(out)
    }

    /// Removes a sandbox: unmounts its namespaces, deletes its files and the pod cgroups.
    /// Its containers must have been removed first.
    pub fn remove_sandbox(&self, pod_uid: &str) -> Result<()> {
        validate_id(pod_uid)?;
        let _span = info_span!("sandbox", pod = pod_uid).entered();
        let dir = self.sandbox_dir(pod_uid);
        if !dir.exists() {
            return Ok(());
        }
        let cgroup = self.sandbox(pod_uid).ok().and_then(|sb| sb.cgroup_parent);
        sys::unmount_namespaces(&dir.join("ns"))?;
        fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
        if let Some(cgroup) = cgroup {
            sys::remove_cgroup_tree(&cgroup);
        }
        sys::remove_cgroup(Path::new(&format!("/k3rs/{pod_uid}")));
        info!("sandbox removed");
        Ok(())
    }

    /// Creates and starts a container in `sandbox`; returns once it runs (or failed to start,
    /// e.g. a missing executable: then the error carries libcontainer's message).
    pub fn run_container(
        &self,
        sandbox: &Sandbox,
        cfg: &ContainerConfig,
    ) -> Result<ContainerState> {
        validate_id(&cfg.id)?;
        let _span = info_span!("container", id = %cfg.id, pod = %sandbox.pod_uid).entered();
        let dir = self.container_dir(&cfg.id);
        if dir.exists() {
            return Err(Error::AlreadyExists(cfg.id.clone()));
        }
        let spec = spec::build(sandbox, cfg)?;
        let bundle = dir.join("bundle");
        fs::create_dir_all(&bundle).map_err(io_err(format!("creating {}", bundle.display())))?;
        spec.save(bundle.join("config.json"))
            .map_err(|e| Error::Spec(e.to_string()))?;
        if let Some(parent) = cfg.log_path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let rec = ContainerRecord {
            id: cfg.id.clone(),
            pod_uid: sandbox.pod_uid.clone(),
            log_path: cfg.log_path.clone(),
            log_rotation: cfg.log_rotation,
            created_at: Utc::now(),
            cgroups_path: spec::cgroups_path(sandbox, &cfg.id),
            tty: cfg.tty,
            stdin: cfg.stdin,
            stdin_once: cfg.stdin_once,
        };
        write_json_atomic(&dir.join("container.json"), &rec)?;

        let t0 = Instant::now();
        let out = self
            .shim_command()
            .arg("run")
            .arg(&dir)
            .arg(self.root.join("libcontainer"))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io_err("starting the shim"))?;
        debug!(
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "shim reported"
        );
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            warn!(%message, "container failed to start");
            return Err(Error::Shim {
                id: cfg.id.clone(),
                message,
            });
        }
        self.status(&cfg.id)
    }

    /// The container's current state (from the shim's state file; a `Running` container whose
    /// shim and process vanished is reported as exited with an error).
    pub fn status(&self, id: &str) -> Result<ContainerState> {
        validate_id(id)?;
        let dir = self.container_dir(id);
        if !dir.join("container.json").exists() {
            return Err(Error::NotFound(id.into()));
        }
        let state_path = dir.join("state.json");
        if !state_path.exists() {
            return Ok(ContainerState::Created);
        }
        let st: StateFile = read_json(&state_path)?;
        if let ContainerState::Running { pid, started_at } = &st.state {
            if !sys::process_alive(st.shim_pid) && !sys::process_alive(*pid) {
                // Re-read: the shim may have finished between the two reads.
                let again: StateFile = read_json(&state_path)?;
                if again.state.is_running() {
                    return Ok(ContainerState::Exited {
                        code: 255,
                        signal: None,
                        started_at: Some(*started_at),
                        finished_at: Utc::now(),
                        oom_killed: false,
                        error: Some("the container's shim disappeared".into()),
                    });
                }
                return Ok(again.state);
            }
        }
        Ok(st.state)
    }

    /// Stops a container: SIGTERM, then SIGKILL after `grace`. Waits until it has exited.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<ContainerState> {
        let _span = info_span!("container", id).entered();
        let state = self.status(id)?;
        if !state.is_running() {
            return Ok(state);
        }
        let dir = self.container_dir(id);
        let st: StateFile = read_json(&dir.join("state.json"))?;
        let stop = dir.join("stop");
        fs::write(&stop, grace.as_millis().to_string())
            .map_err(io_err(format!("writing {}", stop.display())))?;
        info!(grace_ms = grace.as_millis() as u64, "stopping");
        let shim_alive = sys::is_shim_of(st.shim_pid, id);
        if shim_alive {
            sys::kill(st.shim_pid, libc::SIGTERM);
        } else if let ContainerState::Running { pid, .. } = st.state {
            // No shim to supervise the stop: do it from here.
            sys::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace + Duration::from_secs(5);
        let mut killed = false;
        loop {
            let s = self.status(id)?;
            if !s.is_running() {
                return Ok(s);
            }
            if !shim_alive && !killed && Instant::now() >= deadline - Duration::from_secs(5) {
                if let ContainerState::Running { pid, .. } = s {
                    sys::kill(pid, libc::SIGKILL);
                }
                killed = true;
            }
            if Instant::now() >= deadline {
                return Err(Error::StopTimeout(id.into()));
            }
            std::thread::sleep(STOP_POLL);
        }
    }

    /// Removes an exited container's files (its log file stays: the kubelet owns it).
    /// A running container is stopped with no grace period first.
    pub fn remove(&self, id: &str) -> Result<()> {
        let _span = info_span!("container", id).entered();
        match self.status(id) {
            Err(Error::NotFound(_)) => return Ok(()),
            Ok(s) if s.is_running() => {
                self.stop(id, Duration::ZERO)?;
            }
            _ => {}
        }
        // Wait for the shim to finish its cleanup (libcontainer delete) if it still runs.
        let dir = self.container_dir(id);
        if let Ok(st) = read_json::<StateFile>(&dir.join("state.json")) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while sys::is_shim_of(st.shim_pid, id) && Instant::now() < deadline {
                std::thread::sleep(STOP_POLL);
            }
        }
        // Leftovers of a shim that died: libcontainer state and cgroups.
        let lc = self.root.join("libcontainer").join(id);
        if lc.exists() {
            if let Ok(mut c) = libcontainer::container::Container::load(lc.clone()) {
                let _ = c.delete(true);
            }
            let _ = fs::remove_dir_all(&lc);
        }
        if let Ok(rec) = read_json::<ContainerRecord>(&dir.join("container.json")) {
            sys::remove_cgroup(&rec.cgroups_path);
        }
        fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
        info!("container removed");
        Ok(())
    }

    /// Every container on the node, running or exited, including those started by an earlier
    /// daemon (their shims kept running): this is how a restarted kubelet re-adopts them.
    pub fn list(&self) -> Result<Vec<ContainerInfo>> {
        let mut out = Vec::new();
        for id in read_dir(&self.root.join("containers"))? {
            let dir = self.container_dir(&id);
            let Ok(rec) = read_json::<ContainerRecord>(&dir.join("container.json")) else {
                continue;
            };
            let state = match self.status(&id) {
                Ok(s) => s,
                Err(e) => {
                    warn!(id, error = %e, "unreadable container state");
                    continue;
                }
            };
            out.push(ContainerInfo {
                id: rec.id,
                pod_uid: rec.pod_uid,
                log_path: rec.log_path,
                created_at: rec.created_at,
                state,
            });
        }
        out.sort_by_key(|a| a.created_at);
        Ok(out)
    }

    /// Starts `cfg` in the running container `id` through a `shim exec` process whose stdio
    /// become the new process's: pass `Stdio::piped()` to stream them (kubectl exec). The
    /// returned child exits with the process's exit code (see [`ExecOutput::code`]).
    pub fn exec(
        &self,
        id: &str,
        cfg: &ExecConfig,
        stdin: std::process::Stdio,
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> Result<std::process::Child> {
        self.exec_with(id, cfg, false, stdin, stdout, stderr)
    }

    fn exec_with(
        &self,
        id: &str,
        cfg: &ExecConfig,
        tty: bool,
        stdin: std::process::Stdio,
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> Result<std::process::Child> {
        let _span = info_span!("exec", id, tty).entered();
        if !self.status(id)?.is_running() {
            return Err(Error::Shim {
                id: id.into(),
                message: "container is not running".into(),
            });
        }
        if cfg.args.is_empty() {
            return Err(Error::Spec("exec needs a command".into()));
        }
        let json = serde_json::to_string(cfg).expect("serializable");
        let mut cmd = self.shim_command();
        cmd.arg("exec")
            .arg(self.container_dir(id))
            .arg(self.root.join("libcontainer"))
            .arg(json);
        if tty {
            cmd.arg("--tty");
        }
        cmd.stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(io_err("starting the exec shim"))
    }

    /// Like [`Runtime::exec`], on a new terminal (`kubectl exec -t`): the process is a session
    /// leader with the pty (allocated inside the container) as its controlling terminal and
    /// stdio. The shim's stdin carries [`attach::Frame`]s (`Stdin`, `Resize`; EOF ends input)
    /// and its stdout is the terminal's output.
    pub fn exec_tty(
        &self,
        id: &str,
        cfg: &ExecConfig,
        stdout: std::process::Stdio,
        stderr: std::process::Stdio,
    ) -> Result<std::process::Child> {
        self.exec_with(id, cfg, true, std::process::Stdio::piped(), stdout, stderr)
    }

    /// Connects to the shim of a running container for `kubectl attach`: speak
    /// [`attach::Frame`]s, starting with `Hello`. Output from now on arrives as `Stdout`/`Stderr`
    /// frames; the shim closes the connection once the container has exited. Works for
    /// containers adopted after a daemon restart (the socket belongs to the shim).
    pub fn attach(&self, id: &str) -> Result<std::os::unix::net::UnixStream> {
        validate_id(id)?;
        if !self.status(id)?.is_running() {
            return Err(Error::Shim {
                id: id.into(),
                message: "container is not running".into(),
            });
        }
        let path = self.container_dir(id).join(shim::ATTACH_SOCKET);
        tty::connect(&path).map_err(io_err(format!("connecting to {}", path.display())))
    }

    /// Runs `cfg` in the container to completion and collects its output (exec probes).
    pub fn exec_output(&self, id: &str, cfg: &ExecConfig) -> Result<ExecOutput> {
        use std::process::Stdio;
        let child = self.exec(id, cfg, Stdio::null(), Stdio::piped(), Stdio::piped())?;
        let out = child
            .wait_with_output()
            .map_err(io_err("waiting for the exec shim"))?;
        Ok(ExecOutput {
            code: out.status.code().unwrap_or(255),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// The shim's pid for a running container (for diagnostics and memory accounting).
    pub fn shim_pid(&self, id: &str) -> Result<Option<i32>> {
        let p = self.container_dir(id).join("state.json");
        if !p.exists() {
            return Ok(None);
        }
        let st: StateFile = read_json(&p)?;
        Ok(sys::is_shim_of(st.shim_pid, id).then_some(st.shim_pid))
    }
}

fn read_dir(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    };
    for e in rd.flatten() {
        if let Some(name) = e.file_name().to_str() {
            if !name.starts_with('.') {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("abc-1_2.x").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("../x").is_err());
        assert!(validate_id(".hidden").is_err());
        assert!(validate_id("a/b").is_err());
    }

    #[test]
    fn state_round_trips() {
        let s = ContainerState::Exited {
            code: 137,
            signal: Some(9),
            started_at: None,
            finished_at: Utc::now(),
            oom_killed: true,
            error: None,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"status\":\"exited\""));
        assert_eq!(serde_json::from_str::<ContainerState>(&j).unwrap(), s);
    }
}
