//! Services through real kubectl on a node cluster in its own network namespace: pod → ClusterIP
//! over both endpoints, host → NodePort on the node IP, a LoadBalancer Service getting the node IP
//! from ServiceLB and answering there, a pod that stops being ready stops getting traffic, and
//! deleting everything leaves no rule for it. `--disable servicelb` leaves LoadBalancers pending.
//! Needs root.

use k3rs_e2e::{eventually, is_root, Cluster};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn web_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:test
    imagePullPolicy: Never
    command: ["sh", "-c", "echo ok > /tmp/ready; exec nc -ll -p 8080 -e echo {name}"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      exec: {{command: ["sh", "-c", "test \"$(cat /tmp/ready)\" = ok"]}}
      periodSeconds: 1
      failureThreshold: 1
---
"#
    )
}

const REST: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: busybox:test, imagePullPolicy: Never, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 8000, targetPort: 8080}]
"#;

fn ready(c: &Cluster, pod: &str) -> bool {
    c.ok(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
    .is_ok_and(|s| s.trim() == "True")
}

/// `nc` from the client pod; what the server said.
fn nc(c: &Cluster, ip: &str, port: u16) -> String {
    c.kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("nc -w 3 {ip} {port} </dev/null"),
    ])
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_default()
}

fn read_all(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

#[test]
fn cluster_ip_node_port_load_balancer_and_readiness() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: the kubelet needs root");
        return Ok(());
    }
    let c = Cluster::start_node()?;
    let node_ip = c.node_ip();
    let manifest = web_pod("web-a") + &web_pod("web-b") + REST;
    c.kubectl_stdin(None, &["apply", "-f", "-"], &manifest)?;
    let up = eventually(Duration::from_secs(90), || {
        (ready(&c, "web-a") && ready(&c, "web-b") && ready(&c, "client")).then_some(())
    });
    if up.is_none() {
        panic!(
            "pods not ready: {}\n{}",
            c.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(),
            c.log()
        );
    }
    let cip = c
        .ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?
        .trim()
        .to_string();

    // Pod → ClusterIP: both endpoints answer.
    let mut seen = std::collections::BTreeSet::new();
    let both = eventually(Duration::from_secs(30), || {
        let a = nc(&c, &cip, 80);
        if !a.is_empty() {
            seen.insert(a);
        }
        (seen.len() == 2).then_some(())
    });
    assert!(both.is_some(), "ClusterIP answers seen: {seen:?}");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["web-a", "web-b"],
        "answers"
    );

    // Host → NodePort on the node IP (from the host side of the node's veth).
    let np = eventually(Duration::from_secs(10), || {
        read_all(SocketAddr::from((node_ip, 30080))).ok()
    })
    .expect("NodePort answers");
    assert!(np.starts_with("web-"), "{np}");

    // LoadBalancer: ServiceLB puts the node IP in the status; it answers on <node IP>:8000.
    let lb = eventually(Duration::from_secs(20), || {
        let ip = c
            .ok(&[
                "get",
                "svc",
                "web-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])
            .ok()?;
        (!ip.trim().is_empty()).then(|| ip.trim().to_string())
    })
    .expect("the LoadBalancer got an address");
    assert_eq!(lb, node_ip.to_string());
    let table = c.ok(&["get", "svc", "web-lb"])?;
    assert!(table.contains(&lb), "EXTERNAL-IP column: {table}");
    let a = eventually(Duration::from_secs(10), || {
        read_all(SocketAddr::from((node_ip, 8000))).ok()
    })
    .expect("LoadBalancer answers");
    assert!(a.starts_with("web-"), "{a}");

    // web-a stops being ready: its endpoint turns not-ready and traffic goes to web-b only.
    c.ok(&["exec", "web-a", "--", "sh", "-c", "echo no > /tmp/ready"])?;
    eventually(Duration::from_secs(20), || {
        (!ready(&c, "web-a")).then_some(())
    })
    .expect("web-a not ready");
    let only_b = eventually(Duration::from_secs(20), || {
        let answers: Vec<String> = (0..8).map(|_| nc(&c, &cip, 80)).collect();
        answers.iter().all(|a| a == "web-b").then_some(())
    });
    assert!(only_b.is_some(), "traffic still reaches web-a");

    // Delete everything: no rules left for the Services.
    c.ok(&["delete", "svc", "web", "web-np", "web-lb", "--wait=true"])?;
    c.ok(&["delete", "pod", "web-a", "web-b", "client", "--wait=true"])?;
    let clean = eventually(Duration::from_secs(20), || {
        let t = c.in_netns(&["nft", "list", "table", "ip", "k3rs"]).ok()?;
        (!t.contains("default/web") && !t.contains(&cip) && !t.contains("30080")).then_some(t)
    });
    assert!(clean.is_some(), "rules left behind");
    Ok(())
}

const LB: &str = r#"apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  ports: [{port: 8000}]
"#;

/// A Ready Node with an InternalIP (API-only clusters have no kubelet to register one).
fn fake_node(c: &Cluster) -> anyhow::Result<()> {
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
    )?;
    c.ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],"addresses":[{"type":"InternalIP","address":"192.0.2.7"}]}}"#,
    ])?;
    Ok(())
}

#[test]
fn disable_servicelb_leaves_load_balancers_pending() -> anyhow::Result<()> {
    let on = Cluster::start()?;
    fake_node(&on)?;
    on.kubectl_stdin(None, &["apply", "-f", "-"], LB)?;
    let ip = eventually(Duration::from_secs(20), || {
        let ip = on
            .ok(&[
                "get",
                "svc",
                "lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])
            .ok()?;
        (!ip.trim().is_empty()).then(|| ip.trim().to_string())
    });
    assert_eq!(ip.as_deref(), Some("192.0.2.7"));

    let off = Cluster::start_with(&["--disable", "servicelb"])?;
    fake_node(&off)?;
    off.kubectl_stdin(None, &["apply", "-f", "-"], LB)?;
    std::thread::sleep(Duration::from_secs(2));
    let table = off.ok(&["get", "svc", "lb"])?;
    assert!(table.contains("<pending>"), "{table}");
    Ok(())
}
