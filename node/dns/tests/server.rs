//! The DNS server on a loopback port, fed by a real API (in-memory store) through watches, queried
//! with hickory-resolver and with `dig`; a fake upstream on loopback checks forwarding, including
//! the TCP retry of a truncated answer.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;
use k3rs_apiserver::local_client::LocalClient;
use k3rs_client::{Client, DeleteParams, Patch, Resource};
use k3rs_dns::{Config, DnsServer, Records};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);

async fn api_client() -> Arc<dyn Client> {
    LocalClient::in_memory().await.expect("api")
}

fn services() -> Resource {
    Resource::core("services")
}

fn slices() -> Resource {
    Resource::new("discovery.k8s.io", "v1", "endpointslices")
}

async fn create(c: &Arc<dyn Client>, r: &Resource, ns: &str, obj: Value) {
    c.create(r, Some(ns), obj, "test").await.expect("create");
}

fn svc(name: &str, cluster_ip: &str, ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"clusterIP": cluster_ip, "ports": ports}})
}

fn slice(name: &str, svc: &str, endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4",
           "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// A fake upstream nameserver: `*.example.test` A → 192.0.2.1; `big.example.test` is truncated
/// over UDP and has 60 addresses over TCP. Counts the TCP queries it answered.
struct FakeUpstream {
    addr: SocketAddr,
    tcp_queries: Arc<std::sync::atomic::AtomicUsize>,
    udp_queries: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn upstream_answer(query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    if name == "big.example.test." {
        if tcp {
            for i in 0..60u8 {
                m.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, i)),
                ));
            }
        } else {
            m.metadata.truncation = true;
        }
    } else if name.ends_with(".example.test.") && question.query_type() == RecordType::A {
        m.add_answer(Record::from_rdata(
            question.name().clone(),
            60,
            RData::A(A::new(192, 0, 2, 1)),
        ));
    } else {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    m.to_vec().ok()
}

async fn fake_upstream() -> FakeUpstream {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let tcp_queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let udp_queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let udp_counter = udp_queries.clone();
    let t1 = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            udp_counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(a) = upstream_answer(&buf[..n], false) {
                let _ = udp.send_to(&a, from).await;
            }
        }
    });
    let counter = tcp_queries.clone();
    let t2 = tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(len) = s.read_u16().await else { return };
                let mut q = vec![0u8; len as usize];
                if s.read_exact(&mut q).await.is_err() {
                    return;
                }
                if let Some(a) = upstream_answer(&q, true) {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut out = (a.len() as u16).to_be_bytes().to_vec();
                    out.extend(a);
                    let _ = s.write_all(&out).await;
                }
            });
        }
    });
    FakeUpstream {
        addr,
        tcp_queries,
        udp_queries,
        tasks: vec![t1, t2],
    }
}

fn resolver(at: SocketAddr) -> Resolver<TokioRuntimeProvider> {
    let mut udp = ConnectionConfig::udp();
    udp.port = at.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = at.port();
    let ns = NameServerConfig::new(at.ip(), true, vec![udp, tcp]);
    let mut b = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    b.options_mut().cache_size = 0;
    b.options_mut().attempts = 1;
    b.options_mut().ndots = 0;
    b.options_mut().timeout = Duration::from_secs(3);
    b.build().expect("resolver")
}

