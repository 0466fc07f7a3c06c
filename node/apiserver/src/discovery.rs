//! Discovery documents: `/api`, `/apis`, per group and group-version, and aggregated discovery
//! (apidiscovery.k8s.io v2 and v2beta1) that lets kubectl learn everything in two requests.

use crate::state::{Api, ServerInfo};
use k3rs_resources::{ResourceType, GROUP_ORDER};
use serde_json::{json, Value};
use std::sync::Arc;

fn address(info: &ServerInfo) -> Value {
    json!([{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("{}:{}", info.advertise_ip, info.port)}])
}

pub fn api_versions(info: &ServerInfo) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": address(info)})
}

/// Groups (excluding core) with their versions, preferred first, in upstream's order; CRD groups last.
fn groups(types: &[Arc<ResourceType>]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (g, versions) in GROUP_ORDER {
        if g.is_empty() {
            continue;
        }
        let vs: Vec<String> = versions
            .iter()
            .filter(|v| types.iter().any(|t| t.group == *g && t.version == **v))
            .map(|v| v.to_string())
            .collect();
        if !vs.is_empty() {
            out.push((g.to_string(), vs));
        }
    }
    for t in types {
        if t.group.is_empty() || GROUP_ORDER.iter().any(|(g, _)| *g == t.group) {
            continue;
        }
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) if !vs.contains(&t.version) => vs.push(t.version.clone()),
            Some(_) => {}
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(json!({}))})
}

pub fn api_group_list(api: &Api) -> Value {
    let index = api.resources.read().expect("resource index lock");
    let groups: Vec<Value> = groups(&index.types)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(api: &Api, group: &str) -> Option<Value> {
    let index = api.resources.read().expect("resource index lock");
    groups(&index.types)
        .iter()
        .find(|(g, _)| g == group)
        .map(|(g, vs)| {
            let mut v = group_json(g, vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            v
        })
}

fn subresource_verbs(
    sub: &str,
) -> (
    &'static [&'static str],
    Option<(&'static str, &'static str, &'static str)>,
) {
    match sub {
        "status" => (&["get", "patch", "update"], None),
        "scale" => (
            &["get", "patch", "update"],
            Some(("autoscaling", "v1", "Scale")),
        ),
        "log" => (&["get"], Some(("", "v1", "Pod"))),
        "exec" | "attach" | "portforward" => {
            (&["create", "get"], Some(("", "v1", "PodExecOptions")))
        }
        "eviction" => (&["create"], Some(("policy", "v1", "Eviction"))),
        "binding" => (&["create"], Some(("", "v1", "Binding"))),
        "token" => (
            &["create"],
            Some(("authentication.k8s.io", "v1", "TokenRequest")),
        ),
        "proxy" => (&["create", "delete", "get", "patch", "update"], None),
        "ephemeralcontainers" | "resize" => (&["get", "patch", "update"], None),
        "finalize" => (&["update"], None),
        "approval" => (&["get", "patch", "update"], None),
        _ => (&["get"], None),
    }
}

pub fn resource_list(api: &Api, group: &str, version: &str) -> Option<Value> {
    let index = api.resources.read().expect("resource index lock");
    let types: Vec<&Arc<ResourceType>> = index
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in types {
        let mut r = json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
                           "kind": t.kind, "verbs": t.verbs});
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        for sub in &t.subresources {
            let (verbs, kind) = subresource_verbs(sub);
            let mut s = json!({"name": format!("{}/{}", t.plural, sub), "singularName": "", "namespaced": t.namespaced,
                               "kind": kind.map(|k| k.2).unwrap_or(&t.kind), "verbs": verbs});
            if let Some((g, v, _)) = kind {
                if g != t.group || v != t.version {
                    s["group"] = json!(g);
                    s["version"] = json!(v);
                }
            }
            resources.push(s);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// Which aggregated discovery version the Accept header asks for, if any.
pub fn aggregated_version(accept: &str) -> Option<&'static str> {
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        if params.contains(&"as=APIGroupDiscoveryList") && params.contains(&"g=apidiscovery.k8s.io")
        {
            if params.contains(&"v=v2") {
                return Some("v2");
            }
            if params.contains(&"v=v2beta1") {
                return Some("v2beta1");
            }
        } else if params
            .first()
            .is_some_and(|m| *m == "application/json" || *m == "*/*")
            && params.len() == 1
        {
            return None;
        }
    }
    None
}

fn discovery_resources(types: &[&Arc<ResourceType>]) -> Vec<Value> {
    types
        .iter()
        .map(|t| {
            let mut r = json!({
                "resource": t.plural,
                "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": t.singular,
                "verbs": t.verbs,
            });
            if !t.short_names.is_empty() {
                r["shortNames"] = json!(t.short_names);
            }
            if !t.categories.is_empty() {
                r["categories"] = json!(t.categories);
            }
            let subs: Vec<Value> = t
                .subresources
                .iter()
                .map(|sub| {
                    let (verbs, kind) = subresource_verbs(sub);
                    let (g, v, k) = kind.unwrap_or((&t.group, &t.version, &t.kind));
                    json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": verbs})
                })
                .collect();
            if !subs.is_empty() {
                r["subresources"] = Value::Array(subs);
            }
            r
        })
        .collect()
}

/// APIGroupDiscoveryList for `/api` (legacy = true) or `/apis`.
pub fn aggregated(api: &Api, legacy: bool, version: &str) -> Value {
    let index = api.resources.read().expect("resource index lock");
    let group_versions: Vec<(String, Vec<String>)> = if legacy {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        groups(&index.types)
    };
    let items: Vec<Value> = group_versions
        .iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let types: Vec<&Arc<ResourceType>> = index.types.iter().filter(|t| t.group == *g && t.version == *v).collect();
                    json!({"version": v, "resources": discovery_resources(&types), "freshness": "Current"})
                })
                .collect();
            let mut meta = json!({"creationTimestamp": null});
            if !g.is_empty() {
                meta["name"] = json!(g);
            }
            json!({"metadata": meta, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_negotiation() {
        assert_eq!(aggregated_version("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"), Some("v2"));
        assert_eq!(aggregated_version("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"), Some("v2beta1"));
        assert_eq!(aggregated_version("application/json, */*"), None);
    }
}
