use super::*;
use chrono::TimeZone;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap()
}

fn names(cols: &[Column]) -> Vec<(&str, i32)> {
    cols.iter().map(|c| (c.name.as_str(), c.priority)).collect()
}

#[test]
fn human_durations_match_kubectl() {
    let d = chrono::Duration::seconds;
    assert_eq!(human_duration(d(5)), "5s");
    assert_eq!(human_duration(d(119)), "119s");
    assert_eq!(human_duration(d(192)), "3m12s");
    assert_eq!(human_duration(d(600)), "10m");
    assert_eq!(human_duration(d(3 * 3600 + 60)), "3h1m");
    assert_eq!(human_duration(d(10 * 3600)), "10h");
    assert_eq!(human_duration(d(51 * 3600)), "2d3h");
    assert_eq!(human_duration(d(30 * 86400)), "30d");
    assert_eq!(human_duration(d(3 * 365 * 86400 + 86400 * 5)), "3y5d");
    assert_eq!(human_duration(d(-1)), "0s");
    assert_eq!(human_duration(d(-5)), "<invalid>");
}

#[test]
fn pod_columns_are_upstreams() {
    assert_eq!(
        names(&columns("", "Pod")),
        vec![
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1)
        ]
    );
    assert_eq!(columns("", "Pod")[0].format, "name");
    assert_eq!(columns("", "Pod")[3].type_, "string");
}

#[test]
fn crashloop_pod() {
    let pod = json!({
        "metadata": {"name": "crash", "creationTimestamp": "2025-01-01T11:00:00Z"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "n1"},
        "status": {
            "phase": "Running",
            "podIP": "10.42.0.5",
            "podIPs": [{"ip": "10.42.0.5"}],
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{
                "name": "c", "ready": false, "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                    "finishedAt": "2025-01-01T11:58:30Z"}}
            }]
        }
    });
    assert_eq!(
        cells("", "Pod", &pod, now()),
        vec![
            json!("crash"),
            json!("0/1"),
            json!("CrashLoopBackOff"),
            json!("5 (90s ago)"),
            json!("60m"),
            json!("10.42.0.5"),
            json!("n1"),
            json!("<none>"),
            json!("<none>")
        ]
    );
}

#[test]
fn running_pod() {
    let pod = json!({
        "metadata": {"name": "web", "creationTimestamp": "2025-01-01T11:59:55Z"},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2025-01-01T11:59:58Z"}}},
                {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2025-01-01T11:59:58Z"}}}
            ]
        }
    });
    let c = cells("", "Pod", &pod, now());
    assert_eq!(
        c[..5],
        [
            json!("web"),
            json!("2/2"),
            json!("Running"),
            json!("0"),
            json!("5s")
        ]
    );
    assert_eq!(c[5], json!("<none>"));
}

#[test]
fn pod_init_terminating_completed() {
    let init = json!({
        "metadata": {"name": "i", "creationTimestamp": "2025-01-01T11:59:00Z"},
        "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "c"}]},
        "status": {"phase": "Pending",
            "initContainerStatuses": [{"name": "init", "restartCount": 0, "state": {"running": {}}}],
            "containerStatuses": [{"name": "c", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}
    });
    assert_eq!(cells("", "Pod", &init, now())[2], json!("Init:0/1"));

    let mut term = init.clone();
    term["metadata"]["deletionTimestamp"] = json!("2025-01-01T12:00:00Z");
    assert_eq!(cells("", "Pod", &term, now())[2], json!("Terminating"));

    let done = json!({
        "metadata": {"name": "d", "creationTimestamp": "2025-01-01T11:00:00Z"},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Succeeded",
            "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
    });
    assert_eq!(
        cells("", "Pod", &done, now())[1..3],
        [json!("0/1"), json!("Completed")]
    );

    let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}});
    assert_eq!(
        cells("", "Pod", &pending, now())[1..5],
        [
            json!("0/1"),
            json!("Pending"),
            json!("0"),
            json!("<unknown>")
        ]
    );
}

#[test]
fn deployment_wide() {
    let cols = columns("apps", "Deployment");
    assert_eq!(
        names(&cols),
        vec![
            ("Name", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1)
        ]
    );
    let d = json!({
        "metadata": {"name": "nginx", "creationTimestamp": "2024-12-30T09:00:00Z"},
        "spec": {"replicas": 3,
            "selector": {"matchLabels": {"app": "nginx", "tier": "web"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]},
            "template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.27"}, {"name": "side", "image": "busybox"}]}}},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
    });
    let c = cells("apps", "Deployment", &d, now());
    assert_eq!(c.len(), cols.len());
    assert_eq!(
        c,
        vec![
            json!("nginx"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("2d3h"),
            json!("nginx,side"),
            json!("nginx:1.27,busybox"),
            json!("app=nginx,env in (dev,prod),tier=web")
        ]
    );
}

#[test]
fn every_builtin_row_matches_its_columns() {
    let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2025-01-01T11:00:00Z"}});
    for rt in crate::builtin_resources() {
        let cols = columns(&rt.group, &rt.kind);
        let row = cells(&rt.group, &rt.kind, &obj, now());
        assert_eq!(cols.len(), row.len(), "{}/{}", rt.group, rt.kind);
        assert!(cols.iter().filter(|c| c.format == "name").count() <= 2);
    }
}

