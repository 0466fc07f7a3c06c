//! Verbs on stored objects: get, list, create, update, patch, delete, deletecollection, and the
//! status and scale subresources.

use crate::body::{self, Wanted};
use crate::meta;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::state::Api;
use crate::status::{ApiError, Cause};
use base64::Engine;
use k3rs_resources::ResourceType;
use k3rs_store::{Error as StoreError, KeyValue};
use serde_json::{json, Value};
use std::collections::HashMap;

pub type Query = HashMap<String, String>;

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// Spec and status in one write: only for subresources the server implements itself
    /// (`pods/binding` sets nodeName and PodScheduled together, as upstream's binding REST does).
    Both,
}

/// The request's target, resolved against the index.
pub struct Target<'a> {
    pub rt: &'a ResourceType,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl Target<'_> {
    fn key(&self, name: &str) -> String {
        self.rt.storage_key(self.namespace, name)
    }

    /// Prefix for a list or watch: the whole resource, or one namespace of it.
    pub fn prefix(&self) -> String {
        match (self.rt.namespaced, self.namespace) {
            (true, Some(ns)) => format!("{}{}/", self.rt.storage_prefix(), ns),
            _ => self.rt.storage_prefix(),
        }
    }
}

fn is_dry_run(q: &Query) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

pub fn has_status_subresource(rt: &ResourceType) -> bool {
    rt.has_subresource("status")
}

pub async fn read(api: &Api, key: &str) -> Result<Option<Value>, ApiError> {
    Ok(api
        .store
        .get(key)
        .await?
        .map(|kv| meta::decode_from_store(&kv.value, kv.mod_revision)))
}

pub async fn get(api: &Api, t: &Target<'_>, name: &str) -> Result<Value, ApiError> {
    read(api, &t.key(name))
        .await?
        .ok_or_else(|| ApiError::not_found(&t.rt.group, &t.rt.plural, name))
}

/// Continue tokens carry the list revision and the last key returned (base64 JSON), like upstream's.
fn encode_continue(revision: i64, last_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": revision, "start": last_key}).to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: illegal base64 data");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((
        v["rv"].as_i64().ok_or_else(bad)?,
        v["start"].as_str().ok_or_else(bad)?.to_string(),
    ))
}

pub struct Selectors {
    pub label: LabelSelector,
    pub field: FieldSelector,
}

impl Selectors {
    pub fn from_query(q: &Query) -> Result<Self, ApiError> {
        let label = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let field = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Selectors { label, field })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.label.matches(obj) && self.field.matches(obj)
    }
}

pub struct ListOutcome {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

/// Lists objects honouring selectors, `limit`/`continue` and `resourceVersion`/`resourceVersionMatch`.
pub async fn list(api: &Api, t: &Target<'_>, q: &Query) -> Result<ListOutcome, ApiError> {
    let sel = Selectors::from_query(q)?;
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut start_after: Option<String> = None;
    let mut at_revision: Option<i64> = None;
    if let Some(token) = q.get("continue").filter(|c| !c.is_empty()) {
        let (rv, start) = decode_continue(token)?;
        at_revision = Some(rv);
        start_after = Some(start);
    } else if let Some(rv) = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
    {
        let rv: i64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
        match q.get("resourceVersionMatch").map(String::as_str) {
            Some("Exact") => at_revision = Some(rv),
            Some("NotOlderThan") | None | Some("") => {
                let current = api.store.current_revision().await?;
                if rv > current {
                    return Err(ApiError::timeout(format!(
                        "Too large resource version: {rv}, current: {current}"
                    )));
                }
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported resourceVersionMatch {other:?}"
                )))
            }
        }
    }
    let prefix = t.prefix();
    // A selector that pins one name reads one key instead of scanning.
    if let Some(name) = sel.field.pinned_name() {
        if at_revision.is_none() {
            let revision = api.store.current_revision().await?;
            let items: Vec<Value> = read(api, &t.key(name))
                .await?
                .into_iter()
                .filter(|o| sel.matches(o))
                .collect();
            return Ok(ListOutcome {
                items,
                revision,
                continue_token: None,
                remaining: None,
            });
        }
    }
    let mut items = Vec::new();
    let mut revision;
    let mut cursor = start_after;
    loop {
        // Fetch in pages so a selective list with a limit does not read everything at once.
        let page = limit.map(|l| (l - items.len()).max(64));
        let res = api
            .store
            .list(&prefix, cursor.as_deref(), page, at_revision)
            .await?;
        revision = res.revision;
        at_revision = Some(res.revision);
        let mut last_key = None;
        for kv in &res.items {
            last_key = Some(kv.key.clone());
            let obj = meta::decode_from_store(&kv.value, kv.mod_revision);
            if sel.matches(&obj) {
                items.push(obj);
                if limit.is_some_and(|l| items.len() >= l) {
                    let more = res.more
                        || kv.key != res.items.last().map(|k| k.key.clone()).unwrap_or_default();
                    let token = more.then(|| encode_continue(revision, &kv.key));
                    return Ok(ListOutcome {
                        items,
                        revision,
                        continue_token: token,
                        remaining: None,
                    });
                }
            }
        }
        if !res.more || last_key.is_none() {
            break;
        }
        cursor = last_key;
    }
    Ok(ListOutcome {
        items,
        revision,
        continue_token: None,
        remaining: None,
    })
}

