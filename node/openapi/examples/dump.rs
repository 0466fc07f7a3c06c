//! Writes the generated documents (and plain discovery for the built-in resources) under a
//! directory, laid out by URL path, so a throwaway HTTP server can show them to real kubectl:
//! `cargo run -p k3rs-openapi --example dump -- /tmp/openapi`.

use std::path::Path;

use k3rs_openapi::OpenApi;
use k3rs_resources::builtin_resources;
use serde_json::{json, Value};

fn write(root: &Path, url: &str, bytes: &[u8]) {
    let path = root.join(url.trim_start_matches('/')).join("index");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "openapi-dump".into());
    let root = Path::new(&root);
    let resources = builtin_resources();
    let api = OpenApi::build(&resources, &[]);
    write(root, "/openapi/v3", api.v3_index().to_string().as_bytes());
    for path in api.v3_index()["paths"].as_object().unwrap().keys() {
        let (doc, _) = api.v3_document(path).unwrap();
        write(root, &format!("/openapi/v3/{path}"), &doc);
    }
    write(root, "/openapi/v2", &api.v2_json());
    write(root, "/openapi/v2.pb", &api.v2_protobuf());

    let mut groups: Vec<(String, String)> = Vec::new();
    for r in &resources {
        let gv = (r.group.clone(), r.version.clone());
        if !groups.contains(&gv) {
            groups.push(gv);
        }
    }
    let mut group_list: Vec<Value> = Vec::new();
    for (group, version) in &groups {
        let list: Vec<Value> = resources
            .iter()
            .filter(|r| &r.group == group && &r.version == version)
            .map(|r| {
                json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                       "kind": r.kind, "verbs": r.verbs, "shortNames": r.short_names})
            })
            .collect();
        let gv = if group.is_empty() {
            version.clone()
        } else {
            format!("{group}/{version}")
        };
        let url = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{gv}")
        };
        let body = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list});
        write(root, &url, body.to_string().as_bytes());
        if !group.is_empty() {
            let v = json!({"groupVersion": gv, "version": version});
            match group_list.iter_mut().find(|g| g["name"] == group.as_str()) {
                Some(g) => g["versions"].as_array_mut().unwrap().push(v),
                None => {
                    group_list.push(json!({"name": group, "versions": [v], "preferredVersion": v}))
                }
            }
        }
    }
    let apis = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": group_list});
    write(root, "/apis", apis.to_string().as_bytes());
    let core = json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]});
    write(root, "/api", core.to_string().as_bytes());
}
