//! Kubernetes protobuf (`application/vnd.kubernetes.protobuf`) bodies ⇄ Kubernetes JSON.
//!
//! kubectl 1.32+ sends `create` and `auth can-i` bodies as protobuf: the magic `k8s\0` followed by
//! a `runtime.Unknown { typeMeta {apiVersion, kind}, raw, contentEncoding, contentType }` whose
//! `raw` is the protobuf-encoded object. The API server stores JSON, so [`decode`] turns such a
//! body into the JSON object the same client would have sent as JSON, and [`encode`] does the
//! reverse for clients that only accept protobuf.
//!
//! Every message of the `k8s-pb` crate (all built-in kinds, apiextensions, apiregistration,
//! metrics) is covered generically by a wire schema generated from its source
//! (`tools/gen_schema.py` → `src/schema.rs`), with Go json names taken from `k8s-openapi`. Types
//! whose JSON is not an object of their fields (Time, MicroTime, Duration, Quantity, IntOrString,
//! RawExtension, FieldsV1, ExtraValue, the JSONSchemaProps unions) are mapped explicitly.
#![forbid(unsafe_code)]

mod decode;
mod encode;
mod schema;
mod schema_types;
mod time;
mod wire;

use serde_json::Value;

use schema::MESSAGES;
use wire::{Reader, Wire};

/// The four bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// The content type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body does not start with `k8s\0`.
    #[error("body is not a Kubernetes protobuf envelope (missing k8s\\0 prefix)")]
    NotProtobuf,
    /// The envelope names a kind this crate has no schema for.
    #[error("no protobuf schema for kind {kind} in {api_version}")]
    UnknownKind { api_version: String, kind: String },
    /// The bytes (or, for [`encode`], the JSON) do not fit the schema.
    #[error("invalid protobuf object: {0}")]
    Decode(String),
}

/// Decode a `k8s\0`-prefixed protobuf body into the Kubernetes JSON form of the object (with
/// apiVersion and kind set).
pub fn decode(body: &[u8]) -> Result<Value, Error> {
    let unknown = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or(Error::NotProtobuf)?;
    let env = Envelope::parse(unknown)?;
    if !env.content_encoding.is_empty() {
        return Err(Error::Decode(format!(
            "unsupported content encoding {:?}",
            env.content_encoding
        )));
    }
    let idx = find_kind(&env.api_version, &env.kind)?;
    let Value::Object(fields) = decode::message(idx, env.raw)? else {
        return Err(Error::Decode(format!("{} is not an object", env.kind)));
    };
    let mut obj = serde_json::Map::new();
    obj.insert("kind".into(), Value::String(env.kind));
    obj.insert("apiVersion".into(), Value::String(env.api_version));
    obj.extend(fields);
    Ok(Value::Object(obj))
}

/// Encode a JSON object as a `k8s\0` protobuf envelope (used for responses when a client only
/// accepts protobuf). Fails with [`Error::UnknownKind`] for kinds without a schema (custom
/// resources), which callers should then serve as JSON.
pub fn encode(value: &Value) -> Result<Vec<u8>, Error> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let idx = find_kind(api_version, kind)?;
    let raw = encode::message(idx, value)?;
    let mut type_meta = Vec::new();
    wire::put_len(&mut type_meta, 1, api_version.as_bytes());
    wire::put_len(&mut type_meta, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    wire::put_len(&mut out, 1, &type_meta);
    wire::put_len(&mut out, 2, &raw);
    wire::put_len(&mut out, 3, b"");
    wire::put_len(&mut out, 4, b"");
    Ok(out)
}

/// `runtime.Unknown`.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
}

impl<'a> Envelope<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let mut env = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
        };
        let string = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| Error::Decode("envelope string is not UTF-8".into()))
        };
        let mut r = Reader::new(buf);
        while !r.is_empty() {
            match r.field()? {
                (1, Wire::Len(tm)) => {
                    let mut t = Reader::new(tm);
                    while !t.is_empty() {
                        match t.field()? {
                            (1, Wire::Len(b)) => env.api_version = string(b)?,
                            (2, Wire::Len(b)) => env.kind = string(b)?,
                            _ => {}
                        }
                    }
                }
                (2, Wire::Len(b)) => env.raw = b,
                (3, Wire::Len(b)) => env.content_encoding = string(b)?,
                _ => {}
            }
        }
        Ok(env)
    }
}

/// The k8s-pb module that holds an API group's messages.
fn group_module(group: &str) -> Option<String> {
    Some(match group {
        "" => "api.core".into(),
        "meta.k8s.io" => "apimachinery.pkg.apis.meta".into(),
        "apiextensions.k8s.io" => "apiextensions_apiserver.pkg.apis.apiextensions".into(),
        "apiregistration.k8s.io" => "kube_aggregator.pkg.apis.apiregistration".into(),
        "metrics.k8s.io" => "metrics.pkg.apis.metrics".into(),
        "custom.metrics.k8s.io" => "metrics.pkg.apis.custom_metrics".into(),
        "external.metrics.k8s.io" => "metrics.pkg.apis.external_metrics".into(),
        "internal.apiserver.k8s.io" => "api.apiserverinternal".into(),
        "rbac.authorization.k8s.io" => "api.rbac".into(),
        "flowcontrol.apiserver.k8s.io" => "api.flowcontrol".into(),
        g if !g.contains('.') => format!("api.{g}"),
        g => format!("api.{}", g.strip_suffix(".k8s.io")?),
    })
}

/// Finds the message for `kind` in `apiVersion`; meta/v1 kinds (DeleteOptions, Status, …) are
/// accepted in every group version, as the Go scheme does.
fn find_kind(api_version: &str, kind: &str) -> Result<usize, Error> {
    let unknown = || Error::UnknownKind {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
    };
    if kind.is_empty() {
        return Err(unknown());
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = format!("{}.{version}", group_module(group).ok_or_else(unknown)?);
    let find = |pkg: &str| {
        MESSAGES
            .iter()
            .position(|m| m.package == pkg && m.name.eq_ignore_ascii_case(kind))
    };
    find(&package)
        .or_else(|| find("apimachinery.pkg.apis.meta.v1"))
        .ok_or_else(unknown)
}

#[cfg(test)]
mod tests;
