//! Streaming subresources over WebSocket: `pods/exec` with the Kubernetes channel protocols
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary message starts with a channel byte —
//! 0 stdin, 1 stdout, 2 stderr, 3 error/status (JSON), 4 resize; v5 adds `[255, ch]` to close
//! a channel (kubectl closes stdin that way).

use crate::body::{self, Body};
use crate::objects::{self, Target};
use crate::state::Api;
use crate::status::ApiError;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info_span, Instrument};

const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// All values of a repeated query parameter (`command=sh&command=-c`).
fn repeated(query: Option<&str>, key: &str) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn exit_status(code: i32, command: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn channel_message(ch: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(ch);
    v.extend_from_slice(data);
    Message::binary(v)
}

/// `GET pods/<name>/exec` with a WebSocket upgrade.
pub async fn exec(
    api: &Arc<Api>,
    t: &Target<'_>,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let pod = objects::get(api, t, name).await?;
    let query = req.uri().query().map(String::from);
    let q = |k: &str| -> Option<String> { repeated(query.as_deref(), k).into_iter().next() };
    let flag = |k: &str| q(k).is_some_and(|v| v == "true" || v == "1");
    let command = repeated(query.as_deref(), "command");
    let main: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match q("container").filter(|c| !c.is_empty()) {
        Some(c) => c,
        None if main.len() == 1 => main[0].to_string(),
        None => main.first().map(|s| s.to_string()).unwrap_or_default(),
    };
    let request = k3rs_client::ExecRequest {
        container,
        command: command.clone(),
        stdin: flag("stdin"),
        tty: flag("tty"),
    };
    let Some(node) = api.pod_exec.read().expect("pod exec lock").clone() else {
        return Err(ApiError::bad_request(format!(
            "pod {name} is not running on a node that serves exec"
        )));
    };
    let headers = req.headers();
    let is_websocket = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        // kubectl 1.27–1.29 speak SPDY/3.1 here; those versions are not served yet.
        return Err(ApiError::bad_request("exec needs a WebSocket upgrade (v5.channel.k8s.io, kubectl 1.30+); SPDY is not supported yet"));
    }
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return Err(ApiError::bad_request(format!(
            "unsupported streaming protocols {offered:?}; supported: {PROTOCOLS:?}"
        )));
    };
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let ns = t.namespace.unwrap_or("default").to_string();
    let uid = crate::meta::uid(&pod).unwrap_or("").to_string();
    let session = node
        .exec(&ns, name, &uid, &request)
        .await
        .map_err(|e| ApiError::bad_request(e.message))?;
    let v5 = *protocol == "v5.channel.k8s.io";
    let span = info_span!("exec", namespace = %ns, pod = %name, container = %request.container);
    tokio::spawn(
        async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            pump(ws, session, v5, command).await;
        }
        .instrument(span),
    );
    let mut resp = Response::new(body::full(Vec::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    Ok(resp)
}

async fn pump<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut session: k3rs_client::ExecSession,
    v5: bool,
    command: Vec<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let mut stdin = session.stdin.take();
    let (mut out_open, mut err_open) = (true, true);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    0 => {
                        if let Some(tx) = &stdin {
                            let _ = tx.send(data[1..].to_vec()).await;
                        }
                    }
                    // v5: the client closed a channel; for stdin that is EOF.
                    255 if v5 && data.get(1) == Some(&0) => stdin = None,
                    // Resize (4) needs a TTY, which exec does not allocate yet.
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    stdin = None;
                    if !out_open && !err_open { break; }
                }
                _ => {}
            },
            chunk = session.stdout.recv(), if out_open => match chunk {
                Some(c) => { if sink.send(channel_message(1, &c)).await.is_err() { return; } }
                None => out_open = false,
            },
            chunk = session.stderr.recv(), if err_open => match chunk {
                Some(c) => { if sink.send(channel_message(2, &c)).await.is_err() { return; } }
                None => err_open = false,
            },
        }
        if !out_open && !err_open {
            break;
        }
    }
    drop(stdin);
    let code = session.exit.await.unwrap_or(255);
    let status = serde_json::to_vec(&exit_status(code, &command)).unwrap_or_default();
    let _ = sink.send(channel_message(3, &status)).await;
    let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(normal))).await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_commands_and_status() {
        assert_eq!(
            repeated(
                Some("command=sh&command=-c&command=echo%20hi&stdout=true"),
                "command"
            ),
            vec!["sh", "-c", "echo hi"]
        );
        assert_eq!(exit_status(0, &[])["status"], "Success");
        let s = exit_status(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(channel_message(1, b"x"), Message::binary(vec![1u8, b'x']));
    }
}
