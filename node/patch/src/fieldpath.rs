//! Field sets in the `fieldsV1` notation of `metadata.managedFields`
//! (sigs.k8s.io/structured-merge-diff): `f:<field>`, `k:{<key fields>}` for
//! elements of keyed lists, `v:<json>` for elements of sets, `.` for the node itself.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::schema::{lookup, ListType};

/// A path of `fieldsV1` elements, e.g. `["f:spec", "f:replicas"]`.
pub(crate) type Path = Vec<String>;
/// A set of owned paths.
pub(crate) type FieldSet = BTreeSet<Path>;

type Schema = Option<&'static str>;

/// Top-level fields that are never owned.
const IGNORED_ROOT: &[&str] = &["apiVersion", "kind"];
/// `metadata` fields set by the server that are never owned.
const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Default values of list-map key fields that may be omitted (`protocol` of ports).
fn key_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| Value::String("TCP".into()))
}

/// The `k:{...}` element for a keyed-list item, or `None` if it has no key field at all.
fn key_element(item: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    let mut key = Map::new();
    for k in sorted {
        if let Some(v) = item.get(k).cloned().or_else(|| key_default(k)) {
            key.insert(k.to_string(), v);
        }
    }
    if key.is_empty() || !keys.iter().any(|k| item.contains_key(*k)) {
        return None;
    }
    Some(format!("k:{}", Value::Object(key)))
}

/// Field set of a whole object (its root schema node is `schema`).
pub(crate) fn object_fields(obj: &Value, schema: Schema) -> FieldSet {
    let mut out = FieldSet::new();
    if let Value::Object(map) = obj {
        for (k, v) in map {
            if IGNORED_ROOT.contains(&k.as_str()) {
                continue;
            }
            let prop = lookup(schema, k);
            let path = vec![format!("f:{k}")];
            if k == "metadata" {
                if let Value::Object(meta) = v {
                    for (mk, mv) in meta {
                        if !IGNORED_META.contains(&mk.as_str()) {
                            walk_value(
                                mv,
                                &lookup(prop.child, mk),
                                path_with(&path, format!("f:{mk}")),
                                &mut out,
                            );
                        }
                    }
                }
                continue;
            }
            walk_value(v, &prop, path, &mut out);
        }
    }
    out
}

fn path_with(path: &[String], elem: String) -> Path {
    let mut p = path.to_vec();
    p.push(elem);
    p
}

/// List type of a field, falling back to atomic when the elements do not fit.
pub(crate) fn effective_list_type(list: &[Value], prop: &crate::schema::Prop) -> ListType {
    match prop.list {
        ListType::Map(keys)
            if list.iter().all(|e| {
                e.as_object()
                    .is_some_and(|m| key_element(m, keys).is_some())
            }) =>
        {
            ListType::Map(keys)
        }
        ListType::Set if list.iter().all(|e| !e.is_object() && !e.is_array()) => ListType::Set,
        _ => ListType::Atomic,
    }
}

