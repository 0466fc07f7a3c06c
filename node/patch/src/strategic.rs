//! Kubernetes strategic merge patch, following
//! k8s.io/apimachinery/pkg/util/strategicpatch (`StrategicMergeMapPatch` with
//! `MergeParallelList` and `IgnoreUnmatchedNulls`).

use serde_json::{Map, Value};

use crate::schema::{lookup, root_node, Prop};
use crate::PatchError;

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

type Schema = Option<&'static str>;

/// Kubernetes strategic merge patch (`application/strategic-merge-patch+json`).
///
/// `api_version`/`kind` select the root type. Maps merge recursively and `null` deletes;
/// lists whose field has patch strategy `merge` merge element-wise by merge key (or as a
/// set, for scalars); other lists replace. Directives: `$patch: replace|delete|merge`,
/// `$retainKeys`, `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>`.
/// Kinds without a schema (ConfigMap, custom resources) behave like JSON merge patch
/// apart from `metadata`; use [`crate::supports_strategic_merge`] to reject custom
/// resources as upstream does.
///
/// On error `target` is left unchanged.
pub fn strategic_merge_patch(
    target: &mut Value,
    patch: &Value,
    api_version: &str,
    kind: &str,
) -> Result<(), PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Invalid(
            "strategic merge patch must be a JSON object".into(),
        ));
    };
    let original = target.as_object().cloned().unwrap_or_default();
    let merged = merge_map(original, patch.clone(), root_node(api_version, kind))?;
    *target = Value::Object(merged);
    Ok(())
}

fn invalid(msg: impl Into<String>) -> PatchError {
    PatchError::Invalid(msg.into())
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    schema: Schema,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.shift_remove(DIRECTIVE) {
        match directive.as_str() {
            // Replace: the patch (cleaned of nulls and directives) is the result.
            Some("replace") => return merge_map(Map::new(), patch, schema),
            Some("delete") => return Ok(Map::new()),
            // Upstream rejects `$patch: merge` on maps; merging is the default anyway.
            Some("merge") => {}
            _ => return Err(invalid(format!("unknown patch type {directive} in map"))),
        }
    }

    apply_retain_keys(&mut original, &mut patch)?;
    merge_ordered_lists(&mut original, &mut patch, schema)?;

    for (key, patch_value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Value::Array(to_delete) = patch_value else {
                return Err(invalid(format!("{key} must be a list")));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|v| !to_delete.contains(v));
            }
            continue;
        }
        if patch_value.is_null() {
            original.shift_remove(&key);
            continue;
        }
        let prop = lookup(schema, &key);
        // Take the live value, leaving a placeholder so the key keeps its position.
        let existing = original.get_mut(&key).map(Value::take);
        let merged = match (existing, patch_value) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                if prop.replaces() {
                    Value::Object(merge_map(Map::new(), p, prop.child)?)
                } else {
                    Value::Object(merge_map(o, p, prop.child)?)
                }
            }
            (Some(Value::Array(o)), Value::Array(p)) => Value::Array(merge_list(o, p, &prop)?),
            // New key, or type change: take the patch value, minus nulls and directives.
            (_, Value::Object(p)) => {
                if p.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                    original.shift_remove(&key);
                    continue;
                }
                Value::Object(merge_map(Map::new(), p, prop.child)?)
            }
            (_, Value::Array(p)) => Value::Array(merge_list(Vec::new(), p, &prop)?),
            (_, scalar) => scalar,
        };
        original.insert(key, merged);
    }
    Ok(original)
}

/// `$retainKeys`: drop keys of `original` not listed; every key set by the patch must be listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.shift_remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(invalid("$retainKeys must be a list of strings"));
    };
    let retain: Vec<&str> = retain
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| invalid("$retainKeys must be a list of strings"))
        })
        .collect::<Result<_, _>>()?;
    for (k, v) in patch.iter() {
        if !v.is_null() && !k.starts_with('$') && !retain.contains(&k.as_str()) {
            return Err(invalid(format!(
                "field {k} in the patch is not present in $retainKeys"
            )));
        }
    }
    original.retain(|k, _| retain.contains(&k.as_str()));
    Ok(())
}

