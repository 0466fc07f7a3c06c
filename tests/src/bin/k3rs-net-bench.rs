//! `k3rs-net-bench`: pod → Service (ClusterIP) vs pod → pod IP TCP throughput, in the same run.
//!
//! Starts a real `k3rs server` with its kubelet in its own network namespace (the e2e harness's
//! `Cluster::start_node`), deploys a sink pod, a ClusterIP Service in front of it and a client
//! pod (all `busybox:test`), then from the client pod (`kubectl exec`) pushes the same amount of
//! zeros to the sink's pod IP and to the ClusterIP, alternating, for several rounds. Each transfer
//! is timed inside the pod with busybox ash's `$EPOCHREALTIME` (µs), so kubectl's overhead is not
//! counted. Prints MiB/s per path (median of rounds) and the ratio service/pod.
//!
//! busybox `nc` is not in the data path: the client runs `nc IP PORT -e busybox dd if=/dev/zero
//! bs=1M`, the sink `nc -ll -p PORT -e busybox dd of=/dev/null bs=1M`, so `nc` only connects or
//! accepts and then execs `dd`, which writes to / reads from the socket itself in 1 MiB blocks.
//! A loopback round inside the client pod (same tools, no veth, bridge or nftables) shows the
//! tools' ceiling. If iperf3 is installed on the host, it is also run in the two pods' network
//! namespaces (`nsenter --net=<sandbox>/ns/net`, the host's binary), one TCP flow per path.
//!
//! ```text
//! cargo build --release -p k3rs
//! sudo cargo run --release -p k3rs-e2e --bin k3rs-net-bench -- [--mib N] [--rounds N]
//! ```
//!
//! Needs root (the kubelet does). It is a binary, not a test: CI never runs it.

use anyhow::{bail, Context, Result};
use clap::Parser;
use k3rs_e2e::{eventually, release_binary, Cluster};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 5001;
const LOOPBACK_PORT: u16 = 5002;
const IPERF_PORT: u16 = 5201;
const SINK_IPERF_PORT: u16 = 5202;

/// pod → Service (ClusterIP) vs pod → pod IP TCP throughput. Needs root. Environment:
/// K3RS_E2E_LOG sets the server's RUST_LOG (default info).
#[derive(Parser)]
#[command(name = "k3rs-net-bench")]
struct Args {
    /// k3rs binary: the release build by default.
    #[arg(long, env = "K3RS_BIN", default_value_os_t = release_binary())]
    k3rs: PathBuf,
    /// MiB per transfer.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    mib: u64,
    /// Rounds; each pushes --mib MiB to the pod IP and to the ClusterIP.
    #[arg(long, default_value_t = 7, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// Length of each iperf3 run in seconds, 0 to skip iperf3.
    #[arg(long, default_value_t = 3)]
    iperf_seconds: u64,
}

