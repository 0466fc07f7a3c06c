//! `kubectl exec` on this node: a process in a running container (no TTY yet), its stdio
//! pumped through channels.

use crate::pods::Pods;
use k3rs_client::{BoxFuture, ClientError, ExecRequest, ExecSession, PodExec};
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

fn bad_request(message: String) -> ClientError {
    ClientError {
        code: 400,
        reason: "BadRequest".into(),
        message,
    }
}

/// Copies a blocking reader into a channel on a blocking thread.
fn pump_out(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

impl PodExec for Pods {
    fn exec<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        request: &'a ExecRequest,
    ) -> BoxFuture<'a, k3rs_client::Result<ExecSession>> {
        Box::pin(async move {
            if request.command.is_empty() {
                return Err(bad_request(
                    "you must specify at least one command for the container".into(),
                ));
            }
            let prefix = format!("{uid}_{}_", request.container);
            let runtime = self.runtime().clone();
            let req = request.clone();
            let pod_name = name.to_string();
            let spawned = tokio::task::spawn_blocking(move || {
                let running = runtime
                    .list()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.id.starts_with(&prefix) && c.state.is_running())
                    .max_by_key(|c| c.created_at);
                let Some(c) = running else {
                    return Err(bad_request(format!(
                        "container {} in pod {pod_name} is not running",
                        req.container
                    )));
                };
                let cfg = k3rs_runtime::ExecConfig {
                    args: req.command.clone(),
                    env: Vec::new(),
                    cwd: None,
                };
                let stdin = if req.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                };
                runtime
                    .exec(&c.id, &cfg, stdin, Stdio::piped(), Stdio::piped())
                    .map_err(|e| bad_request(format!("exec failed: {e}")))
            })
            .await
            .map_err(|e| bad_request(e.to_string()))?;
            let mut child = spawned?;
            let stdout = child
                .stdout
                .take()
                .map(pump_out)
                .unwrap_or_else(|| mpsc::channel(1).1);
            let stderr = child
                .stderr
                .take()
                .map(pump_out)
                .unwrap_or_else(|| mpsc::channel(1).1);
            let stdin = child.stdin.take().map(|mut w| {
                let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
                std::thread::spawn(move || {
                    while let Some(chunk) = rx.blocking_recv() {
                        if w.write_all(&chunk).and_then(|_| w.flush()).is_err() {
                            return;
                        }
                    }
                    // Sender dropped: closing our end delivers EOF to the process.
                });
                tx
            });
            let (exit_tx, exit_rx) = oneshot::channel();
            std::thread::spawn(move || {
                let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(255);
                let _ = exit_tx.send(code);
            });
            Ok(ExecSession {
                stdin,
                stdout,
                stderr,
                exit: exit_rx,
            })
        })
    }
}

/// Lets the API server run commands in this node's pods.
pub fn pod_exec(pods: Arc<Pods>) -> Arc<dyn PodExec> {
    pods
}
