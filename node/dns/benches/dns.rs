//! `cargo bench -p k3rs-dns`: the server on loopback with 1,000 services (900 ClusterIP, 100
//! headless with 3 endpoints each). Prints queries/s and p50/p99 latency from a Rust UDP client
//! with many queries in flight, then queries/s and mean latency from `dnsperf` when installed.
//! Cluster-name queries only (A, SRV, PTR, NXDOMAIN) — forwarding is bounded by the upstream.

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k3rs_dns::{Config, DnsServer, Records};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const SERVICES: usize = 1000;
const HEADLESS: usize = 100;
const CLIENTS: usize = 32;
const RUN: Duration = Duration::from_secs(5);

fn objects() -> (Vec<Value>, Vec<Value>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..SERVICES {
        let ns = format!("ns{}", i % 20);
        let name = format!("svc{i}");
        let headless = i < HEADLESS;
        let ip = if headless {
            "None".to_string()
        } else {
            format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250)
        };
        services.push(json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}));
        if headless {
            let eps: Vec<Value> = (0..3)
                .map(|j| json!({"addresses": [format!("10.42.{}.{}", i, j + 2)], "hostname": format!("{name}-{j}"), "conditions": {"ready": true}}))
                .collect();
            slices.push(
                json!({"metadata": {"name": format!("{name}-x"), "namespace": ns,
                "labels": {"kubernetes.io/service-name": name}},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "endpoints": eps}),
            );
        }
    }
    (services, slices)
}

/// The query mix: mostly service A lookups as pods do them, plus SRV, PTR and NXDOMAIN.
fn names() -> Vec<(String, RecordType)> {
    let mut q = Vec::new();
    for i in 0..SERVICES {
        let ns = format!("ns{}", i % 20);
        q.push((format!("svc{i}.{ns}.svc.cluster.local."), RecordType::A));
        if i % 10 == 0 {
            q.push((
                format!("_http._tcp.svc{i}.{ns}.svc.cluster.local."),
                RecordType::SRV,
            ));
            q.push((
                format!("svc{i}.{ns}.svc.cluster.local.{ns}.svc.cluster.local."),
                RecordType::A,
            ));
        }
        if i >= HEADLESS && i % 10 == 1 {
            q.push((
                format!("{}.{}.43.10.in-addr.arpa.", 1 + i % 250, 1 + i / 250),
                RecordType::PTR,
            ));
        }
    }
    q
}

fn encode(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    m.to_vec().expect("encode")
}

async fn rust_client(at: SocketAddr, queries: Arc<Vec<Vec<u8>>>) -> (u64, Vec<Duration>, u64) {
    let deadline = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let queries = queries.clone();
        tasks.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            sock.connect(at).await.expect("connect");
            let mut lat = Vec::new();
            let mut lost = 0u64;
            let mut buf = vec![0u8; 4096];
            let mut i = c * 7919;
            let mut id: u16 = 0;
            while Instant::now() < deadline {
                let mut q = queries[i % queries.len()].clone();
                i += 1;
                id = id.wrapping_add(1);
                q[..2].copy_from_slice(&id.to_be_bytes());
                let t = Instant::now();
                sock.send(&q).await.expect("send");
                loop {
                    match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                        Ok(Ok(n)) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                            lat.push(t.elapsed());
                            break;
                        }
                        Ok(Ok(_)) => continue,
                        _ => {
                            lost += 1;
                            break;
                        }
                    }
                }
            }
            (lat, lost)
        }));
    }
    let mut all = Vec::new();
    let mut lost = 0;
    for t in tasks {
        let (l, x) = t.await.expect("client task");
        all.extend(l);
        lost += x;
    }
    (all.len() as u64, all, lost)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn dnsperf(at: SocketAddr, queries: &[(String, RecordType)]) {
    let Ok(out) = Command::new("dnsperf").arg("-h").output() else {
        println!("dnsperf: not installed (tests/install-runtime-deps.sh installs it)");
        return;
    };
    let _ = out;
    let dir = std::env::temp_dir().join(format!("k3rs-dns-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("queries.txt");
    let text: String = queries
        .iter()
        .map(|(n, t)| format!("{} {}\n", n.trim_end_matches('.'), t))
        .collect();
    std::fs::write(&file, text).expect("query file");
    let out = Command::new("dnsperf")
        .args(["-s", &at.ip().to_string(), "-p", &at.port().to_string()])
        .args([
            "-d",
            file.to_str().unwrap_or_default(),
            "-l",
            "10",
            "-c",
            "8",
            "-q",
            "200",
        ])
        .output()
        .expect("dnsperf");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for l in stdout.lines() {
        let l = l.trim();
        if l.starts_with("Queries sent")
            || l.starts_with("Queries completed")
            || l.starts_with("Queries lost")
            || l.starts_with("Response codes")
            || l.starts_with("Queries per second")
            || l.starts_with("Average Latency")
            || l.starts_with("Latency StdDev")
        {
            println!("dnsperf: {l}");
        }
    }
}

fn main() {
    // Two worker threads, as the node runs its daemon.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (services, slices) = objects();
        let dns_ip = IpAddr::V4(Ipv4Addr::new(10, 43, 0, 10));
        let t = Instant::now();
        let records = Records::new("cluster.local", dns_ip, k3rs_dns::TTL, &services, &slices)
            .expect("records");
        let build = t.elapsed();
        let t = Instant::now();
        for _ in 0..10 {
            records.replace(&services, &slices).expect("rebuild");
        }
        println!(
            "zone: {SERVICES} services ({HEADLESS} headless x 3 endpoints), {} names; first build {:.1} ms, rebuild {:.1} ms",
            records.zone().len(),
            build.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3 / 10.0
        );
        let cfg = Config::new("127.0.0.1:0".parse().expect("addr"), "cluster.local", dns_ip, Vec::new());
        let server = DnsServer::start(&cfg, records).await.expect("server");
        let at = server.local_addr();
        let mix = names();
        let encoded: Arc<Vec<Vec<u8>>> = Arc::new(mix.iter().map(|(n, t)| encode(n, *t)).collect());
        let (n, mut lat, lost) = rust_client(at, encoded).await;
        lat.sort();
        println!(
            "rust client ({CLIENTS} in flight, {}s): {:.0} queries/s, p50 {:.0} us, p99 {:.0} us, lost {lost}",
            RUN.as_secs(),
            n as f64 / RUN.as_secs_f64(),
            pct(&lat, 0.50).as_secs_f64() * 1e6,
            pct(&lat, 0.99).as_secs_f64() * 1e6
        );
        let mix2 = mix.clone();
        tokio::task::spawn_blocking(move || dnsperf(at, &mix2))
            .await
            .expect("dnsperf task");
        server.shutdown().await.expect("shutdown");
    });
}
