//! StatefulSet, DaemonSet, CronJob and ReplicationController end to end: the real `k3rs server`
//! (scheduler and controllers in-process) driven by the real kubectl, on Node objects the test
//! makes, with the harness's [`FakeKubelet`] marking bound pods Running+Ready (Job pods:
//! Succeeded). No container runs.

use k3rs_e2e::fake_kubelet::{add_node, FakeKubelet};
use k3rs_e2e::{eventually, Cluster};
use serde_json::Value;
use std::io::BufReader;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One watch event as kubectl printed it: (type, pod name, Ready, being deleted).
type Seen = (String, String, bool, bool);

/// `kubectl get pods -l <selector> --watch --output-watch-events -o json`, recorded in order.
fn watch_pods(c: &Cluster, selector: &str) -> anyhow::Result<(Child, Arc<Mutex<Vec<Seen>>>)> {
    let mut child = c
        .kubectl_cmd(None)
        .args([
            "get",
            "pods",
            "-l",
            selector,
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for ev in serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>()
        {
            let Ok(ev) = ev else { break };
            let p = &ev["object"];
            let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if let Ok(mut s) = s.lock() {
                s.push((
                    ev["type"].as_str().unwrap_or("").to_string(),
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    ready,
                    !p["metadata"]["deletionTimestamp"].is_null(),
                ));
            }
        }
    });
    Ok((child, seen))
}

