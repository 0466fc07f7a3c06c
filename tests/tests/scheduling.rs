//! Scheduling rules across nodes, end to end: the real `k3rs server` (no agent) with Node objects
//! made by the test and labelled with zones, the harness's fake kubelet marking bound pods
//! Running, and real kubectl. Inter-pod anti-affinity and affinity, topology spread, and priority
//! preemption with PriorityClass admission.

use k3rs_e2e::fake_kubelet::{add_node, FakeKubelet};
use k3rs_e2e::{eventually, Cluster};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const ZONE: &str = "topology.kubernetes.io/zone";

fn zoned_nodes(c: &Cluster, nodes: &[(&str, &str)], cpu: &str) -> anyhow::Result<()> {
    for (name, zone) in nodes {
        add_node(c, name, cpu)?;
        c.ok(&["label", "node", name, &format!("{ZONE}={zone}")])?;
    }
    Ok(())
}

/// A Deployment whose pod template carries `spec_extra` (affinity, spread constraints).
fn deployment(c: &Cluster, name: &str, replicas: u32, spec_extra: Value) -> anyhow::Result<()> {
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.local/app:1"}]});
    for (k, v) in spec_extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}});
    c.kubectl_stdin(None, &["apply", "-f", "-"], &d.to_string())?;
    Ok(())
}

fn pods(c: &Cluster, selector: &str) -> anyhow::Result<Vec<Value>> {
    Ok(c.json(&["get", "pods", "-l", selector])?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Waits until `count` pods of `app` are bound; returns node → number of its pods.
fn bound(c: &Cluster, app: &str, count: usize) -> BTreeMap<String, usize> {
    eventually(Duration::from_secs(30), || {
        let items = pods(c, &format!("app={app}")).ok()?;
        let mut by_node = BTreeMap::new();
        for p in &items {
            if let Some(n) = p["spec"]["nodeName"].as_str() {
                *by_node.entry(n.to_string()).or_default() += 1;
            }
        }
        (by_node.values().sum::<usize>() == count).then_some(by_node)
    })
    .unwrap_or_else(|| panic!("{count} pods of {app} never got bound"))
}

fn failed_scheduling(c: &Cluster, pod: &str) -> Option<String> {
    let events = c
        .json(&[
            "get",
            "events",
            "--field-selector",
            &format!("reason=FailedScheduling,involvedObject.name={pod}"),
        ])
        .ok()?;
    events["items"]
        .as_array()?
        .first()
        .and_then(|e| e["message"].as_str())
        .map(String::from)
}

#[test]
fn pod_anti_affinity_spreads_and_affinity_colocates() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    zoned_nodes(&c, &[("n1", "a"), ("n2", "a"), ("n3", "b")], "8")?;
    let _kubelet = FakeKubelet::start(&c);

    // Required anti-affinity on hostname: 3 replicas on 3 nodes, the 4th has nowhere to go.
    deployment(
        &c,
        "spread",
        4,
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "spread"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
    )?;
    let by_node = bound(&c, "spread", 3);
    assert_eq!(by_node.len(), 3, "one per node: {by_node:?}");
    let pending = eventually(Duration::from_secs(30), || {
        let items = pods(&c, "app=spread").ok()?;
        let p = items.iter().find(|p| p["spec"]["nodeName"].is_null())?;
        let name = p["metadata"]["name"].as_str()?.to_string();
        let message = failed_scheduling(&c, &name)?;
        Some((p.clone(), message))
    })
    .expect("a pending replica with a FailedScheduling event");
    let (pod, message) = pending;
    assert_eq!(
        message, "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.",
        "{pod}"
    );
    let condition = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "Unschedulable");

    // Required affinity to the db pod's node: every cache replica lands next to it. The spread
    // pods' anti-affinity only selects their own app, so they do not keep cache pods away.
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "labels": {"app": "db"}},
            "spec": {"containers": [{"name": "c", "image": "registry.local/db:1"}]}})
        .to_string(),
    )?;
    let db_node = bound(&c, "db", 1).into_keys().next().expect("db node");
    deployment(
        &c,
        "cache",
        3,
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
    )?;
    let by_node = bound(&c, "cache", 3);
    assert_eq!(by_node, BTreeMap::from([(db_node, 3)]));
    Ok(())
}

