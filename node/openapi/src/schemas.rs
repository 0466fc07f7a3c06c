//! Definitions (component schemas) of a document: the JSON Schemas k8s-openapi generates through
//! `schemars`, renamed and annotated the way kube-apiserver publishes them.
//!
//! Definitions are produced with v3 references (`#/components/schemas/<name>`) and `$ref`
//! siblings (`{"$ref": …, "description": …}`); [`finish_v3`] and [`finish_v2`] turn them into
//! what each document flavour expects.

use std::borrow::Cow;

use k3rs_resources::ResourceType;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::kinds::KINDS;

pub(crate) const V3_PREFIX: &str = "#/components/schemas/";
pub(crate) const V2_PREFIX: &str = "#/definitions/";

pub(crate) const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
pub(crate) const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
pub(crate) const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
pub(crate) const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
pub(crate) const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
pub(crate) const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";

const GVK_EXT: &str = "x-kubernetes-group-version-kind";

const API_VERSION_DESC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DESC: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_METADATA_DESC: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// One k8s-openapi kind: its group/version/kind and how to generate its schema.
pub(crate) struct KindEntry {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The upstream definition name, e.g. `io.k8s.api.apps.v1.Deployment`.
    pub definition: fn() -> Cow<'static, str>,
    /// Registers the kind's schema (and everything it references) with a generator.
    pub add: fn(&mut SchemaGenerator),
}

pub(crate) fn add<T: JsonSchema>(generator: &mut SchemaGenerator) {
    generator.subschema_for::<T>();
}

/// The k8s-openapi kind with this group/version/kind, if any.
pub(crate) fn builtin(group: &str, version: &str, kind: &str) -> Option<&'static KindEntry> {
    KINDS
        .iter()
        .find(|e| e.group == group && e.version == version && e.kind == kind)
}

/// Where the schema of a served kind comes from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A k8s-openapi type (built-in kinds).
    Builtin(&'static KindEntry),
    /// The `openAPIV3Schema` of a CustomResourceDefinition version.
    Crd(Value),
    /// No schema known: an object that preserves unknown fields.
    Opaque,
}

impl std::fmt::Debug for KindEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", (self.definition)())
    }
}

/// A served kind: its resource type and schema source.
#[derive(Debug)]
pub(crate) struct Kind {
    pub resource: ResourceType,
    pub source: Source,
    /// Definition name (`io.k8s.api.apps.v1.Deployment`, `com.example.stable.v1.CronTab`).
    pub definition: String,
}

impl Kind {
    pub(crate) fn new(resource: ResourceType, crd_schema: Option<Value>) -> Kind {
        let (source, definition) = match crd_schema {
            Some(schema) => (Source::Crd(schema), custom_definition_name(&resource)),
            None => match builtin(&resource.group, &resource.version, &resource.kind) {
                Some(entry) => (Source::Builtin(entry), (entry.definition)().into_owned()),
                None => (Source::Opaque, custom_definition_name(&resource)),
            },
        };
        Kind {
            resource,
            source,
            definition,
        }
    }

    /// Whether the kind accepts strategic merge patch (built-in Go types only, as upstream).
    pub(crate) fn strategic_merge(&self) -> bool {
        matches!(self.source, Source::Builtin(_))
    }

    pub(crate) fn list_definition(&self) -> String {
        format!("{}List", self.definition)
    }

    pub(crate) fn has_list(&self) -> bool {
        self.resource.verbs.iter().any(|v| v == "list")
    }
}

/// Upstream names CRD definitions by the reversed group: `stable.example.com` → `com.example.stable`.
fn custom_definition_name(r: &ResourceType) -> String {
    let mut parts: Vec<&str> = r.group.split('.').filter(|s| !s.is_empty()).collect();
    parts.reverse();
    parts.push(&r.version);
    parts.push(&r.kind);
    parts.join(".")
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("{V3_PREFIX}{name}") })
}

fn gvk_value(group: &str, version: &str, kind: &str) -> Value {
    json!({ "group": group, "kind": kind, "version": version })
}

