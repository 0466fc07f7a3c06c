//! Upstream's most important semantic rules (`pkg/apis/*/validation`), applied to the JSON of an
//! object that already decoded into its type. Messages and field paths follow upstream.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::names::{
    is_config_map_key, is_dns1035_label, is_dns1123_label, is_dns1123_subdomain,
    is_path_segment_name, is_port_name, is_qualified_name, is_valid_label_value,
};
use super::FieldError;

type Errs = Vec<FieldError>;

const IMMUTABLE: &str = "field is immutable";
const NON_NEGATIVE: &str = "must be greater than or equal to 0";
const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const MAX_SECRET_SIZE: usize = 1024 * 1024;
const MAX_ANNOTATIONS_SIZE: usize = 256 * 1024;
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn child(p: &str, c: &str) -> String {
    if p.is_empty() {
        c.to_string()
    } else {
        format!("{p}.{c}")
    }
}
fn index(p: &str, i: usize) -> String {
    format!("{p}[{i}]")
}
fn key(p: &str, k: &str) -> String {
    format!("{p}[{k}]")
}
fn st<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}
fn list<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}
fn present<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.get(k).filter(|x| !x.is_null())
}
fn empty_obj() -> &'static Value {
    static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| json!({}))
}
fn obj_or_empty<'a>(v: &'a Value, k: &str) -> &'a Value {
    present(v, k).unwrap_or(empty_obj())
}

fn non_negative(v: &Value, k: &str, path: &str, errs: &mut Errs) {
    if let Some(n) = v.get(k).and_then(Value::as_i64) {
        if n < 0 {
            errs.push(FieldError::invalid(child(path, k), &json!(n), NON_NEGATIVE));
        }
    }
}

fn one_of(v: &Value, k: &str, path: &str, valid: &[&str], errs: &mut Errs) {
    if let Some(s) = v.get(k).and_then(Value::as_str) {
        if !valid.contains(&s) {
            errs.push(FieldError::not_supported(child(path, k), &json!(s), valid));
        }
    }
}

