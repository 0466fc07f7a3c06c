use super::*;
use serde_json::json;

fn minimal_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nginx", "namespace": "default", "labels": {"app": "nginx"}},
        "spec": {
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}
            }
        }
    })
}

fn defaulted(group: &str, version: &str, kind: &str, mut v: Value) -> Value {
    apply_defaults(group, version, kind, &mut v);
    v
}

fn fields(errs: &[FieldError]) -> Vec<(&str, &str)> {
    errs.iter().map(|e| (e.field.as_str(), e.reason)).collect()
}

#[test]
fn defaulting_a_minimal_deployment_matches_upstream() {
    let d = defaulted("apps", "v1", "Deployment", minimal_deployment());
    // What `kubectl create deployment nginx --image=nginx` stores on a real cluster (spec part).
    assert_eq!(
        d["spec"],
        json!({
            "progressDeadlineSeconds": 600,
            "replicas": 1,
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": {"app": "nginx"}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}, "type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"app": "nginx"}},
                "spec": {
                    "containers": [{
                        "image": "nginx",
                        "imagePullPolicy": "Always",
                        "name": "nginx",
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File"
                    }],
                    "dnsPolicy": "ClusterFirst",
                    "restartPolicy": "Always",
                    "schedulerName": "default-scheduler",
                    "securityContext": {},
                    "terminationGracePeriodSeconds": 30
                }
            }
        })
    );
    assert_eq!(validate("apps", "v1", "Deployment", &d, None), Ok(()));
    // Defaulting is idempotent.
    assert_eq!(defaulted("apps", "v1", "Deployment", d.clone()), d);
}

#[test]
fn deployment_without_selector() {
    let mut d = minimal_deployment();
    d["spec"].as_object_mut().unwrap().remove("selector");
    let errs = validate("apps", "v1", "Deployment", &d, None).unwrap_err();
    assert_eq!(
        errs[0],
        FieldError {
            field: "spec.selector".into(),
            reason: "FieldValueRequired",
            message: "Required value".into()
        }
    );
    assert_eq!(errs[0].to_string(), "spec.selector: Required value");
}

#[test]
fn selector_must_match_template() {
    let mut d = minimal_deployment();
    d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let errs = validate("apps", "v1", "Deployment", &d, None).unwrap_err();
    assert_eq!(
        fields(&errs),
        vec![("spec.template.metadata.labels", "FieldValueInvalid")]
    );
    assert_eq!(
        errs[0].message,
        "Invalid value: {\"app\":\"other\"}: `selector` does not match template `labels`"
    );
}

#[test]
fn bad_names() {
    let mut d = minimal_deployment();
    d["metadata"]["name"] = json!("Foo");
    let errs = validate("apps", "v1", "Deployment", &d, None).unwrap_err();
    assert_eq!(fields(&errs), vec![("metadata.name", "FieldValueInvalid")]);
    assert_eq!(
        errs[0].to_string(),
        "metadata.name: Invalid value: \"Foo\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );

    let ns = json!({"metadata": {"name": "a.b"}});
    let errs = validate("", "v1", "Namespace", &ns, None).unwrap_err();
    assert!(
        errs[0].message.contains("RFC 1123 label"),
        "{}",
        errs[0].message
    );

    let svc = json!({"metadata": {"name": "1web"}, "spec": {"ports": [{"port": 80}]}});
    let errs = validate("", "v1", "Service", &svc, None).unwrap_err();
    assert!(
        errs[0].message.contains("DNS-1035 label"),
        "{}",
        errs[0].message
    );

    let cr = json!({"metadata": {"name": "system:controller:x"}, "rules": []});
    assert_eq!(
        validate("rbac.authorization.k8s.io", "v1", "ClusterRole", &cr, None),
        Ok(())
    );

    let none = json!({"metadata": {}});
    let errs = validate("", "v1", "ConfigMap", &none, None).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "metadata.name: Required value: name or generateName is required"
    );
    let generated = json!({"metadata": {"generateName": "web-"}});
    assert_eq!(validate("", "v1", "ConfigMap", &generated, None), Ok(()));
}

#[test]
fn labels_and_annotations() {
    let cm = json!({"metadata": {"name": "c", "labels": {"bad key": "x", "ok": "bad value!"},
        "annotations": {"example.com/fine": "anything goes here"}}});
    let errs = validate("", "v1", "ConfigMap", &cm, None).unwrap_err();
    assert_eq!(
        fields(&errs),
        vec![
            ("metadata.labels", "FieldValueInvalid"),
            ("metadata.labels", "FieldValueInvalid")
        ]
    );
    assert!(errs[0]
        .message
        .starts_with("Invalid value: \"bad key\": name part must consist of"));
    assert!(errs[1]
        .message
        .starts_with("Invalid value: \"bad value!\": a valid label must be an empty string"));
}