/// Adds `{group, kind, version}` to a definition's `x-kubernetes-group-version-kind` list.
fn add_gvk(def: &mut Value, group: &str, version: &str, kind: &str) {
    let Some(obj) = def.as_object_mut() else {
        return;
    };
    let gvk = gvk_value(group, version, kind);
    let list = obj
        .entry(GVK_EXT)
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(items) = list {
        if !items.contains(&gvk) {
            items.push(gvk);
        }
    }
}

fn type_meta_properties(props: &mut Map<String, Value>, list: bool) {
    props.insert(
        "apiVersion".into(),
        json!({ "description": API_VERSION_DESC, "type": "string" }),
    );
    props.insert(
        "kind".into(),
        json!({ "description": KIND_DESC, "type": "string" }),
    );
    let (meta_def, desc) = if list {
        (LIST_META, LIST_METADATA_DESC)
    } else {
        (OBJECT_META, METADATA_DESC)
    };
    let mut meta = reference(meta_def);
    meta["description"] = desc.into();
    props.insert("metadata".into(), meta);
}

fn crd_definition(schema: &Value) -> Value {
    let mut def = match schema {
        Value::Object(_) => schema.clone(),
        _ => json!({}),
    };
    let obj = def.as_object_mut().expect("object");
    obj.entry("type").or_insert_with(|| "object".into());
    let props = obj
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if !props.is_object() {
        *props = Value::Object(Map::new());
    }
    if let Value::Object(props) = props {
        type_meta_properties(props, false);
    }
    def
}

fn opaque_definition(r: &ResourceType) -> Value {
    let mut props = Map::new();
    type_meta_properties(&mut props, false);
    json!({
        "description": format!("{} of {}.", r.kind, r.api_version()),
        "type": "object",
        "properties": props,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn list_definition(k: &Kind) -> Value {
    let mut props = Map::new();
    type_meta_properties(&mut props, true);
    props.insert(
        "items".into(),
        json!({
            "description": format!("List of {}.", k.resource.plural),
            "type": "array",
            "items": reference(&k.definition),
        }),
    );
    json!({
        "description": format!("{}List is a list of {}.", k.resource.kind, k.resource.kind),
        "type": "object",
        "properties": props,
        "required": ["items"],
    })
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.transforms = Vec::new();
        })
        .into_generator()
}

/// The definitions of a document serving `kinds`: every kind, its list, and what they reference,
/// with GVK and patch-strategy extensions. References are v3-style (see module docs).
pub(crate) fn definitions(kinds: &[&Kind]) -> Map<String, Value> {
    let mut generator = generator();
    add::<meta::ObjectMeta>(&mut generator);
    add::<meta::ListMeta>(&mut generator);
    add::<meta::Status>(&mut generator);
    add::<meta::DeleteOptions>(&mut generator);
    add::<meta::Patch>(&mut generator);
    for k in kinds {
        if let Source::Builtin(entry) = k.source {
            (entry.add)(&mut generator);
        }
        if k.resource.has_subresource("scale") {
            add::<k8s_openapi::api::autoscaling::v1::Scale>(&mut generator);
        }
    }
    let mut defs = generator.take_definitions(false);

    for k in kinds {
        match &k.source {
            Source::Builtin(_) => {}
            Source::Crd(schema) => {
                defs.insert(k.definition.clone(), crd_definition(schema));
            }
            Source::Opaque => {
                defs.insert(k.definition.clone(), opaque_definition(&k.resource));
            }
        }
        let r = &k.resource;
        if let Some(def) = defs.get_mut(&k.definition) {
            add_gvk(def, &r.group, &r.version, &r.kind);
        }
        if k.has_list() {
            let mut list = list_definition(k);
            add_gvk(&mut list, &r.group, &r.version, &r.list_kind());
            defs.insert(k.list_definition(), list);
        }
    }
    // Other kinds that got pulled in (autoscaling/v1 Scale, …) carry their GVK as well.
    for e in KINDS {
        if let Some(def) = defs.get_mut((e.definition)().as_ref()) {
            add_gvk(def, e.group, e.version, e.kind);
        }
    }
    if let Some(def) = defs.get_mut(STATUS) {
        add_gvk(def, "", "v1", "Status");
    }
    fix_special_types(&mut defs);
    add_patch_strategies(&mut defs);
    defs.sort_keys();
    defs
}

/// Types whose Go marshalling is custom: publish them as kube-apiserver does.
fn fix_special_types(defs: &mut Map<String, Value>) {
    let keep_description_only = [
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON",
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray",
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool",
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray",
    ];
    for (name, def) in defs.iter_mut() {
        let Some(obj) = def.as_object_mut() else {
            continue;
        };
        match name.as_str() {
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
                obj.remove("x-kubernetes-int-or-string");
                obj.insert("type".into(), "string".into());
                obj.insert("format".into(), "int-or-string".into());
            }
            "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
                obj.remove("x-kubernetes-int-or-string");
                obj.insert("type".into(), "string".into());
            }
            n if keep_description_only.contains(&n) => {
                obj.retain(|k, _| k == "description");
            }
            _ => {}
        }
    }
}

