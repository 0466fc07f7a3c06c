//! Subresources that create something: `pods/binding`, `serviceaccounts/token`, `pods/eviction`.
//! Shared by the HTTP layer and the in-process client.

use crate::objects::{self, Part, Query, Target};
use crate::state::Api;
use crate::status::{success_status, ApiError, Cause};
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
    // One write for spec and status: every watcher sees the bound pod once.
    let mut q = Query::new();
    q.insert("fieldManager".into(), "scheduler".into());
    objects::write_update(api, &pt, &old, kv.mod_revision, new, Part::Both, &q).await?;
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

/// The message upstream's eviction REST returns with 429 when a budget forbids the disruption
/// (`kubectl drain` prints it and retries).
const EVICTION_BLOCKED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Upstream's cap on `status.disruptedPods` (eviction refuses beyond it).
const MAX_DISRUPTED_PODS: usize = 2000;

/// `pods/eviction` (policy/v1 or v1beta1 `Eviction`): deletes the pod unless the one
/// PodDisruptionBudget selecting it allows no disruption (429 TooManyRequests); otherwise takes
/// one disruption from the budget's status (recording the pod in `disruptedPods`, with optimistic
/// concurrency) and deletes the pod with the Eviction's `deleteOptions`.
pub async fn evict_pod(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    eviction: &Value,
    q: &Query,
) -> Result<Value, ApiError> {
    if let Some(n) = eviction
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        if n != name {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object: {name} != {n}"
            )));
        }
    }
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All")
        || eviction
            .pointer("/deleteOptions/dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    let opts = eviction_delete_options(eviction)?;
    let pods = api
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods not registered"))?;
    let pod_target = Target {
        rt: &pods,
        namespace: t.namespace,
        name: Some(name),
    };
    let namespace = t.namespace.unwrap_or("default");
    for _ in 0..5 {
        let pod = objects::get(api, &pod_target, name).await?;
        if can_ignore_budget(&pod) {
            return delete_evicted(api, &pod_target, name, &opts, q, dry_run).await;
        }
        let budgets = matching_budgets(api, namespace, &pod).await?;
        let Some((pdb, pdb_rev)) = (match budgets.len() {
            0 => None,
            1 => budgets.into_iter().next(),
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ))
            }
        }) else {
            return delete_evicted(api, &pod_target, name, &opts, q, dry_run).await;
        };
        let status = &pdb["status"];
        let healthy = status["currentHealthy"].as_i64().unwrap_or(0);
        let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
        // An unready pod does not count toward the budget: evicting it is free while the budget
        // is met (IfHealthyBudget, the default), or always (AlwaysAllow).
        if !pod_ready(&pod) {
            let policy = pdb
                .pointer("/spec/unhealthyPodEvictionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("IfHealthyBudget");
            if policy == "AlwaysAllow" || healthy >= desired {
                return delete_evicted(api, &pod_target, name, &opts, q, dry_run).await;
            }
        }
        let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("").to_string();
        if status["observedGeneration"].as_i64().unwrap_or(0)
            < pdb["metadata"]["generation"].as_i64().unwrap_or(0)
        {
            return Err(too_many_requests(format!(
                "The disruption budget {pdb_name} is still being processed by the server."
            )));
        }
        let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed < 0 {
            return Err(ApiError::forbidden("pdb disruptions allowed is negative"));
        }
        let disrupted = status["disruptedPods"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if disrupted.len() > MAX_DISRUPTED_PODS {
            return Err(ApiError::forbidden(
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            return Err(too_many_requests(format!(
                "The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
            )));
        }
        if dry_run {
            return delete_evicted(api, &pod_target, name, &opts, q, true).await;
        }
        let mut updated = pdb.clone();
        updated["status"]["disruptionsAllowed"] = json!(allowed - 1);
        let mut disrupted = disrupted;
        disrupted.insert(name.to_string(), json!(crate::meta::now_rfc3339()));
        updated["status"]["disruptedPods"] = Value::Object(disrupted);
        if allowed - 1 == 0 {
            set_condition(
                &mut updated,
                json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods",
                       "message": "", "observedGeneration": pdb["metadata"]["generation"]}),
            );
        }
        let pdbs = api
            .find("policy", "v1", "poddisruptionbudgets")
            .ok_or_else(|| ApiError::internal("poddisruptionbudgets not registered"))?;
        let pdb_target = Target {
            rt: &pdbs,
            namespace: Some(namespace),
            name: Some(&pdb_name),
        };
        let mut wq = Query::new();
        wq.insert("fieldManager".into(), "eviction".into());
        match objects::write_update(api, &pdb_target, &pdb, pdb_rev, updated, Part::Status, &wq)
            .await
        {
            Ok(_) => return delete_evicted(api, &pod_target, name, &opts, q, false).await,
            // Someone else took a disruption or the controller rewrote the status: decide again.
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(too_many_requests(
        "the disruption budget was changed too often; try again".into(),
    ))
}

/// 429 with upstream's eviction message; the cause says which budget and why.
fn too_many_requests(cause: String) -> ApiError {
    let mut e = ApiError::too_many_requests(EVICTION_BLOCKED, 0);
    if let Some(d) = e.details.as_mut() {
        d.causes.push(Cause {
            reason: "DisruptionBudget".into(),
            message: cause,
            field: String::new(),
        });
    }
    e
}

/// Upstream's `canIgnorePDB`: a pod that is finished, not yet running, or already being deleted
/// disrupts nothing.
fn can_ignore_budget(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    matches!(phase, "Succeeded" | "Failed" | "Pending")
        || !pod["metadata"]["deletionTimestamp"].is_null()
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn set_condition(obj: &mut Value, cond: Value) {
    let now = crate::meta::now_rfc3339();
    let mut conds: Vec<Value> = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conds.iter_mut().find(|c| c["type"] == cond["type"]) {
        Some(c) => {
            let transition = if c["status"] == cond["status"] {
                c["lastTransitionTime"].clone()
            } else {
                json!(now)
            };
            *c = cond;
            c["lastTransitionTime"] = transition;
        }
        None => {
            let mut c = cond;
            c["lastTransitionTime"] = json!(now);
            conds.push(c);
        }
    }
    obj["status"]["conditions"] = json!(conds);
}

/// The budgets in the pod's namespace whose selector matches it (policy/v1: an empty selector
/// matches every pod), with their store revisions.
async fn matching_budgets(
    api: &Api,
    namespace: &str,
    pod: &Value,
) -> Result<Vec<(Value, i64)>, ApiError> {
    let Some(pdbs) = api.find("policy", "v1", "poddisruptionbudgets") else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}{}/", pdbs.storage_prefix(), namespace);
    let kvs = api.store.list(&prefix, None, None, None).await?;
    let labels = pod["metadata"]["labels"].as_object();
    let mut out = Vec::new();
    for kv in kvs.items {
        let pdb = crate::meta::decode_from_store(&kv.value, kv.mod_revision);
        let Some(sel) = pdb.pointer("/spec/selector") else {
            continue;
        };
        let Ok(sel) = crate::selectors::LabelSelector::from_object(sel) else {
            continue;
        };
        if sel.matches_labels(labels) {
            out.push((pdb, kv.mod_revision));
        }
    }
    Ok(out)
}

fn eviction_delete_options(eviction: &Value) -> Result<objects::DeleteOptions, ApiError> {
    let d = &eviction["deleteOptions"];
    let mut o = objects::DeleteOptions {
        propagation: d["propagationPolicy"].as_str().map(String::from),
        grace_period: d["gracePeriodSeconds"].as_i64(),
        precondition_uid: d
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        precondition_rv: d
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
    };
    if d["orphanDependents"] == json!(true) {
        o.propagation = Some("Orphan".into());
    }
    Ok(o)
}

async fn delete_evicted(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    opts: &objects::DeleteOptions,
    q: &Query,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if dry_run {
        let mut dq = q.clone();
        dq.insert("dryRun".into(), "All".into());
        objects::delete(api, t, name, opts, &dq).await?;
    } else {
        objects::delete(api, t, name, opts, q).await?;
    }
    Ok(success_status(None))
}
