//! The ResourceQuota controller (upstream's `resourcequota` controller): sets `status.hard` from
//! `spec.hard` and recalculates `status.used` from the objects in the namespace.
//!
//! Admission (k3rs-apiserver) charges creates to `status.used`; this controller is what gives
//! quota back. Like upstream it recalculates when a quota is created or its `spec.hard` changes,
//! when an object it counts is deleted or a pod finishes (replenishment), and every
//! [`RESYNC`] — never on admission's own status writes, which would race with the charges. Usage
//! is computed from fresh lists, not the caches, so a create admitted a moment ago is counted.

use crate::informer::{key_of, Informer, Queue};
use crate::selector::split_key;
use crate::{Ctx, Error};
use k3rs_client::{Client, ListParams, Resource};
use k3rs_resources::quota::{
    add, list_to_json, mask, matching_resources, parse_list, quota_matches, usage, ResourceList,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info_span, Instrument};

/// Upstream's `--resource-quota-sync-period` default: catches usage admission charged for a
/// create that then failed.
pub const RESYNC: Duration = Duration::from_secs(300);

const MANAGER: &str = "resourcequota-controller";

#[derive(Clone)]
pub struct QuotaController {
    ctx: Arc<Ctx>,
    quotas: Informer,
    /// Watched only to hear about deletions (replenishment).
    configmaps: Informer,
    secrets: Informer,
    queue: Queue,
}

fn hard_changed(old: &Value, new: &Value) -> bool {
    parse_list(&old["spec"]["hard"]) != parse_list(&new["spec"]["hard"])
}

fn needs_sync(quota: &Value) -> bool {
    let hard = parse_list(&quota["spec"]["hard"]);
    let used = parse_list(&quota["status"]["used"]);
    parse_list(&quota["status"]["hard"]) != hard || hard.keys().any(|k| !used.contains_key(k))
}

impl QuotaController {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let me = QuotaController {
            ctx: ctx.clone(),
            quotas: Informer::new(Resource::core("resourcequotas")),
            configmaps: Informer::new(Resource::core("configmaps")),
            secrets: Informer::new(Resource::core("secrets")),
            queue: Queue::default(),
        };
        let q = me.queue.clone();
        me.quotas
            .on_change(Box::new(move |old, new| match (old, new) {
                (None, Some(n)) => q.add(key_of(n)),
                (Some(o), Some(n)) if hard_changed(o, n) || needs_sync(n) => q.add(key_of(n)),
                _ => {}
            }));
        for informer in [
            &ctx.pods,
            &ctx.services,
            &ctx.persistentvolumeclaims,
            &me.configmaps,
            &me.secrets,
        ] {
            let m = me.clone();
            informer.on_change(Box::new(move |old, new| {
                let replenish = match (old, new) {
                    (Some(_), None) => true,
                    // A pod that finished stops counting for compute resources.
                    (Some(o), Some(n)) => {
                        k3rs_resources::quota::pod_is_terminal(n)
                            && !k3rs_resources::quota::pod_is_terminal(o)
                    }
                    _ => false,
                };
                if let (true, Some(obj)) = (replenish, old) {
                    m.enqueue_namespace(obj["metadata"]["namespace"].as_str().unwrap_or(""));
                }
            }));
        }
        me
    }

    fn enqueue_namespace(&self, ns: &str) {
        for q in self.quotas.list(Some(ns)) {
            self.queue.add(key_of(&q));
        }
    }

    pub async fn run(self) {
        for i in [&self.quotas, &self.configmaps, &self.secrets] {
            i.spawn(self.ctx.client.clone());
        }
        for i in [&self.quotas, &self.configmaps, &self.secrets] {
            i.wait_synced().await;
        }
        loop {
            let key = self.queue.pop().await;
            let (ns, name) = split_key(&key);
            let span =
                info_span!("reconcile", kind = "ResourceQuota", namespace = %ns, name = %name);
            match self.reconcile(&key).instrument(span.clone()).await {
                Ok(true) => self.queue.add_after(key, RESYNC),
                Ok(false) => {}
                Err(e) => {
                    span.in_scope(|| tracing::warn!(error = %e, "reconcile failed"));
                    self.queue.add_after(key, Duration::from_secs(1));
                }
            }
        }
    }

    /// Recalculates one quota; Ok(true) while it exists.
    pub async fn reconcile(&self, key: &str) -> Result<bool, Error> {
        let Some(quota) = self.quotas.get(key) else {
            return Ok(false);
        };
        let (ns, name) = split_key(key);
        let hard = parse_list(&quota["spec"]["hard"]);
        let used = calculate_usage(self.ctx.client.as_ref(), ns, &quota, &hard).await?;
        let current_hard = parse_list(&quota["status"]["hard"]);
        let current_used = parse_list(&quota["status"]["used"]);
        if current_hard == hard && current_used == used && current_used.len() == used.len() {
            return Ok(true);
        }
        let mut updated = quota.clone();
        updated["status"] = json!({"hard": list_to_json(&hard), "used": list_to_json(&used)});
        match self
            .ctx
            .client
            .replace(
                &Resource::core("resourcequotas"),
                Some(ns),
                name,
                updated,
                Some("status"),
                MANAGER,
            )
            .await
        {
            Ok(written) => {
                self.quotas.observe(&written);
                Ok(true)
            }
            // Admission charged in between: recalculate from the new state.
            Err(e) if e.code == 409 => {
                self.queue
                    .add_after(key.to_string(), Duration::from_millis(100));
                Ok(false)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(Error::Api("updating quota status", e)),
        }
    }
}

