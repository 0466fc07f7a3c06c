//! Encodes a Swagger 2.0 JSON document as gnostic's `openapi.v2.Document` protobuf
//! (`github.com/google/gnostic-models/openapiv2/OpenAPIv2.proto`), which kubectl 1.27/1.28
//! request with `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`.
//!
//! A small hand encoder over the messages kubectl reads: Document, Info, Paths/PathItem/
//! Operation/Parameter/Response, Definitions/Schema, and `x-` vendor extensions
//! (`NamedAny{name, Any{yaml}}`, the YAML being the JSON text of the value).

use serde_json::{Map, Value};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

#[derive(Default)]
struct Buf(Vec<u8>);

impl Buf {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from((field << 3) | wire));
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// A string field; empty strings are the proto3 default and are left out.
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn bool(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, VARINT);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, v: i64) {
        self.key(field, VARINT);
        self.varint(v as u64);
    }

    fn double(&mut self, field: u32, v: f64) {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// An embedded message (always written, even when empty: presence matters).
    fn message(&mut self, field: u32, f: impl FnOnce(&mut Buf)) {
        let mut sub = Buf::default();
        f(&mut sub);
        self.bytes(field, &sub.0);
    }
}

fn str_of<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

fn bool_of(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn strings<'a>(obj: &'a Map<String, Value>, key: &str) -> impl Iterator<Item = &'a str> {
    obj.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// `Any { yaml = 2 }`: JSON text is valid YAML.
fn any(b: &mut Buf, v: &Value) {
    b.string(2, &v.to_string());
}

/// `repeated NamedAny vendor_extension` for every `x-` key of `obj`.
fn vendor_extensions(b: &mut Buf, field: u32, obj: &Map<String, Value>) {
    for (k, v) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
        b.message(field, |na| {
            na.string(1, k);
            na.message(2, |a| any(a, v));
        });
    }
}

/// Encodes a JSON document produced by [`crate::OpenApi::v2_json`]'s builder.
pub(crate) fn encode_document(doc: &Value) -> Vec<u8> {
    let empty = Map::new();
    let doc = doc.as_object().unwrap_or(&empty);
    let mut b = Buf::default();
    b.string(1, str_of(doc, "swagger"));
    if let Some(Value::Object(info)) = doc.get("info") {
        b.message(2, |i| {
            i.string(1, str_of(info, "title"));
            i.string(2, str_of(info, "version"));
            i.string(3, str_of(info, "description"));
            vendor_extensions(i, 7, info);
        });
    }
    for s in strings(doc, "schemes") {
        b.string(5, s);
    }
    for s in strings(doc, "consumes") {
        b.string(6, s);
    }
    for s in strings(doc, "produces") {
        b.string(7, s);
    }
    if let Some(Value::Object(paths)) = doc.get("paths") {
        b.message(8, |p| {
            for (name, item) in paths {
                if let Value::Object(item) = item {
                    p.message(2, |np| {
                        np.string(1, name);
                        np.message(2, |pi| path_item(pi, item));
                    });
                }
            }
        });
    }
    if let Some(Value::Object(defs)) = doc.get("definitions") {
        b.message(9, |d| named_schemas(d, 1, defs));
    }
    if let Some(Value::Array(reqs)) = doc.get("security") {
        for req in reqs.iter().filter_map(Value::as_object) {
            b.message(12, |sr| {
                for (name, scopes) in req {
                    sr.message(1, |nsa| {
                        nsa.string(1, name);
                        nsa.message(2, |sa| {
                            for s in scopes.as_array().into_iter().flatten() {
                                sa.string(1, s.as_str().unwrap_or(""));
                            }
                        });
                    });
                }
            });
        }
    }
    if let Some(Value::Object(defs)) = doc.get("securityDefinitions") {
        b.message(13, |sd| {
            for (name, def) in defs {
                let Value::Object(def) = def else { continue };
                if str_of(def, "type") != "apiKey" {
                    continue;
                }
                sd.message(1, |n| {
                    n.string(1, name);
                    n.message(2, |item| {
                        item.message(2, |k| {
                            k.string(1, "apiKey");
                            k.string(2, str_of(def, "name"));
                            k.string(3, str_of(def, "in"));
                            k.string(4, str_of(def, "description"));
                            vendor_extensions(k, 5, def);
                        });
                    });
                });
            }
        });
    }
    vendor_extensions(&mut b, 16, doc);
    b.0
}