fn walk_value(v: &Value, prop: &crate::schema::Prop, path: Path, out: &mut FieldSet) {
    match v {
        Value::Null => {}
        Value::Object(m) if m.is_empty() => {
            out.insert(path);
        }
        Value::Object(m) => walk_map(m, prop.child, &path, out),
        Value::Array(a) => match effective_list_type(a, prop) {
            ListType::Atomic => {
                out.insert(path);
            }
            ListType::Set => {
                for e in a {
                    out.insert(path_with(&path, format!("v:{e}")));
                }
            }
            ListType::Map(keys) => {
                for e in a {
                    let Value::Object(m) = e else { continue };
                    let Some(k) = key_element(m, keys) else {
                        continue;
                    };
                    let item = path_with(&path, k);
                    out.insert(item.clone());
                    walk_map(m, prop.child, &item, out);
                }
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

fn walk_map(m: &Map<String, Value>, schema: Schema, path: &[String], out: &mut FieldSet) {
    for (k, v) in m {
        walk_value(
            v,
            &lookup(schema, k),
            path_with(path, format!("f:{k}")),
            out,
        );
    }
}

/// Parses a `fieldsV1` tree.
pub(crate) fn from_fields_v1(v: &Value) -> FieldSet {
    fn rec(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
        let Value::Object(m) = v else { return };
        for (k, child) in m {
            if k == "." {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
                continue;
            }
            prefix.push(k.clone());
            if child.as_object().is_some_and(Map::is_empty) {
                out.insert(prefix.clone());
            } else {
                rec(child, prefix, out);
            }
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// Serialises a field set as a `fieldsV1` tree (keys sorted, `.` marking owned interior nodes).
pub(crate) fn to_fields_v1(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for path in set {
        let mut node = &mut root;
        for elem in path {
            node = node.children.entry(elem.clone()).or_default();
        }
        node.member = true;
    }
    fn emit(node: &Node) -> Value {
        let mut m = Map::new();
        if node.member && !node.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, child) in &node.children {
            m.insert(k.clone(), emit(child));
        }
        Value::Object(m)
    }
    emit(&root)
}

/// Whether a `k:{...}` element matches a list item.
fn key_matches(elem: &str, item: &Value) -> bool {
    let Some(json) = elem.strip_prefix("k:") else {
        return false;
    };
    let (Ok(Value::Object(key)), Value::Object(item)) = (serde_json::from_str::<Value>(json), item)
    else {
        return false;
    };
    key.iter().all(|(k, v)| match item.get(k) {
        Some(iv) => iv == v,
        None => key_default(k).as_ref() == Some(v),
    })
}

fn value_matches(elem: &str, item: &Value) -> bool {
    elem.strip_prefix("v:")
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
        .is_some_and(|v| &v == item)
}

fn step<'a>(cur: &'a Value, elem: &str) -> Option<&'a Value> {
    if let Some(f) = elem.strip_prefix("f:") {
        cur.as_object()?.get(f)
    } else if elem.starts_with("k:") {
        cur.as_array()?.iter().find(|i| key_matches(elem, i))
    } else if elem.starts_with("v:") {
        cur.as_array()?.iter().find(|i| value_matches(elem, i))
    } else {
        None
    }
}

/// The value at `path`, if present.
pub(crate) fn get<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, e| step(cur, e))
}

fn get_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for elem in path {
        cur = if let Some(f) = elem.strip_prefix("f:") {
            cur.as_object_mut()?.get_mut(f)?
        } else if elem.starts_with("k:") {
            cur.as_array_mut()?
                .iter_mut()
                .find(|i| key_matches(elem, i))?
        } else {
            cur.as_array_mut()?
                .iter_mut()
                .find(|i| value_matches(elem, i))?
        };
    }
    Some(cur)
}

/// Removes the value at `path`; returns whether something was removed.
pub(crate) fn remove(obj: &mut Value, path: &[String]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let Some(parent) = get_mut(obj, parent) else {
        return false;
    };
    if let Some(f) = last.strip_prefix("f:") {
        parent
            .as_object_mut()
            .is_some_and(|m| m.shift_remove(f).is_some())
    } else if let Some(list) = parent.as_array_mut() {
        let before = list.len();
        list.retain(|i| !(key_matches(last, i) || value_matches(last, i)));
        list.len() != before
    } else {
        false
    }
}

/// Human-readable path as in upstream conflict messages: `.spec.containers[name="c"].image`.
pub(crate) fn display(path: &[String]) -> String {
    let mut s = String::new();
    for elem in path {
        if let Some(f) = elem.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = elem.strip_prefix("k:") {
            let parts: Vec<String> = match serde_json::from_str::<Value>(k) {
                Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                _ => vec![k.to_string()],
            };
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = elem.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else {
            s.push_str(elem);
        }
    }
    s
}

/// True if `path` or anything below it is in `set`.
pub(crate) fn owns_under(set: &FieldSet, path: &[String]) -> bool {
    set.range(path.to_vec()..)
        .next()
        .is_some_and(|p| p.starts_with(path))
}

/// True if nothing below `path` (other than itself) is in `set`.
pub(crate) fn is_leaf(set: &FieldSet, path: &Path) -> bool {
    use std::ops::Bound::{Excluded, Unbounded};
    set.range::<Path, _>((Excluded(path), Unbounded))
        .next()
        .is_none_or(|p| !p.starts_with(path))
}
