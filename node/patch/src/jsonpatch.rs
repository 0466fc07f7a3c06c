//! RFC 6902 JSON patch with RFC 6901 JSON pointers.

use serde_json::{Map, Value};

use crate::PatchError;

/// RFC 6902 JSON patch (`application/json-patch+json`): `add`, `remove`, `replace`,
/// `move`, `copy` and `test`.
///
/// The patch is applied atomically: on any error `target` is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Invalid("JSON patch must be an array of operations".into()))?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut doc, op).map_err(|e| match e {
            PatchError::Invalid(m) => PatchError::Invalid(format!("operation {i}: {m}")),
            other => other,
        })?;
    }
    *target = doc;
    Ok(())
}

fn str_field<'a>(op: &'a Map<String, Value>, name: &str) -> Result<&'a str, PatchError> {
    op.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| PatchError::Invalid(format!("missing or non-string \"{name}\"")))
}

fn value_field(op: &Map<String, Value>) -> Result<Value, PatchError> {
    op.get("value")
        .cloned()
        .ok_or_else(|| PatchError::Invalid("missing \"value\"".into()))
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), PatchError> {
    let op = op
        .as_object()
        .ok_or_else(|| PatchError::Invalid("operation must be an object".into()))?;
    let kind = str_field(op, "op")?;
    let path = str_field(op, "path")?;
    let tokens = parse_pointer(path)?;
    match kind {
        "add" => add(doc, &tokens, path, value_field(op)?),
        "remove" => remove(doc, &tokens, path).map(drop),
        "replace" => {
            let value = value_field(op)?;
            let slot =
                get_mut(doc, &tokens).ok_or_else(|| PatchError::PathNotFound(path.to_string()))?;
            *slot = value;
            Ok(())
        }
        "move" => {
            let from = str_field(op, "from")?;
            let from_tokens = parse_pointer(from)?;
            if from_tokens.len() < tokens.len() && tokens.starts_with(&from_tokens) {
                return Err(PatchError::Invalid(format!(
                    "cannot move {from} into its own child {path}"
                )));
            }
            let value = remove(doc, &from_tokens, from)?;
            add(doc, &tokens, path, value)
        }
        "copy" => {
            let from = str_field(op, "from")?;
            let value = get_mut(doc, &parse_pointer(from)?)
                .ok_or_else(|| PatchError::PathNotFound(from.to_string()))?
                .clone();
            add(doc, &tokens, path, value)
        }
        "test" => {
            let want = value_field(op)?;
            let got = get_mut(doc, &tokens)
                .ok_or_else(|| PatchError::TestFailed(format!("{path} does not exist")))?;
            if json_equal(got, &want) {
                Ok(())
            } else {
                Err(PatchError::TestFailed(format!(
                    "value at {path} is {got}, expected {want}"
                )))
            }
        }
        other => Err(PatchError::Invalid(format!("unknown op \"{other}\""))),
    }
}

/// Splits an RFC 6901 pointer into unescaped reference tokens.
pub(crate) fn parse_pointer(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(PatchError::Invalid(format!(
            "JSON pointer \"{pointer}\" must start with '/'"
        )));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Option<usize> {
    if allow_end && token == "-" {
        return Some(len);
    }
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: usize = token.parse().ok()?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    (i <= max && (allow_end || len > 0)).then_some(i)
}

fn get_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => {
                let i = array_index(t, a.len(), false)?;
                a.get_mut(i)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

fn add(doc: &mut Value, tokens: &[String], path: &str, value: Value) -> Result<(), PatchError> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    let parent = get_mut(doc, parent).ok_or_else(|| PatchError::PathNotFound(path.to_string()))?;
    match parent {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), true)
                .ok_or_else(|| PatchError::PathNotFound(path.to_string()))?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err(PatchError::PathNotFound(path.to_string())),
    }
}

