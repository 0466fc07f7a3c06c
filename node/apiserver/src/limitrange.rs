//! Upstream's LimitRanger admission: pods get the namespace's LimitRange defaults
//! (`default` → limits, `defaultRequest` → requests, type Container) and must respect its
//! min/max/maxLimitRequestRatio per Container and per Pod; claims must respect the
//! PersistentVolumeClaim storage min/max.

use crate::meta;
use crate::state::Api;
use crate::status::ApiError;
use k3rs_resources::quantity::Quantity;
use k3rs_resources::quota::{parse_list, pod_resources, ResourceList};
use serde_json::{json, Map, Value};

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// Pod and PersistentVolumeClaim creates; LimitRange creates get upstream's item defaults.
pub async fn on_create(
    api: &Api,
    plural: &str,
    namespace: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    match plural {
        "limitranges" => {
            default_limit_range(obj);
            Ok(())
        }
        "pods" | "persistentvolumeclaims" => {
            let ranges = limit_ranges(api, namespace).await?;
            if plural == "pods" {
                for lr in &ranges {
                    default_pod(lr, obj);
                }
            }
            for lr in &ranges {
                let result = if plural == "pods" {
                    validate_pod(lr, obj)
                } else {
                    validate_claim(lr, obj)
                };
                if let Err(message) = result {
                    let name = meta::name(obj).unwrap_or_default();
                    return Err(ApiError::forbidden(format!(
                        "{plural} \"{name}\" is forbidden: {message}"
                    )));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn limit_ranges(api: &Api, namespace: &str) -> Result<Vec<Value>, ApiError> {
    let list = api
        .store
        .list(
            &format!("/registry/core/limitranges/{namespace}/"),
            None,
            None,
            None,
        )
        .await?;
    Ok(list
        .items
        .iter()
        .map(|kv| {
            let mut lr = meta::decode_from_store(&kv.value, kv.mod_revision);
            default_limit_range(&mut lr);
            lr
        })
        .collect())
}

fn items(lr: &Value) -> impl Iterator<Item = &Value> {
    lr.pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Upstream's `SetDefaults_LimitRangeItem`: for Containers, `default` falls back to `max`, and
/// `defaultRequest` to `default`, then to `min`.
pub fn default_limit_range(lr: &mut Value) {
    let Some(limits) = lr.pointer_mut("/spec/limits").and_then(Value::as_array_mut) else {
        return;
    };
    for item in limits {
        if item["type"] != "Container" {
            continue;
        }
        let max = item["max"].as_object().cloned().unwrap_or_default();
        let min = item["min"].as_object().cloned().unwrap_or_default();
        let mut default = item["default"].as_object().cloned().unwrap_or_default();
        for (k, v) in max {
            default.entry(k).or_insert(v);
        }
        let mut default_request = item["defaultRequest"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (k, v) in default.iter().chain(min.iter()) {
            default_request.entry(k.clone()).or_insert(v.clone());
        }
        if !default.is_empty() {
            item["default"] = Value::Object(default);
        }
        if !default_request.is_empty() {
            item["defaultRequest"] = Value::Object(default_request);
        }
    }
}

/// Upstream's `PodMutateLimitFunc`: missing container requests/limits get the defaults, and the
/// pod is annotated with what was set.
pub fn default_pod(lr: &Value, pod: &mut Value) {
    let (mut requests, mut limits) = (Map::new(), Map::new());
    for item in items(lr).filter(|i| i["type"] == "Container") {
        requests.extend(
            item["defaultRequest"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        limits.extend(item["default"].as_object().cloned().unwrap_or_default());
    }
    if requests.is_empty() && limits.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    for (key, what) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(list) = pod
            .pointer_mut(&format!("/spec/{key}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in list {
            let name = c["name"].as_str().unwrap_or("").to_string();
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
            let set_requests = fill(&mut c["resources"], "requests", &requests);
            let set_limits = fill(&mut c["resources"], "limits", &limits);
            if !set_requests.is_empty() {
                notes.push(format!(
                    "{} request for {what} {name}",
                    set_requests.join(", ")
                ));
            }
            if !set_limits.is_empty() {
                notes.push(format!("{} limit for {what} {name}", set_limits.join(", ")));
            }
        }
    }
    if !notes.is_empty() {
        let m = meta::metadata_mut(pod);
        let annotations = m.entry("annotations").or_insert_with(|| json!({}));
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations[ANNOTATION] = json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

/// Sets the missing entries of `resources[bucket]` from `defaults`; returns the names set, sorted.
fn fill(resources: &mut Value, bucket: &str, defaults: &Map<String, Value>) -> Vec<String> {
    if defaults.is_empty() {
        return Vec::new();
    }
    if !resources[bucket].is_object() {
        resources[bucket] = json!({});
    }
    let target = resources[bucket].as_object_mut().expect("object");
    let mut set: Vec<String> = Vec::new();
    for (k, v) in defaults {
        if !target.contains_key(k) {
            target.insert(k.clone(), v.clone());
            set.push(k.clone());
        }
    }
    set.sort();
    set
}

/// Which end of a LimitRange item's range a quantity bounds.
#[derive(Clone, Copy)]
enum Bound {
    Min,
    Max,
}

impl Bound {
    /// The item field that holds this bound.
    fn field(self) -> &'static str {
        match self {
            Bound::Min => "min",
            Bound::Max => "max",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Bound::Min => "minimum",
            Bound::Max => "maximum",
        }
    }

    fn broken_by(self, q: &Quantity, enforced: &Quantity) -> bool {
        match self {
            Bound::Min => q < enforced,
            Bound::Max => q > enforced,
        }
    }
}

/// One side of a resource request: what the message calls it ("request" or "limit") and its
/// values.
type Side<'a> = (&'a str, &'a ResourceList);

/// Upstream's `minConstraint` and `maxConstraint` in one: `required` must name the resource and
/// respect the bound; `optional`, where it names the resource, must respect it too.
fn bound_constraint(
    bound: Bound,
    kind: &str,
    name: &str,
    enforced: &Quantity,
    required: Side,
    optional: Option<Side>,
) -> Result<(), String> {
    let word = bound.word();
    let (what, list) = required;
    let Some(q) = list.get(name) else {
        return Err(format!(
            "{word} {name} usage per {kind} is {enforced}.  No {what} is specified"
        ));
    };
    if bound.broken_by(q, enforced) {
        return Err(format!(
            "{word} {name} usage per {kind} is {enforced}, but {what} is {q}"
        ));
    }
    let Some((what, list)) = optional else {
        return Ok(());
    };
    if let Some(q) = list.get(name).filter(|q| bound.broken_by(q, enforced)) {
        return Err(format!(
            "{word} {name} usage per {kind} is {enforced}, but {what} is {q}"
        ));
    }
    Ok(())
}

fn ratio_constraint(
    kind: &str,
    name: &str,
    enforced: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Result<(), String> {
    let r = req.get(name).map(Quantity::milli).unwrap_or(0);
    let l = lim.get(name).map(Quantity::milli).unwrap_or(0);
    if r == 0 {
        return Err(format!("{name} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"));
    }
    if l == 0 {
        return Err(format!("{name} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"));
    }
    let ratio = l as f64 / r as f64;
    if ratio * 1000.0 > enforced.milli() as f64 {
        return Err(format!(
            "{name} max limit to request ratio per {kind} is {enforced}, but provided ratio is {ratio:.6}"
        ));
    }
    Ok(())
}

fn check_item(
    item: &Value,
    kind: &str,
    req: &ResourceList,
    lim: &ResourceList,
    errs: &mut Vec<String>,
) {
    for bound in [Bound::Min, Bound::Max] {
        // A minimum needs a request and a maximum a limit; the other must respect it where set.
        let (required, optional) = match bound {
            Bound::Min => (("request", req), Some(("limit", lim))),
            Bound::Max => (("limit", lim), Some(("request", req))),
        };
        for (name, q) in parse_list(&item[bound.field()]) {
            errs.extend(bound_constraint(bound, kind, &name, &q, required, optional).err());
        }
    }
    for (name, q) in parse_list(&item["maxLimitRequestRatio"]) {
        errs.extend(ratio_constraint(kind, &name, &q, req, lim).err());
    }
}

/// Upstream's `utilerrors.NewAggregate(...).Error()`.
fn aggregate(errs: Vec<String>) -> Result<(), String> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.into_iter().next().expect("one")),
        _ => Err(format!("[{}]", errs.join(", "))),
    }
}

/// Upstream's `PodValidateLimitFunc`.
pub fn validate_pod(lr: &Value, pod: &Value) -> Result<(), String> {
    let mut errs = Vec::new();
    for item in items(lr) {
        match item["type"].as_str() {
            Some("Container") => {
                for key in ["containers", "initContainers"] {
                    for c in pod["spec"][key].as_array().into_iter().flatten() {
                        let req = parse_list(&c["resources"]["requests"]);
                        let lim = parse_list(&c["resources"]["limits"]);
                        check_item(item, "Container", &req, &lim, &mut errs);
                    }
                }
            }
            Some("Pod") => {
                let req = pod_resources(pod, "requests");
                let lim = pod_resources(pod, "limits");
                check_item(item, "Pod", &req, &lim, &mut errs);
            }
            _ => {}
        }
    }
    aggregate(errs)
}

/// Upstream's `PersistentVolumeClaimValidateLimitFunc`: storage requests against min/max.
pub fn validate_claim(lr: &Value, pvc: &Value) -> Result<(), String> {
    let mut errs = Vec::new();
    let req = parse_list(&pvc["spec"]["resources"]["requests"]);
    // A claim's limits are not user input: both bounds check the request only.
    for item in items(lr).filter(|i| i["type"] == "PersistentVolumeClaim") {
        for bound in [Bound::Min, Bound::Max] {
            for (name, q) in parse_list(&item[bound.field()]) {
                let kind = "PersistentVolumeClaim";
                errs.extend(
                    bound_constraint(bound, kind, &name, &q, ("request", &req), None).err(),
                );
            }
        }
    }
    aggregate(errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Value {
        let mut lr = json!({"metadata": {"name": "lr"}, "spec": {"limits": limits}});
        default_limit_range(&mut lr);
        lr
    }

    #[test]
    fn item_defaults_follow_upstream() {
        let lr =
            range(json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}]));
        let item = &lr["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "1"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "1", "memory": "64Mi"})
        );
    }

    #[test]
    fn containers_get_defaults_and_an_annotation() {
        let lr = range(json!([{"type": "Container",
            "default": {"cpu": "500m", "memory": "128Mi"},
            "defaultRequest": {"cpu": "100m"}}]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"limits": {"cpu": "200m"}, "requests": {"cpu": "200m"}}},
        ]}});
        default_pod(&lr, &mut pod);
        let a = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(a["requests"], json!({"cpu": "100m", "memory": "128Mi"}));
        assert_eq!(a["limits"], json!({"cpu": "500m", "memory": "128Mi"}));
        let b = &pod["spec"]["containers"][1]["resources"];
        assert_eq!(b["limits"], json!({"cpu": "200m", "memory": "128Mi"}));
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container a; cpu, memory limit for container a; memory request for container b; memory limit for container b"
        );
        assert_eq!(validate_pod(&lr, &pod), Ok(()));
    }

    #[test]
    fn violations_use_upstream_messages() {
        let lr = range(
            json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "100m"}, "maxLimitRequestRatio": {"cpu": "2"}}]),
        );
        let pod = |req: &str, lim: &str| json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": req}, "limits": {"cpu": lim}}}]}});
        assert_eq!(
            validate_pod(&lr, &pod("1", "2")).unwrap_err(),
            "maximum cpu usage per Container is 1, but limit is 2"
        );
        assert_eq!(
            validate_pod(&lr, &pod("50m", "90m")).unwrap_err(),
            "minimum cpu usage per Container is 100m, but request is 50m"
        );
        assert_eq!(
            validate_pod(&lr, &pod("200m", "1")).unwrap_err(),
            "cpu max limit to request ratio per Container is 2, but provided ratio is 5.000000"
        );
        let two = range(json!([
            {"type": "Container", "max": {"cpu": "1"}},
            {"type": "Pod", "max": {"cpu": "1500m"}},
        ]));
        let big = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}},
        ]}});
        assert_eq!(
            validate_pod(&two, &big).unwrap_err(),
            "maximum cpu usage per Pod is 1500m, but limit is 2"
        );
    }

    #[test]
    fn a_bound_needs_its_side_and_holds_the_other() {
        let lr = range(json!([{"type": "Container", "min": {"cpu": "100m"}},
            {"type": "Container", "max": {"memory": "1Gi"}}]));
        let pod = |resources: Value| json!({"spec": {"containers": [{"name": "c", "resources": resources}]}});
        assert_eq!(
            validate_pod(&lr, &pod(json!({"limits": {"cpu": "1"}}))).unwrap_err(),
            "[minimum cpu usage per Container is 100m.  No request is specified, maximum memory usage per Container is 1Gi.  No limit is specified]"
        );
        assert_eq!(
            validate_pod(&lr, &pod(json!({"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "50m", "memory": "1Gi"}}))).unwrap_err(),
            "[minimum cpu usage per Container is 100m, but limit is 50m, maximum memory usage per Container is 1Gi, but request is 2Gi]"
        );
        let claims = range(json!([{"type": "PersistentVolumeClaim", "max": {"storage": "2Gi"}}]));
        assert_eq!(
            validate_claim(&claims, &json!({"spec": {"resources": {}}})).unwrap_err(),
            "maximum storage usage per PersistentVolumeClaim is 2Gi.  No request is specified"
        );
    }

    #[test]
    fn claims_are_held_to_storage_min_and_max() {
        let lr = range(
            json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "2Gi"}}]),
        );
        let pvc = |s: &str| json!({"spec": {"resources": {"requests": {"storage": s}}}});
        assert_eq!(validate_claim(&lr, &pvc("1Gi")), Ok(()));
        assert_eq!(
            validate_claim(&lr, &pvc("3Gi")).unwrap_err(),
            "maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 3Gi"
        );
        assert_eq!(
            validate_claim(&lr, &pvc("500Mi")).unwrap_err(),
            "minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"
        );
    }
}
