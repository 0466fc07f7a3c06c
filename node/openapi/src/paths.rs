//! REST paths and operations of a resource, named and annotated like kube-apiserver's
//! (`patchAppsV1NamespacedDeployment`, `x-kubernetes-action`, `x-kubernetes-group-version-kind`).

use serde_json::{json, Map, Value};

use crate::schemas::{Kind, DELETE_OPTIONS, PATCH, SCALE, STATUS, V2_PREFIX, V3_PREFIX};

/// Which document the operations go into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Swagger 2.0 (`/openapi/v2`).
    V2,
    /// OpenAPI 3.0 (`/openapi/v3/...`).
    V3,
}

impl Flavor {
    fn reference(self, name: &str) -> Value {
        let prefix = match self {
            Flavor::V2 => V2_PREFIX,
            Flavor::V3 => V3_PREFIX,
        };
        json!({ "$ref": format!("{prefix}{name}") })
    }
}

type Param = (&'static str, &'static str, &'static str);

const P_ALLOW_WATCH_BOOKMARKS: Param = (
    "allowWatchBookmarks",
    "boolean",
    "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
);
const P_CONTINUE: Param = (
    "continue",
    "string",
    "The continue option should be set when retrieving more results from the server.",
);
const P_FIELD_SELECTOR: Param = (
    "fieldSelector",
    "string",
    "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
);
const P_LABEL_SELECTOR: Param = (
    "labelSelector",
    "string",
    "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
);
const P_LIMIT: Param = (
    "limit",
    "integer",
    "limit is a maximum number of responses to return for a list call.",
);
const P_RESOURCE_VERSION: Param = (
    "resourceVersion",
    "string",
    "resourceVersion sets a constraint on what resource versions a request may be served from.",
);
const P_RESOURCE_VERSION_MATCH: Param = (
    "resourceVersionMatch",
    "string",
    "resourceVersionMatch determines how resourceVersion is applied to list calls.",
);
const P_SEND_INITIAL_EVENTS: Param = (
    "sendInitialEvents",
    "boolean",
    "`sendInitialEvents=true` may be set together with `watch=true`.",
);
const P_TIMEOUT_SECONDS: Param = (
    "timeoutSeconds",
    "integer",
    "Timeout for the list/watch call.",
);
const P_WATCH: Param = ("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.");
const P_DRY_RUN: Param = ("dryRun", "string", "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed");
const P_FIELD_MANAGER: Param = (
    "fieldManager",
    "string",
    "fieldManager is a name associated with the actor or entity that is making these changes.",
);
const P_FIELD_VALIDATION: Param = ("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default) and Strict.");
const P_FORCE: Param = ("force", "boolean", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people.");
const P_GRACE_PERIOD_SECONDS: Param = (
    "gracePeriodSeconds",
    "integer",
    "The duration in seconds before the object should be deleted.",
);
const P_ORPHAN_DEPENDENTS: Param = (
    "orphanDependents",
    "boolean",
    "Deprecated: please use the PropagationPolicy.",
);
const P_PROPAGATION_POLICY: Param = (
    "propagationPolicy",
    "string",
    "Whether and how garbage collection will be performed: 'Orphan', 'Background' or 'Foreground'.",
);
const P_PRETTY: Param = (
    "pretty",
    "string",
    "If 'true', then the output is pretty printed.",
);

const LIST_PARAMS: &[Param] = &[
    P_ALLOW_WATCH_BOOKMARKS,
    P_CONTINUE,
    P_FIELD_SELECTOR,
    P_LABEL_SELECTOR,
    P_LIMIT,
    P_RESOURCE_VERSION,
    P_RESOURCE_VERSION_MATCH,
    P_SEND_INITIAL_EVENTS,
    P_TIMEOUT_SECONDS,
    P_WATCH,
];
const WRITE_PARAMS: &[Param] = &[P_DRY_RUN, P_FIELD_MANAGER, P_FIELD_VALIDATION];
const PATCH_PARAMS: &[Param] = &[P_DRY_RUN, P_FIELD_MANAGER, P_FIELD_VALIDATION, P_FORCE];
const DELETE_PARAMS: &[Param] = &[
    P_DRY_RUN,
    P_GRACE_PERIOD_SECONDS,
    P_ORPHAN_DEPENDENTS,
    P_PROPAGATION_POLICY,
];
const DELETE_COLLECTION_PARAMS: &[Param] = &[
    P_CONTINUE,
    P_DRY_RUN,
    P_FIELD_SELECTOR,
    P_GRACE_PERIOD_SECONDS,
    P_LABEL_SELECTOR,
    P_LIMIT,
    P_ORPHAN_DEPENDENTS,
    P_PROPAGATION_POLICY,
    P_RESOURCE_VERSION,
    P_RESOURCE_VERSION_MATCH,
    P_SEND_INITIAL_EVENTS,
    P_TIMEOUT_SECONDS,
];

const PATCH_TYPES_STRATEGIC: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];
const PATCH_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
];
const PRODUCES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

