//! StatefulSet, DaemonSet and ReplicationController against a real `Api` over the in-memory
//! store, with a fake kubelet (a task that marks pods Running+Ready and finishes graceful
//! deletions).

mod common;

use common::{client, eventually, pods, FakeKubelet};
use k3rs_client::{Client, DeleteParams, ListParams, Patch, Resource, WatchEvent};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn sts() -> Resource {
    Resource::new("apps", "v1", "statefulsets")
}
fn ds() -> Resource {
    Resource::new("apps", "v1", "daemonsets")
}

/// The kubelet readies pods a moment after it sees them, so "created before its predecessor was
/// Ready" is visible.
fn kubelet(c: Arc<dyn Client>) {
    FakeKubelet::default()
        .delayed(Duration::from_millis(30))
        .spawn(c);
}

fn ready(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

async fn pod_names(c: &Arc<dyn Client>, selector: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .list(&pods(), Some("default"), &ListParams::labels(selector))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// A pod's name when it was created, and the pods that were Ready then.
type Creation = (String, Vec<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_pods_keeps_claims_and_updates_from_the_top() {
    let c = client().await;
    kubelet(c.clone());
    // Record, for every pod creation, which pods were Ready at that moment.
    let created_while: Arc<Mutex<Vec<Creation>>> = Arc::default();
    {
        let mut w = c
            .watch(&pods(), Some("default"), &ListParams::default())
            .await
            .unwrap();
        let log = created_while.clone();
        tokio::spawn(async move {
            let mut state: HashMap<String, bool> = HashMap::new();
            while let Some(ev) = w.next().await {
                match ev {
                    WatchEvent::Added(p) => {
                        let name = p["metadata"]["name"].as_str().unwrap().to_string();
                        let mut r: Vec<String> = state
                            .iter()
                            .filter(|(_, r)| **r)
                            .map(|(n, _)| n.clone())
                            .collect();
                        r.sort();
                        log.lock().unwrap().push((name.clone(), r));
                        state.insert(name, ready(&p));
                    }
                    WatchEvent::Modified(p) => {
                        state.insert(p["metadata"]["name"].as_str().unwrap().into(), ready(&p));
                    }
                    WatchEvent::Deleted(p) => {
                        state.remove(p["metadata"]["name"].as_str().unwrap());
                    }
                    _ => {}
                }
            }
        });
    }
    tokio::spawn(k3rs_controllers::run(c.clone(), Default::default()));
    c.create(&sts(), Some("default"), json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "serviceName": "nginx", "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}]}}), "test").await.unwrap();
    let s = eventually("3 ready", || async {
        let s = c.get(&sts(), Some("default"), "web").await.ok()?;
        (s["status"]["readyReplicas"] == 3 && s["status"]["observedGeneration"] == 1).then_some(s)
    })
    .await;
    assert_eq!(
        s["status"]["currentRevision"],
        s["status"]["updateRevision"]
    );
    assert_eq!(s["status"]["updatedReplicas"], 3);
    settles(&c, &sts(), "web").await;
    assert_eq!(pod_names(&c, "app=web").await, ["web-0", "web-1", "web-2"]);
    {
        let log = created_while.lock().unwrap();
        let order: Vec<&str> = log.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["web-0", "web-1", "web-2"]);
        assert_eq!(log[1].1, ["web-0"], "web-1 waited for web-0 to be Ready");
        assert_eq!(log[2].1, ["web-0", "web-1"]);
    }
    let p1 = c.get(&pods(), Some("default"), "web-1").await.unwrap();
    assert_eq!(p1["spec"]["hostname"], "web-1");
    assert_eq!(p1["spec"]["subdomain"], "nginx");
    assert_eq!(
        p1["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
        "web-1"
    );
    assert_eq!(
        p1["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
        "1"
    );
    assert_eq!(
        p1["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "www-web-1"
    );
    let pvcs = Resource::core("persistentvolumeclaims");
    for n in ["www-web-0", "www-web-1", "www-web-2"] {
        c.get(&pvcs, Some("default"), n).await.expect(n);
    }
    let revs = c
        .list(
            &Resource::new("apps", "v1", "controllerrevisions"),
            Some("default"),
            &ListParams::default(),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0]["metadata"]["name"], s["status"]["updateRevision"]);

    // Scale down: web-2 goes, its claim stays.
    c.patch(
        &sts(),
        Some("default"),
        "web",
        Patch::Merge(json!({"spec": {"replicas": 2}})),
        Some("scale"),
        "test",
    )
    .await
    .unwrap();
    eventually("2 pods", || async {
        (pod_names(&c, "app=web").await == ["web-0", "web-1"]).then_some(())
    })
    .await;
    c.get(&pvcs, Some("default"), "www-web-2")
        .await
        .expect("claim kept");

    // Back to 3, then a partitioned update: only ordinals >= 1 change.
    c.patch(
        &sts(),
        Some("default"),
        "web",
        Patch::Merge(json!({"spec": {"replicas": 3}})),
        None,
        "test",
    )
    .await
    .unwrap();
    // The status must describe the scaled-up set (not the stale count from before the scale
    // down), or the template change below would race web-2's re-creation.
    eventually("3 ready again", || async {
        let s = c.get(&sts(), Some("default"), "web").await.ok()?;
        (s["status"]["readyReplicas"] == 3
            && s["status"]["observedGeneration"] == s["metadata"]["generation"]
            && created_while.lock().unwrap().len() == 4)
            .then_some(())
    })
    .await;
    c.patch(
        &sts(),
        Some("default"),
        "web",
        Patch::Merge(json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
        "template": {"spec": {"containers": [{"name": "c", "image": "i:2"}]}}}})),
        None,
        "test",
    )
    .await
    .unwrap();
    let s = eventually("partitioned rollout", || async {
        let s = c.get(&sts(), Some("default"), "web").await.ok()?;
        (s["status"]["updatedReplicas"] == 2
            && s["status"]["readyReplicas"] == 3
            && s["status"]["observedGeneration"] == s["metadata"]["generation"])
            .then_some(s)
    })
    .await;
    assert_ne!(
        s["status"]["currentRevision"],
        s["status"]["updateRevision"]
    );
    let image = |p: &Value| {
        p["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let all = c
        .list(&pods(), Some("default"), &ListParams::labels("app=web"))
        .await
        .unwrap()
        .items;
    let by_name: HashMap<String, String> = all
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                image(p),
            )
        })
        .collect();
    assert_eq!(by_name["web-0"], "i:1");
    assert_eq!(by_name["web-1"], "i:2");
    assert_eq!(by_name["web-2"], "i:2");
    // web-2 was replaced before web-1 (highest ordinal first).
    let log = created_while.lock().unwrap();
    let recreated: Vec<&str> = log.iter().skip(4).map(|(n, _)| n.as_str()).collect();
    assert_eq!(recreated, ["web-2", "web-1"], "{log:?}");
}

/// The object's resourceVersion does not move while nothing changes (no status write loop).
async fn settles(c: &Arc<dyn Client>, r: &Resource, name: &str) {
    let rv = |o: Value| o["metadata"]["resourceVersion"].clone();
    let before = rv(c.get(r, Some("default"), name).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rv(c.get(r, Some("default"), name).await.unwrap());
    assert_eq!(before, after, "{name} keeps being written while idle");
}

async fn add_node(c: &Arc<dyn Client>, name: &str, taints: Value) {
    c.create(
        &Resource::core("nodes"),
        None,
        json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints}}),
        "test",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_one_pod_per_eligible_node_and_follows_nodes() {
    let c = client().await;
    kubelet(c.clone());
    add_node(&c, "a", json!([])).await;
    add_node(&c, "b", json!([])).await;
    add_node(
        &c,
        "gpu",
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;
    tokio::spawn(k3rs_controllers::run(c.clone(), Default::default()));
    c.create(&ds(), Some("default"), json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}}), "test").await.unwrap();
    let d = eventually("2 available", || async {
        let d = c.get(&ds(), Some("default"), "agent").await.ok()?;
        (d["status"]["numberAvailable"] == 2).then_some(d)
    })
    .await;
    assert_eq!(d["status"]["desiredNumberScheduled"], 2);
    assert_eq!(d["status"]["currentNumberScheduled"], 2);
    assert_eq!(d["status"]["updatedNumberScheduled"], 2);
    assert_eq!(d["status"]["numberMisscheduled"], 0);
    settles(&c, &ds(), "agent").await;
    let ps = c
        .list(&pods(), Some("default"), &ListParams::labels("app=agent"))
        .await
        .unwrap()
        .items;
    let mut targets: Vec<&str> = ps
        .iter()
        .map(|p| {
            p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
                .as_str()
                .unwrap()
        })
        .collect();
    targets.sort();
    assert_eq!(targets, ["a", "b"]);
    assert!(ps[0]["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"));

    // Tolerating the taint adds the third node (a rolling update, one node at a time).
    c.patch(
        &ds(),
        Some("default"),
        "agent",
        Patch::Strategic(json!({"spec": {"template": {"spec": {
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}}})),
        None,
        "test",
    )
    .await
    .unwrap();
    eventually("3 updated and available", || async {
        let d = c.get(&ds(), Some("default"), "agent").await.ok()?;
        (d["status"]["updatedNumberScheduled"] == 3
            && d["status"]["numberAvailable"] == 3
            && d["status"]["desiredNumberScheduled"] == 3
            && d["status"]["observedGeneration"] == 2)
            .then_some(())
    })
    .await;
    // A removed node takes its pod with it.
    c.delete(
        &Resource::core("nodes"),
        None,
        "b",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    eventually("2 pods", || async {
        let n = c
            .list(&pods(), Some("default"), &ListParams::labels("app=agent"))
            .await
            .ok()?
            .items
            .len();
        (n == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controller_keeps_its_replica_count() {
    let c = client().await;
    kubelet(c.clone());
    tokio::spawn(k3rs_controllers::run(c.clone(), Default::default()));
    let rcs = Resource::core("replicationcontrollers");
    c.create(&rcs, Some("default"), json!({"apiVersion": "v1", "kind": "ReplicationController",
        "metadata": {"name": "rc"},
        "spec": {"replicas": 2, "selector": {"app": "rc"},
            "template": {"metadata": {"labels": {"app": "rc"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}), "test").await.unwrap();
    eventually("2 ready", || async {
        let r = c.get(&rcs, Some("default"), "rc").await.ok()?;
        (r["status"]["readyReplicas"] == 2 && r["status"]["replicas"] == 2).then_some(())
    })
    .await;
    let names = pod_names(&c, "app=rc").await;
    let p = c.get(&pods(), Some("default"), &names[0]).await.unwrap();
    assert_eq!(
        p["metadata"]["ownerReferences"][0]["kind"],
        "ReplicationController"
    );
    assert_eq!(p["metadata"]["ownerReferences"][0]["apiVersion"], "v1");
    // A deleted pod is replaced.
    c.delete(
        &pods(),
        Some("default"),
        &names[0],
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    eventually("replaced", || async {
        let now = pod_names(&c, "app=rc").await;
        (now.len() == 2 && !now.contains(&names[0])).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_starts_a_missed_run_and_records_its_completion() {
    let c = client().await;
    kubelet(c.clone());
    tokio::spawn(k3rs_controllers::run(c.clone(), Default::default()));
    let cjs = Resource::new("batch", "v1", "cronjobs");
    let jobs = Resource::new("batch", "v1", "jobs");
    // Suspended while its status says the last run was five minutes ago: resuming it finds
    // missed start times and starts the most recent one at once.
    c.create(&cjs, Some("default"), json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "suspend": true, "timeZone": "Etc/UTC",
            "jobTemplate": {"metadata": {"labels": {"kind": "tick"}}, "spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}}), "test").await.unwrap();
    let past = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:00Z")
        .to_string();
    c.patch(
        &cjs,
        Some("default"),
        "tick",
        Patch::Merge(json!({"status": {"lastScheduleTime": past}})),
        Some("status"),
        "test",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        c.list(&jobs, Some("default"), &ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "suspended: nothing starts"
    );
    c.patch(
        &cjs,
        Some("default"),
        "tick",
        Patch::Merge(json!({"spec": {"suspend": false}})),
        None,
        "test",
    )
    .await
    .unwrap();
    let job = eventually("a job", || async {
        c.list(&jobs, Some("default"), &ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    let minute = chrono::Utc::now().timestamp() / 60;
    let job_minute: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    assert!(
        job_minute == minute || job_minute == minute - 1,
        "named after the most recent start: {name}"
    );
    assert_eq!(job["metadata"]["labels"]["kind"], "tick");
    let stamp = job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap();
    let stamp = chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
    assert_eq!(stamp.timestamp(), job_minute * 60);
    // The job runs to completion; the CronJob's status follows, then stays put.
    let cj = eventually("completion seen", || async {
        let cj = c.get(&cjs, Some("default"), "tick").await.ok()?;
        (cj["status"]["lastSuccessfulTime"].is_string() && cj["status"]["active"].is_null())
            .then_some(cj)
    })
    .await;
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(cj["status"]["lastScheduleTime"].as_str().unwrap())
            .unwrap()
            .timestamp(),
        job_minute * 60
    );
    let events = c
        .list(
            &Resource::core("events"),
            Some("default"),
            &ListParams::default(),
        )
        .await
        .unwrap()
        .items;
    for reason in ["SuccessfulCreate", "SawCompletedJob"] {
        assert!(
            events
                .iter()
                .any(|e| e["reason"] == reason && e["involvedObject"]["kind"] == "CronJob"),
            "{reason}"
        );
    }
    // Unless the minute turns over meanwhile, nothing else is due: the status settles.
    if chrono::Utc::now().timestamp() / 60 == job_minute && chrono::Utc::now().timestamp() % 60 < 58
    {
        settles(&c, &cjs, "tick").await;
    }
}
