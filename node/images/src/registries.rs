//! K3s's `registries.yaml` (`/etc/k3rs/registries.yaml`, `--private-registry`): per-registry
//! mirrors (endpoints tried in order, then the registry itself; repository `rewrite` rules; a
//! `"*"` mirror for every registry without its own entry) and per-host `configs` (auth, TLS).
//!
//! ```yaml
//! mirrors:
//!   docker.io:
//!     endpoint: ["http://10.0.0.1:5000", "https://mirror.example.com"]
//!     rewrite:
//!       "^rancher/(.*)": "mirrored/rancher/$1"
//!   "*":
//!     endpoint: ["https://fallback.example.com"]
//! configs:
//!   mirror.example.com:
//!     auth: {username: u, password: p}   # or auth: base64(u:p), or identity_token
//!     tls: {insecure_skip_verify: false, ca_file: /etc/ssl/mirror-ca.pem}
//! ```
//! What `oci-client` cannot do is rejected or logged where it is read: an endpoint URL with a
//! path (containerd uses it instead of `/v2`) is an error; `cert_file`/`key_file` (client
//! certificates) are logged and ignored.

use crate::pull::Auth;
use base64::Engine;
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tracing::warn;

/// Where K3s reads it is `/etc/rancher/k3s/registries.yaml`; k3rs keeps its files in /etc/k3rs.
pub const DEFAULT_PATH: &str = "/etc/k3rs/registries.yaml";

