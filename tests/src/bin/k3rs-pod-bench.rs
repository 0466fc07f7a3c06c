//! `k3rs-pod-bench`: pod startup latency, node daemon memory and per-pod overhead.
//!
//! Starts a real `k3rs server` with its kubelet in its own network namespace (the e2e harness's
//! `Cluster::start_node`, `busybox:test` imported from the airgap directory, so the image is
//! present), then:
//!
//! 1. samples the server's VmRSS idle (node Ready, nothing scheduled);
//! 2. starts `kubectl get pods -w -o json --output-watch-events` and creates N pods
//!    (`busybox sleep`) with 10 concurrent `kubectl create -f -`; each pod's create time is the moment
//!    kubectl prints `pod/<name> created` (right after the API server answered), its Running time
//!    the first watch event with `status.phase == Running`. Prints p50/p99/max of create → Running
//!    and the time from the first create to the last Running;
//! 3. samples the server's VmRSS with N pods running, the shims' RSS and PSS (every
//!    `k3rs shim` process of this data dir, `/proc/<pid>/smaps_rollup`) per pod, and the drop of
//!    the host's MemAvailable per pod (shim + sandbox + container + kernel objects: veth, netns,
//!    overlay mount, cgroups);
//! 4. deletes the pods and reports the time until the watch saw the last one deleted;
//! 5. cold pull: removes `busybox:test` from the node's store (`k3rs images rm`, so no layer is
//!    left), starts Debian's docker-registry in the node's network namespace, pushes the busybox
//!    image to it and reports create → Running of one pod pulling it from `127.0.0.1:5000`;
//! 6. runs `runtime-bench` (k3rs-runtime's binary, next to the k3rs binary; built when missing):
//!    container start latency of our runtime against runc and crun on the same OCI bundle.
//!
//! ```text
//! cargo build --release -p k3rs
//! sudo cargo run --release -p k3rs-e2e --bin k3rs-pod-bench -- [--pods N]
//! ```
//!
//! Needs root (the kubelet does). It is a binary, not a test: CI never runs it. Targets (issue 3):
//! p99 under 1 s for 100 pods on 2 cores, per-pod overhead under 2 MB; a miss does not fail the
//! run (the exit code is non-zero only when the bench itself could not run).

use anyhow::{bail, Context, Result};
use clap::Parser;
use k3rs_e2e::{eventually, release_binary, Cluster};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LABEL: &str = "k3rs-pod-bench";
const TARGET_P99: Duration = Duration::from_secs(1);
const TARGET_OVERHEAD: u64 = 2 * 1000 * 1000;
/// Quiet time before a memory sample, so start-up allocations and page cache settle.
const SETTLE: Duration = Duration::from_secs(3);

/// Pod startup latency, daemon memory and per-pod overhead for many pods. Needs root.
/// Environment: K3RS_E2E_LOG sets the server's RUST_LOG (default info); the server log is copied
/// to $K3RS_POD_BENCH_LOG when that is set.
#[derive(Parser)]
#[command(name = "k3rs-pod-bench")]
struct Args {
    /// k3rs binary: the release build by default.
    #[arg(long, env = "K3RS_BIN", default_value_os_t = release_binary())]
    k3rs: PathBuf,
    /// Pods to create.
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pods: usize,
    /// kubectl create processes creating the pods at once (kubectl sends at most 5 requests/s
    /// after a burst of 10, so one process is slow).
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    parallel: usize,
    /// terminationGracePeriodSeconds of the pods (busybox sleep as PID 1 ignores SIGTERM, so
    /// teardown waits this long per pod, in parallel).
    #[arg(long, default_value_t = 1)]
    grace: u64,
    /// Longest wait in seconds for all pods to run, and for all to be deleted.
    #[arg(long, default_value = "300", value_parser = k3rs_e2e::parse_seconds)]
    timeout: Duration,
    /// Keep the pods running this many seconds more before the memory samples (to attach a
    /// profiler).
    #[arg(long, default_value = "0", value_parser = k3rs_e2e::parse_seconds)]
    hold: Duration,
    /// Containers started per runtime in the runtime comparison (0 skips it).
    #[arg(long, default_value_t = 50)]
    runtime_runs: usize,
}

fn pod_name(i: usize) -> String {
    format!("bench-{i:04}")
}

