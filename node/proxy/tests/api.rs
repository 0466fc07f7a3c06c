//! The proxy following a real `Api` (in-memory store) through its informers, applying into a
//! node network namespace; checked with real connections (needs root and nft).

mod common;

use common::{tcp, tcp_names, Server, Topology, NODE_IP};
use k3rs_apiserver::local_client::LocalClient;
use k3rs_client::{Client, DeleteParams, Resource};
use k3rs_proxy::model::SERVICE_NAME_LABEL;
use k3rs_proxy::{slice_resource, Nft, Proxy, ProxyConfig};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn client() -> Arc<dyn Client> {
    LocalClient::in_memory().await.expect("api")
}

fn slice(pods: &[usize]) -> Value {
    let eps: Vec<Value> = pods
        .iter()
        .map(|i| {
            json!({"addresses": [Topology::pod_ip(*i).to_string()], "nodeName": "n1",
            "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abcde", "namespace": "default",
            "labels": {SERVICE_NAME_LABEL: "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": eps})
}

struct Cleanup(Nft);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = k3rs_proxy::cleanup(&self.0);
    }
}

/// Polls (on a blocking thread) until `f` holds, or panics after 10 s.
async fn eventually(what: &str, f: impl Fn() -> bool + Send + Sync + 'static) {
    let f = Arc::new(f);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let g = f.clone();
        if tokio::task::spawn_blocking(move || g()).await.unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_follow_services_and_endpoint_slices() {
    let t = Topology::new("k3p-api", 3);
    let nft = Nft::in_netns(&t.node());
    let _c = Cleanup(nft.clone());
    let _s1 = Server::start(&t.pod(1), "pod1", 8080, 5353);
    let _s2 = Server::start(&t.pod(2), "pod2", 8080, 5353);
    let c = client().await;
    let proxy = Proxy::start(
        c.clone(),
        ProxyConfig::new("n1", vec![NODE_IP]),
        nft.clone(),
    );
    let mut syncs = proxy.syncs();
    syncs.wait_for(|n| *n >= 1).await.expect("first sync");

    let svc = c
        .create(
            &Resource::core("services"),
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            "test",
        )
        .await
        .expect("service");
    let cip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    let to = SocketAddr::from((cip, 80));
    c.create(&slice_resource(), Some("default"), slice(&[1]), "test")
        .await
        .expect("slice");
    let p3 = t.pod(3);
    eventually("pod1 behind the ClusterIP", move || {
        tcp(&p3, to).is_ok_and(|a| a.starts_with("pod1 "))
    })
    .await;
    let ext = t.ext();
    let a = tokio::task::spawn_blocking(move || tcp(&ext, SocketAddr::from((NODE_IP, node_port))))
        .await
        .unwrap()
        .expect("NodePort");
    assert!(a.starts_with("pod1 "), "{a}");

    // The endpoint moves to pod2.
    let mut s = c
        .get(&slice_resource(), Some("default"), "web-abcde")
        .await
        .unwrap();
    s["endpoints"] = slice(&[2])["endpoints"].clone();
    c.replace(
        &slice_resource(),
        Some("default"),
        "web-abcde",
        s,
        None,
        "test",
    )
    .await
    .expect("update slice");
    let p3 = t.pod(3);
    eventually("pod2 behind the ClusterIP", move || {
        tcp_names(&p3, to, 5).iter().all(|n| n == "pod2")
    })
    .await;

    // A burst of changes is coalesced into few syncs (at most one per 100 ms).
    let before = *syncs.borrow();
    let started = Instant::now();
    for i in 0..20 {
        let mut s = c
            .get(&slice_resource(), Some("default"), "web-abcde")
            .await
            .unwrap();
        s["endpoints"] = slice(if i % 2 == 0 { &[1] } else { &[2] })["endpoints"].clone();
        c.replace(
            &slice_resource(),
            Some("default"),
            "web-abcde",
            s,
            None,
            "test",
        )
        .await
        .expect("update slice");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let applied = *syncs.borrow() - before;
    let periods = started.elapsed().as_millis() as u64 / 100 + 2;
    assert!(
        applied <= periods,
        "{applied} syncs for 20 changes in {:?}",
        started.elapsed()
    );

    // Deleting the Service leaves no rule for it.
    c.delete(
        &Resource::core("services"),
        Some("default"),
        "web",
        &DeleteParams::default(),
    )
    .await
    .expect("delete");
    let n = nft.clone();
    eventually("the service's rules to go", move || {
        n.list_table("k3rs")
            .ok()
            .flatten()
            .is_some_and(|t| !t.contains("default/web/") && !t.contains(&cip.to_string()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_survives_resyncs() {
    let t = Topology::new("k3p-aps", 3);
    let nft = Nft::in_netns(&t.node());
    let _c = Cleanup(nft.clone());
    let _s1 = Server::start(&t.pod(1), "pod1", 8080, 5353);
    let _s2 = Server::start(&t.pod(2), "pod2", 8080, 5353);
    let c = client().await;
    let proxy = Proxy::start(
        c.clone(),
        ProxyConfig::new("n1", vec![NODE_IP]),
        nft.clone(),
    );
    let mut syncs = proxy.syncs();
    let services = Resource::core("services");
    let svc = c
        .create(
            &services,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"sessionAffinity": "ClientIP",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            "test",
        )
        .await
        .expect("service");
    let to = SocketAddr::from((
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .parse::<Ipv4Addr>()
            .unwrap(),
        80,
    ));
    c.create(&slice_resource(), Some("default"), slice(&[1, 2]), "test")
        .await
        .expect("slice");
    let p3 = t.pod(3);
    eventually("the service to answer", move || tcp(&p3, to).is_ok()).await;
    let p3 = t.pod(3);
    let first = tokio::task::spawn_blocking(move || tcp_names(&p3, to, 1))
        .await
        .unwrap()
        .remove(0);
    // Unrelated changes re-create the table several times; the client keeps its endpoint.
    for i in 0..3 {
        let before = *syncs.borrow();
        c.create(
            &services,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("other-{i}"), "namespace": "default"},
                "spec": {"ports": [{"port": 80}]}}),
            "test",
        )
        .await
        .expect("service");
        syncs.wait_for(|n| *n > before).await.expect("resync");
        let listed = nft.list_table("k3rs").unwrap().unwrap();
        assert!(
            listed.contains("10.42.3.2 "),
            "affinity entry lost: {listed}"
        );
        let p3 = t.pod(3);
        let names = tokio::task::spawn_blocking(move || tcp_names(&p3, to, 10))
            .await
            .unwrap();
        assert!(names.iter().all(|n| *n == first), "{first} then {names:?}");
    }
}