fn remove(doc: &mut Value, tokens: &[String], path: &str) -> Result<Value, PatchError> {
    let Some((last, parent)) = tokens.split_last() else {
        return Err(PatchError::Invalid(
            "cannot remove the whole document".into(),
        ));
    };
    let not_found = || PatchError::PathNotFound(path.to_string());
    match get_mut(doc, parent).ok_or_else(not_found)? {
        Value::Object(m) => m.shift_remove(last).ok_or_else(not_found),
        Value::Array(a) => {
            let i = array_index(last, a.len(), false).ok_or_else(not_found)?;
            Ok(a.remove(i))
        }
        _ => Err(not_found()),
    }
}

/// JSON equality where numbers compare by numeric value (RFC 6902 §4.6).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a/b"]},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1"},
                {"name": "side", "image": "busybox"}
            ]}}}
        })
    }

    #[test]
    fn add_remove_replace() {
        let mut d = deployment();
        json_patch(
            &mut d,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/metadata/labels/tier", "value": "fe"},
                {"op": "add", "path": "/metadata/annotations", "value": {"k8s.io~x": "1"}},
                {"op": "add", "path": "/metadata/annotations/a~1b", "value": "2"},
                {"op": "remove", "path": "/spec/template/spec/containers/1"},
                {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "z"}},
                {"op": "add", "path": "/spec/template/spec/containers/0", "value": {"name": "first"}},
                {"op": "test", "path": "/metadata/annotations/a~1b", "value": "2"},
                {"op": "test", "path": "/spec/replicas", "value": 3.0}
            ]),
        )
        .unwrap();
        assert_eq!(d["spec"]["replicas"], json!(3));
        assert_eq!(d["metadata"]["labels"]["tier"], json!("fe"));
        assert_eq!(d["metadata"]["annotations"]["a/b"], json!("2"));
        let names: Vec<_> = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["first", "nginx", "z"]);
    }

    #[test]
    fn move_and_copy() {
        let mut d = json!({"a": {"b": 1}, "c": [1, 2]});
        json_patch(
            &mut d,
            &json!([
                {"op": "copy", "from": "/a", "path": "/x"},
                {"op": "move", "from": "/c/0", "path": "/c/-"},
                {"op": "move", "from": "/a/b", "path": "/moved"}
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"a": {}, "c": [2, 1], "x": {"b": 1}, "moved": 1}));
        let err = json_patch(
            &mut d,
            &json!([{"op": "move", "from": "/x", "path": "/x/y"}]),
        );
        assert!(matches!(err, Err(PatchError::Invalid(_))));
    }

    #[test]
    fn test_failure_is_atomic() {
        let mut d = deployment();
        let before = d.clone();
        let err = json_patch(
            &mut d,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "test", "path": "/metadata/name", "value": "other"}
            ]),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::TestFailed(_)), "{err}");
        assert_eq!(d, before);
    }

    #[test]
    fn errors() {
        let mut d = deployment();
        for (patch, what) in [
            (
                json!([{"op": "remove", "path": "/spec/nope"}]),
                "missing remove",
            ),
            (
                json!([{"op": "replace", "path": "/nope", "value": 1}]),
                "missing replace",
            ),
            (
                json!([{"op": "add", "path": "/a/b", "value": 1}]),
                "missing parent",
            ),
            (
                json!([{"op": "add", "path": "/metadata/finalizers/5", "value": 1}]),
                "index",
            ),
            (
                json!([{"op": "remove", "path": "/metadata/finalizers/01"}]),
                "leading zero",
            ),
        ] {
            assert!(
                matches!(json_patch(&mut d, &patch), Err(PatchError::PathNotFound(_))),
                "{what}"
            );
        }
        assert!(matches!(
            json_patch(&mut d, &json!([{"op": "frob", "path": "/a"}])),
            Err(PatchError::Invalid(_))
        ));
        assert!(matches!(
            json_patch(&mut d, &json!({"op": "add"})),
            Err(PatchError::Invalid(_))
        ));
        assert!(matches!(
            json_patch(&mut d, &json!([{"op": "add", "path": "a", "value": 1}])),
            Err(PatchError::Invalid(_))
        ));
        assert_eq!(d, deployment());
    }

    #[test]
    fn root_replace() {
        let mut d = json!({"a": 1});
        json_patch(
            &mut d,
            &json!([{"op": "add", "path": "", "value": {"b": 2}}]),
        )
        .unwrap();
        assert_eq!(d, json!({"b": 2}));
    }
}