fn param(
    flavor: Flavor,
    (name, ty, desc): (&str, &str, &str),
    location: &str,
    required: bool,
) -> Value {
    let mut p = Map::new();
    p.insert("name".into(), name.into());
    p.insert("in".into(), location.into());
    p.insert("description".into(), desc.into());
    if required {
        p.insert("required".into(), true.into());
    }
    match flavor {
        Flavor::V2 => {
            p.insert("type".into(), ty.into());
            p.insert("uniqueItems".into(), true.into());
        }
        Flavor::V3 => {
            p.insert("schema".into(), json!({ "type": ty, "uniqueItems": true }));
        }
    }
    Value::Object(p)
}

enum Body<'a> {
    /// The object itself (create, replace).
    Object(&'a str),
    /// A patch document in one of the given content types.
    Patch(&'static [&'static str]),
    /// Optional DeleteOptions.
    Delete,
}

struct Op<'a> {
    action: &'static str,
    id: String,
    description: String,
    query: &'static [Param],
    body: Option<Body<'a>>,
    /// Status codes with the definition of their body.
    responses: &'a [(&'static str, &'a str)],
    gvk: &'a Value,
}

fn status_text(code: &str) -> &'static str {
    match code {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted",
        _ => "Unauthorized",
    }
}

fn operation(flavor: Flavor, tag: &str, op: Op<'_>) -> Value {
    let mut o = Map::new();
    o.insert("tags".into(), json!([tag]));
    o.insert("description".into(), op.description.into());
    o.insert("operationId".into(), op.id.into());
    let mut params: Vec<Value> = Vec::new();
    match (flavor, &op.body) {
        (_, None) => {}
        (Flavor::V2, Some(body)) => {
            let (schema, consumes, required): (&str, &[&str], bool) = match body {
                Body::Object(def) => (def, &["*/*"], true),
                Body::Patch(types) => (PATCH, types, true),
                Body::Delete => (DELETE_OPTIONS, &["*/*"], false),
            };
            o.insert("consumes".into(), json!(consumes));
            let mut p = json!({ "in": "body", "name": "body", "schema": flavor.reference(schema) });
            if required {
                p["required"] = true.into();
            }
            params.push(p);
        }
        (Flavor::V3, Some(body)) => {
            let (schema, types, required): (&str, &[&str], bool) = match body {
                Body::Object(def) => (def, &["*/*"], true),
                Body::Patch(types) => (PATCH, types, true),
                Body::Delete => (DELETE_OPTIONS, &["*/*"], false),
            };
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({ "schema": flavor.reference(schema) })))
                .collect();
            let mut rb = json!({ "content": content });
            if required {
                rb["required"] = true.into();
            }
            o.insert("requestBody".into(), rb);
        }
    }
    params.extend(op.query.iter().map(|p| param(flavor, *p, "query", false)));
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    if flavor == Flavor::V2 {
        o.insert("produces".into(), json!(PRODUCES));
        o.insert("schemes".into(), json!(["https"]));
    }
    let mut responses = Map::new();
    for (code, def) in op.responses {
        let r = match flavor {
            Flavor::V2 => {
                json!({ "description": status_text(code), "schema": flavor.reference(def) })
            }
            Flavor::V3 => {
                let schema = flavor.reference(def);
                json!({
                    "description": status_text(code),
                    "content": {
                        "application/json": { "schema": schema },
                        "application/yaml": { "schema": schema },
                    },
                })
            }
        };
        responses.insert(code.to_string(), r);
    }
    responses.insert("401".into(), json!({ "description": "Unauthorized" }));
    o.insert("responses".into(), Value::Object(responses));
    o.insert("x-kubernetes-action".into(), op.action.into());
    o.insert("x-kubernetes-group-version-kind".into(), op.gvk.clone());
    Value::Object(o)
}