pub fn list_object(rt: &ResourceType, out: ListOutcome) -> Value {
    let mut metadata = json!({"resourceVersion": out.revision.to_string()});
    if let Some(c) = out.continue_token {
        metadata["continue"] = json!(c);
    }
    if let Some(r) = out.remaining {
        metadata["remainingItemCount"] = json!(r);
    }
    let items: Vec<Value> = out
        .items
        .into_iter()
        .map(|mut o| {
            set_type_meta(rt, &mut o);
            o
        })
        .collect();
    json!({
        "kind": rt.list_kind(),
        "apiVersion": rt.api_version(),
        "metadata": metadata,
        "items": items,
    })
}

pub fn set_type_meta(rt: &ResourceType, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
}

/// Reduces an object to `PartialObjectMetadata` (Table rows and metadata-only lists carry this).
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// Renders objects for `Accept: ...;as=Table`.
pub fn table(
    api: &Api,
    rt: &ResourceType,
    objs: &[Value],
    revision: Option<String>,
    continue_token: Option<String>,
    with_columns: bool,
) -> Value {
    let now = chrono::Utc::now();
    let custom_columns = {
        let index = api.resources.read().expect("resource index lock");
        index.custom_type(rt).map(|c| c.printer_columns.clone())
    };
    let columns = match &custom_columns {
        Some(pc) => k3rs_resources::table::crd_columns(pc),
        None => k3rs_resources::table::columns(&rt.group, &rt.kind),
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let cells = match &custom_columns {
                Some(pc) => k3rs_resources::table::crd_cells(pc, o, now),
                None => k3rs_resources::table::cells(&rt.group, &rt.kind, o, now),
            };
            json!({"cells": cells, "object": partial_metadata(o)})
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = revision {
        metadata["resourceVersion"] = json!(rv);
    }
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "rows": rows,
    });
    if with_columns {
        t["columnDefinitions"] = Value::Array(
            columns
                .iter()
                .map(|c| {
                    json!({"name": c.name, "type": c.type_, "format": c.format,
                           "description": c.description, "priority": c.priority})
                })
                .collect(),
        );
    }
    t
}

/// `includeObject`: rows carry PartialObjectMetadata by default, the whole object, or nothing.
pub fn include_objects(
    rt: &ResourceType,
    table: &mut Value,
    items: Vec<Value>,
    include: Option<&str>,
) {
    let Some(rows) = table.get_mut("rows").and_then(Value::as_array_mut) else {
        return;
    };
    match include {
        Some("None") => {
            for row in rows.iter_mut() {
                if let Some(r) = row.as_object_mut() {
                    r.remove("object");
                }
            }
        }
        Some("Object") => {
            for (row, mut item) in rows.iter_mut().zip(items) {
                set_type_meta(rt, &mut item);
                row["object"] = item;
            }
        }
        _ => {}
    }
}

