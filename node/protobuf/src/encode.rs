//! Kubernetes JSON → protobuf message, driven by the generated schema.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::schema::MESSAGES;
use crate::schema_types::{Card, Message, Special, Ty};
use crate::time::{parse_duration, parse_rfc3339};
use crate::wire::{put_key, put_len, put_varint, FIXED64, VARINT};
use crate::Error;

fn err(msg: &Message, what: impl std::fmt::Display) -> Error {
    Error::Decode(format!(
        "cannot encode {}.{}: {what}",
        msg.package, msg.name
    ))
}

/// Encodes `value` as message `idx`.
pub(crate) fn message(idx: usize, value: &Value) -> Result<Vec<u8>, Error> {
    let msg = &MESSAGES[idx];
    let mut out = Vec::new();
    if msg.special != Special::None {
        special(msg, value, &mut out)?;
        return Ok(out);
    }
    let obj = value
        .as_object()
        .ok_or_else(|| err(msg, "expected an object"))?;
    object(msg, obj, &mut out)?;
    Ok(out)
}

fn object(msg: &Message, obj: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), Error> {
    for field in msg.fields {
        if field.card == Card::Inline {
            let Ty::Msg(i) = field.ty else { continue };
            let mut inner = Vec::new();
            object(&MESSAGES[i], obj, &mut inner)?;
            put_len(out, field.tag, &inner);
            continue;
        }
        let Some(v) = obj.get(field.json) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        match field.card {
            Card::Single | Card::Inline => value(msg, field.tag, field.ty, v, out)?,
            Card::Repeated => {
                let items = v
                    .as_array()
                    .ok_or_else(|| err(msg, format!("{} is not an array", field.json)))?;
                for item in items {
                    value(msg, field.tag, field.ty, item, out)?;
                }
            }
            Card::Map => {
                let entries = v
                    .as_object()
                    .ok_or_else(|| err(msg, format!("{} is not an object", field.json)))?;
                for (k, item) in entries {
                    let mut entry = Vec::new();
                    put_len(&mut entry, 1, k.as_bytes());
                    if !item.is_null() {
                        value(msg, 2, field.ty, item, &mut entry)?;
                    }
                    put_len(out, field.tag, &entry);
                }
            }
        }
    }
    Ok(())
}

fn value(msg: &Message, tag: u32, ty: Ty, v: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    let bad = || err(msg, format!("field {tag} does not fit {ty:?}: {v}"));
    match ty {
        Ty::Str => put_len(out, tag, v.as_str().ok_or_else(bad)?.as_bytes()),
        Ty::Bytes => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().ok_or_else(bad)?)
                .map_err(|_| bad())?;
            put_len(out, tag, &b);
        }
        Ty::Bool => {
            put_key(out, tag, VARINT);
            put_varint(out, u64::from(v.as_bool().ok_or_else(bad)?));
        }
        Ty::I32 | Ty::I64 => {
            let n = v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64));
            let n = n.ok_or_else(bad)?;
            let n = if ty == Ty::I32 {
                i64::from(i32::try_from(n).map_err(|_| bad())?)
            } else {
                n
            };
            put_key(out, tag, VARINT);
            put_varint(out, n as u64);
        }
        Ty::F64 => {
            put_key(out, tag, FIXED64);
            out.extend_from_slice(&v.as_f64().ok_or_else(bad)?.to_le_bytes());
        }
        Ty::Msg(i) => put_len(out, tag, &message(i, v)?),
    }
    Ok(())
}

fn special(msg: &Message, v: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    let bad = || err(msg, format!("unexpected JSON {v}"));
    let varint = |out: &mut Vec<u8>, tag: u32, n: i64| {
        put_key(out, tag, VARINT);
        put_varint(out, n as u64);
    };
    let schema_idx = |name: &str| {
        MESSAGES
            .iter()
            .position(|m| m.package == msg.package && m.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| err(msg, format!("no {name} in {}", msg.package)))
    };
    match msg.special {
        Special::None => unreachable!("special() is only called for special messages"),
        Special::Time | Special::MicroTime => {
            let (s, n) = parse_rfc3339(v.as_str().ok_or_else(bad)?).ok_or_else(bad)?;
            varint(out, 1, s);
            let n = if msg.special == Special::Time { 0 } else { n };
            if n != 0 {
                varint(out, 2, i64::from(n));
            }
        }
        Special::Duration => varint(
            out,
            1,
            parse_duration(v.as_str().ok_or_else(bad)?).ok_or_else(bad)?,
        ),
        Special::Quantity => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(bad()),
            };
            put_len(out, 1, s.as_bytes());
        }
        Special::IntOrString => match v {
            Value::String(s) => {
                varint(out, 1, 1);
                put_len(out, 3, s.as_bytes());
            }
            Value::Number(n) => {
                varint(out, 1, 0);
                varint(out, 2, n.as_i64().ok_or_else(bad)?);
            }
            _ => return Err(bad()),
        },
        Special::RawJson => {
            let raw = serde_json::to_vec(v).map_err(|e| err(msg, e))?;
            put_len(out, 1, &raw);
        }
        Special::StringItems => {
            for item in v.as_array().ok_or_else(bad)? {
                put_len(out, 1, item.as_str().ok_or_else(bad)?.as_bytes());
            }
        }
        Special::SchemaOrArray => {
            let props = schema_idx("JSONSchemaProps")?;
            match v {
                Value::Array(items) => {
                    for item in items {
                        put_len(out, 2, &message(props, item)?);
                    }
                }
                _ => put_len(out, 1, &message(props, v)?),
            }
        }
        Special::SchemaOrBool => {
            let props = schema_idx("JSONSchemaProps")?;
            match v {
                Value::Bool(b) => varint(out, 1, i64::from(*b)),
                _ => {
                    varint(out, 1, 1);
                    put_len(out, 2, &message(props, v)?);
                }
            }
        }
        Special::SchemaOrStringArray => {
            let props = schema_idx("JSONSchemaProps")?;
            match v {
                Value::Array(items) => {
                    for item in items {
                        put_len(out, 2, item.as_str().ok_or_else(bad)?.as_bytes());
                    }
                }
                _ => put_len(out, 1, &message(props, v)?),
            }
        }
    }
    Ok(())
}
