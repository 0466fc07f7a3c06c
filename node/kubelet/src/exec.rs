//! `kubectl exec` and `kubectl attach` on this node.
//!
//! exec: a process in a running container (`Runtime::exec`, or `Runtime::exec_tty` with a
//! terminal), its stdio pumped through channels. attach: a connection to the container's shim
//! (`Runtime::attach`), which owns the main process's stdio; stdin, resizes and output travel
//! as `k3rs_runtime::attach::Frame`s.

use crate::pods::Pods;
use k3rs_client::{
    AttachRequest, BoxFuture, ClientError, ExecRequest, ExecSession, PodExec, TerminalSize,
};
use k3rs_runtime::attach::{drain_frames, Frame};
use k3rs_runtime::Runtime;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

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

/// The newest running container of `container` in pod `uid`.
fn running_container(
    runtime: &Runtime,
    uid: &str,
    container: &str,
    pod_name: &str,
) -> Result<String, ClientError> {
    let prefix = format!("{uid}_{container}_");
    runtime
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.id.starts_with(&prefix) && c.state.is_running())
        .max_by_key(|c| c.created_at)
        .map(|c| c.id)
        .ok_or_else(|| {
            bad_request(format!(
                "container {container} in pod {pod_name} is not running"
            ))
        })
}

/// Stdin chunks and terminal sizes merged into attach frames, in the order they came.
fn frames_from(
    mut stdin: Option<mpsc::Receiver<Vec<u8>>>,
    mut resize: Option<mpsc::Receiver<TerminalSize>>,
) -> mpsc::Receiver<Frame> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                c = async { stdin.as_mut().expect("guarded").recv().await }, if stdin.is_some() => match c {
                    Some(c) => Frame::Stdin(c),
                    None => {
                        stdin = None;
                        Frame::CloseStdin
                    }
                },
                s = async { resize.as_mut().expect("guarded").recv().await }, if resize.is_some() => match s {
                    Some(s) => Frame::Resize { width: s.width, height: s.height },
                    None => {
                        resize = None;
                        continue;
                    }
                },
                else => return,
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    rx
}

impl Pods {
    async fn start_exec(
        &self,
        pod_name: &str,
        uid: &str,
        request: &ExecRequest,
    ) -> k3rs_client::Result<ExecSession> {
        if request.command.is_empty() {
            return Err(bad_request(
                "you must specify at least one command for the container".into(),
            ));
        }
        let runtime = self.runtime().clone();
        let req = request.clone();
        let (pod_name, uid) = (pod_name.to_string(), uid.to_string());
        let spawned = tokio::task::spawn_blocking(move || {
            let id = running_container(&runtime, &uid, &req.container, &pod_name)?;
            let cfg = k3rs_runtime::ExecConfig {
                args: req.command.clone(),
                env: Vec::new(),
                cwd: None,
            };
            let started = if req.tty {
                runtime.exec_tty(&id, &cfg, Stdio::piped(), Stdio::piped())
            } else {
                let stdin = if req.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                };
                runtime.exec(&id, &cfg, stdin, Stdio::piped(), Stdio::piped())
            };
            started.map_err(|e| bad_request(format!("exec failed: {e}")))
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
        let (stdin, resize) = if request.tty {
            // The exec shim reads frames: stdin data and terminal sizes.
            let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
            let (resize_tx, resize_rx) = mpsc::channel::<TerminalSize>(4);
            let mut frames = frames_from(request.stdin.then_some(stdin_rx), Some(resize_rx));
            if let Some(mut w) = child.stdin.take() {
                std::thread::spawn(move || {
                    while let Some(f) = frames.blocking_recv() {
                        if w.write_all(&f.encode()).and_then(|_| w.flush()).is_err() {
                            return;
                        }
                    }
                });
            }
            (request.stdin.then_some(stdin_tx), Some(resize_tx))
        } else {
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
            (stdin, None)
        };
        let (exit_tx, exit_rx) = oneshot::channel();
        std::thread::spawn(move || {
            let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(255);
            let _ = exit_tx.send(code);
        });
        Ok(ExecSession {
            stdin,
            resize,
            stdout,
            stderr,
            exit: exit_rx,
        })
    }

    async fn start_attach(
        &self,
        pod_name: &str,
        uid: &str,
        request: &AttachRequest,
    ) -> k3rs_client::Result<ExecSession> {
        let runtime = self.runtime().clone();
        let (container, pod_name, uid) = (
            request.container.clone(),
            pod_name.to_string(),
            uid.to_string(),
        );
        let sock = tokio::task::spawn_blocking(move || {
            let id = running_container(&runtime, &uid, &container, &pod_name)?;
            let sock = runtime
                .attach(&id)
                .map_err(|e| bad_request(format!("attach failed: {e}")))?;
            sock.set_nonblocking(true)
                .map_err(|e| bad_request(format!("attach failed: {e}")))?;
            Ok::<_, ClientError>(sock)
        })
        .await
        .map_err(|e| bad_request(e.to_string()))??;
        let mut sock = tokio::net::UnixStream::from_std(sock)
            .map_err(|e| bad_request(format!("attach failed: {e}")))?;
        let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
        let (resize_tx, resize_rx) = mpsc::channel::<TerminalSize>(4);
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(16);
        let (err_tx, err_rx) = mpsc::channel::<Vec<u8>>(16);
        let (exit_tx, exit_rx) = oneshot::channel();
        let mut frames = frames_from(
            request.stdin.then_some(stdin_rx),
            request.tty.then_some(resize_rx),
        );
        let hello = Frame::Hello {
            stdin: request.stdin,
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut inbuf = Vec::new();
            let mut frames_open = true;
            if sock.write_all(&hello.encode()).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    n = sock.read(&mut buf) => {
                        let n = match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        inbuf.extend_from_slice(&buf[..n]);
                        let Ok(frames) = drain_frames(&mut inbuf) else { break };
                        for f in frames {
                            let sent = match f {
                                Frame::Stdout(d) => out_tx.send(d).await.is_ok(),
                                Frame::Stderr(d) => err_tx.send(d).await.is_ok(),
                                _ => true,
                            };
                            if !sent {
                                // The client detached.
                                return;
                            }
                        }
                    }
                    f = frames.recv(), if frames_open => match f {
                        Some(f) => {
                            if sock.write_all(&f.encode()).await.is_err() {
                                break;
                            }
                        }
                        None => frames_open = false,
                    },
                    // The client detached: closing the connection ends the session in the shim.
                    _ = out_tx.closed() => return,
                }
            }
            debug!("attached container's output ended");
            let _ = exit_tx.send(0);
        });
        Ok(ExecSession {
            stdin: request.stdin.then_some(stdin_tx),
            resize: request.tty.then_some(resize_tx),
            stdout: out_rx,
            stderr: err_rx,
            exit: exit_rx,
        })
    }
}

impl PodExec for Pods {
    fn exec<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        request: &'a ExecRequest,
    ) -> BoxFuture<'a, k3rs_client::Result<ExecSession>> {
        Box::pin(self.start_exec(name, uid, request))
    }

    fn attach<'a>(
        &'a self,
        _namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        request: &'a AttachRequest,
    ) -> BoxFuture<'a, k3rs_client::Result<ExecSession>> {
        Box::pin(self.start_attach(name, uid, request))
    }
}

/// Lets the API server run commands in this node's pods and attach to their containers.
pub fn pod_exec(pods: Arc<Pods>) -> Arc<dyn PodExec> {
    pods
}
