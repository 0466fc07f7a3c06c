//! Pulling from OCI/Docker registries with `oci-client`.

use crate::registries::{Endpoint, Registries};
use crate::{io_err, normalize, Error, Image, ImageStore, Result};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::sync::Arc;
use tracing::{info, Instrument};

/// Registry credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token (`identitytoken`/`registrytoken` in a docker config).
    Bearer(String),
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials for this image from the pod's imagePullSecrets, used on every endpoint;
    /// `None`: each endpoint's `configs` entry in `registries.yaml` applies.
    pub auth: Option<Auth>,
    /// Speak plain HTTP to the image's own registry (loopback registries always are).
    pub plain_http: bool,
    /// Mirrors and per-host settings (`registries.yaml`).
    pub registries: Arc<Registries>,
}

impl From<&Auth> for RegistryAuth {
    fn from(a: &Auth) -> Self {
        match a {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Auth::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// A client for one endpoint: plain HTTP only when asked, its TLS settings.
pub fn client(endpoint: &Endpoint) -> Client {
    // reqwest is built without a bundled crypto provider: use ring, like the rest of k3rs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: if endpoint.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: endpoint.config.insecure_skip_verify,
        extra_root_certificates: endpoint
            .config
            .ca_pem
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect(),
        ..Default::default()
    })
}

/// `reference` with its registry and repository replaced by the endpoint's.
fn at_endpoint(reference: &Reference, endpoint: &Endpoint) -> Reference {
    let (host, repo) = (endpoint.host.clone(), endpoint.repository.clone());
    match (reference.tag(), reference.digest()) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(host, repo, t.into(), d.into()),
        (None, Some(d)) => Reference::with_digest(host, repo, d.into()),
        (t, None) => Reference::with_tag(host, repo, t.unwrap_or("latest").into()),
    }
}

pub async fn pull(store: &ImageStore, reference: &str, opts: &PullOptions) -> Result<Image> {
    let key = normalize(reference)?;
    let (cell, leader) = {
        let mut m = store.inflight().lock().expect("inflight lock");
        match m.get(&key) {
            Some(c) => (c.clone(), None),
            None => {
                let c: crate::InflightPull = Arc::new(tokio::sync::Mutex::new(None));
                let g = c.clone().try_lock_owned().expect("fresh mutex");
                m.insert(key.clone(), c.clone());
                (c, Some(g))
            }
        }
    };
    if let Some(mut guard) = leader {
        let span = tracing::info_span!("pull", reference = %key);
        let res = pull_uncached(store, &key, opts).instrument(span).await;
        *guard = Some(res.as_ref().map(Clone::clone).map_err(|e| e.to_string()));
        store.inflight().lock().expect("inflight lock").remove(&key);
        return res;
    }
    let g = cell.lock().await;
    match &*g {
        Some(Ok(img)) => Ok(img.clone()),
        Some(Err(message)) => Err(Error::Pull {
            reference: key,
            message: message.clone(),
        }),
        None => {
            // The leading pull was cancelled: pull ourselves.
            drop(g);
            store.inflight().lock().expect("inflight lock").remove(&key);
            pull_uncached(store, &key, opts).await
        }
    }
}

/// Tries the endpoints in order (mirrors, then the registry); the error names every attempt.
async fn pull_uncached(store: &ImageStore, key: &str, opts: &PullOptions) -> Result<Image> {
    let reference: Reference = key
        .parse()
        .map_err(|_| Error::InvalidReference(key.to_string()))?;
    let endpoints = opts.registries.endpoints(
        reference.registry(),
        reference.repository(),
        opts.plain_http,
    );
    let mut failures = Vec::new();
    for endpoint in &endpoints {
        let auth = opts.auth.as_ref().unwrap_or(&endpoint.config.auth);
        let at = at_endpoint(&reference, endpoint);
        match pull_from(
            store,
            key,
            &client(endpoint),
            &at,
            &RegistryAuth::from(auth),
        )
        .await
        {
            Ok(image) => return Ok(image),
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.url(), error = %e, "pull attempt failed");
                let message = match e {
                    Error::Pull { message, .. } => message,
                    other => other.to_string(),
                };
                failures.push(if endpoints.len() == 1 {
                    message
                } else {
                    format!("{}: {message}", endpoint.url())
                });
            }
        }
    }
    Err(Error::Pull {
        reference: key.to_string(),
        message: failures.join("; "),
    })
}

async fn pull_from(
    store: &ImageStore,
    key: &str,
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
) -> Result<Image> {
    let perr = |e: &dyn std::fmt::Display| Error::Pull {
        reference: key.to_string(),
        message: e.to_string(),
    };
    let (manifest, manifest_digest, config) = client
        .pull_manifest_and_config(reference, auth)
        .await
        .map_err(|e| perr(&e))?;
    // The manifest is identified by the registry's digest; its bytes are not kept (the config
    // and layers are what running containers need).
    let config_digest = manifest.config.digest.clone();
    let got = store.put_blob(config.as_bytes())?;
    if got != config_digest {
        return Err(Error::DigestMismatch {
            expected: config_digest,
            actual: got,
        });
    }
    let mut layers = Vec::new();
    for l in &manifest.layers {
        if !store.blob_path(&l.digest)?.exists() {
            let tmp = store.tmp_path("pull");
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(io_err(format!("creating {}", tmp.display())))?;
            client
                .pull_blob(reference, l, file)
                .await
                .map_err(|e| perr(&e))?;
            store.count_download();
            let s = store_ref(store);
            let d = l.digest.clone();
            tokio::task::spawn_blocking(move || s.put_blob_file(&tmp, Some(&d)))
                .await
                .map_err(|e| perr(&e))??;
        }
        layers.push((l.digest.clone(), l.media_type.clone()));
    }
    info!(digest = %manifest_digest, "pulled");
    let key = key.to_string();
    let s = store_ref(store);
    tokio::task::spawn_blocking(move || s.commit_image(key, manifest_digest, config_digest, layers))
        .await
        .map_err(|e| perr(&e))?
}

fn store_ref(store: &ImageStore) -> ImageStore {
    store.clone()
}

/// Pushes the stored image `reference` to `target` (tests and benchmarks fill local registries
/// with their images this way). The manifest is generated from the layers and config.
pub async fn push(
    store: &ImageStore,
    reference: &str,
    target: &str,
    auth: &Auth,
    plain_http: bool,
) -> Result<()> {
    use oci_client::client::{Config, ImageLayer};
    let image = store
        .get(reference)?
        .ok_or_else(|| Error::NotFound(reference.to_string()))?;
    let perr = |e: &dyn std::fmt::Display| Error::Pull {
        reference: target.to_string(),
        message: format!("push: {e}"),
    };
    let target_ref: Reference = target
        .parse()
        .map_err(|_| Error::InvalidReference(target.to_string()))?;
    let mut layers = Vec::new();
    for digest in &image.layers {
        let data = store.read_blob(digest)?;
        let media_type = if data.starts_with(&[0x1f, 0x8b]) {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layers.push(ImageLayer::new(data, media_type.into(), None));
    }
    let config = Config::new(
        store.read_blob(&image.id)?,
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let endpoint = Endpoint {
        host: target_ref.registry().to_string(),
        plain_http,
        repository: target_ref.repository().to_string(),
        config: Default::default(),
    };
    client(&endpoint)
        .push(
            &target_ref,
            &layers,
            config,
            &RegistryAuth::from(auth),
            None,
        )
        .await
        .map_err(|e| perr(&e))?;
    Ok(())
}