#[test]
fn topology_spread_splits_replicas_evenly_over_zones() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    // Three nodes in zone a, one in zone b: without the constraint zone a would take most.
    zoned_nodes(
        &c,
        &[("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")],
        "8",
    )?;
    let _kubelet = FakeKubelet::start(&c);
    deployment(
        &c,
        "web",
        4,
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}),
    )?;
    let by_node = bound(&c, "web", 4);
    let zone_b = by_node.get("b1").copied().unwrap_or(0);
    assert_eq!((4 - zone_b, zone_b), (2, 2), "{by_node:?}");
    Ok(())
}

#[test]
fn higher_priority_pod_preempts_on_a_full_node() -> anyhow::Result<()> {
    let c = Cluster::start()?;
    add_node(&c, "small", "1")?;
    let _kubelet = FakeKubelet::start(&c);
    for (name, value, policy) in [
        ("low", 100, "PreemptLowerPriority"),
        ("high", 1000, "PreemptLowerPriority"),
        ("polite", 2000, "Never"),
    ] {
        c.kubectl_stdin(
            None,
            &["apply", "-f", "-"],
            &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": name}, "value": value, "preemptionPolicy": policy})
            .to_string(),
        )?;
    }
    let pod = |name: &str, class: &str, cpu: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"priorityClassName": class, "containers": [{"name": "c", "image": "registry.local/app:1",
                "resources": {"requests": {"cpu": cpu}}}]}})
        .to_string()
    };
    // Priority admission: the class resolves to spec.priority; an unknown class is refused.
    let err = c.kubectl_stdin(None, &["apply", "-f", "-"], &pod("ghost", "nope", "1m"));
    let err = err.expect_err("unknown PriorityClass").to_string();
    assert!(
        err.contains("no PriorityClass with name nope was found"),
        "{err}"
    );

    c.kubectl_stdin(None, &["apply", "-f", "-"], &pod("victim", "low", "800m"))?;
    bound(&c, "victim", 1);
    let victim_uid = c.json(&["get", "pod", "victim"])?["metadata"]["uid"].clone();
    c.kubectl_stdin(None, &["apply", "-f", "-"], &pod("urgent", "high", "500m"))?;
    let urgent = c.json(&["get", "pod", "urgent"])?;
    assert_eq!(urgent["spec"]["priority"], 1000);
    assert_eq!(urgent["spec"]["preemptionPolicy"], "PreemptLowerPriority");

    assert_eq!(
        bound(&c, "urgent", 1),
        BTreeMap::from([("small".into(), 1)])
    );
    let gone = eventually(Duration::from_secs(30), || {
        pods(&c, "app=victim").ok().filter(Vec::is_empty)
    });
    assert!(gone.is_some(), "the victim is deleted");
    let urgent = c.json(&["get", "pod", "urgent"])?;
    assert_eq!(urgent["status"]["nominatedNodeName"], "small");
    let preempted = eventually(Duration::from_secs(10), || {
        let ev = c
            .json(&["get", "events", "--field-selector", "reason=Preempted"])
            .ok()?;
        ev["items"].as_array()?.first().cloned()
    })
    .expect("a Preempted event");
    assert_eq!(preempted["involvedObject"]["name"], "victim");
    assert_eq!(preempted["involvedObject"]["uid"], victim_uid);
    assert_eq!(
        preempted["message"],
        format!(
            "Preempted by pod {} on node small",
            urgent["metadata"]["uid"].as_str().unwrap_or("")
        )
    );

    // preemptionPolicy Never: even a higher priority waits instead of evicting.
    c.kubectl_stdin(
        None,
        &["apply", "-f", "-"],
        &pod("patient", "polite", "800m"),
    )?;
    let message = eventually(Duration::from_secs(30), || failed_scheduling(&c, "patient"))
        .expect("FailedScheduling for the Never pod");
    assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pods(&c, "app=urgent")?.len(), 1, "urgent was not evicted");
    Ok(())
}
