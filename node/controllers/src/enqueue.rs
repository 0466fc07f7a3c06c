//! How cache changes become work-queue keys: a controller's own objects by their key, and its
//! dependents (pods, ReplicaSets, Jobs) by the key of the controller that owns them.

use crate::informer::{key_of, Informer, Queue};
use crate::selector::{self, controller_key, controller_of};
use serde_json::Value;

/// Queues the key of every object `informer` sees added or changed. A deletion queues nothing:
/// reconcile would find no object under the key and do nothing.
pub(crate) fn own_objects(informer: &Informer, queue: &Queue) {
    let q = queue.clone();
    informer.on_change(Box::new(move |_, new| {
        if let Some(o) = new {
            q.add(key_of(o));
        }
    }));
}

/// Queues the `kind` controller of each object `dependents` sees change, from the old copy and
/// the new one (an object can be released or adopted by the change).
pub(crate) fn controllers_of(dependents: &Informer, kind: &'static str, queue: &Queue) {
    let q = queue.clone();
    dependents.on_change(Box::new(move |old, new| {
        for o in [old, new].into_iter().flatten() {
            if let Some(key) = controller_key(o, kind) {
                q.add(key);
            }
        }
    }));
}

/// Queues `dependent`'s controller when it is a `kind`. An orphan queues every object of `owners`
/// in its namespace whose selector matches its labels, since each may adopt it; a dependent of
/// another controller queues nothing.
pub(crate) fn controller_or_adopters(
    queue: &Queue,
    owners: &Informer,
    kind: &str,
    dependent: &Value,
) {
    let ns = dependent["metadata"]["namespace"].as_str().unwrap_or("");
    match controller_of(dependent) {
        Some((k, name, _)) if k == kind => queue.add(format!("{ns}/{name}")),
        Some(_) => {}
        None => {
            for o in owners.list(Some(ns)) {
                if selector::matches(&o["spec"]["selector"], &dependent["metadata"]["labels"]) {
                    queue.add(key_of(&o));
                }
            }
        }
    }
}
