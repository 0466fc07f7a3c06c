//! NetworkPolicy enforcement on the node, through real kubectl: a default-deny policy cuts a
//! pod off, an allow rule re-opens exactly the port it names, egress rules hold, and removing the
//! policies leaves no chains behind. Needs root, as the node does.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::time::Duration;

const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: server, namespace: np, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "nc -ll -p 80 -e echo hello & exec nc -ll -p 8080 -e echo hello"]
    ports: [{name: alt, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: np, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: np, labels: {app: stranger}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sleep", "3600"]}
"#;

const DENY_ALL_INGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: np}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

const ALLOW_CLIENT_ALT: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-alt, namespace: np}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: alt}]
"#;

const CLIENT_EGRESS_ONLY_80: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: np}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 80}]
"#;

/// Whether `from` gets the greeting at `ip:port` (a short timeout: dropped packets just time out).
fn reaches(c: &Cluster, from: &str, ip: &str, port: u16) -> bool {
    c.kubectl(&[
        "exec",
        "-n",
        "np",
        from,
        "--",
        "sh",
        "-c",
        &format!("nc -w 2 {ip} {port} </dev/null"),
    ])
    .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello"))
    .unwrap_or(false)
}

/// Waits until reachability of `ip:port` from `from` is `want` (rules apply asynchronously).
fn settles(c: &Cluster, from: &str, ip: &str, port: u16, want: bool) -> bool {
    eventually(Duration::from_secs(20), || {
        (reaches(c, from, ip, port) == want).then_some(())
    })
    .is_some()
}

#[test]
fn default_deny_then_allow_exactly_one_port() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the node needs root");
        return Ok(());
    }
    let c = Cluster::start_node()?;
    c.ok(&["create", "namespace", "np"])?;
    // Pods are admitted once the namespace's default ServiceAccount exists, as upstream.
    let sa = eventually(Duration::from_secs(10), || {
        c.ok(&["get", "serviceaccount", "-n", "np", "default"]).ok()
    });
    assert!(sa.is_some(), "no default ServiceAccount in np");
    c.kubectl_stdin(None, &["apply", "-f", "-"], PODS)?;
    let running = eventually(Duration::from_secs(60), || {
        let out = c
            .ok(&[
                "get",
                "pods",
                "-n",
                "np",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ])
            .ok()?;
        (out.split_whitespace().filter(|p| *p == "Running").count() == 3).then_some(())
    });
    assert!(running.is_some(), "pods did not start:\n{}", c.log());
    let ip = c
        .ok(&[
            "get",
            "pod",
            "-n",
            "np",
            "server",
            "-o",
            "jsonpath={.status.podIP}",
        ])?
        .trim()
        .to_string();
    assert!(ip.starts_with("10.42."), "server pod IP {ip:?}");
    // The listeners in the server container may need a moment after Running.
    assert!(
        settles(&c, "client", &ip, 80, true),
        "no baseline connectivity"
    );
    assert!(reaches(&c, "client", &ip, 8080));
    assert!(reaches(&c, "stranger", &ip, 80));

    c.kubectl_stdin(None, &["apply", "-f", "-"], DENY_ALL_INGRESS)?;
    assert!(
        settles(&c, "client", &ip, 80, false),
        "deny-all did not block"
    );
    assert!(!reaches(&c, "client", &ip, 8080));
    assert!(!reaches(&c, "stranger", &ip, 8080));

    // The allow rule names the port by its name: only client → 8080 opens.
    c.kubectl_stdin(None, &["apply", "-f", "-"], ALLOW_CLIENT_ALT)?;
    assert!(
        settles(&c, "client", &ip, 8080, true),
        "allow rule did not open 8080"
    );
    assert!(!reaches(&c, "client", &ip, 80), "port 80 must stay closed");
    assert!(
        !reaches(&c, "stranger", &ip, 8080),
        "only app=client is allowed"
    );

    // Egress: the client may only send to port 80.
    // The allow rule's policy isolates the server on its own: only with both gone is 80 open.
    c.ok(&["delete", "networkpolicy", "-n", "np", "deny-all"])?;
    assert!(
        !reaches(&c, "client", &ip, 80),
        "allow-client-alt still isolates the server"
    );
    c.ok(&["delete", "networkpolicy", "-n", "np", "allow-client-alt"])?;
    assert!(
        settles(&c, "client", &ip, 80, true),
        "removing the policies did not re-open 80"
    );
    c.kubectl_stdin(None, &["apply", "-f", "-"], CLIENT_EGRESS_ONLY_80)?;
    assert!(
        settles(&c, "client", &ip, 8080, false),
        "egress policy did not block 8080"
    );
    assert!(reaches(&c, "client", &ip, 80));
    assert!(
        reaches(&c, "stranger", &ip, 80),
        "stranger has no egress policy"
    );

    // With every policy gone, nothing is isolated and no per-pod chain is left.
    c.ok(&["delete", "networkpolicy", "-n", "np", "--all"])?;
    assert!(
        settles(&c, "stranger", &ip, 8080, true),
        "policies outlived their deletion"
    );
    let table = c.in_netns(&["nft", "list", "table", "ip", "k3rs-policy"])?;
    assert!(!table.contains("vmap"), "chains left behind:\n{table}");
    c.ok(&["delete", "namespace", "np", "--wait=false"])?;
    Ok(())
}
