//! Whether the node's API server is ready, as PID 1 decides it before it prints "API ready" and
//! before it commits a trial slot: `GET /readyz` over TLS on loopback answers 200, with the
//! server's certificate verified against the cluster CA in the kubeconfig the server wrote (the
//! check a client such as kubectl would make). A listening socket is not enough: the server binds
//! its port before it serves, and a slot whose API accepts connections but never answers must
//! not be committed.

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why the API did not count as ready.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: std::io::Error,
    },
    #[error("the kubeconfig has no usable certificate-authority-data: {0}")]
    Ca(String),
    #[error("talking to the API: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("/readyz answered {0:?}")]
    NotReady(String),
}

/// The CA certificates of the kubeconfig's first cluster (`certificate-authority-data`).
pub fn kubeconfig_ca(text: &str) -> Result<Vec<CertificateDer<'static>>, ReadinessError> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ReadinessError::Ca(e.to_string()))?;
    let data = doc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .ok_or_else(|| ReadinessError::Ca("missing".into()))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ReadinessError::Ca(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReadinessError::Ca(e.to_string()))?;
    if certs.is_empty() {
        return Err(ReadinessError::Ca("no certificate in it".into()));
    }
    Ok(certs)
}

/// `GET /readyz` on `127.0.0.1:port`; `Ok` only for a 200 from a server the kubeconfig's CA
/// vouches for. Each step is bounded by `timeout`.
pub fn api_ready(kubeconfig: &Path, port: u16, timeout: Duration) -> Result<(), ReadinessError> {
    // Connect first: while the port is closed (most polls during a boot) nothing else is built.
    let sock = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout)?;
    let text =
        std::fs::read_to_string(kubeconfig).map_err(|source| ReadinessError::Kubeconfig {
            path: kubeconfig.display().to_string(),
            source,
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in kubeconfig_ca(&text)? {
        roots
            .add(cert)
            .map_err(|e| ReadinessError::Ca(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let conn = rustls::ClientConnection::new(Arc::new(config), server)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    // The status line is all that matters; a short read is enough and bounds the work.
    let mut head = [0u8; 256];
    let mut got = 0;
    while got < head.len() {
        match tls.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && got > 0 => break,
            Err(e) => return Err(e.into()),
        }
        if head[..got].contains(&b'\n') {
            break;
        }
    }
    let status = String::from_utf8_lossy(&head[..got]);
    let status = status.lines().next().unwrap_or("").trim();
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(ReadinessError::NotReady(status.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_comes_from_the_first_cluster() {
        let pem = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        let data = base64::engine::general_purpose::STANDARD.encode(pem);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: {data}\n"
        );
        let certs = kubeconfig_ca(&kubeconfig).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].as_ref(), &[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            kubeconfig_ca("clusters: []\n"),
            Err(ReadinessError::Ca(_))
        ));
        assert!(matches!(
            kubeconfig_ca("clusters:\n- cluster:\n    certificate-authority-data: '!!'\n"),
            Err(ReadinessError::Ca(_))
        ));
    }

    /// A TLS server on loopback that answers one request per status line given.
    fn serve(statuses: Vec<&'static str>) -> (u16, tempfile::TempDir) {
        let pki = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = base64::engine::general_purpose::STANDARD.encode(pki.cert.pem());
        std::fs::write(
            dir.path().join("k3rs.yaml"),
            format!("clusters:\n- cluster:\n    certificate-authority-data: {data}\n"),
        )
        .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(pki.signing_key.serialize_der().into()),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for status in statuses {
                let (sock, _) = listener.accept().unwrap();
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut req = Vec::new();
                let mut buf = [0u8; 512];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = tls.read(&mut buf).unwrap();
                    assert!(n > 0);
                    req.extend_from_slice(&buf[..n]);
                }
                assert!(req.starts_with(b"GET /readyz HTTP/1.1\r\n"));
                let body = if status.starts_with("200") {
                    "ok"
                } else {
                    "[-]etcd failed"
                };
                let _ = write!(
                    tls,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        (port, dir)
    }

    #[test]
    fn ready_is_a_200_from_the_server_the_ca_vouches_for() {
        let (port, dir) = serve(vec!["200 OK", "500 Internal Server Error"]);
        let kubeconfig = dir.path().join("k3rs.yaml");
        api_ready(&kubeconfig, port, Duration::from_secs(5)).unwrap();
        let err = api_ready(&kubeconfig, port, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&err, ReadinessError::NotReady(s) if s == "HTTP/1.1 500 Internal Server Error"),
            "{err}"
        );
        // A server another CA signed is not the API.
        let (other, _other_dir) = serve(vec!["200 OK"]);
        let err = api_ready(&kubeconfig, other, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(err, ReadinessError::Io(_) | ReadinessError::Tls(_)),
            "{err}"
        );
    }

    #[test]
    fn a_port_that_accepts_but_never_answers_is_not_ready() {
        // What PID 1 saw before: the server's socket is bound, nothing is served yet.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("k3rs.yaml");
        let pki = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let data = base64::engine::general_purpose::STANDARD.encode(pki.cert.pem());
        std::fs::write(
            &kubeconfig,
            format!("clusters:\n- cluster:\n    certificate-authority-data: {data}\n"),
        )
        .unwrap();
        let err = api_ready(&kubeconfig, port, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, ReadinessError::Io(_)), "{err}");
        drop(listener);
    }
}
