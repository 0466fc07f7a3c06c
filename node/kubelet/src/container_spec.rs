//! From a pod's container spec to what the runtime runs: command line (with the image's
//! entrypoint/cmd and `$(VAR)` expansion), environment (image, env, envFrom, valueFrom), user
//! and cgroup limits.

use serde_json::Value;
use std::collections::BTreeMap;

/// Parses a CPU quantity ("250m", "1", "0.5") into millicores.
pub fn cpu_millis(q: &str) -> Option<u64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    let v: f64 = q.parse().ok()?;
    Some((v * 1000.0).round() as u64)
}

/// Parses a memory quantity ("128Mi", "1G", "500000", "1.5Gi") into bytes.
pub fn memory_bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("m", 1e-3),
    ];
    for (s, mul) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            let v: f64 = n.parse().ok()?;
            return Some((v * mul) as i64);
        }
    }
    q.parse::<f64>().ok().map(|v| v as i64)
}

/// Expands `$(VAR)` references like upstream: unknown references stay as written, `$$` escapes.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    })
}

/// The process arguments: `command` replaces the entrypoint, `args` replaces cmd (upstream rules).
pub fn command_line(
    container: &Value,
    entrypoint: &[String],
    cmd: &[String],
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let command = strings(&container["command"]).filter(|c| !c.is_empty());
    let args = strings(&container["args"]).filter(|a| !a.is_empty());
    let argv: Vec<String> = match (command, args) {
        (Some(c), Some(a)) => c.into_iter().chain(a).collect(),
        (Some(c), None) => c,
        (None, Some(a)) => entrypoint.iter().cloned().chain(a).collect(),
        (None, None) => entrypoint.iter().chain(cmd.iter()).cloned().collect(),
    };
    let explicit = container.get("command").is_some() || container.get("args").is_some();
    if explicit {
        argv.iter().map(|a| expand(a, env)).collect()
    } else {
        argv
    }
}

/// The field a `fieldRef` names, read from the pod.
pub fn field_ref(pod: &Value, path: &str, host_ip: &str) -> Option<String> {
    let m = &pod["metadata"];
    let s = |v: &Value| v.as_str().map(String::from);
    match path {
        "metadata.name" => s(&m["name"]),
        "metadata.namespace" => s(&m["namespace"]),
        "metadata.uid" => s(&m["uid"]),
        "spec.nodeName" => s(&pod["spec"]["nodeName"]),
        "spec.serviceAccountName" => {
            s(&pod["spec"]["serviceAccountName"]).or(Some("default".into()))
        }
        "status.hostIP" | "status.hostIPs" => Some(host_ip.to_string()),
        "status.podIP" | "status.podIPs" => s(&pod["status"]["podIP"]).or(Some(String::new())),
        p => {
            let (map, key) = if let Some(rest) = p.strip_prefix("metadata.labels['") {
                ("labels", rest.trim_end_matches("']"))
            } else if let Some(rest) = p.strip_prefix("metadata.annotations['") {
                ("annotations", rest.trim_end_matches("']"))
            } else if p == "metadata.labels" || p == "metadata.annotations" {
                let key = p.trim_start_matches("metadata.");
                let lines: Vec<String> = m[key]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                return Some(lines.join("\n"));
            } else {
                return None;
            };
            s(&m[map][key])
        }
    }
}

/// Container resource limits for the runtime, from `resources`.
pub fn limits(container: &Value) -> (Option<i64>, Option<u64>, Option<u64>) {
    let r = &container["resources"];
    let mem = r
        .pointer("/limits/memory")
        .and_then(Value::as_str)
        .and_then(memory_bytes);
    let cpu_limit = r
        .pointer("/limits/cpu")
        .and_then(Value::as_str)
        .and_then(cpu_millis);
    // cpu.shares from the request (or the limit when only a limit is set), as kubelet does.
    let shares = r
        .pointer("/requests/cpu")
        .or_else(|| r.pointer("/limits/cpu"))
        .and_then(Value::as_str)
        .and_then(cpu_millis)
        .map(|m| (m * 1024 / 1000).max(2));
    (mem, cpu_limit, shares)
}

/// The numeric user and group: container securityContext over pod securityContext over the image's USER.
pub fn user_ids(
    pod: &Value,
    container: &Value,
    image_user: &str,
    passwd: Option<&str>,
) -> (u32, u32) {
    let sc_c = &container["securityContext"];
    let sc_p = &pod["spec"]["securityContext"];
    let (mut uid, mut gid) = parse_image_user(image_user, passwd);
    if let Some(u) = sc_c["runAsUser"].as_u64().or(sc_p["runAsUser"].as_u64()) {
        uid = u as u32;
    }
    if let Some(g) = sc_c["runAsGroup"].as_u64().or(sc_p["runAsGroup"].as_u64()) {
        gid = g as u32;
    }
    (uid, gid)
}

/// `USER` of an image: "1000", "1000:1000", or a name looked up in the image's /etc/passwd.
pub fn parse_image_user(user: &str, passwd: Option<&str>) -> (u32, u32) {
    if user.is_empty() {
        return (0, 0);
    }
    let (u, g) = user
        .split_once(':')
        .map(|(u, g)| (u, Some(g)))
        .unwrap_or((user, None));
    let lookup = |name: &str| -> Option<(u32, u32)> {
        passwd?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| (f[2].parse().ok(), f[3].parse().ok()))
                .and_then(|(a, b)| Some((a?, b?)))
        })
    };
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => lookup(u).unwrap_or((0, 0)),
    };
    let gid = g.and_then(|g| g.parse().ok()).unwrap_or(default_gid);
    (uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(memory_bytes("128Mi"), Some(128 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("4096"), Some(4096));
    }

    #[test]
    fn command_and_expansion() {
        let env: BTreeMap<String, String> = [("NAME".to_string(), "web".to_string())].into();
        let ep = vec!["/entry".to_string()];
        let cmd = vec!["serve".to_string()];
        assert_eq!(
            command_line(&json!({}), &ep, &cmd, &env),
            vec!["/entry", "serve"]
        );
        assert_eq!(
            command_line(&json!({"args": ["-x", "$(NAME)"]}), &ep, &cmd, &env),
            vec!["/entry", "-x", "web"]
        );
        assert_eq!(
            command_line(
                &json!({"command": ["sh", "-c", "echo $(NAME) $(OTHER) $$(NAME)"]}),
                &ep,
                &cmd,
                &env
            ),
            vec!["sh", "-c", "echo web $(OTHER) $(NAME)"]
        );
    }

    #[test]
    fn users_and_fields() {
        assert_eq!(parse_image_user("1000:2000", None), (1000, 2000));
        assert_eq!(
            parse_image_user(
                "nobody",
                Some("root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
            ),
            (65534, 65534)
        );
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}}, "spec": {"nodeName": "n1", "securityContext": {"runAsUser": 7}}});
        assert_eq!(user_ids(&pod, &json!({}), "", None), (7, 0));
        assert_eq!(
            field_ref(&pod, "metadata.labels['a']", "1.2.3.4").as_deref(),
            Some("b")
        );
        assert_eq!(
            field_ref(&pod, "status.hostIP", "1.2.3.4").as_deref(),
            Some("1.2.3.4")
        );
        let (mem, cpu, shares) = limits(
            &json!({"resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "100m"}}}),
        );
        assert_eq!((mem, cpu, shares), (Some(64 << 20), Some(500), Some(102)));
    }
}