/// The resource types whose objects `hard` limits, as (group, plural).
fn counted_types(hard: &ResourceList) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (group, plural) in [
        ("", "pods"),
        ("", "services"),
        ("", "persistentvolumeclaims"),
        ("", "configmaps"),
        ("", "secrets"),
        ("", "replicationcontrollers"),
        ("", "resourcequotas"),
    ] {
        if !matching_resources(group, plural, hard).is_empty() {
            out.insert((group.to_string(), plural.to_string()));
        }
    }
    for name in hard.keys() {
        if let Some(rest) = name.strip_prefix("count/") {
            let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
            out.insert((group.to_string(), plural.to_string()));
        }
    }
    out
}

/// Lists a type whose version we do not know (`count/<plural>.<group>`): the served version is
/// found by trying the usual ones.
async fn list_type(
    client: &dyn Client,
    group: &str,
    plural: &str,
    ns: &str,
) -> Result<Vec<Value>, Error> {
    let versions: &[&str] = if group.is_empty() {
        &["v1"]
    } else {
        &["v1", "v2", "v1beta1", "v1alpha1"]
    };
    for v in versions {
        match client
            .list(
                &Resource::new(group, v, plural),
                Some(ns),
                &ListParams::default(),
            )
            .await
        {
            Ok(list) => return Ok(list.items),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(Error::Api("listing quota-counted objects", e)),
        }
    }
    Ok(Vec::new())
}

/// `status.used` for one quota: every name in `hard`, zero when nothing charges it.
pub async fn calculate_usage(
    client: &dyn Client,
    ns: &str,
    quota: &Value,
    hard: &ResourceList,
) -> Result<ResourceList, Error> {
    let mut used: ResourceList = hard
        .keys()
        .map(|k| (k.clone(), k3rs_resources::quantity::Quantity::count(0)))
        .collect();
    for (group, plural) in counted_types(hard) {
        for obj in list_type(client, &group, &plural, ns).await? {
            if quota_matches(quota, hard, &group, &plural, &obj) {
                used = add(&used, &mask(&usage(&group, &plural, &obj), hard.keys()));
            }
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k3rs_resources::quantity::Quantity;

    #[test]
    fn counted_types_follow_the_hard_names() {
        let hard: ResourceList = [
            ("requests.cpu", "1"),
            ("count/deployments.apps", "2"),
            ("services.nodeports", "1"),
            ("count/configmaps", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity::parse(v).unwrap()))
        .collect();
        let types: Vec<(String, String)> = counted_types(&hard).into_iter().collect();
        assert_eq!(
            types,
            vec![
                ("".into(), "configmaps".into()),
                ("".into(), "pods".into()),
                ("".into(), "services".into()),
                ("apps".into(), "deployments".into()),
            ]
        );
    }
}