fn path_item(b: &mut Buf, item: &Map<String, Value>) {
    for (method, field) in [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("options", 6),
        ("head", 7),
        ("patch", 8),
    ] {
        if let Some(Value::Object(op)) = item.get(method) {
            b.message(field, |o| operation(o, op));
        }
    }
    parameters(b, 9, item);
    vendor_extensions(b, 10, item);
}

fn operation(b: &mut Buf, op: &Map<String, Value>) {
    for t in strings(op, "tags") {
        b.string(1, t);
    }
    b.string(2, str_of(op, "summary"));
    b.string(3, str_of(op, "description"));
    b.string(5, str_of(op, "operationId"));
    for s in strings(op, "produces") {
        b.string(6, s);
    }
    for s in strings(op, "consumes") {
        b.string(7, s);
    }
    parameters(b, 8, op);
    if let Some(Value::Object(responses)) = op.get("responses") {
        b.message(9, |rs| {
            for (code, resp) in responses {
                let Value::Object(resp) = resp else { continue };
                rs.message(1, |nrv| {
                    nrv.string(1, code);
                    nrv.message(2, |rv| {
                        rv.message(1, |r| {
                            r.string(1, str_of(resp, "description"));
                            if let Some(schema) = resp.get("schema") {
                                r.message(2, |si| si.message(1, |s| schema_message(s, schema)));
                            }
                            vendor_extensions(r, 5, resp);
                        });
                    });
                });
            }
        });
    }
    for s in strings(op, "schemes") {
        b.string(10, s);
    }
    b.bool(11, bool_of(op, "deprecated"));
    vendor_extensions(b, 13, op);
}

/// `repeated ParametersItem` (body, query and path parameters).
fn parameters(b: &mut Buf, field: u32, obj: &Map<String, Value>) {
    let Some(Value::Array(params)) = obj.get("parameters") else {
        return;
    };
    for p in params.iter().filter_map(Value::as_object) {
        let location = str_of(p, "in");
        b.message(field, |item| {
            item.message(1, |param| match location {
                "body" => param.message(1, |bp| {
                    bp.string(1, str_of(p, "description"));
                    bp.string(2, str_of(p, "name"));
                    bp.string(3, "body");
                    bp.bool(4, bool_of(p, "required"));
                    if let Some(schema) = p.get("schema") {
                        bp.message(5, |s| schema_message(s, schema));
                    }
                    vendor_extensions(bp, 6, p);
                }),
                "path" => param.message(2, |nb| {
                    nb.message(4, |s| {
                        s.bool(1, bool_of(p, "required"));
                        s.string(2, "path");
                        s.string(3, str_of(p, "description"));
                        s.string(4, str_of(p, "name"));
                        s.string(5, str_of(p, "type"));
                        s.string(6, str_of(p, "format"));
                        s.bool(19, bool_of(p, "uniqueItems"));
                        vendor_extensions(s, 22, p);
                    })
                }),
                // Query (and, approximately, header/formData) parameters.
                _ => param.message(2, |nb| {
                    nb.message(3, |s| {
                        s.bool(1, bool_of(p, "required"));
                        s.string(2, "query");
                        s.string(3, str_of(p, "description"));
                        s.string(4, str_of(p, "name"));
                        s.string(6, str_of(p, "type"));
                        s.string(7, str_of(p, "format"));
                        s.bool(20, bool_of(p, "uniqueItems"));
                        vendor_extensions(s, 23, p);
                    })
                }),
            });
        });
    }
}

/// `repeated NamedSchema` at `field`.
fn named_schemas(b: &mut Buf, field: u32, schemas: &Map<String, Value>) {
    for (name, schema) in schemas {
        b.message(field, |ns| {
            ns.string(1, name);
            ns.message(2, |s| schema_message(s, schema));
        });
    }
}

