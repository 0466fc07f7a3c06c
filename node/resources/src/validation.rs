//! Validation and defaulting against the real Kubernetes types.
//!
//! * [`validate`] first decodes the object into its `k8s-openapi` type (a type error becomes a
//!   `FieldValueInvalid` at the offending path), then applies upstream's most important semantic
//!   rules (`pkg/apis/*/validation`), including immutability on update.
//! * [`unknown_fields`] reports fields the type does not know, for `fieldValidation=Strict|Warn`.
//! * [`apply_defaults`] applies upstream's `SetDefaults_*` for the built-in types.
//!
//! Custom resources (kinds this module does not know) only get the ObjectMeta checks.

mod defaults;
mod names;
mod rules;
mod typed;

use std::fmt;

use serde::Serialize;
use serde_json::Value;

pub use names::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_qualified_name,
    is_valid_label_value,
};

/// One invalid field, as a Kubernetes `StatusCause`: `field` is the path ("spec.selector",
/// "metadata.name", "spec.containers[0].image", "data[key]"), `reason` the cause type, and
/// `message` the cause message without the field ("Required value",
/// "Invalid value: \"Foo\": a lowercase RFC 1123 subdomain must ...").
/// `Display` gives upstream's "field: message" form used in the Status message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    /// "FieldValueRequired", "FieldValueInvalid", "FieldValueNotSupported", "FieldValueDuplicate",
    /// "FieldValueTooLong", "FieldValueForbidden" or "FieldValueNotFound".
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Renders a bad value the way `field.Error` does: strings quoted, numbers and bools bare,
/// anything else as JSON.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn with_detail(head: String, detail: &str) -> String {
    if detail.is_empty() {
        head
    } else {
        format!("{head}: {detail}")
    }
}

impl FieldError {
    fn new(field: impl Into<String>, reason: &'static str, message: String) -> Self {
        FieldError {
            field: field.into(),
            reason,
            message,
        }
    }
    /// `field.Required`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        Self::new(
            field,
            "FieldValueRequired",
            with_detail("Required value".into(), detail),
        )
    }
    /// `field.Invalid`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let head = format!("Invalid value: {}", render(value));
        Self::new(field, "FieldValueInvalid", with_detail(head, detail))
    }
    /// `field.NotSupported`.
    pub fn not_supported(field: impl Into<String>, value: &Value, valid: &[&str]) -> Self {
        let quoted: Vec<String> = valid.iter().map(|v| format!("{v:?}")).collect();
        let detail = if quoted.is_empty() {
            String::new()
        } else {
            format!("supported values: {}", quoted.join(", "))
        };
        let head = format!("Unsupported value: {}", render(value));
        Self::new(field, "FieldValueNotSupported", with_detail(head, &detail))
    }
    /// `field.Duplicate`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self::new(
            field,
            "FieldValueDuplicate",
            format!("Duplicate value: {}", render(value)),
        )
    }
    /// `field.NotFound`.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        Self::new(
            field,
            "FieldValueNotFound",
            format!("Not found: {}", render(value)),
        )
    }
    /// `field.Forbidden`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self::new(
            field,
            "FieldValueForbidden",
            with_detail("Forbidden".into(), detail),
        )
    }
    /// `field.TooLong`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        let unit = if max == 1 { "byte" } else { "bytes" };
        Self::new(
            field,
            "FieldValueTooLong",
            format!("Too long: may not be more than {max} {unit}"),
        )
    }
}

/// Structural check of a built-in object (decode into the matching `k8s-openapi` type; a type
/// error becomes `FieldValueInvalid` with its path), then upstream's main semantic rules. `old`
/// is the stored object on update (enables the immutability rules). Both objects should already
/// be defaulted ([`apply_defaults`]), as upstream validates after defaulting.
pub fn validate(
    group: &str,
    version: &str,
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), Vec<FieldError>> {
    if !obj.is_object() {
        return Err(vec![FieldError::invalid("", obj, "must be a JSON object")]);
    }
    if let Some(err) = typed::decode_error(group, version, kind, obj) {
        return Err(vec![err]);
    }
    let mut errs = vec![];
    rules::validate(group, kind, obj, old, &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Fields present in `obj` that its type does not know, as dotted paths
/// ("spec.replicass", "spec.template.spec.containers[0].imagee"), in document order. Empty for
/// kinds this module has no type for, and for objects that do not decode (see [`validate`]).
/// Keys whose value is `null` are not reported (they cannot be told from known null fields).
pub fn unknown_fields(group: &str, version: &str, kind: &str, obj: &Value) -> Vec<String> {
    typed::unknown_fields(group, version, kind, obj)
}

/// Upstream defaulting (`SetDefaults_*`) for the built-in types of core/v1, apps/v1, batch/v1 and
/// a few others, applied on create/update before validation and storage. Also sets what
/// upstream's create strategies always set and clients rely on: Namespace `spec.finalizers` and
/// `status.phase`, and a Job's generated selector (needs `metadata.uid`).
pub fn apply_defaults(group: &str, version: &str, kind: &str, obj: &mut Value) {
    defaults::apply(group, version, kind, obj);
}

#[cfg(test)]
mod tests;
