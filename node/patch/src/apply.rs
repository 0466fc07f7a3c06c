//! Server-side apply and field ownership (`metadata.managedFields`), a JSON-level
//! rendition of sigs.k8s.io/structured-merge-diff semantics.

use std::fmt;

use serde_json::{Map, Value};

use crate::fieldpath::{self, FieldSet, Path};
use crate::schema::{lookup, root_node, ListType, Prop};

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict {
    /// Manager that owns the field.
    pub manager: String,
    /// Field path, e.g. `.spec.replicas` or `.spec.template.spec.containers[name="c"].image`.
    pub field: String,
}

impl fmt::Display for ApplyConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conflict with \"{}\": {}", self.manager, self.field)
    }
}

/// Errors from [`server_side_apply`]. `Conflicts` maps to 409 Conflict, `Invalid` to 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("Apply failed with {} conflict{}: {}", .0.len(), if .0.len() == 1 { "" } else { "s" },
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Conflicts(Vec<ApplyConflict>),
    #[error("invalid apply configuration: {0}")]
    Invalid(String),
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_empty()
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), self.manager.clone().into());
        m.insert("operation".into(), self.operation.clone().into());
        if !self.api_version.is_empty() {
            m.insert("apiVersion".into(), self.api_version.clone().into());
        }
        if !self.time.is_empty() {
            m.insert("time".into(), self.time.clone().into());
        }
        m.insert("fieldsType".into(), "FieldsV1".into());
        m.insert("fieldsV1".into(), fieldpath::to_fields_v1(&self.fields));
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), self.subresource.clone().into());
        }
        Value::Object(m)
    }
}

fn managed_fields_value(obj: &Value) -> Option<&Value> {
    obj.get("metadata")?.get("managedFields")
}

fn parse_entries(list: Option<&Value>) -> Vec<Entry> {
    let s = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    list.and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter(|e| !s(e, "manager").is_empty() || e.get("fieldsV1").is_some())
                .map(|e| Entry {
                    manager: s(e, "manager"),
                    operation: s(e, "operation"),
                    api_version: s(e, "apiVersion"),
                    time: s(e, "time"),
                    subresource: s(e, "subresource"),
                    fields: e
                        .get("fieldsV1")
                        .map(fieldpath::from_fields_v1)
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes the entries sorted like upstream (operation, time, manager, subresource),
/// dropping empty ones; removes `managedFields` when none are left.
fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.subresource).cmp(&(
            &b.operation,
            &b.time,
            &b.manager,
            &b.subresource,
        ))
    });
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        meta.shift_remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_json).collect()),
        );
    }
}

fn type_of(obj: &Value) -> (&str, &str) {
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
    (s("apiVersion"), s("kind"))
}

