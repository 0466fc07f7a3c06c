//! Upstream defaulting (`SetDefaults_*` of core/v1, apps/v1, batch/v1 and a few other groups),
//! applied to JSON objects.

use serde_json::{json, Map, Value};

fn obj_mut<'a>(v: &'a mut Value, k: &str) -> &'a mut Map<String, Value> {
    let m = v.as_object_mut().expect("object");
    let entry = m.entry(k.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("object")
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    match m.get(k) {
        Some(x) if !x.is_null() && x != &json!("") => {}
        _ => {
            m.insert(k.to_string(), v);
        }
    }
}

fn each_in<'a>(v: &'a mut Value, k: &str) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    v.get_mut(k)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

pub(crate) fn apply(group: &str, version: &str, kind: &str, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match (group, version, kind) {
        ("", _, "Pod") => {
            let spec = obj_mut_value(obj, "spec");
            pod_spec(spec, true);
            pod_only(spec);
        }
        ("", _, "PodTemplate") => template(obj_mut(obj, "template"), true),
        ("", _, "ReplicationController") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            let labels = spec
                .get("template")
                .and_then(|t| t.pointer("/metadata/labels"))
                .cloned();
            if let Some(l) = labels
                .clone()
                .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
            {
                if spec
                    .get("selector")
                    .and_then(Value::as_object)
                    .is_none_or(Map::is_empty)
                {
                    spec.insert("selector".into(), l);
                }
            }
            if let Some(t) = spec.get_mut("template").and_then(Value::as_object_mut) {
                template(t, true);
            }
            if let Some(l) = labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
                let meta = obj_mut(obj, "metadata");
                if meta
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(Map::is_empty)
                {
                    meta.insert("labels".into(), l);
                }
            }
        }
        ("apps", _, "Deployment") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(s) = strategy.as_object_mut() {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            template(obj_mut(&mut obj["spec"], "template"), true);
        }
        ("apps", _, "ReplicaSet") => {
            set_default(obj_mut(obj, "spec"), "replicas", json!(1));
            template(obj_mut(&mut obj["spec"], "template"), true);
        }
        ("apps", _, "StatefulSet") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            let us = spec.entry("updateStrategy").or_insert_with(|| json!({}));
            if let Some(us) = us.as_object_mut() {
                if us
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    us.insert("type".into(), json!("RollingUpdate"));
                    if us.get("rollingUpdate").is_none_or(Value::is_null) {
                        us.insert("rollingUpdate".into(), json!({}));
                    }
                }
                if us.get("type") == Some(&json!("RollingUpdate")) {
                    if let Some(ru) = us.get_mut("rollingUpdate").and_then(Value::as_object_mut) {
                        set_default(ru, "partition", json!(0));
                    }
                }
            }
            let policy = spec
                .entry("persistentVolumeClaimRetentionPolicy")
                .or_insert_with(|| json!({}));
            if let Some(p) = policy.as_object_mut() {
                set_default(p, "whenDeleted", json!("Retain"));
                set_default(p, "whenScaled", json!("Retain"));
            }
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            if let Some(vcts) = spec
                .get_mut("volumeClaimTemplates")
                .and_then(Value::as_array_mut)
            {
                for t in vcts.iter_mut().filter(|t| t.is_object()) {
                    pvc(t);
                }
            }
            template(obj_mut(&mut obj["spec"], "template"), true);
        }
        ("apps", _, "DaemonSet") => {
            let spec = obj_mut(obj, "spec");
            let us = spec.entry("updateStrategy").or_insert_with(|| json!({}));
            if let Some(us) = us.as_object_mut() {
                set_default(us, "type", json!("RollingUpdate"));
                if us.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = us.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxUnavailable", json!(1));
                        set_default(ru, "maxSurge", json!(0));
                    }
                }
            }
            set_default(spec, "revisionHistoryLimit", json!(10));
            template(obj_mut(&mut obj["spec"], "template"), true);
        }
        ("batch", _, "Job") => job(obj),
        ("batch", _, "CronJob") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            let jt = obj_mut(&mut obj["spec"], "jobTemplate");
            let js = jt.entry("spec").or_insert_with(|| json!({}));
            if let Some(js) = js.as_object_mut() {
                let t = js.entry("template").or_insert_with(|| json!({}));
                if let Some(t) = t.as_object_mut() {
                    template(t, false);
                }
            }
        }
        ("", _, "Service") => service(obj_mut(obj, "spec")),
        ("", _, "Namespace") => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(String::from);
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                obj_mut(obj_mut_value(obj, "metadata"), "labels")
                    .insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            let spec = obj_mut(obj, "spec");
            if spec
                .get("finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                spec.insert("finalizers".into(), json!(["kubernetes"]));
            }
            set_default(obj_mut(obj, "status"), "phase", json!("Active"));
        }
        ("", _, "Secret") => secret(obj),
        ("", _, "PersistentVolumeClaim") => pvc(obj),
        ("", _, "PersistentVolume") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set_default(spec, "volumeMode", json!("Filesystem"));
            set_default(obj_mut(obj, "status"), "phase", json!("Pending"));
        }
        ("", _, "Endpoints") => {
            if let Some(subsets) = obj.get_mut("subsets").and_then(Value::as_array_mut) {
                for ss in subsets {
                    for p in each_in(ss, "ports") {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
        ("", _, "Node") => {
            if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
                if status.get("allocatable").is_none_or(Value::is_null) {
                    if let Some(cap) = status.get("capacity").cloned().filter(Value::is_object) {
                        status.insert("allocatable".into(), cap);
                    }
                }
            }
        }
        ("discovery.k8s.io", _, "EndpointSlice") => {
            for p in each_in(obj, "ports") {
                set_default(p, "protocol", json!("TCP"));
                if p.get("name").is_none_or(Value::is_null) {
                    p.insert("name".into(), json!(""));
                }
            }
        }
        ("autoscaling", "v2", "HorizontalPodAutoscaler") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "minReplicas", json!(1));
            if spec
                .get("metrics")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                spec.insert(
                    "metrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                );
            }
        }
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => {
            set_default(obj_mut(obj, "spec"), "minReplicas", json!(1));
        }
        ("networking.k8s.io", _, "NetworkPolicy") => {
            let spec = obj_mut(obj, "spec");
            for dir in ["ingress", "egress"] {
                if let Some(rules) = spec.get_mut(dir).and_then(Value::as_array_mut) {
                    for r in rules {
                        for p in each_in(r, "ports") {
                            set_default(p, "protocol", json!("TCP"));
                        }
                    }
                }
            }
            if spec
                .get("policyTypes")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                let mut types = vec![json!("Ingress")];
                if spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty())
                {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), Value::Array(types));
            }
        }
        ("rbac.authorization.k8s.io", _, "RoleBinding" | "ClusterRoleBinding") => {
            set_default(
                obj_mut(obj, "roleRef"),
                "apiGroup",
                json!("rbac.authorization.k8s.io"),
            );
            for s in each_in(obj, "subjects") {
                match s.get("kind").and_then(Value::as_str) {
                    Some("User" | "Group") => {
                        set_default(s, "apiGroup", json!("rbac.authorization.k8s.io"))
                    }
                    Some("ServiceAccount") => set_default(s, "apiGroup", json!("")),
                    _ => {}
                }
            }
        }
        ("scheduling.k8s.io", _, "PriorityClass") => {
            let m = obj.as_object_mut().expect("object");
            set_default(m, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("storage.k8s.io", _, "StorageClass") => {
            let m = obj.as_object_mut().expect("object");
            set_default(m, "reclaimPolicy", json!("Delete"));
            set_default(m, "volumeBindingMode", json!("Immediate"));
        }
        ("apiextensions.k8s.io", _, "CustomResourceDefinition") => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "scope", json!("Namespaced"));
            if spec.get("conversion").is_none_or(Value::is_null) {
                spec.insert("conversion".into(), json!({"strategy": "None"}));
            }
            let names = spec.entry("names").or_insert_with(|| json!({}));
            if let Some(n) = names.as_object_mut() {
                let kind = n
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if !kind.is_empty() {
                    set_default(n, "singular", json!(kind.to_lowercase()));
                    set_default(n, "listKind", json!(format!("{kind}List")));
                }
            }
        }
        _ => {}
    }
}