/// Whether `pod` was last seen Ready before the first event about `later`.
fn ready_before_created(seen: &[Seen], pod: &str, later: &str) -> bool {
    let Some(at) = seen.iter().position(|(_, n, _, _)| n == later) else {
        return false;
    };
    seen[..at]
        .iter()
        .rev()
        .find(|(_, n, _, _)| n == pod)
        .is_some_and(|(t, _, ready, deleting)| t != "DELETED" && *ready && !deleting)
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

const STATEFULSET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  replicas: 3
  serviceName: web
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.local/web:1
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests: {storage: 1Gi}
"#;

#[test]
fn statefulset_orders_pods_keeps_claims_and_updates_above_the_partition() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "8")?;
    add_node(&c, "node-b", "8")?;
    let _kubelet = FakeKubelet::start(&c);
    let (mut watcher, seen) = watch_pods(&c, "app=web")?;
    std::thread::sleep(Duration::from_millis(500));
    c.kubectl_stdin(None, &["apply", "-f", "-"], STATEFULSET)?;
    c.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"])?;
    let pods = c.json(&["get", "pods", "-l", "app=web"])?;
    assert_eq!(names(&pods), ["web-0", "web-1", "web-2"]);
    {
        let s = seen.lock().expect("seen").clone();
        assert!(
            ready_before_created(&s, "web-0", "web-1"),
            "web-1 was created only after web-0 was Ready: {s:?}"
        );
        assert!(
            ready_before_created(&s, "web-1", "web-2"),
            "web-2 was created only after web-1 was Ready: {s:?}"
        );
    }
    let web1 = c.json(&["get", "pod", "web-1"])?;
    assert_eq!(web1["spec"]["hostname"], "web-1");
    assert_eq!(web1["spec"]["subdomain"], "web");
    assert_eq!(
        web1["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
        "web-1"
    );
    assert_eq!(
        web1["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
        "1"
    );
    assert!(
        web1["spec"]["nodeName"].is_string(),
        "bound by the scheduler"
    );
    assert_eq!(
        names(&c.json(&["get", "pvc"])?),
        ["www-web-0", "www-web-1", "www-web-2"]
    );
    let sts = c.json(&["get", "statefulset", "web"])?;
    let revision = sts["status"]["updateRevision"].as_str().unwrap_or("");
    assert_eq!(sts["status"]["currentRevision"], revision);
    assert_eq!(
        web1["metadata"]["labels"]["controller-revision-hash"],
        revision
            .strip_prefix("web-")
            .unwrap_or("missing revision name")
    );
    assert_eq!(
        names(&c.json(&["get", "controllerrevisions"])?),
        [revision.to_string()]
    );

    // Scale to 1: web-2 goes first, then web-1; claims stay.
    c.ok(&["scale", "statefulset/web", "--replicas=1"])?;
    eventually(Duration::from_secs(60), || {
        let p = c.json(&["get", "pods", "-l", "app=web"]).ok()?;
        (names(&p) == ["web-0"]).then_some(())
    })
    .expect("scaled down to web-0");
    {
        let s = seen.lock().expect("seen").clone();
        let gone = |n: &str| {
            s.iter()
                .position(|(t, name, _, _)| t == "DELETED" && name == n)
        };
        let first_deleting = |n: &str| {
            s.iter()
                .position(|(_, name, _, deleting)| *deleting && name == n)
        };
        let (Some(web2_gone), Some(web1_deleting)) = (gone("web-2"), first_deleting("web-1"))
        else {
            panic!("deletions not seen: {s:?}");
        };
        assert!(
            web2_gone < web1_deleting,
            "web-1 was deleted only after web-2 was gone: {s:?}"
        );
    }
    assert_eq!(
        names(&c.json(&["get", "pvc"])?),
        ["www-web-0", "www-web-1", "www-web-2"],
        "claims are retained on scale-down"
    );

    // Back to 3, then a rolling update with partition 1: only ordinals >= 1 change.
    c.ok(&["scale", "statefulset/web", "--replicas=3"])?;
    c.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"])?;
    c.ok(&[
        "patch",
        "statefulset",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}}"#,
    ])?;
    c.ok(&[
        "set",
        "image",
        "statefulset/web",
        "web=registry.local/web:2",
    ])?;
    let out = c.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"])?;
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let image = |pod: &str| -> anyhow::Result<String> {
        Ok(
            c.json(&["get", "pod", pod])?["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    };
    assert_eq!(image("web-0")?, "registry.local/web:1");
    assert_eq!(image("web-1")?, "registry.local/web:2");
    assert_eq!(image("web-2")?, "registry.local/web:2");
    let sts = c.json(&["get", "statefulset", "web"])?;
    assert_eq!(sts["status"]["updatedReplicas"], 2);
    assert_eq!(sts["status"]["currentReplicas"], 1);
    assert_ne!(
        sts["status"]["currentRevision"],
        sts["status"]["updateRevision"]
    );
    let history = c.ok(&["rollout", "history", "statefulset/web"])?;
    assert!(history.contains('1') && history.contains('2'), "{history}");
    let _ = watcher.kill();
    let _ = watcher.wait();
    Ok(())
}

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: registry.local/agent:1
"#;

/// node name → number of agent pods bound there.
fn pods_per_node(c: &Cluster) -> anyhow::Result<Vec<(String, usize)>> {
    let pods = c.json(&["get", "pods", "-l", "app=agent"])?;
    let mut m = std::collections::BTreeMap::new();
    for p in pods["items"].as_array().into_iter().flatten() {
        let node = p["spec"]["nodeName"].as_str().unwrap_or("<unbound>");
        *m.entry(node.to_string()).or_insert(0) += 1;
    }
    Ok(m.into_iter().collect())
}

#[test]
fn daemonset_runs_one_pod_per_node_and_skips_untolerated_taints() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    for n in ["node-a", "node-b", "node-gpu"] {
        add_node(&c, n, "4")?;
    }
    c.ok(&["taint", "node", "node-gpu", "dedicated=gpu:NoSchedule"])?;
    let _kubelet = FakeKubelet::start(&c);
    c.kubectl_stdin(None, &["apply", "-f", "-"], DAEMONSET)?;
    c.ok(&["rollout", "status", "ds/agent", "--timeout=90s"])?;
    assert_eq!(
        pods_per_node(&c)?,
        [("node-a".to_string(), 1), ("node-b".to_string(), 1)]
    );
    let ds = c.json(&["get", "ds", "agent"])?;
    assert_eq!(ds["status"]["desiredNumberScheduled"], 2);
    assert_eq!(ds["status"]["numberReady"], 2);

    // Tolerating the taint is a template change: rolled out, and the tainted node gets a pod.
    c.ok(&[
        "patch",
        "ds",
        "agent",
        "--type=merge",
        "-p",
        r#"{"spec": {"template": {"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}}}"#,
    ])?;
    c.ok(&["rollout", "status", "ds/agent", "--timeout=90s"])?;
    assert_eq!(
        pods_per_node(&c)?,
        [
            ("node-a".to_string(), 1),
            ("node-b".to_string(), 1),
            ("node-gpu".to_string(), 1)
        ]
    );
    // A new node gets its pod.
    add_node(&c, "node-c", "4")?;
    eventually(Duration::from_secs(60), || {
        let ds = c.json(&["get", "ds", "agent"]).ok()?;
        (ds["status"]["desiredNumberScheduled"] == 4 && ds["status"]["numberAvailable"] == 4)
            .then_some(())
    })
    .expect("4 nodes, 4 pods");
    assert_eq!(pods_per_node(&c)?.len(), 4);

    // A new image, then `rollout undo` back through the ControllerRevision history.
    c.ok(&["set", "image", "ds/agent", "agent=registry.local/agent:2"])?;
    c.ok(&["rollout", "status", "ds/agent", "--timeout=90s"])?;
    let history = c.ok(&["rollout", "history", "ds/agent"])?;
    assert!(history.contains('3'), "{history}");
    c.ok(&["rollout", "undo", "ds/agent"])?;
    c.ok(&["rollout", "status", "ds/agent", "--timeout=90s"])?;
    let pods = c.json(&["get", "pods", "-l", "app=agent"])?;
    let images: Vec<&str> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["spec"]["containers"][0]["image"].as_str())
        .collect();
    assert_eq!(images, ["registry.local/agent:1"; 4]);
    Ok(())
}

