use std::time::Instant;

use k3rs_resources::{builtin_resources, ResourceType};
use serde_json::{json, Value};

use super::*;
use crate::gnostic::decode;

fn api() -> OpenApi {
    OpenApi::build(&builtin_resources(), &[])
}

fn v3(api: &OpenApi, path: &str) -> Value {
    let (bytes, hash) = api.v3_document(path).expect(path);
    assert_eq!(hash.len(), 128);
    serde_json::from_slice(&bytes).unwrap()
}

fn crontab() -> (ResourceType, Value) {
    let r = ResourceType {
        group: "stable.example.com".into(),
        version: "v1".into(),
        kind: "CronTab".into(),
        plural: "crontabs".into(),
        singular: "crontab".into(),
        namespaced: true,
        short_names: vec!["ct".into()],
        categories: vec![],
        subresources: vec!["status".into()],
        verbs: k3rs_resources::ALL_VERBS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        stored: true,
    };
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "cronSpec": { "type": "string" },
                    "replicas": { "type": "integer", "nullable": true },
                    "port": { "x-kubernetes-int-or-string": true, "anyOf": [{ "type": "integer" }, { "type": "string" }] },
                    "tags": { "type": "array", "items": { "type": "string" } },
                },
            },
        },
    });
    (r, schema)
}

#[test]
fn index_lists_group_versions_with_hashes() {
    let api = api();
    let index = api.v3_index();
    let paths = index["paths"].as_object().unwrap();
    for p in [
        "api/v1",
        "apis/apps/v1",
        "apis/batch/v1",
        "apis/autoscaling/v2",
    ] {
        let url = paths[p]["serverRelativeURL"].as_str().unwrap();
        let (_, hash) = api.v3_document(p).unwrap();
        assert_eq!(url, format!("/openapi/v3/{p}?hash={hash}"));
    }
    // Same inputs, same hashes; different inputs, different hash.
    assert_eq!(OpenApi::build(&builtin_resources(), &[]).v3_index(), index);
    let with_crd = OpenApi::build(&builtin_resources(), &[crontab()]).v3_index();
    assert!(with_crd["paths"]["apis/stable.example.com/v1"].is_object());
    assert_eq!(
        with_crd["paths"]["apis/apps/v1"],
        index["paths"]["apis/apps/v1"]
    );
    assert!(api.v3_document("/apis/apps/v1?hash=x").is_some());
    assert!(api.v3_document("apis/nope/v1").is_none());
}

