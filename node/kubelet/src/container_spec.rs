//! From a pod's container spec to what the runtime runs: command line (with the image's
//! entrypoint/cmd and `$(VAR)` expansion), environment (image, env, envFrom, valueFrom), user,
//! securityContext, cgroup limits, and the pod's QoS class and pod-level cgroup.

use k3rs_resources::quantity::Quantity;
use k3rs_runtime::{PodCgroup, QosClass, Resources, SeccompProfile, Security};
use serde_json::Value;
use std::collections::BTreeMap;

/// Parses a CPU quantity ("250m", "1", "0.5") into millicores.
pub fn cpu_millis(q: &str) -> Option<u64> {
    let m = Quantity::parse(q.trim()).ok()?.milli();
    u64::try_from(m).ok()
}

/// Parses a memory quantity ("128Mi", "1G", "500000", "1.5Gi") into bytes (rounded up).
pub fn memory_bytes(q: &str) -> Option<i64> {
    let v = Quantity::parse(q.trim()).ok()?.value();
    i64::try_from(v).ok()
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

/// The init containers and the app containers of a pod (with their kind: `true` = init).
fn containers_of(pod: &Value) -> impl Iterator<Item = (bool, &Value)> {
    let list = |key: &str| {
        pod["spec"][key]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
    };
    list("initContainers")
        .iter()
        .map(|c| (true, c))
        .chain(list("containers").iter().map(|c| (false, c)))
}

/// A container's CPU (millicores) and memory (bytes) requests and limits; a request not given
/// defaults to the limit, as API defaulting does. Zero counts as unset, as upstream.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ContainerResources {
    cpu_request: Option<u64>,
    memory_request: Option<i64>,
    cpu_limit: Option<u64>,
    memory_limit: Option<i64>,
}