const CRONJOB: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: tick
            image: registry.local/tick:1
            command: ["true"]
"#;

fn job_complete(c: &Cluster, name: &str) -> bool {
    c.json(&["get", "job", name]).is_ok_and(|j| {
        j["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Complete" && c["status"] == "True")
        })
    })
}

#[test]
fn cronjob_fires_and_keeps_its_history_limit() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "4")?;
    let _kubelet = FakeKubelet::start(&c);
    c.kubectl_stdin(None, &["apply", "-f", "-"], CRONJOB)?;
    // Manual runs are the CronJob's too, and count against successfulJobsHistoryLimit (1).
    c.ok(&["create", "job", "manual-1", "--from=cronjob/tick"])?;
    eventually(Duration::from_secs(60), || {
        job_complete(&c, "manual-1").then_some(())
    })
    .expect("manual-1 completes");
    c.ok(&["create", "job", "manual-2", "--from=cronjob/tick"])?;
    eventually(Duration::from_secs(60), || {
        let jobs = c.json(&["get", "jobs"]).ok()?;
        (names(&jobs) == ["manual-2"] && job_complete(&c, "manual-2")).then_some(())
    })
    .expect("manual-1 pruned once manual-2 completed");

    // The schedule fires within a minute: a Job named after the scheduled minute runs to
    // completion and replaces manual-2 as the one kept.
    let scheduled = eventually(Duration::from_secs(75), || {
        let jobs = c.json(&["get", "jobs"]).ok()?;
        names(&jobs).into_iter().find(|n| n.starts_with("tick-"))
    })
    .expect("the schedule fired");
    let minutes: i64 = scheduled["tick-".len()..].parse()?;
    let job = c.json(&["get", "job", &scheduled])?;
    let stamp = job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!stamp.is_empty(), "{job}");
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    eventually(Duration::from_secs(60), || {
        let jobs = c.json(&["get", "jobs"]).ok()?;
        (names(&jobs) == [scheduled.clone()] && job_complete(&c, &scheduled)).then_some(())
    })
    .expect("the scheduled job completed and manual-2 was pruned");
    let cj = eventually(Duration::from_secs(30), || {
        let cj = c.json(&["get", "cronjob", "tick"]).ok()?;
        (cj["status"]["lastSuccessfulTime"].is_string() && cj["status"]["active"].is_null())
            .then_some(cj)
    })
    .expect("status caught up");
    let last = cj["status"]["lastScheduleTime"].as_str().unwrap_or("");
    let out = std::process::Command::new("date")
        .args(["-u", "-d", last, "+%s"])
        .output()?;
    let secs: i64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    assert_eq!(
        secs / 60,
        minutes,
        "job name = scheduled minute since the epoch"
    );
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector=involvedObject.kind=CronJob",
        "-o",
        "jsonpath={.items[*].reason}",
    ])?;
    for reason in ["SuccessfulCreate", "SawCompletedJob", "SuccessfulDelete"] {
        assert!(events.contains(reason), "{reason} in {events}");
    }
    Ok(())
}

const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata:
  name: legacy
spec:
  replicas: 2
  selector: {app: legacy}
  template:
    metadata:
      labels: {app: legacy}
    spec:
      containers:
      - name: legacy
        image: registry.local/legacy:1
"#;

#[test]
fn replication_controller_keeps_its_replica_count() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "node-a", "4")?;
    let _kubelet = FakeKubelet::start(&c);
    c.kubectl_stdin(None, &["apply", "-f", "-"], RC)?;
    let ready = |n: i64| {
        eventually(Duration::from_secs(60), || {
            let rc = c.json(&["get", "rc", "legacy"]).ok()?;
            (rc["status"]["readyReplicas"] == n && rc["status"]["replicas"] == n).then_some(())
        })
    };
    ready(2).expect("2 ready");
    let before = names(&c.json(&["get", "pods", "-l", "app=legacy"])?);
    c.ok(&["delete", "pod", &before[0], "--wait=false"])?;
    eventually(Duration::from_secs(60), || {
        let now = names(&c.json(&["get", "pods", "-l", "app=legacy"]).ok()?);
        (now.len() == 2 && !now.contains(&before[0])).then_some(())
    })
    .expect("the deleted pod was replaced");
    c.ok(&["scale", "rc/legacy", "--replicas=3"])?;
    ready(3).expect("scaled to 3");
    Ok(())
}
