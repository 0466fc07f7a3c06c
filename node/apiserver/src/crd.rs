//! Custom resources: structural-schema pruning, defaulting and validation against a CRD
//! version's `openAPIV3Schema`, as upstream's apiextensions-apiserver does.

use k3rs_resources::validation::FieldError;
use serde_json::{Map, Value};

/// Prunes fields the schema does not declare (unless `x-kubernetes-preserve-unknown-fields`)
/// and applies `default`s. Returns the pruned paths (reported for fieldValidation).
pub fn prune_and_default(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if schema.is_null() {
        return pruned;
    }
    if let Some(map) = obj.as_object_mut() {
        for (k, v) in map.iter_mut() {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match schema.pointer(&format!("/properties/{}", escape(k))) {
                Some(s) => walk(s, v, k, &mut pruned),
                None if preserves(schema) => {}
                None => pruned.push(k.clone()),
            }
        }
        map.retain(|k, _| {
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                || preserves(schema)
                || schema
                    .pointer(&format!("/properties/{}", escape(k)))
                    .is_some()
        });
        apply_defaults(schema, map);
    }
    pruned
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

fn apply_defaults(schema: &Value, map: &mut Map<String, Value>) {
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if !map.contains_key(k) {
                if let Some(d) = s.get("default") {
                    map.insert(k.clone(), d.clone());
                }
            }
        }
    }
}

fn walk(schema: &Value, v: &mut Value, path: &str, pruned: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if schema["x-kubernetes-embedded-resource"] == Value::Bool(true)
                || preserves(schema) && schema.get("properties").is_none()
            {
                return;
            }
            if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in map.iter_mut() {
                    walk(ap, child, &format!("{path}.{k}"), pruned);
                }
                return;
            }
            let props = schema["properties"].as_object();
            let mut remove = Vec::new();
            for (k, child) in map.iter_mut() {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => walk(s, child, &format!("{path}.{k}"), pruned),
                    None if preserves(schema) => {}
                    None => remove.push(k.clone()),
                }
            }
            for k in remove {
                pruned.push(format!("{path}.{k}"));
                map.remove(&k);
            }
            apply_defaults(schema, map);
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(s, item, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// Type, required, enum, bounds and length checks.
pub fn validate(schema: &Value, obj: &Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if !schema.is_null() {
        if let Some(map) = obj.as_object() {
            for (k, v) in map {
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = schema.pointer(&format!("/properties/{}", escape(k))) {
                    check(s, v, k, &mut errors);
                }
            }
            required(schema, map, "", &mut errors);
        }
    }
    if obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errors.push(FieldError {
            field: "metadata.name".into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn required(schema: &Value, map: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    for r in schema["required"].as_array().into_iter().flatten() {
        if let Some(r) = r.as_str() {
            if !map.contains_key(r) {
                errors.push(FieldError {
                    field: if path.is_empty() {
                        r.to_string()
                    } else {
                        format!("{path}.{r}")
                    },
                    reason: "FieldValueRequired",
                    message: "Required value".into(),
                });
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut fail = |reason: &'static str, message: String| {
        errors.push(FieldError {
            field: path.to_string(),
            reason,
            message,
        });
    };
    if v.is_null() && schema["nullable"] == Value::Bool(true) {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !matches!(type_name(v), "integer" | "string") {
            fail(
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type int-or-string",
                    type_name(v)
                ),
            );
        }
        return;
    }
    if let Some(t) = schema["type"].as_str() {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            fail(
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""
                ),
            );
            return;
        }
    }
    if let Some(e) = schema["enum"].as_array() {
        if !e.contains(v) {
            let allowed: Vec<String> = e.iter().map(|x| x.to_string()).collect();
            fail(
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: {v}: supported values: {}",
                    allowed.join(", ")
                ),
            );
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema["minimum"].as_f64() {
            if n < min {
                fail("FieldValueInvalid", format!("Invalid value: {v}: {path} in body should be greater than or equal to {min}"));
            }
        }
        if let Some(max) = schema["maximum"].as_f64() {
            if n > max {
                fail(
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {v}: {path} in body should be less than or equal to {max}"
                    ),
                );
            }
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            fail(
                "FieldValueTooLong",
                format!("Too long: may not be longer than {}", schema["maxLength"]),
            );
        }
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            fail(
                "FieldValueInvalid",
                format!(
                    "Invalid value: {v}: {path} in body should be at least {} chars long",
                    schema["minLength"]
                ),
            );
        }
    }
    match v {
        Value::Object(map) => {
            required(schema, map, path, errors);
            let props = schema["properties"].as_object();
            for (k, child) in map {
                let s = props
                    .and_then(|p| p.get(k))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(s) = s {
                    check(s, child, &format!("{path}.{k}"), errors);
                }
            }
        }
        Value::Array(items) => {
            if schema["maxItems"]
                .as_u64()
                .is_some_and(|m| items.len() as u64 > m)
            {
                errors.push(FieldError {
                    field: path.to_string(),
                    reason: "FieldValueTooMany",
                    message: format!(
                        "Too many: {}: must have at most {} items",
                        items.len(),
                        schema["maxItems"]
                    ),
                });
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(s, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1}, "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}})
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"}, "spec": {"size": 2, "junk": 1, "free": {"any": 1}}, "top": 1});
        let pruned = prune_and_default(&schema(), &mut obj);
        assert_eq!(pruned, vec!["spec.junk".to_string(), "top".to_string()]);
        assert_eq!(obj["spec"]["mode"], "a");
        assert_eq!(obj["spec"]["free"]["any"], 1);
        assert!(validate(&schema(), &obj).is_ok());
        let bad = json!({"metadata": {"name": "w"}, "spec": {"size": "big", "mode": "c"}});
        let errs = validate(&schema(), &bad).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "spec.size");
        let missing = json!({"metadata": {"name": "w"}, "spec": {}});
        assert_eq!(
            validate(&schema(), &missing).unwrap_err()[0].field,
            "spec.size"
        );
    }
}
