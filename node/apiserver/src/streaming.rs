//! `pods/exec` and `pods/attach` over SPDY/3.1 (kubectl 1.27–1.29: one SPDY stream per
//! channel, see `spdy_pump`) and over WebSocket with the Kubernetes channel protocols
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every binary message starts with a channel byte —
//! 0 stdin, 1 stdout, 2 stderr, 3 error/status (JSON), 4 resize; v5 adds `[255, ch]` to close
//! a channel (kubectl closes stdin that way). With a TTY, resizes (`{"Width":W,"Height":H}`)
//! go to the node, which sets the terminal's size.

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
/// The channel protocol served over SPDY/3.1 (kubectl 1.27–1.29; 1.29 also offers v5, which
/// over SPDY only adds closing stdin, the same as a FIN here).
const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

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

/// Which streaming subresource a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Attach,
}

/// Terminal sizes as kubectl sends them: JSON objects `{"Width":80,"Height":24}`, one per
/// line on the SPDY `resize` stream (which may split or join them) and one per WebSocket
/// channel-4 message. Bytes are buffered until a value is complete; garbage is dropped.
#[derive(Debug, Default)]
struct ResizeDecoder {
    buf: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct WireSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

impl ResizeDecoder {
    fn push(&mut self, data: &[u8]) -> Vec<k3rs_client::TerminalSize> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<WireSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    used = it.byte_offset();
                    out.push(k3rs_client::TerminalSize {
                        width: s.width,
                        height: s.height,
                    });
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // Not a size: drop up to the next line and carry on.
                    used = match self.buf[used..].iter().position(|&b| b == b'\n') {
                        Some(i) => used + i + 1,
                        None => self.buf.len(),
                    };
                    self.buf.drain(..used);
                    return [out, self.push(&[])].concat();
                }
                None => {
                    used = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..used);
        out
    }
}

