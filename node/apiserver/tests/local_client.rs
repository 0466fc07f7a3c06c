//! The in-process client against a real `Api` over the in-memory store.

use k3rs_apiserver::local_client::LocalClient;
use k3rs_apiserver::{Api, ServerInfo};
use k3rs_client::{Client, DeleteParams, ListParams, Patch, Resource, WatchEvent};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};

async fn api() -> std::sync::Arc<Api> {
    let info = ServerInfo {
        advertise_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 6443,
        service_ip: IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)),
        service_cidr: (Ipv4Addr::new(10, 43, 0, 0), 16),
    };
    Api::start(k3rs_store::Store::in_memory(), None, info, String::new())
        .await
        .expect("api")
}

#[tokio::test]
async fn crud_watch_patch_and_binding() {
    let client = LocalClient::new(api().await);
    let pods = Resource::core("pods");
    let ns = Some("default");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let mut watch = client
        .watch(&pods, ns, &ListParams::default())
        .await
        .unwrap();
    let created = client.create(&pods, ns, pod, "test").await.unwrap();
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(
        created["spec"]["restartPolicy"], "Always",
        "defaulting applies"
    );
    match watch.next().await {
        Some(WatchEvent::Added(o)) => assert_eq!(o["metadata"]["name"], "p"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    let err = client
        .create(&pods, ns, created.clone(), "test")
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err}");

    client
        .create_subresource(
            &pods,
            ns,
            "p",
            "binding",
            json!({"target": {"kind": "Node", "name": "n1"}}),
        )
        .await
        .unwrap();
    let bound = client.get(&pods, ns, "p").await.unwrap();
    assert_eq!(bound["spec"]["nodeName"], "n1");
    assert!(matches!(watch.next().await, Some(WatchEvent::Modified(_))));

    let status = client
        .patch(
            &pods,
            ns,
            "p",
            Patch::Merge(json!({"status": {"phase": "Running"}})),
            Some("status"),
            "kubelet",
        )
        .await
        .unwrap();
    assert_eq!(status["status"]["phase"], "Running");
    // A stale resourceVersion conflicts.
    let mut stale = bound.clone();
    stale["metadata"]["labels"] = json!({"a": "b"});
    let err = client
        .replace(&pods, ns, "p", stale, None, "test")
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");

    let list = client
        .list(&pods, ns, &ListParams::fields("spec.nodeName=n1"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    client
        .delete(
            &pods,
            ns,
            "p",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(client.get(&pods, ns, "p").await.unwrap_err().is_not_found());

    let deploys = Resource::new("apps", "v1", "deployments");
    client
        .create(&deploys, ns, json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}}}), "test")
        .await
        .unwrap();
    let scale = client
        .patch(
            &deploys,
            ns,
            "d",
            Patch::Merge(json!({"spec": {"replicas": 4}})),
            Some("scale"),
            "test",
        )
        .await
        .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(
        client.get(&deploys, ns, "d").await.unwrap()["spec"]["replicas"],
        4
    );
}