pub fn render_one(api: &Api, rt: &ResourceType, mut obj: Value, wanted: Wanted) -> Value {
    set_type_meta(rt, &mut obj);
    match wanted {
        Wanted::Object => obj,
        Wanted::PartialObjectMetadata => partial_metadata(&obj),
        Wanted::Table => {
            let rv = meta::resource_version(&obj).map(String::from);
            table(api, rt, &[obj], rv, None, true)
        }
    }
}

/// Checks the body's apiVersion/kind against the endpoint and fills them in when absent.
fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if (!av.is_empty() && av != rt.api_version()) || (!kind.is_empty() && kind != rt.kind) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    set_type_meta(rt, obj);
    Ok(())
}

/// Defaulting, validation and unknown-field checks for a write. Returns warnings (fieldValidation=Warn).
fn admit(
    api: &Api,
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    q: &Query,
) -> Result<Vec<String>, ApiError> {
    let name = meta::name(obj).unwrap_or("").to_string();
    let custom = {
        let index = api.resources.read().expect("resource index lock");
        index.custom_type(rt).map(|c| c.schema.clone())
    };
    let mut warnings = Vec::new();
    let unknown = match &custom {
        Some(schema) => crate::crd::prune_and_default(schema, obj),
        None => {
            k3rs_resources::validation::apply_defaults(&rt.group, &rt.version, &rt.kind, obj);
            let unknown =
                k3rs_resources::validation::unknown_fields(&rt.group, &rt.version, &rt.kind, obj);
            // Upstream decodes into the typed struct, so unknown fields never reach storage.
            for path in &unknown {
                remove_path(obj, path);
            }
            unknown
        }
    };
    if !unknown.is_empty() {
        match q
            .get("fieldValidation")
            .map(String::as_str)
            .unwrap_or("Warn")
        {
            "Strict" => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            "Ignore" => {}
            _ => warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\""))),
        }
    }
    let result = match &custom {
        Some(schema) => crate::crd::validate(schema, obj),
        None => k3rs_resources::validation::validate(&rt.group, &rt.version, &rt.kind, obj, old),
    };
    if let Err(errors) = result {
        let causes = errors
            .into_iter()
            .map(|e| Cause {
                reason: e.reason.to_string(),
                message: e.message,
                field: e.field,
            })
            .collect();
        return Err(ApiError::invalid(&rt.group, &rt.kind, &name, causes));
    }
    Ok(warnings)
}

