//! Status writes shared by the workload controllers. Each controller computes the whole status it
//! wants; it is written only when it differs from the cached copy, so an idle cluster makes no
//! writes.

use crate::informer::Informer;
use crate::Error;
use k3rs_client::{Client, Patch, Resource};
use serde_json::{json, Value};

/// Merge-patches `obj`'s status subresource to `new` when that differs from `obj["status"]`, and
/// feeds the written object to `cache` so the next reconcile sees it before the watch does. An
/// object deleted meanwhile is not an error.
pub(crate) async fn write_if_changed(
    client: &dyn Client,
    cache: &Informer,
    resource: &Resource,
    manager: &str,
    obj: &Value,
    new: Value,
) -> Result<(), Error> {
    if new == obj["status"] {
        return Ok(());
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let patch = merge_replacing(&obj["status"], &new);
    match client
        .patch(
            resource,
            Some(ns),
            name,
            Patch::Merge(json!({ "status": patch })),
            Some("status"),
            manager,
        )
        .await
    {
        Ok(o) => cache.observe(&o),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(Error::Api("updating status", e)),
    }
    Ok(())
}

/// A merge patch that turns `old` into `new` at the top level (nulls for dropped fields), so the
/// patch replaces the status rather than adding to it.
fn merge_replacing(old: &Value, new: &Value) -> Value {
    let mut patch = new.clone();
    if let (Some(p), Some(o)) = (patch.as_object_mut(), old.as_object()) {
        for k in o.keys() {
            if !p.contains_key(k) {
                p.insert(k.clone(), Value::Null);
            }
        }
    }
    patch
}
