//! The pod network against the real kernel, without an API server: a test-made namespace plays
//! the node (bridge, table) and two more play pods. Needs root, `ip`, `nft` and busybox.

use k3rs_network::{cleanup, veth_name, Cidr, HostPort, NetworkConfig, PodNetwork, Protocol};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("running a command")
}

fn ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces made by this test, deleted on drop (also when an assertion fails).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: String) -> PathBuf {
        let _ = sh(&["ip", "netns", "del", &name]);
        ok(&["ip", "netns", "add", &name]);
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        self.0.push(name.clone());
        Path::new("/run/netns").join(name)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

/// A process this test started, killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn enter(path: &Path) {
    let f = std::fs::File::open(path).expect("opening the node namespace");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

fn in_ns(ns: &str, cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["ip", "netns", "exec", ns];
    args.extend_from_slice(cmd);
    sh(&args)
}

#[test]
fn attach_detach_in_test_namespaces() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let pid = std::process::id();
    let mut nss = Namespaces(Vec::new());
    let node_ns = nss.add(format!("k3n-{pid}-node"));
    let pod_a = format!("k3n-{pid}-a");
    let pod_b = format!("k3n-{pid}-b");
    let ns_a = nss.add(pod_a.clone());
    let ns_b = nss.add(pod_b.clone());
    let state = tempfile::tempdir().unwrap();

    // This test thread becomes the node: threads and processes it starts inherit the namespace.
    enter(&node_ns);
    let cfg = NetworkConfig::new(
        "10.42.0.0/16".parse().unwrap(),
        "10.42.3.0/24".parse::<Cidr>().unwrap(),
        state.path(),
    );
    let ipam_dir = cfg.ipam_dir.clone();
    let state_dir = cfg.state_dir.clone();
    let net = PodNetwork::setup(cfg.clone()).unwrap();
    let addrs = ok(&["ip", "-4", "addr", "show", "cni0"]);
    assert!(addrs.contains("10.42.3.1/24"), "{addrs}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );

    let web = HostPort {
        protocol: Protocol::Tcp,
        host_port: 18080,
        container_port: 8080,
        host_ip: None,
    };
    let t = Instant::now();
    let a = net.attach("uid-a", &ns_a, &[]).unwrap();
    let attach_a = t.elapsed();
    let t = Instant::now();
    let b = net
        .attach("uid-b", &ns_b, std::slice::from_ref(&web))
        .unwrap();
    let attach_b = t.elapsed();
    let ip_a = a.ips[0].addr.to_string();
    let ip_b = b.ips[0].addr.to_string();
    assert_eq!(ip_a, "10.42.3.2");
    assert_eq!(ip_b, "10.42.3.3");
    assert_eq!(a.host_veth, veth_name("uid-a"));
    // Idempotent: same answer, nothing re-created.
    let t = Instant::now();
    assert_eq!(net.attach("uid-a", &ns_a, &[]).unwrap(), a);
    let again = t.elapsed();

    // Inside the pod: eth0 with the address, default route via the bridge.
    let eth0 =
        String::from_utf8_lossy(&in_ns(&pod_a, &["ip", "-4", "addr", "show", "eth0"]).stdout)
            .into_owned();
    assert!(eth0.contains("10.42.3.2/24"), "{eth0}");
    let routes = String::from_utf8_lossy(&in_ns(&pod_a, &["ip", "route"]).stdout).into_owned();
    assert!(
        routes.contains("default via 10.42.3.1 dev eth0"),
        "{routes}"
    );
    let master = ok(&["ip", "-o", "link", "show", &a.host_veth]);
    assert!(master.contains("master cni0"), "{master}");

    // Pod → pod and pod → gateway.
    for (ns, dst) in [(&pod_a, ip_b.as_str()), (&pod_b, "10.42.3.1")] {
        let out = in_ns(ns, &["busybox", "ping", "-c", "1", "-W", "2", dst]);
        assert!(
            out.status.success(),
            "ping {dst} from {ns}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // hostPort: the node's own connection to 127.0.0.1:18080 reaches pod b's :8080.
    let table = ok(&["nft", "list", "table", "ip", "k3rs-net"]);
    assert!(
        table.contains(&format!("tcp dport 18080 dnat to {ip_b}:8080")),
        "{table}"
    );
    let server = Child(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod_b,
                "busybox",
                "nc",
                "-ll",
                "-p",
                "8080",
                "-e",
                "echo",
                "via-hostport",
            ])
            .spawn()
            .unwrap(),
    );
    let reply = |cmd: &str| {
        (0..25).find_map(|_| {
            let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
            let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if s == "via-hostport" {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(200));
            None
        })
    };
    assert!(
        reply("busybox nc -w 2 127.0.0.1 18080 </dev/null").is_some(),
        "no answer through the hostPort on 127.0.0.1"
    );
    // Hairpin: pod a through the node's address to pod b's hostPort.
    assert!(
        reply(&format!(
            "ip netns exec {pod_a} busybox nc -w 2 10.42.3.1 18080 </dev/null"
        ))
        .is_some(),
        "no answer through the hostPort from a pod"
    );
    drop(server);

    // Detach: veth and address gone, host port out of the table; a second detach is a no-op.
    let t = Instant::now();
    net.detach("uid-b").unwrap();
    let detach_b = t.elapsed();
    net.detach("uid-b").unwrap();
    assert!(!sh(&["ip", "link", "show", &b.host_veth]).status.success());
    let table = ok(&["nft", "list", "table", "ip", "k3rs-net"]);
    assert!(!table.contains("dport 18080"), "{table}");
    assert!(!ipam_dir.join(&ip_b).exists());

    // Detach after the pod's namespace is already gone.
    ok(&["ip", "netns", "del", &pod_a]);
    net.detach("uid-a").unwrap();
    assert!(!sh(&["ip", "link", "show", &a.host_veth]).status.success());
    assert!(!ipam_dir.join(&ip_a).exists());

    // A "restart": a fresh PodNetwork publishes the hostPorts of pods attached before, keeps a
    // running pod's link and address on re-attach, and releases what no live pod owns.
    let c = net
        .attach("uid-c", &ns_b, std::slice::from_ref(&web))
        .unwrap();
    drop(net);
    ok(&["nft", "delete", "table", "ip", "k3rs-net"]);
    let net = PodNetwork::setup(cfg).unwrap();
    let table = ok(&["nft", "list", "table", "ip", "k3rs-net"]);
    let dnat = format!("tcp dport 18080 dnat to {}:8080", c.ips[0].addr);
    assert!(table.contains(&dnat), "{table}");
    let t = Instant::now();
    assert_eq!(
        net.attach("uid-c", &ns_b, std::slice::from_ref(&web))
            .unwrap(),
        c
    );
    let reattach = t.elapsed();
    let released = net
        .remove_orphans(&std::collections::HashSet::new())
        .unwrap();
    assert_eq!(released, vec!["uid-c".to_string()]);
    assert!(!sh(&["ip", "link", "show", &c.host_veth]).status.success());
    let table = ok(&["nft", "list", "table", "ip", "k3rs-net"]);
    assert!(!table.contains("dnat to"), "{table}");
    assert!(!state_dir.join("hostports/uid-c").exists());

    // The bridge removed behind the network's back (an admin, killall): the next pod
    // re-creates it instead of failing on the remembered bridge index.
    ok(&["ip", "link", "del", "cni0"]);
    let ns_d = nss.add(format!("k3n-{pid}-d"));
    let d = net.attach("uid-d", &ns_d, &[]).unwrap();
    let master = ok(&["ip", "-o", "link", "show", &d.host_veth]);
    assert!(master.contains("master cni0"), "{master}");
    let addrs = ok(&["ip", "-4", "addr", "show", "cni0"]);
    assert!(addrs.contains("10.42.3.1/24"), "{addrs}");
    net.detach("uid-d").unwrap();

    cleanup("cni0", &[&ipam_dir, &state_dir]).unwrap();
    assert!(!sh(&["ip", "link", "show", "cni0"]).status.success());
    assert!(!sh(&["nft", "list", "table", "ip", "k3rs-net"])
        .status
        .success());
    assert!(!ipam_dir.exists());
    assert!(!state_dir.exists());
    eprintln!(
        "attach: first {attach_a:?}, with hostPort {attach_b:?}, repeated {again:?}, after a restart {reattach:?}; detach {detach_b:?}"
    );
}
