//! Request body decoding (JSON, YAML, Kubernetes protobuf) and response encoding.

use crate::status::ApiError;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::Value;
use std::convert::Infallible;

pub type Body = BoxBody<Bytes, Infallible>;

/// Upstream's limit on request bodies (3 MiB), so oversize writes fail before they reach the store.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The media type of a request body, ignoring parameters.
pub fn media_type(content_type: Option<&HeaderValue>) -> String {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Decodes an object body: JSON, YAML or protobuf. Patch bodies go through `decode_patch`.
pub fn decode_object(media: &str, body: &[u8]) -> Result<Value, ApiError> {
    match media {
        "" | "application/json" | "*/*" => decode_json(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body),
        "application/vnd.kubernetes.protobuf" => k3rs_protobuf::decode(body)
            .map_err(|e| ApiError::bad_request(format!("unable to decode protobuf body: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub fn decode_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

pub fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_yaml::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as YAML: {e}"
        ))
    })?;
    if v.is_null() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    Ok(v)
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes_response(code, "application/json", bytes)
}

pub fn bytes_response(code: u16, content_type: &str, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

pub fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.to_status())
}

/// What kind of answer the client asked for in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    Object,
    Table,
    PartialObjectMetadata,
}

pub fn wanted(accept: Option<&HeaderValue>) -> Wanted {
    let accept = accept.and_then(|a| a.to_str().ok()).unwrap_or("");
    // The first acceptable entry wins, as clients list preferences in order.
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        let as_ = params.iter().find_map(|p| p.strip_prefix("as="));
        let g = params.iter().find_map(|p| p.strip_prefix("g="));
        match (as_, g) {
            (Some("Table"), Some("meta.k8s.io")) => return Wanted::Table,
            (
                Some("PartialObjectMetadata") | Some("PartialObjectMetadataList"),
                Some("meta.k8s.io"),
            ) => return Wanted::PartialObjectMetadata,
            (None, _) => return Wanted::Object,
            _ => continue,
        }
    }
    Wanted::Object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_table_first() {
        let h = HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json");
        assert_eq!(wanted(Some(&h)), Wanted::Table);
        let h = HeaderValue::from_static("application/json");
        assert_eq!(wanted(Some(&h)), Wanted::Object);
        assert_eq!(wanted(None), Wanted::Object);
    }

    #[test]
    fn bad_bodies_are_bad_requests() {
        assert_eq!(decode_json(b"{not json").unwrap_err().code, 400);
        assert_eq!(decode_json(b"  ").unwrap_err().code, 400);
        assert_eq!(decode_yaml(b"a: [").unwrap_err().code, 400);
        assert_eq!(decode_object("text/plain", b"x").unwrap_err().code, 415);
        assert_eq!(
            decode_yaml(b"kind: ConfigMap\n").unwrap()["kind"],
            "ConfigMap"
        );
    }
}