async fn lookup(
    r: &Resolver<TokioRuntimeProvider>,
    name: &str,
    t: RecordType,
) -> Result<Vec<String>, String> {
    match r.lookup(name, t).await {
        Ok(l) => Ok(l.answers().iter().map(|r| r.data.to_string()).collect()),
        Err(e) if e.is_nx_domain() => Err("NXDOMAIN".into()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

fn dig(at: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            &format!("@{}", at.ip()),
            "-p",
            &at.port().to_string(),
            "+time=3",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("dig (bind9-dnsutils, installed by tests/install-runtime-deps.sh)");
    assert!(
        out.status.success(),
        "dig {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls until `f` returns true (watch propagation), at most 10 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_cluster_zone_from_watches_and_forwards_the_rest() {
    let c = api_client().await;
    create(
        &c,
        &services(),
        "default",
        svc(
            "web",
            "10.43.7.7",
            json!([{"name": "http", "port": 80, "protocol": "TCP"}]),
        ),
    )
    .await;
    create(
        &c,
        &services(),
        "default",
        svc("db", "None", json!([{"name": "pg", "port": 5432}])),
    )
    .await;
    create(
        &c,
        &slices(),
        "default",
        slice(
            "db-1",
            "db",
            json!([
                {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.7"], "conditions": {"ready": false}}
            ]),
        ),
    )
    .await;
    create(
        &c,
        &services(),
        "default",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "target.example.test"}}),
    )
    .await;
    k3rs_dns::kube_dns::ensure_kube_dns_service(c.as_ref(), IpAddr::V4(DNS_IP))
        .await
        .unwrap();
    // A second call leaves the existing Service alone.
    k3rs_dns::kube_dns::ensure_kube_dns_service(c.as_ref(), IpAddr::V4(DNS_IP))
        .await
        .unwrap();

    let upstream = fake_upstream().await;
    let records = Records::watch(
        c.clone(),
        "cluster.local",
        IpAddr::V4(DNS_IP),
        k3rs_dns::TTL,
    )
    .await
    .unwrap();
    let mut cfg = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        "cluster.local",
        IpAddr::V4(DNS_IP),
        vec![upstream.addr],
    );
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let server = DnsServer::start(&cfg, records).await.unwrap();
    let at = server.local_addr();
    let r = resolver(at);

    // ClusterIP service, kube-dns.
    assert_eq!(
        lookup(&r, "web.default.svc.cluster.local.", RecordType::A)
            .await
            .unwrap(),
        vec!["10.43.7.7"]
    );
    assert_eq!(
        lookup(&r, "kube-dns.kube-system.svc.cluster.local.", RecordType::A)
            .await
            .unwrap(),
        vec!["10.43.0.10"]
    );
    // Headless: the ready endpoints only; endpoint names.
    let mut db = lookup(&r, "db.default.svc.cluster.local.", RecordType::A)
        .await
        .unwrap();
    db.sort();
    assert_eq!(db, vec!["10.42.0.5", "10.42.0.6"]);
    assert_eq!(
        lookup(&r, "db-0.db.default.svc.cluster.local.", RecordType::A)
            .await
            .unwrap(),
        vec!["10.42.0.5"]
    );
    // SRV for named ports.
    assert_eq!(
        lookup(
            &r,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        )
        .await
        .unwrap(),
        vec!["0 100 80 web.default.svc.cluster.local."]
    );
    let mut srv = lookup(
        &r,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await
    .unwrap();
    srv.sort();
    assert_eq!(
        srv,
        vec![
            "0 50 5432 10-42-0-6.db.default.svc.cluster.local.",
            "0 50 5432 db-0.db.default.svc.cluster.local."
        ]
    );
    // PTR for service and endpoint IPs.
    assert_eq!(
        lookup(&r, "7.7.43.10.in-addr.arpa.", RecordType::PTR)
            .await
            .unwrap(),
        vec!["web.default.svc.cluster.local."]
    );
    assert_eq!(
        lookup(&r, "5.0.42.10.in-addr.arpa.", RecordType::PTR)
            .await
            .unwrap(),
        vec!["db-0.db.default.svc.cluster.local."]
    );
    // ExternalName: CNAME, and the target resolved upstream.
    assert_eq!(
        lookup(&r, "ext.default.svc.cluster.local.", RecordType::A)
            .await
            .unwrap(),
        vec!["target.example.test.", "192.0.2.1"]
    );
    // Pod A records.
    assert_eq!(
        lookup(&r, "10-42-3-4.default.pod.cluster.local.", RecordType::A)
            .await
            .unwrap(),
        vec!["10.42.3.4"]
    );
    // NXDOMAIN in the zone; NODATA for an empty non-terminal.
    assert_eq!(
        lookup(&r, "nope.default.svc.cluster.local.", RecordType::A).await,
        Err("NXDOMAIN".into())
    );
    assert_eq!(
        lookup(&r, "default.svc.cluster.local.", RecordType::A).await,
        Ok(vec![])
    );
    // Forwarding, and TCP after a truncated UDP answer upstream.
    let before = upstream
        .udp_queries
        .load(std::sync::atomic::Ordering::SeqCst);
    for name in ["www.example.test.", "WWW.example.test."] {
        assert_eq!(
            lookup(&r, name, RecordType::A).await.unwrap(),
            vec!["192.0.2.1"]
        );
    }
    // The second time came from the cache (TTL 60 s upstream, kept at most 30 s).
    assert_eq!(
        upstream
            .udp_queries
            .load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
    assert_eq!(
        lookup(&r, "nothing.example.org.", RecordType::A).await,
        Err("NXDOMAIN".into())
    );
    assert_eq!(
        lookup(&r, "big.example.test.", RecordType::A)
            .await
            .unwrap()
            .len(),
        60
    );
    assert!(
        upstream
            .tcp_queries
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    // The same through dig.
    assert_eq!(
        dig(at, &["+short", "web.default.svc.cluster.local", "A"]).trim(),
        "10.43.7.7"
    );
    let soa = dig(at, &["nope.default.svc.cluster.local", "A"]);
    assert!(soa.contains("status: NXDOMAIN"), "{soa}");
    assert!(soa.contains("flags: qr aa rd ra"), "{soa}");
    assert!(
        soa.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..]
                == [
                    "cluster.local.",
                    "5",
                    "IN",
                    "SOA",
                    "ns.dns.cluster.local.",
                    "hostmaster.cluster.local.",
                    "1",
                    "7200",
                    "1800",
                    "86400",
                    "5"
                ]),
        "{soa}"
    );
    assert_eq!(
        dig(at, &["+short", "-x", "10.43.7.7"]).trim(),
        "web.default.svc.cluster.local."
    );
    assert_eq!(
        dig(
            at,
            &["+short", "_pg._tcp.db.default.svc.cluster.local", "SRV"]
        )
        .lines()
        .count(),
        2
    );
    assert_eq!(
        dig(at, &["+short", "ext.default.svc.cluster.local", "CNAME"]).trim(),
        "target.example.test."
    );
    assert_eq!(
        dig(at, &["+short", "+tcp", "www.example.test"]).trim(),
        "192.0.2.1"
    );
    // 60 A records do not fit in 512 bytes: dig without EDNS gets TC and retries over TCP itself.
    assert_eq!(
        dig(at, &["+short", "+noedns", "big.example.test"])
            .lines()
            .count(),
        60
    );
    let ttl = dig(at, &["+noall", "+answer", "web.default.svc.cluster.local"]);
    assert_eq!(
        ttl.split_whitespace().collect::<Vec<_>>(),
        [
            "web.default.svc.cluster.local.",
            "5",
            "IN",
            "A",
            "10.43.7.7"
        ]
    );

    // Changes arrive by watch: a new service, a new endpoint, a deleted service.
    create(
        &c,
        &services(),
        "default",
        svc("late", "10.43.8.8", json!([{"port": 80}])),
    )
    .await;
    eventually("the new service", || async {
        lookup(&r, "late.default.svc.cluster.local.", RecordType::A).await
            == Ok(vec!["10.43.8.8".to_string()])
    })
    .await;
    create(
        &c,
        &slices(),
        "default",
        slice(
            "db-2",
            "db",
            json!([
                {"addresses": ["10.42.0.8"], "conditions": {"ready": true}}
            ]),
        ),
    )
    .await;
    eventually("the new endpoint", || async {
        lookup(&r, "db.default.svc.cluster.local.", RecordType::A)
            .await
            .map(|a| a.len())
            == Ok(3)
    })
    .await;
    // An endpoint that stops being ready leaves the answer.
    c.patch(
        &slices(),
        Some("default"),
        "db-2",
        Patch::Merge(
            json!({"endpoints": [{"addresses": ["10.42.0.8"], "conditions": {"ready": false}}]}),
        ),
        None,
        "test",
    )
    .await
    .unwrap();
    eventually("the endpoint going unready", || async {
        lookup(&r, "db.default.svc.cluster.local.", RecordType::A)
            .await
            .map(|a| a.len())
            == Ok(2)
    })
    .await;
    c.delete(
        &services(),
        Some("default"),
        "web",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    eventually("the deleted service", || async {
        lookup(&r, "web.default.svc.cluster.local.", RecordType::A).await == Err("NXDOMAIN".into())
    })
    .await;

    // Prometheus counters on the metrics port.
    let metrics = http_get(server.metrics_addr().expect("metrics address"), "/metrics").await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("coredns_dns_requests_total{proto=\"udp\"}") > 20);
    assert!(value("coredns_dns_requests_total{proto=\"tcp\"}") >= 2);
    assert!(value("coredns_dns_responses_total{rcode=\"NXDOMAIN\"}") >= 3);
    assert!(value("coredns_cache_hits_total") >= 1);
    assert!(value("coredns_forward_requests_total") >= 3);
    assert!(value("k3rs_dns_zone_rebuilds_total") >= 3);
    assert!(http_get(server.metrics_addr().unwrap(), "/other")
        .await
        .starts_with("HTTP/1.0 404"));

    server.shutdown().await.unwrap();
}

/// A whole HTTP/1.0 exchange (the server closes the connection after answering).
async fn http_get(at: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_servfail_not_a_hang() {
    // A port with nothing behind it: the upstream times out and the client gets SERVFAIL.
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let records = Records::new("cluster.local", IpAddr::V4(DNS_IP), 5, &[], &[]).unwrap();
    let mut cfg = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        "cluster.local",
        IpAddr::V4(DNS_IP),
        vec![dead.local_addr().unwrap()],
    );
    cfg.upstream_timeout = Duration::from_millis(200);
    let server = DnsServer::start(&cfg, records).await.unwrap();
    let out = dig(server.local_addr(), &["example.org", "A"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
}