fn obj_mut_value<'a>(v: &'a mut Value, k: &str) -> &'a mut Value {
    obj_mut(v, k);
    v.get_mut(k).expect("just inserted")
}

/// A PodTemplateSpec: defaults its pod spec. `restart_always` is false for Job templates.
fn template(t: &mut Map<String, Value>, restart_always: bool) {
    let spec = t.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    pod_spec(spec, restart_always);
}

/// `SetDefaults_PodSpec` plus the container, probe and volume defaults under it.
fn pod_spec(spec: &mut Value, restart_always: bool) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    set_default(m, "dnsPolicy", json!("ClusterFirst"));
    if restart_always {
        set_default(m, "restartPolicy", json!("Always"));
    }
    if m.get("securityContext").is_none_or(Value::is_null) {
        m.insert("securityContext".into(), json!({}));
    }
    set_default(m, "terminationGracePeriodSeconds", json!(30));
    set_default(m, "schedulerName", json!("default-scheduler"));
    let host_network = m.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for k in ["initContainers", "containers", "ephemeralContainers"] {
        for c in each_in(spec, k) {
            container(c, host_network && k != "ephemeralContainers");
        }
    }
    for v in each_in(spec, "volumes") {
        volume(v);
    }
}

/// `SetDefaults_Container`, ports, probes, env field refs.
fn container(c: &mut Map<String, Value>, host_network: bool) {
    if c.get("imagePullPolicy")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        let policy = if image_tag(image).as_deref() == Some("latest") {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    if c.get("resources").is_none_or(Value::is_null) {
        c.insert("resources".into(), json!({}));
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if host_network {
                if let Some(cp) = p.get("containerPort").cloned() {
                    if p.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0 {
                        p.insert("hostPort".into(), cp);
                    }
                }
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                set_default(h, "path", json!("/"));
                set_default(h, "scheme", json!("HTTP"));
            }
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        for e in env {
            if let Some(fr) = e
                .pointer_mut("/valueFrom/fieldRef")
                .and_then(Value::as_object_mut)
            {
                set_default(fr, "apiVersion", json!("v1"));
            }
        }
    }
}

/// The tag of an image reference as `parsers.ParseImageName` sees it: "latest" when there is
/// neither tag nor digest, None when there is only a digest.
fn image_tag(image: &str) -> Option<String> {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, tag)) => Some(tag.to_string()),
        None if digest.is_some() => None,
        None => Some("latest".into()),
    }
}

