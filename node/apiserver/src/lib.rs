//! The Kubernetes-compatible API server: HTTPS (rustls) in front of the revisioned store, with
//! discovery, OpenAPI, RBAC, watch, patches and the lifecycle controllers API semantics need.
#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod body;
pub mod bootstrap;
pub mod crd;
pub mod discovery;
pub mod lifecycle;
pub mod limitrange;
pub mod local_client;
pub mod meta;
pub mod objects;
pub mod path;
pub mod portforward;
pub mod quota;
pub mod selectors;
pub mod server;
pub mod spdy;
pub mod state;
pub mod status;
pub mod streaming;
pub mod subresources;
pub mod tls;
pub mod watch;

pub use server::{version_string, KUBERNETES_VERSION};
pub use state::{Api, ServerInfo};

use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS setup failed")]
    Tls(#[from] tls::TlsError),
    #[error("binding {addr} failed")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bootstrapping cluster objects failed: {0}")]
    Bootstrap(status::ApiError),
    #[error("storage failed")]
    Store(#[from] k3rs_store::Error),
}

pub struct Config {
    pub listen: SocketAddr,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub client_ca_pem: String,
    pub store: k3rs_store::Store,
    pub service_accounts: Option<k3rs_pki::ServiceAccountKeys>,
    pub info: ServerInfo,
}

/// A bound, bootstrapped API server, ready to serve.
pub struct ApiServer {
    pub api: Arc<Api>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl ApiServer {
    /// Binds the port, creates the cluster's default objects and builds OpenAPI.
    pub async fn bind(config: Config) -> Result<ApiServer, Error> {
        let acceptor = tls::acceptor(
            &config.serving_cert_pem,
            &config.serving_key_pem,
            &config.client_ca_pem,
        )?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let api = Api::start(
            config.store,
            config.service_accounts,
            config.info,
            config.client_ca_pem,
        )
        .await?;

        Ok(ApiServer {
            api,
            listener,
            acceptor,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends; starts the lifecycle controllers alongside.
    pub async fn serve(self) {
        tokio::spawn(lifecycle::Lifecycle::new(self.api.clone()).run());
        tls::serve(self.listener, self.acceptor, self.api).await
    }
}
