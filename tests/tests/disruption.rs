//! Disruptions end to end, through the real kubectl against `k3rs server --disable-agent` (Node
//! objects made by the test, the harness's fake kubelet marking bound pods Running+Ready):
//! `kubectl drain` is held back by a PodDisruptionBudget and goes through once the budget
//! allows it; a node whose heartbeats stop turns Unknown, is tainted unreachable, and its pods
//! are evicted when their toleration runs out. The controllers and the scheduler run behind
//! leader election here (`--leader-elect`), so the same run shows they work while holding their
//! Leases.

use k3rs_e2e::fake_kubelet::{add_node, FakeKubelet};
use k3rs_e2e::{eventually, Cluster};
use serde_json::Value;
use std::time::Duration;

fn pods_on(c: &Cluster, node: &str) -> anyhow::Result<Vec<Value>> {
    let list = c.json(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector",
        &format!("spec.nodeName={node}"),
    ])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn ready_web_pods(c: &Cluster) -> usize {
    c.json(&["get", "pods", "-l", "app=web"])
        .map(|l| {
            l["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count()
        })
        .unwrap_or(0)
}

fn budget(c: &Cluster) -> Value {
    c.json(&["get", "pdb", "web"]).unwrap_or_default()
}

#[test]
fn drain_waits_for_the_disruption_budget() -> anyhow::Result<()> {
    let c = Cluster::start_with(&["--leader-elect"])?;
    add_node(&c, "node-a", "8")?;
    let _kubelet = FakeKubelet::start(&c);
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:test",
        "--replicas=2",
    ])?;
    eventually(Duration::from_secs(60), || {
        (ready_web_pods(&c) == 2).then_some(())
    })
    .expect("two web pods ready");
    c.ok(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=2",
    ])?;
    let pdb = eventually(Duration::from_secs(30), || {
        let b = budget(&c);
        (b["status"]["currentHealthy"] == 2 && b["status"]["observedGeneration"] == 1).then_some(b)
    })
    .expect("budget status");
    assert_eq!(pdb["status"]["desiredHealthy"], 2);
    assert_eq!(pdb["status"]["expectedPods"], 2);
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0);
    let allowed = pdb["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "DisruptionAllowed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(allowed["status"], "False", "{pdb:#}");
    assert_eq!(allowed["reason"], "InsufficientPods");

    // Blocked: kubectl retries the 429s until its timeout, and says why.
    let err = c.fails(&["drain", "node-a", "--ignore-daemonsets", "--timeout=10s"])?;
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{err}"
    );
    assert_eq!(pods_on(&c, "node-a")?.len(), 2, "a pod was evicted");
    assert_eq!(
        c.ok(&[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ])?,
        "true",
        "drain cordons first"
    );

    // Allowed: room for the replacements elsewhere, and a budget that spares one pod.
    add_node(&c, "node-b", "8")?;
    c.ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec": {"minAvailable": 1}}"#,
    ])?;
    eventually(Duration::from_secs(30), || {
        (budget(&c)["status"]["disruptionsAllowed"] == 1).then_some(())
    })
    .expect("one disruption allowed");
    let out = c.ok(&["drain", "node-a", "--ignore-daemonsets", "--timeout=90s"])?;
    assert!(out.contains("node/node-a drained"), "{out}");
    assert!(pods_on(&c, "node-a")?.is_empty());
    assert_eq!(
        c.ok(&[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ])?,
        "true"
    );
    eventually(Duration::from_secs(60), || {
        (ready_web_pods(&c) == 2).then_some(())
    })
    .expect("the Deployment back to two ready pods on node-b");

    // Both controller groups ran as leaders of their Leases.
    for lease in ["kube-scheduler", "kube-controller-manager"] {
        let holder = c.ok(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            lease,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])?;
        assert!(holder.contains('_'), "{lease} held by {holder:?}");
    }
    Ok(())
}

