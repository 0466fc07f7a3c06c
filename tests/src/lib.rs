//! End-to-end harness: starts the real `k3rs` binary on a free loopback port with its own data
//! dir and drives it with the real kubectl. A cluster with a kubelet runs in its own network
//! namespace ([`NetNs`]), so parallel tests each have their own `cni0` and nftables tables.

pub mod fake_kubelet;
pub mod images;
pub mod registry;

use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `k3rs` binary under test: `$K3RS_BIN`, else the workspace's debug build.
pub fn k3rs_bin() -> PathBuf {
    if let Ok(p) = std::env::var("K3RS_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("k3rs")
}

/// kubectl of a given minor version ("1.27"), or the default `/usr/bin/kubectl`.
pub fn kubectl_path(version: Option<&str>) -> PathBuf {
    match version {
        Some(v) => PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{v}")),
        None => PathBuf::from("/usr/bin/kubectl"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running single-node server.
pub struct Cluster {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    extra_args: Vec<String>,
    /// Run the in-process kubelet (needs root); API-only tests leave it off.
    agent: bool,
    /// The network namespace a node cluster runs in (server and kubectl alike).
    netns: Option<NetNs>,
}

/// A network namespace made for one test, `k3e-<pid>-<n>`, joined to the host by a veth pair with
/// a private /30 (from 172.31.0.0/16): the host side holds the first address, the namespace side
/// (`eth0`, the node IP) the second and a default route via the host side. Dropping it removes
/// the namespace and the host side veth.
pub struct NetNs {
    name: String,
    host_veth: String,
    host_ip: std::net::Ipv4Addr,
    node_ip: std::net::Ipv4Addr,
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetNs {
    pub fn create() -> Result<NetNs> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("k3e-{pid}-{n}");
        let host_veth = format!("k3h{:x}-{n}", pid);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &host_veth])
            .output();
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on Drop cleans up, whatever fails next.
        let mut ns = NetNs {
            name,
            host_veth,
            host_ip: std::net::Ipv4Addr::UNSPECIFIED,
            node_ip: std::net::Ipv4Addr::UNSPECIFIED,
        };
        let name = ns.name.clone();
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &ns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &name,
        ]))?;
        // A /30 per (pid, n), skipping any the host already uses.
        let used = run_ok(Command::new("ip").args(["-4", "-o", "addr", "show"]))?
            + &run_ok(Command::new("ip").args(["-4", "route", "show"]))?;
        let start = (pid.wrapping_mul(7919).wrapping_add(n.wrapping_mul(104729))) % 16384;
        let mut chosen = None;
        for i in 0..16384u32 {
            let k = (start + i) % 16384;
            let base = u32::from(std::net::Ipv4Addr::new(172, 31, 0, 0)) + k * 4;
            let net = std::net::Ipv4Addr::from(base);
            let host = std::net::Ipv4Addr::from(base + 1);
            let node = std::net::Ipv4Addr::from(base + 2);
            if used.contains(&format!("{net}/30"))
                || used.contains(&format!("{host}/"))
                || used.contains(&format!("{node}/"))
            {
                continue;
            }
            chosen = Some((host, node));
            break;
        }
        let (host, node) = chosen.context("no free /30 in 172.31.0.0/16")?;
        ns.host_ip = host;
        ns.node_ip = node;
        run_ok(Command::new("ip").args([
            "addr",
            "add",
            &format!("{host}/30"),
            "dev",
            &ns.host_veth,
        ]))?;
        run_ok(Command::new("ip").args(["link", "set", &ns.host_veth, "up"]))?;
        run_ok(Command::new("ip").args([
            "-n",
            &name,
            "addr",
            "add",
            &format!("{node}/30"),
            "dev",
            "eth0",
        ]))?;
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "eth0", "up"]))?;
        run_ok(Command::new("ip").args([
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            &host.to_string(),
        ]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// The address inside the namespace (the node IP).
    pub fn node_ip(&self) -> std::net::Ipv4Addr {
        self.node_ip
    }

    /// The host side of the veth pair: the node's "upstream".
    pub fn host_side_ip(&self) -> std::net::Ipv4Addr {
        self.host_ip
    }

    /// A command that runs `program` in the namespace (`nsenter --net`, which, unlike
    /// `ip netns exec`, makes no new mount namespace).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .output();
    }
}

impl Cluster {
    pub fn start() -> Result<Cluster> {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("k3rs-e2e-").tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let mut c = Cluster {
            child: None,
            port: free_port(),
            kubeconfig,
            dir,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            agent: false,
            netns: None,
        };
        c.spawn()?;
        Ok(c)
    }

    /// A server with its kubelet, and `busybox:test` in the airgap images directory.
    pub fn start_node() -> Result<Cluster> {
        Self::start_node_with(&[])
    }

