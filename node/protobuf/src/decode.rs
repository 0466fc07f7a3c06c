//! Protobuf message → Kubernetes JSON, driven by the generated schema.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::schema::MESSAGES;
use crate::schema_types::{Card, Field, Message, Special, Ty};
use crate::time::{format_duration, format_rfc3339};
use crate::wire::{Reader, Wire};
use crate::Error;

/// Go value (non-pointer) scalar fields with `omitempty`: Go's protobuf encoder always writes them,
/// so a zero on the wire means "unset" and is omitted, as Go's JSON encoder would. Every other
/// integer or boolean that is on the wire is kept even when zero, because it may be a pointer
/// that was set explicitly (`replicas: 0`, `automountServiceAccountToken: false`).
/// Entries are `package.Message.jsonName`.
pub(crate) const VALUE_FIELDS: &[&str] = &include!("value_fields.in");

fn is_value_field(msg: &Message, field: &Field) -> bool {
    VALUE_FIELDS.iter().any(|e| {
        let mut parts = e.rsplitn(3, '.');
        let (f, m, p) = (parts.next(), parts.next(), parts.next());
        f == Some(field.json) && m == Some(msg.name) && p == Some(msg.package)
    })
}

/// Decodes message `idx` into its JSON value.
pub(crate) fn message(idx: usize, buf: &[u8]) -> Result<Value, Error> {
    let msg = &MESSAGES[idx];
    if msg.special != Special::None {
        return special(msg, buf);
    }
    Ok(Value::Object(object(msg, buf)?))
}

enum Slot {
    Empty,
    One(Value),
    List(Vec<Value>),
    Map(Map<String, Value>),
}

fn object(msg: &Message, buf: &[u8]) -> Result<Map<String, Value>, Error> {
    let mut slots: Vec<Slot> = msg.fields.iter().map(|_| Slot::Empty).collect();
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (tag, wire) = r.field()?;
        let Some(i) = msg.fields.iter().position(|f| f.tag == tag) else {
            continue; // unknown field: skip, as Go does
        };
        let field = &msg.fields[i];
        let ctx = || format!("{}.{}.{}", msg.package, msg.name, field.json);
        match field.card {
            Card::Single | Card::Inline => {
                let v = scalar_or_message(field.ty, wire).map_err(|e| wrap(e, &ctx()))?;
                slots[i] = Slot::One(v);
            }
            Card::Repeated => {
                let mut values = Vec::new();
                match (field.ty, wire) {
                    // Packed repeated scalars.
                    (Ty::Bool | Ty::I32 | Ty::I64 | Ty::F64, Wire::Len(b)) => {
                        let mut pr = Reader::new(b);
                        while !pr.is_empty() {
                            let w = if field.ty == Ty::F64 {
                                Wire::Fixed64(pr.fixed64()?)
                            } else {
                                Wire::Varint(pr.varint()?)
                            };
                            values
                                .push(scalar_or_message(field.ty, w).map_err(|e| wrap(e, &ctx()))?);
                        }
                    }
                    (ty, w) => values.push(scalar_or_message(ty, w).map_err(|e| wrap(e, &ctx()))?),
                }
                match &mut slots[i] {
                    Slot::List(l) => l.extend(values),
                    s => *s = Slot::List(values),
                }
            }
            Card::Map => {
                let Wire::Len(entry) = wire else {
                    return Err(Error::Decode(format!(
                        "{}: map entry is not length-delimited",
                        ctx()
                    )));
                };
                let (k, v) = map_entry(field.ty, entry).map_err(|e| wrap(e, &ctx()))?;
                match &mut slots[i] {
                    Slot::Map(m) => {
                        m.insert(k, v);
                    }
                    s => {
                        let mut m = Map::new();
                        m.insert(k, v);
                        *s = Slot::Map(m);
                    }
                }
            }
        }
    }
    let mut out = Map::new();
    for (field, slot) in msg.fields.iter().zip(slots) {
        match slot {
            Slot::Empty => {}
            Slot::One(v) => {
                if field.card == Card::Inline {
                    if let Value::Object(inner) = v {
                        out.extend(inner);
                    }
                } else if keep(msg, field, &v) {
                    out.insert(field.json.to_owned(), v);
                }
            }
            Slot::List(l) => {
                out.insert(field.json.to_owned(), Value::Array(l));
            }
            Slot::Map(m) => {
                out.insert(field.json.to_owned(), Value::Object(m));
            }
        }
    }
    Ok(out)
}

/// Whether a single field read from the wire belongs in the JSON (see [`VALUE_FIELDS`]).
fn keep(msg: &Message, field: &Field, v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Bool(false) => !is_value_field(msg, field),
        Value::Number(n) if n.as_f64() == Some(0.0) => !is_value_field(msg, field),
        _ => true,
    }
}

fn wrap(e: Error, ctx: &str) -> Error {
    match e {
        Error::Decode(m) if !m.contains(" in ") => Error::Decode(format!("{m} in {ctx}")),
        e => e,
    }
}