fn manifests(pods: &[usize], grace: u64) -> String {
    pods.iter()
        .map(|&i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, labels: {{app: {LABEL}}}}}\n\
                 spec:\n  terminationGracePeriodSeconds: {grace}\n  containers:\n  \
                 - {{name: sleep, image: busybox:test, imagePullPolicy: Never, \
                 command: [\"sleep\", \"86400\"]}}\n",
                pod_name(i)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// What the watch thread reports.
enum Event {
    /// `spec.nodeName` set (the scheduler bound the pod).
    Bound(String, Instant),
    Running(String, Instant),
    Deleted(String, Instant),
    Ended(String),
}

/// Kills a child process (the watch) however the run ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kubectl get pods -w` of the bench's pods; a thread turns its JSON stream into [`Event`]s.
fn start_watch(c: &Cluster) -> Result<(Guard, mpsc::Receiver<Event>)> {
    let mut child = c
        .kubectl_cmd(None)
        .args([
            "get",
            "pods",
            "-l",
            &format!("app={LABEL}"),
            "-w",
            "-o",
            "json",
            "--output-watch-events",
            "--request-timeout=0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl get -w")?;
    let stdout = child.stdout.take().context("watch stdout")?;
    let stderr = child.stderr.take().context("watch stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout))
            .into_iter::<serde_json::Value>();
        for v in stream {
            let now = Instant::now();
            let v = match v {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Event::Ended(format!("bad watch output: {e}")));
                    return;
                }
            };
            let name = v["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let bound = v["object"]["spec"]["nodeName"].is_string();
            let ev = match (v["type"].as_str(), v["object"]["status"]["phase"].as_str()) {
                (Some("DELETED"), _) => Event::Deleted(name, now),
                (_, Some("Running")) => Event::Running(name, now),
                _ if bound => Event::Bound(name, now),
                _ => continue,
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
        let mut err = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            err.push_str(&line);
            err.push('\n');
        }
        let _ = tx.send(Event::Ended(format!("the watch ended: {err}")));
    });
    Ok((Guard(child), rx))
}

type Creator = (Child, std::thread::JoinHandle<std::io::Result<()>>);

/// One `kubectl create -f -` for `pods`; a thread sends (name, when kubectl printed it created).
fn start_create(
    c: &Cluster,
    pods: &[usize],
    grace: u64,
    tx: mpsc::Sender<(String, Instant)>,
) -> Result<Creator> {
    let mut create = c
        .kubectl_cmd(None)
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kubectl create")?;
    let mut stdin = create.stdin.take().context("create stdin")?;
    let manifests = manifests(pods, grace);
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(manifests.as_bytes())
    });
    let stdout = create.stdout.take().context("create stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let now = Instant::now();
            if let Some(name) = line
                .strip_prefix("pod/")
                .and_then(|l| l.strip_suffix(" created"))
            {
                if tx.send((name.to_string(), now)).is_err() {
                    return;
                }
            }
        }
    });
    Ok((create, writer))
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad /proc/{pid}/stat"))
    };
    // utime and stime are fields 14 and 15, here 11 and 12 (0-based from state); 100 ticks/s.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn mem_available_kib() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no MemAvailable in /proc/meminfo")
}

/// RSS and PSS (KiB) of one process from `smaps_rollup`.
fn rss_pss_kib(pid: u32) -> Option<(u64, u64)> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("Rss:")?, field("Pss:")?))
}

/// Shim processes of this data dir: (pid, second argument: `run` or `sandbox`).
fn shims(data_dir: &Path) -> Vec<(u32, String)> {
    let data = data_dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) == Some("shim") && args.iter().any(|a| a.contains(&data))
        {
            out.push((pid, args.get(2).cloned().unwrap_or_default()));
        }
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn run(args: &Args) -> Result<()> {
    let is_root = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !is_root {
        bail!("needs root (the kubelet creates network namespaces and containers)");
    }
    if !args.k3rs.exists() {
        bail!(
            "{} does not exist: run `cargo build --release -p k3rs` or pass --k3rs",
            args.k3rs.display()
        );
    }
    // The harness starts `$K3RS_BIN`; set before any thread exists.
    std::env::set_var("K3RS_BIN", &args.k3rs);
    println!(
        "k3rs-pod-bench: {} pods (busybox sleep, image present), k3rs {}",
        args.pods,
        args.k3rs.display()
    );

    let c = Cluster::start_node()?;
    let result = measure(&c, args)
        .and_then(|()| deployment(&c, args))
        .and_then(|()| cold_pull(&c, args));
    if let Some(dest) = std::env::var_os("K3RS_POD_BENCH_LOG") {
        let _ = std::fs::write(&dest, c.log());
    }
    drop(c);
    result?;
    runtime_comparison(args)
}

