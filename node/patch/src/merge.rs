//! RFC 7386 JSON merge patch.

use serde_json::Value;

use crate::PatchError;

/// RFC 7386 JSON merge patch (`application/merge-patch+json`).
///
/// Objects merge recursively, `null` deletes a key, every other value (lists included)
/// replaces. Since the API server patches whole objects, the patch itself must be a JSON object.
pub fn merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "merge patch must be a JSON object".to_string(),
        ));
    }
    apply(target, patch);
    Ok(())
}

/// The RFC 7386 `MergePatch(Target, Patch)` function.
pub(crate) fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = target else {
        unreachable!("target was just made an object")
    };
    for (key, value) in patch {
        if value.is_null() {
            map.shift_remove(key);
        } else {
            let slot = map.entry(key.clone()).or_insert(Value::Null);
            apply(slot, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch).unwrap();
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn labels_and_scale() {
        let mut obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"app": "x", "tier": "web"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}
        });
        merge_patch(
            &mut obj,
            &json!({"metadata": {"labels": {"tier": null, "env": "prod"}}, "spec": {"replicas": 3}}),
        )
        .unwrap();
        assert_eq!(
            obj["metadata"]["labels"],
            json!({"app": "x", "env": "prod"})
        );
        assert_eq!(obj["spec"]["replicas"], json!(3));
        // lists replace wholesale
        merge_patch(
            &mut obj,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}),
        )
        .unwrap();
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"],
            json!([{"name": "c"}])
        );
    }

    #[test]
    fn non_object_patch_rejected() {
        let mut obj = json!({"a": 1});
        assert!(matches!(
            merge_patch(&mut obj, &json!([1])),
            Err(PatchError::Invalid(_))
        ));
    }
}
