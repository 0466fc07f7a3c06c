//! Workloads end to end: the real `k3rs server` (scheduler and controllers in-process) driven by
//! the real kubectl. No kubelet runs (`--disable-agent`): Node objects are created by the test and
//! the harness's fake kubelet thread marks bound pods Running+Ready (Job pods: Succeeded) and finishes
//! graceful deletions, as upstream's integration tests do.

use k3rs_e2e::fake_kubelet::{add_node, FakeKubelet};
use k3rs_e2e::{eventually, Cluster};
use serde_json::Value;
use std::collections::HashMap;
use std::io::BufReader;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Watches ReplicaSets through `kubectl get rs --watch` and records every moment the sum of
/// their replicas exceeded `max_total`.
fn watch_surge(
    c: &Cluster,
    max_total: i64,
) -> anyhow::Result<(std::process::Child, Arc<Mutex<Vec<String>>>)> {
    let mut child = c
        .kubectl_cmd(None)
        .args(["get", "rs", "-l", "app=web", "--watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout");
    let violations = Arc::new(Mutex::new(Vec::new()));
    let v = violations.clone();
    std::thread::spawn(move || {
        let mut specs: HashMap<String, i64> = HashMap::new();
        for obj in
            serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>()
        {
            let Ok(rs) = obj else { break };
            let items = if rs["kind"] == "List" {
                rs["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![rs]
            };
            for r in items {
                specs.insert(
                    r["metadata"]["name"].as_str().unwrap_or("").into(),
                    r["spec"]["replicas"].as_i64().unwrap_or(0),
                );
            }
            let total: i64 = specs.values().sum();
            if total > max_total {
                if let Ok(mut v) = v.lock() {
                    v.push(format!("{specs:?}"));
                }
            }
        }
    });
    Ok((child, violations))
}

#[test]
fn deployment_rolls_out_scales_updates_and_undoes() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "8")?;
    add_node(&c, "node-b", "8")?;
    let _kubelet = FakeKubelet::start(&c);
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=registry.local/web:1",
        "--replicas=4",
    ])?;
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    let pods = c.json(&["get", "pods", "-l", "app=web"])?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 4);
    assert!(
        items.iter().all(|p| p["spec"]["nodeName"].is_string()),
        "all bound"
    );

    c.ok(&["scale", "deployment/web", "--replicas=6"])?;
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    assert_eq!(
        c.json(&["get", "deployment", "web"])?["status"]["readyReplicas"],
        6
    );

    // A new image rolls with maxSurge 25% (2 of 6): never more than 8 replicas in total.
    let (mut watcher, violations) = watch_surge(&c, 8)?;
    std::thread::sleep(Duration::from_millis(500));
    c.ok(&["set", "image", "deployment/web", "web=registry.local/web:2"])?;
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    let d = c.json(&["get", "deployment", "web"])?;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let rs = c.json(&["get", "rs", "-l", "app=web"])?;
    assert_eq!(rs["items"].as_array().map(Vec::len), Some(2));

    // Undo goes back to revision 1's template (as revision 3).
    c.ok(&["rollout", "undo", "deployment/web"])?;
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    let d = c.json(&["get", "deployment", "web"])?;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/web:1"
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    let rs = c.json(&["get", "rs", "-l", "app=web"])?;
    assert_eq!(
        rs["items"].as_array().map(Vec::len),
        Some(2),
        "undo reuses revision 1's ReplicaSet"
    );
    let history = c.ok(&["rollout", "history", "deployment/web"])?;
    assert!(history.contains('2') && history.contains('3'), "{history}");
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(
        violations.lock().map(|v| v.is_empty()).unwrap_or(false),
        "surge exceeded: {:?}",
        violations.lock().map(|v| v.clone())
    );

    // Restart makes a new ReplicaSet.
    c.ok(&["rollout", "restart", "deployment/web"])?;
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    let rs = c.json(&["get", "rs", "-l", "app=web"])?;
    assert_eq!(
        rs["items"].as_array().map(Vec::len),
        Some(3),
        "{}",
        c.ok(&["get", "rs", "-o", "yaml"])?
    );
    let describe = c.ok(&["describe", "deployment", "web"])?;
    assert!(describe.contains("ScalingReplicaSet"), "{describe}");
    Ok(())
}