/// Removes the field at a dotted path with `[i]` indexes (`spec.containers[0].imagee`).
fn remove_path(obj: &mut Value, path: &str) {
    let mut segments: Vec<(String, Option<usize>)> = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((name, idx)) => {
                segments.push((name.to_string(), None));
                for i in idx.split('[') {
                    let i = i.trim_end_matches(']');
                    if let Ok(n) = i.parse() {
                        segments.push((String::new(), Some(n)));
                    }
                }
            }
            None => segments.push((part.to_string(), None)),
        }
    }
    let Some((last, rest)) = segments.split_last() else {
        return;
    };
    let mut cur = obj;
    for (name, idx) in rest {
        let next = match idx {
            Some(i) => cur.get_mut(*i),
            None => cur.get_mut(name.as_str()),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match (last, cur) {
        ((name, None), Value::Object(m)) => {
            m.remove(name);
        }
        ((_, Some(i)), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

/// A successful write's answer: the object plus any warnings for the `Warning` header.
pub struct Written {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

pub async fn ensure_namespace(api: &Api, t: &Target<'_>, creating: bool) -> Result<(), ApiError> {
    if !t.rt.namespaced {
        return Ok(());
    }
    let Some(ns) = t.namespace else {
        return Err(ApiError::bad_request(
            "a namespace is required for this resource",
        ));
    };
    match read(api, &format!("/registry/core/namespaces/{ns}")).await? {
        None => Err(ApiError::not_found("", "namespaces", ns)),
        Some(n) if creating && meta::is_deleting(&n) => Err(ApiError::forbidden(format!(
            "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            t.rt.plural,
            "",
        ))),
        Some(_) => Ok(()),
    }
}

pub async fn create(
    api: &Api,
    t: &Target<'_>,
    mut obj: Value,
    q: &Query,
) -> Result<Written, ApiError> {
    check_type(t.rt, &mut obj)?;
    if let (true, Some(ns)) = (t.rt.namespaced, t.namespace) {
        match meta::namespace(&obj) {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                meta::metadata_mut(&mut obj).insert("namespace".into(), json!(ns));
            }
        }
    } else if !t.rt.namespaced {
        meta::metadata_mut(&mut obj).remove("namespace");
    }
    let generated = {
        let m = meta::metadata_mut(&mut obj);
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        match m.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !has_name => {
                let name = format!("{prefix}{}", meta::generated_suffix());
                m.insert("name".into(), json!(name));
                true
            }
            _ => false,
        }
    };
    if meta::name(&obj).is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            &t.rt.group,
            &t.rt.kind,
            "",
            vec![Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: name or generateName is required".into(),
                field: "metadata.name".into(),
            }],
        ));
    }
    ensure_namespace(api, t, true).await?;
    {
        let m = meta::metadata_mut(&mut obj);
        m.insert("uid".into(), json!(meta::new_uid()));
        m.insert("creationTimestamp".into(), json!(meta::now_rfc3339()));
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
    }
    if obj.get("spec").is_some()
        || api
            .resources
            .read()
            .expect("index")
            .custom_type(t.rt)
            .is_some()
    {
        meta::metadata_mut(&mut obj).insert("generation".into(), json!(1));
    } else {
        meta::metadata_mut(&mut obj).remove("generation");
    }
    prepare_create_status(t.rt, &mut obj);
    let warnings = admit(api, t.rt, &mut obj, None, q)?;
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    if q.get("__apply").is_none() {
        k3rs_patch::record_update(None, &mut obj, &manager, &meta::now_rfc3339());
    }
    crate::admission::on_create(api, t, &mut obj).await?;
    let name = meta::name(&obj).unwrap_or_default().to_string();
    if is_dry_run(q) {
        return Ok(Written {
            object: obj,
            created: true,
            warnings,
        });
    }
    crate::quota::charge_create(api, t, &obj).await?;
    let key = t.key(&name);
    let mut attempt = 0;
    loop {
        match api.store.create(&key, meta::encode_for_store(&obj)).await {
            Ok(kv) => {
                let object = meta::decode_from_store(&kv.value, kv.mod_revision);
                crate::admission::after_write(api, t.rt, &object).await;
                return Ok(Written {
                    object,
                    created: true,
                    warnings,
                });
            }
            Err(StoreError::AlreadyExists) if generated && attempt < 5 => {
                attempt += 1;
                let prefix = obj
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                meta::metadata_mut(&mut obj).insert(
                    "name".into(),
                    json!(format!("{prefix}{}", meta::generated_suffix())),
                );
            }
            Err(StoreError::AlreadyExists) => {
                return Err(ApiError::already_exists(&t.rt.group, &t.rt.plural, &name))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What status an object may carry when created (upstream's PrepareForCreate).
fn prepare_create_status(rt: &ResourceType, obj: &mut Value) {
    if !has_status_subresource(rt) {
        return;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        // Nodes, namespaces and PVs may set status on create.
        ("", "Node") | ("", "Namespace") | ("", "PersistentVolume") => {}
        ("", "Pod") => {
            obj["status"] =
                json!({"phase": "Pending", "qosClass": k3rs_resources::qos::pod_qos_class(obj)});
        }
        _ => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
    }
}

/// Replaces an object (PUT) or its status. `expected` = the client's resourceVersion precondition.
pub async fn update(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    mut obj: Value,
    part: Part,
    q: &Query,
) -> Result<Written, ApiError> {
    check_type(t.rt, &mut obj)?;
    if meta::name(&obj).is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta::name(&obj).unwrap_or_default()
        )));
    }
    meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
    if let Some(ns) = t.namespace.filter(|_| t.rt.namespaced) {
        match meta::namespace(&obj) {
            Some(b) if !b.is_empty() && b != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                meta::metadata_mut(&mut obj).insert("namespace".into(), json!(ns));
            }
        }
    }
    let expected: Option<i64> = match meta::resource_version(&obj) {
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
        None => None,
    };
    let key = t.key(name);
    let Some(kv) = api.store.get(&key).await? else {
        // PUT on a missing object creates it for kinds that allow it (upstream AllowCreateOnUpdate).
        if part == Part::Main && expected.is_none() && allow_create_on_update(t.rt) {
            return create(api, t, obj, q).await;
        }
        return Err(ApiError::not_found(&t.rt.group, &t.rt.plural, name));
    };
    if expected.is_some_and(|e| e != kv.mod_revision) {
        return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, name));
    }
    let old = meta::decode_from_store(&kv.value, kv.mod_revision);
    write_update(api, t, &old, kv.mod_revision, obj, part, q).await
}