/// Processes `$setElementOrder/<field>` together with the patch list of the same field
/// (`mergePatchIntoOriginal`): merge, then order by the directive, the patch and the live list.
fn merge_ordered_lists(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    schema: Schema,
) -> Result<(), PatchError> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for key in keys {
        let field = key[SET_ELEMENT_ORDER.len()..].to_string();
        let Some(Value::Array(order)) = patch.shift_remove(&key) else {
            return Err(invalid(format!("{key} must be a list")));
        };
        let original_list = match original.get(&field) {
            None => None,
            Some(Value::Array(l)) => Some(l.clone()),
            Some(_) => return Err(invalid(format!("{field} is not a list in the object"))),
        };
        let patch_list = match patch.get(&field) {
            None => None,
            Some(Value::Array(l)) => Some(l.clone()),
            Some(_) => return Err(invalid(format!("{field} must be a list in the patch"))),
        };
        let prop = lookup(schema, &field);
        let merge_key = prop.merge_key;
        validate_order_list(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;
        let server_order = original_list.clone().unwrap_or_default();
        let merged = match (original_list, patch_list) {
            (Some(o), None) => o,
            (None, Some(p)) => merge_list(Vec::new(), p, &prop)?,
            (Some(o), Some(p)) => merge_list(o, p, &prop)?,
            (None, None) => continue,
        };
        let (in_order, server_only): (Vec<Value>, Vec<Value>) = merged
            .into_iter()
            .partition(|v| index_of(&order, v, merge_key).is_some());
        let both = normalize_element_order(in_order, server_only, &order, &server_order, merge_key);
        original.insert(field.clone(), Value::Array(both));
        patch.shift_remove(&field);
    }
    Ok(())
}

/// Every element of the patch list (except deletions) must appear in `$setElementOrder`,
/// in the same relative order.
fn validate_order_list(
    patch_list: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), PatchError> {
    let mut last = None;
    for item in patch_list {
        if item.get(DIRECTIVE).is_some() {
            continue;
        }
        let Some(i) = index_of(order, item, merge_key) else {
            return Err(invalid(format!(
                "element {item} in the patch is not present in $setElementOrder"
            )));
        };
        if last.is_some_and(|l| i < l) {
            return Err(invalid(
                "the order in the patch list and $setElementOrder list do not match",
            ));
        }
        last = Some(i);
    }
    Ok(())
}

fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    prop: &Prop,
) -> Result<Vec<Value>, PatchError> {
    if prop.merges_list() {
        merge_slice(original, patch, prop)
    } else {
        Ok(patch)
    }
}

fn merge_slice(
    original: Vec<Value>,
    patch: Vec<Value>,
    prop: &Prop,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let is_map = original.iter().chain(&patch).any(Value::is_object);
    if is_map && !original.iter().chain(&patch).all(Value::is_object) {
        return Err(invalid("list elements must all be objects or all scalars"));
    }
    if !is_map {
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(&patch) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let (patch_items, server_only): (Vec<Value>, Vec<Value>) =
            merged.into_iter().partition(|v| patch.contains(v));
        return Ok(normalize_element_order(
            patch_items,
            server_only,
            &patch,
            &original,
            None,
        ));
    }
    let Some(key) = prop.merge_key else {
        return Err(invalid("cannot merge lists without merge key"));
    };

    // Special elements: `$patch: delete` removes entries, `$patch: replace` replaces the list.
    let mut original = original;
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE) else {
            plain.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(value) = item.get(key) else {
                    return Err(invalid(format!(
                        "map {item} does not contain merge key {key}"
                    )));
                };
                original.retain(|o| o.get(key) != Some(value));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(invalid(
                    "merging lists cannot yet be specified in the patch",
                ))
            }
            _ => return Err(invalid(format!("unknown patch type {directive} in list"))),
        }
    }
    let (original, patch) = if replace {
        (plain, Vec::new())
    } else {
        (original, plain)
    };

    let mut merged = original.clone();
    for item in &patch {
        let Value::Object(p) = item else {
            unreachable!("checked above")
        };
        let Some(value) = p.get(key) else {
            return Err(invalid(format!(
                "map {item} does not contain merge key {key}"
            )));
        };
        match merged.iter().position(|o| o.get(key) == Some(value)) {
            Some(i) => {
                let o = match merged[i].take() {
                    Value::Object(o) => o,
                    _ => Map::new(),
                };
                merged[i] = Value::Object(merge_map(o, p.clone(), prop.child)?);
            }
            None => merged.push(Value::Object(merge_map(Map::new(), p.clone(), prop.child)?)),
        }
    }
    let (patch_items, server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| index_of(&patch, v, Some(key)).is_some());
    Ok(normalize_element_order(
        patch_items,
        server_only,
        &patch,
        &original,
        Some(key),
    ))
}

