//! The scheduler against a real `Api` over the in-memory store.

use k3rs_apiserver::local_client::LocalClient;
use k3rs_client::{Client, ListParams, Patch, Resource};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

async fn client() -> Arc<dyn Client> {
    LocalClient::in_memory().await.expect("api")
}

async fn node(c: &Arc<dyn Client>, name: &str, cpu: &str, labels: Value, taints: Value) {
    c.create(
        &Resource::core("nodes"),
        None,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
               "spec": {"taints": taints},
               "status": {"capacity": {"cpu": cpu, "memory": "4Gi", "pods": "10"},
                          "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "10"},
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
        "test",
    )
    .await
    .expect("node");
}

async fn pod(c: &Arc<dyn Client>, name: &str, spec_extra: Value) {
    let mut spec = json!({"containers": [{"name": "c", "image": "i",
        "resources": {"requests": {"cpu": "500m"}}}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    c.create(
        &Resource::core("pods"),
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
        "test",
    )
    .await
    .expect("pod");
}

async fn wait_for<F: Fn(&Value) -> bool>(c: &Arc<dyn Client>, name: &str, f: F) -> Value {
    for _ in 0..200 {
        if let Ok(p) = c.get(&Resource::core("pods"), Some("default"), name).await {
            if f(&p) {
                return p;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pod {name} never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_bind_and_report_unschedulable() {
    let c = client().await;
    node(&c, "small", "1", json!({"disk": "hdd"}), json!([])).await;
    node(&c, "big", "4", json!({"disk": "ssd"}), json!([])).await;
    node(
        &c,
        "tainted",
        "8",
        json!({"disk": "ssd"}),
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;
    tokio::spawn(k3rs_scheduler::run(c.clone(), Default::default()));

    pod(&c, "ssd", json!({"nodeSelector": {"disk": "ssd"}})).await;
    let p = wait_for(&c, "ssd", |p| p["spec"]["nodeName"].is_string()).await;
    assert_eq!(p["spec"]["nodeName"], "big", "tainted node is filtered");

    pod(&c, "gpu", json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["tainted"]}]}]}}}})).await;
    let p = wait_for(&c, "gpu", |p| p["spec"]["nodeName"].is_string()).await;
    assert_eq!(p["spec"]["nodeName"], "tainted");

    pod(&c, "other", json!({"schedulerName": "someone-else"})).await;

    // 16 cpus nowhere; hdd node: selector mismatch.
    pod(
        &c,
        "huge",
        json!({"containers": [{"name": "c", "image": "i",
        "resources": {"requests": {"cpu": "16"}}}], "nodeSelector": {"disk": "ssd"}}),
    )
    .await;
    let p = wait_for(&c, "huge", |p| {
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        })
    })
    .await;
    let cond = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .unwrap()
        .clone();
    assert_eq!(cond["reason"], "Unschedulable");
    assert_eq!(
        cond["message"],
        "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}."
    );
    let mut events = Vec::new();
    for _ in 0..100 {
        events = c
            .list(
                &Resource::core("events"),
                Some("default"),
                &ListParams::default(),
            )
            .await
            .unwrap()
            .items;
        if events.iter().any(|e| e["reason"] == "FailedScheduling") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ev = events
        .iter()
        .find(|e| e["reason"] == "FailedScheduling")
        .expect("FailedScheduling event");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["involvedObject"]["name"], "huge");
    assert_eq!(ev["source"]["component"], "default-scheduler");
    assert_eq!(ev["count"], 1);

    // The cluster changes: a node with room appears and the pod is retried.
    node(&c, "bigger", "32", json!({"disk": "ssd"}), json!([])).await;
    let p = wait_for(&c, "huge", |p| p["spec"]["nodeName"].is_string()).await;
    assert_eq!(p["spec"]["nodeName"], "bigger");

    let other = c
        .get(&Resource::core("pods"), Some("default"), "other")
        .await
        .unwrap();
    assert!(
        other["spec"]["nodeName"].is_null(),
        "another scheduler's pod is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_host_ports_and_spreading() {
    let c = client().await;
    for n in ["a", "b", "c"] {
        node(&c, n, "2", json!({}), json!([])).await;
    }
    // Make node "a" unschedulable (cordon).
    c.patch(
        &Resource::core("nodes"),
        None,
        "a",
        Patch::Merge(json!({"spec": {"unschedulable": true}})),
        None,
        "test",
    )
    .await
    .unwrap();
    tokio::spawn(k3rs_scheduler::run(c.clone(), Default::default()));
    // Eight 500m pods fill b and c (2 cpus each); a ninth does not fit.
    for i in 0..8 {
        pod(&c, &format!("p{i}"), json!({})).await;
    }
    let mut per_node = std::collections::HashMap::new();
    for i in 0..8 {
        let p = wait_for(&c, &format!("p{i}"), |p| p["spec"]["nodeName"].is_string()).await;
        *per_node
            .entry(p["spec"]["nodeName"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(per_node.get("b"), Some(&4));
    assert_eq!(per_node.get("c"), Some(&4));
    pod(&c, "p8", json!({})).await;
    let p = wait_for(&c, "p8", |p| {
        p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    })
    .await;
    let msg = p["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 Insufficient cpu."
    );
    // Deleting a bound pod frees room: p8 is retried.
    c.delete(
        &Resource::core("pods"),
        Some("default"),
        "p0",
        &k3rs_client::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_for(&c, "p8", |p| p["spec"]["nodeName"].is_string()).await;

    // Host ports: two pods asking for 8080 land on different nodes.
    c.patch(
        &Resource::core("nodes"),
        None,
        "a",
        Patch::Merge(json!({"spec": {"unschedulable": false}})),
        None,
        "test",
    )
    .await
    .unwrap();
    let hp = json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
    pod(&c, "h1", hp.clone()).await;
    pod(&c, "h2", hp.clone()).await;
    pod(&c, "h3", hp.clone()).await;
    pod(&c, "h4", hp).await;
    let mut nodes = std::collections::HashSet::new();
    for h in ["h1", "h2", "h3"] {
        let p = wait_for(&c, h, |p| p["spec"]["nodeName"].is_string()).await;
        nodes.insert(p["spec"]["nodeName"].as_str().unwrap().to_string());
    }
    assert_eq!(nodes.len(), 3);
    let p = wait_for(&c, "h4", |p| {
        p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    })
    .await;
    assert_eq!(
        p["status"]["conditions"][0]["message"],
        "0/3 nodes are available: 3 node(s) didn't have free ports for the requested pod ports."
    );
}