#[test]
fn pod_rules() {
    let pod = json!({"metadata": {"name": "p"}, "spec": {
    "restartPolicy": "Sometimes",
    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}],
    "containers": [
        {"name": "a", "image": "x", "ports": [{"containerPort": 70000}],
         "volumeMounts": [{"name": "missing", "mountPath": "/m"}]},
        {"name": "a"}
    ]}});
    let pod = defaulted("", "v1", "Pod", pod);
    let errs = validate("", "v1", "Pod", &pod, None).unwrap_err();
    assert_eq!(
        fields(&errs),
        vec![
            ("spec.volumes[1].name", "FieldValueDuplicate"),
            (
                "spec.containers[0].ports[0].containerPort",
                "FieldValueInvalid"
            ),
            (
                "spec.containers[0].volumeMounts[0].name",
                "FieldValueNotFound"
            ),
            ("spec.containers[1].name", "FieldValueDuplicate"),
            ("spec.containers[1].image", "FieldValueRequired"),
            ("spec.restartPolicy", "FieldValueNotSupported"),
        ]
    );
    assert_eq!(
        errs[5].message,
        "Unsupported value: \"Sometimes\": supported values: \"Always\", \"Never\", \"OnFailure\""
    );
    assert_eq!(
        errs[1].message,
        "Invalid value: 70000: must be between 1 and 65535, inclusive"
    );

    let empty = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
    let errs = validate("", "v1", "Pod", &defaulted("", "v1", "Pod", empty), None).unwrap_err();
    assert_eq!(
        fields(&errs),
        vec![("spec.containers", "FieldValueRequired")]
    );
}

#[test]
fn pod_update_is_mostly_immutable() {
    let old = defaulted(
        "",
        "v1",
        "Pod",
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}),
    );
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("nginx:2");
    new["spec"]["activeDeadlineSeconds"] = json!(30);
    new["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
    assert_eq!(validate("", "v1", "Pod", &new, Some(&old)), Ok(()));
    new["spec"]["containers"][0]["name"] = json!("d");
    let errs = validate("", "v1", "Pod", &new, Some(&old)).unwrap_err();
    assert_eq!(fields(&errs), vec![("spec", "FieldValueForbidden")]);
    assert!(errs[0]
        .message
        .starts_with("Forbidden: pod updates may not change fields other than"));
}

#[test]
fn immutable_fields_on_update() {
    let old = defaulted("apps", "v1", "Deployment", minimal_deployment());
    let mut new = old.clone();
    new["spec"]["selector"] = json!({"matchLabels": {"app": "nginx", "x": "y"}});
    new["spec"]["template"]["metadata"]["labels"]["x"] = json!("y");
    let errs = validate("apps", "v1", "Deployment", &new, Some(&old)).unwrap_err();
    assert_eq!(fields(&errs), vec![("spec.selector", "FieldValueInvalid")]);
    assert!(errs[0].message.ends_with(": field is immutable"));

    let cm = json!({"metadata": {"name": "c"}, "immutable": true, "data": {"a": "1"}});
    let mut cm2 = cm.clone();
    cm2["data"]["a"] = json!("2");
    let errs = validate("", "v1", "ConfigMap", &cm2, Some(&cm)).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "data: Forbidden: field is immutable when `immutable` is set"
    );

    let svc = defaulted(
        "",
        "v1",
        "Service",
        json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}}),
    );
    let mut svc2 = svc.clone();
    svc2["spec"]["clusterIP"] = json!("10.43.0.6");
    let errs = validate("", "v1", "Service", &svc2, Some(&svc)).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "spec.clusterIP: Invalid value: \"10.43.0.6\": field is immutable"
    );

    let job = defaulted(
        "batch",
        "v1",
        "Job",
        json!({"metadata": {"name": "j", "uid": "u1"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}),
    );
    assert_eq!(validate("batch", "v1", "Job", &job, None), Ok(()));
    let mut job2 = job.clone();
    job2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("alpine");
    let errs = validate("batch", "v1", "Job", &job2, Some(&job)).unwrap_err();
    assert_eq!(fields(&errs), vec![("spec.template", "FieldValueInvalid")]);
}