/// Server-side apply (`application/apply-patch+yaml`).
///
/// Merges `applied` (a partial object, with `apiVersion` and `kind`) into `live`
/// (`None` = create) and records `manager`'s ownership (operation `Apply`) in
/// `metadata.managedFields`:
/// * applied fields replace the live values (maps merge, keyed lists merge by key,
///   sets union, other lists are atomic);
/// * fields `manager` applied before but omits now are removed unless another manager owns them;
/// * a field owned by another manager that `applied` sets to a different value is a
///   conflict, unless `force`, in which case ownership moves to `manager`.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now_rfc3339: &str,
) -> Result<Value, ApplyError> {
    let Value::Object(applied_map) = applied else {
        return Err(ApplyError::Invalid(
            "apply configuration must be an object".into(),
        ));
    };
    let (api_version, kind) = type_of(applied);
    if api_version.is_empty() || kind.is_empty() {
        return Err(ApplyError::Invalid(
            "apiVersion and kind must be set".into(),
        ));
    }
    if let Some(live) = live {
        let (_, live_kind) = type_of(live);
        if !live_kind.is_empty() && live_kind != kind {
            return Err(ApplyError::Invalid(format!(
                "kind {kind} does not match the existing object's kind {live_kind}"
            )));
        }
    }
    if managed_fields_value(applied).is_some_and(|m| !m.is_null()) {
        return Err(ApplyError::Invalid(
            "metadata.managedFields must be nil".into(),
        ));
    }
    if manager.is_empty() {
        return Err(ApplyError::Invalid(
            "fieldManager is required for apply".into(),
        ));
    }
    let schema = root_node(api_version, kind);
    let live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let mut entries = parse_entries(managed_fields_value(&live_obj));
    let applied_set = fieldpath::object_fields(applied, schema);
    let mine = entries.iter().position(|e| e.is(manager, "Apply"));
    let previous = mine.map(|i| entries[i].fields.clone()).unwrap_or_default();

    // Merge the applied configuration into the live object.
    let mut new = live_obj.clone();
    if !new.is_object() {
        new = Value::Object(Map::new());
    }
    merge_root(&mut new, applied_map, schema);

    // Conflicts: leaf fields owned by others whose value the apply changes.
    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, Path)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        for path in entry.fields.intersection(&applied_set) {
            if !fieldpath::is_leaf(&applied_set, path) {
                continue;
            }
            if fieldpath::get(&live_obj, path) != fieldpath::get(&new, path) {
                conflicts.push(ApplyConflict {
                    manager: entry.manager.clone(),
                    field: fieldpath::display(path),
                });
                taken.push((i, path.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| (&a.field, &a.manager).cmp(&(&b.field, &b.manager)));
        conflicts.dedup();
        return Err(ApplyError::Conflicts(conflicts));
    }
    for (i, path) in taken {
        entries[i].fields.remove(&path);
    }

    // Remove fields this manager owned before and no longer applies, unless others own them.
    let others: FieldSet = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != mine)
        .flat_map(|(_, e)| e.fields.iter().cloned())
        .collect();
    // Parents sort before their children, so a stale list item goes as a whole.
    for path in previous.difference(&applied_set) {
        if fieldpath::owns_under(&others, path)
            || is_key_field_of_kept_item(path, &applied_set, &others)
        {
            continue;
        }
        if fieldpath::remove(&mut new, path) {
            prune_empty_parents(&mut new, path, &applied_set, &others);
        }
    }

    match mine {
        Some(i) => {
            entries[i].fields = applied_set;
            entries[i].api_version = api_version.to_string();
            entries[i].time = now_rfc3339.to_string();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version: api_version.to_string(),
            time: now_rfc3339.to_string(),
            subresource: String::new(),
            fields: applied_set,
        }),
    }
    write_entries(&mut new, entries);
    Ok(new)
}

/// Key fields (`f:name` under `k:{"name":..}`) stay while their item stays.
fn is_key_field_of_kept_item(path: &Path, applied: &FieldSet, others: &FieldSet) -> bool {
    let [.., item, field] = path.as_slice() else {
        return false;
    };
    let (Some(item_key), Some(field)) = (item.strip_prefix("k:"), field.strip_prefix("f:")) else {
        return false;
    };
    let is_key = serde_json::from_str::<Value>(item_key)
        .ok()
        .and_then(|v| v.as_object().map(|m| m.contains_key(field)))
        .unwrap_or(false);
    let item_path = &path[..path.len() - 1];
    is_key
        && (fieldpath::owns_under(applied, item_path) || fieldpath::owns_under(others, item_path))
}

