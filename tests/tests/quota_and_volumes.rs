//! LimitRange and ResourceQuota admission, the quota controller and PersistentVolume binding end
//! to end: the real `k3rs server` (no kubelet: `--disable-agent`, Node objects made by the test)
//! driven by the real kubectl.

use k3rs_e2e::fake_kubelet::add_node;
use k3rs_e2e::{eventually, Cluster};
use serde_json::{json, Value};
use std::time::Duration;

fn apply(c: &Cluster, manifest: &Value) -> anyhow::Result<String> {
    c.kubectl_stdin(None, &["apply", "-f", "-"], &manifest.to_string())
}

fn pod(name: &str, namespace: &str, resources: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "registry.local/app:1", "resources": resources}]}})
}

/// kubectl create of a pod; Err(stderr) when the server refused it.
fn create_pod(c: &Cluster, manifest: &Value) -> anyhow::Result<Result<(), String>> {
    let out = c
        .kubectl_cmd(None)
        .args(["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(manifest.to_string().as_bytes())?;
            child.wait_with_output()
        })?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

fn wait_for_namespace(c: &Cluster, ns: &str) -> anyhow::Result<()> {
    c.ok(&["create", "namespace", ns])?;
    // Pods need the namespace's default ServiceAccount at admission.
    eventually(Duration::from_secs(20), || {
        c.ok(&["get", "serviceaccount", "default", "-n", ns]).ok()
    })
    .ok_or_else(|| anyhow::anyhow!("no default ServiceAccount in {ns}"))?;
    Ok(())
}

#[test]
fn limit_ranges_default_and_refuse_and_quotas_count_pods() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    wait_for_namespace(&c, "limits")?;
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr", "namespace": "limits"},
            "spec": {"limits": [{"type": "Container",
                "default": {"cpu": "500m", "memory": "256Mi"},
                "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                "max": {"cpu": "1"}}]}}),
    )?;
    assert_eq!(create_pod(&c, &pod("plain", "limits", json!({})))?, Ok(()));
    let p = c.json(&["get", "pod", "plain", "-n", "limits"])?;
    assert_eq!(
        p["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}})
    );
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    );
    let err = create_pod(&c, &pod("big", "limits", json!({"limits": {"cpu": "2"}})))?
        .expect_err("over the max");
    assert!(
        err.contains(
            r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#
        ),
        "{err}"
    );

    wait_for_namespace(&c, "quota")?;
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "quota"},
            "spec": {"hard": {"pods": "2"}}}),
    )?;
    // Admission uses status.hard, which the quota controller sets.
    eventually(Duration::from_secs(20), || {
        let q = c.json(&["get", "resourcequota", "q", "-n", "quota"]).ok()?;
        (q["status"]["hard"]["pods"] == "2" && q["status"]["used"]["pods"] == "0").then_some(())
    })
    .ok_or_else(|| anyhow::anyhow!("the quota controller never set status"))?;
    for name in ["one", "two"] {
        assert_eq!(create_pod(&c, &pod(name, "quota", json!({})))?, Ok(()));
    }
    let err = create_pod(&c, &pod("three", "quota", json!({})))?.expect_err("over quota");
    assert!(
        err.contains(r#"pods "three" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"#),
        "{err}"
    );
    let q = c.json(&["get", "resourcequota", "q", "-n", "quota"])?;
    assert_eq!(q["status"]["used"]["pods"], "2");

    c.ok(&[
        "delete",
        "pod",
        "one",
        "-n",
        "quota",
        "--grace-period=0",
        "--force",
    ])?;
    // The controller gives the quota back once it has recalculated.
    eventually(Duration::from_secs(20), || {
        create_pod(&c, &pod("three", "quota", json!({}))).ok()?.ok()
    })
    .ok_or_else(|| anyhow::anyhow!("the deleted pod's quota never came back"))?;
    let err = create_pod(&c, &pod("four", "quota", json!({})))?.expect_err("full again");
    assert!(err.contains("exceeded quota: q"), "{err}");
    Ok(())
}

fn phase(c: &Cluster, kind: &str, name: &str) -> String {
    c.json(&["get", kind, name])
        .map(|o| o["status"]["phase"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn volume(name: &str, class: &str, node: Option<&str>) -> Value {
    let mut pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": class,
            "hostPath": {"path": format!("/tmp/{name}")}}});
    if let Some(n) = node {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}]}});
    }
    pv
}

fn claim(name: &str, class: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "resources": {"requests": {"storage": "500Mi"}}}})
}

fn pod_with_claim(name: &str, claim: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": [{"name": "app", "image": "registry.local/app:1",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
}

#[test]
fn claims_bind_release_and_wait_for_their_first_consumer() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "4")?;
    add_node(&c, "node-b", "4")?;
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        eventually(Duration::from_secs(20), || f().then_some(()))
            .ok_or_else(|| anyhow::anyhow!("timed out waiting for {what}"))
    };

    // Immediate binding; Retain releases the volume when the claim goes.
    apply(&c, &volume("manual", "", None))?;
    apply(&c, &claim("data", ""))?;
    wait("data Bound", &|| phase(&c, "pvc", "data") == "Bound")?;
    wait("manual Bound", &|| phase(&c, "pv", "manual") == "Bound")?;
    let pvc = c.json(&["get", "pvc", "data"])?;
    assert_eq!(pvc["spec"]["volumeName"], "manual");
    assert_eq!(
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    assert_eq!(pvc["status"]["capacity"]["storage"], "1Gi");
    let pv = c.json(&["get", "pv", "manual"])?;
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);
    c.ok(&["delete", "pvc", "data"])?;
    wait("manual Released", &|| {
        phase(&c, "pv", "manual") == "Released"
    })?;

    // WaitForFirstConsumer: Pending until a pod using the claim is scheduled.
    apply(
        &c,
        &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "local"},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}),
    )?;
    apply(&c, &volume("on-a", "local", Some("node-a")))?;
    apply(&c, &volume("on-b", "local", Some("node-b")))?;
    apply(&c, &claim("late", "local"))?;
    wait("the WaitForFirstConsumer event", &|| {
        c.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=late",
        ])
        .is_ok_and(|e| e.contains("WaitForFirstConsumer"))
    })?;
    assert_eq!(phase(&c, "pvc", "late"), "Pending");
    apply(&c, &pod_with_claim("user", "late", "node-b"))?;
    wait("late Bound", &|| phase(&c, "pvc", "late") == "Bound")?;
    let pvc = c.json(&["get", "pvc", "late"])?;
    assert_eq!(
        pvc["spec"]["volumeName"], "on-b",
        "the volume of the pod's node"
    );
    assert_eq!(
        pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        "node-b"
    );
    wait("user bound to node-b", &|| {
        c.json(&["get", "pod", "user"])
            .is_ok_and(|p| p["spec"]["nodeName"] == "node-b")
    })?;
    assert_eq!(phase(&c, "pv", "on-a"), "Available");

    // A second pod of the bound claim cannot go where the volume is not.
    apply(&c, &pod_with_claim("elsewhere", "late", "node-a"))?;
    wait("elsewhere unschedulable", &|| {
        c.json(&["get", "pod", "elsewhere"]).is_ok_and(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "PodScheduled"
                        && c["message"].as_str().is_some_and(|m| {
                            m.contains("node(s) had volume node affinity conflict")
                        })
                })
        })
    })?;
    Ok(())
}
