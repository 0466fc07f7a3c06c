//! EndpointSlices as the service proxy reads them: one slice per distinct resolved port list,
//! conditions, nodeName and named ports.

use k3rs_apiserver::local_client::LocalClient;
use k3rs_client::{Client, ListParams, Patch, Resource};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

async fn client() -> Arc<dyn Client> {
    LocalClient::in_memory().await.expect("api")
}

async fn pod(c: &Arc<dyn Client>, name: &str, ip: &str, port: u16) {
    let pods = Resource::core("pods");
    c.create(
        &pods,
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
                "ports": [{"name": "http", "containerPort": port}]}]}}),
        "test",
    )
    .await
    .expect("pod");
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    c.patch(
        &pods,
        Some("default"),
        name,
        Patch::Merge(status),
        Some("status"),
        "test",
    )
    .await
    .expect("pod status");
}

/// The service's slices as (port, [(ip, ready, nodeName)]), sorted.
async fn slices(c: &Arc<dyn Client>) -> Vec<(Value, Vec<(String, bool, String)>)> {
    let list = c
        .list(
            &Resource::new("discovery.k8s.io", "v1", "endpointslices"),
            Some("default"),
            &ListParams::labels("kubernetes.io/service-name=web"),
        )
        .await
        .expect("slices");
    let mut out: Vec<_> = list
        .items
        .iter()
        .map(|s| {
            let eps = s["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    (
                        e["addresses"][0].as_str().unwrap_or("").to_string(),
                        e["conditions"]["ready"].as_bool().unwrap_or(false),
                        e["nodeName"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            (s["ports"].clone(), eps)
        })
        .collect();
    out.sort_by_key(|(p, _)| p.to_string());
    out
}

#[tokio::test]
async fn pods_with_different_target_ports_get_separate_slices() {
    let c = client().await;
    tokio::spawn(k3rs_controllers::run(
        c.clone(),
        k3rs_controllers::ControllersConfig::default(),
    ));
    c.create(
        &Resource::core("services"),
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"},
                "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}),
        "test",
    )
    .await
    .expect("service");
    pod(&c, "a", "10.42.0.5", 8080).await;
    pod(&c, "b", "10.42.0.6", 9090).await;
    let want = vec![
        (
            json!([{"name": "web", "port": 8080, "protocol": "TCP"}]),
            vec![("10.42.0.5".to_string(), true, "n1".to_string())],
        ),
        (
            json!([{"name": "web", "port": 9090, "protocol": "TCP"}]),
            vec![("10.42.0.6".to_string(), true, "n1".to_string())],
        ),
    ];
    let mut got = Vec::new();
    for _ in 0..300 {
        got = slices(&c).await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got, want);
    // Pod b goes away: back to a single slice.
    c.delete(
        &Resource::core("pods"),
        Some("default"),
        "b",
        &k3rs_client::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("delete");
    for _ in 0..300 {
        got = slices(&c).await;
        if got == want[..1] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got, want[..1]);
}