/// `apps` → `Apps`, `rbac.authorization.k8s.io` → `RbacAuthorization`, `""` → `Core`,
/// `stable.example.com` → `StableExampleCom` (operation ids).
pub(crate) fn group_id(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    let group = group.strip_suffix(".k8s.io").unwrap_or(group);
    group
        .split(['.', '-'])
        .map(capitalize)
        .collect::<Vec<_>>()
        .concat()
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// `core_v1`, `apps_v1`, `rbacAuthorization_v1` (operation tags).
fn tag(group: &str, version: &str) -> String {
    let id = group_id(group);
    let mut chars = id.chars();
    let first = chars.next().map(|c| c.to_ascii_lowercase()).unwrap_or('x');
    format!("{first}{}_{version}", chars.as_str())
}

/// URL prefix of a group version: `/api/v1`, `/apis/apps/v1`.
pub(crate) fn group_version_prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// Adds the paths of one kind to `paths`.
pub(crate) fn add_paths(paths: &mut Map<String, Value>, flavor: Flavor, k: &Kind) {
    let r = &k.resource;
    let has = |verb: &str| r.verbs.iter().any(|v| v == verb);
    let base = group_version_prefix(&r.group, &r.version);
    let gv = format!("{}{}", group_id(&r.group), capitalize(&r.version));
    let ns = if r.namespaced { "Namespaced" } else { "" };
    let kind = &r.kind;
    let tag = tag(&r.group, &r.version);
    let gvk = json!({ "group": r.group, "kind": r.kind, "version": r.version });
    let def = k.definition.as_str();
    let list_def = k.list_definition();
    let patch_types = if k.strategic_merge() {
        PATCH_TYPES_STRATEGIC
    } else {
        PATCH_TYPES
    };
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let item = format!("{collection}/{{name}}");
    let path_params = |name: bool| -> Value {
        let mut v = Vec::new();
        if name {
            let desc = format!("name of the {kind}");
            v.push(param(flavor, ("name", "string", &desc), "path", true));
        }
        if r.namespaced {
            v.push(param(
                flavor,
                (
                    "namespace",
                    "string",
                    "object name and auth scope, such as for teams and projects",
                ),
                "path",
                true,
            ));
        }
        v.push(param(flavor, P_PRETTY, "query", false));
        Value::Array(v)
    };
    let op = |o: Op<'_>| operation(flavor, &tag, o);

    // Collection: list, create, deletecollection.
    let mut ops = Map::new();
    if has("list") {
        ops.insert(
            "get".into(),
            op(Op {
                action: "list",
                id: format!("list{gv}{ns}{kind}"),
                description: format!("list or watch objects of kind {kind}"),
                query: LIST_PARAMS,
                body: None,
                responses: &[("200", &list_def)],
                gvk: &gvk,
            }),
        );
    }
    if has("create") {
        ops.insert(
            "post".into(),
            op(Op {
                action: "post",
                id: format!("create{gv}{ns}{kind}"),
                description: format!("create a {kind}"),
                query: WRITE_PARAMS,
                body: Some(Body::Object(def)),
                responses: &[("200", def), ("201", def), ("202", def)],
                gvk: &gvk,
            }),
        );
    }
    if has("deletecollection") {
        ops.insert(
            "delete".into(),
            op(Op {
                action: "deletecollection",
                id: format!("delete{gv}Collection{ns}{kind}"),
                description: format!("delete collection of {kind}"),
                query: DELETE_COLLECTION_PARAMS,
                body: Some(Body::Delete),
                responses: &[("200", STATUS)],
                gvk: &gvk,
            }),
        );
    }
    if !ops.is_empty() {
        ops.insert("parameters".into(), path_params(false));
        paths.insert(collection, Value::Object(ops));
    }

    // Listing across namespaces.
    if r.namespaced && has("list") {
        let mut ops = Map::new();
        ops.insert(
            "get".into(),
            op(Op {
                action: "list",
                id: format!("list{gv}{kind}ForAllNamespaces"),
                description: format!("list or watch objects of kind {kind}"),
                query: LIST_PARAMS,
                body: None,
                responses: &[("200", &list_def)],
                gvk: &gvk,
            }),
        );
        ops.insert(
            "parameters".into(),
            Value::Array(vec![param(flavor, P_PRETTY, "query", false)]),
        );
        paths.insert(format!("{base}/{}", r.plural), Value::Object(ops));
    }

    // Item and its status/scale subresources: read, replace, patch (and delete for the item).
    let scale_gvk = json!({ "group": "autoscaling", "kind": "Scale", "version": "v1" });
    let mut targets: Vec<(String, &str, &Value, &str)> = vec![(item.clone(), def, &gvk, "")];
    if r.has_subresource("status") {
        targets.push((format!("{item}/status"), def, &gvk, "Status"));
    }
    if r.has_subresource("scale") {
        targets.push((format!("{item}/scale"), SCALE, &scale_gvk, "Scale"));
    }
    for (path, target_def, target_gvk, suffix) in targets {
        let mut ops = Map::new();
        let what = if suffix.is_empty() {
            format!("the specified {kind}")
        } else {
            format!("{} of the specified {kind}", suffix.to_ascii_lowercase())
        };
        if has("get") {
            ops.insert(
                "get".into(),
                op(Op {
                    action: "get",
                    id: format!("read{gv}{ns}{kind}{suffix}"),
                    description: format!("read {what}"),
                    query: &[],
                    body: None,
                    responses: &[("200", target_def)],
                    gvk: target_gvk,
                }),
            );
        }
        if has("update") {
            ops.insert(
                "put".into(),
                op(Op {
                    action: "put",
                    id: format!("replace{gv}{ns}{kind}{suffix}"),
                    description: format!("replace {what}"),
                    query: WRITE_PARAMS,
                    body: Some(Body::Object(target_def)),
                    responses: &[("200", target_def), ("201", target_def)],
                    gvk: target_gvk,
                }),
            );
        }
        if suffix.is_empty() && has("delete") {
            ops.insert(
                "delete".into(),
                op(Op {
                    action: "delete",
                    id: format!("delete{gv}{ns}{kind}"),
                    description: format!("delete a {kind}"),
                    query: DELETE_PARAMS,
                    body: Some(Body::Delete),
                    responses: &[("200", STATUS), ("202", STATUS)],
                    gvk: target_gvk,
                }),
            );
        }
        if has("patch") {
            ops.insert(
                "patch".into(),
                op(Op {
                    action: "patch",
                    id: format!("patch{gv}{ns}{kind}{suffix}"),
                    description: format!("partially update {what}"),
                    query: PATCH_PARAMS,
                    body: Some(Body::Patch(patch_types)),
                    responses: &[("200", target_def), ("201", target_def)],
                    gvk: target_gvk,
                }),
            );
        }
        if !ops.is_empty() {
            ops.insert("parameters".into(), path_params(true));
            paths.insert(path, Value::Object(ops));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names() {
        assert_eq!(group_id(""), "Core");
        assert_eq!(group_id("apps"), "Apps");
        assert_eq!(group_id("rbac.authorization.k8s.io"), "RbacAuthorization");
        assert_eq!(group_id("cert-manager.io"), "CertManagerIo");
        assert_eq!(
            tag("rbac.authorization.k8s.io", "v1"),
            "rbacAuthorization_v1"
        );
        assert_eq!(tag("", "v1"), "core_v1");
    }
}