/// A `registries.yaml` that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("reading {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        file: String,
        line: Option<usize>,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileSpec {
    mirrors: BTreeMap<String, MirrorSpec>,
    configs: BTreeMap<String, ConfigSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MirrorSpec {
    endpoint: Vec<String>,
    rewrite: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConfigSpec {
    auth: Option<AuthSpec>,
    tls: Option<TlsSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuthSpec {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
    identity_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TlsSpec {
    insecure_skip_verify: bool,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

#[derive(Debug, Clone)]
struct EndpointUrl {
    host: String,
    plain_http: bool,
}

#[derive(Debug, Clone)]
struct Mirror {
    endpoints: Vec<EndpointUrl>,
    rewrites: Vec<(Regex, String)>,
}

/// Settings for one registry host (`configs.<host>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub auth: Auth,
    pub insecure_skip_verify: bool,
    /// PEM bundle from `ca_file`, trusted in addition to the built-in roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// One place to try a pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    pub plain_http: bool,
    /// The repository on that host (after `rewrite` rules for mirrors).
    pub repository: String,
    pub config: HostConfig,
}

impl Endpoint {
    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// A parsed `registries.yaml`. The default (no file) has no mirrors and no configs.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    mirrors: BTreeMap<String, Mirror>,
    configs: BTreeMap<String, HostConfig>,
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// `docker.io` names the Docker Hub; everything else is the host as written.
fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

impl Registries {
    /// Reads `path`; a missing file is the default.
    pub fn load(path: &Path) -> Result<Registries, RegistriesError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Registries::parse(&text, &file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registries::default()),
            Err(source) => Err(RegistriesError::Read { file, source }),
        }
    }

    /// Parses the YAML text of `file` (named in errors).
    pub fn parse(text: &str, file: &str) -> Result<Registries, RegistriesError> {
        let invalid = |line: Option<usize>, message: String| RegistriesError::Invalid {
            file: file.to_string(),
            line,
            message,
        };
        let spec: FileSpec = if text.trim().is_empty() {
            FileSpec::default()
        } else {
            serde_yaml::from_str(text)
                .map_err(|e| invalid(e.location().map(|l| l.line()), e.to_string()))?
        };
        let mut mirrors = BTreeMap::new();
        for (name, m) in spec.mirrors {
            let mut endpoints = Vec::new();
            for url in &m.endpoint {
                let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
                    (true, r)
                } else if let Some(r) = url.strip_prefix("https://") {
                    (false, r)
                } else {
                    (false, url.as_str())
                };
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                if host.is_empty() || !path.trim_matches('/').is_empty() && path != "v2" {
                    return Err(invalid(
                        line_of(text, url),
                        format!(
                            "mirror {name:?}: endpoint {url:?} must be scheme://host[:port] \
                             (paths other than /v2 are not supported)"
                        ),
                    ));
                }
                endpoints.push(EndpointUrl {
                    host: host.to_string(),
                    plain_http,
                });
            }
            let mut rewrites = Vec::new();
            for (pattern, replacement) in m.rewrite {
                let re = Regex::new(&pattern).map_err(|e| {
                    invalid(
                        line_of(text, &pattern),
                        format!("mirror {name:?}: rewrite {pattern:?}: {e}"),
                    )
                })?;
                rewrites.push((re, replacement));
            }
            mirrors.insert(
                canonical_host(&name).to_string(),
                Mirror {
                    endpoints,
                    rewrites,
                },
            );
        }
        let mut configs = BTreeMap::new();
        for (host, c) in spec.configs {
            let mut hc = HostConfig::default();
            if let Some(a) = c.auth {
                hc.auth = if let Some(token) = a.identity_token.filter(|t| !t.is_empty()) {
                    Auth::Bearer(token)
                } else if let (Some(username), Some(password)) = (a.username, a.password) {
                    Auth::Basic { username, password }
                } else if let Some(encoded) = a.auth {
                    decode_auth(&encoded).ok_or_else(|| {
                        invalid(
                            line_of(text, &encoded),
                            format!("configs {host:?}: auth is not base64 of user:password"),
                        )
                    })?
                } else {
                    Auth::Anonymous
                };
            }
            if let Some(t) = c.tls {
                hc.insecure_skip_verify = t.insecure_skip_verify;
                if let Some(ca) = t.ca_file {
                    hc.ca_pem = Some(std::fs::read(&ca).map_err(|e| {
                        invalid(
                            line_of(text, &ca),
                            format!("configs {host:?}: ca_file {ca}: {e}"),
                        )
                    })?);
                }
                if t.cert_file.is_some() || t.key_file.is_some() {
                    warn!(%file, %host, "tls cert_file/key_file (client certificates) are not supported; ignored");
                }
            }
            let key = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            configs.insert(canonical_host(key).to_string(), hc);
        }
        Ok(Registries { mirrors, configs })
    }

    /// The places to pull `registry/repository` from, in order: the mirror's endpoints (its
    /// own entry, else `"*"`), then the registry itself unless a mirror endpoint already is it.
    /// The registry itself is spoken to over plain HTTP when it is a loopback address or
    /// `plain_http_default` is set.
    pub fn endpoints(
        &self,
        registry: &str,
        repository: &str,
        plain_http_default: bool,
    ) -> Vec<Endpoint> {
        let registry = canonical_host(registry);
        let config = |host: &str| {
            self.configs
                .get(canonical_host(host))
                .cloned()
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        let mirror = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        if let Some(m) = mirror {
            let rewritten = m
                .rewrites
                .iter()
                .find(|(re, _)| re.is_match(repository))
                .map(|(re, to)| re.replace(repository, to.as_str()).into_owned())
                .unwrap_or_else(|| repository.to_string());
            for e in &m.endpoints {
                out.push(Endpoint {
                    host: e.host.clone(),
                    plain_http: e.plain_http,
                    repository: rewritten.clone(),
                    config: config(&e.host),
                });
            }
        }
        if !out.iter().any(|e| canonical_host(&e.host) == registry) {
            out.push(Endpoint {
                host: registry.to_string(),
                plain_http: plain_http_default || is_loopback(registry),
                repository: repository.to_string(),
                config: config(registry),
            });
        }
        out
    }
}

/// `auth: base64("user:password")` as in a docker config.
pub(crate) fn decode_auth(encoded: &str) -> Option<Auth> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Auth::Basic {
        username: username.into(),
        password: password.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://10.0.0.1:5000"
      - "https://mirror.example.com"
    rewrite:
      "^library/(.*)": "hub/$1"
  registry.example.test:
    endpoint: ["http://10.0.0.2:5000/v2"]
  "*":
    endpoint: ["https://any.example.com"]
configs:
  mirror.example.com:
    auth:
      username: u
      password: p
  "https://10.0.0.2:5000":
    auth:
      auth: dXNlcjpzZWNyZXQ=
    tls:
      insecure_skip_verify: true
  any.example.com:
    auth:
      identity_token: tok
"#;

    #[test]
    fn mirrors_in_order_then_the_registry_with_rewrites_and_auth() {
        let r = Registries::parse(YAML, "registries.yaml").unwrap();
        let eps = r.endpoints("docker.io", "library/busybox", false);
        let got: Vec<(String, &str)> = eps
            .iter()
            .map(|e| (e.url(), e.repository.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("http://10.0.0.1:5000".to_string(), "hub/busybox"),
                ("https://mirror.example.com".to_string(), "hub/busybox"),
                ("https://docker.io".to_string(), "library/busybox"),
            ]
        );
        assert_eq!(eps[0].config.auth, Auth::Anonymous);
        assert_eq!(
            eps[1].config.auth,
            Auth::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        let eps = r.endpoints("registry.example.test", "x/y", false);
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].url(), "http://10.0.0.2:5000");
        assert!(eps[0].config.insecure_skip_verify);
        assert_eq!(
            eps[0].config.auth,
            Auth::Basic {
                username: "user".into(),
                password: "secret".into()
            }
        );
        // "*" covers registries without their own entry.
        let eps = r.endpoints("quay.io", "a/b", false);
        assert_eq!(eps[0].url(), "https://any.example.com");
        assert_eq!(eps[0].config.auth, Auth::Bearer("tok".into()));
        assert_eq!(eps[1].url(), "https://quay.io");
    }

    #[test]
    fn no_file_means_the_registry_itself() {
        let r = Registries::load(Path::new("/nonexistent/registries.yaml")).unwrap();
        let eps = r.endpoints("127.0.0.1:5000", "a", false);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].url(), "http://127.0.0.1:5000");
        assert_eq!(
            r.endpoints("example.com", "a", false)[0].url(),
            "https://example.com"
        );
    }

    #[test]
    fn a_mirror_endpoint_naming_the_registry_replaces_the_default() {
        let r = Registries::parse(
            "mirrors:\n  10.1.1.1:5000:\n    endpoint: [\"http://10.1.1.1:5000\"]\n",
            "f",
        )
        .unwrap();
        let eps = r.endpoints("10.1.1.1:5000", "a", false);
        assert_eq!(eps.len(), 1);
        assert!(eps[0].plain_http);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let e = Registries::parse(
            "mirrors:\n  docker.io:\n    endpoint: 5\n",
            "/etc/k3rs/registries.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/etc/k3rs/registries.yaml:3:"), "{e}");
        let e = Registries::parse(
            "mirrors:\n  docker.io:\n    endpoint: [\"http://m\"]\n    rewrite:\n      \"(\": \"x\"\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("r.yaml:5: mirror \"docker.io\": rewrite \"(\""),
            "{e}"
        );
        let e = Registries::parse(
            "mirrors:\n  a:\n    endpoint: [\"https://m/prefix\"]\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("r.yaml:3:"), "{e}");
    }
}
