//! Label selectors (matchLabels + matchExpressions) and the helpers every controller needs.

use serde_json::Value;

pub use k3rs_client::labels::{map_matches, matches};

/// The (kind, name, uid) of an object's controlling owner.
pub fn controller_of(obj: &Value) -> Option<(&str, &str, &str)> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["uid"].as_str().unwrap_or(""),
            )
        })
}

/// The cache key of the object's controlling owner when that owner is a `kind` (an owner is in
/// its dependents' namespace).
pub fn controller_key(obj: &Value, kind: &str) -> Option<String> {
    let (k, name, _) = controller_of(obj)?;
    (k == kind).then(|| {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
        format!("{ns}/{name}")
    })
}

pub fn owner_ref(api_version: &str, kind: &str, owner: &Value) -> Value {
    serde_json::json!({
        "apiVersion": api_version, "kind": kind,
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

pub fn is_deleting(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

pub fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded") | Some("Failed")
    )
}

/// Active = not finished and not being deleted (upstream's FilterActivePods).
pub fn is_active(pod: &Value) -> bool {
    !is_terminal(pod) && !is_deleting(pod)
}

pub fn is_ready(pod: &Value) -> bool {
    ready_since(pod).is_some()
}

/// When the pod's Ready condition last turned True.
pub fn ready_since(pod: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let c = pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")?;
    Some(
        c["lastTransitionTime"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
    )
}

/// Ready for at least `min_ready_seconds` at `now`; otherwise how long until it will be.
pub fn available(
    pod: &Value,
    min_ready_seconds: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Option<std::time::Duration>> {
    let Some(since) = ready_since(pod) else {
        return Err(None);
    };
    if min_ready_seconds <= 0 {
        return Ok(());
    }
    let at = since + chrono::Duration::seconds(min_ready_seconds);
    if at <= now {
        Ok(())
    } else {
        Err((at - now).to_std().ok())
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let sel = json!({"matchLabels": {"app": "a"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["web", "api"]},
            {"key": "canary", "operator": "DoesNotExist"}]});
        assert!(matches(&sel, &json!({"app": "a", "tier": "web"})));
        assert!(!matches(&sel, &json!({"app": "a", "tier": "db"})));
        assert!(!matches(
            &sel,
            &json!({"app": "a", "tier": "web", "canary": "1"})
        ));
        assert!(matches(&json!({}), &json!({"x": "y"})));
        assert!(!matches(&Value::Null, &json!({"x": "y"})));
    }
}
