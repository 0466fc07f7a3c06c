//! Upstream's ResourceQuota admission: a create that would take a quota's `status.used` past its
//! `status.hard` is Forbidden; otherwise the usage is charged to the quota before the object is
//! stored. The charge is a status write of the quota at the revision it was read at, so two
//! concurrent creates cannot both take the last unit: the loser re-reads and re-checks. The
//! quota controller (k3rs-controllers) recalculates `status.used` from the objects, which is what
//! gives quota back when objects go away.

use crate::meta;
use crate::objects::Target;
use crate::state::Api;
use crate::status::ApiError;
use k3rs_resources::quota::{
    add, exceeded, list_to_json, mask, matching_resources, parse_list, pod_constraints, pretty,
    quota_matches, usage,
};
use k3rs_store::Error as StoreError;
use serde_json::Value;

/// Conflicting charges are retried this many times before the create fails (upstream retries
/// its quota update a few times, then reports a conflict too).
const ATTEMPTS: usize = 16;

fn resource_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// Checks `obj` against every quota of its namespace and charges it.
pub async fn charge_create(api: &Api, t: &Target<'_>, obj: &Value) -> Result<(), ApiError> {
    let Some(namespace) = t.namespace.filter(|_| t.rt.namespaced) else {
        return Ok(());
    };
    let (group, plural) = (t.rt.group.as_str(), t.rt.plural.as_str());
    let name = meta::name(obj).unwrap_or_default().to_string();
    let forbidden = |message: String| {
        ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: {message}",
            resource_name(group, plural)
        ))
    };
    let delta = usage(group, plural, obj);
    let prefix = format!("/registry/core/resourcequotas/{namespace}/");
    for _ in 0..ATTEMPTS {
        let quotas = api.store.list(&prefix, None, None, None).await?;
        let mut charges = Vec::new();
        for kv in &quotas.items {
            let mut quota = meta::decode_from_store(&kv.value, kv.mod_revision);
            let quota_name = meta::name(&quota).unwrap_or_default().to_string();
            let hard = parse_list(&quota["status"]["hard"]);
            if !quota_matches(&quota, &hard, group, plural, obj) {
                continue;
            }
            let restricted: Vec<&String> = matching_resources(group, plural, &hard);
            if group.is_empty() && plural == "pods" {
                pod_constraints(&restricted, obj)
                    .map_err(|e| forbidden(format!("failed quota: {quota_name}: {e}")))?;
            }
            let used = parse_list(&quota["status"]["used"]);
            if restricted.iter().any(|r| !used.contains_key(*r)) {
                let names: Vec<&str> = restricted.iter().map(|s| s.as_str()).collect();
                return Err(forbidden(format!(
                    "status unknown for quota: {quota_name}, resources: {}",
                    names.join(",")
                )));
            }
            let requested = mask(&delta, hard.keys());
            if requested.is_empty() {
                continue;
            }
            let new_used = add(&used, &requested);
            let over = exceeded(&mask(&new_used, requested.keys()), &hard);
            if !over.is_empty() {
                return Err(forbidden(format!(
                    "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                    pretty(&mask(&requested, &over)),
                    pretty(&mask(&used, &over)),
                    pretty(&mask(&hard, &over)),
                )));
            }
            quota["status"]["used"] = list_to_json(&new_used);
            charges.push((kv.key.clone(), kv.mod_revision, quota));
        }
        let mut conflict = false;
        for (key, revision, quota) in charges {
            match api
                .store
                .update(&key, meta::encode_for_store(&quota), Some(revision))
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound) => {
                    conflict = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !conflict {
            return Ok(());
        }
        // Another writer charged (or the controller recalculated) first: check again.
        tracing::debug!(%namespace, "quota charge conflicted, retrying");
    }
    Err(ApiError::conflict_message(
        "",
        "resourcequotas",
        namespace,
        format!(
            "Operation cannot be fulfilled on resourcequotas: too many conflicting quota updates for {} \"{name}\"",
            resource_name(group, plural)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use crate::local_client::LocalClient;
    use k3rs_client::{Client, Resource};
    use serde_json::json;
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_creates_never_exceed_the_quota() {
        let client: Arc<dyn Client> = LocalClient::in_memory().await.unwrap();
        let quotas = Resource::core("resourcequotas");
        let q = client
            .create(
                &quotas,
                Some("default"),
                json!({"apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": "q"}, "spec": {"hard": {"pods": "3", "requests.cpu": "1"}}}),
                "test",
            )
            .await
            .unwrap();
        let mut with_status = q.clone();
        with_status["status"] = json!({"hard": {"pods": "3", "requests.cpu": "1"}, "used": {"pods": "0", "requests.cpu": "0"}});
        client
            .replace(
                &quotas,
                Some("default"),
                "q",
                with_status,
                Some("status"),
                "test",
            )
            .await
            .unwrap();
        let pods = Resource::core("pods");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let client = client.clone();
            let pods = pods.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .create(
                        &pods,
                        Some("default"),
                        json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": format!("p{i}")},
                        "spec": {"containers": [{"name": "c", "image": "busybox",
                            "resources": {"requests": {"cpu": "100m"}}}]}}),
                        "test",
                    )
                    .await
            }));
        }
        let mut admitted = 0;
        let mut rejected = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => admitted += 1,
                Err(e) => rejected.push(e.message),
            }
        }
        assert_eq!(admitted, 3, "{rejected:?}");
        assert!(
            rejected.iter().all(|m| m.contains(
                "is forbidden: exceeded quota: q, requested: pods=1, used: pods=3, limited: pods=3"
            )),
            "{rejected:?}"
        );
        let q = client.get(&quotas, Some("default"), "q").await.unwrap();
        assert_eq!(
            q["status"]["used"],
            json!({"pods": "3", "requests.cpu": "300m"})
        );
        // A pod without a cpu request is refused while the quota limits requests.cpu.
        let err = client
            .create(&pods, Some("default"), json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "bare"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}), "test")
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "pods \"bare\" is forbidden: failed quota: q: must specify requests.cpu for: c"
        );
    }
}