    /// [`Cluster::start_node`] with extra `k3rs server` flags.
    pub fn start_node_with(extra: &[&str]) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("k3rs-e2e-node-")
            .tempdir_in("/var/tmp")?;
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let mut c = Cluster {
            child: None,
            port: free_port(),
            kubeconfig,
            dir,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            agent: true,
            netns: Some(NetNs::create()?),
        };
        let images = c.data_dir().join("agent/images");
        std::fs::create_dir_all(&images)?;
        images::write_busybox_archive(&images.join("busybox.tar"), "test")?;
        c.spawn()?;
        Ok(c)
    }

    /// The node name the server registers (its hostname).
    pub fn node_name(&self) -> Result<String> {
        Ok(self
            .ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])?
            .trim()
            .to_string())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The network namespace a node cluster runs in (None for API-only clusters).
    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    /// The node IP: the namespace's address for a node cluster, else 127.0.0.1.
    pub fn node_ip(&self) -> std::net::Ipv4Addr {
        self.netns
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST, NetNs::node_ip)
    }

    /// The host side of the namespace's veth (a node cluster only).
    pub fn host_side_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.netns.as_ref().map(NetNs::host_side_ip)
    }

    /// A command for `program` where the cluster runs: in its namespace, or here.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    /// Runs a command where the cluster runs and demands success; returns stdout.
    pub fn in_netns(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().context("empty command")?;
        run_ok(self.command(program).args(rest))
    }

    /// A node's upstream resolver (cluster DNS forwarding, dnsPolicy Default pods) is the host
    /// side of its own veth, where nothing answers: name lookups of a test never leave the
    /// machine. A test that sets `K3RS_RESOLV_CONF` itself keeps its own.
    fn resolv_conf_env(&self) -> Result<Option<(&'static str, PathBuf)>> {
        let Some(host_side) = self.host_side_ip() else {
            return Ok(None);
        };
        if std::env::var_os("K3RS_RESOLV_CONF").is_some() {
            return Ok(None);
        }
        let path = self.dir.path().join("resolv.conf");
        std::fs::write(&path, format!("nameserver {host_side}\n"))?;
        Ok(Some(("K3RS_RESOLV_CONF", path)))
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))?;
        let child = self
            .command(k3rs_bin())
            .arg("server")
            .arg("--config=/dev/null")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--https-listen-port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--node-ip={}", self.node_ip()))
            .arg(format!("--write-kubeconfig={}", self.kubeconfig.display()))
            .args((!self.agent).then_some("--disable-agent"))
            .args(&self.extra_args)
            .envs(self.resolv_conf_env()?)
            .env(
                "RUST_LOG",
                std::env::var("K3RS_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", k3rs_bin().display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    /// Waits until `/readyz` answers ok through kubectl.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("k3rs exited early with {status}; log:\n{}", self.log());
                }
            }
            if self.kubeconfig.exists() {
                let out = self.kubectl(&["get", "--raw", "/readyz"])?;
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("k3rs not ready in {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`, as a crash.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_version(None, args)
    }

    pub fn kubectl_version(&self, version: Option<&str>, args: &[&str]) -> Result<Output> {
        self.kubectl_cmd(version)
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// A kubectl command with this cluster's kubeconfig and a private cache dir.
    pub fn kubectl_cmd(&self, version: Option<&str>) -> Command {
        let mut cmd = self.command(kubectl_path(version));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .arg(format!(
                "--cache-dir={}",
                self.dir
                    .path()
                    .join(format!("cache-{}", version.unwrap_or("default")))
                    .display()
            ));
        cmd
    }

    /// Runs kubectl with stdin and demands success; returns stdout.
    pub fn kubectl_stdin(
        &self,
        version: Option<&str>,
        args: &[&str],
        stdin: &str,
    ) -> Result<String> {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(version)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl and demands success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_version(None, args)
    }

    pub fn ok_version(&self, version: Option<&str>, args: &[&str]) -> Result<String> {
        let out = self.kubectl_version(version, args)?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl and demands failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if out.status.success() {
            bail!(
                "kubectl {args:?} unexpectedly succeeded: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.ok(&full)?)?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.agent {
            // Containers outlive the node daemon by design. `k3rs killall`, run in the node's
            // network namespace, stops this data dir's containers and removes their sandboxes,
            // pod cgroups, overlays and network; the sweep below catches what it could not.
            let data = self.data_dir();
            if self.netns.is_some() {
                let _ = self
                    .command(k3rs_bin())
                    .arg("killall")
                    .arg(format!("--data-dir={}", data.display()))
                    .output();
            }
            let _ = Command::new("pkill")
                .args(["-KILL", "-f", &format!("k3rs shim .*{}", data.display())])
                .status();
            std::thread::sleep(Duration::from_millis(200));
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let prefix = data.to_string_lossy().into_owned();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").args(["-l", p]).status();
            }
        }
    }
}

/// The release build of k3rs the benchmarks run (`<workspace>/target/release/k3rs`, honouring
/// CARGO_TARGET_DIR), so their numbers are not debug-build numbers.
pub fn release_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("release")
        .join("k3rs")
}

/// A whole number of seconds as a Duration (benchmark flags).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))
}

/// Whether the tests run as root: node clusters (kubelet, netns, nftables) need it.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
