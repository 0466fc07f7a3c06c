//! A node in its own network namespace with "pod" namespaces routed through it and an
//! "external" namespace on the node's uplink; echo servers and clients run on sockets created
//! inside those namespaces (a thread enters the namespace, creates the socket, and leaves it
//! to the caller: a socket stays in the namespace it was created in).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The node's IP on the uplink (NodePorts and LoadBalancer IPs answer here).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The external client's IP.
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside the network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open netns");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&fd),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// `<prefix>-node`, `<prefix>-ext` and `<prefix>-p<i>` (pod i has 10.42.i.2, the node
/// 10.42.i.1); deleted on drop.
pub struct Topology {
    pub prefix: String,
    pods: usize,
}

impl Topology {
    pub fn new(prefix: &str, pods: usize) -> Topology {
        let t = Topology {
            prefix: prefix.to_string(),
            pods,
        };
        for ns in t.names() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let node = t.node();
        sh(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let mut links = vec![(
            "x0".to_string(),
            t.ext(),
            format!("{NODE_IP}/24"),
            format!("{EXT_IP}/24"),
            NODE_IP.to_string(),
        )];
        for i in 1..=pods {
            links.push((
                format!("v{i}"),
                t.pod(i),
                format!("10.42.{i}.1/24"),
                format!("10.42.{i}.2/24"),
                format!("10.42.{i}.1"),
            ));
        }
        for (dev, peer_ns, node_addr, peer_addr, gw) in links {
            sh(&[
                "ip", "-n", &node, "link", "add", &dev, "type", "veth", "peer", "name", "eth0",
                "netns", &peer_ns,
            ]);
            sh(&["ip", "-n", &node, "addr", "add", &node_addr, "dev", &dev]);
            sh(&["ip", "-n", &node, "link", "set", &dev, "up"]);
            sh(&[
                "ip", "-n", &peer_ns, "addr", "add", &peer_addr, "dev", "eth0",
            ]);
            sh(&["ip", "-n", &peer_ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &peer_ns, "route", "add", "default", "via", &gw]);
        }
        // The node's upstream is the external namespace (ClusterIPs are routed like any
        // remote address until the DNAT, so the node needs a default route, as real ones have).
        sh(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "default",
            "via",
            &EXT_IP.to_string(),
        ]);
        t
    }

    fn names(&self) -> Vec<String> {
        let mut v = vec![self.node(), self.ext()];
        v.extend((1..=self.pods).map(|i| self.pod(i)));
        v
    }

    pub fn node(&self) -> String {
        format!("{}-node", self.prefix)
    }

    pub fn ext(&self) -> String {
        format!("{}-ext", self.prefix)
    }

    pub fn pod(&self, i: usize) -> String {
        format!("{}-p{i}", self.prefix)
    }

    pub fn pod_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 42, i as u8, 2)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.names() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// TCP and UDP echo servers in a pod: each answers `<name> <peer ip>`. Stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(ns: &str, name: &str, tcp_port: u16, udp_port: u16) -> Server {
        let (tcp, udp) = in_netns(ns, move || {
            let t = TcpListener::bind(("0.0.0.0", tcp_port)).expect("bind tcp");
            let u = UdpSocket::bind(("0.0.0.0", udp_port)).expect("bind udp");
            (t, u)
        });
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, n1) = (stop.clone(), name.to_string());
        std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.write_all(format!("{n1} {}", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let (s2, n2) = (stop.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{n2} {}", peer.ip()).as_bytes(), peer);
                }
            }
        });
        Server { stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Connects from namespace `ns` and reads the server's answer.
pub fn tcp(ns: &str, to: SocketAddr) -> std::io::Result<String> {
    let s = in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(1500))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    (&s).read_to_string(&mut out)?;
    Ok(out)
}

/// Sends one datagram from namespace `ns` and waits for the answer.
pub fn udp(ns: &str, to: SocketAddr) -> std::io::Result<String> {
    let s = in_netns(ns, || UdpSocket::bind("0.0.0.0:0"))?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_millis(1500)))?;
    s.send(b"?")?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The server names answering `n` connections.
pub fn tcp_names(ns: &str, to: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            tcp(ns, to)
                .unwrap_or_else(|e| panic!("{to}: {e}"))
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}