#[test]
fn service_ports_and_types() {
    let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "Weird"}});
    let errs = validate("", "v1", "Service", &svc, None).unwrap_err();
    assert_eq!(
        fields(&errs),
        vec![
            ("spec.type", "FieldValueNotSupported"),
            ("spec.ports", "FieldValueRequired")
        ]
    );
    let headless =
        json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "None", "selector": {"app": "x"}}});
    assert_eq!(
        validate(
            "",
            "v1",
            "Service",
            &defaulted("", "v1", "Service", headless),
            None
        ),
        Ok(())
    );
    let two = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}, {"port": 0, "name": "b"}]}});
    let errs = validate("", "v1", "Service", &two, None).unwrap_err();
    assert_eq!(
        fields(&errs),
        vec![
            ("spec.ports[0].name", "FieldValueRequired"),
            ("spec.ports[1].port", "FieldValueInvalid")
        ]
    );
}

#[test]
fn config_data_keys_and_jobs() {
    let cm = json!({"metadata": {"name": "c"}, "data": {"bad key": "v", "good.key": "v"}});
    let errs = validate("", "v1", "ConfigMap", &cm, None).unwrap_err();
    assert_eq!(errs[0].field, "data[bad key]");
    assert!(errs[0]
        .message
        .contains("a valid config key must consist of"));

    let secret = defaulted(
        "",
        "v1",
        "Secret",
        json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "stringData": {"tls.crt": "x"}}),
    );
    assert_eq!(secret["data"], json!({"tls.crt": "eA=="}));
    assert!(secret.get("stringData").is_none());
    let errs = validate("", "v1", "Secret", &secret, None).unwrap_err();
    assert_eq!(errs[0].to_string(), "data[tls.key]: Required value");

    let job = defaulted(
        "batch",
        "v1",
        "Job",
        json!({"metadata": {"name": "j"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
    );
    let errs = validate("batch", "v1", "Job", &job, None).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
    );
    let mut job = job;
    job["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    let errs = validate("batch", "v1", "Job", &job, None).unwrap_err();
    assert_eq!(errs[0].reason, "FieldValueNotSupported");
}

#[test]
fn type_errors_have_paths() {
    let mut d = minimal_deployment();
    d["spec"]["replicas"] = json!("3");
    let errs = validate("apps", "v1", "Deployment", &d, None).unwrap_err();
    assert_eq!(fields(&errs), vec![("spec.replicas", "FieldValueInvalid")]);
    let mut d = minimal_deployment();
    d["spec"]["replicas"] = json!(-1);
    let errs = validate("apps", "v1", "Deployment", &d, None).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    );
}

#[test]
fn unknown_fields_in_strict_mode() {
    let mut d = minimal_deployment();
    d["spec"]["replicass"] = json!(3);
    d["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("nginx");
    // Things that must not be reported: null values, free-form maps, empty objects and lists.
    d["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
    d["metadata"]["annotations"] = json!({"any/key": "v"});
    d["spec"]["template"]["spec"]["securityContext"] = json!({});
    d["spec"]["template"]["spec"]["tolerations"] = json!([]);
    d["status"] = json!({});
    assert_eq!(
        unknown_fields("apps", "v1", "Deployment", &d),
        // Document order: `replicass` was added after `template`.
        vec![
            "spec.template.spec.containers[0].imagee".to_string(),
            "spec.replicass".to_string()
        ]
    );
    assert!(unknown_fields("apps", "v1", "Deployment", &minimal_deployment()).is_empty());
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "y"}, "extra": 1});
    assert_eq!(
        unknown_fields("", "v1", "ConfigMap", &cm),
        vec!["extra".to_string()]
    );
    assert!(unknown_fields("example.com", "v1", "Widget", &cm).is_empty());
}

