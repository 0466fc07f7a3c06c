//! Subresources that create something: `pods/binding`, `serviceaccounts/token`, `pods/eviction`.
//! Shared by the HTTP layer and the in-process client.

use crate::objects::{self, Part, Query, Target};
use crate::state::Api;
use crate::status::{success_status, ApiError};
use serde_json::{json, Value};

/// `pods/binding`: sets spec.nodeName once, as the scheduler does.
pub async fn bind_pod(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    binding: &Value,
) -> Result<Value, ApiError> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::bad_request("binding target name is required"));
    }
    let pods = api
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods not registered"))?;
    let pt = Target {
        rt: &pods,
        namespace: t.namespace,
        name: Some(name),
    };
    let key = pods.storage_key(t.namespace, name);
    let kv = api
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found("", "pods", name))?;
    let old = crate::meta::decode_from_store(&kv.value, kv.mod_revision);
    if old
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        return Err(ApiError::conflict_message(
            "",
            "pods",
            name,
            format!(
                "pod {name} is already assigned to node {:?}",
                old["spec"]["nodeName"].as_str().unwrap_or("")
            ),
        ));
    }
    let mut new = old.clone();
    new["spec"]["nodeName"] = json!(node);
    let now = crate::meta::now_rfc3339();
    let conds = new["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conds: Vec<Value> = conds
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
    new["status"]["conditions"] = json!(conds);
    objects::set_type_meta(&pods, &mut new);
    // Binding changes spec and status at once; write through the status path after the spec.
    let mut q = Query::new();
    q.insert("fieldManager".into(), "scheduler".into());
    let mut spec_only = new.clone();
    spec_only["status"] = old["status"].clone();
    let w =
        objects::write_update(api, &pt, &old, kv.mod_revision, spec_only, Part::Main, &q).await?;
    let rev: i64 = crate::meta::resource_version(&w.object)
        .and_then(|r| r.parse().ok())
        .unwrap_or(kv.mod_revision);
    objects::write_update(api, &pt, &w.object, rev, new, Part::Status, &q).await?;
    Ok(success_status(None))
}

/// `serviceaccounts/<name>/token`: a signed, audience-bound, expiring token.
pub async fn token_request(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    req: Value,
) -> Result<Value, ApiError> {
    let keys = api
        .auth
        .service_accounts
        .as_ref()
        .ok_or_else(|| ApiError::internal("service account signing is not configured"))?;
    let sa = objects::get(api, t, name).await?;
    let expiration = req
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if expiration < 600 {
        return Err(ApiError::bad_request("spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes"));
    }
    let now = chrono::Utc::now().timestamp();
    let audiences: Vec<String> = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| {
            vec![
                "https://kubernetes.default.svc.cluster.local".into(),
                "k3s".into(),
            ]
        });
    let pod = req
        .pointer("/spec/boundObjectRef")
        .filter(|r| r["kind"] == "Pod")
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["uid"].as_str().unwrap_or("").to_string(),
            )
        });
    let claims = k3rs_pki::SaClaims {
        namespace: t.namespace.unwrap_or("default").to_string(),
        service_account: name.to_string(),
        service_account_uid: crate::meta::uid(&sa).unwrap_or("").to_string(),
        audiences: audiences.clone(),
        expires_unix: now + expiration,
        issued_unix: now,
        pod,
    };
    let token = keys
        .issue(&claims)
        .map_err(|e| ApiError::internal(format!("signing token: {e}")))?;
    let expires = chrono::DateTime::from_timestamp(now + expiration, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    Ok(json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": t.namespace, "creationTimestamp": null},
            "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": req.pointer("/spec/boundObjectRef").cloned().unwrap_or(Value::Null)},
            "status": {"token": token, "expirationTimestamp": expires},
    }))
}
