//! `k3rs killall` (K3s's k3s-killall.sh): with pods running, a Service, a hostPort and a
//! NetworkPolicy in place, it stops the server and every container of the node and leaves the
//! node's network namespace without the bridge, veths, nftables tables or the DNS interface; a
//! new server on the same data dir brings the cluster back. Needs root.

use k3rs_e2e::{eventually, is_root, k3rs_bin, Cluster};
use std::time::Duration;

const OBJECTS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: web
    image: busybox:test
    imagePullPolicy: Never
    command: ["nc", "-ll", "-p", "8080", "-e", "echo", "hi"]
    ports: [{containerPort: 8080, hostPort: 18081}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec:
  podSelector: {}
"#;

#[test]
fn killall_removes_what_the_node_put_into_the_host() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the node needs root");
        return Ok(());
    }
    let mut c = Cluster::start_node()?;
    let sa = eventually(Duration::from_secs(10), || {
        c.ok(&["get", "serviceaccount", "default"]).ok()
    });
    assert!(sa.is_some(), "no default ServiceAccount");
    c.kubectl_stdin(None, &["apply", "-f", "-"], OBJECTS)?;
    let running = eventually(Duration::from_secs(60), || {
        let s = c
            .ok(&["get", "pod", "web", "-o", "jsonpath={.status.phase}"])
            .ok()?;
        (s == "Running").then_some(())
    });
    assert!(running.is_some(), "pod did not start:\n{}", c.log());
    let tables = || c.in_netns(&["nft", "list", "tables"]).unwrap_or_default();
    let settled = eventually(Duration::from_secs(20), || {
        let t = tables();
        (t.contains("k3rs-net") && t.contains("table ip k3rs\n") && t.contains("k3rs-policy"))
            .then_some(())
    });
    assert!(
        settled.is_some(),
        "tables missing before killall: {}",
        tables()
    );
    let links = c.in_netns(&["ip", "-o", "link"])?;
    assert!(links.contains("cni0") && links.contains("veth"), "{links}");
    let addrs = c.in_netns(&["ip", "-o", "addr"])?;
    assert!(
        addrs.contains("10.43.0.10"),
        "no DNS address before killall: {addrs}"
    );
    let data = c.data_dir();
    let shims = || {
        std::process::Command::new("pgrep")
            .args(["-f", &format!("k3rs shim .*{}", data.display())])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    assert!(!shims().is_empty(), "no shim runs the pod");

    let out = c
        .command(k3rs_bin())
        .args(["killall", "--data-dir"])
        .arg(&data)
        .output()?;
    assert!(
        out.status.success(),
        "killall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server is this test's child: once stopped it is a zombie until reaped.
    let alive = c.pid().is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    });
    assert!(!alive, "the server still runs");
    assert_eq!(shims(), "", "container shims left");
    let links = c.in_netns(&["ip", "-o", "link"])?;
    for gone in ["cni0", "veth", "k3rs-dns"] {
        assert!(!links.contains(gone), "{gone} left: {links}");
    }
    let addrs = c.in_netns(&["ip", "-o", "addr"])?;
    assert!(!addrs.contains("10.43.0.10"), "DNS address left: {addrs}");
    let t = tables();
    assert!(!t.contains("k3rs"), "tables left: {t}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&data.display().to_string()),
        "mounts left under the data dir"
    );
    assert!(!data.join("agent/ipam").exists(), "IP allocations left");

    // The datastore stays: a new server brings the same cluster and the pod back.
    c.restart()?;
    let back = eventually(Duration::from_secs(60), || {
        let s = c
            .ok(&[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.status.phase} {.status.podIP}",
            ])
            .ok()?;
        s.starts_with("Running 10.42.").then_some(())
    });
    assert!(back.is_some(), "the pod did not come back:\n{}", c.log());
    Ok(())
}