/// `x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key` on the properties that have
/// them (containers merge by `name`, …), from the strategic-merge table of `k3rs-patch`.
fn add_patch_strategies(defs: &mut Map<String, Value>) {
    for (name, def) in defs.iter_mut() {
        let Some(Value::Object(props)) = def.get_mut("properties") else {
            continue;
        };
        for (prop, schema) in props.iter_mut() {
            let Some((strategy, merge_key)) = crate::strategy::field_strategy(name, prop) else {
                continue;
            };
            let Some(obj) = schema.as_object_mut() else {
                continue;
            };
            obj.insert("x-kubernetes-patch-strategy".into(), strategy.into());
            if let Some(key) = merge_key {
                obj.insert("x-kubernetes-patch-merge-key".into(), key.into());
            }
        }
    }
}

/// Calls `f` on every schema object reachable through schema keywords (never on property
/// names or values such as `default`/`enum`).
pub(crate) fn walk_schema(schema: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    f(obj);
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for v in props.values_mut() {
            walk_schema(v, f);
        }
    }
    for key in ["additionalProperties", "items", "not"] {
        match obj.get_mut(key) {
            Some(Value::Array(items)) => items.iter_mut().for_each(|v| walk_schema(v, f)),
            Some(v) => walk_schema(v, f),
            None => {}
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(items)) = obj.get_mut(key) {
            items.iter_mut().for_each(|v| walk_schema(v, f));
        }
    }
}

/// OpenAPI 3.0 ignores `$ref` siblings: wrap such references in `allOf` like kube-apiserver.
pub(crate) fn finish_v3(defs: &mut Map<String, Value>) {
    for def in defs.values_mut() {
        walk_schema(def, &mut |obj| {
            if obj.len() > 1 {
                if let Some(r) = obj.remove("$ref") {
                    obj.insert("allOf".into(), json!([{ "$ref": r }]));
                }
            }
        });
    }
}

/// Swagger 2.0: `#/definitions/` references and only what kubectl's v2 model parser accepts
/// (a single type, arrays with items, no `oneOf`/`anyOf`/`not`/`nullable`).
pub(crate) fn finish_v2(defs: &mut Map<String, Value>) {
    for def in defs.values_mut() {
        walk_schema(def, &mut |obj| {
            if let Some(Value::String(r)) = obj.get_mut("$ref") {
                if let Some(name) = r.strip_prefix(V3_PREFIX) {
                    *r = format!("{V2_PREFIX}{name}");
                }
            }
            for key in ["oneOf", "anyOf", "not", "nullable"] {
                obj.remove(key);
            }
            if let Some(Value::Array(types)) = obj.get("type") {
                let first = types.iter().find(|t| t.as_str() != Some("null")).cloned();
                match first {
                    Some(t) => obj.insert("type".into(), t),
                    None => obj.remove("type"),
                };
            }
            if obj.get("type").and_then(Value::as_str) == Some("array") {
                match obj.get("items") {
                    Some(Value::Object(_)) => {}
                    _ => {
                        obj.insert("items".into(), json!({}));
                    }
                }
            }
        });
    }
}
