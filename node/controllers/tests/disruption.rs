//! The disruption controller and the API server's `pods/eviction` on one in-memory API: the
//! budget's status counts healthy pods, an eviction the budget forbids is refused with 429, an
//! allowed one takes a disruption and deletes the pod.

use k3rs_client::{Client, Patch, Resource};
use k3rs_controllers::{disruption, Ctx};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn ready_pod(client: &Arc<dyn Client>, name: &str) {
    let pods = Resource::core("pods");
    client
        .create(
            &pods,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}),
            "test",
        )
        .await
        .expect("create pod");
    client
        .patch(
            &pods,
            Some("default"),
            name,
            Patch::Merge(json!({"status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}})),
            Some("status"),
            "test",
        )
        .await
        .expect("pod status");
}

async fn budget_status(client: &Arc<dyn Client>, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pdb = client
            .get(&disruption::resource(), Some("default"), "web")
            .await
            .expect("pdb");
        if want(&pdb) {
            return pdb;
        }
        assert!(Instant::now() < deadline, "budget never got there: {pdb:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn evict(name: &str) -> Value {
    json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": "default"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_honours_the_budget() {
    let client = k3rs_apiserver::local_client::LocalClient::in_memory()
        .await
        .expect("api");
    for n in ["web-1", "web-2"] {
        ready_pod(&client, n).await;
    }
    client
        .create(
            &disruption::resource(),
            Some("default"),
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "web"},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}}),
            "test",
        )
        .await
        .expect("pdb");
    let ctx = Ctx::new(client.clone());
    let controller = disruption::DisruptionController::new(ctx.clone());
    ctx.pods.spawn(client.clone());
    ctx.replicasets.spawn(client.clone());
    ctx.deployments.spawn(client.clone());
    tokio::spawn(controller.run());

    let pdb = budget_status(&client, |p| p["status"]["currentHealthy"] == 2).await;
    assert_eq!(pdb["status"]["desiredHealthy"], 2);
    assert_eq!(pdb["status"]["expectedPods"], 2);
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0);
    assert_eq!(
        pdb["status"]["observedGeneration"],
        pdb["metadata"]["generation"]
    );
    let cond = &pdb["status"]["conditions"][0];
    assert_eq!(
        (&cond["type"], &cond["status"], &cond["reason"]),
        (
            &json!("DisruptionAllowed"),
            &json!("False"),
            &json!("InsufficientPods")
        )
    );

    let pods = Resource::core("pods");
    let refused = client
        .create_subresource(&pods, Some("default"), "web-1", "eviction", evict("web-1"))
        .await
        .expect_err("the budget forbids it");
    assert_eq!(refused.code, 429);
    assert_eq!(refused.reason, "TooManyRequests");
    assert_eq!(
        refused.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );

    client
        .patch(
            &disruption::resource(),
            Some("default"),
            "web",
            Patch::Merge(json!({"spec": {"minAvailable": 1}})),
            None,
            "test",
        )
        .await
        .expect("relax the budget");
    budget_status(&client, |p| p["status"]["disruptionsAllowed"] == 1).await;
    client
        .create_subresource(&pods, Some("default"), "web-1", "eviction", evict("web-1"))
        .await
        .expect("allowed eviction");
    let gone = client.get(&pods, Some("default"), "web-1").await;
    assert!(
        gone.as_ref().is_err_and(|e| e.is_not_found())
            || gone
                .as_ref()
                .is_ok_and(|p| !p["metadata"]["deletionTimestamp"].is_null()),
        "evicted pod still there: {gone:?}"
    );
    // The disruption was spent: the second pod must stay.
    let refused = client
        .create_subresource(&pods, Some("default"), "web-2", "eviction", evict("web-2"))
        .await
        .expect_err("no disruption left");
    assert_eq!(refused.code, 429);
    let pdb = budget_status(&client, |p| p["status"]["currentHealthy"] == 1).await;
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0);
}