fn allow_create_on_update(rt: &ResourceType) -> bool {
    matches!(
        (rt.group.as_str(), rt.kind.as_str()),
        ("", "Endpoints")
            | ("", "Event")
            | ("coordination.k8s.io", "Lease")
            | ("", "Node")
            | ("rbac.authorization.k8s.io", _)
            | ("", "LimitRange")
    )
}

/// The shared tail of update and patch: carry over immutable metadata, admit, write.
pub async fn write_update(
    api: &Api,
    t: &Target<'_>,
    old: &Value,
    old_rev: i64,
    mut obj: Value,
    part: Part,
    q: &Query,
) -> Result<Written, ApiError> {
    let name = meta::name(old).unwrap_or_default().to_string();
    {
        let old_meta = old["metadata"].clone();
        let m = meta::metadata_mut(&mut obj);
        for keep in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match old_meta.get(keep) {
                Some(v) => {
                    m.insert(keep.into(), v.clone());
                }
                None => {
                    m.remove(keep);
                }
            }
        }
        m.remove("resourceVersion");
    }
    if has_status_subresource(t.rt) {
        match part {
            // The main resource cannot change status; the status subresource changes only status.
            Part::Main => match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            Part::Status => {
                let status = obj.get("status").cloned();
                let mut merged = old.clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                // Status writers may still touch labels/annotations? Upstream: no. Keep old metadata.
                obj = merged;
            }
            Part::Both => {}
        }
    }
    if obj.pointer("/metadata/generation").is_some() && meta::spec_changed(old, &obj) {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta::metadata_mut(&mut obj).insert("generation".into(), json!(g + 1));
    }
    let warnings = admit(api, t.rt, &mut obj, Some(old), q)?;
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    if q.get("__apply").is_none() {
        k3rs_patch::record_update(Some(old), &mut obj, &manager, &meta::now_rfc3339());
    }
    let mut old_with_rv = old.clone();
    meta::metadata_mut(&mut old_with_rv).remove("resourceVersion");
    if meta::same_content(old, &obj) {
        return Ok(Written {
            object: old.clone(),
            created: false,
            warnings,
        });
    }
    if is_dry_run(q) {
        meta::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(old_rev.to_string()));
        return Ok(Written {
            object: obj,
            created: false,
            warnings,
        });
    }
    let key = t.key(&name);
    // An object being deleted whose last finalizer is removed goes away now.
    if meta::is_deleting(&obj) && meta::finalizers(&obj).is_empty() {
        let kv = match api.store.delete(&key, Some(old_rev)).await {
            Ok(kv) => kv,
            Err(StoreError::Conflict { .. }) => {
                return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, &name))
            }
            Err(StoreError::NotFound) => {
                return Err(ApiError::not_found(&t.rt.group, &t.rt.plural, &name))
            }
            Err(e) => return Err(e.into()),
        };
        let mut object = obj;
        meta::metadata_mut(&mut object)
            .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        crate::admission::after_delete(api, t.rt, &object).await;
        return Ok(Written {
            object,
            created: false,
            warnings,
        });
    }
    match api
        .store
        .update(&key, meta::encode_for_store(&obj), Some(old_rev))
        .await
    {
        Ok(kv) => {
            let object = meta::decode_from_store(&kv.value, kv.mod_revision);
            crate::admission::after_write(api, t.rt, &object).await;
            Ok(Written {
                object,
                created: false,
                warnings,
            })
        }
        Err(StoreError::Conflict { .. }) => {
            Err(ApiError::conflict(&t.rt.group, &t.rt.plural, &name))
        }
        Err(StoreError::NotFound) => Err(ApiError::not_found(&t.rt.group, &t.rt.plural, &name)),
        Err(e) => Err(e.into()),
    }
}