#[test]
fn default_table_for_roles_and_crds() {
    for (g, k) in [
        ("rbac.authorization.k8s.io", "Role"),
        ("rbac.authorization.k8s.io", "ClusterRole"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ("", "LimitRange"),
    ] {
        let cols = columns(g, k);
        assert_eq!(names(&cols), vec![("Name", 0), ("Created At", 0)]);
        assert_eq!(cols[1].type_, "date");
    }
    let r = json!({"metadata": {"name": "admin", "creationTimestamp": "2025-01-01T11:00:00Z"}});
    assert_eq!(
        cells("rbac.authorization.k8s.io", "ClusterRole", &r, now()),
        vec![json!("admin"), json!("2025-01-01T11:00:00Z")]
    );
}

#[test]
fn node_service_job_event() {
    let node = json!({
        "metadata": {"name": "n1", "creationTimestamp": "2025-01-01T11:00:00Z",
            "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": "true"}},
        "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            "nodeInfo": {"kubeletVersion": "v1.33.1+k3rs", "osImage": "k3rs", "kernelVersion": "6.6", "containerRuntimeVersion": "k3rs://0.1"}}
    });
    assert_eq!(
        cells("", "Node", &node, now()),
        vec![
            json!("n1"),
            json!("Ready,SchedulingDisabled"),
            json!("control-plane,master"),
            json!("60m"),
            json!("v1.33.1+k3rs"),
            json!("10.0.0.1"),
            json!("<none>"),
            json!("k3rs"),
            json!("6.6"),
            json!("k3rs://0.1")
        ]
    );

    let svc = json!({"metadata": {"name": "web", "creationTimestamp": "2025-01-01T11:00:00Z"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}],
            "selector": {"app": "web"}}});
    assert_eq!(
        cells("", "Service", &svc, now()),
        vec![
            json!("web"),
            json!("NodePort"),
            json!("10.43.0.10"),
            json!("<none>"),
            json!("80:30080/TCP,53/UDP"),
            json!("60m"),
            json!("app=web")
        ]
    );

    let job = json!({"metadata": {"name": "pi", "creationTimestamp": "2025-01-01T11:00:00Z"},
        "spec": {"completions": 1, "parallelism": 1, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
            "template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}},
        "status": {"succeeded": 1, "startTime": "2025-01-01T11:00:00Z", "completionTime": "2025-01-01T11:00:42Z",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}});
    assert_eq!(
        names(&columns("batch", "Job"))[..5],
        [
            ("Name", 0),
            ("Status", 0),
            ("Completions", 0),
            ("Duration", 0),
            ("Age", 0)
        ]
    );
    assert_eq!(
        cells("batch", "Job", &job, now())[..5],
        [
            json!("pi"),
            json!("Complete"),
            json!("1/1"),
            json!("42s"),
            json!("60m")
        ]
    );

    let ev = json!({"metadata": {"name": "web.1"}, "type": "Normal", "reason": "Scheduled",
        "involvedObject": {"kind": "Pod", "name": "web"}, "message": "Successfully assigned\n",
        "source": {"component": "default-scheduler"}, "eventTime": "2025-01-01T11:59:00.000000Z"});
    assert_eq!(
        cells("", "Event", &ev, now()),
        vec![
            json!("60s"),
            json!("Normal"),
            json!("Scheduled"),
            json!("pod/web"),
            json!(""),
            json!("default-scheduler"),
            json!("Successfully assigned"),
            json!("60s"),
            json!(1),
            json!("web.1")
        ]
    );
}

#[test]
fn crd_printer_columns() {
    let printer = json!([
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status", "description": "Readiness"},
        {"name": "Image", "type": "string", "priority": 1, "jsonPath": ".spec.image"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]);
    let cols = crd_columns(&printer);
    assert_eq!(
        names(&cols),
        vec![
            ("Name", 0),
            ("Replicas", 0),
            ("Ready", 0),
            ("Image", 1),
            ("Age", 0)
        ]
    );
    assert_eq!(
        cols[1].description,
        "Custom resource definition column (in JSONPath format): .spec.replicas"
    );
    assert_eq!(cols[2].description, "Readiness");
    let obj = json!({"metadata": {"name": "cr1", "creationTimestamp": "2025-01-01T11:57:00Z"},
        "spec": {"replicas": 2},
        "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
    assert_eq!(
        crd_cells(&printer, &obj, now()),
        vec![
            json!("cr1"),
            json!(2),
            json!("True"),
            Value::Null,
            json!("3m")
        ]
    );

    // No printer columns: Name + Age, as upstream serves.
    assert_eq!(
        names(&crd_columns(&json!([]))),
        vec![("Name", 0), ("Age", 0)]
    );
    assert_eq!(
        crd_cells(&Value::Null, &obj, now()),
        vec![json!("cr1"), json!("3m")]
    );
}

#[test]
fn column_serializes_as_table_column_definition() {
    let v = serde_json::to_value(&columns("", "Namespace")[1]).unwrap();
    assert_eq!(
        v,
        json!({"name": "Status", "type": "string", "format": "", "description": "The status of the namespace", "priority": 0})
    );
}