/// Entry point: ObjectMeta rules for every kind, then the kind's own rules.
pub(crate) fn validate(group: &str, kind: &str, obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    if !kind.ends_with("Review") {
        object_meta(group, kind, obj, errs);
        if let Some(old) = old {
            object_meta_update(obj, old, errs);
        }
    }
    let spec = obj_or_empty(obj, "spec");
    let old_spec = old.map(|o| obj_or_empty(o, "spec"));
    match (group, kind) {
        ("", "Pod") => {
            pod_spec(spec, "spec", PodCtx::Pod, errs);
            if let Some(old_spec) = old_spec {
                pod_update(spec, old_spec, errs);
            }
        }
        ("", "PodTemplate") => pod_template(
            obj_or_empty(obj, "template"),
            "template",
            PodCtx::Template,
            errs,
        ),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            workload(kind, spec, old_spec, errs)
        }
        ("", "ReplicationController") => replication_controller(spec, errs),
        ("batch", "Job") => job(spec, "spec", old_spec, errs),
        ("batch", "CronJob") => cron_job(obj, spec, errs),
        ("", "Service") => service(spec, old_spec, errs),
        ("", "ConfigMap") => config_map(obj, old, errs),
        ("", "Secret") => secret(obj, old, errs),
        ("", "Namespace") => {
            for (i, f) in list(spec, "finalizers").iter().enumerate() {
                for m in finalizer_name(f.as_str().unwrap_or("")) {
                    errs.push(FieldError::invalid(index("spec.finalizers", i), f, &m));
                }
            }
        }
        ("", "PersistentVolumeClaim") => pvc(spec, "spec", old_spec, errs),
        ("", "PersistentVolume") => {
            if list(spec, "accessModes").is_empty() {
                errs.push(FieldError::required("spec.accessModes", ""));
            }
            if spec.pointer("/capacity/storage").is_none() {
                errs.push(FieldError::required("spec.capacity", ""));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            binding(kind, obj, old, errs)
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            for (i, r) in list(obj, "rules").iter().enumerate() {
                if list(r, "verbs").is_empty() {
                    errs.push(FieldError::required(
                        child(&index("rules", i), "verbs"),
                        "verbs must contain at least one value",
                    ));
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj, old, errs),
        ("networking.k8s.io", "Ingress") => ingress(spec, errs),
        ("scheduling.k8s.io", "PriorityClass") => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(v) = obj.get("value").and_then(Value::as_i64) {
                if v > 1_000_000_000 && !name.starts_with("system-") {
                    errs.push(FieldError::forbidden(
                        "value",
                        "maximum allowed value of a user defined priority is 1000000000",
                    ));
                }
                if let Some(o) = old.and_then(|o| o.get("value")) {
                    if o != &json!(v) {
                        errs.push(FieldError::forbidden(
                            "value",
                            "may not be changed in an update.",
                        ));
                    }
                }
            }
            one_of(
                obj,
                "preemptionPolicy",
                "",
                &["Never", "PreemptLowerPriority"],
                errs,
            );
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// ObjectMeta

fn name_validator(group: &str, kind: &str) -> fn(&str) -> Vec<String> {
    match (group, kind) {
        ("", "Namespace") => is_dns1123_label,
        ("", "Service") => is_dns1035_label,
        ("rbac.authorization.k8s.io", _) => is_path_segment_name,
        _ => is_dns1123_subdomain,
    }
}

fn object_meta(group: &str, kind: &str, obj: &Value, errs: &mut Errs) {
    let meta = obj_or_empty(obj, "metadata");
    let check = name_validator(group, kind);
    let name = st(meta, "name");
    let generate = st(meta, "generateName");
    if name.is_empty() && generate.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    }
    if !name.is_empty() {
        for m in check(name) {
            errs.push(FieldError::invalid("metadata.name", &json!(name), &m));
        }
        if (group, kind) == ("batch", "CronJob") && name.len() > 52 {
            errs.push(FieldError::invalid(
                "metadata.name",
                &json!(name),
                "must be no more than 52 characters",
            ));
        }
    }
    if !generate.is_empty() {
        // Prefix mode: a trailing '-' is allowed (upstream masks it before checking).
        let masked = match generate.strip_suffix('-') {
            Some(p) => format!("{p}a"),
            None => generate.to_string(),
        };
        for m in check(&masked) {
            errs.push(FieldError::invalid(
                "metadata.generateName",
                &json!(generate),
                &m,
            ));
        }
    }
    labels(meta.get("labels"), "metadata.labels", errs);
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut size = 0;
        for (k, v) in ann {
            for m in is_qualified_name(&k.to_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", &json!(k), &m));
            }
            size += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if size > MAX_ANNOTATIONS_SIZE {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                MAX_ANNOTATIONS_SIZE,
            ));
        }
    }
    for f in list(meta, "finalizers") {
        for m in finalizer_name(f.as_str().unwrap_or("")) {
            errs.push(FieldError::invalid("metadata.finalizers", f, &m));
        }
    }
}

fn finalizer_name(f: &str) -> Vec<String> {
    let mut msgs = is_qualified_name(f);
    if msgs.is_empty()
        && !f.contains('/')
        && !["kubernetes", "orphan", "foregroundDeletion"].contains(&f)
    {
        msgs.push("name is neither a standard finalizer name nor is it fully qualified".into());
    }
    msgs
}

fn object_meta_update(obj: &Value, old: &Value, errs: &mut Errs) {
    for k in ["name", "namespace"] {
        let new = obj
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let before = old
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !before.is_empty() && new != before {
            errs.push(FieldError::invalid(
                format!("metadata.{k}"),
                &json!(new),
                IMMUTABLE,
            ));
        }
    }
}

/// `ValidateLabels`: keys are qualified names, values label values.
fn labels(map: Option<&Value>, path: &str, errs: &mut Errs) {
    let Some(m) = map.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in m {
        for msg in is_qualified_name(k) {
            errs.push(FieldError::invalid(path, &json!(k), &msg));
        }
        let v = v.as_str().unwrap_or("");
        for msg in is_valid_label_value(v) {
            errs.push(FieldError::invalid(path, &json!(v), &msg));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors

fn label_selector(sel: &Value, path: &str, errs: &mut Errs) {
    labels(sel.get("matchLabels"), &child(path, "matchLabels"), errs);
    for (i, e) in list(sel, "matchExpressions").iter().enumerate() {
        let p = index(&child(path, "matchExpressions"), i);
        let values = list(e, "values");
        match st(e, "operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(FieldError::required(
                        child(&p, "values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(FieldError::forbidden(
                        child(&p, "values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            op => errs.push(FieldError::invalid(
                child(&p, "operator"),
                &json!(op),
                "not a valid selector operator",
            )),
        }
        for m in is_qualified_name(st(e, "key")) {
            errs.push(FieldError::invalid(
                child(&p, "key"),
                &json!(st(e, "key")),
                &m,
            ));
        }
    }
}

fn selector_is_empty(sel: &Value) -> bool {
    sel.get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty)
        && list(sel, "matchExpressions").is_empty()
}

/// Whether a LabelSelector selects a label set.
fn selector_matches(sel: &Value, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        if !ml.iter().all(|(k, v)| get(k) == v.as_str()) {
            return false;
        }
    }
    list(sel, "matchExpressions").iter().all(|e| {
        let k = st(e, "key");
        let values: Vec<&str> = list(e, "values").iter().filter_map(Value::as_str).collect();
        match st(e, "operator") {
            "In" => get(k).is_some_and(|v| values.contains(&v)),
            "NotIn" => get(k).is_none_or(|v| !values.contains(&v)),
            "Exists" => get(k).is_some(),
            "DoesNotExist" => get(k).is_none(),
            _ => false,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates

#[derive(Clone, Copy, PartialEq, Eq)]
enum PodCtx {
    Pod,
    /// A template whose restartPolicy must be Always (Deployment, ReplicaSet, ...).
    Template,
    /// A Job template: restartPolicy is checked by the Job rules.
    JobTemplate,
}

fn pod_template(template: &Value, path: &str, ctx: PodCtx, errs: &mut Errs) {
    labels(
        template.pointer("/metadata/labels"),
        &child(path, "metadata.labels"),
        errs,
    );
    let spec = obj_or_empty(template, "spec");
    let spec_path = child(path, "spec");
    pod_spec(spec, &spec_path, ctx, errs);
    if ctx == PodCtx::Template {
        if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
            if rp != "Always" {
                errs.push(FieldError::not_supported(
                    child(&spec_path, "restartPolicy"),
                    &json!(rp),
                    &["Always"],
                ));
            }
        }
    }
}

fn pod_spec(spec: &Value, path: &str, ctx: PodCtx, errs: &mut Errs) {
    // Volumes.
    let mut volumes: HashSet<&str> = HashSet::new();
    for (i, v) in list(spec, "volumes").iter().enumerate() {
        let p = index(&child(path, "volumes"), i);
        let name = st(v, "name");
        if name.is_empty() {
            errs.push(FieldError::required(child(&p, "name"), ""));
        } else {
            for m in is_dns1123_label(name) {
                errs.push(FieldError::invalid(child(&p, "name"), &json!(name), &m));
            }
            if !volumes.insert(name) {
                errs.push(FieldError::duplicate(child(&p, "name"), &json!(name)));
            }
        }
        let sources = v
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, x)| k.as_str() != "name" && !x.is_null())
                    .count()
            })
            .unwrap_or(0);
        if sources == 0 {
            errs.push(FieldError::required(&p, "must specify a volume type"));
        } else if sources > 1 {
            errs.push(FieldError::forbidden(
                &p,
                "may not specify more than 1 volume type",
            ));
        }
    }

    // Containers.
    let containers = list(spec, "containers");
    if containers.is_empty() {
        errs.push(FieldError::required(child(path, "containers"), ""));
    }
    let mut names: HashSet<String> = HashSet::new();
    for (i, c) in list(spec, "initContainers").iter().enumerate() {
        let p = index(&child(path, "initContainers"), i);
        container(c, &p, &volumes, &mut names, ctx, errs);
        if let Some(rp) = c.get("restartPolicy").and_then(Value::as_str) {
            if rp != "Always" {
                errs.push(FieldError::not_supported(
                    child(&p, "restartPolicy"),
                    &json!(rp),
                    &["Always"],
                ));
            }
        }
    }
    for (i, c) in containers.iter().enumerate() {
        let p = index(&child(path, "containers"), i);
        container(c, &p, &volumes, &mut names, ctx, errs);
        if present(c, "restartPolicy").is_some() {
            errs.push(FieldError::forbidden(
                child(&p, "restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }

    match spec.get("restartPolicy").and_then(Value::as_str) {
        None | Some("") if ctx == PodCtx::Pod => {
            errs.push(FieldError::required(child(path, "restartPolicy"), ""));
        }
        Some(rp) if !rp.is_empty() && !["Always", "OnFailure", "Never"].contains(&rp) => {
            errs.push(FieldError::not_supported(
                child(path, "restartPolicy"),
                &json!(rp),
                &["Always", "Never", "OnFailure"],
            ));
        }
        _ => {}
    }
    one_of(
        spec,
        "dnsPolicy",
        path,
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        errs,
    );
    if let Some(n) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if !(1..=i64::from(i32::MAX)).contains(&n) {
            errs.push(FieldError::invalid(
                child(path, "activeDeadlineSeconds"),
                &json!(n),
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    for k in ["hostname", "subdomain"] {
        let v = st(spec, k);
        if !v.is_empty() {
            for m in is_dns1123_label(v) {
                errs.push(FieldError::invalid(child(path, k), &json!(v), &m));
            }
        }
    }
    for k in ["serviceAccountName", "priorityClassName"] {
        let v = st(spec, k);
        if !v.is_empty() {
            for m in is_dns1123_subdomain(v) {
                errs.push(FieldError::invalid(child(path, k), &json!(v), &m));
            }
        }
    }
    labels(spec.get("nodeSelector"), &child(path, "nodeSelector"), errs);
}

fn container(
    c: &Value,
    path: &str,
    volumes: &HashSet<&str>,
    names: &mut HashSet<String>,
    ctx: PodCtx,
    errs: &mut Errs,
) {
    let name = st(c, "name");
    if name.is_empty() {
        errs.push(FieldError::required(child(path, "name"), ""));
    } else {
        for m in is_dns1123_label(name) {
            errs.push(FieldError::invalid(child(path, "name"), &json!(name), &m));
        }
        if !names.insert(name.to_string()) {
            errs.push(FieldError::duplicate(child(path, "name"), &json!(name)));
        }
    }
    let image = st(c, "image");
    if image.is_empty() {
        errs.push(FieldError::required(child(path, "image"), ""));
    } else if ctx == PodCtx::Pod && image.trim() != image {
        errs.push(FieldError::invalid(
            child(path, "image"),
            &json!(image),
            "must not have leading or trailing whitespace",
        ));
    }
    one_of(
        c,
        "imagePullPolicy",
        path,
        &["Always", "IfNotPresent", "Never"],
        errs,
    );
    one_of(
        c,
        "terminationMessagePolicy",
        path,
        &["FallbackToLogsOnError", "File"],
        errs,
    );

    let mut port_names: HashSet<&str> = HashSet::new();
    for (i, port) in list(c, "ports").iter().enumerate() {
        let p = index(&child(path, "ports"), i);
        let cp = port
            .get("containerPort")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if !(1..=65535).contains(&cp) {
            errs.push(FieldError::invalid(
                child(&p, "containerPort"),
                &json!(cp),
                PORT_RANGE,
            ));
        }
        if let Some(hp) = port.get("hostPort").and_then(Value::as_i64) {
            if hp != 0 && !(1..=65535).contains(&hp) {
                errs.push(FieldError::invalid(
                    child(&p, "hostPort"),
                    &json!(hp),
                    PORT_RANGE,
                ));
            }
        }
        one_of(port, "protocol", &p, &["SCTP", "TCP", "UDP"], errs);
        let pn = st(port, "name");
        if !pn.is_empty() {
            for m in is_port_name(pn) {
                errs.push(FieldError::invalid(child(&p, "name"), &json!(pn), &m));
            }
            if !port_names.insert(pn) {
                errs.push(FieldError::duplicate(child(&p, "name"), &json!(pn)));
            }
        }
    }
    for (i, e) in list(c, "env").iter().enumerate() {
        let p = index(&child(path, "env"), i);
        let n = st(e, "name");
        if n.is_empty() {
            errs.push(FieldError::required(child(&p, "name"), ""));
        } else if n.contains('=') || !n.chars().all(|ch| (' '..='~').contains(&ch)) {
            errs.push(FieldError::invalid(
                child(&p, "name"),
                &json!(n),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
    }
    let mut mount_paths: HashSet<&str> = HashSet::new();
    for (i, m) in list(c, "volumeMounts").iter().enumerate() {
        let p = index(&child(path, "volumeMounts"), i);
        let vn = st(m, "name");
        if vn.is_empty() {
            errs.push(FieldError::required(child(&p, "name"), ""));
        } else if !volumes.contains(vn) {
            errs.push(FieldError::not_found(child(&p, "name"), &json!(vn)));
        }
        let mp = st(m, "mountPath");
        if mp.is_empty() {
            errs.push(FieldError::required(child(&p, "mountPath"), ""));
        } else if !mount_paths.insert(mp) {
            errs.push(FieldError::invalid(
                child(&p, "mountPath"),
                &json!(mp),
                "must be unique",
            ));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(pr) = present(c, probe) {
            let p = child(path, probe);
            for k in [
                "initialDelaySeconds",
                "timeoutSeconds",
                "periodSeconds",
                "successThreshold",
                "failureThreshold",
            ] {
                non_negative(pr, k, &p, errs);
            }
        }
    }
}

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// `ValidatePodUpdate`: only images, activeDeadlineSeconds (set or lowered), toleration additions,
/// terminationGracePeriodSeconds and scheduling-gate removal may change. Setting `nodeName` on a
/// pod that has none is tolerated (what a Binding does).
fn pod_update(new: &Value, old: &Value, errs: &mut Errs) {
    let mut n = new.clone();
    for k in ["containers", "initContainers"] {
        if let (Some(nc), Some(oc)) = (
            n.get_mut(k).and_then(Value::as_array_mut),
            old.get(k).and_then(Value::as_array),
        ) {
            for (a, b) in nc.iter_mut().zip(oc) {
                if let (Some(a), Some(img)) = (a.as_object_mut(), b.get("image")) {
                    a.insert("image".into(), img.clone());
                }
            }
        }
    }
    let Some(m) = n.as_object_mut() else { return };
    let copy = |m: &mut Map<String, Value>, k: &str| match old.get(k) {
        Some(v) => {
            m.insert(k.into(), v.clone());
        }
        None => {
            m.remove(k);
        }
    };
    let new_ads = new.get("activeDeadlineSeconds").and_then(Value::as_i64);
    let old_ads = old.get("activeDeadlineSeconds").and_then(Value::as_i64);
    match (old_ads, new_ads) {
        (Some(o), Some(nv)) if nv > o => errs.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            &json!(nv),
            "must be less than or equal to previous value",
        )),
        (Some(_), None) => errs.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            &Value::Null,
            "must not update from a positive integer to nil value",
        )),
        _ => {}
    }
    copy(m, "activeDeadlineSeconds");
    copy(m, "terminationGracePeriodSeconds");
    let old_tol = list(old, "tolerations");
    if old_tol.iter().all(|t| list(new, "tolerations").contains(t)) {
        copy(m, "tolerations");
    }
    let new_gates = list(new, "schedulingGates");
    if new_gates
        .iter()
        .all(|g| list(old, "schedulingGates").contains(g))
    {
        copy(m, "schedulingGates");
    }
    if st(old, "nodeName").is_empty() {
        copy(m, "nodeName");
    }
    if &n != old {
        errs.push(FieldError::forbidden("spec", POD_UPDATE_MSG));
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// An IntOrString that must be a non-negative int or a percent ("25%"); returns whether it is zero.
fn int_or_percent(v: Option<&Value>, path: &str, max_100: bool, errs: &mut Errs) -> bool {
    match v {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            if n < 0 {
                errs.push(FieldError::invalid(path, &json!(n), NON_NEGATIVE));
            }
            n == 0
        }
        Some(Value::String(s)) => {
            let digits = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            match digits.and_then(|d| d.parse::<u64>().ok()) {
                None => {
                    errs.push(FieldError::invalid(
                        path,
                        &json!(s),
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    ));
                    false
                }
                Some(p) => {
                    if max_100 && p > 100 {
                        errs.push(FieldError::invalid(
                            path,
                            &json!(s),
                            "must not be greater than 100%",
                        ));
                    }
                    p == 0
                }
            }
        }
        _ => false,
    }
}

fn selector_and_template(kind: &str, spec: &Value, errs: &mut Errs) {
    let template = obj_or_empty(spec, "template");
    match present(spec, "selector") {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            label_selector(sel, "spec.selector", errs);
            if selector_is_empty(sel) {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    sel,
                    &format!("empty selector is invalid for {}", kind.to_lowercase()),
                ));
            } else {
                let tl = template.pointer("/metadata/labels").unwrap_or(empty_obj());
                if !selector_matches(sel, tl) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        tl,
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
    }
    pod_template(template, "spec.template", PodCtx::Template, errs);
}

fn workload(kind: &str, spec: &Value, old_spec: Option<&Value>, errs: &mut Errs) {
    non_negative(spec, "replicas", "spec", errs);
    non_negative(spec, "minReadySeconds", "spec", errs);
    non_negative(spec, "revisionHistoryLimit", "spec", errs);
    selector_and_template(kind, spec, errs);
    match kind {
        "Deployment" => {
            let strategy = obj_or_empty(spec, "strategy");
            one_of(
                strategy,
                "type",
                "spec.strategy",
                &["Recreate", "RollingUpdate"],
                errs,
            );
            let ru = present(strategy, "rollingUpdate");
            if st(strategy, "type") == "Recreate" && ru.is_some() {
                errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
            if let Some(ru) = ru {
                rolling_update(ru, "spec.strategy.rollingUpdate", errs);
            }
            if let Some(pds) = spec.get("progressDeadlineSeconds").and_then(Value::as_i64) {
                let mrs = spec
                    .get("minReadySeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if pds <= mrs {
                    errs.push(FieldError::invalid(
                        "spec.progressDeadlineSeconds",
                        &json!(pds),
                        "must be greater than minReadySeconds",
                    ));
                }
                non_negative(spec, "progressDeadlineSeconds", "spec", errs);
            }
        }
        "DaemonSet" => {
            let strategy = obj_or_empty(spec, "updateStrategy");
            one_of(
                strategy,
                "type",
                "spec.updateStrategy",
                &["OnDelete", "RollingUpdate"],
                errs,
            );
            if let Some(ru) = present(strategy, "rollingUpdate") {
                rolling_update(ru, "spec.updateStrategy.rollingUpdate", errs);
            }
        }
        "StatefulSet" => {
            one_of(
                spec,
                "podManagementPolicy",
                "spec",
                &["OrderedReady", "Parallel"],
                errs,
            );
            let strategy = obj_or_empty(spec, "updateStrategy");
            one_of(
                strategy,
                "type",
                "spec.updateStrategy",
                &["OnDelete", "RollingUpdate"],
                errs,
            );
            if let Some(ru) = present(strategy, "rollingUpdate") {
                non_negative(ru, "partition", "spec.updateStrategy.rollingUpdate", errs);
            }
            let policy = obj_or_empty(spec, "persistentVolumeClaimRetentionPolicy");
            for k in ["whenDeleted", "whenScaled"] {
                one_of(
                    policy,
                    k,
                    "spec.persistentVolumeClaimRetentionPolicy",
                    &["Delete", "Retain"],
                    errs,
                );
            }
            for (i, t) in list(spec, "volumeClaimTemplates").iter().enumerate() {
                let p = index("spec.volumeClaimTemplates", i);
                pvc(obj_or_empty(t, "spec"), &child(&p, "spec"), None, errs);
            }
        }
        _ => {}
    }
    if let Some(old_spec) = old_spec {
        if spec.get("selector") != old_spec.get("selector") {
            errs.push(FieldError::invalid(
                "spec.selector",
                spec.get("selector").unwrap_or(&Value::Null),
                IMMUTABLE,
            ));
        }
        if kind == "StatefulSet" {
            let strip = |s: &Value| {
                let mut s = s.clone();
                if let Some(m) = s.as_object_mut() {
                    for k in [
                        "replicas",
                        "ordinals",
                        "template",
                        "updateStrategy",
                        "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds",
                    ] {
                        m.remove(k);
                    }
                }
                s
            };
            if strip(spec) != strip(old_spec) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
    }
}

fn rolling_update(ru: &Value, path: &str, errs: &mut Errs) {
    let unavailable_zero = int_or_percent(
        ru.get("maxUnavailable"),
        &child(path, "maxUnavailable"),
        true,
        errs,
    );
    let surge_zero = int_or_percent(ru.get("maxSurge"), &child(path, "maxSurge"), false, errs);
    let surge_unset = ru.get("maxSurge").is_none_or(Value::is_null);
    if unavailable_zero && (surge_zero || surge_unset) && present(ru, "maxUnavailable").is_some() {
        errs.push(FieldError::invalid(
            child(path, "maxUnavailable"),
            ru.get("maxUnavailable").unwrap_or(&Value::Null),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

fn replication_controller(spec: &Value, errs: &mut Errs) {
    non_negative(spec, "replicas", "spec", errs);
    non_negative(spec, "minReadySeconds", "spec", errs);
    let selector = spec.get("selector").and_then(Value::as_object);
    match selector {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(s) if s.is_empty() => errs.push(FieldError::required("spec.selector", "")),
        Some(_) => labels(spec.get("selector"), "spec.selector", errs),
    }
    match present(spec, "template") {
        None => errs.push(FieldError::required("spec.template", "")),
        Some(t) => {
            if let Some(sel) = selector.filter(|s| !s.is_empty()) {
                let tl = t.pointer("/metadata/labels").unwrap_or(empty_obj());
                if !sel.iter().all(|(k, v)| tl.get(k) == Some(v)) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        tl,
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            pod_template(t, "spec.template", PodCtx::Template, errs);
        }
    }
}

fn job(spec: &Value, path: &str, old_spec: Option<&Value>, errs: &mut Errs) {
    for k in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(spec, k, path, errs);
    }
    let template = obj_or_empty(spec, "template");
    let template_path = child(path, "template");
    match present(spec, "selector") {
        Some(sel) => {
            label_selector(sel, &child(path, "selector"), errs);
            let tl = template.pointer("/metadata/labels").unwrap_or(empty_obj());
            if !selector_matches(sel, tl) {
                errs.push(FieldError::invalid(
                    child(&template_path, "metadata.labels"),
                    tl,
                    "`selector` does not match template `labels`",
                ));
            }
        }
        None if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) => {
            errs.push(FieldError::required(child(path, "selector"), ""));
        }
        None => {}
    }
    pod_template(template, &template_path, PodCtx::JobTemplate, errs);
    let rp_path = child(&template_path, "spec.restartPolicy");
    match template
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("")
    {
        "" => errs.push(FieldError::required(
            rp_path,
            "valid values: \"OnFailure\", \"Never\"",
        )),
        "OnFailure" | "Never" => {}
        rp => errs.push(FieldError::not_supported(
            rp_path,
            &json!(rp),
            &["OnFailure", "Never"],
        )),
    }
    one_of(
        spec,
        "completionMode",
        path,
        &["NonIndexed", "Indexed"],
        errs,
    );
    if st(spec, "completionMode") == "Indexed" && present(spec, "completions").is_none() {
        errs.push(FieldError::required(
            child(path, "completions"),
            "when completion mode is Indexed",
        ));
    }
    one_of(
        spec,
        "podReplacementPolicy",
        path,
        &["TerminatingOrFailed", "Failed"],
        errs,
    );

    if let Some(old) = old_spec {
        if spec.get("selector") != old.get("selector") {
            errs.push(FieldError::invalid(
                child(path, "selector"),
                spec.get("selector").unwrap_or(&Value::Null),
                IMMUTABLE,
            ));
        }
        let suspended = old.get("suspend").and_then(Value::as_bool) == Some(true);
        if !suspended && spec.get("template") != old.get("template") {
            errs.push(FieldError::invalid(
                template_path.clone(),
                template,
                IMMUTABLE,
            ));
        }
        if spec.get("completionMode") != old.get("completionMode") {
            errs.push(FieldError::invalid(
                child(path, "completionMode"),
                spec.get("completionMode").unwrap_or(&Value::Null),
                IMMUTABLE,
            ));
        }
        let elastic = st(spec, "completionMode") == "Indexed"
            && spec.get("completions") == spec.get("parallelism");
        if spec.get("completions") != old.get("completions") && !elastic {
            errs.push(FieldError::invalid(
                child(path, "completions"),
                spec.get("completions").unwrap_or(&Value::Null),
                IMMUTABLE,
            ));
        }
    }
}

fn cron_job(obj: &Value, spec: &Value, errs: &mut Errs) {
    let _ = obj;
    let schedule = st(spec, "schedule");
    if schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else if schedule.contains("TZ") {
        errs.push(FieldError::invalid(
            "spec.schedule",
            &json!(schedule),
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ));
    } else if let Some(msg) = cron_schedule_error(schedule) {
        errs.push(FieldError::invalid("spec.schedule", &json!(schedule), &msg));
    }
    if let Some(tz) = spec.get("timeZone").and_then(Value::as_str) {
        if tz.is_empty() || tz.contains(' ') || tz.starts_with('/') || tz.contains("..") {
            errs.push(FieldError::invalid(
                "spec.timeZone",
                &json!(tz),
                "unknown time zone",
            ));
        }
    }
    one_of(
        spec,
        "concurrencyPolicy",
        "spec",
        &["Allow", "Forbid", "Replace"],
        errs,
    );
    for k in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(spec, k, "spec", errs);
    }
    let job_spec = spec.pointer("/jobTemplate/spec").unwrap_or(empty_obj());
    labels(
        spec.pointer("/jobTemplate/metadata/labels"),
        "spec.jobTemplate.metadata.labels",
        errs,
    );
    job(job_spec, "spec.jobTemplate.spec", None, errs);
}

/// `cron.ParseStandard`'s field-count and syntax checks.
fn cron_schedule_error(schedule: &str) -> Option<String> {
    let s = schedule.trim();
    if let Some(rest) = s.strip_prefix('@') {
        let ok = [
            "yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly",
        ]
        .contains(&rest)
            || rest
                .strip_prefix("every ")
                .is_some_and(|d| !d.trim().is_empty());
        return (!ok).then(|| format!("unrecognized descriptor: {s}"));
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Some(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        ));
    }
    for f in fields {
        if !f
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "*/,-?".contains(c))
        {
            return Some(format!(
                "failed to parse int from {f}: strconv.Atoi: parsing {f:?}: invalid syntax"
            ));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Services, config and storage

fn service(spec: &Value, old_spec: Option<&Value>, errs: &mut Errs) {
    let type_ = st(spec, "type");
    one_of(
        spec,
        "type",
        "spec",
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        errs,
    );
    let cluster_ip = st(spec, "clusterIP");
    let headless = cluster_ip == "None";
    if type_ == "ExternalName" {
        let en = st(spec, "externalName");
        if en.is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        } else {
            for m in is_dns1123_subdomain(en.strip_suffix('.').unwrap_or(en)) {
                errs.push(FieldError::invalid("spec.externalName", &json!(en), &m));
            }
        }
    }
    let ports = list(spec, "ports");
    if ports.is_empty() && !headless && type_ != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names: HashSet<&str> = HashSet::new();
    let mut keys: HashSet<(i64, &str)> = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = index("spec.ports", i);
        let name = st(p, "name");
        if name.is_empty() {
            if ports.len() > 1 {
                errs.push(FieldError::required(child(&path, "name"), ""));
            }
        } else {
            for m in is_dns1123_label(name) {
                errs.push(FieldError::invalid(child(&path, "name"), &json!(name), &m));
            }
            if !names.insert(name) {
                errs.push(FieldError::duplicate(child(&path, "name"), &json!(name)));
            }
        }
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid(
                child(&path, "port"),
                &json!(port),
                PORT_RANGE,
            ));
        }
        one_of(p, "protocol", &path, &["SCTP", "TCP", "UDP"], errs);
        let proto = match st(p, "protocol") {
            "" => "TCP",
            x => x,
        };
        if !keys.insert((port, proto)) {
            errs.push(FieldError::duplicate(
                &path,
                &json!({"port": port, "protocol": proto}),
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    errs.push(FieldError::invalid(
                        child(&path, "targetPort"),
                        &json!(n),
                        PORT_RANGE,
                    ));
                }
            }
            Some(Value::String(s)) => {
                for m in is_port_name(s) {
                    errs.push(FieldError::invalid(
                        child(&path, "targetPort"),
                        &json!(s),
                        &m,
                    ));
                }
            }
            _ => {}
        }
        if let Some(np) = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
        {
            if type_ == "ClusterIP" || type_ == "ExternalName" {
                errs.push(FieldError::forbidden(
                    child(&path, "nodePort"),
                    &format!("may not be used when `type` is '{type_}'"),
                ));
            } else if !(1..=65535).contains(&np) {
                errs.push(FieldError::invalid(
                    child(&path, "nodePort"),
                    &json!(np),
                    PORT_RANGE,
                ));
            }
        }
    }
    one_of(spec, "sessionAffinity", "spec", &["ClientIP", "None"], errs);
    one_of(
        spec,
        "internalTrafficPolicy",
        "spec",
        &["Cluster", "Local"],
        errs,
    );
    one_of(
        spec,
        "externalTrafficPolicy",
        "spec",
        &["Cluster", "Local"],
        errs,
    );
    labels(spec.get("selector"), "spec.selector", errs);
    for (i, ip) in list(spec, "clusterIPs").iter().enumerate() {
        let ip = ip.as_str().unwrap_or("");
        if ip != "None" && !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                index("spec.clusterIPs", i),
                &json!(ip),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<IpAddr>().is_err() {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            &json!(cluster_ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    for (i, ip) in list(spec, "externalIPs").iter().enumerate() {
        let ip = ip.as_str().unwrap_or("");
        if ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                index("spec.externalIPs", i),
                &json!(ip),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if let Some(old) = old_spec {
        let old_ip = st(old, "clusterIP");
        if type_ != "ExternalName"
            && st(old, "type") != "ExternalName"
            && !old_ip.is_empty()
            && !cluster_ip.is_empty()
            && cluster_ip != old_ip
        {
            errs.push(FieldError::invalid(
                "spec.clusterIP",
                &json!(cluster_ip),
                IMMUTABLE,
            ));
        }
    }
}

/// Approximate decoded size of a base64 string.
fn b64_len(s: &str) -> usize {
    let trimmed = s.trim_end_matches('=');
    trimmed.len() * 3 / 4
}

fn data_keys(obj: &Value, bag: &str, other: &str, base64: bool, errs: &mut Errs) -> usize {
    let mut total = 0;
    if let Some(m) = obj.get(bag).and_then(Value::as_object) {
        for (k, v) in m {
            for msg in is_config_map_key(k) {
                errs.push(FieldError::invalid(key(bag, k), &json!(k), &msg));
            }
            if obj.get(other).and_then(|o| o.get(k)).is_some() {
                errs.push(FieldError::invalid(
                    key(bag, k),
                    &json!(k),
                    &format!("duplicate of key present in {other}"),
                ));
            }
            let s = v.as_str().unwrap_or("");
            total += if base64 { b64_len(s) } else { s.len() };
        }
    }
    total
}

fn immutable_data(obj: &Value, old: Option<&Value>, bags: &[&str], errs: &mut Errs) {
    let Some(old) = old else { return };
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    const MSG: &str = "field is immutable when `immutable` is set";
    if obj.get("immutable").and_then(Value::as_bool) != Some(true) {
        errs.push(FieldError::forbidden("immutable", MSG));
    }
    for bag in bags {
        if obj.get(*bag) != old.get(*bag) {
            errs.push(FieldError::forbidden(*bag, MSG));
        }
    }
}

fn config_map(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let size = data_keys(obj, "data", "binaryData", false, errs)
        + data_keys(obj, "binaryData", "data", true, errs);
    if size > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("", MAX_SECRET_SIZE));
    }
    immutable_data(obj, old, &["data", "binaryData"], errs);
}

fn secret(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let size = data_keys(obj, "data", "", true, errs);
    if size > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("data", MAX_SECRET_SIZE));
    }
    let has = |k: &str| obj.get("data").and_then(|d| d.get(k)).is_some();
    let need = |k: &str, errs: &mut Errs| {
        if !has(k) {
            errs.push(FieldError::required(key("data", k), ""));
        }
    };
    match st(obj, "type") {
        "kubernetes.io/service-account-token" => {
            let ann = obj.pointer("/metadata/annotations/kubernetes.io~1service-account.name");
            if ann.and_then(Value::as_str).unwrap_or("").is_empty() {
                errs.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" => need(".dockercfg", errs),
        "kubernetes.io/dockerconfigjson" => need(".dockerconfigjson", errs),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            need("username", errs);
            need("password", errs);
        }
        "kubernetes.io/ssh-auth" => need("ssh-privatekey", errs),
        "kubernetes.io/tls" => {
            need("tls.crt", errs);
            need("tls.key", errs);
        }
        _ => {}
    }
    if let Some(old) = old {
        if st(obj, "type") != st(old, "type") {
            errs.push(FieldError::invalid(
                "type",
                &json!(st(obj, "type")),
                IMMUTABLE,
            ));
        }
    }
    immutable_data(obj, old, &["data"], errs);
}

fn pvc(spec: &Value, path: &str, old_spec: Option<&Value>, errs: &mut Errs) {
    let modes = list(spec, "accessModes");
    if modes.is_empty() && present(spec, "dataSourceRef").is_none() {
        errs.push(FieldError::required(
            child(path, "accessModes"),
            "at least 1 access mode is required",
        ));
    }
    for m in modes {
        let m = m.as_str().unwrap_or("");
        if ![
            "ReadOnlyMany",
            "ReadWriteMany",
            "ReadWriteOnce",
            "ReadWriteOncePod",
        ]
        .contains(&m)
        {
            errs.push(FieldError::not_supported(
                child(path, "accessModes"),
                &json!(m),
                &[
                    "ReadOnlyMany",
                    "ReadWriteMany",
                    "ReadWriteOnce",
                    "ReadWriteOncePod",
                ],
            ));
        }
    }
    if spec.pointer("/resources/requests/storage").is_none() {
        errs.push(FieldError::required(
            key(&child(path, "resources"), "storage"),
            "",
        ));
    }
    one_of(spec, "volumeMode", path, &["Block", "Filesystem"], errs);
    if let Some(old) = old_spec {
        let strip = |s: &Value, keep_volume: bool| {
            let mut s = s.clone();
            if let Some(m) = s.as_object_mut() {
                m.remove("resources");
                m.remove("volumeAttributesClassName");
                if !keep_volume {
                    m.remove("volumeName");
                }
            }
            s
        };
        let bound = !st(old, "volumeName").is_empty();
        if strip(spec, bound) != strip(old, bound) {
            errs.push(FieldError::forbidden(
                path,
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        }
    }
}

fn binding(kind: &str, obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let role_ref = obj_or_empty(obj, "roleRef");
    let rk = st(role_ref, "kind");
    let valid_kinds: &[&str] = if kind == "RoleBinding" {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if rk.is_empty() {
        errs.push(FieldError::required("roleRef.kind", ""));
    } else if !valid_kinds.contains(&rk) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &json!(rk),
            valid_kinds,
        ));
    }
    let group = st(role_ref, "apiGroup");
    if group != RBAC_GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &json!(group),
            &[RBAC_GROUP],
        ));
    }
    let rn = st(role_ref, "name");
    if rn.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    } else {
        for m in is_path_segment_name(rn) {
            errs.push(FieldError::invalid("roleRef.name", &json!(rn), &m));
        }
    }
    for (i, s) in list(obj, "subjects").iter().enumerate() {
        let p = index("subjects", i);
        let name = st(s, "name");
        if name.is_empty() {
            errs.push(FieldError::required(child(&p, "name"), ""));
        }
        match st(s, "kind") {
            "ServiceAccount" => {
                if kind == "ClusterRoleBinding" && st(s, "namespace").is_empty() {
                    errs.push(FieldError::required(child(&p, "namespace"), ""));
                }
            }
            "User" | "Group" => {}
            k => errs.push(FieldError::not_supported(
                child(&p, "kind"),
                &json!(k),
                &["Group", "ServiceAccount", "User"],
            )),
        }
    }
    if let Some(old) = old {
        if obj.get("roleRef") != old.get("roleRef") {
            errs.push(FieldError::invalid(
                "roleRef",
                role_ref,
                "cannot change roleRef",
            ));
        }
    }
}

fn crd(obj: &Value, old: Option<&Value>, errs: &mut Errs) {
    let spec = obj_or_empty(obj, "spec");
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let group = st(spec, "group");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !name.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else {
        for m in is_dns1123_subdomain(group) {
            errs.push(FieldError::invalid("spec.group", &json!(group), &m));
        }
        if !group.contains('.') {
            errs.push(FieldError::invalid(
                "spec.group",
                &json!(group),
                "should be a domain with at least one dot",
            ));
        }
    }
    one_of(spec, "scope", "spec", &["Cluster", "Namespaced"], errs);
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural", ""));
    }
    if spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        errs.push(FieldError::required("spec.names.kind", ""));
    }
    let versions = list(spec, "versions");
    if versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count()
        != 1
    {
        errs.push(FieldError::invalid(
            "spec.versions",
            spec.get("versions").unwrap_or(&Value::Null),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut seen = HashSet::new();
    for (i, v) in versions.iter().enumerate() {
        let p = index("spec.versions", i);
        let vn = st(v, "name");
        for m in is_dns1035_label(vn) {
            errs.push(FieldError::invalid(child(&p, "name"), &json!(vn), &m));
        }
        if !seen.insert(vn) {
            errs.push(FieldError::duplicate(child(&p, "name"), &json!(vn)));
        }
    }
    if let Some(old) = old {
        let old_spec = obj_or_empty(old, "spec");
        for k in ["group", "scope"] {
            if spec.get(k) != old_spec.get(k) {
                errs.push(FieldError::invalid(
                    format!("spec.{k}"),
                    spec.get(k).unwrap_or(&Value::Null),
                    IMMUTABLE,
                ));
            }
        }
    }
}

fn ingress(spec: &Value, errs: &mut Errs) {
    for (i, r) in list(spec, "rules").iter().enumerate() {
        let rp = index("spec.rules", i);
        let host = st(r, "host");
        if !host.is_empty() {
            for m in is_dns1123_subdomain(host.strip_prefix("*.").unwrap_or(host)) {
                errs.push(FieldError::invalid(child(&rp, "host"), &json!(host), &m));
            }
        }
        let Some(http) = present(r, "http") else {
            continue;
        };
        for (j, p) in list(http, "paths").iter().enumerate() {
            let pp = index(&child(&rp, "http.paths"), j);
            match st(p, "pathType") {
                "" => errs.push(FieldError::required(
                    child(&pp, "pathType"),
                    "pathType must be specified",
                )),
                "Exact" | "Prefix" | "ImplementationSpecific" => {}
                t => errs.push(FieldError::not_supported(
                    child(&pp, "pathType"),
                    &json!(t),
                    &["Exact", "ImplementationSpecific", "Prefix"],
                )),
            }
            let path = st(p, "path");
            if matches!(st(p, "pathType"), "Exact" | "Prefix") && !path.starts_with('/') {
                errs.push(FieldError::invalid(
                    child(&pp, "path"),
                    &json!(path),
                    "must be an absolute path",
                ));
            }
        }
    }
}