fn container_resources(c: &Value) -> ContainerResources {
    let r = &c["resources"];
    let q = |p: &str| {
        r.pointer(p).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let cpu = |p: &str| q(p).as_deref().and_then(cpu_millis).filter(|m| *m > 0);
    let mem = |p: &str| q(p).as_deref().and_then(memory_bytes).filter(|b| *b > 0);
    let (cpu_limit, memory_limit) = (cpu("/limits/cpu"), mem("/limits/memory"));
    ContainerResources {
        cpu_request: cpu("/requests/cpu").or(cpu_limit),
        memory_request: mem("/requests/memory").or(memory_limit),
        cpu_limit,
        memory_limit,
    }
}

/// The pod's QoS class (k3rs-resources computes it for the API server too) as the runtime's
/// cgroup parent.
pub fn qos_class(pod: &Value) -> QosClass {
    match k3rs_resources::qos::pod_qos_class(pod) {
        k3rs_resources::qos::GUARANTEED => QosClass::Guaranteed,
        k3rs_resources::qos::BURSTABLE => QosClass::Burstable,
        _ => QosClass::BestEffort,
    }
}

/// `cpu.shares` for a CPU request in millicores (the kubelet's `MilliCPUToShares`, minimum 2).
pub fn cpu_shares(millis: u64) -> u64 {
    (millis * 1024 / 1000).max(2)
}

/// The pod-level cgroup: QoS class; memory and CPU limits are the pod's effective limits
/// (app containers and sidecars summed, or the largest init container if that is more) when
/// every container has one, as upstream's `ResourceConfigForPod`; shares from the requests
/// (2 for BestEffort).
pub fn pod_cgroup(pod: &Value) -> PodCgroup {
    let qos = qos_class(pod);
    let (mut all_cpu, mut all_mem) = (true, true);
    let (mut sum, mut init_max) = (ContainerResources::default(), ContainerResources::default());
    let add = |a: Option<u64>, b: Option<u64>| Some(a.unwrap_or(0) + b.unwrap_or(0));
    let addi = |a: Option<i64>, b: Option<i64>| Some(a.unwrap_or(0) + b.unwrap_or(0));
    for (init, c) in containers_of(pod) {
        let r = container_resources(c);
        all_cpu &= r.cpu_limit.is_some();
        all_mem &= r.memory_limit.is_some();
        if init && c["restartPolicy"] != "Always" {
            init_max.cpu_request = init_max.cpu_request.max(r.cpu_request);
            init_max.cpu_limit = init_max.cpu_limit.max(r.cpu_limit);
            init_max.memory_limit = init_max.memory_limit.max(r.memory_limit);
        } else {
            sum.cpu_request = add(sum.cpu_request, r.cpu_request);
            sum.cpu_limit = add(sum.cpu_limit, r.cpu_limit);
            sum.memory_limit = addi(sum.memory_limit, r.memory_limit);
        }
    }
    let cpu_request = sum.cpu_request.max(init_max.cpu_request).unwrap_or(0);
    PodCgroup {
        qos,
        resources: Resources {
            memory_limit_bytes: sum
                .memory_limit
                .max(init_max.memory_limit)
                .filter(|_| all_mem),
            cpu_limit_millis: sum.cpu_limit.max(init_max.cpu_limit).filter(|_| all_cpu),
            cpu_shares: Some(if qos == QosClass::BestEffort {
                2
            } else {
                cpu_shares(cpu_request)
            }),
            pids_limit: None,
        },
    }
}

/// The container's securityContext over the pod's, for the runtime. Errors are
/// CreateContainerConfigError messages.
pub fn security(pod: &Value, c: &Value) -> Result<Security, String> {
    let sc_c = &c["securityContext"];
    let sc_p = &pod["spec"]["securityContext"];
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let profile = sc_c["seccompProfile"]
        .get("type")
        .or_else(|| sc_p["seccompProfile"].get("type"))
        .and_then(Value::as_str);
    let seccomp = match profile {
        None | Some("Unconfined") => SeccompProfile::Unconfined,
        Some("RuntimeDefault") => SeccompProfile::RuntimeDefault,
        Some(other) => return Err(format!("seccomp profile type {other:?} is not supported")),
    };
    let sysctls = sc_p["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["name"].as_str()?.to_string(),
                s["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    Ok(Security {
        privileged: sc_c["privileged"] == Value::Bool(true),
        add_capabilities: names(&sc_c["capabilities"]["add"]),
        drop_capabilities: names(&sc_c["capabilities"]["drop"]),
        no_new_privileges: sc_c["allowPrivilegeEscalation"] == Value::Bool(false),
        seccomp,
        host_pid: pod["spec"]["hostPID"] == Value::Bool(true),
        host_ipc: pod["spec"]["hostIPC"] == Value::Bool(true),
        sysctls,
    })
}

/// `runAsNonRoot`: refuses a container that would run as uid 0, with upstream's messages
/// (`verifyRunAsNonRoot`). `image_uid` is the uid the image's `USER` resolved to.
pub fn verify_run_as_non_root(
    pod: &Value,
    c: &Value,
    image_user: &str,
    image_uid: u32,
) -> Result<(), String> {
    let sc_c = &c["securityContext"];
    let sc_p = &pod["spec"]["securityContext"];
    let non_root = sc_c["runAsNonRoot"]
        .as_bool()
        .or(sc_p["runAsNonRoot"].as_bool())
        .unwrap_or(false);
    if !non_root {
        return Ok(());
    }
    let m = &pod["metadata"];
    let described = format!(
        "{}_{}({})",
        m["name"].as_str().unwrap_or(""),
        m["namespace"].as_str().unwrap_or(""),
        m["uid"].as_str().unwrap_or("")
    );
    let cname = c["name"].as_str().unwrap_or("");
    match sc_c["runAsUser"].as_u64().or(sc_p["runAsUser"].as_u64()) {
        Some(0) => {
            return Err(format!(
            "container's runAsUser breaks non-root policy (pod: {described:?}, container: {cname})"
        ))
        }
        Some(_) => return Ok(()),
        None => {}
    }
    let user = image_user.split(':').next().unwrap_or("");
    if !user.is_empty() && user.parse::<u32>().is_err() {
        return Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {described:?}, container: {cname})"
        ));
    }
    if image_uid == 0 {
        return Err(format!(
            "container has runAsNonRoot and image will run as root (pod: {described:?}, container: {cname})"
        ));
    }
    Ok(())
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

    #[test]
    fn pod_cgroup_limits_sum_when_all_containers_have_them() {
        let r = |cpu: &str, mem: &str| json!({"limits": {"cpu": cpu, "memory": mem}});
        let pod = json!({"spec": {
            "initContainers": [{"resources": r("2", "32Mi")}],
            "containers": [{"resources": r("500m", "64Mi")}, {"resources": r("250m", "64Mi")}]
        }});
        let cg = pod_cgroup(&pod);
        assert_eq!(cg.qos, QosClass::Guaranteed);
        // The init container's 2 CPUs beat the apps' 750m; the apps' 128Mi beat its 32Mi.
        assert_eq!(cg.resources.cpu_limit_millis, Some(2000));
        assert_eq!(cg.resources.memory_limit_bytes, Some(128 << 20));
        assert_eq!(cg.resources.cpu_shares, Some(2048));
        let burstable = json!({"spec": {"containers": [
            {"resources": r("500m", "64Mi")},
            {"resources": {"requests": {"cpu": "100m"}}}
        ]}});
        let cg = pod_cgroup(&burstable);
        assert_eq!(cg.qos, QosClass::Burstable);
        assert_eq!(cg.resources.memory_limit_bytes, None);
        assert_eq!(cg.resources.cpu_limit_millis, None);
        assert_eq!(cg.resources.cpu_shares, Some(614));
        let best_effort = pod_cgroup(&json!({"spec": {"containers": [{}]}}));
        assert_eq!(best_effort.resources.cpu_shares, Some(2));
    }

    #[test]
    fn security_context_container_wins() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": {
            "hostPID": true,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": true,
                "sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 100"}]}
        }});
        let c = json!({"name": "app", "securityContext": {
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true
        }});
        let s = security(&pod, &c).unwrap();
        assert_eq!(s.seccomp, SeccompProfile::RuntimeDefault);
        assert!(s.no_new_privileges && s.host_pid && !s.host_ipc && !s.privileged);
        assert_eq!(s.add_capabilities, vec!["NET_ADMIN"]);
        assert_eq!(s.drop_capabilities, vec!["ALL"]);
        assert_eq!(
            s.sysctls,
            vec![("net.ipv4.ping_group_range".to_string(), "0 100".to_string())]
        );
        let unconfined = json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}});
        assert_eq!(
            security(&pod, &unconfined).unwrap().seccomp,
            SeccompProfile::Unconfined
        );
        let local = json!({"securityContext": {"seccompProfile": {"type": "Localhost"}}});
        assert!(security(&pod, &local).is_err());

        assert_eq!(
            verify_run_as_non_root(&pod, &c, "", 0).unwrap_err(),
            r#"container has runAsNonRoot and image will run as root (pod: "p_ns(u1)", container: app)"#
        );
        assert!(verify_run_as_non_root(&pod, &c, "1000", 1000).is_ok());
        assert!(verify_run_as_non_root(&pod, &c, "nobody", 65534)
            .unwrap_err()
            .contains("non-numeric user (nobody)"));
        let root = json!({"name": "app", "securityContext": {"runAsUser": 0}});
        assert!(verify_run_as_non_root(&pod, &root, "", 0)
            .unwrap_err()
            .starts_with("container's runAsUser breaks non-root policy"));
        let explicit = json!({"name": "app", "securityContext": {"runAsUser": 5}});
        assert!(verify_run_as_non_root(&pod, &explicit, "", 0).is_ok());
    }
}
