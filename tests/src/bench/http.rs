//! A small HTTPS client for the bench: HTTP/2 over rustls (ring) with the admin client
//! certificate from the kubeconfig, and an anonymous HTTP/1.1 probe for `/readyz`.

use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Every request (headers and whole body) must finish within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The PEM blobs of the admin kubeconfig the server writes.
pub struct Credentials {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl Credentials {
    pub fn from_kubeconfig(path: &Path) -> Result<Credentials> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).context("parsing kubeconfig")?;
        let field = |section: &str, key: &str| -> Result<Vec<u8>> {
            let b64 = doc[section][0][section.trim_end_matches('s')][key]
                .as_str()
                .with_context(|| format!("kubeconfig has no {section}[0].{key}"))?;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .with_context(|| format!("kubeconfig {key} is not base64"))
        };
        Ok(Credentials {
            ca: field("clusters", "certificate-authority-data")?,
            cert: field("users", "client-certificate-data")?,
            key: field("users", "client-key-data")?,
        })
    }
}

/// Connects new HTTP/2 connections to one server with the admin identity.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    base: Arc<str>,
    tls: TlsConnector,
}

impl Client {
    pub fn new(addr: SocketAddr, creds: &Credentials) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&creds.ca) {
            roots.add(ca.context("CA PEM")?)?;
        }
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&creds.cert)
            .collect::<Result<_, _>>()
            .context("client certificate PEM")?;
        let key = PrivateKeyDer::from_pem_slice(&creds.key).context("client key PEM")?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Client {
            addr,
            base: format!("https://{addr}").into(),
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// A new TCP + TLS + HTTP/2 connection. Its driver task ends when every handle is dropped.
    pub async fn connect(&self) -> Result<Conn> {
        let setup = async {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::IpAddress(self.addr.ip().into());
            let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                bail!("the server did not negotiate HTTP/2");
            }
            // Window sizes like client-go's (Go's HTTP/2 transport), so large LIST pages are
            // not throttled by flow control.
            let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(8 << 20)
                .handshake(TokioIo::new(tls))
                .await
                .context("HTTP/2 handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn {
                tx,
                base: self.base.clone(),
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .with_context(|| format!("connecting to {} timed out", self.addr))?
    }
}

/// One HTTP/2 connection; clones share it (concurrent streams).
#[derive(Clone)]
pub struct Conn {
    tx: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    base: Arc<str>,
}

/// A finished request: status and whole body.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response is not JSON")
    }

    /// The JSON body of a 2xx reply, or an error with the server's message.
    pub fn ok_json(&self) -> Result<serde_json::Value> {
        if !self.status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&self.body)
                .ok()
                .and_then(|v| v["message"].as_str().map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
            bail!("HTTP {}: {msg}", self.status);
        }
        self.json()
    }
}

impl Conn {
    fn build(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("accept", "application/json");
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        Ok(b.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        let mut tx = self.tx.clone();
        tx.ready().await.context("connection closed")?;
        Ok(tx.send_request(req).await?)
    }

    /// Sends a request and reads the whole body, within [`REQUEST_TIMEOUT`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply> {
        let req = self.build(method.clone(), path, body)?;
        let work = async {
            let resp = self.send(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Reply { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .with_context(|| format!("{method} {path} timed out after {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path}"))
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    /// Starts a streaming GET (a watch); returns once the response headers arrived.
    pub async fn stream(&self, path: &str) -> Result<Response<Incoming>> {
        let req = self.build(Method::GET, path, None)?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.send(req))
            .await
            .with_context(|| format!("GET {path} timed out"))??;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
                .await
                .map(|r| r.map(|b| b.to_bytes()).unwrap_or_default())
                .unwrap_or_default();
            bail!(
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(resp)
    }
}

/// Anonymous HTTP/1.1 probe of `/readyz`.
#[derive(Clone)]
pub struct ReadyProbe {
    addr: SocketAddr,
    tls: TlsConnector,
}

/// What one probe saw.
pub enum Probe {
    /// Nothing listening yet.
    Refused,
    /// Connected, but not ready (or the answer was not `ok`).
    NotReady(String),
    Ready,
}

impl ReadyProbe {
    pub fn new(addr: SocketAddr) -> Result<ReadyProbe> {
        // Any server certificate: the server may still be creating its CA, so the kubeconfig
        // with the CA does not exist yet; nothing but `/readyz` is asked over this connection.
        let mut config = k3rs_pki::unverified::client_config()?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ReadyProbe {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// One attempt: connect, `GET /readyz`, expect `ok`. A connection accepted while the server
    /// is still bootstrapping waits in the listen backlog and is answered as soon as it serves.
    pub async fn probe(&self, timeout: Duration) -> Probe {
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(_)) => return Probe::Refused,
            Err(_) => return Probe::NotReady("connect timed out".into()),
        };
        let work = async {
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(self.addr.ip().into());
            let tls = self.tls.connect(name, tcp).await?;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = Request::get("/readyz")
                .header("host", self.addr.to_string())
                .body(Full::new(Bytes::new()))?;
            let resp = tx.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok((status, body))) if status == StatusCode::OK && body.as_ref() == b"ok" => {
                Probe::Ready
            }
            Ok(Ok((status, body))) => {
                Probe::NotReady(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
            }
            Ok(Err(e)) => Probe::NotReady(format!("{e:#}")),
            Err(_) => Probe::NotReady("timed out".into()),
        }
    }
}