/// PATCH in all four flavours. Retries on a concurrent write, as upstream's patcher does.
pub async fn patch(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    media: &str,
    raw: &[u8],
    part: Part,
    q: &Query,
) -> Result<Written, ApiError> {
    let patch_doc: Value = match media {
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => body::decode_yaml(raw)?,
        _ => body::decode_json(raw)?,
    };
    for _ in 0..5 {
        let key = t.key(name);
        let existing = api.store.get(&key).await?;
        let Some(kv) = existing else {
            if media == "application/apply-patch+yaml" {
                return apply_create(api, t, name, &patch_doc, q).await;
            }
            return Err(ApiError::not_found(&t.rt.group, &t.rt.plural, name));
        };
        let old = meta::decode_from_store(&kv.value, kv.mod_revision);
        let mut new = old.clone();
        set_type_meta(t.rt, &mut new);
        let mut q2 = q.clone();
        match media {
            "application/merge-patch+json" => k3rs_patch::merge_patch(&mut new, &patch_doc)
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
            "application/json-patch+json" => {
                k3rs_patch::json_patch(&mut new, &patch_doc).map_err(|e| {
                    let mut err = ApiError::bad_request(e.to_string());
                    if matches!(e, k3rs_patch::PatchError::TestFailed(_)) {
                        err = ApiError::internal(e.to_string());
                    }
                    err
                })?
            }
            "application/strategic-merge-patch+json" => {
                let custom = api
                    .resources
                    .read()
                    .expect("index")
                    .custom_type(t.rt)
                    .is_some();
                if custom || !k3rs_patch::supports_strategic_merge(&t.rt.api_version(), &t.rt.kind)
                {
                    return Err(ApiError::unsupported_media_type(media));
                }
                k3rs_patch::strategic_merge_patch(
                    &mut new,
                    &patch_doc,
                    &t.rt.api_version(),
                    &t.rt.kind,
                )
                .map_err(|e| ApiError::bad_request(e.to_string()))?
            }
            "application/apply-patch+yaml" => {
                let manager = q.get("fieldManager").cloned().ok_or_else(|| {
                    ApiError::bad_request(
                        "PATCH, application/apply-patch+yaml requires fieldManager to be set",
                    )
                })?;
                let force = q.get("force").is_some_and(|f| f == "true");
                new = k3rs_patch::server_side_apply(
                    Some(&old),
                    &patch_doc,
                    &manager,
                    force,
                    &meta::now_rfc3339(),
                )
                .map_err(|e| apply_error(t.rt, name, e))?;
                q2.insert("__apply".into(), "1".into());
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        // A patch may carry a resourceVersion precondition.
        if let Some(rv) = meta::resource_version(&new) {
            if rv != kv.mod_revision.to_string() {
                return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, name));
            }
        }
        match write_update(api, t, &old, kv.mod_revision, new, part, &q2).await {
            Err(e)
                if e.reason == "Conflict"
                    && meta::resource_version(&patch_doc).is_none()
                    && !patch_doc
                        .pointer("/metadata/resourceVersion")
                        .is_some_and(|v| v.is_string()) =>
            {
                continue
            }
            other => return other,
        }
    }
    Err(ApiError::conflict(&t.rt.group, &t.rt.plural, name))
}

fn apply_error(rt: &ResourceType, name: &str, e: k3rs_patch::ApplyError) -> ApiError {
    match e {
        k3rs_patch::ApplyError::Conflicts(list) => {
            let causes: Vec<Cause> = list
                .iter()
                .map(|c| Cause {
                    reason: "FieldManagerConflict".into(),
                    message: format!("conflict with \"{}\"", c.manager),
                    field: c.field.clone(),
                })
                .collect();
            let text: Vec<String> = list.iter().map(|c| format!("- {}", c.field)).collect();
            let managers: Vec<&str> = list.iter().map(|c| c.manager.as_str()).collect();
            let mut err = ApiError::conflict_message(
                &rt.group,
                &rt.plural,
                name,
                format!(
                    "Apply failed with {} conflict{}: conflict with \"{}\": {}",
                    list.len(),
                    if list.len() == 1 { "" } else { "s" },
                    managers.first().copied().unwrap_or(""),
                    text.join("\n")
                ),
            );
            if let Some(d) = err.details.as_mut() {
                d.causes = causes;
            }
            err
        }
        k3rs_patch::ApplyError::Invalid(m) => ApiError::bad_request(m),
    }
}

