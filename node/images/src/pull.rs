//! Pulling from OCI/Docker registries with `oci-client`.

use crate::{io_err, normalize, Error, Image, ImageStore, Result};
use oci_client::client::{ClientConfig, ClientProtocol};
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
    pub auth: Auth,
    /// Use plain HTTP (K3s `registries.yaml` `insecure`, or a loopback registry).
    pub plain_http: bool,
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

/// A client for one pull: plain HTTP only when asked.
pub fn client(plain_http: bool) -> Client {
    // reqwest is built without a bundled crypto provider: use ring, like the rest of k3rs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    })
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

async fn pull_uncached(store: &ImageStore, key: &str, opts: &PullOptions) -> Result<Image> {
    let perr = |e: &dyn std::fmt::Display| Error::Pull {
        reference: key.to_string(),
        message: e.to_string(),
    };
    let reference: Reference = key
        .parse()
        .map_err(|_| Error::InvalidReference(key.to_string()))?;
    let client = client(opts.plain_http);
    let auth = RegistryAuth::from(&opts.auth);
    let (manifest, manifest_digest, config) = client
        .pull_manifest_and_config(&reference, &auth)
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
                .pull_blob(&reference, l, file)
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