#[test]
fn apps_v1_deployment_schema() {
    let doc = v3(&api(), "apis/apps/v1");
    assert_eq!(doc["openapi"], "3.0.0");
    let schemas = &doc["components"]["schemas"];
    let d = &schemas["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        d["x-kubernetes-group-version-kind"],
        json!([{ "group": "apps", "kind": "Deployment", "version": "v1" }])
    );
    assert_eq!(
        schemas["io.k8s.api.apps.v1.DeploymentList"]["x-kubernetes-group-version-kind"],
        json!([{ "group": "apps", "kind": "DeploymentList", "version": "v1" }])
    );
    // $ref with siblings is wrapped in allOf (OpenAPI 3.0 ignores $ref siblings).
    assert_eq!(
        d["properties"]["metadata"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(
        containers["items"]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.Container"
    );
    let ios = &schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
    assert_eq!(ios["type"], "string");
    assert_eq!(ios["format"], "int-or-string");
    assert_eq!(
        schemas["io.k8s.apimachinery.pkg.api.resource.Quantity"]["type"],
        "string"
    );
    let time = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Time"];
    assert_eq!(
        (time["type"].as_str(), time["format"].as_str()),
        (Some("string"), Some("date-time"))
    );
    assert_eq!(
        schemas["io.k8s.api.autoscaling.v1.Scale"]["x-kubernetes-group-version-kind"][0]["kind"],
        "Scale"
    );
    // Every reference resolves inside the document.
    let text = serde_json::to_string(&doc).unwrap();
    for r in text.split("\"$ref\":\"").skip(1) {
        let name = r.split('"').next().unwrap();
        let name = name.strip_prefix("#/components/schemas/").expect(name);
        assert!(schemas.get(name).is_some(), "dangling {name}");
    }
}

#[test]
fn apps_v1_patch_operation_for_kubectl_apply() {
    let doc = v3(&api(), "apis/apps/v1");
    let item = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
    let patch = &item["patch"];
    assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
    assert_eq!(patch["x-kubernetes-action"], "patch");
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({ "group": "apps", "kind": "Deployment", "version": "v1" })
    );
    let names: Vec<&str> = patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for n in ["dryRun", "fieldManager", "fieldValidation", "force"] {
        assert!(names.contains(&n), "{n} missing");
    }
    let content = patch["requestBody"]["content"].as_object().unwrap();
    for t in [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ] {
        assert!(content.contains_key(t), "{t}");
    }
    for m in ["get", "put", "delete"] {
        assert!(item[m].is_object(), "{m}");
    }
    let coll = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"];
    assert_eq!(coll["get"]["operationId"], "listAppsV1NamespacedDeployment");
    assert_eq!(
        coll["post"]["operationId"],
        "createAppsV1NamespacedDeployment"
    );
    assert_eq!(
        coll["delete"]["operationId"],
        "deleteAppsV1CollectionNamespacedDeployment"
    );
    assert_eq!(
        doc["paths"]["/apis/apps/v1/deployments"]["get"]["operationId"],
        "listAppsV1DeploymentForAllNamespaces"
    );
    let scale = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
    assert_eq!(
        scale["patch"]["operationId"],
        "patchAppsV1NamespacedDeploymentScale"
    );
    assert_eq!(
        scale["patch"]["x-kubernetes-group-version-kind"]["kind"],
        "Scale"
    );
    let status = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status"];
    assert_eq!(
        status["get"]["operationId"],
        "readAppsV1NamespacedDeploymentStatus"
    );
}

#[test]
fn core_v1_paths() {
    let doc = v3(&api(), "api/v1");
    let paths = &doc["paths"];
    assert_eq!(
        paths["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"]["operationId"],
        "patchCoreV1NamespacedConfigMap"
    );
    assert_eq!(
        paths["/api/v1/nodes/{name}"]["patch"]["operationId"],
        "patchCoreV1Node"
    );
    // Namespaces have no deletecollection.
    assert!(paths["/api/v1/namespaces"]["delete"].is_null());
    // Virtual create-only kinds: only POST on the collection.
    assert!(paths["/api/v1/namespaces/{namespace}/bindings"]["post"].is_object());
    assert!(paths["/api/v1/namespaces/{namespace}/bindings/{name}"].is_null());
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["io.k8s.api.core.v1.ConfigMap"]["x-kubernetes-group-version-kind"],
        json!([{ "group": "", "kind": "ConfigMap", "version": "v1" }])
    );
    let env = &schemas["io.k8s.api.core.v1.Container"]["properties"]["env"];
    assert_eq!(env["x-kubernetes-patch-merge-key"], "name");
}