async fn apply_create(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    applied: &Value,
    q: &Query,
) -> Result<Written, ApiError> {
    let manager = q.get("fieldManager").cloned().ok_or_else(|| {
        ApiError::bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set")
    })?;
    let mut obj =
        k3rs_patch::server_side_apply(None, applied, &manager, true, &meta::now_rfc3339())
            .map_err(|e| apply_error(t.rt, name, e))?;
    meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
    let mut q2 = q.clone();
    q2.insert("__apply".into(), "1".into());
    create(api, t, obj, &q2).await
}

/// DeleteOptions from the body and query.
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Option<String>,
    pub grace_period: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

pub fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut o = DeleteOptions::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = body::decode_json(body)?;
        o.propagation = v["propagationPolicy"].as_str().map(String::from);
        if v["orphanDependents"] == json!(true) {
            o.propagation = Some("Orphan".into());
        }
        o.grace_period = v["gracePeriodSeconds"].as_i64();
        o.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        o.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation = Some(p.clone());
    }
    if let Some(g) = q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
        o.grace_period = Some(g);
    }
    if q.get("orphanDependents").is_some_and(|v| v == "true") {
        o.propagation = Some("Orphan".into());
    }
    if let Some(p) = &o.propagation {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    }
    Ok(o)
}