fn now(offset_secs: i64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
        + offset_secs;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn renew(c: &Cluster) -> anyhow::Result<()> {
    let stamp = now(0).replace('Z', ".000000Z");
    c.ok(&[
        "patch",
        "lease",
        "-n",
        "kube-node-lease",
        "silent",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec": {{"renewTime": "{stamp}"}}}}"#),
    ])?;
    Ok(())
}

fn pod_on_silent(c: &Cluster, name: &str, toleration_seconds: Option<u32>) -> anyhow::Result<()> {
    let tolerations = match toleration_seconds {
        Some(s) => format!(
            r#""tolerations": [{{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": {s}}}],"#
        ),
        None => String::new(),
    };
    c.kubectl_stdin(
        None,
        &["create", "-f", "-"],
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
            "spec": {{"nodeName": "silent", {tolerations}
                "containers": [{{"name": "c", "image": "busybox:test"}}]}}}}"#
        ),
    )?;
    Ok(())
}

#[test]
fn silent_node_turns_unknown_and_its_pods_are_evicted() -> anyhow::Result<()> {
    let c = Cluster::start_with(&["--node-monitor-grace-period=3s"])?;
    c.kubectl_stdin(
        None,
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "silent"}}"#,
    )?;
    let beat = now(0);
    c.ok(&[
        "patch", "node", "silent", "--subresource=status", "--type=merge", "-p",
        &format!(r#"{{"status": {{"capacity": {{"cpu": "2", "memory": "4Gi", "pods": "110"}},
            "allocatable": {{"cpu": "2", "memory": "4Gi", "pods": "110"}},
            "conditions": [{{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "fake", "lastHeartbeatTime": "{beat}", "lastTransitionTime": "{beat}"}}]}}}}"#),
    ])?;
    c.kubectl_stdin(
        None,
        &["create", "-f", "-"],
        &format!(
            r#"{{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {{"name": "silent", "namespace": "kube-node-lease"}},
            "spec": {{"holderIdentity": "silent", "leaseDurationSeconds": 1,
                      "renewTime": "{}"}}}}"#,
            beat.replace('Z', ".000000Z")
        ),
    )?;
    pod_on_silent(&c, "short", Some(1))?;
    pod_on_silent(&c, "default", None)?;
    // Heartbeats for twice the grace period: the node stays Ready and untainted.
    for _ in 0..6 {
        renew(&c)?;
        std::thread::sleep(Duration::from_secs(1));
    }
    let node = c.json(&["get", "node", "silent"])?;
    assert!(node["spec"]["taints"].is_null(), "{node:#}");
    assert_eq!(
        c.ok(&[
            "get",
            "node",
            "silent",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#
        ])?,
        "True"
    );

    // Silence.
    let node = eventually(Duration::from_secs(30), || {
        let n = c.json(&["get", "node", "silent"]).ok()?;
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (ready["status"] == "Unknown").then_some(n)
    })
    .expect("node turns Unknown");
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let taints = eventually(Duration::from_secs(10), || {
        let t = c.json(&["get", "node", "silent"]).ok()?["spec"]["taints"]
            .as_array()?
            .clone();
        (t.len() == 2).then_some(t)
    })
    .expect("unreachable taints");
    for effect in ["NoSchedule", "NoExecute"] {
        assert!(
            taints
                .iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == effect),
            "{taints:?}"
        );
    }
    eventually(Duration::from_secs(15), || {
        let p = c.json(&["get", "pod", "short"]).ok()?;
        (!p["metadata"]["deletionTimestamp"].is_null()).then_some(())
    })
    .expect("the pod tolerating 1 s is evicted");
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    assert!(
        events.contains("Marking for deletion Pod default/short"),
        "{events:?}"
    );
    // The pod with the API server's default 300 s toleration stays for now.
    let p = c.json(&["get", "pod", "default"])?;
    assert!(p["metadata"]["deletionTimestamp"].is_null(), "{p:#}");
    let tolerations = p["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unreachable") && tolerations.contains("300"),
        "{tolerations}"
    );

    // Heartbeats again: the taints go.
    renew(&c)?;
    let recovered = now(0);
    c.ok(&[
        "patch",
        "node",
        "silent",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status": {{"conditions": [{{"type": "Ready", "status": "True",
            "reason": "KubeletReady", "message": "fake", "lastHeartbeatTime": "{recovered}",
            "lastTransitionTime": "{recovered}"}}]}}}}"#
        ),
    ])?;
    eventually(Duration::from_secs(10), || {
        let n = c.json(&["get", "node", "silent"]).ok()?;
        n["spec"]["taints"].is_null().then_some(())
    })
    .expect("taints removed after recovery");
    Ok(())
}
