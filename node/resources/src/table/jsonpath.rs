//! The JSONPath subset that CRD `additionalPrinterColumns` use: field steps (`.a.b`, `['a.b']`),
//! indexes (`[0]`, `[-1]`), wildcards (`[*]`, `.*`) and filters
//! (`[?(@.type=="Ready")]`, `[?(@.x)]`, `!=`, `<`, `>`, ...). Only the first result is needed.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    Filter {
        path: Vec<Step>,
        op: Option<(String, Value)>,
    },
}

/// The first value `path` selects in `obj`, if any.
pub(crate) fn first<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut p = path.trim();
    if let Some(inner) = p.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        p = inner.trim();
    }
    let p = p.strip_prefix('$').unwrap_or(p);
    let steps = parse(p)?;
    let mut out = vec![];
    eval(obj, &steps, &mut out);
    out.into_iter().next()
}

fn eval<'a>(v: &'a Value, steps: &[Step], out: &mut Vec<&'a Value>) {
    let Some((step, rest)) = steps.split_first() else {
        out.push(v);
        return;
    };
    match step {
        Step::Field(name) => {
            if let Some(next) = v.get(name.as_str()) {
                eval(next, rest, out);
            }
        }
        Step::Index(i) => {
            if let Some(a) = v.as_array() {
                let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                if idx >= 0 {
                    if let Some(next) = a.get(idx as usize) {
                        eval(next, rest, out);
                    }
                }
            }
        }
        Step::Wildcard => match v {
            Value::Array(a) => a.iter().for_each(|x| eval(x, rest, out)),
            Value::Object(m) => m.values().for_each(|x| eval(x, rest, out)),
            _ => {}
        },
        Step::Filter { path, op } => {
            let items: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                let mut found = vec![];
                eval(item, path, &mut found);
                let keep = match (found.first(), op) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(left), Some((op, right))) => compare(left, op, right),
                };
                if keep {
                    eval(item, rest, out);
                }
            }
        }
    }
}

fn compare(left: &Value, op: &str, right: &Value) -> bool {
    let ord = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    };
    use std::cmp::Ordering::*;
    match (op, ord) {
        ("==", Some(o)) => o == Equal,
        ("!=", Some(o)) => o != Equal,
        ("!=", None) => true,
        ("<", Some(o)) => o == Less,
        ("<=", Some(o)) => o != Greater,
        (">", Some(o)) => o == Greater,
        (">=", Some(o)) => o != Less,
        _ => false,
    }
}

fn parse(s: &str) -> Option<Vec<Step>> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut steps = vec![];
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                if i < chars.len() && chars[i] == '.' {
                    return None; // recursive descent is not supported
                }
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                match name.as_str() {
                    "" => {}
                    "*" => steps.push(Step::Wildcard),
                    _ => steps.push(Step::Field(name)),
                }
            }
            '[' => {
                let end = matching_bracket(&chars, i)?;
                let inner: String = chars[i + 1..end].iter().collect();
                steps.push(parse_bracket(inner.trim())?);
                i = end + 1;
            }
            '@' => i += 1,
            c if c.is_whitespace() => i += 1,
            _ => {
                // A bare leading field name ("spec.replicas").
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                steps.push(Step::Field(chars[start..i].iter().collect()));
            }
        }
    }
    Some(steps)
}

fn matching_bracket(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    if s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')))
    {
        Some(&s[1..s.len() - 1])
    } else {
        None
    }
}

fn parse_bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::Wildcard);
    }
    if let Some(name) = unquote(inner) {
        return Some(Step::Field(name.to_string()));
    }
    if let Some(filter) = inner.strip_prefix('?') {
        let f = filter.trim();
        let f = f
            .strip_prefix('(')
            .and_then(|f| f.strip_suffix(')'))?
            .trim();
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if let Some((l, r)) = split_outside_quotes(f, op) {
                let path = parse(l.trim().strip_prefix('@')?)?;
                let r = r.trim();
                let value = match unquote(r) {
                    Some(s) => Value::String(s.to_string()),
                    None => serde_json::from_str(r).ok()?,
                };
                return Some(Step::Filter {
                    path,
                    op: Some((op.to_string(), value)),
                });
            }
        }
        let path = parse(f.strip_prefix('@')?)?;
        return Some(Step::Filter { path, op: None });
    }
    if inner.contains(':') {
        return None; // slices are not supported
    }
    inner.parse().ok().map(Step::Index)
}

fn split_outside_quotes<'a>(s: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, _) if s[i..].starts_with(op) => return Some((&s[..i], &s[i + op.len()..])),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let o = json!({"spec": {"replicas": 3, "a.b": "x"},
            "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(first(&o, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(first(&o, ".spec['a.b']"), Some(&json!("x")));
        assert_eq!(
            first(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(&json!("True"))
        );
        assert_eq!(
            first(&o, ".status.conditions[1].type"),
            Some(&json!("Ready"))
        );
        assert_eq!(
            first(&o, ".status.conditions[-1].type"),
            Some(&json!("Ready"))
        );
        assert_eq!(
            first(&o, ".status.conditions[*].type"),
            Some(&json!("Synced"))
        );
        assert_eq!(first(&o, ".spec.missing"), None);
        assert_eq!(first(&o, "{.spec.replicas}"), Some(&json!(3)));
    }
}