/// Deletes one object, honouring finalizers, propagation policy and pod graceful deletion.
pub async fn delete(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    opts: &DeleteOptions,
    q: &Query,
) -> Result<(Value, u16), ApiError> {
    let key = t.key(name);
    for _ in 0..5 {
        let Some(kv) = api.store.get(&key).await? else {
            return Err(ApiError::not_found(&t.rt.group, &t.rt.plural, name));
        };
        let obj = meta::decode_from_store(&kv.value, kv.mod_revision);
        if opts
            .precondition_uid
            .as_deref()
            .is_some_and(|u| Some(u) != meta::uid(&obj))
        {
            return Err(ApiError::conflict_message(
                &t.rt.group,
                &t.rt.plural,
                name,
                format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                    opts.precondition_uid.as_deref().unwrap_or(""),
                    meta::uid(&obj).unwrap_or("")
                ),
            ));
        }
        if opts
            .precondition_rv
            .as_deref()
            .is_some_and(|r| r != kv.mod_revision.to_string())
        {
            return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, name));
        }
        let mut finalizers = meta::finalizers(&obj);
        let default_policy = "Background";
        match opts.propagation.as_deref().unwrap_or(default_policy) {
            "Orphan" => push_unique(&mut finalizers, "orphan"),
            "Foreground" => push_unique(&mut finalizers, "foregroundDeletion"),
            _ => {}
        }
        let namespace_pending = t.rt.kind == "Namespace" && t.rt.group.is_empty();
        let pod_graceful = t.rt.kind == "Pod"
            && t.rt.group.is_empty()
            && pod_needs_graceful_delete(api, &obj, opts).await;
        if finalizers.is_empty() && !namespace_pending && !pod_graceful {
            if is_dry_run(q) {
                return Ok((obj, 200));
            }
            match api.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(_) => {
                    crate::admission::after_delete(api, t.rt, &obj).await;
                    return Ok((obj, 200));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound) => {
                    return Err(ApiError::not_found(&t.rt.group, &t.rt.plural, name))
                }
                Err(e) => return Err(e.into()),
            }
        }
        if meta::is_deleting(&obj) && meta::finalizers(&obj) == finalizers && !pod_graceful {
            return Ok((obj, 202));
        }
        let mut updated = obj.clone();
        meta::set_finalizers(&mut updated, finalizers);
        {
            let grace = if pod_graceful {
                opts.grace_period
                    .or_else(|| {
                        obj.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30)
            } else {
                0
            };
            let m = meta::metadata_mut(&mut updated);
            if !m.contains_key("deletionTimestamp") || pod_graceful {
                let when = chrono::Utc::now() + chrono::Duration::seconds(grace);
                m.insert(
                    "deletionTimestamp".into(),
                    json!(when.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            m.remove("resourceVersion");
        }
        if namespace_pending {
            updated["status"]["phase"] = json!("Terminating");
        }
        if is_dry_run(q) {
            return Ok((updated, 202));
        }
        match api
            .store
            .update(
                &key,
                meta::encode_for_store(&updated),
                Some(kv.mod_revision),
            )
            .await
        {
            Ok(kv) => return Ok((meta::decode_from_store(&kv.value, kv.mod_revision), 200)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(&t.rt.group, &t.rt.plural, name))
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|f| f == item) {
        list.push(item.to_string());
    }
}

/// A pod scheduled to an existing node is deleted gracefully: the kubelet stops it, then removes it.
async fn pod_needs_graceful_delete(api: &Api, pod: &Value, opts: &DeleteOptions) -> bool {
    if opts.grace_period == Some(0) {
        return false;
    }
    let Some(node) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return false;
    };
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        return false;
    }
    matches!(
        read(api, &format!("/registry/core/nodes/{node}")).await,
        Ok(Some(_))
    )
}

pub async fn delete_collection(
    api: &Api,
    t: &Target<'_>,
    opts: &DeleteOptions,
    q: &Query,
) -> Result<Value, ApiError> {
    let out = list(api, t, q).await?;
    let mut deleted = Vec::new();
    for obj in out.items {
        let name = meta::name(&obj).unwrap_or_default().to_string();
        let ns = meta::namespace(&obj).map(String::from);
        let target = Target {
            rt: t.rt,
            namespace: ns.as_deref(),
            name: Some(&name),
        };
        match delete(api, &target, &name, opts, q).await {
            Ok((o, _)) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let revision = api.store.current_revision().await?;
    Ok(list_object(
        t.rt,
        ListOutcome {
            items: deleted,
            revision,
            continue_token: None,
            remaining: None,
        },
    ))
}

/// The autoscaling/v1 Scale view of a scalable object.
pub fn to_scale(rt: &ResourceType, obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .map(|s| {
            if let Some(m) = s.get("matchLabels").and_then(Value::as_object) {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            } else if let Some(m) = s.as_object() {
                m.iter()
                    .filter(|(_, v)| v.is_string())
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                String::new()
            }
        })
        .unwrap_or_default();
    let _ = rt;
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// Applies a Scale write (PUT or PATCH result) to the owning object.
pub async fn write_scale(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    scale: &Value,
    q: &Query,
) -> Result<Value, ApiError> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("spec.replicas is required"))?;
    if replicas < 0 {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                field: "spec.replicas".into(),
            }],
        ));
    }
    let key = t.key(name);
    let kv: KeyValue = api
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(&t.rt.group, &t.rt.plural, name))?;
    if let Some(rv) = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        if rv != kv.mod_revision.to_string() {
            return Err(ApiError::conflict(&t.rt.group, &t.rt.plural, name));
        }
    }
    let old = meta::decode_from_store(&kv.value, kv.mod_revision);
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(replicas);
    let written = write_update(api, t, &old, kv.mod_revision, new, Part::Main, q).await?;
    Ok(to_scale(t.rt, &written.object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_token_round_trip() {
        let t = encode_continue(42, "/registry/core/configmaps/default/a");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "/registry/core/configmaps/default/a".to_string())
        );
        assert_eq!(decode_continue("!!!").unwrap_err().code, 400);
    }

    #[test]
    fn unknown_paths_are_removed() {
        let mut obj = json!({"spec": {"replicass": 1, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}});
        remove_path(&mut obj, "spec.replicass");
        remove_path(&mut obj, "spec.template.spec.containers[0].imagee");
        remove_path(&mut obj, "spec.missing.deeper");
        assert_eq!(
            obj,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}})
        );
    }
}