fn volume(v: &mut Map<String, Value>) {
    let has_source = v.iter().any(|(k, x)| k != "name" && !x.is_null());
    if !has_source {
        v.insert("emptyDir".into(), json!({}));
    }
    for k in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = v.get_mut(k).and_then(Value::as_object_mut) {
            set_default(src, "defaultMode", json!(420));
        }
    }
    if let Some(hp) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        if hp.get("type").is_none_or(Value::is_null) {
            hp.insert("type".into(), json!(""));
        }
    }
    if let Some(items) = v
        .get_mut("downwardAPI")
        .and_then(|d| d.get_mut("items"))
        .and_then(Value::as_array_mut)
    {
        for i in items {
            if let Some(fr) = i.get_mut("fieldRef").and_then(Value::as_object_mut) {
                set_default(fr, "apiVersion", json!("v1"));
            }
        }
    }
}

/// `SetDefaults_Pod`: requests default to limits, enableServiceLinks true.
fn pod_only(spec: &mut Value) {
    for k in ["initContainers", "containers"] {
        for c in each_in(spec, k) {
            let limits = c
                .get("resources")
                .and_then(|r| r.get("limits"))
                .and_then(Value::as_object)
                .cloned();
            if let Some(limits) = limits {
                let res = c.entry("resources").or_insert_with(|| json!({}));
                if let Some(res) = res.as_object_mut() {
                    let req = res.entry("requests").or_insert_with(|| json!({}));
                    if !req.is_object() {
                        *req = json!({});
                    }
                    if let Some(req) = req.as_object_mut() {
                        for (name, q) in limits {
                            req.entry(name).or_insert(q);
                        }
                    }
                }
            }
        }
    }
    if let Some(m) = spec.as_object_mut() {
        set_default(m, "enableServiceLinks", json!(true));
    }
}