/// A Deployment of `--pods` replicas (what `kubectl create deployment --replicas=N` creates,
/// with the bench's short grace period): create → all bound by the scheduler, and → all Running
/// on this node, through the ReplicaSet controller, the scheduler and the kubelet.
fn deployment(c: &Cluster, args: &Args) -> Result<()> {
    let (_watch, events) = start_watch(c)?;
    std::thread::sleep(Duration::from_secs(2));
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {LABEL}}}\nspec:\n  \
         replicas: {}\n  selector: {{matchLabels: {{app: {LABEL}}}}}\n  template:\n    \
         metadata: {{labels: {{app: {LABEL}}}}}\n    spec:\n      \
         terminationGracePeriodSeconds: {}\n      containers:\n      \
         - {{name: sleep, image: busybox:test, imagePullPolicy: Never, \
         command: [\"sleep\", \"86400\"]}}\n",
        args.pods, args.grace
    );
    let created = Instant::now();
    c.kubectl_stdin(None, &["create", "-f", "-"], &manifest)?;
    let (mut bound, mut running) = (HashMap::new(), HashMap::new());
    let deadline = created + args.timeout;
    while running.len() < args.pods {
        match events.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Bound(name, t)) => {
                bound.entry(name).or_insert(t);
            }
            Ok(Event::Running(name, t)) => {
                bound.entry(name.clone()).or_insert(t);
                running.entry(name).or_insert(t);
            }
            Ok(Event::Deleted(name, _)) => bail!("pod {name} was deleted during the rollout"),
            Ok(Event::Ended(why)) => bail!("{why}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the watch thread ended"),
        }
        if Instant::now() > deadline {
            bail!(
                "after {:?}: {} bound, {} running",
                args.timeout,
                bound.len(),
                running.len()
            );
        }
    }
    let last = |m: &HashMap<String, Instant>| {
        m.values()
            .max()
            .map_or(Duration::ZERO, |t| t.duration_since(created))
    };
    println!();
    println!(
        "Deployment of {} replicas (create → pods through ReplicaSet, scheduler, kubelet)",
        args.pods
    );
    println!(
        "  all {} bound {}   all {} Running on this node {}",
        bound.len(),
        ms(last(&bound)),
        running.len(),
        ms(last(&running))
    );
    c.ok(&["delete", "deployment", LABEL, "--wait=false"])?;
    let mut deleted = 0;
    let deadline = Instant::now() + args.timeout;
    while deleted < args.pods && Instant::now() < deadline {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Deleted(..)) => deleted += 1,
            Ok(Event::Ended(why)) => bail!("{why}"),
            _ => {}
        }
    }
    if deleted < args.pods {
        bail!("only {deleted} of {} Deployment pods went away", args.pods);
    }
    Ok(())
}

/// create → Running of one pod whose image is pulled from a local registry with no layer of it
/// in the node's store.
fn cold_pull(c: &Cluster, args: &Args) -> Result<()> {
    const PORT: u16 = 5000;
    let rm = std::process::Command::new(&args.k3rs)
        .args(["images", "rm", "busybox:test", "--data-dir"])
        .arg(c.data_dir())
        .output()
        .context("k3rs images rm")?;
    let layers_left = !rm.status.success();
    if layers_left {
        println!(
            "cold pull: busybox:test could not be removed ({}); its layers stay cached",
            String::from_utf8_lossy(&rm.stderr).trim()
        );
    }
    let registry = k3rs_e2e::registry::Registry::start(c, PORT, None)?;
    registry.push_busybox("bench/busybox:cold", None)?;
    let (_watch, events) = start_watch(c)?;
    std::thread::sleep(Duration::from_secs(2));
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: cold-pull, labels: {{app: {LABEL}}}}}\n\
         spec:\n  terminationGracePeriodSeconds: {}\n  containers:\n  \
         - {{name: sleep, image: \"127.0.0.1:{PORT}/bench/busybox:cold\", \
         command: [\"sleep\", \"86400\"]}}\n",
        args.grace
    );
    c.kubectl_stdin(None, &["create", "-f", "-"], &yaml)
        .context("creating the cold-pull pod")?;
    let created = Instant::now();
    let deadline = created + args.timeout;
    let running = loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Running(name, t)) if name == "cold-pull" => break t,
            Ok(Event::Ended(why)) => bail!("{why}"),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the watch thread ended"),
        }
        if Instant::now() > deadline {
            bail!(
                "the cold-pull pod did not run: {}",
                c.ok(&["describe", "pod", "cold-pull"]).unwrap_or_default()
            );
        }
    };
    println!();
    println!(
        "cold pull: create → Running of 1 pod, image 127.0.0.1:{PORT}/bench/busybox:cold from docker-registry{}: {}",
        if layers_left { " (layers cached)" } else { " (no layer cached)" },
        ms(running.saturating_duration_since(created))
    );
    let _ = c.ok(&["delete", "pod", "cold-pull", "--wait=true"]);
    Ok(())
}

