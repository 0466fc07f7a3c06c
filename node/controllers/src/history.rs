//! ControllerRevisions: the pod-template history of StatefulSets and DaemonSets (upstream's
//! `controller/history` package). A revision stores the template as the strategic-merge patch
//! upstream stores (`{"spec": {"template": {..., "$patch": "replace"}}}`), so `kubectl rollout
//! history` and `kubectl rollout undo` work on them unchanged.

use crate::selector::{self, controller_of, is_deleting};
use crate::{Ctx, Error};
use k3rs_client::{DeleteParams, Patch, Resource};
use serde_json::{json, Value};
use std::collections::HashSet;

/// The label on pods and revisions naming the revision a pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

pub fn resource() -> Resource {
    Resource::new("apps", "v1", "controllerrevisions")
}

/// What a revision stores for a template.
pub fn patch_data(template: &Value) -> Value {
    let mut t = strip_nulls(template);
    if !t.is_object() {
        t = json!({});
    }
    t["$patch"] = json!("replace");
    json!({"spec": {"template": t}})
}

/// The pod template a revision stores.
pub fn template_of(revision: &Value) -> Value {
    let mut t = revision["data"]["spec"]["template"].clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    t
}

pub fn number(revision: &Value) -> i64 {
    revision["revision"].as_i64().unwrap_or(0)
}

/// The hash part of a revision's name (`<owner>-<hash>`), as pods carry it in their label.
pub fn hash_of(revision: &Value) -> String {
    revision["metadata"]["labels"][HASH_LABEL]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| {
            let name = revision["metadata"]["name"].as_str().unwrap_or("");
            name.rsplit('-').next().unwrap_or(name).to_string()
        })
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// The revisions `owner` controls, oldest first.
pub fn owned(ctx: &Ctx, owner: &Value) -> Vec<Value> {
    let ns = owner["metadata"]["namespace"].as_str();
    let uid = owner["metadata"]["uid"].as_str().unwrap_or("");
    let mut revs: Vec<Value> = ctx
        .controllerrevisions
        .list(ns)
        .into_iter()
        .filter(|r| controller_of(r).is_some_and(|(_, _, u)| u == uid) && !is_deleting(r))
        .collect();
    revs.sort_by_key(|r| (number(r), r["metadata"]["name"].as_str().map(String::from)));
    revs
}

/// The revision for `owner`'s current template: an existing one with the same data (renumbered
/// to be the newest, as upstream does on a rollback), or a new `<owner>-<hash>`.
pub async fn current(
    ctx: &Ctx,
    owner: &Value,
    api_version: &str,
    kind: &str,
    revs: &[Value],
    manager: &str,
) -> Result<Value, Error> {
    let ns = owner["metadata"]["namespace"].as_str().unwrap_or("");
    let data = patch_data(&owner["spec"]["template"]);
    let max = revs.iter().map(number).max().unwrap_or(0);
    if let Some(r) = revs.iter().find(|r| strip_nulls(&r["data"]) == data) {
        if number(r) == max {
            return Ok(r.clone());
        }
        let name = r["metadata"]["name"].as_str().unwrap_or("");
        let o = ctx
            .client
            .patch(
                &resource(),
                Some(ns),
                name,
                Patch::Merge(json!({"revision": max + 1})),
                None,
                manager,
            )
            .await
            .map_err(|e| Error::Api("renumbering a controller revision", e))?;
        ctx.controllerrevisions.observe(&o);
        return Ok(o);
    }
    let collision = owner["status"]["collisionCount"].as_i64();
    let hash = crate::deployment::template_hash(&data, collision);
    let owner_name = owner["metadata"]["name"].as_str().unwrap_or("");
    let mut labels = owner["spec"]["template"]["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[HASH_LABEL] = json!(hash);
    let rev = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": format!("{owner_name}-{hash}"), "namespace": ns, "labels": labels,
            "ownerReferences": [selector::owner_ref(api_version, kind, owner)]},
        "data": data, "revision": max + 1});
    match ctx.client.create(&resource(), Some(ns), rev, manager).await {
        Ok(o) => {
            ctx.controllerrevisions.observe(&o);
            Ok(o)
        }
        Err(e) if e.is_already_exists() => {
            // Same name: ours with equal data (a stale cache) is fine; anything else is a hash
            // collision, resolved by bumping the owner's collisionCount.
            let name = format!("{owner_name}-{hash}");
            if let Ok(o) = ctx.client.get(&resource(), Some(ns), &name).await {
                let uid = owner["metadata"]["uid"].as_str().unwrap_or("");
                if strip_nulls(&o["data"]) == data
                    && controller_of(&o).is_some_and(|(_, _, u)| u == uid)
                {
                    ctx.controllerrevisions.observe(&o);
                    return Ok(o);
                }
            }
            Err(Error::Api(
                "creating a controller revision (hash collision)",
                e,
            ))
        }
        Err(e) => Err(Error::Api("creating a controller revision", e)),
    }
}

/// Deletes the oldest revisions beyond `revisionHistoryLimit` (default 10) that no pod uses.
pub async fn truncate(
    ctx: &Ctx,
    owner: &Value,
    revs: &[Value],
    live: &HashSet<String>,
) -> Result<(), Error> {
    let limit = owner["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0) as usize;
    let unused: Vec<&Value> = revs
        .iter()
        .filter(|r| !live.contains(r["metadata"]["name"].as_str().unwrap_or("")))
        .collect();
    if unused.len() <= limit {
        return Ok(());
    }
    for r in unused.iter().take(unused.len() - limit) {
        let ns = r["metadata"]["namespace"].as_str();
        let name = r["metadata"]["name"].as_str().unwrap_or("");
        match ctx
            .client
            .delete(&resource(), ns, name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::Api("deleting an old controller revision", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_data_round_trips_the_template() {
        let t = json!({"metadata": {"labels": {"app": "a"}, "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let data = patch_data(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let rev = json!({"data": data, "revision": 3, "metadata": {"name": "web-abc"}});
        assert_eq!(
            template_of(&rev),
            json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
        );
        assert_eq!(number(&rev), 3);
        assert_eq!(hash_of(&rev), "abc");
    }
}