fn service(spec: &mut Map<String, Value>) {
    set_default(spec, "sessionAffinity", json!("None"));
    match spec.get("sessionAffinity").and_then(Value::as_str) {
        Some("None") => {
            spec.remove("sessionAffinityConfig");
        }
        Some("ClientIP") => {
            let has_timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.pointer("/clientIP/timeoutSeconds"))
                .is_some_and(|t| !t.is_null());
            if !has_timeout {
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
        }
        _ => {}
    }
    set_default(spec, "type", json!("ClusterIP"));
    let type_ = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            let unset = match p.get("targetPort") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_i64() == Some(0),
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if unset {
                if let Some(port) = p.get("port").cloned() {
                    p.insert("targetPort".into(), port);
                }
            }
        }
    }
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if type_ == "NodePort" || type_ == "LoadBalancer" || (type_ == "ClusterIP" && has_external_ips)
    {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ["NodePort", "LoadBalancer", "ClusterIP"].contains(&type_.as_str()) {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if type_ == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if type_ != "ExternalName" {
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    }
}

fn secret(obj: &mut Value) {
    let m = obj.as_object_mut().expect("object");
    set_default(m, "type", json!("Opaque"));
    // stringData is write-only: upstream merges it into data (base64) when decoding.
    if let Some(Value::Object(string_data)) = m.remove("stringData") {
        let data = m.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        if let Some(data) = data.as_object_mut() {
            for (k, v) in string_data {
                data.insert(k, json!(base64(v.as_str().unwrap_or("").as_bytes())));
            }
        }
    }
}

fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn pvc(obj: &mut Value) {
    set_default(obj_mut(obj, "spec"), "volumeMode", json!("Filesystem"));
    set_default(obj_mut(obj, "status"), "phase", json!("Pending"));
}

/// `SetDefaults_Job`, plus the create strategy's generated selector and template labels when the
/// object already has a UID and no manual selector.
fn job(obj: &mut Value) {
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let spec = obj_mut(obj, "spec");
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    if spec.get("backoffLimit").is_none_or(Value::is_null) {
        let per_index = spec
            .get("backoffLimitPerIndex")
            .is_some_and(|v| !v.is_null());
        spec.insert(
            "backoffLimit".into(),
            json!(if per_index { i32::MAX } else { 6 }),
        );
    }
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let has_failure_policy = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
    if let Some(rules) = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
        .and_then(Value::as_array_mut)
    {
        for r in rules {
            for c in each_in(r, "onPodConditions") {
                set_default(c, "status", json!("True"));
            }
        }
    }
    set_default(
        spec,
        "podReplacementPolicy",
        json!(if has_failure_policy {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    let no_selector = spec.get("selector").is_none_or(Value::is_null);
    let t = spec.entry("template").or_insert_with(|| json!({}));
    if let Some(t) = t.as_object_mut() {
        if !manual && no_selector && !uid.is_empty() {
            let meta = t.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
                    l.insert("batch.kubernetes.io/job-name".into(), json!(name));
                    l.insert("controller-uid".into(), json!(uid));
                    l.insert("job-name".into(), json!(name));
                }
            }
        }
        template(t, false);
    }
    if !manual && no_selector && !uid.is_empty() {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
    }
    // Job labels default to the template's labels.
    let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
    if let Some(l) = template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
        let meta = obj_mut(obj, "metadata");
        if meta
            .get("labels")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
        {
            meta.insert("labels".into(), l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("nginx").as_deref(), Some("latest"));
        assert_eq!(image_tag("nginx:latest").as_deref(), Some("latest"));
        assert_eq!(image_tag("nginx:1.27").as_deref(), Some("1.27"));
        assert_eq!(image_tag("localhost:5000/nginx").as_deref(), Some("latest"));
        assert_eq!(image_tag("localhost:5000/nginx:1").as_deref(), Some("1"));
        assert_eq!(image_tag("nginx@sha256:abc"), None);
    }

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"hello world"), "aGVsbG8gd29ybGQ=");
    }
}