fn schema_message(b: &mut Buf, schema: &Value) {
    let Value::Object(s) = schema else {
        return;
    };
    b.string(1, str_of(s, "$ref"));
    b.string(2, str_of(s, "format"));
    b.string(3, str_of(s, "title"));
    b.string(4, str_of(s, "description"));
    if let Some(d) = s.get("default") {
        b.message(5, |a| any(a, d));
    }
    for (key, field) in [("multipleOf", 6), ("maximum", 7), ("minimum", 9)] {
        if let Some(v) = s.get(key).and_then(Value::as_f64) {
            b.double(field, v);
        }
    }
    b.bool(8, bool_of(s, "exclusiveMaximum"));
    b.bool(10, bool_of(s, "exclusiveMinimum"));
    for (key, field) in [
        ("maxLength", 11),
        ("minLength", 12),
        ("maxItems", 14),
        ("minItems", 15),
        ("maxProperties", 17),
        ("minProperties", 18),
    ] {
        if let Some(v) = s.get(key).and_then(Value::as_i64) {
            b.int64(field, v);
        }
    }
    b.string(13, str_of(s, "pattern"));
    b.bool(16, bool_of(s, "uniqueItems"));
    for r in strings(s, "required") {
        b.string(19, r);
    }
    if let Some(Value::Array(values)) = s.get("enum") {
        for v in values {
            b.message(20, |a| any(a, v));
        }
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(flag)) => b.message(21, |ap| {
            ap.key(2, VARINT);
            ap.varint(u64::from(*flag));
        }),
        Some(v @ Value::Object(_)) => b.message(21, |ap| ap.message(1, |x| schema_message(x, v))),
        _ => {}
    }
    match s.get("type") {
        Some(Value::String(t)) => b.message(22, |ti| ti.string(1, t)),
        Some(Value::Array(ts)) => b.message(22, |ti| {
            for t in ts.iter().filter_map(Value::as_str) {
                ti.string(1, t);
            }
        }),
        _ => {}
    }
    match s.get("items") {
        Some(v @ Value::Object(_)) => b.message(23, |ii| ii.message(1, |x| schema_message(x, v))),
        Some(Value::Array(vs)) => b.message(23, |ii| {
            for v in vs {
                ii.message(1, |x| schema_message(x, v));
            }
        }),
        _ => {}
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for v in all {
            b.message(24, |x| schema_message(x, v));
        }
    }
    if let Some(Value::Object(props)) = s.get("properties") {
        b.message(25, |p| named_schemas(p, 1, props));
    }
    b.string(26, str_of(s, "discriminator"));
    b.bool(27, bool_of(s, "readOnly"));
    if let Some(e) = s.get("example") {
        b.message(30, |a| any(a, e));
    }
    vendor_extensions(b, 31, s);
}

#[cfg(test)]
pub(crate) mod decode {
    //! A minimal protobuf reader for tests: fields of one message as (number, wire value).

    #[derive(Debug, Clone)]
    pub(crate) enum Field<'a> {
        Varint,
        Fixed64,
        Bytes(&'a [u8]),
    }

    fn varint(b: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*pos];
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    pub(crate) fn fields(b: &[u8]) -> Vec<(u32, Field<'_>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < b.len() {
            let key = varint(b, &mut pos);
            let field = (key >> 3) as u32;
            let value = match key & 7 {
                0 => {
                    varint(b, &mut pos);
                    Field::Varint
                }
                1 => {
                    pos += 8;
                    Field::Fixed64
                }
                2 => {
                    let len = varint(b, &mut pos) as usize;
                    let v = &b[pos..pos + len];
                    pos += len;
                    Field::Bytes(v)
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push((field, value));
        }
        out
    }

    pub(crate) fn bytes<'a>(fields: &[(u32, Field<'a>)], n: u32) -> Vec<&'a [u8]> {
        fields
            .iter()
            .filter(|(f, _)| *f == n)
            .filter_map(|(_, v)| match v {
                Field::Bytes(b) => Some(*b),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn string<'a>(fields: &[(u32, Field<'a>)], n: u32) -> &'a str {
        bytes(fields, n)
            .first()
            .map(|b| std::str::from_utf8(b).unwrap())
            .unwrap_or("")
    }
}
