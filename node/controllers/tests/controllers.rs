//! The controllers against a real `Api` over the in-memory store, with a fake kubelet (a task that
//! marks pods Running+Ready, or Succeeded for Job pods, and finishes graceful deletions).

mod common;

use common::{client, eventually, pods, FakeKubelet};
use k3rs_client::{Client, ListParams, Patch, Resource, WatchEvent};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn deploy() -> Resource {
    Resource::new("apps", "v1", "deployments")
}
fn rss() -> Resource {
    Resource::new("apps", "v1", "replicasets")
}

async fn rollout_done(c: &Arc<dyn Client>, name: &str, replicas: i64) -> Value {
    for _ in 0..500 {
        let d = c.get(&deploy(), Some("default"), name).await.unwrap();
        let s = &d["status"];
        if s["observedGeneration"] == d["metadata"]["generation"]
            && s["updatedReplicas"] == replicas
            && s["replicas"] == replicas
            && s["availableReplicas"] == replicas
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = c.get(&deploy(), Some("default"), name).await.unwrap();
    let l = c
        .list(&rss(), Some("default"), &ListParams::default())
        .await
        .unwrap()
        .items;
    let p = c
        .list(&pods(), Some("default"), &ListParams::default())
        .await
        .unwrap()
        .items;
    panic!(
        "not rolled out: {d:#}\n{:#}\n{}",
        json!(l
            .iter()
            .map(|r| json!([r["metadata"]["name"], r["spec"]["replicas"], r["status"]]))
            .collect::<Vec<_>>()),
        json!(p
            .iter()
            .map(|p| json!([
                p["metadata"]["name"],
                p["status"]["phase"],
                p["metadata"]["deletionTimestamp"]
            ]))
            .collect::<Vec<_>>())
    );
    #[allow(unreachable_code)]
    eventually(&format!("deployment {name} at {replicas}"), || async {
        let d = c.get(&deploy(), Some("default"), name).await.ok()?;
        let s = &d["status"];
        (s["observedGeneration"] == d["metadata"]["generation"]
            && s["updatedReplicas"] == replicas
            && s["replicas"] == replicas
            && s["availableReplicas"] == replicas)
            .then_some(d)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_updates_within_bounds_and_rolls_back() {
    let c = client().await;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    FakeKubelet::default().gated(ready.clone()).spawn(c.clone());
    tokio::spawn(k3rs_controllers::run(c.clone(), Default::default()));
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Watch ReplicaSets: the sum of their replicas never exceeds replicas + maxSurge (4 + 1).
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let c = c.clone();
        let v = violations.clone();
        let armed = armed.clone();
        let mut w = c
            .watch(&rss(), Some("default"), &ListParams::default())
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut specs: HashMap<String, i64> = HashMap::new();
            while let Some(ev) = w.next().await {
                match ev {
                    WatchEvent::Added(r) | WatchEvent::Modified(r) => {
                        specs.insert(
                            r["metadata"]["name"].as_str().unwrap().into(),
                            r["spec"]["replicas"].as_i64().unwrap_or(0),
                        );
                    }
                    WatchEvent::Deleted(r) => {
                        specs.remove(r["metadata"]["name"].as_str().unwrap());
                    }
                    _ => {}
                }
                let total: i64 = specs.values().sum();
                if armed.load(Ordering::SeqCst) && total > 5 {
                    v.lock().unwrap().push(format!("{specs:?}"));
                }
            }
        });
    }
    // Ready pods (not terminating) never drop below replicas - maxUnavailable (4 - 1) once rolled out.
    let min_ready_violations = Arc::new(Mutex::new(Vec::<usize>::new()));
    let rolled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let mut w = c
            .watch(&pods(), Some("default"), &ListParams::default())
            .await
            .unwrap();
        let v = min_ready_violations.clone();
        let rolled = rolled.clone();
        let armed = armed.clone();
        tokio::spawn(async move {
            let mut readyset: HashMap<String, bool> = HashMap::new();
            while let Some(ev) = w.next().await {
                match ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                        let r = p["metadata"]["deletionTimestamp"].is_null()
                            && p["status"]["conditions"].as_array().is_some_and(|c| {
                                c.iter()
                                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                            });
                        readyset.insert(p["metadata"]["name"].as_str().unwrap().into(), r);
                    }
                    WatchEvent::Deleted(p) => {
                        readyset.remove(p["metadata"]["name"].as_str().unwrap());
                    }
                    _ => {}
                }
                let n = readyset.values().filter(|r| **r).count();
                if armed.load(Ordering::SeqCst) && rolled.load(Ordering::SeqCst) && n < 3 {
                    v.lock().unwrap().push(n);
                }
            }
        });
    }

    c.create(&deploy(), Some("default"), json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}}), "test").await.unwrap();
    let d = rollout_done(&c, "web", 4).await;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let conds = d["status"]["conditions"].as_array().unwrap();
    assert!(conds.iter().any(|c| c["type"] == "Available"
        && c["status"] == "True"
        && c["reason"] == "MinimumReplicasAvailable"));
    assert!(conds
        .iter()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"));
    let list = c
        .list(&rss(), Some("default"), &ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(list.len(), 1);
    let rs1 = list[0].clone();
    let hash = rs1["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rs1["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(rs1["metadata"]["ownerReferences"][0]["controller"], true);
    let ps = c
        .list(&pods(), Some("default"), &ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(ps.len(), 4);
    for p in &ps {
        assert!(p["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("web-{hash}-")));
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["blockOwnerDeletion"],
            true
        );
    }

    rolled.store(true, Ordering::SeqCst);
    c.patch(&deploy(), Some("default"), "web", Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}})), None, "test").await.unwrap();
    let d = rollout_done(&c, "web", 4).await;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let list = eventually("old RS scaled down", || async {
        let l = c
            .list(&rss(), Some("default"), &ListParams::default())
            .await
            .ok()?
            .items;
        (l.len() == 2
            && l.iter().any(|r| {
                r["metadata"]["name"] == rs1["metadata"]["name"] && r["spec"]["replicas"] == 0
            }))
        .then_some(l)
    })
    .await;
    assert_eq!(list.len(), 2);

    // Scale up and down through the scale subresource.
    armed.store(false, Ordering::SeqCst);
    c.patch(
        &deploy(),
        Some("default"),
        "web",
        Patch::Merge(json!({"spec": {"replicas": 6}})),
        Some("scale"),
        "test",
    )
    .await
    .unwrap();
    rollout_done(&c, "web", 6).await;
    c.patch(
        &deploy(),
        Some("default"),
        "web",
        Patch::Merge(json!({"spec": {"replicas": 4}})),
        Some("scale"),
        "test",
    )
    .await
    .unwrap();
    rollout_done(&c, "web", 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    armed.store(true, Ordering::SeqCst);

    // Rollback, as kubectl rollout undo does it: the old template comes back, its RS is reused.
    c.patch(&deploy(), Some("default"), "web", Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}})), None, "test").await.unwrap();
    let d = rollout_done(&c, "web", 4).await;
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    let rs = eventually("rs1 back", || async {
        let r = c
            .get(
                &rss(),
                Some("default"),
                rs1["metadata"]["name"].as_str().unwrap(),
            )
            .await
            .ok()?;
        (r["spec"]["replicas"] == 4).then_some(r)
    })
    .await;
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );
    assert!(
        violations.lock().unwrap().is_empty(),
        "surge exceeded: {:?}",
        violations.lock().unwrap()
    );
    assert!(
        min_ready_violations.lock().unwrap().is_empty(),
        "unavailable exceeded: {:?}",
        min_ready_violations.lock().unwrap()
    );

    // Events tell the story.
    let evs = c
        .list(
            &Resource::core("events"),
            Some("default"),
            &ListParams::default(),
        )
        .await
        .unwrap()
        .items;
    assert!(evs.iter().any(|e| e["reason"] == "ScalingReplicaSet"));
    assert!(evs
        .iter()
        .any(|e| e["reason"] == "SuccessfulCreate" && e["involvedObject"]["kind"] == "ReplicaSet"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_adopts_orphans_and_counts_status() {
    let c = client().await;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    FakeKubelet::default().gated(ready.clone()).spawn(c.clone());
    // An orphan that matches.
    c.create(&pods(), Some("default"), json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan", "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}}), "test").await.unwrap();
    tokio::spawn(k3rs_controllers::run(c.clone(), Default::default()));
    c.create(&rss(), Some("default"), json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "x"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}), "test").await.unwrap();
    let rs = eventually("rs status", || async {
        let r = c.get(&rss(), Some("default"), "x").await.ok()?;
        (r["status"]["replicas"] == 3 && r["status"]["observedGeneration"] == 1).then_some(r)
    })
    .await;
    assert_eq!(rs["status"]["fullyLabeledReplicas"], 3);
    assert!(rs["status"]["readyReplicas"].is_null());
    let orphan = c.get(&pods(), Some("default"), "orphan").await.unwrap();
    assert_eq!(orphan["metadata"]["ownerReferences"][0]["name"], "x");
    // Never over-creates.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.list(&pods(), Some("default"), &ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    // Pods turn ready: ready/available follow (new pods after the flag is set get marked).
    ready.store(true, Ordering::SeqCst);
    c.patch(
        &rss(),
        Some("default"),
        "x",
        Patch::Merge(json!({"spec": {"replicas": 5}})),
        None,
        "test",
    )
    .await
    .unwrap();
    eventually("available", || async {
        let r = c.get(&rss(), Some("default"), "x").await.ok()?;
        (r["status"]["replicas"] == 5
            && r["status"]["availableReplicas"] == 2
            && r["status"]["readyReplicas"] == 2)
            .then_some(())
    })
    .await;
    // Idle: nothing is written any more.
    let rv = c
        .list(&pods(), Some("default"), &ListParams::default())
        .await
        .unwrap()
        .resource_version;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rv2 = c
        .list(&pods(), Some("default"), &ListParams::default())
        .await
        .unwrap()
        .resource_version;
    assert_eq!(rv, rv2, "an idle cluster writes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_completes_and_is_cleaned_by_ttl() {
    let c = client().await;
    FakeKubelet::default().spawn(c.clone());
    tokio::spawn(k3rs_controllers::run(c.clone(), Default::default()));
    let jobs = Resource::new("batch", "v1", "jobs");
    c.create(&jobs, Some("default"), json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi"},
        "spec": {"completions": 4, "parallelism": 2, "completionMode": "Indexed", "ttlSecondsAfterFinished": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "perl"}]}}}}), "test").await.unwrap();
    let j = eventually("job complete", || async {
        let j = c.get(&jobs, Some("default"), "pi").await.ok()?;
        j["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Complete" && c["status"] == "True")
            .then_some(j)
    })
    .await;
    assert_eq!(j["status"]["succeeded"], 4);
    assert_eq!(j["status"]["completedIndexes"], "0-3");
    let ps = c
        .list(&pods(), Some("default"), &ListParams::labels("job-name=pi"))
        .await
        .unwrap()
        .items;
    assert_eq!(ps.len(), 4);
    assert!(ps.iter().all(
        |p| p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == j["metadata"]["uid"]
    ));
    eventually("job deleted by TTL", || async {
        c.get(&jobs, Some("default"), "pi")
            .await
            .err()
            .filter(|e| e.is_not_found())
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_ready_pods() {
    let c = client().await;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    FakeKubelet::default().gated(ready.clone()).spawn(c.clone());
    tokio::spawn(k3rs_controllers::run(c.clone(), Default::default()));
    c.create(&Resource::core("services"), Some("default"), json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}), "test").await.unwrap();
    for i in 0..2 {
        c.create(&pods(), Some("default"), json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("w{i}"), "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]}}), "test").await.unwrap();
    }
    let ep = eventually("endpoints", || async {
        let e = c
            .get(&Resource::core("endpoints"), Some("default"), "web")
            .await
            .ok()?;
        (e["subsets"][0]["addresses"].as_array()?.len() == 2).then_some(e)
    })
    .await;
    assert_eq!(
        ep["subsets"][0]["ports"][0],
        json!({"name": "http", "port": 8080, "protocol": "TCP"})
    );
    let slices = eventually("slice", || async {
        let l = c
            .list(
                &Resource::new("discovery.k8s.io", "v1", "endpointslices"),
                Some("default"),
                &ListParams::labels("kubernetes.io/service-name=web"),
            )
            .await
            .ok()?
            .items;
        (l.len() == 1 && l[0]["endpoints"].as_array()?.len() == 2).then_some(l)
    })
    .await;
    assert_eq!(slices[0]["endpoints"][0]["conditions"]["ready"], true);
    // A pod turning unready moves to notReadyAddresses.
    c.patch(
        &pods(),
        Some("default"),
        "w0",
        Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
        Some("status"),
        "kubelet",
    )
    .await
    .unwrap();
    eventually("not ready", || async {
        let e = c
            .get(&Resource::core("endpoints"), Some("default"), "web")
            .await
            .ok()?;
        (e["subsets"][0]["notReadyAddresses"].as_array()?.len() == 1).then_some(())
    })
    .await;
    // The API server's own `kubernetes` endpoints are left alone.
    let k = c
        .get(&Resource::core("endpoints"), Some("default"), "kubernetes")
        .await
        .unwrap();
    assert!(k["subsets"][0]["addresses"][0]["ip"].is_string());
}