#[test]
fn other_defaults() {
    let svc = defaulted(
        "",
        "v1",
        "Service",
        json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
    );
    assert_eq!(
        svc["spec"],
        json!({"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}], "sessionAffinity": "None",
            "type": "ClusterIP", "internalTrafficPolicy": "Cluster", "ipFamilyPolicy": "SingleStack"})
    );
    let ns = defaulted("", "v1", "Namespace", json!({"metadata": {"name": "team"}}));
    assert_eq!(ns["spec"], json!({"finalizers": ["kubernetes"]}));
    assert_eq!(ns["status"], json!({"phase": "Active"}));
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "team"})
    );

    let pod = defaulted(
        "",
        "v1",
        "Pod",
        json!({"metadata": {"name": "p"}, "spec": {
        "volumes": [{"name": "c", "configMap": {"name": "x"}}, {"name": "e"}],
        "containers": [{"name": "c", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
            "readinessProbe": {"httpGet": {"port": 80}},
            "resources": {"limits": {"cpu": "1"}}}]}}),
    );
    let spec = &pod["spec"];
    assert_eq!(spec["enableServiceLinks"], json!(true));
    assert_eq!(spec["restartPolicy"], json!("Always"));
    assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], json!(420));
    assert_eq!(spec["volumes"][1]["emptyDir"], json!({}));
    let c = &spec["containers"][0];
    assert_eq!(c["imagePullPolicy"], json!("IfNotPresent"));
    assert_eq!(c["ports"][0]["protocol"], json!("TCP"));
    assert_eq!(c["resources"]["requests"], json!({"cpu": "1"}));
    assert_eq!(
        c["readinessProbe"],
        json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10,
            "successThreshold": 1, "failureThreshold": 3})
    );

    let job = defaulted(
        "batch",
        "v1",
        "Job",
        json!({"metadata": {"name": "pi", "uid": "abc"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl"}]}}}}),
    );
    let s = &job["spec"];
    assert_eq!(
        (
            s["parallelism"].clone(),
            s["completions"].clone(),
            s["backoffLimit"].clone(),
            s["completionMode"].clone(),
            s["suspend"].clone(),
            s["podReplacementPolicy"].clone()
        ),
        (
            json!(1),
            json!(1),
            json!(6),
            json!("NonIndexed"),
            json!(false),
            json!("TerminatingOrFailed")
        )
    );
    assert_eq!(
        s["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "abc"}})
    );
    assert_eq!(s["template"]["metadata"]["labels"]["job-name"], json!("pi"));
    assert_eq!(
        job["metadata"]["labels"]["batch.kubernetes.io/job-name"],
        json!("pi")
    );
    assert!(s["template"]["spec"].get("enableServiceLinks").is_none());

    let cj = defaulted(
        "batch",
        "v1",
        "CronJob",
        json!({"metadata": {"name": "c"}, "spec": {"schedule": "*/5 * * * *",
        "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
    );
    assert_eq!(cj["spec"]["concurrencyPolicy"], json!("Allow"));
    assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], json!(3));
    assert_eq!(cj["spec"]["failedJobsHistoryLimit"], json!(1));
    assert_eq!(validate("batch", "v1", "CronJob", &cj, None), Ok(()));

    let sts = defaulted(
        "apps",
        "v1",
        "StatefulSet",
        json!({"metadata": {"name": "web"}, "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
    );
    let s = &sts["spec"];
    assert_eq!(s["podManagementPolicy"], json!("OrderedReady"));
    assert_eq!(
        s["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    assert_eq!(
        s["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    assert_eq!(
        (s["replicas"].clone(), s["revisionHistoryLimit"].clone()),
        (json!(1), json!(10))
    );
    assert_eq!(validate("apps", "v1", "StatefulSet", &sts, None), Ok(()));

    let ds = defaulted(
        "apps",
        "v1",
        "DaemonSet",
        json!({"metadata": {"name": "d"}, "spec": {}}),
    );
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );

    let pvc = defaulted(
        "",
        "v1",
        "PersistentVolumeClaim",
        json!({"metadata": {"name": "p"}, "spec": {}}),
    );
    assert_eq!(pvc["spec"]["volumeMode"], json!("Filesystem"));
    let errs = validate("", "v1", "PersistentVolumeClaim", &pvc, None).unwrap_err();
    assert_eq!(
        fields(&errs),
        vec![
            ("spec.accessModes", "FieldValueRequired"),
            ("spec.resources[storage]", "FieldValueRequired")
        ]
    );

    let secret = defaulted("", "v1", "Secret", json!({"metadata": {"name": "s"}}));
    assert_eq!(secret["type"], json!("Opaque"));
}

#[test]
fn every_builtin_accepts_a_named_object_or_reports_cleanly() {
    // No panics on odd input, for every registered kind.
    for rt in crate::builtin_resources() {
        for obj in [
            json!({}),
            json!({"metadata": {"name": "x"}, "spec": null}),
            json!({"metadata": {"name": "x"}, "spec": {"a": [1]}}),
        ] {
            let mut o = obj.clone();
            apply_defaults(&rt.group, &rt.version, &rt.kind, &mut o);
            let _ = validate(&rt.group, &rt.version, &rt.kind, &o, Some(&o));
            let _ = unknown_fields(&rt.group, &rt.version, &rt.kind, &o);
        }
    }
}
