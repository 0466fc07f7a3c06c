//! ServiceLB against a real `Api` over the in-memory store.

use k3rs_apiserver::local_client::LocalClient;
use k3rs_client::{Client, DeleteParams, Patch, Resource};
use k3rs_controllers::servicelb::ServiceLbController;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

async fn client() -> Arc<dyn Client> {
    LocalClient::in_memory().await.expect("api")
}

async fn ingress(c: &Arc<dyn Client>, name: &str) -> Value {
    c.get(&Resource::core("services"), Some("default"), name)
        .await
        .expect("service")["status"]["loadBalancer"]["ingress"]
        .clone()
}

async fn wait_ingress(c: &Arc<dyn Client>, name: &str, want: Value) {
    for _ in 0..300 {
        if ingress(c, name).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name}: ingress {} != {want}", ingress(c, name).await);
}

async fn lb(c: &Arc<dyn Client>, name: &str, port: u16) {
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": name},
            "ports": [{"port": port, "protocol": "TCP"}]}});
    c.create(&Resource::core("services"), Some("default"), svc, "test")
        .await
        .expect("create service");
}

#[tokio::test]
async fn load_balancers_get_the_node_ips_and_port_clashes_wait() {
    let c = client().await;
    let nodes = Resource::core("nodes");
    c.create(
        &nodes,
        None,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
        "test",
    )
    .await
    .expect("node");
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "addresses": [{"type": "InternalIP", "address": "192.168.5.10"}]}});
    c.patch(
        &nodes,
        None,
        "n1",
        Patch::Merge(status),
        Some("status"),
        "test",
    )
    .await
    .expect("node status");
    tokio::spawn(ServiceLbController::new(c.clone()).run());

    lb(&c, "first", 8080).await;
    wait_ingress(&c, "first", json!([{"ip": "192.168.5.10"}])).await;
    // Same port: stays pending while the first holds it.
    lb(&c, "second", 8080).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ingress(&c, "second").await, Value::Null);
    // Another port is fine.
    lb(&c, "third", 9090).await;
    wait_ingress(&c, "third", json!([{"ip": "192.168.5.10"}])).await;
    // The first goes away: the second gets the address.
    c.delete(
        &Resource::core("services"),
        Some("default"),
        "first",
        &DeleteParams::default(),
    )
    .await
    .expect("delete");
    wait_ingress(&c, "second", json!([{"ip": "192.168.5.10"}])).await;
    // A second node labelled enablelb=true: only labelled nodes serve from then on.
    c.create(
        &nodes,
        None,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2",
            "labels": {"svccontroller.k3s.cattle.io/enablelb": "true"}}}),
        "test",
    )
    .await
    .expect("node");
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "addresses": [{"type": "InternalIP", "address": "192.168.5.11"}]}});
    c.patch(
        &nodes,
        None,
        "n2",
        Patch::Merge(status),
        Some("status"),
        "test",
    )
    .await
    .expect("node status");
    wait_ingress(&c, "third", json!([{"ip": "192.168.5.11"}])).await;
    c.patch(
        &nodes,
        None,
        "n2",
        Patch::Merge(
            json!({"metadata": {"labels": {"svccontroller.k3s.cattle.io/enablelb": null}}}),
        ),
        None,
        "test",
    )
    .await
    .expect("unlabel");
    wait_ingress(
        &c,
        "third",
        json!([{"ip": "192.168.5.10"}, {"ip": "192.168.5.11"}]),
    )
    .await;
    c.delete(&nodes, None, "n2", &DeleteParams::default())
        .await
        .expect("delete node");
    wait_ingress(&c, "third", json!([{"ip": "192.168.5.10"}])).await;
    // The node stops being ready: no address to offer.
    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    c.patch(
        &nodes,
        None,
        "n1",
        Patch::Merge(not_ready),
        Some("status"),
        "test",
    )
    .await
    .expect("node status");
    wait_ingress(&c, "third", Value::Null).await;
}