/// After removing `path`, drop enclosing objects that became empty and that nobody owns.
fn prune_empty_parents(obj: &mut Value, path: &Path, applied: &FieldSet, others: &FieldSet) {
    let mut parent = path.clone();
    parent.pop();
    while !parent.is_empty() && parent.last().is_some_and(|e| e.starts_with("f:")) {
        let empty =
            fieldpath::get(obj, &parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
        if !empty
            || fieldpath::owns_under(applied, &parent)
            || fieldpath::owns_under(others, &parent)
        {
            break;
        }
        fieldpath::remove(obj, &parent);
        parent.pop();
    }
}

fn merge_root(dst: &mut Value, src: &Map<String, Value>, schema: Option<&'static str>) {
    let mut src = src.clone();
    if let Some(Value::Object(meta)) = src.get_mut("metadata") {
        meta.shift_remove("managedFields");
    }
    merge_map(dst, &src, schema);
}

fn merge_map(dst: &mut Value, src: &Map<String, Value>, schema: Option<&'static str>) {
    if !dst.is_object() {
        *dst = Value::Object(Map::new());
    }
    let Value::Object(dst) = dst else { return };
    for (k, v) in src {
        if v.is_null() {
            dst.shift_remove(k);
            continue;
        }
        let prop = lookup(schema, k);
        match dst.get_mut(k) {
            Some(existing) => merge_value(existing, v, &prop),
            None => {
                let mut fresh = Value::Null;
                merge_value(&mut fresh, v, &prop);
                dst.insert(k.clone(), fresh);
            }
        }
    }
}

fn merge_value(dst: &mut Value, src: &Value, prop: &Prop) {
    match src {
        Value::Object(m) => merge_map(dst, m, prop.child),
        Value::Array(items) => {
            let Value::Array(existing) = dst else {
                *dst = src.clone();
                return;
            };
            match fieldpath::effective_list_type(items, prop) {
                ListType::Atomic => *dst = src.clone(),
                ListType::Set => {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                }
                ListType::Map(keys) => {
                    for item in items {
                        let Value::Object(m) = item else { continue };
                        let matches = |e: &Value| {
                            keys.iter().all(|k| {
                                e.get(*k) == m.get(*k)
                                    || (*k == "protocol"
                                        && key_or_tcp(e.get(*k)) == key_or_tcp(m.get(*k)))
                            })
                        };
                        match existing.iter_mut().find(|e| matches(e)) {
                            Some(e) => merge_map(e, m, prop.child),
                            None => {
                                let mut fresh = Value::Null;
                                merge_map(&mut fresh, m, prop.child);
                                existing.push(fresh);
                            }
                        }
                    }
                }
            }
        }
        scalar => *dst = scalar.clone(),
    }
}

fn key_or_tcp(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or("TCP")
}

/// Records an `Update` entry in `new.metadata.managedFields` for a non-apply write
/// (create/update/patch) by `manager`: it takes ownership of every field it added or
/// changed (other managers lose those), and fields that were removed are dropped from
/// every manager. If the client sent its own (different) `managedFields`, they are the
/// starting point; otherwise the old object's are.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, now_rfc3339: &str) {
    let (api_version, kind) = type_of(new);
    let (api_version, schema) = (api_version.to_string(), root_node(api_version, kind));
    let old_managed = old.and_then(managed_fields_value);
    let new_managed = managed_fields_value(new);
    let base = match new_managed {
        Some(Value::Array(l)) if !l.is_empty() && Some(&Value::Array(l.clone())) != old_managed => {
            new_managed
        }
        _ => old_managed,
    };
    let mut entries = parse_entries(base);
    let empty = Value::Object(Map::new());
    let old_obj = old.unwrap_or(&empty);
    let old_set = fieldpath::object_fields(old_obj, schema);
    let new_set = fieldpath::object_fields(new, schema);

    let changed: FieldSet = new_set
        .iter()
        .filter(|p| match fieldpath::get(old_obj, p) {
            None => true,
            Some(before) => {
                fieldpath::is_leaf(&new_set, p) && Some(before) != fieldpath::get(new, p)
            }
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();

    for e in entries.iter_mut() {
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| e.is(manager, "Update")) {
            Some(e) => {
                e.fields.extend(changed);
                e.api_version = api_version;
                e.time = now_rfc3339.to_string();
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: now_rfc3339.to_string(),
                subresource: String::new(),
                fields: changed,
            }),
        }
    }
    write_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T1: &str = "2024-01-01T00:00:00Z";
    const T2: &str = "2024-01-02T00:00:00Z";

    fn config() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [
                        {"name": "nginx", "image": "nginx:1", "ports": [{"containerPort": 80}]},
                        {"name": "sidecar", "image": "busybox"}
                    ]}
                }
            }
        })
    }

    fn entries(obj: &Value) -> &Vec<Value> {
        obj["metadata"]["managedFields"].as_array().unwrap()
    }

    #[test]
    fn create_records_managed_fields() {
        let obj = server_side_apply(None, &config(), "kubectl", false, T1).unwrap();
        assert_eq!(obj["spec"]["replicas"], json!(2));
        let mf = entries(&obj);
        assert_eq!(mf.len(), 1);
        assert_eq!(mf[0]["manager"], json!("kubectl"));
        assert_eq!(mf[0]["operation"], json!("Apply"));
        assert_eq!(mf[0]["apiVersion"], json!("apps/v1"));
        assert_eq!(mf[0]["time"], json!(T1));
        assert_eq!(mf[0]["fieldsType"], json!("FieldsV1"));
        let f = &mf[0]["fieldsV1"];
        assert_eq!(f["f:spec"]["f:replicas"], json!({}));
        assert_eq!(f["f:metadata"]["f:labels"]["f:app"], json!({}));
        assert!(f["f:metadata"].get("f:name").is_none());
        assert!(f.get("f:apiVersion").is_none());
        let c = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        assert_eq!(
            c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"],
            json!({})
        );
    }

    #[test]
    fn reapply_removes_omitted_fields() {
        let live = server_side_apply(None, &config(), "kubectl", false, T1).unwrap();
        let mut cfg = config();
        cfg["metadata"]["labels"] = json!({"app": "web", "extra": "x"});
        let live = server_side_apply(Some(&live), &cfg, "kubectl", false, T1).unwrap();
        assert_eq!(live["metadata"]["labels"]["extra"], json!("x"));

        let mut cfg = config();
        cfg["spec"]
            .as_object_mut()
            .unwrap()
            .shift_remove("replicas");
        cfg["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "nginx", "image": "nginx:2", "ports": [{"containerPort": 80}]}]);
        let out = server_side_apply(Some(&live), &cfg, "kubectl", false, T2).unwrap();
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        let cs = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0]["image"], json!("nginx:2"));
        assert_eq!(cs[0]["name"], json!("nginx"));
        let f = &entries(&out)[0]["fieldsV1"];
        assert!(f["f:spec"].get("f:replicas").is_none());
        assert_eq!(entries(&out)[0]["time"], json!(T2));
        // server-set metadata survives
        assert_eq!(out["metadata"]["name"], json!("web"));
    }

    #[test]
    fn omitted_field_kept_when_another_manager_owns_it() {
        let live = server_side_apply(None, &config(), "a", false, T1).unwrap();
        let live = server_side_apply(Some(&live), &config(), "b", false, T1).unwrap();
        assert_eq!(entries(&live).len(), 2);
        let mut cfg = config();
        cfg["spec"]
            .as_object_mut()
            .unwrap()
            .shift_remove("replicas");
        let out = server_side_apply(Some(&live), &cfg, "a", false, T2).unwrap();
        assert_eq!(out["spec"]["replicas"], json!(2));
    }

    #[test]
    fn conflicts_and_force() {
        let live = server_side_apply(None, &config(), "kubectl", false, T1).unwrap();
        let scale = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let err = server_side_apply(Some(&live), &scale, "hpa", false, T2).unwrap_err();
        let ApplyError::Conflicts(c) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            c,
            &vec![ApplyConflict {
                manager: "kubectl".into(),
                field: ".spec.replicas".into()
            }]
        );
        assert!(err
            .to_string()
            .contains("conflict with \"kubectl\": .spec.replicas"));

        // same value: no conflict, shared ownership
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let shared = server_side_apply(Some(&live), &same, "hpa", false, T2).unwrap();
        assert_eq!(entries(&shared).len(), 2);

        // force moves ownership
        let out = server_side_apply(Some(&live), &scale, "hpa", true, T2).unwrap();
        assert_eq!(out["spec"]["replicas"], json!(5));
        let mf = entries(&out);
        let kubectl = mf.iter().find(|e| e["manager"] == "kubectl").unwrap();
        let hpa = mf.iter().find(|e| e["manager"] == "hpa").unwrap();
        assert!(kubectl["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        assert_eq!(hpa["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
        // entries sorted by operation, then time
        assert_eq!(mf[0]["manager"], json!("kubectl"));

        // kubectl re-applying without replicas no longer removes them (hpa owns them)
        let mut cfg = config();
        cfg["spec"]
            .as_object_mut()
            .unwrap()
            .shift_remove("replicas");
        let out = server_side_apply(Some(&out), &cfg, "kubectl", false, T2).unwrap();
        assert_eq!(out["spec"]["replicas"], json!(5));
    }

    #[test]
    fn conflict_on_container_image() {
        let live = server_side_apply(None, &config(), "kubectl", false, T1).unwrap();
        let patch = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:9"}]}}}});
        let ApplyError::Conflicts(c) =
            server_side_apply(Some(&live), &patch, "other", false, T2).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(
            c[0].field,
            ".spec.template.spec.containers[name=\"nginx\"].image"
        );
        // keyed merge keeps the other container
        let out = server_side_apply(Some(&live), &patch, "other", true, T2).unwrap();
        let cs = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["image"], json!("nginx:9"));
        assert_eq!(cs[0]["ports"], json!([{"containerPort": 80}]));
    }

    #[test]
    fn invalid_configurations() {
        assert!(matches!(
            server_side_apply(None, &json!({"metadata": {"name": "x"}}), "m", false, T1),
            Err(ApplyError::Invalid(_))
        ));
        let mut cfg = config();
        cfg["metadata"]["managedFields"] = json!([{"manager": "x"}]);
        assert!(matches!(
            server_side_apply(None, &cfg, "m", false, T1),
            Err(ApplyError::Invalid(_))
        ));
        assert!(matches!(
            server_side_apply(None, &json!([]), "m", false, T1),
            Err(ApplyError::Invalid(_))
        ));
    }

    #[test]
    fn fields_v1_round_trip() {
        let obj = server_side_apply(None, &config(), "kubectl", false, T1).unwrap();
        let f = &entries(&obj)[0]["fieldsV1"];
        let set = fieldpath::from_fields_v1(f);
        assert_eq!(&fieldpath::to_fields_v1(&set), f);
    }

    #[test]
    fn update_entries() {
        let mut created = config();
        record_update(None, &mut created, "kubectl-create", T1);
        let mf = entries(&created);
        assert_eq!(mf.len(), 1);
        assert_eq!(mf[0]["operation"], json!("Update"));
        assert_eq!(mf[0]["fieldsV1"]["f:spec"]["f:replicas"], json!({}));

        // kubectl scale: replicas moves to the new manager
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(Some(&created), &mut scaled, "kubectl-scale", T2);
        let mf = entries(&scaled);
        assert_eq!(mf.len(), 2);
        let create = mf
            .iter()
            .find(|e| e["manager"] == "kubectl-create")
            .unwrap();
        let scale = mf.iter().find(|e| e["manager"] == "kubectl-scale").unwrap();
        assert!(create["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        assert_eq!(scale["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));

        // no change: nothing recorded, entries untouched
        let mut same = scaled.clone();
        record_update(Some(&scaled), &mut same, "noop", T2);
        assert_eq!(entries(&same).len(), 2);

        // an apply manager then sees a conflict with the Update manager
        let apply = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1}});
        let ApplyError::Conflicts(c) =
            server_side_apply(Some(&scaled), &apply, "kubectl", false, T2).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(c[0].manager, "kubectl-scale");

        // removing a field removes it from every manager
        let mut removed = scaled.clone();
        removed["metadata"]
            .as_object_mut()
            .unwrap()
            .shift_remove("labels");
        removed["metadata"]
            .as_object_mut()
            .unwrap()
            .shift_remove("managedFields");
        record_update(Some(&scaled), &mut removed, "editor", T2);
        let create = entries(&removed)
            .iter()
            .find(|e| e["manager"] == "kubectl-create")
            .unwrap()
            .clone();
        assert!(create["fieldsV1"]["f:metadata"].get("f:labels").is_none());
    }
}
