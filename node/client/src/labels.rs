//! Label selectors: `metav1.LabelSelector` (matchLabels + matchExpressions) and the plain
//! `map[string]string` selectors of Services and ReplicationControllers.

use serde_json::{Map, Value};

/// Whether `labels` match a LabelSelector. An empty selector matches everything; a missing one nothing.
pub fn matches(selector: &Value, labels: &Value) -> bool {
    if selector.is_null() {
        return false;
    }
    let empty = Map::new();
    let labels = labels.as_object().unwrap_or(&empty);
    if let Some(ml) = selector["matchLabels"].as_object() {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&Value> = e["values"].as_array().into_iter().flatten().collect();
            let have = labels.get(key);
            match e["operator"].as_str().unwrap_or("") {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => have.is_none_or(|h| !values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// Whether a Service's plain `spec.selector` map matches `labels` (an empty map matches nothing).
pub fn map_matches(selector: &Value, labels: &Value) -> bool {
    match selector.as_object() {
        Some(m) if !m.is_empty() => m.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}
