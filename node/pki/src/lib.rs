//! Cluster PKI for `k3rs server`, laid out and behaving like K3s's.
//!
//! On first start [`load_or_create`] creates, under [`PkiOptions::dir`] (e.g.
//! `<data-dir>/server/tls`), a self-signed ECDSA P-256 cluster CA, the API server's serving
//! certificate, the `system:admin` client certificate, the service account signing key and the
//! node token. A restart reuses every file byte for byte, except that:
//! - the serving certificate is re-issued (by the same CA) when the wanted SAN set changed;
//! - a leaf certificate is re-issued when it no longer matches the CA or its key, or has less
//!   than [`RENEW_BEFORE_DAYS`] days left (K3s renews at startup the same way);
//! - the token file is rewritten when `--token` gives a different secret.
//!
//! File modes: keys and the token 0600, certificates 0644; every file is written atomically.

#![forbid(unsafe_code)]

mod certs;
mod error;
mod files;
mod kubeconfig;
mod sa;
mod token;
pub mod unverified;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use certs::{client_identity, issue_client_cert, ClientIdentity};
pub use error::Error;
pub use kubeconfig::{render_kubeconfig, write_kubeconfig};
pub use sa::{SaClaims, ServiceAccountKeys, CLOCK_SKEW_LEEWAY_SECS, SA_ISSUER};
pub use token::{ca_hash, format_token, parse_token};

/// Leaf certificates (serving, client) are valid this long.
pub const LEAF_VALIDITY_DAYS: i64 = 365;
/// The CA is valid this long.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// A leaf certificate with less than this many days left is re-issued at startup.
pub const RENEW_BEFORE_DAYS: i64 = 90;

/// File names inside [`PkiOptions::dir`].
pub mod file_names {
    /// The cluster CA certificate (PEM). Its exact bytes are what the node token hashes.
    pub const CA_CERT: &str = "ca.crt";
    /// The cluster CA private key (PKCS#8 PEM).
    pub const CA_KEY: &str = "ca.key";
    /// The API server serving certificate chain: leaf then CA (PEM).
    pub const SERVING_CERT: &str = "serving.crt";
    /// The API server serving key (PKCS#8 PEM).
    pub const SERVING_KEY: &str = "serving.key";
    /// The `system:admin` client certificate (PEM).
    pub const ADMIN_CERT: &str = "admin.crt";
    /// The `system:admin` client key (PKCS#8 PEM).
    pub const ADMIN_KEY: &str = "admin.key";
    /// The service account token signing key (PKCS#8 PEM).
    pub const SA_KEY: &str = "sa.key";
    /// The full node token, `K10<ca hash>::server:<secret>`.
    pub const TOKEN: &str = "token";
}

/// What [`load_or_create`] needs to know about this server.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// Directory holding the PKI files (created with mode 0700 if missing).
    pub dir: PathBuf,
    /// This node's hostname; becomes a DNS SAN of the serving certificate.
    pub hostname: String,
    /// `--tls-san` values: IP literals become IP SANs, anything else DNS SANs.
    pub sans: Vec<String>,
    /// This node's IPs; each becomes an IP SAN.
    pub node_ips: Vec<IpAddr>,
    /// First IP of the service CIDR (the `kubernetes` service ClusterIP), e.g. 10.43.0.1.
    pub service_ip: IpAddr,
    /// `--token`: a bare secret or a full K10 token. `None` generates a random secret once and
    /// persists it. When given and different from the persisted secret, the given one wins and
    /// is persisted. A full K10 token whose CA hash does not match the cluster CA is rejected.
    pub token_secret: Option<String>,
}

/// The cluster's keys and certificates, all PEM.
#[derive(Clone)]
pub struct ClusterPki {
    /// The cluster CA certificate (exact bytes of `ca.crt`).
    pub ca_cert_pem: String,
    /// The cluster CA private key.
    pub ca_key_pem: String,
    /// Serving certificate chain for the API server: the leaf followed by the CA.
    pub serving_cert_pem: String,
    /// Serving private key.
    pub serving_key_pem: String,
    /// Client certificate `CN=system:admin, O=system:masters`.
    pub admin_cert_pem: String,
    /// Key of the admin client certificate.
    pub admin_key_pem: String,
    /// K3s-format node token: `K10` + hex(sha256(CA PEM)) + `::server:` + secret.
    pub node_token: String,
    /// Service account token signing keys.
    pub service_account: ServiceAccountKeys,
}

impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki")
            .field("ca_hash", &self.ca_hash())
            .field("service_account", &self.service_account)
            .finish_non_exhaustive()
    }
}

impl ClusterPki {
    /// Hex SHA-256 of the CA certificate PEM (the hash inside K10 tokens).
    pub fn ca_hash(&self) -> String {
        ca_hash(&self.ca_cert_pem)
    }

    /// The node token's secret part.
    pub fn token_secret(&self) -> &str {
        self.node_token
            .split_once("::server:")
            .map_or(self.node_token.as_str(), |(_, s)| s)
    }

    /// Whether a token presented by a joining node or client is valid for this cluster:
    /// the secret must match (compared in constant time) and a CA hash, if present, must be ours.
    pub fn check_token(&self, presented: &str) -> bool {
        let Some((hash, secret)) = parse_token(presented) else {
            return false;
        };
        if let Some(hash) = hash {
            if hash != self.ca_hash() {
                return false;
            }
        }
        token::constant_time_eq(secret.as_bytes(), self.token_secret().as_bytes())
    }
}

/// Create the PKI under `opts.dir`, or load it, re-issuing only what must change (see the
/// crate docs).
pub fn load_or_create(opts: &PkiOptions) -> Result<ClusterPki, Error> {
    use file_names::*;
    let dir = &opts.dir;
    files::create_dir(dir)?;
    let now = time::OffsetDateTime::now_utc();

    let (ca_cert_pem, ca_key_pem, ca_new) = certs::load_or_create_ca(dir, now)?;
    let ca = certs::Ca::from_pem(&ca_cert_pem, &ca_key_pem)?;

    let wanted_sans = certs::serving_sans(opts)?;
    let (serving_cert_pem, serving_key_pem) = certs::load_or_issue_leaf(
        &ca,
        ca_new,
        &dir.join(SERVING_CERT),
        &dir.join(SERVING_KEY),
        &certs::LeafSpec {
            common_name: "kube-apiserver",
            groups: &[],
            sans: &wanted_sans,
            server_auth: true,
            chain_ca: true,
        },
        now,
    )?;
    let (admin_cert_pem, admin_key_pem) = certs::load_or_issue_leaf(
        &ca,
        ca_new,
        &dir.join(ADMIN_CERT),
        &dir.join(ADMIN_KEY),
        &certs::LeafSpec {
            common_name: "system:admin",
            groups: &["system:masters"],
            sans: &[],
            server_auth: false,
            chain_ca: false,
        },
        now,
    )?;

    let sa_path = dir.join(SA_KEY);
    let service_account = match files::read_optional(&sa_path)? {
        Some(pem) => ServiceAccountKeys::from_pem(&pem)?,
        None => {
            let keys = ServiceAccountKeys::generate()?;
            files::write_atomic(
                &sa_path,
                keys.private_key_pem().as_bytes(),
                files::SECRET_MODE,
            )?;
            tracing::info!(path = %sa_path.display(), "created service account signing key");
            keys
        }
    };

    let node_token = load_or_create_token(dir, &ca_cert_pem, opts.token_secret.as_deref())?;

    Ok(ClusterPki {
        ca_cert_pem,
        ca_key_pem,
        serving_cert_pem,
        serving_key_pem,
        admin_cert_pem,
        admin_key_pem,
        node_token,
        service_account,
    })
}

fn load_or_create_token(dir: &Path, ca_pem: &str, given: Option<&str>) -> Result<String, Error> {
    let path = dir.join(file_names::TOKEN);
    let persisted = files::read_optional(&path)?;
    let persisted_secret = match persisted.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(parse_token(t).ok_or(Error::InvalidToken)?.1),
    };
    let secret = match given {
        Some(given) => {
            let (hash, secret) = parse_token(given).ok_or(Error::InvalidToken)?;
            if let Some(hash) = hash {
                let actual = ca_hash(ca_pem);
                if hash != actual {
                    return Err(Error::TokenCaMismatch {
                        given: hash,
                        actual,
                    });
                }
            }
            secret
        }
        None => persisted_secret.unwrap_or_else(token::random_secret),
    };
    let full = format_token(ca_pem, &secret);
    if persisted.as_deref().map(str::trim) != Some(full.as_str()) {
        files::write_atomic(&path, format!("{full}\n").as_bytes(), files::SECRET_MODE)?;
        tracing::info!(path = %path.display(), "wrote node token");
    }
    Ok(full)
}

#[cfg(test)]
mod tests;
