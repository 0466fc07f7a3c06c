//! The pod network through real kubectl: the node (in its own network namespace) gets a podCIDR,
//! pods get addresses on `cni0` and reach each other, the node and — masqueraded as the node —
//! an upstream listener on the host side of the node's veth; a hostPort answers from outside and
//! from the node itself; deleting the pods leaves no veths, addresses or DNAT rules. Needs root.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:test
    imagePullPolicy: Never
    command: ["nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-web"]
    ports: [{containerPort: 8080, hostPort: 18080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: host}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sleep", "3600"]}
"#;

fn pod_ip(c: &Cluster, name: &str) -> Option<String> {
    let out = c
        .ok(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.phase} {.status.podIP}",
        ])
        .ok()?;
    let (phase, ip) = out.trim().split_once(' ')?;
    (phase == "Running" && !ip.is_empty()).then(|| ip.to_string())
}

/// `nc` from a pod to `ip:port`; what the server said.
fn nc_from(c: &Cluster, pod: &str, ip: &str, port: u16) -> String {
    c.kubectl(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        &format!("nc -w 3 {ip} {port} </dev/null"),
    ])
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap_or_default()
}

fn read_all(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn pods_reach_each_other_the_node_and_upstream() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let mut c = Cluster::start_node()?;
    let ns = c
        .netns()
        .expect("a node cluster has a namespace")
        .name()
        .to_string();
    let node_ip = c.node_ip();
    let host_side = c.host_side_ip().expect("host side");
    let node = eventually(Duration::from_secs(20), || {
        c.node_name().ok().filter(|n| !n.is_empty())
    })
    .expect("node registered");
    let pod_cidr = eventually(Duration::from_secs(20), || {
        let s = c
            .ok(&["get", "node", &node, "-o", "jsonpath={.spec.podCIDR}"])
            .ok()?;
        (!s.trim().is_empty()).then(|| s.trim().to_string())
    })
    .expect("the node got a podCIDR");
    assert_eq!(pod_cidr, "10.42.0.0/24");

    c.kubectl_stdin(None, &["apply", "-f", "-"], PODS)?;
    let web = eventually(Duration::from_secs(60), || pod_ip(&c, "web"));
    let client = eventually(Duration::from_secs(60), || pod_ip(&c, "client"));
    let (Some(web), Some(client)) = (web, client) else {
        panic!(
            "pods did not get running with addresses: {}\n{}",
            c.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(),
            c.log()
        );
    };
    let host_pod = eventually(Duration::from_secs(60), || pod_ip(&c, "host")).expect("host pod");
    assert_ne!(web, client, "addresses are unique");
    for ip in [&web, &client] {
        assert!(ip.starts_with("10.42.0."), "{ip} outside the podCIDR");
    }
    assert_eq!(
        host_pod,
        node_ip.to_string(),
        "hostNetwork pods have the node IP"
    );
    let ips = c.ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIPs[*].ip}"])?;
    assert_eq!(ips.trim(), web);

    // Pod → pod by IP.
    assert_eq!(nc_from(&c, "client", &web, 8080).trim(), "hello-from-web");

    // Pod → node IP: a listener in the node's namespace.
    let mut node_listener = c
        .command("busybox")
        .args(["nc", "-l", "-p", "19090", "-e", "echo", "hello-from-node"])
        .spawn()?;
    let from_node = eventually(Duration::from_secs(10), || {
        let s = nc_from(&c, "client", &node_ip.to_string(), 19090);
        (!s.is_empty()).then_some(s)
    });
    let _ = node_listener.kill();
    let _ = node_listener.wait();
    assert_eq!(from_node.as_deref().map(str::trim), Some("hello-from-node"));

    // Pod → upstream: a listener on the host side sees the node IP (masquerade).
    let upstream = TcpListener::bind((host_side, 0))?;
    let port = upstream.local_addr()?.port();
    upstream.set_nonblocking(true)?;
    // The pod's nc waits for the listener to close: accept on another thread.
    let acceptor = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok((mut s, addr)) = upstream.accept() {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                return Some((addr.ip(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    for _ in 0..3 {
        let _ = c.kubectl(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!("echo from-pod | nc -w 3 {host_side} {port}"),
        ]);
        if acceptor.is_finished() {
            break;
        }
    }
    let peer = acceptor.join().expect("acceptor");
    let (src, said) = peer.expect("the upstream listener saw no connection from the pod");
    assert_eq!(
        src,
        std::net::IpAddr::V4(node_ip),
        "pod traffic is masqueraded"
    );
    assert_eq!(said.trim(), "from-pod");

    // Host → hostPort, from outside the node and from the node itself (127.0.0.1 and node IP).
    let outside = read_all(SocketAddr::from((node_ip, 18080)))?;
    assert_eq!(outside.trim(), "hello-from-web");
    let local = c.in_netns(&["busybox", "nc", "-w", "3", "127.0.0.1", "18080"])?;
    assert_eq!(local.trim(), "hello-from-web");
    // Hairpin: a pod through the node's hostPort.
    assert_eq!(
        nc_from(&c, "client", &node_ip.to_string(), 18080).trim(),
        "hello-from-web"
    );

    // A crashed and restarted daemon keeps the pods' addresses and links (attach is idempotent
    // across processes) and re-publishes the hostPort.
    c.restart()?;
    let web_after = eventually(Duration::from_secs(30), || pod_ip(&c, "web"));
    assert_eq!(web_after.as_deref(), Some(web.as_str()));
    assert_eq!(nc_from(&c, "client", &web, 8080).trim(), "hello-from-web");
    let again = eventually(Duration::from_secs(20), || {
        read_all(SocketAddr::from((node_ip, 18080)))
            .ok()
            .filter(|s| s.trim() == "hello-from-web")
    });
    assert!(again.is_some(), "hostPort lost after a restart");

    // Delete everything: no veths, no address files, no DNAT left.
    c.ok(&["delete", "pod", "web", "client", "host", "--wait=true"])?;
    let ipam = c.data_dir().join("agent/ipam");
    let clean = eventually(Duration::from_secs(20), || {
        let links = c.in_netns(&["ip", "-o", "link"]).ok()?;
        let files: Vec<String> = std::fs::read_dir(&ipam)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        let table = c
            .in_netns(&["nft", "list", "table", "ip", "k3rs-net"])
            .ok()?;
        (!links.contains(": veth") && files.is_empty() && !table.contains("dnat to")).then_some(())
    });
    assert!(
        clean.is_some(),
        "leftovers in {ns}: {}\n{:?}\n{}",
        c.in_netns(&["ip", "-o", "link"]).unwrap_or_default(),
        std::fs::read_dir(&ipam).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
        c.in_netns(&["nft", "list", "table", "ip", "k3rs-net"])
            .unwrap_or_default()
    );

    // Attach/detach latency as the node logged it.
    // The log may carry ANSI colours around field names.
    let log: String = {
        let raw = c.log();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                for n in chars.by_ref() {
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(ch);
            }
        }
        out
    };
    let times = |what: &str| -> Vec<u64> {
        log.lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| l.split("elapsed_us=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse().ok())
            .collect()
    };
    eprintln!(
        "attach µs: {:?}; detach µs: {:?}",
        times("pod attached"),
        times("pod detached")
    );
    Ok(())
}