#[test]
fn crd_schema_in_its_group_version() {
    let api = OpenApi::build(&builtin_resources(), &[crontab()]);
    let doc = v3(&api, "apis/stable.example.com/v1");
    let schemas = &doc["components"]["schemas"];
    let ct = &schemas["com.example.stable.v1.CronTab"];
    assert_eq!(
        ct["x-kubernetes-group-version-kind"],
        json!([{ "group": "stable.example.com", "kind": "CronTab", "version": "v1" }])
    );
    assert_eq!(
        ct["properties"]["spec"]["properties"]["cronSpec"]["type"],
        "string"
    );
    assert_eq!(
        ct["properties"]["metadata"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
    assert!(schemas["com.example.stable.v1.CronTabList"].is_object());
    let patch = &doc["paths"]["/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}"]
        ["patch"];
    assert_eq!(
        patch["operationId"],
        "patchStableExampleComV1NamespacedCronTab"
    );
    // Custom resources take no strategic merge patch (as upstream).
    let content = patch["requestBody"]["content"].as_object().unwrap();
    assert!(!content.contains_key("application/strategic-merge-patch+json"));
    assert!(content.contains_key("application/merge-patch+json"));
}

#[test]
fn v2_json_has_definitions_and_paths() {
    let api = OpenApi::build(&builtin_resources(), &[crontab()]);
    let doc: Value = serde_json::from_slice(&api.v2_json()).unwrap();
    assert_eq!(doc["swagger"], "2.0");
    let defs = doc["definitions"].as_object().unwrap();
    assert!(defs.len() > 300, "{}", defs.len());
    let d = &defs["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        d["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );
    assert_eq!(
        d["properties"]["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert!(patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
    assert_eq!(patch["parameters"][0]["in"], "body");
    // CRD schema made v2-safe: no anyOf / nullable.
    let port = &defs["com.example.stable.v1.CronTab"]["properties"]["spec"]["properties"]["port"];
    assert!(port.get("anyOf").is_none());
    // Every reference resolves.
    let text = String::from_utf8(api.v2_json().to_vec()).unwrap();
    for r in text.split("\"$ref\":\"").skip(1) {
        let name = r.split('"').next().unwrap();
        let name = name.strip_prefix("#/definitions/").expect(name);
        assert!(defs.contains_key(name), "dangling {name}");
    }
    // Only types kubectl's v2 model parser accepts.
    for (name, def) in defs {
        let mut def = def.clone();
        schemas::walk_schema(&mut def, &mut |o| {
            if let Some(t) = o.get("type") {
                let t = t.as_str().unwrap_or_else(|| panic!("{name}: type {t}"));
                assert!(
                    ["object", "array", "string", "integer", "number", "boolean"].contains(&t),
                    "{name}: {t}"
                );
                if t == "array" {
                    assert!(o.get("items").is_some_and(Value::is_object), "{name}");
                }
            }
        });
    }
}

#[test]
fn v2_protobuf_decodes() {
    let api = api();
    let pb = api.v2_protobuf();
    let doc = decode::fields(&pb);
    assert_eq!(decode::string(&doc, 1), "2.0");
    // definitions (9) → NamedSchema (1) → find Deployment.
    let defs = decode::fields(decode::bytes(&doc, 9)[0]);
    let named: Vec<_> = decode::bytes(&defs, 1)
        .into_iter()
        .map(decode::fields)
        .collect();
    let deployment = named
        .iter()
        .find(|n| decode::string(n, 1) == "io.k8s.api.apps.v1.Deployment")
        .expect("Deployment definition");
    let schema = decode::fields(decode::bytes(deployment, 2)[0]);
    // vendor_extension (31): NamedAny{name, Any{yaml}}.
    let ext = decode::fields(decode::bytes(&schema, 31)[0]);
    assert_eq!(decode::string(&ext, 1), "x-kubernetes-group-version-kind");
    let yaml = decode::string(&decode::fields(decode::bytes(&ext, 2)[0]), 2);
    let gvk: Value = serde_json::from_str(yaml).unwrap();
    assert_eq!(gvk[0]["group"], "apps");
    // type (22) = TypeItem{"object"}.
    assert_eq!(
        decode::string(&decode::fields(decode::bytes(&schema, 22)[0]), 1),
        "object"
    );
    // paths (8) → NamedPathItem (2) → PathItem.patch (8) → parameters with fieldValidation.
    let paths = decode::fields(decode::bytes(&doc, 8)[0]);
    let item = decode::bytes(&paths, 2)
        .into_iter()
        .map(decode::fields)
        .find(|n| decode::string(n, 1) == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        .expect("deployment path");
    let path_item = decode::fields(decode::bytes(&item, 2)[0]);
    let patch = decode::fields(decode::bytes(&path_item, 8)[0]);
    assert_eq!(decode::string(&patch, 5), "patchAppsV1NamespacedDeployment");
    let has_field_validation = decode::bytes(&patch, 8).into_iter().any(|pi| {
        let param = decode::fields(decode::bytes(&decode::fields(pi), 1)[0]);
        let non_body = decode::bytes(&param, 2);
        non_body.first().is_some_and(|nb| {
            let q = decode::bytes(&decode::fields(nb), 3);
            q.first()
                .is_some_and(|q| decode::string(&decode::fields(q), 4) == "fieldValidation")
        })
    });
    assert!(has_field_validation);
}

#[test]
fn build_time_and_sizes() {
    let resources = builtin_resources();
    let t = Instant::now();
    let api = OpenApi::build(&resources, &[crontab()]);
    let index_time = t.elapsed();
    let mut total = 0;
    let t = Instant::now();
    let mut sizes = Vec::new();
    for path in api.v3_index()["paths"].as_object().unwrap().keys() {
        let t1 = Instant::now();
        let (doc, _) = api.v3_document(path).unwrap();
        sizes.push(format!("{path}={}B/{:?}", doc.len(), t1.elapsed()));
        total += doc.len();
    }
    let v3_time = t.elapsed();
    let t = Instant::now();
    let v2 = api.v2_json();
    let v2_time = t.elapsed();
    let t = Instant::now();
    let pb = api.v2_protobuf();
    let pb_time = t.elapsed();
    println!("build (index only): {index_time:?}");
    println!("v3 all {} docs: {v3_time:?}, {total} bytes", sizes.len());
    println!("  {}", sizes.join("\n  "));
    println!("v2 json: {v2_time:?}, {} bytes", v2.len());
    println!("v2 protobuf: {pb_time:?}, {} bytes", pb.len());
}
