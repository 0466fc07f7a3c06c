//! Cluster DNS through real kubectl and pods: the embedded server answers on 10.43.0.10 from
//! inside pods (busybox `nslookup`: a ClusterIP service by short name, a headless service and a
//! pod's name under it, SRV, `kubernetes.default`), pods connect to services by name (ClusterIP
//! through the proxy, headless straight to the pod), `dig` works from the node's own namespace,
//! pods get the search path and `ndots:5`, and metrics answer on :9153. Only cluster names are
//! asked and the node has no upstream, so nothing is forwarded off the machine. Needs root.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::time::Duration;

const OBJECTS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.43.9.9
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: web, image: busybox:test, imagePullPolicy: Never, command: ["nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-web"]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  terminationGracePeriodSeconds: 1
  containers:
  - {name: db, image: busybox:test, imagePullPolicy: Never, command: ["nc", "-ll", "-p", "5432", "-e", "echo", "hello-from-db"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
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

/// `nslookup <name>` in the client pod; busybox prints the answers as `Address: <ip>`.
fn nslookup(c: &Cluster, name: &str) -> Vec<String> {
    let out = c
        .kubectl(&["exec", "client", "--", "busybox", "nslookup", name])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut ips: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

#[test]
fn pods_resolve_services_through_the_embedded_dns() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    // No upstream for this node (a loopback-only resolv.conf): names outside the cluster get
    // SERVFAIL at once instead of being forwarded off the machine.
    let resolv = tempfile::NamedTempFile::new()?;
    std::fs::write(resolv.path(), "nameserver 127.0.0.1\n")?;
    std::env::set_var("K3RS_RESOLV_CONF", resolv.path());
    let c = Cluster::start_node()?;
    c.kubectl_stdin(None, &["apply", "-f", "-"], OBJECTS)?;
    let ips: Vec<Option<String>> = ["web", "db-0", "client"]
        .iter()
        .map(|p| eventually(Duration::from_secs(60), || pod_ip(&c, p)))
        .collect();
    let [Some(_web), Some(db), Some(_client)] = &ips[..] else {
        panic!(
            "pods did not get running: {}\n{}",
            c.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(),
            c.log()
        );
    };

    // kube-dns exists, as in K3s.
    let svc = c.ok(&[
        "get",
        "svc",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP} {.metadata.labels.k8s-app}",
    ])?;
    assert_eq!(svc.trim(), "10.43.0.10 kube-dns");

    // The pod's resolv.conf points at the cluster DNS with the search path and ndots:5.
    let resolv = c.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"])?;
    assert!(resolv.contains("nameserver 10.43.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");

    // From the node's namespace: dig at the DNS IP, over UDP and TCP.
    let dig = |args: &[&str]| {
        let mut a = vec!["dig", "@10.43.0.10", "+short", "+time=2", "+tries=2"];
        a.extend_from_slice(args);
        c.in_netns(&a).unwrap_or_default().trim().to_string()
    };
    assert_eq!(dig(&["web.default.svc.cluster.local"]), "10.43.9.9");
    assert_eq!(
        dig(&["+tcp", "kubernetes.default.svc.cluster.local"]),
        "10.43.0.1"
    );
    assert_eq!(dig(&["-x", "10.43.9.9"]), "web.default.svc.cluster.local.");
    let srv = eventually(Duration::from_secs(20), || {
        let s = dig(&["_pg._tcp.db.default.svc.cluster.local", "SRV"]);
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(
        srv.as_deref(),
        Some("0 100 5432 db-0.db.default.svc.cluster.local.")
    );

    // From inside pods: short names through the search path.
    let web = eventually(Duration::from_secs(20), || {
        let a = nslookup(&c, "web");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(
        web,
        Some(vec!["10.43.9.9".to_string()]),
        "{:?}",
        c.kubectl(&["exec", "client", "--", "busybox", "nslookup", "web"])
    );
    // busybox's nslookup applies the search path only to names without a dot, so
    // `kubernetes.default` goes through the libc resolver (ping prints what it resolved).
    let ping = c
        .kubectl(&[
            "exec",
            "client",
            "--",
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "kubernetes.default",
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        ping.contains("PING kubernetes.default (10.43.0.1)"),
        "{ping}"
    );
    assert_eq!(
        nslookup(&c, "kubernetes.default.svc.cluster.local"),
        vec!["10.43.0.1"]
    );
    assert_eq!(nslookup(&c, "db"), vec![db.clone()]);
    assert_eq!(
        nslookup(&c, "db-0.db.default.svc.cluster.local"),
        vec![db.clone()]
    );
    assert_eq!(
        nslookup(&c, "web.default.svc.cluster.local"),
        vec!["10.43.9.9"]
    );
    assert!(nslookup(&c, "missing.default.svc.cluster.local").is_empty());

    // SRV from a pod.
    let srv = c
        .kubectl(&[
            "exec",
            "client",
            "--",
            "busybox",
            "nslookup",
            "-type=SRV",
            "_pg._tcp.db.default.svc.cluster.local",
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        srv.contains("5432 db-0.db.default.svc.cluster.local"),
        "{srv}"
    );

    // Connections by name: the ClusterIP service through the proxy, the headless one straight to
    // the pod (libc resolver, search path).
    let nc = |target: &str, port: &str| {
        c.kubectl(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!("nc -w 3 {target} {port} </dev/null"),
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
    };
    let via_service = eventually(Duration::from_secs(20), || {
        Some(nc("web", "80")).filter(|s| !s.is_empty())
    });
    assert_eq!(via_service.as_deref(), Some("hello-from-web"));
    assert_eq!(nc("db", "5432"), "hello-from-db");
    assert_eq!(nc("db-0.db", "5432"), "hello-from-db");

    // Metrics where the kube-dns Service says (metrics/9153).
    let metrics = c.in_netns(&["busybox", "wget", "-qO-", "http://10.43.0.10:9153/metrics"])?;
    assert!(
        metrics.contains("coredns_dns_requests_total{proto=\"udp\"}"),
        "{metrics}"
    );

    c.ok(&["delete", "pod", "web", "db-0", "client", "--wait=true"])?;
    Ok(())
}
