//! As root, in a network namespace this test creates: the DNS address on the `k3rs-dns`
//! interface (or `lo` on kernels without the dummy driver), the server on `<dns ip>:53`, and
//! `dig @<dns ip>` from inside the namespace. Skipped (with a message) when not root.

use k3rs_dns::{Config, DnsServer, Records};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("ip netns add")
            .success();
        assert!(ok, "ip netns add {name}");
        Netns(name.to_string())
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn dns_address_interface_and_port_53_in_a_netns() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root for a network namespace");
        return;
    }
    let ns = Netns::new(&format!("k3rsdns-t{}", std::process::id()));
    let dns_ip = IpAddr::V4(Ipv4Addr::new(10, 43, 0, 10));
    let name = ns.0.clone();
    // A thread of our own enters the namespace; the runtime and sockets live there.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let t = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let lo = Command::new("ip").args(["link", "set", "lo", "up"]).status();
            assert!(lo.is_ok_and(|s| s.success()));
            // Twice: a restarted node finds the interface and address already there.
            for _ in 0..2 {
                if let Err(e) = k3rs_dns::iface::ensure_interface(k3rs_dns::iface::INTERFACE, dns_ip).await {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            }
            let services = vec![json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
                "spec": {"clusterIP": "10.43.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}})];
            let records = Records::new("cluster.local", dns_ip, k3rs_dns::TTL, &services, &[]).expect("records");
            let cfg = Config::new(SocketAddr::new(dns_ip, 53), "cluster.local", dns_ip, Vec::new());
            let server = DnsServer::start(&cfg, records).await.expect("server on :53");
            let _ = ready_tx.send(Ok(()));
            // Serve until the test is done.
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            server.shutdown().await.expect("shutdown");
        });
    });
    ready_rx.recv().expect("server thread").expect("interface");
    let addrs = String::from_utf8(ns.exec(&["ip", "-o", "addr", "show"]).stdout).unwrap();
    assert!(addrs.contains("inet 10.43.0.10/32"), "{addrs}");
    assert_eq!(addrs.matches("inet 10.43.0.10/32").count(), 1, "{addrs}");
    let out = ns.exec(&[
        "dig",
        "@10.43.0.10",
        "+short",
        "+time=2",
        "+tries=1",
        "kube-dns.kube-system.svc.cluster.local",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.43.0.10");
    let out = ns.exec(&[
        "dig",
        "@10.43.0.10",
        "+tcp",
        "+short",
        "+time=2",
        "+tries=1",
        "-x",
        "10.43.0.10",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kube-dns.kube-system.svc.cluster.local."
    );
    tx.send(()).expect("stop");
    t.join().expect("server thread");
}