#[test]
fn pod_that_fits_nowhere_stays_pending_with_failed_scheduling() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "2")?;
    c.kubectl_stdin(None, &["create", "-f", "-"], r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "64"}}}]}}"#)?;
    let describe = eventually(Duration::from_secs(20), || {
        let d = c.ok(&["describe", "pod", "huge"]).ok()?;
        d.contains("FailedScheduling").then_some(d)
    });
    let describe = describe.expect("FailedScheduling event");
    assert!(
        describe.contains("0/1 nodes are available: 1 Insufficient cpu."),
        "{describe}"
    );
    assert!(describe.contains("default-scheduler"), "{describe}");
    let p = c.json(&["get", "pod", "huge"])?;
    assert_eq!(p["status"]["phase"], "Pending");
    assert!(p["spec"]["nodeName"].is_null());
    // A bigger node arrives: the pod is retried and bound.
    add_node(&c, "node-big", "128")?;
    let bound = eventually(Duration::from_secs(20), || {
        let p = c.json(&["get", "pod", "huge"]).ok()?;
        p["spec"]["nodeName"].as_str().map(String::from)
    });
    assert_eq!(bound.as_deref(), Some("node-big"));
    Ok(())
}

#[test]
fn job_completes_when_its_pods_succeed() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "4")?;
    let _kubelet = FakeKubelet::start(&c);
    c.kubectl_stdin(
        None,
        &["create", "-f", "-"],
        r#"{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi"},
        "spec": {"completions": 3, "parallelism": 2, "ttlSecondsAfterFinished": 3,
        "template": {"spec": {"restartPolicy": "Never",
        "containers": [{"name": "c", "image": "perl"}]}}}}"#,
    )?;
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/pi",
        "--timeout=60s",
    ])?;
    let j = c.json(&["get", "job", "pi"])?;
    assert_eq!(j["status"]["succeeded"], 3);
    let pods = c.json(&["get", "pods", "-l", "job-name=pi"])?;
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(3));
    // ttlSecondsAfterFinished: the finished Job goes, and its pods with it.
    let cleaned = eventually(Duration::from_secs(30), || {
        let jobs = c.json(&["get", "jobs"]).ok()?;
        let pods = c.json(&["get", "pods", "-l", "job-name=pi"]).ok()?;
        (jobs["items"].as_array()?.is_empty() && pods["items"].as_array()?.is_empty()).then_some(())
    });
    assert!(
        cleaned.is_some(),
        "the Job and its pods were not cleaned up by TTL"
    );
    Ok(())
}

#[test]
fn foreground_deletion_removes_replicasets_and_pods_before_the_deployment() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "4")?;
    let _kubelet = FakeKubelet::start(&c);
    c.ok(&[
        "create",
        "deployment",
        "fg",
        "--image=registry.local/web:1",
        "--replicas=2",
    ])?;
    c.ok(&["rollout", "status", "deployment/fg", "--timeout=60s"])?;
    // A finalizer holds one pod, so the order is observable: the Deployment must wait for it.
    let pods = c.json(&["get", "pods", "-l", "app=fg"])?;
    let held = pods["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    c.ok(&[
        "patch",
        "pod",
        &held,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ])?;
    c.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--wait=false",
    ])?;
    let dependents = |c: &Cluster| -> usize {
        ["rs", "pods"]
            .iter()
            .filter_map(|kind| c.json(&["get", kind, "-l", "app=fg"]).ok())
            .map(|l| l["items"].as_array().map_or(0, Vec::len))
            .sum()
    };
    // The held pod is being deleted; the Deployment stays, marked for foreground deletion.
    let waiting = eventually(Duration::from_secs(30), || {
        let p = c.json(&["get", "pod", &held]).ok()?;
        p["metadata"]["deletionTimestamp"].is_string().then_some(())
    });
    assert!(waiting.is_some(), "the held pod was not deleted");
    std::thread::sleep(Duration::from_secs(1));
    let d = c.json(&["get", "deployment", "fg"])?;
    assert!(
        d["metadata"]["finalizers"]
            .to_string()
            .contains("foregroundDeletion"),
        "{d}"
    );
    c.ok(&[
        "patch",
        "pod",
        &held,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])?;
    let gone = eventually(Duration::from_secs(60), || {
        match c.json(&["get", "deployment", "fg"]) {
            Ok(_) => None,
            // Gone: nothing it owned may be left at that moment.
            Err(_) => Some(dependents(&c)),
        }
    });
    assert_eq!(gone, Some(0), "ReplicaSets or pods outlived the Deployment");
    Ok(())
}
