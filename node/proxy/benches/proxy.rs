//! `cargo bench -p k3rs-proxy` (root, nft): with 1,000 Services (2 endpoints each) it prints
//! render time, `nft -f` apply time of the whole table, and Service update propagation: an
//! EndpointSlice change written to the API → the first connection through the ClusterIP that
//! reaches the new endpoint (informer → coalescing → render → apply → packet). Then pod → pod IP
//! vs pod → ClusterIP TCP throughput with iperf3 (same run, both through the node namespace).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{tcp, Server, Topology, NODE_IP};
use k3rs_apiserver::local_client::LocalClient;
use k3rs_client::Resource;
use k3rs_proxy::model::SERVICE_NAME_LABEL;
use k3rs_proxy::render::render;
use k3rs_proxy::{slice_resource, Nft, Proxy, ProxyConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SERVICES: usize = 1000;

fn slice(name: &str, pods: &[usize]) -> Value {
    let eps: Vec<Value> = pods
        .iter()
        .map(|i| {
            json!({"addresses": [Topology::pod_ip(*i).to_string()], "nodeName": "n1",
            "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-abcde"), "namespace": "default",
            "labels": {SERVICE_NAME_LABEL: name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": eps})
}

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: n={} min={:.1} ms p50={:.1} ms p90={:.1} ms max={:.1} ms",
        v.len(),
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1])
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let t = Topology::new("k3p-bench", 3);
    let nft = Nft::in_netns(&t.node());
    let _s1 = Server::start(&t.pod(1), "pod1", 8080, 5353);
    let _s2 = Server::start(&t.pod(2), "pod2", 8080, 5353);
    let config = ProxyConfig::new("n1", vec![NODE_IP]);

    // Render and apply, without the API.
    let services: Vec<Value> = (0..SERVICES)
        .map(|i| {
            json!({"metadata": {"namespace": "default", "name": format!("svc-{i}")},
            "spec": {"clusterIP": format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250), "type": "NodePort",
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30000 + i}]}})
        })
        .collect();
    let slices: Vec<Value> = (0..SERVICES)
        .map(|i| slice(&format!("svc-{i}"), &[1, 2]))
        .collect();
    let mut renders = Vec::new();
    let mut text = String::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        text = render(&config, &services, &slices);
        renders.push(t0.elapsed());
    }
    println!(
        "{SERVICES} services, 2 endpoints each: ruleset {} KiB, {} lines",
        text.len() / 1024,
        text.lines().count()
    );
    stats("render (pure)", renders);
    let mut applies = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        nft.apply(&text).expect("apply");
        applies.push(t0.elapsed());
    }
    stats("apply (nft -f, delete + re-create the table)", applies);

    // Propagation through the API and the proxy's informers.
    let c = LocalClient::in_memory().await.expect("api");
    let svcs = Resource::core("services");
    let mut cips = Vec::new();
    let t0 = Instant::now();
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        let s = c
            .create(
                &svcs,
                Some("default"),
                json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
                "bench",
            )
            .await
            .expect("service");
        cips.push(s["spec"]["clusterIP"].as_str().unwrap().to_string());
        c.create(
            &slice_resource(),
            Some("default"),
            slice(&name, &[1]),
            "bench",
        )
        .await
        .expect("slice");
    }
    println!(
        "created {SERVICES} services + slices through the API in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let proxy = Proxy::start(c.clone(), config, nft.clone());
    let mut syncs = proxy.syncs();
    let t0 = Instant::now();
    syncs.wait_for(|n| *n >= 1).await.expect("sync");
    println!(
        "proxy start → first full sync: {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );

    let mut propagation = Vec::new();
    for round in 0..20 {
        let i = (round * 37) % SERVICES;
        let name = format!("svc-{i}");
        let to: SocketAddr = format!("{}:80", cips[i]).parse().unwrap();
        let p3 = t.pod(3);
        let now = tokio::task::spawn_blocking(move || tcp(&p3, to))
            .await
            .unwrap()
            .expect("service answers");
        let (target, want) = if now.starts_with("pod1") {
            (2, "pod2")
        } else {
            (1, "pod1")
        };
        let mut s = c
            .get(&slice_resource(), Some("default"), &format!("{name}-abcde"))
            .await
            .unwrap();
        s["endpoints"] = slice(&name, &[target])["endpoints"].clone();
        let t0 = Instant::now();
        c.replace(
            &slice_resource(),
            Some("default"),
            &format!("{name}-abcde"),
            s,
            None,
            "bench",
        )
        .await
        .expect("update slice");
        let p3 = t.pod(3);
        let took = tokio::task::spawn_blocking(move || loop {
            if tcp(&p3, to).is_ok_and(|a| a.starts_with(want)) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no propagation");
        })
        .await
        .unwrap();
        propagation.push(took);
        // Space the rounds past the sync period so each one measures a lone change.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stats(
        "propagation (slice update → first connection to the new endpoint)",
        propagation,
    );
    drop(proxy);
    throughput(&t, &nft);
    k3rs_proxy::cleanup(&nft).expect("cleanup");
}

/// Kills the iperf3 server when the benchmark ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf(t: &Topology, to: &str) -> Option<f64> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.pod(3),
            "iperf3",
            "-c",
            to,
            "-p",
            "5201",
            "-t",
            "3",
            "-J",
        ])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["end"]["sum_received"]["bits_per_second"].as_f64()
}

/// pod → pod IP vs pod → ClusterIP (1 endpoint) with iperf3, if it is installed.
fn throughput(t: &Topology, nft: &Nft) {
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", &t.pod(1), "iperf3", "-s", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(server) = server else {
        println!("iperf3 not installed: no throughput numbers");
        return;
    };
    let _server = Child(server);
    let svc = json!({"metadata": {"namespace": "default", "name": "iperf"},
        "spec": {"clusterIP": "10.43.200.1", "ports": [{"name": "http", "protocol": "TCP", "port": 5201}]}});
    let mut sl = slice("iperf", &[1]);
    sl["ports"][0]["port"] = json!(5201);
    nft.apply(&render(
        &ProxyConfig::new("n1", vec![NODE_IP]),
        &[svc],
        &[sl],
    ))
    .expect("apply");
    std::thread::sleep(Duration::from_millis(300));
    let direct = iperf(t, &Topology::pod_ip(1).to_string());
    let via_service = iperf(t, "10.43.200.1");
    match (direct, via_service) {
        (Some(d), Some(s)) => println!(
            "throughput pod → pod IP {:.2} Gbit/s, pod → ClusterIP {:.2} Gbit/s (ratio {:.2})",
            d / 1e9,
            s / 1e9,
            s / d
        ),
        _ => println!("iperf3 failed: no throughput numbers"),
    }
}