fn map_entry(ty: Ty, buf: &[u8]) -> Result<(String, Value), Error> {
    let mut key = String::new();
    let mut value = None;
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.field()? {
            (1, w) => {
                if let Value::String(s) = scalar_or_message(Ty::Str, w)? {
                    key = s;
                }
            }
            (2, w) => value = Some(scalar_or_message(ty, w)?),
            _ => {}
        }
    }
    let value = match value {
        Some(v) => v,
        // An absent value is the zero value of its type.
        None => match ty {
            Ty::Str | Ty::Bytes => Value::String(String::new()),
            Ty::Bool => Value::Bool(false),
            Ty::I32 | Ty::I64 | Ty::F64 => Value::from(0),
            Ty::Msg(i) => message(i, &[])?,
        },
    };
    Ok((key, value))
}

fn scalar_or_message(ty: Ty, wire: Wire<'_>) -> Result<Value, Error> {
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Len(b)) => Value::String(
            std::str::from_utf8(b)
                .map_err(|_| Error::Decode("string is not UTF-8".into()))?
                .to_owned(),
        ),
        (Ty::Bytes, Wire::Len(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        (Ty::I32, Wire::Varint(v)) => Value::from(v as i32),
        (Ty::I64, Wire::Varint(v)) => Value::from(v as i64),
        (Ty::F64, Wire::Fixed64(v)) => float(f64::from_bits(v)),
        (Ty::Msg(i), Wire::Len(b)) => message(i, b)?,
        (ty, _) => return Err(Error::Decode(format!("wrong wire type for {ty:?} field"))),
    })
}

/// Go's encoding/json writes integral floats without a fraction.
fn float(f: f64) -> Value {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// The fields of a special message, by tag.
fn fields_by_tag(msg: &Message, buf: &[u8]) -> Result<Vec<(u32, Value)>, Error> {
    let mut out = Vec::new();
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (tag, wire) = r.field()?;
        if let Some(f) = msg.fields.iter().find(|f| f.tag == tag) {
            let v = if f.ty == Ty::Bytes {
                match wire {
                    Wire::Len(b) => Value::Array(b.iter().map(|&x| Value::from(x)).collect()),
                    _ => return Err(Error::Decode(format!("wrong wire type in {}", msg.name))),
                }
            } else {
                scalar_or_message(f.ty, wire)?
            };
            out.push((tag, v));
        }
    }
    Ok(out)
}

fn special(msg: &Message, buf: &[u8]) -> Result<Value, Error> {
    let fields = fields_by_tag(msg, buf)?;
    let get = |tag: u32| fields.iter().rev().find(|(t, _)| *t == tag).map(|(_, v)| v);
    let int = |tag: u32| get(tag).and_then(Value::as_i64).unwrap_or(0);
    let raw = |tag: u32| -> Vec<u8> {
        get(tag)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64().map(|b| b as u8))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(match msg.special {
        Special::None => unreachable!("special() is only called for special messages"),
        Special::Time => {
            let (s, n) = (int(1), int(2));
            if s == 0 && n == 0 {
                Value::Null // Go's zero time marshals as null
            } else {
                Value::String(format_rfc3339(s, None))
            }
        }
        Special::MicroTime => {
            let (s, n) = (int(1), int(2));
            if s == 0 && n == 0 {
                Value::Null
            } else {
                Value::String(format_rfc3339(s, Some((n / 1000) as u32)))
            }
        }
        Special::Duration => Value::String(format_duration(int(1))),
        Special::Quantity => get(1)
            .cloned()
            .unwrap_or_else(|| Value::String(String::new())),
        Special::IntOrString => {
            if int(1) == 1 {
                get(3)
                    .cloned()
                    .unwrap_or_else(|| Value::String(String::new()))
            } else {
                Value::from(int(2))
            }
        }
        Special::RawJson => {
            let bytes = raw(1);
            if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Decode(format!("{} does not hold JSON: {e}", msg.name)))?
            }
        }
        Special::StringItems => Value::Array(
            fields
                .into_iter()
                .filter(|(t, _)| *t == 1)
                .map(|(_, v)| v)
                .collect(),
        ),
        Special::SchemaOrArray => {
            let list: Vec<Value> = fields
                .iter()
                .filter(|(t, _)| *t == 2)
                .map(|(_, v)| v.clone())
                .collect();
            if list.is_empty() {
                get(1).cloned().unwrap_or(Value::Null)
            } else {
                Value::Array(list)
            }
        }
        Special::SchemaOrBool => match get(2) {
            Some(schema) => schema.clone(),
            None => get(1).cloned().unwrap_or(Value::Bool(false)),
        },
        Special::SchemaOrStringArray => {
            let list: Vec<Value> = fields
                .iter()
                .filter(|(t, _)| *t == 2)
                .map(|(_, v)| v.clone())
                .collect();
            if list.is_empty() {
                get(1).cloned().unwrap_or(Value::Null)
            } else {
                Value::Array(list)
            }
        }
    })
}
