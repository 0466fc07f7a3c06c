//! The node IPAM controller against a real `Api` over the in-memory store.

use k3rs_apiserver::local_client::LocalClient;
use k3rs_client::{Client, Resource};
use k3rs_controllers::nodeipam::NodeIpamController;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn node_cidr(client: &Arc<dyn Client>, name: &str) -> Option<String> {
    let n = client
        .get(&Resource::core("nodes"), None, name)
        .await
        .ok()?;
    n["spec"]["podCIDR"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_cidrs_and_keep_them_across_restarts() {
    let client = LocalClient::in_memory().await.expect("api");
    let nodes = Resource::core("nodes");
    let mk = |name: &str, cidr: Option<&str>| {
        let mut n =
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
            n["spec"]["podCIDRs"] = json!([c]);
        }
        n
    };
    // One node already holds 10.42.0.0/24 (as after a restart).
    client
        .create(&nodes, None, mk("old", Some("10.42.0.0/24")), "test")
        .await
        .unwrap();
    for n in ["a", "b"] {
        client
            .create(&nodes, None, mk(n, None), "test")
            .await
            .unwrap();
    }
    let ctl = NodeIpamController::new(client.clone(), "10.42.0.0/16", 24).unwrap();
    let task = tokio::spawn(ctl.run());
    let wait = |name: &'static str| {
        let client = client.clone();
        async move {
            for _ in 0..100 {
                if let Some(c) = node_cidr(&client, name).await {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{name} got no podCIDR");
        }
    };
    let a = wait("a").await;
    let b = wait("b").await;
    let mut got = [a.clone(), b.clone()];
    got.sort();
    assert_eq!(got, ["10.42.1.0/24", "10.42.2.0/24"]);
    let n = client.get(&nodes, None, "a").await.unwrap();
    assert_eq!(n["spec"]["podCIDRs"], json!([a]));
    task.abort();
    // A new controller (restart) leaves assigned nodes alone and skips their subnets.
    client
        .create(&nodes, None, mk("c", None), "test")
        .await
        .unwrap();
    let ctl = NodeIpamController::new(client.clone(), "10.42.0.0/16", 24).unwrap();
    let task = tokio::spawn(ctl.run());
    assert_eq!(wait("c").await, "10.42.3.0/24");
    assert_eq!(node_cidr(&client, "a").await.unwrap(), a);
    task.abort();
}