/// Runs k3rs-runtime's `runtime-bench`: our runtime against runc and crun on one bundle.
fn runtime_comparison(args: &Args) -> Result<()> {
    if args.runtime_runs == 0 {
        return Ok(());
    }
    let bench = args
        .k3rs
        .parent()
        .context("the k3rs binary has no directory")?
        .join("runtime-bench");
    if !bench.exists() {
        println!("building {} ...", bench.display());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "k3rs-runtime",
                "--bin",
                "runtime-bench",
            ])
            .status()
            .context("cargo build runtime-bench")?;
        if !st.success() || !bench.exists() {
            bail!("could not build {}", bench.display());
        }
    }
    println!();
    let st = std::process::Command::new(&bench)
        .env("K3RS_BIN", &args.k3rs)
        .arg(args.runtime_runs.to_string())
        .status()
        .with_context(|| format!("running {}", bench.display()))?;
    if !st.success() {
        bail!("{} failed: {st}", bench.display());
    }
    Ok(())
}

fn measure(c: &Cluster, args: &Args) -> Result<()> {
    let pid = c.pid().context("no server process")?;
    let node = eventually(Duration::from_secs(60), || {
        let out = c
            .ok(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[0].status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .ok()?;
        (out.trim() == "True").then_some(())
    });
    node.context("the node did not become Ready")?;
    // The default ServiceAccount must exist before pods can be created.
    eventually(Duration::from_secs(30), || {
        c.ok(&["get", "serviceaccount", "default"]).ok()
    })
    .context("no default ServiceAccount")?;
    std::thread::sleep(SETTLE);
    let rss_idle = status_kib(pid, "VmRSS:")?;
    let avail_before = mem_available_kib()?;

    let (_watch, events) = start_watch(c)?;
    // The watch has no pods to print; give it time to connect before the first create.
    std::thread::sleep(Duration::from_secs(2));

    let cpu_before = cpu_time(pid)?;
    let (ctx, created_rx) = mpsc::channel();
    let first_create = Instant::now();
    let mut creators = Vec::new();
    for k in 0..args.parallel {
        let names: Vec<usize> = (0..args.pods).filter(|i| i % args.parallel == k).collect();
        if names.is_empty() {
            continue;
        }
        creators.push(start_create(c, &names, args.grace, ctx.clone())?);
    }
    drop(ctx);

    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + args.timeout;
    while running.len() < args.pods || created.len() < args.pods {
        while let Ok((name, t)) = created_rx.try_recv() {
            created.insert(name, t);
        }
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Running(name, t)) => {
                running.entry(name).or_insert(t);
            }
            Ok(Event::Bound(..)) => {}
            Ok(Event::Deleted(name, _)) => bail!("pod {name} was deleted during the start phase"),
            Ok(Event::Ended(why)) => bail!("{why}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the watch thread ended"),
        }
        if Instant::now() > deadline {
            bail!(
                "after {:?}: {} created, {} running; pods:\n{}",
                args.timeout,
                created.len(),
                running.len(),
                c.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default()
            );
        }
    }
    for (child, writer) in creators {
        let out = child.wait_with_output().context("kubectl create")?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
            .context("writing manifests to kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let last_running = running.values().max().copied().unwrap_or(first_create);
    let last_created = created.values().max().copied().unwrap_or(first_create);
    let mut latencies: Vec<Duration> = created
        .iter()
        .map(|(name, t)| {
            running
                .get(name)
                .map_or(Duration::ZERO, |r| r.saturating_duration_since(*t))
        })
        .collect();
    latencies.sort_unstable();

    let cpu_start = cpu_time(pid)?.saturating_sub(cpu_before);
    if !args.hold.is_zero() {
        println!("all {} pods running; holding {:?}", args.pods, args.hold);
        std::thread::sleep(args.hold);
    }
    let cpu_settle = cpu_time(pid)?;
    std::thread::sleep(SETTLE);
    let cpu_idle = cpu_time(pid)?.saturating_sub(cpu_settle);
    // Every watch event of a running pod after all are running is a status write nobody needed.
    let idle_writes = events
        .try_iter()
        .filter(|e| matches!(e, Event::Running(..)))
        .count();
    let rss_loaded = status_kib(pid, "VmRSS:")?;
    let avail_after = mem_available_kib()?;
    let shim_list = shims(&c.data_dir());
    let (mut shim_rss, mut shim_pss, mut run_shims, mut sandbox_shims) = (0u64, 0u64, 0, 0);
    for (pid, kind) in &shim_list {
        if let Some((rss, pss)) = rss_pss_kib(*pid) {
            shim_rss += rss;
            shim_pss += pss;
        }
        match kind.as_str() {
            "sandbox" => sandbox_shims += 1,
            _ => run_shims += 1,
        }
    }
    let pods = args.pods as u64;
    let avail_drop = avail_before.saturating_sub(avail_after);

    let p50 = pct(&latencies, 50.0);
    let p99 = pct(&latencies, 99.0);
    println!();
    println!(
        "pod startup (create → Running through a watch), {} pods",
        args.pods
    );
    println!(
        "  p50 {}  p99 {}  max {}   target p99 < {}: {}",
        ms(p50),
        ms(p99),
        ms(pct(&latencies, 100.0)),
        ms(TARGET_P99),
        verdict(p99 < TARGET_P99)
    );
    println!(
        "  creates took {} ({} kubectl create -f at once); first create → last Running {}",
        ms(last_created.duration_since(first_create)),
        args.parallel,
        ms(last_running.duration_since(first_create))
    );
    println!(
        "node daemon CPU: {} during the start phase; {:.1}% of one core with {} pods running",
        ms(cpu_start),
        cpu_idle.as_secs_f64() * 100.0 / SETTLE.as_secs_f64(),
        args.pods
    );
    println!(
        "pod updates seen by the watch while all pods ran ({:?} + hold): {idle_writes}",
        SETTLE
    );
    println!("node daemon (k3rs server, pid {pid}) VmRSS");
    println!(
        "  idle {}   with {} pods {}   (+{} per pod)",
        mib(rss_idle),
        args.pods,
        mib(rss_loaded),
        format_kib(rss_loaded.saturating_sub(rss_idle) / pods)
    );
    println!(
        "per-pod overhead ({} container shims, {} sandbox processes)",
        run_shims, sandbox_shims
    );
    println!(
        "  shim PSS {} per pod (RSS {})   target < 2 MB: {}",
        format_kib(shim_pss / pods),
        format_kib(shim_rss / pods),
        verdict(shim_pss * 1024 / pods < TARGET_OVERHEAD)
    );
    println!(
        "  host MemAvailable drop {} per pod (shim + sandbox namespaces, veth, overlay, cgroups, \
         container, page cache)",
        format_kib(avail_drop / pods)
    );

    // Teardown.
    let started = Instant::now();
    // A delete can lose a race with a status write (409 Conflict): delete what is left again.
    let selector = format!("app={LABEL}");
    let mut tries = 0;
    while let Err(e) = c.ok(&["delete", "pods", "-l", &selector, "--wait=false"]) {
        tries += 1;
        if tries == 5 {
            return Err(e);
        }
        eprintln!(
            "delete failed, retrying: {}",
            e.to_string().lines().last().unwrap_or_default()
        );
    }
    let mut deleted = 0usize;
    let deadline = Instant::now() + args.timeout;
    let mut last_deleted = started;
    while deleted < args.pods {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Deleted(_, t)) => {
                deleted += 1;
                last_deleted = t;
            }
            Ok(Event::Running(..) | Event::Bound(..)) => {}
            Ok(Event::Ended(why)) => bail!("{why}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the watch thread ended"),
        }
        if Instant::now() > deadline {
            bail!(
                "after {:?}: {deleted} of {} pods deleted",
                args.timeout,
                args.pods
            );
        }
    }
    let teardown = last_deleted.duration_since(started);
    let left = eventually(Duration::from_secs(30), || {
        let n = shims(&c.data_dir()).len();
        (n == 0).then_some(())
    });
    println!(
        "teardown: delete → last pod gone {} (grace period {} s); shims left: {}",
        ms(teardown),
        args.grace,
        if left.is_some() {
            "none".to_string()
        } else {
            shims(&c.data_dir()).len().to_string()
        }
    );
    std::thread::sleep(SETTLE);
    println!(
        "node daemon VmRSS after teardown {}",
        mib(status_kib(pid, "VmRSS:")?)
    );
    Ok(())
}

fn format_kib(kib: u64) -> String {
    if kib >= 1024 {
        mib(kib)
    } else {
        format!("{kib} KiB")
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k3rs-pod-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