fn manifests() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: sink, labels: {{app: net-bench-sink}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: sink
    image: busybox:test
    imagePullPolicy: Never
    command: ["nc", "-ll", "-p", "{PORT}", "-e", "busybox", "dd", "of=/dev/null", "bs=1M"]
    ports: [{{containerPort: {PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sink}}
spec:
  selector: {{app: net-bench-sink}}
  ports:
  - {{name: dd, port: {PORT}, targetPort: {PORT}}}
  - {{name: iperf, port: {IPERF_PORT}, targetPort: {IPERF_PORT}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sleep", "86400"]}}
"#
    )
}

fn running_pod(c: &Cluster, name: &str) -> Option<(String, String)> {
    let out = c
        .ok(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.phase} {.status.podIP} {.metadata.uid}",
        ])
        .ok()?;
    let mut parts = out.split_whitespace();
    let (phase, ip, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (phase == "Running").then(|| (ip.to_string(), uid.to_string()))
}

/// One timed push of `mib` MiB from the client pod to `ip:port`; MiB/s.
///
/// `nc ... -e busybox dd` execs `dd` on the connected socket, so the timing covers connect and
/// the transfer until the last block is handed to the kernel (at most a socket buffer, a few MiB,
/// before the receiver has it).
fn push(c: &Cluster, ip: &str, port: u16, mib: u64, setup: &str) -> Result<f64> {
    let script = format!(
        "{setup}s=$EPOCHREALTIME; nc {ip} {port} -e busybox dd if=/dev/zero bs=1M count={mib} 2>&1; \
         rc=$?; e=$EPOCHREALTIME; echo \"timing $rc $s $e\""
    );
    let out = c.ok(&["exec", "client", "--", "sh", "-c", &script])?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("timing "))
        .with_context(|| format!("no timing line from the client pod: {out}"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, rc, start, end] = fields[..] else {
        bail!("bad timing line {line:?}");
    };
    if rc != "0" || !out.contains(&format!("{mib}+0 records out")) {
        bail!("transfer to {ip}:{port} failed (exit {rc}): {out}");
    }
    let start: f64 = start.parse().context("start time")?;
    let end: f64 = end.parse().context("end time")?;
    let secs = end - start;
    if secs <= 0.0 {
        bail!("non-positive transfer time {secs} s");
    }
    Ok(mib as f64 / secs)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn summary(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "median {:7.1} MiB/s  (min {min:.1}, max {max:.1}, {} rounds)",
        median(v),
        v.len()
    )
}

/// The bind-mounted network namespace of the pod with `uid`: `<data dir>/…/sandboxes/<uid>/ns/net`.
fn pod_netns(data_dir: &Path, uid: &str) -> Option<PathBuf> {
    fn walk(dir: &Path, uid: &str, depth: usize) -> Option<PathBuf> {
        let candidate = dir.join("sandboxes").join(uid).join("ns/net");
        if candidate.exists() {
            return Some(candidate);
        }
        if depth == 0 {
            return None;
        }
        let entries = std::fs::read_dir(dir).ok()?;
        for e in entries.flatten() {
            let ft = e.file_type().ok()?;
            if ft.is_dir() && !ft.is_symlink() {
                if let Some(p) = walk(&e.path(), uid, depth - 1) {
                    return Some(p);
                }
            }
        }
        None
    }
    walk(data_dir, uid, 4)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages: other work on the machine skews the numbers.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Kills the iperf3 servers this run started, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// iperf3 from `client_ns` to `ip:port` (one TCP flow); Gbit/s received.
fn iperf(client_ns: &Path, ip: &str, port: u16, seconds: u64) -> Result<f64> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", client_ns.display()))
        .args(["--", "iperf3", "-J", "-c", ip, "-p"])
        .arg(port.to_string())
        .arg("-t")
        .arg(seconds.to_string())
        .output()
        .context("running iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stdout)))?;
    if let Some(e) = v.get("error") {
        bail!("iperf3 to {ip}:{port}: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no end.sum_received.bits_per_second in iperf3's output")
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
        "k3rs-net-bench: {} MiB per transfer, {} rounds, k3rs {}",
        args.mib,
        args.rounds,
        args.k3rs.display()
    );

    println!("  load average before: {}", load_average());
    let started = Instant::now();
    let c = Cluster::start_node()?;
    c.kubectl_stdin(None, &["apply", "-f", "-"], &manifests())?;
    let (sink_ip, sink_uid) = eventually(Duration::from_secs(90), || running_pod(&c, "sink"))
        .with_context(|| {
            format!(
                "the sink pod is not running: {}",
                c.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default()
            )
        })?;
    let (client_ip, client_uid) = eventually(Duration::from_secs(90), || running_pod(&c, "client"))
        .context("the client pod is not running")?;
    let cluster_ip = c
        .ok(&["get", "service", "sink", "-o", "jsonpath={.spec.clusterIP}"])?
        .trim()
        .to_string();
    if cluster_ip.is_empty() {
        bail!("the sink Service has no clusterIP");
    }
    println!(
        "  client pod {client_ip} → sink pod {sink_ip}:{PORT} / Service {cluster_ip}:{PORT} \
         (cluster up in {:.1} s)",
        started.elapsed().as_secs_f64()
    );

    // Both paths answer (the Service once its endpoints reach the proxy), then one warm-up
    // transfer each, not counted.
    for ip in [&sink_ip, &cluster_ip] {
        eventually(Duration::from_secs(60), || push(&c, ip, PORT, 1, "").ok())
            .with_context(|| format!("{ip}:{PORT} never accepted a transfer"))?;
        push(&c, ip, PORT, args.mib, "")?;
    }

    let mut pod = Vec::new();
    let mut svc = Vec::new();
    for round in 0..args.rounds {
        // Alternate which path goes first so drift (other load, page cache) hits both alike.
        let order: [(&str, &mut Vec<f64>); 2] = if round % 2 == 0 {
            [(&sink_ip, &mut pod), (&cluster_ip, &mut svc)]
        } else {
            [(&cluster_ip, &mut svc), (&sink_ip, &mut pod)]
        };
        for (ip, samples) in order {
            samples.push(push(&c, ip, PORT, args.mib, "")?);
        }
        println!(
            "  round {}: pod IP {:7.1} MiB/s, ClusterIP {:7.1} MiB/s",
            round + 1,
            pod[round],
            svc[round]
        );
    }

    // The same tools over the client pod's own loopback: no veth, bridge or nftables.
    let sink = format!(
        "nc -ll -p {LOOPBACK_PORT} -e busybox dd of=/dev/null bs=1M >/dev/null 2>&1 & \
         sink=$!; trap 'kill $sink' EXIT; sleep 0.3; "
    );
    let mut loopback = Vec::new();
    for _ in 0..args.rounds {
        loopback.push(push(&c, "127.0.0.1", LOOPBACK_PORT, args.mib, &sink)?);
    }

    let (pod_median, svc_median) = (median(&pod), median(&svc));
    println!();
    println!("  pod → pod IP     {}", summary(&pod));
    println!("  pod → ClusterIP  {}", summary(&svc));
    // Each round's two transfers ran back to back, so their ratio is less exposed to whatever
    // else the machine was doing than the ratio of the medians.
    let per_round: Vec<f64> = svc.iter().zip(&pod).map(|(s, p)| s / p).collect();
    println!(
        "  ratio service/pod: {:.2}  (median ClusterIP / median pod IP; median of per-round \
         ratios {:.2})",
        svc_median / pod_median,
        median(&per_round)
    );
    println!(
        "  pod loopback     {}  — the tools' ceiling (dd → socket → dd, no network)",
        summary(&loopback)
    );
    let loopback_median = median(&loopback);
    if pod_median > 0.8 * loopback_median {
        println!(
            "  note: pod IP throughput is {:.0}% of the tools' loopback ceiling: the tools \
             (busybox dd, 1 MiB writes; nc only connects) and the 2 cores limit the numbers, \
             not just the network path",
            100.0 * pod_median / loopback_median
        );
    }

    if args.iperf_seconds > 0 {
        if let Err(e) = iperf_line(&c, args, &sink_uid, &client_uid, &sink_ip, &cluster_ip) {
            println!("  iperf3: not measured: {e:#}");
        }
    }
    println!("  load average after: {}", load_average());
    println!(
        "\n  bench finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// iperf3 (the host's binary) in the two pods' network namespaces, pod IP vs ClusterIP.
fn iperf_line(
    c: &Cluster,
    args: &Args,
    sink_uid: &str,
    client_uid: &str,
    sink_ip: &str,
    cluster_ip: &str,
) -> Result<()> {
    if Command::new("iperf3").arg("--version").output().is_err() {
        bail!("iperf3 is not installed (tests/install-runtime-deps.sh installs it)");
    }
    let data = c.data_dir();
    let sink_ns = pod_netns(&data, sink_uid).context("the sink pod's network namespace")?;
    let client_ns = pod_netns(&data, client_uid).context("the client pod's network namespace")?;
    let mut servers = Children(Vec::new());
    // One server per path: the ClusterIP port maps to IPERF_PORT, the pod IP gets its own so a
    // slow teardown of one test never refuses the next.
    for port in [IPERF_PORT, SINK_IPERF_PORT] {
        servers.0.push(
            Command::new("nsenter")
                .arg(format!("--net={}", sink_ns.display()))
                .args(["--", "iperf3", "-s", "-p"])
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 -s in the sink pod's namespace")?,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut pod = Vec::new();
    let mut svc = Vec::new();
    for round in 0..3 {
        if round % 2 == 0 {
            pod.push(iperf(
                &client_ns,
                sink_ip,
                SINK_IPERF_PORT,
                args.iperf_seconds,
            )?);
            svc.push(iperf(
                &client_ns,
                cluster_ip,
                IPERF_PORT,
                args.iperf_seconds,
            )?);
        } else {
            svc.push(iperf(
                &client_ns,
                cluster_ip,
                IPERF_PORT,
                args.iperf_seconds,
            )?);
            pod.push(iperf(
                &client_ns,
                sink_ip,
                SINK_IPERF_PORT,
                args.iperf_seconds,
            )?);
        }
    }
    drop(servers);
    let (p, s) = (median(&pod), median(&svc));
    println!(
        "  iperf3 (host binary in the two pods' network namespaces, 1 TCP flow, {} s × 3): \
         pod IP {p:.1} Gbit/s, ClusterIP {s:.1} Gbit/s, ratio {:.2}",
        args.iperf_seconds,
        s / p
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nk3rs-net-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
