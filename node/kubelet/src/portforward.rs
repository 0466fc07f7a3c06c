//! `kubectl port-forward` on this node: a TCP connection to the pod's port, dialled from the
//! node to the pod's address on the pod network (hostNetwork pods: the node's loopback).

use crate::pods::Pods;
use k3rs_client::{BoxFuture, ClientError, PodPortForward};
use std::sync::Arc;
use tokio::net::TcpStream;
use tracing::debug;

fn error(code: u16, reason: &str, message: String) -> ClientError {
    ClientError {
        code,
        reason: reason.into(),
        message,
    }
}

impl PodPortForward for Pods {
    fn connect<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        host_network: bool,
        port: u16,
    ) -> BoxFuture<'a, k3rs_client::Result<TcpStream>> {
        Box::pin(async move {
            let ip = if host_network {
                "127.0.0.1".to_string()
            } else {
                self.network()
                    .pod_ips(uid)
                    .and_then(|ips| ips.into_iter().next())
                    .ok_or_else(|| {
                        error(
                            400,
                            "BadRequest",
                            format!("pod {namespace}/{name} has no address on this node"),
                        )
                    })?
            };
            let addr = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            debug!(pod = %name, %addr, "port-forward dial");
            TcpStream::connect(&addr).await.map_err(|e| {
                error(
                    500,
                    "InternalError",
                    format!("failed to connect to {addr} inside namespace of pod {namespace}/{name}: {e}"),
                )
            })
        })
    }
}

/// Lets the API server open connections to this node's pods.
pub fn pod_port_forward(pods: Arc<Pods>) -> Arc<dyn PodPortForward> {
    pods
}
