//! Scheduler throughput: 1,000 pending pods on 100 nodes over the in-process client and a real
//! `Api` (in-memory store, or SQLite with `--sqlite`). Prints pods bound per second.
//!
//! `cargo run --release -p k3rs-scheduler --example scheduler-bench [-- --sqlite] [-- PODS NODES]`

use k3rs_apiserver::local_client::LocalClient;
use k3rs_apiserver::{Api, ServerInfo};
use k3rs_client::{Client, ListParams, Resource, WatchEvent};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sqlite = args.iter().any(|a| a == "--sqlite");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let pods = nums.first().copied().unwrap_or(1000);
    let nodes = nums.get(1).copied().unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("k3rs-sched-bench-{}", std::process::id()));
    let store = if sqlite {
        std::fs::create_dir_all(&dir).expect("temp dir");
        k3rs_store::Store::open_sqlite(&dir.join("state.db"), Default::default()).expect("sqlite")
    } else {
        k3rs_store::Store::in_memory()
    };
    let info = ServerInfo {
        advertise_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 6443,
        service_ip: IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)),
        service_cidr: (Ipv4Addr::new(10, 43, 0, 0), 16),
    };
    let api = Api::start(store, None, info, String::new())
        .await
        .expect("api");
    let client: Arc<dyn Client> = Arc::new(LocalClient::new(api));
    // Pods need the default ServiceAccount, which the API server creates shortly after start.
    while client
        .get(
            &Resource::core("serviceaccounts"),
            Some("default"),
            "default",
        )
        .await
        .is_err()
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for i in 0..nodes {
        client
            .create(&Resource::core("nodes"), None, json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}")}},
                "status": {"capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                           "allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}}), "bench")
            .await
            .expect("node");
    }
    let t = Instant::now();
    for i in 0..pods {
        client
            .create(
                &Resource::core("pods"),
                Some("default"),
                json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i}"), "labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "pause",
                    "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}]}}),
                "bench",
            )
            .await
            .expect("pod");
    }
    println!(
        "created {pods} pending pods on {nodes} nodes in {:?} ({} store)",
        t.elapsed(),
        if sqlite { "sqlite" } else { "in-memory" }
    );
    let mut watch = client
        .watch(
            &Resource::core("pods"),
            Some("default"),
            &ListParams {
                resource_version: Some("0".into()),
                ..Default::default()
            },
        )
        .await
        .expect("watch");
    let start = Instant::now();
    tokio::spawn(k3rs_scheduler::run(client.clone(), Default::default()));
    let mut bound = std::collections::HashSet::new();
    while bound.len() < pods {
        match watch.next().await {
            Some(WatchEvent::Added(p)) | Some(WatchEvent::Modified(p)) => {
                if p["spec"]["nodeName"].is_string() {
                    bound.insert(p["metadata"]["name"].as_str().unwrap_or("").to_string());
                }
            }
            Some(_) => {}
            None => panic!("watch ended"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bound {pods} pods in {:.3}s: {:.0} pods/s",
        secs,
        pods as f64 / secs
    );
    let _ = std::fs::remove_dir_all(&dir);
}
