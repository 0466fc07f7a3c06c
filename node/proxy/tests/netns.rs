//! The rendered table applied in a node network namespace, with real TCP/UDP connections from
//! "pod" and "external" namespaces (needs root and the nft binary).

mod common;

use common::{tcp, tcp_names, udp, Server, Topology, EXT_IP, NODE_IP};
use k3rs_proxy::model::SERVICE_NAME_LABEL;
use k3rs_proxy::render::render;
use k3rs_proxy::{Nft, ProxyConfig};
use serde_json::{json, Value};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};

fn config() -> ProxyConfig {
    ProxyConfig::new("n1", vec![NODE_IP])
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn service(name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": "default", "name": name}, "spec": spec})
}

/// A slice with ports http/TCP 8080 and dns/UDP 5353; endpoints (pod index, node, ready, serving, terminating).
fn slice(svc: &str, eps: &[(usize, &str, bool, bool, bool)]) -> Value {
    let eps: Vec<Value> = eps
        .iter()
        .map(|(i, node, ready, serving, terminating)| {
            json!({"addresses": [Topology::pod_ip(*i).to_string()], "nodeName": node,
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
        })
        .collect();
    json!({"metadata": {"namespace": "default", "name": format!("{svc}-abcde"),
            "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080},
                  {"name": "dns", "protocol": "UDP", "port": 5353}],
        "endpoints": eps})
}

fn ports(node_ports: bool) -> Value {
    if node_ports {
        json!([{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080},
               {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053}])
    } else {
        json!([{"name": "http", "protocol": "TCP", "port": 80},
               {"name": "dns", "protocol": "UDP", "port": 53}])
    }
}

/// Removes the table even when the test fails.
struct Cleanup(Nft);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = k3rs_proxy::cleanup(&self.0);
    }
}

#[test]
fn cluster_ip_node_port_and_load_balancer_ip_carry_tcp_and_udp() {
    let t = Topology::new("k3p-lb", 3);
    let nft = Nft::in_netns(&t.node());
    let _c = Cleanup(nft.clone());
    let _s1 = Server::start(&t.pod(1), "pod1", 8080, 5353);
    let _s2 = Server::start(&t.pod(2), "pod2", 8080, 5353);
    let cip = Ipv4Addr::new(10, 43, 0, 20);
    let mut lb = service(
        "web",
        json!({"clusterIP": cip.to_string(), "type": "LoadBalancer", "ports": [
            {"name": "http", "protocol": "TCP", "port": 8000, "nodePort": 30080},
            {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053}]}),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": NODE_IP.to_string()}]}});
    let slices = [slice(
        "web",
        &[(1, "n1", true, true, false), (2, "n1", true, true, false)],
    )];
    // An SCTP Service too: the kernel takes the whole ruleset, whatever the protocols.
    let sctp = service(
        "sctp",
        json!({"clusterIP": "10.43.0.29", "ports": [{"name": "s", "protocol": "SCTP", "port": 9}]}),
    );
    let mut sctp_slice = slice("sctp", &[(1, "n1", true, true, false)]);
    sctp_slice["ports"] = json!([{"name": "s", "protocol": "SCTP", "port": 9999}]);
    let text = render(&config(), &[lb, sctp], &[slices[0].clone(), sctp_slice]);
    assert!(text.contains("10.43.0.29 . sctp . 9 : goto svc-"));
    assert!(text.contains("meta l4proto sctp dnat to 10.42.1.2:9999"));
    nft.check(&text).expect("nft -c accepts the ruleset");
    nft.apply(&text).expect("apply");

    // Pod → ClusterIP: both endpoints answer, random balancing; the pod's own IP is kept.
    let answers: Vec<String> = (0..30)
        .map(|_| tcp(&t.pod(3), addr(cip, 8000)).expect("pod → ClusterIP"))
        .collect();
    assert!(
        answers.iter().any(|a| a.starts_with("pod1 ")),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|a| a.starts_with("pod2 ")),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|a| a.ends_with(" 10.42.3.2")),
        "{answers:?}"
    );
    let a = udp(&t.pod(3), addr(cip, 53)).expect("pod → ClusterIP over UDP");
    assert!(a.starts_with("pod1 ") || a.starts_with("pod2 "), "{a}");
    // Hairpin: a pod reaching itself through the Service works (masqueraded).
    for _ in 0..10 {
        tcp(&t.pod(1), addr(cip, 8000)).expect("hairpin");
    }
    // The node itself → ClusterIP.
    tcp(&t.node(), addr(cip, 8000)).expect("node → ClusterIP");
    // External → NodePort and → LoadBalancer IP (the node IP, ServiceLB style): masqueraded.
    let a = tcp(&t.ext(), addr(NODE_IP, 30080)).expect("ext → NodePort");
    assert!(
        a.ends_with(" 10.42.1.1") || a.ends_with(" 10.42.2.1"),
        "{a}"
    );
    let a = tcp(&t.ext(), addr(NODE_IP, 8000)).expect("ext → LB IP");
    assert!(a.starts_with("pod"), "{a}");
    let a = udp(&t.ext(), addr(NODE_IP, 30053)).expect("ext → UDP NodePort");
    assert!(a.starts_with("pod"), "{a}");
    // A port the ClusterIP does not serve is refused at once.
    let e = tcp(&t.pod(3), addr(cip, 81)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    k3rs_proxy::cleanup(&nft).expect("cleanup");
    assert!(nft.list_table("k3rs").unwrap().is_none());
    assert!(tcp(&t.pod(3), addr(cip, 8000)).is_err());
}

#[test]
fn readiness_changes_and_no_endpoints_reject() {
    let t = Topology::new("k3p-rd", 3);
    let nft = Nft::in_netns(&t.node());
    let _c = Cleanup(nft.clone());
    let _s1 = Server::start(&t.pod(1), "pod1", 8080, 5353);
    let _s2 = Server::start(&t.pod(2), "pod2", 8080, 5353);
    let cip = Ipv4Addr::new(10, 43, 0, 21);
    let svc = [service(
        "web",
        json!({"clusterIP": cip.to_string(), "type": "NodePort", "ports": ports(true)}),
    )];
    let apply = |eps: &[(usize, &str, bool, bool, bool)]| {
        nft.apply(&render(&config(), &svc, &[slice("web", eps)]))
            .expect("apply");
    };

    // No ready endpoint: TCP is reset, UDP gets port unreachable, NodePort too.
    apply(&[(1, "n1", false, false, false)]);
    let e = tcp(&t.pod(3), addr(cip, 80)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    let e = udp(&t.pod(3), addr(cip, 53)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    let e = tcp(&t.ext(), addr(NODE_IP, 30080)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    // pod1 ready: all traffic goes there.
    apply(&[(1, "n1", true, true, false), (2, "n1", false, false, false)]);
    assert!(tcp_names(&t.pod(3), addr(cip, 80), 10)
        .iter()
        .all(|n| n == "pod1"));
    // pod1 not ready any more, pod2 ready: traffic moves.
    apply(&[(1, "n1", false, false, false), (2, "n1", true, true, false)]);
    assert!(tcp_names(&t.pod(3), addr(cip, 80), 10)
        .iter()
        .all(|n| n == "pod2"));
    // pod2 terminating but still serving, nothing ready: it keeps getting traffic.
    apply(&[(1, "n1", false, false, false), (2, "n1", false, true, true)]);
    assert!(tcp_names(&t.pod(3), addr(cip, 80), 5)
        .iter()
        .all(|n| n == "pod2"));
    // Terminating and not serving: rejected.
    apply(&[(2, "n1", false, false, true)]);
    let e = tcp(&t.pod(3), addr(cip, 80)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn client_ip_affinity_and_external_traffic_policy_local() {
    let t = Topology::new("k3p-af", 3);
    let nft = Nft::in_netns(&t.node());
    let _c = Cleanup(nft.clone());
    let _s1 = Server::start(&t.pod(1), "pod1", 8080, 5353);
    let _s2 = Server::start(&t.pod(2), "pod2", 8080, 5353);
    let aff_ip = Ipv4Addr::new(10, 43, 0, 22);
    let services = [
        service(
            "sticky",
            json!({"clusterIP": aff_ip.to_string(), "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}, "ports": ports(false)}),
        ),
        service(
            "local",
            json!({"clusterIP": "10.43.0.23", "type": "NodePort", "externalTrafficPolicy": "Local",
                "ports": ports(true)}),
        ),
    ];
    let eps = [(1, "n1", true, true, false), (2, "n2", true, true, false)];
    let slices = [slice("sticky", &eps), slice("local", &eps)];
    nft.apply(&render(&config(), &services, &slices))
        .expect("apply");

    // Affinity: every connection from one client lands on the same endpoint.
    let names = tcp_names(&t.pod(3), addr(aff_ip, 80), 15);
    assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
    let listed = nft.list_table("k3rs").unwrap().unwrap();
    assert!(
        listed.contains("10.42.3.2 expires"),
        "affinity entry: {listed}"
    );

    // Local: external clients reach only the node-local endpoint and keep their source IP.
    for _ in 0..10 {
        let a = tcp(&t.ext(), addr(NODE_IP, 30080)).expect("ext → Local NodePort");
        assert_eq!(a, format!("pod1 {EXT_IP}"));
    }
    // Pods still use every endpoint of a Local service.
    let names = tcp_names(&t.pod(3), addr(NODE_IP, 30080), 30);
    assert!(names.iter().any(|n| n == "pod2"), "{names:?}");

    // No local endpoint: external traffic is dropped (not rejected): the connection times out.
    let only_remote = [slice("sticky", &eps), slice("local", &eps[1..])];
    nft.apply(&render(&config(), &services, &only_remote))
        .expect("apply");
    let e = tcp(&t.ext(), addr(NODE_IP, 30080)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
}
