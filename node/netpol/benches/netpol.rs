//! `cargo bench -p k3rs-netpol`: render and apply time of the policy table for a node with 100
//! local pods among 1,000 cluster pods and 200 policies, and the kernel's commit of it (inside a
//! throwaway network namespace; needs root and nft, else only rendering is measured).

use k3rs_netpol::render::{render, Inputs};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn world() -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let namespaces: Vec<Value> = (0..20)
        .map(|n| json!({"metadata": {"name": format!("ns{n}"), "labels": {"kubernetes.io/metadata.name": format!("ns{n}"), "tier": if n % 2 == 0 { "front" } else { "back" }}}}))
        .collect();
    let pods: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"metadata": {"namespace": format!("ns{}", i % 20), "name": format!("p{i}"),
                                "labels": {"app": format!("app{}", i % 50), "role": if i % 3 == 0 { "db" } else { "web" }}},
                   "spec": {"nodeName": if i % 10 == 0 { "n0" } else { "other" },
                            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                   "status": {"phase": "Running", "podIP": format!("10.42.{}.{}", i / 250, i % 250 + 2)}})
        })
        .collect();
    let policies: Vec<Value> = (0..200)
        .map(|i| {
            json!({"metadata": {"namespace": format!("ns{}", i % 20), "name": format!("pol{i}")},
                   "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", i % 50)}},
                            "policyTypes": ["Ingress", "Egress"],
                            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "web"}}},
                                                  {"namespaceSelector": {"matchLabels": {"tier": "front"}}}],
                                         "ports": [{"port": "http"}, {"port": 9000, "endPort": 9010}]}],
                            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.43.0.0/16"]}}],
                                        "ports": [{"protocol": "UDP", "port": 53}]}]}})
        })
        .collect();
    (namespaces, pods, policies)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let (namespaces, pods, policies) = world();
    let inputs = Inputs {
        policies: &policies,
        pods: &pods,
        namespaces: &namespaces,
        node_name: "n0",
    };
    let mut renders = Vec::new();
    let mut body = String::new();
    for _ in 0..20 {
        let t = Instant::now();
        body = render(&inputs);
        renders.push(t.elapsed());
    }
    println!(
        "render: 100 local pods, 1,000 cluster pods, 200 policies -> {} KiB, {} lines, median {:.2} ms",
        body.len() / 1024,
        body.lines().count(),
        median(renders).as_secs_f64() * 1000.0
    );
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root || Command::new("nft").arg("--version").output().is_err() {
        println!("apply: skipped (needs root and nft)");
        return;
    }
    let ns = format!("k3rs-netpol-bench-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .is_ok_and(|s| s.success()));
    let nft = k3rs_nft::Nft::in_netns(&ns);
    let mut applies = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        nft.replace_table(k3rs_netpol::TABLE, &body)
            .expect("nft applies the table");
        applies.push(t.elapsed());
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    println!(
        "apply: whole-table swap with nft -f, median {:.1} ms (10 runs)",
        median(applies).as_secs_f64() * 1000.0
    );
}
