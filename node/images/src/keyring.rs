//! Credentials from docker configs (the kubelet's `credentialprovider.BasicDockerKeyring`):
//! `kubernetes.io/dockerconfigjson` (`{"auths": {KEY: {...}}}`) and `kubernetes.io/dockercfg`
//! (`{KEY: {...}}`) Secrets. A KEY matches an image like upstream: scheme ignored, host equal
//! (a `*` label matches one label), port equal, and the key's path a prefix of the repository.

use crate::pull::Auth;
use crate::registries::decode_auth;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    host: String,
    port: Option<String>,
    path: String,
    auth: Auth,
}

/// Credentials collected from one or more docker configs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerKeyring {
    entries: Vec<Entry>,
}

/// `host[:port]` of a key or image registry; Docker Hub spellings become `docker.io`.
fn split_host(host_port: &str) -> (String, Option<String>) {
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (h, Some(p.to_string()))
        }
        _ => (host_port, None),
    };
    let host = host.to_ascii_lowercase();
    let host = match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    };
    (host, port)
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let (p, h): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), host.split('.').collect());
    p.len() == h.len() && p.iter().zip(&h).all(|(p, h)| *p == "*" || p == h)
}

fn path_prefix(prefix: &str, path: &str) -> bool {
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

fn entry_auth(v: &Value) -> Option<Auth> {
    let s = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(t) = s("identitytoken").or_else(|| s("registrytoken")) {
        return Some(Auth::Bearer(t));
    }
    if let (Some(username), Some(password)) = (s("username"), s("password")) {
        return Some(Auth::Basic { username, password });
    }
    s("auth").and_then(|a| decode_auth(&a))
}

impl DockerKeyring {
    /// Adds every entry of a docker config: `{"auths": {...}}` or the legacy `{KEY: {...}}`.
    pub fn add_config(&mut self, config: &Value) {
        let auths = config.get("auths").unwrap_or(config);
        let Some(map) = auths.as_object() else {
            return;
        };
        for (key, v) in map {
            let Some(auth) = entry_auth(v) else {
                continue;
            };
            let rest = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let (host_port, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (host, port) = split_host(host_port);
            // `https://index.docker.io/v1/` is the Docker Hub's classic key, not a path.
            let path = if host == "docker.io" && path.trim_matches('/') == "v1" {
                ""
            } else {
                path.trim_matches('/')
            };
            self.entries.push(Entry {
                host,
                port,
                path: path.to_string(),
                auth,
            });
        }
    }

    /// Adds the docker config in a Secret's decoded data, by Secret type. Returns false for
    /// other types or unparsable data.
    pub fn add_secret(&mut self, secret_type: &str, data: &[u8]) -> bool {
        let (expected, legacy) = match secret_type {
            "kubernetes.io/dockerconfigjson" => (true, false),
            "kubernetes.io/dockercfg" => (true, true),
            _ => (false, false),
        };
        if !expected {
            return false;
        }
        match serde_json::from_slice::<Value>(data) {
            Ok(v) if legacy || v.get("auths").is_some() => {
                self.add_config(&v);
                true
            }
            _ => false,
        }
    }

    /// The credentials for `registry` (`host[:port]`) and `repository`: the most specific
    /// matching key (longest host, then path); the first added wins a tie.
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<Auth> {
        let (host, port) = split_host(registry);
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                host_matches(&e.host, &host) && e.port == port && path_prefix(&e.path, repository)
            })
            .max_by_key(|(i, e)| (e.host.len(), e.path.len(), std::cmp::Reverse(*i)))
            .map(|(_, e)| e.auth.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn basic(u: &str) -> Auth {
        Auth::Basic {
            username: u.into(),
            password: "pw".into(),
        }
    }

    #[test]
    fn keys_match_like_the_kubelet() {
        let mut k = DockerKeyring::default();
        k.add_config(&json!({"auths": {
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
            "10.0.0.1:5000": {"auth": "cmVnOnB3"},
            "http://registry.example.test/team": {"username": "team", "password": "pw"},
            "registry.example.test": {"username": "any", "password": "pw"},
            "*.corp.test": {"username": "glob", "password": "pw"},
            "broken.test": {"email": "x"},
        }}));
        assert_eq!(k.lookup("docker.io", "library/busybox"), Some(basic("hub")));
        assert_eq!(k.lookup("10.0.0.1:5000", "a/b"), Some(basic("reg")));
        assert_eq!(k.lookup("10.0.0.1", "a/b"), None, "port must match");
        assert_eq!(k.lookup("10.0.0.1:5001", "a/b"), None);
        assert_eq!(
            k.lookup("registry.example.test", "team/app"),
            Some(basic("team"))
        );
        assert_eq!(
            k.lookup("registry.example.test", "teamx/app"),
            Some(basic("any"))
        );
        assert_eq!(k.lookup("r.corp.test", "x"), Some(basic("glob")));
        assert_eq!(k.lookup("a.r.corp.test", "x"), None);
        assert_eq!(k.lookup("broken.test", "x"), None);
    }

    #[test]
    fn secrets_by_type() {
        let mut k = DockerKeyring::default();
        assert!(k.add_secret(
            "kubernetes.io/dockerconfigjson",
            br#"{"auths":{"r.test":{"username":"a","password":"pw"}}}"#
        ));
        assert!(k.add_secret(
            "kubernetes.io/dockercfg",
            br#"{"old.test":{"auth":"Yjpwdw==","email":"e"}}"#
        ));
        assert!(!k.add_secret("Opaque", b"{}"));
        assert!(!k.add_secret("kubernetes.io/dockerconfigjson", b"not json"));
        assert_eq!(k.lookup("r.test", "x"), Some(basic("a")));
        assert_eq!(k.lookup("old.test", "x"), Some(basic("b")));
    }
}