/// `pods/<name>/exec` and `pods/<name>/attach`: `GET` with a WebSocket upgrade or `POST` with
/// SPDY/3.1.
pub async fn stream(
    api: &Arc<Api>,
    t: &Target<'_>,
    name: &str,
    req: Request<Incoming>,
    kind: Kind,
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
    let start = |ns: String, uid: String| {
        let (node, request, name) = (node.clone(), request.clone(), name.to_string());
        async move {
            let r = match kind {
                Kind::Exec => node.exec(&ns, &name, &uid, &request).await,
                Kind::Attach => {
                    let attach = k3rs_client::AttachRequest {
                        container: request.container.clone(),
                        stdin: request.stdin,
                        tty: request.tty,
                    };
                    node.attach(&ns, &name, &uid, &attach).await
                }
            };
            r.map_err(|e| ApiError::bad_request(e.message))
        }
    };
    let tty = request.tty;
    let verb = match kind {
        Kind::Exec => "exec",
        Kind::Attach => "attach",
    };
    let headers = req.headers();
    let is_websocket = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let is_spdy = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    if is_spdy {
        // kubectl 1.27–1.29: SPDY/3.1 with one stream per channel.
        let offered: Vec<String> = headers
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        if !offered.iter().any(|p| p == SPDY_PROTOCOL) {
            return Err(ApiError::bad_request(format!(
                "unsupported streaming protocols {offered:?}; supported over SPDY: [{SPDY_PROTOCOL:?}]"
            )));
        }
        let ns = t.namespace.unwrap_or("default").to_string();
        let uid = crate::meta::uid(&pod).unwrap_or("").to_string();
        let session = start(ns.clone(), uid).await?;
        let want = Wanted {
            stdout: flag("stdout"),
            stderr: flag("stderr") && !request.tty,
            tty,
            kind,
        };
        let span = info_span!("stream", verb, namespace = %ns, pod = %name, container = %request.container, protocol = "spdy");
        tokio::spawn(
            async move {
                match hyper::upgrade::on(req).await {
                    Ok(u) => spdy_pump(TokioIo::new(u), session, want, command).await,
                    Err(e) => debug!(error = %e, "SPDY upgrade failed"),
                }
            }
            .instrument(span),
        );
        let mut resp = Response::new(body::full(Vec::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static(SPDY_PROTOCOL),
        );
        return Ok(resp);
    }
    if !is_websocket {
        return Err(ApiError::bad_request(
            "exec needs an upgrade: WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) or SPDY/3.1 (v4.channel.k8s.io)",
        ));
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
    let session = start(ns.clone(), uid).await?;
    let v5 = *protocol == "v5.channel.k8s.io";
    let want = Wanted {
        stdout: true,
        stderr: true,
        tty,
        kind,
    };
    let span =
        info_span!("stream", verb, namespace = %ns, pod = %name, container = %request.container);
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
            pump(ws, session, v5, want, command).await;
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
    want: Wanted,
    command: Vec<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let mut stdin = session.stdin.take();
    let resize = session.resize.take();
    let mut sizes = ResizeDecoder::default();
    // With a terminal there is no separate stderr (the exec shim's own errors go to stdout).
    let err_channel = if want.tty { 1 } else { 2 };
    let (mut out_open, mut err_open, mut client_open) = (true, true, true);
    loop {
        tokio::select! {
            msg = stream.next(), if client_open => match msg {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    0 => {
                        if let Some(tx) = &stdin {
                            let _ = tx.send(data[1..].to_vec()).await;
                        }
                    }
                    // v5: the client closed a channel; for stdin that is EOF.
                    255 if v5 && data.get(1) == Some(&0) => stdin = None,
                    4 => {
                        if let Some(tx) = &resize {
                            for size in sizes.push(&data[1..]) {
                                let _ = tx.send(size).await;
                            }
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    stdin = None;
                    client_open = false;
                    // A detached attach session ends here; the container keeps running.
                    if want.kind == Kind::Attach || (!out_open && !err_open) {
                        return;
                    }
                }
                _ => {}
            },
            chunk = session.stdout.recv(), if out_open => match chunk {
                Some(c) => { if sink.send(channel_message(1, &c)).await.is_err() { return; } }
                None => out_open = false,
            },
            chunk = session.stderr.recv(), if err_open => match chunk {
                Some(c) => { if sink.send(channel_message(err_channel, &c)).await.is_err() { return; } }
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

/// Which streams the client opens besides `error` (from the query), and the session's kind.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    stdout: bool,
    stderr: bool,
    tty: bool,
    kind: Kind,
}

/// Exec over SPDY/3.1: the client opens `streamType: error`, then `stdin`, `stdout`, `stderr`
/// (not with a TTY) and `resize` (with a TTY) streams; each gets an empty SYN_REPLY. stdin
/// DATA goes to the process (its FIN is EOF); stdout and stderr go out as DATA on their
/// streams, then FIN; last the exit status JSON on the error stream, then FIN.
async fn spdy_pump<S>(
    io: S,
    mut session: k3rs_client::ExecSession,
    want: Wanted,
    command: Vec<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use crate::portforward::{data, grant, session_control, write_frames, Out};
    use crate::spdy::{self, Decoder, Frame};
    use tokio::io::AsyncReadExt;

    let (mut r, w) = tokio::io::split(io);
    let (out, out_rx) = tokio::sync::mpsc::unbounded_channel::<Out>();
    let writer = tokio::spawn(write_frames(w, out_rx));
    let mut decoder = Decoder::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // stdin goes through an unbounded queue so a process that is not reading its stdin never
    // stops us from pumping its stdout (the queue's task ends, closing stdin, when we drop
    // our end).
    let mut stdin = session.stdin.take().map(|tx| {
        let (q, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if tx.send(c).await.is_err() {
                    break;
                }
            }
        });
        q
    });
    let resize = session.resize.take();
    let mut sizes = ResizeDecoder::default();
    let (mut error_id, mut stdin_id, mut stdout_id, mut stderr_id) = (None, None, None, None);
    let mut resize_id = None;
    let (mut out_open, mut err_open, mut reading) = (true, true, true);
    let mut last_stream = 0;
    loop {
        // A detached attach session ends when the client goes; the container keeps running.
        if want.kind == Kind::Attach && !reading {
            break;
        }
        // Output waits until its stream exists (or is not wanted: then it is dropped). With
        // a terminal there is no stderr stream: the exec shim's own errors go to stdout.
        let out_ready = out_open && (stdout_id.is_some() || !want.stdout);
        let err_ready = if want.tty {
            err_open && (stdout_id.is_some() || !want.stdout)
        } else {
            err_open && (stderr_id.is_some() || !want.stderr)
        };
        let err_target = if want.tty { stdout_id } else { stderr_id };
        tokio::select! {
            n = r.read(&mut chunk), if reading => {
                let n = match n {
                    Ok(0) | Err(_) => {
                        reading = false;
                        stdin = None;
                        continue;
                    }
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut used = 0;
                loop {
                    let (frame, len) = match decoder.decode(&buf[used..]) {
                        Ok(Some(x)) => x,
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "bad SPDY frame");
                            reading = false;
                            stdin = None;
                            break;
                        }
                    };
                    used += len;
                    match frame {
                        Frame::SynStream { stream_id, headers, .. } => {
                            last_stream = stream_id;
                            let _ = out.send(Out::Frame(Frame::SynReply {
                                stream_id,
                                flags: 0,
                                headers: Vec::new(),
                            }));
                            match spdy::header(&headers, "streamtype") {
                                Some("error") => error_id = Some(stream_id),
                                Some("stdin") => stdin_id = Some(stream_id),
                                Some("stdout") => stdout_id = Some(stream_id),
                                Some("stderr") => stderr_id = Some(stream_id),
                                Some("resize") => resize_id = Some(stream_id),
                                _ => {}
                            }
                        }
                        Frame::Data { stream_id, flags, data } => {
                            let n = data.len() as u32;
                            if Some(stream_id) == stdin_id {
                                if let Some(tx) = &stdin {
                                    if !data.is_empty() && tx.send(data).is_err() {
                                        stdin = None;
                                    }
                                }
                                if flags & spdy::FLAG_FIN != 0 {
                                    stdin = None;
                                }
                            } else if Some(stream_id) == resize_id {
                                if let Some(tx) = &resize {
                                    for size in sizes.push(&data) {
                                        let _ = tx.try_send(size);
                                    }
                                }
                            }
                            grant(&out, stream_id, n);
                        }
                        Frame::RstStream { stream_id, .. } => {
                            if Some(stream_id) == stdin_id {
                                stdin = None;
                            }
                            let _ = out.send(Out::Reset(stream_id));
                        }
                        Frame::GoAway { .. } => {
                            reading = false;
                            stdin = None;
                        }
                        other => session_control(other, &out),
                    }
                }
                buf.drain(..used);
            }
            c = session.stdout.recv(), if out_ready => match (c, stdout_id) {
                (Some(c), Some(id)) => { let _ = out.send(data(id, 0, c)); }
                (Some(_), None) => {}
                (None, _) => out_open = false,
            },
            c = session.stderr.recv(), if err_ready => match (c, err_target) {
                (Some(c), Some(id)) => { let _ = out.send(data(id, 0, c)); }
                (Some(_), None) => {}
                (None, _) => err_open = false,
            },
        }
        if !out_open && !err_open && (error_id.is_some() || !reading) {
            break;
        }
    }
    drop(stdin);
    // Output is done or nobody reads it any more (a detached attach): let the node side go.
    drop((session.stdout, session.stderr));
    let code = session.exit.await.unwrap_or(255);
    for id in [stdout_id, stderr_id].into_iter().flatten() {
        let _ = out.send(data(id, spdy::FLAG_FIN, Vec::new()));
    }
    if let Some(id) = error_id {
        // v4: a Status object; success may also be an empty stream, kubectl accepts both.
        let status = serde_json::to_vec(&exit_status(code, &command)).unwrap_or_default();
        let _ = out.send(data(id, 0, status));
        let _ = out.send(data(id, spdy::FLAG_FIN, Vec::new()));
    }
    // Let the client read everything and hang up; do not wait for it forever.
    let drain = async {
        if reading {
            while let Ok(n) = r.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    let _ = out.send(Out::Frame(Frame::GoAway {
        last_good: last_stream,
        status: 0,
    }));
    drop(out);
    let _ = writer.await;
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

    #[test]
    fn resize_messages_split_and_joined() {
        use k3rs_client::TerminalSize as T;
        let mut d = ResizeDecoder::default();
        // WebSocket: one JSON object per message (kubectl's encoder adds a newline).
        assert_eq!(
            d.push(b"{\"Width\":80,\"Height\":24}\n"),
            vec![T {
                width: 80,
                height: 24
            }]
        );
        // SPDY: a stream of lines, split anywhere and joined in one DATA frame.
        assert_eq!(d.push(b"{\"Width\":1"), vec![]);
        assert_eq!(
            d.push(b"20,\"Height\":40}\n{\"Width\":100,\"Height\":30}\n{\"Wid"),
            vec![
                T {
                    width: 120,
                    height: 40
                },
                T {
                    width: 100,
                    height: 30
                }
            ]
        );
        assert_eq!(
            d.push(b"th\":7,\"Height\":8}"),
            vec![T {
                width: 7,
                height: 8
            }]
        );
        // Garbage is skipped up to the next line.
        assert_eq!(
            d.push(b"nonsense\n{\"Width\":1,\"Height\":2}\n"),
            vec![T {
                width: 1,
                height: 2
            }]
        );
        assert!(d.buf.is_empty());
    }
}