/// Position of `item` in `list`, by merge key for maps and by value for scalars.
fn index_of(list: &[Value], item: &Value, merge_key: Option<&str>) -> Option<usize> {
    match (merge_key, item) {
        (Some(key), Value::Object(m)) => {
            let value = m.get(key)?;
            list.iter().position(|o| o.get(key) == Some(value))
        }
        _ => list.iter().position(|o| o == item),
    }
}

/// Sorts `items` by their position in `order` (items not found keep their relative
/// order, after the found ones).
fn sort_by_order(items: Vec<Value>, order: &[Value], merge_key: Option<&str>) -> Vec<Value> {
    let mut keyed: Vec<(usize, Value)> = items
        .into_iter()
        .map(|v| (index_of(order, &v, merge_key).unwrap_or(usize::MAX), v))
        .collect();
    keyed.sort_by_key(|(i, _)| *i);
    keyed.into_iter().map(|(_, v)| v).collect()
}

/// `normalizeElementOrder` + `mergeSortedSlice`: patch items in patch order, server-only
/// items in live order, interleaved by their live positions.
fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: Option<&str>,
) -> Vec<Value> {
    let right = sort_by_order(patch_items, patch_order, merge_key);
    let left = sort_by_order(server_only, server_order, merge_key);
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (Some(l), Some(r)) => {
                let li = index_of(server_order, l, merge_key);
                let ri = index_of(server_order, r, merge_key);
                match (li, ri) {
                    (Some(li), Some(ri)) if li < ri => out.extend(left.next()),
                    _ => out.extend(right.next()),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "labels": {"app": "web", "tier": "fe"},
                "finalizers": ["a", "b"],
                "ownerReferences": [{"uid": "u1", "name": "o1", "kind": "X", "apiVersion": "v1"}]
            },
            "spec": {
                "replicas": 2,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "nginx", "image": "nginx:1.0",
                             "env": [{"name": "A", "value": "1"}],
                             "ports": [{"containerPort": 80}],
                             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                            {"name": "sidecar", "image": "busybox"},
                            {"name": "logger", "image": "fluentd"}
                        ],
                        "tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}],
                        "volumes": [{"name": "data", "emptyDir": {}}]
                    }
                }
            }
        })
    }

    fn smp(target: &mut Value, patch: Value) {
        strategic_merge_patch(target, &patch, "apps/v1", "Deployment").unwrap();
    }

    fn names(list: &Value) -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn kubectl_apply_style_patch() {
        let mut d = deployment();
        smp(
            &mut d,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "logger"}, {"name": "nginx"}],
                "containers": [
                    {"$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                     "env": [{"name": "B", "value": "2"}],
                     "image": "nginx:1.1",
                     "name": "nginx"},
                    {"$patch": "delete", "name": "sidecar"}
                ]
            }}}}),
        );
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(names(containers), ["logger", "nginx"]);
        let nginx = &containers[1];
        assert_eq!(nginx["image"], json!("nginx:1.1"));
        assert_eq!(
            nginx["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(nginx["ports"], json!([{"containerPort": 80}]));
        assert_eq!(nginx["volumeMounts"][0]["mountPath"], json!("/data"));
        assert_eq!(containers[0]["image"], json!("fluentd"));
        // untouched parts survive
        assert_eq!(d["spec"]["replicas"], json!(2));
        assert_eq!(d["metadata"]["labels"]["tier"], json!("fe"));
    }

    #[test]
    fn merge_by_key_without_order_directive() {
        let mut d = deployment();
        smp(
            &mut d,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "new", "image": "redis", "args": null},
                {"name": "nginx", "image": "nginx:2", "env": [{"name": "A", "value": "changed"}]}
            ]}}}}),
        );
        let containers = &d["spec"]["template"]["spec"]["containers"];
        // patch items keep patch order, server-only items interleave by live position
        assert_eq!(names(containers), ["new", "nginx", "sidecar", "logger"]);
        assert_eq!(containers[0], json!({"name": "new", "image": "redis"}));
        assert_eq!(
            containers[1]["env"],
            json!([{"name": "A", "value": "changed"}])
        );
        assert_eq!(containers[1]["ports"], json!([{"containerPort": 80}]));
    }

    #[test]
    fn null_deletes_keys() {
        let mut d = deployment();
        smp(
            &mut d,
            json!({"metadata": {"labels": {"tier": null, "missing": null}},
                   "spec": {"strategy": {"rollingUpdate": null}, "template": {"spec": {"containers": [
                       {"name": "nginx", "ports": null}]}}}}),
        );
        assert_eq!(d["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(d["spec"]["strategy"], json!({"type": "RollingUpdate"}));
        assert!(d["spec"]["template"]["spec"]["containers"][0]
            .get("ports")
            .is_none());
    }

    #[test]
    fn finalizers_union_and_delete() {
        let mut d = deployment();
        smp(&mut d, json!({"metadata": {"finalizers": ["c", "a"]}}));
        assert_eq!(d["metadata"]["finalizers"], json!(["c", "a", "b"]));
        smp(
            &mut d,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "zzz"]}}),
        );
        assert_eq!(d["metadata"]["finalizers"], json!(["c", "b"]));
        smp(
            &mut d,
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "c", "d"], "finalizers": ["d"]}}),
        );
        assert_eq!(d["metadata"]["finalizers"], json!(["b", "c", "d"]));
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let mut d = deployment();
        smp(
            &mut d,
            json!({"metadata": {"ownerReferences": [{"uid": "u2", "name": "o2", "kind": "X", "apiVersion": "v1"}]}}),
        );
        let refs = d["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(refs.len(), 2);
        smp(
            &mut d,
            json!({"metadata": {"ownerReferences": [{"$patch": "delete", "uid": "u1"}]}}),
        );
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], json!("u2"));
        assert_eq!(
            d["metadata"]["ownerReferences"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn atomic_lists_replace() {
        let mut d = deployment();
        smp(
            &mut d,
            json!({"spec": {"template": {"spec": {"tolerations": [{"key": "c", "operator": "Exists"}]}}}}),
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "c", "operator": "Exists"}])
        );
    }

    #[test]
    fn patch_directives() {
        let mut d = deployment();
        // $patch: replace on a list
        smp(
            &mut d,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "only", "image": "x"}, {"$patch": "replace"}]}}}}),
        );
        assert_eq!(
            names(&d["spec"]["template"]["spec"]["containers"]),
            ["only"]
        );
        // $patch: replace on a map
        smp(
            &mut d,
            json!({"spec": {"template": {"metadata": {"labels": {"$patch": "replace", "new": "1"}}}}}),
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"],
            json!({"new": "1"})
        );
        // $patch: delete on a map
        smp(&mut d, json!({"spec": {"strategy": {"$patch": "delete"}}}));
        assert_eq!(d["spec"]["strategy"], json!({}));
        // $patch: merge is the default behaviour
        smp(
            &mut d,
            json!({"metadata": {"labels": {"$patch": "merge", "z": "1"}}}),
        );
        assert_eq!(d["metadata"]["labels"]["z"], json!("1"));
        assert_eq!(d["metadata"]["labels"]["app"], json!("web"));
    }

    #[test]
    fn retain_keys() {
        let mut d = deployment();
        smp(
            &mut d,
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        // volumes are merge,retainKeys: switch a volume's source
        smp(
            &mut d,
            json!({"spec": {"template": {"spec": {"volumes": [
                {"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/x"}}]}}}}),
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "data", "hostPath": {"path": "/x"}}])
        );
        let bad = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}});
        assert!(matches!(
            strategic_merge_patch(&mut d, &bad, "apps/v1", "Deployment"),
            Err(PatchError::Invalid(_))
        ));
    }

    #[test]
    fn errors_leave_target_unchanged() {
        let mut d = deployment();
        let before = d.clone();
        let bad = json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [{"image": "no-name"}]}}}});
        assert!(strategic_merge_patch(&mut d, &bad, "apps/v1", "Deployment").is_err());
        let bad = json!({"metadata": {"labels": {"$patch": "frob"}}});
        assert!(strategic_merge_patch(&mut d, &bad, "apps/v1", "Deployment").is_err());
        assert_eq!(d, before);
        assert!(strategic_merge_patch(&mut d, &json!([]), "apps/v1", "Deployment").is_err());
    }

    #[test]
    fn pod_service_node_lists() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}]}});
        strategic_merge_patch(
            &mut pod,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "podIPs": [{"ip": "10.0.0.1"}]}}),
            "v1",
            "Pod",
        )
        .unwrap();
        assert_eq!(
            pod["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}])
        );

        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        strategic_merge_patch(
            &mut svc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            "v1",
            "Service",
        )
        .unwrap();
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );

        // Node taints have no patch strategy upstream: the list is replaced.
        let mut node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}], "podCIDRs": ["10.0.0.0/24"]}});
        strategic_merge_patch(
            &mut node,
            &json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}], "podCIDRs": ["10.0.1.0/24"]}}),
            "v1",
            "Node",
        )
        .unwrap();
        assert_eq!(
            node["spec"]["taints"],
            json!([{"key": "b", "effect": "NoSchedule"}])
        );
        assert_eq!(
            node["spec"]["podCIDRs"],
            json!(["10.0.1.0/24", "10.0.0.0/24"])
        );
    }

    #[test]
    fn cronjob_and_statefulset_paths() {
        let mut cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
                {"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}}}}}});
        strategic_merge_patch(
            &mut cj,
            &json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "2"}]}}}}}}),
            "batch/v1",
            "CronJob",
        )
        .unwrap();
        let cs = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            cs,
            &json!([{"name": "a", "image": "1"}, {"name": "b", "image": "2"}])
        );

        let mut sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
            "spec": {"template": {"spec": {"initContainers": [{"name": "i", "image": "1"}]}}}});
        strategic_merge_patch(
            &mut sts,
            &json!({"spec": {"template": {"spec": {"initContainers": [{"name": "j", "image": "1"}]}}}}),
            "apps/v1",
            "StatefulSet",
        )
        .unwrap();
        assert_eq!(
            names(&sts["spec"]["template"]["spec"]["initContainers"]),
            ["j", "i"]
        );
    }

    #[test]
    fn unknown_kinds_behave_like_merge_patch() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "finalizers": ["x"]}, "data": {"a": "1", "b": "2"}});
        strategic_merge_patch(
            &mut cm,
            &json!({"data": {"a": null, "c": "3"}, "metadata": {"finalizers": ["y"]}}),
            "v1",
            "ConfigMap",
        )
        .unwrap();
        assert_eq!(cm["data"], json!({"b": "2", "c": "3"}));
        // metadata is still ObjectMeta: finalizers union
        assert_eq!(cm["metadata"]["finalizers"], json!(["y", "x"]));

        let mut cr = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"items": [{"name": "a"}], "m": {"k": 1}}});
        strategic_merge_patch(
            &mut cr,
            &json!({"spec": {"items": [{"name": "b"}], "m": {"j": 2}}}),
            "example.com/v1",
            "Widget",
        )
        .unwrap();
        assert_eq!(
            cr["spec"],
            json!({"items": [{"name": "b"}], "m": {"k": 1, "j": 2}})
        );
    }
}
