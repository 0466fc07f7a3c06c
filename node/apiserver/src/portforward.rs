//! `pods/portforward`: kubectl's port-forward protocol (`portforward.k8s.io`) over a SPDY/3.1
//! session, either on the raw connection after `Upgrade: SPDY/3.1` (kubectl ≤ 1.30, `POST`) or
//! carried as a byte stream in WebSocket binary messages (subprotocol
//! `SPDY/3.1+portforward.k8s.io`, kubectl 1.31+, `GET`).
//!
//! Per forwarded connection the client opens two streams with headers `streamType: error` /
//! `streamType: data`, `port` and `requestID`. Once both are there we dial the pod's port
//! through the kubelet hook and copy bytes both ways; a dial failure is written to the error
//! stream. Both streams are closed (FIN) when the pod side reaches EOF.
//!
//! Flow control (SPDY/3.1): we send WINDOW_UPDATEs for a stream and for the session as the
//! bytes are written to the pod. We honour the peer's send windows once it shows it does flow
//! control (a WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE); moby/spdystream, kubectl's SPDY
//! library, never sends either and does not limit what it receives.

use crate::body::{self, Body};
use crate::objects::{self, Target};
use crate::spdy::{self, Decoder, Encoder, Frame};
use crate::state::Api;
use crate::status::ApiError;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info_span, Instrument};

const WS_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
const PROTOCOL: &str = "portforward.k8s.io";
/// Largest DATA frame we send.
const CHUNK: usize = 32 * 1024;

/// What a forwarded connection needs to reach its pod.
#[derive(Clone)]
pub struct PodTarget {
    pub hook: Arc<dyn k3rs_client::PodPortForward>,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub host_network: bool,
}

/// `GET|POST pods/<name>/portforward` with a WebSocket or SPDY/3.1 upgrade.
pub async fn port_forward(
    api: &Arc<Api>,
    t: &Target<'_>,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let pod = objects::get(api, t, name).await?;
    let Some(hook) = api
        .pod_port_forward
        .read()
        .expect("pod port-forward lock")
        .clone()
    else {
        return Err(ApiError::bad_request(format!(
            "pod {name} is not running on a node that serves port-forward"
        )));
    };
    let target = PodTarget {
        hook,
        namespace: t.namespace.unwrap_or("default").to_string(),
        name: name.to_string(),
        uid: crate::meta::uid(&pod).unwrap_or("").to_string(),
        host_network: pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)),
    };
    let headers = req.headers();
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let span = info_span!("port-forward", namespace = %target.namespace, pod = %name);
    let mut resp = Response::new(body::full(Vec::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    if upgrade.eq_ignore_ascii_case("websocket") {
        let offered: Vec<String> = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        if !offered.iter().any(|p| p == WS_PROTOCOL) {
            return Err(ApiError::bad_request(format!(
                "unsupported port-forward protocols {offered:?}; supported: [{WS_PROTOCOL:?}]"
            )));
        }
        let key = headers
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        tokio::spawn(
            async move {
                let upgraded = match hyper::upgrade::on(req).await {
                    Ok(u) => u,
                    Err(e) => return debug!(error = %e, "websocket upgrade failed"),
                };
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                serve(websocket_bytes(ws), target).await;
            }
            .instrument(span),
        );
        let h = resp.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert("sec-websocket-accept", v);
        }
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(WS_PROTOCOL),
        );
        return Ok(resp);
    }
    if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Err(ApiError::bad_request(
            "port-forward needs an upgrade to SPDY/3.1 or to a WebSocket carrying SPDY/3.1+portforward.k8s.io",
        ));
    }
    let offered: Vec<String> = headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    if !offered.is_empty() && !offered.iter().any(|p| p == PROTOCOL) {
        return Err(ApiError::bad_request(format!(
            "unsupported port-forward protocols {offered:?}; supported: [{PROTOCOL:?}]"
        )));
    }
    tokio::spawn(
        async move {
            match hyper::upgrade::on(req).await {
                Ok(u) => serve(TokioIo::new(u), target).await,
                Err(e) => debug!(error = %e, "SPDY upgrade failed"),
            }
        }
        .instrument(span),
    );
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(PROTOCOL),
    );
    Ok(resp)
}

/// The byte stream carried in a WebSocket's binary messages (k8s "tunneling" connection), as
/// one end of an in-memory pipe.
fn websocket_bytes<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut pipe_r, mut pipe_w) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if pipe_w.write_all(&b).await.is_err() => break,
                Message::Binary(_) => {}
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = pipe_w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    ours
}

/// Messages to the session's writer task.
pub(crate) enum Out {
    Frame(Frame),
    /// The peer granted more send window (stream 0: the session).
    Window(u32, u32),
    /// The peer set SETTINGS_INITIAL_WINDOW_SIZE.
    InitialWindow(u32),
    /// The peer reset the stream: drop what is queued for it.
    Reset(u32),
}

/// Sends frames in order, holding DATA back while the peer's windows are exhausted.
struct Writer {
    enforce: bool,
    initial: i64,
    session: i64,
    streams: HashMap<u32, i64>,
    pending: VecDeque<(u32, u8, Vec<u8>)>,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            enforce: false,
            initial: spdy::INITIAL_WINDOW as i64,
            session: spdy::INITIAL_WINDOW as i64,
            streams: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// DATA frames that may go out now.
    fn ready(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some((id, flags, mut data)) = self.pending.pop_front() {
            let window = *self.streams.entry(id).or_insert(self.initial);
            let allowed = if self.enforce {
                window.min(self.session).max(0) as usize
            } else {
                usize::MAX
            };
            if allowed == 0 && !data.is_empty() {
                self.pending.push_front((id, flags, data));
                break;
            }
            let n = data.len().min(allowed);
            let rest = data.split_off(n);
            let fin = rest.is_empty() && flags & spdy::FLAG_FIN != 0;
            *self.streams.get_mut(&id).expect("stream window") -= n as i64;
            self.session -= n as i64;
            out.push(Frame::Data {
                stream_id: id,
                flags: if fin { spdy::FLAG_FIN } else { 0 },
                data,
            });
            if !rest.is_empty() {
                self.pending.push_front((id, flags, rest));
                break;
            }
            if fin {
                self.streams.remove(&id);
            }
        }
        out
    }

    fn apply(&mut self, msg: Out) -> Vec<Frame> {
        match msg {
            Out::Frame(Frame::Data {
                stream_id,
                flags,
                data,
            }) => self.pending.push_back((stream_id, flags, data)),
            Out::Frame(f) => return vec![f],
            Out::Window(0, delta) => {
                self.enforce = true;
                self.session += delta as i64;
            }
            Out::Window(id, delta) => {
                self.enforce = true;
                *self.streams.entry(id).or_insert(self.initial) += delta as i64;
            }
            Out::InitialWindow(v) => {
                self.enforce = true;
                let diff = v as i64 - self.initial;
                self.initial = v as i64;
                for w in self.streams.values_mut() {
                    *w += diff;
                }
            }
            Out::Reset(id) => {
                self.pending.retain(|(s, _, _)| *s != id);
                self.streams.remove(&id);
            }
        }
        self.ready()
    }
}

pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    let mut encoder = match Encoder::new() {
        Ok(e) => e,
        Err(e) => return debug!(error = %e, "SPDY encoder"),
    };
    let mut state = Writer::new();
    let mut buf = Vec::new();
    while let Some(msg) = rx.recv().await {
        buf.clear();
        let mut frames = state.apply(msg);
        // Batch whatever else is already queued into one write.
        while let Ok(more) = rx.try_recv() {
            frames.extend(state.apply(more));
        }
        for f in &frames {
            if let Err(e) = encoder.encode(f, &mut buf) {
                return debug!(error = %e, "SPDY encode");
            }
        }
        if !buf.is_empty() && w.write_all(&buf).await.is_err() {
            return;
        }
        let _ = w.flush().await;
    }
    let _ = w.shutdown().await;
}

/// A stream the client opened, waiting for its partner.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<(u32, mpsc::UnboundedReceiver<Vec<u8>>)>,
    port: Option<String>,
}

/// Runs one SPDY session (one `kubectl port-forward`) until the client goes away.
pub async fn serve<S>(io: S, target: PodTarget)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, w) = tokio::io::split(io);
    let (out, out_rx) = mpsc::unbounded_channel::<Out>();
    let writer = tokio::spawn(write_frames(w, out_rx));
    let mut decoder = Decoder::default();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut inbound: HashMap<u32, mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks: HashMap<u32, JoinHandle<()>> = HashMap::new();
    let mut last_stream = 0u32;
    let mut chunk = vec![0u8; 64 * 1024];
    'read: loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
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
                    let _ = out.send(Out::Frame(Frame::GoAway {
                        last_good: last_stream,
                        status: 1,
                    }));
                    break 'read;
                }
            };
            used += len;
            match frame {
                Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    last_stream = stream_id;
                    let _ = out.send(Out::Frame(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: Vec::new(),
                    }));
                    let (tx, rx) = mpsc::unbounded_channel();
                    inbound.insert(stream_id, tx);
                    let id = spdy::header(&headers, "requestid")
                        .map(String::from)
                        .unwrap_or_else(|| stream_id.to_string());
                    let pair = pairs.entry(id.clone()).or_default();
                    match spdy::header(&headers, "streamtype") {
                        Some("error") => pair.error = Some(stream_id),
                        Some("data") => {
                            pair.data = Some((stream_id, rx));
                            pair.port = spdy::header(&headers, "port").map(String::from);
                        }
                        other => {
                            debug!(?other, "unexpected streamType");
                            let _ = out.send(Out::Frame(Frame::RstStream {
                                stream_id,
                                status: spdy::RST_PROTOCOL_ERROR,
                            }));
                            continue;
                        }
                    }
                    if pair.error.is_some() && pair.data.is_some() {
                        let pair = pairs.remove(&id).expect("pair");
                        let (data_id, rx) = pair.data.expect("data stream");
                        let task = tokio::spawn(
                            forward(
                                target.clone(),
                                pair.port.unwrap_or_default(),
                                data_id,
                                pair.error.expect("error stream"),
                                rx,
                                out.clone(),
                            )
                            .instrument(info_span!("forward", request = %id)),
                        );
                        tasks.retain(|_, t| !t.is_finished());
                        tasks.insert(data_id, task);
                    }
                }
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    let len = data.len() as u32;
                    match inbound.get(&stream_id) {
                        // Nobody reads this stream (the error stream): consumed here.
                        Some(tx) if !data.is_empty() && tx.send(data).is_err() => {
                            grant(&out, stream_id, len)
                        }
                        Some(_) => {}
                        _ if len > 0 => grant(&out, 0, len),
                        _ => {}
                    }
                    if flags & spdy::FLAG_FIN != 0 {
                        inbound.remove(&stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    inbound.remove(&stream_id);
                    let _ = out.send(Out::Reset(stream_id));
                    if let Some(t) = tasks.remove(&stream_id) {
                        t.abort();
                    }
                }
                Frame::GoAway { .. } => break 'read,
                other => session_control(other, &out),
            }
        }
        buf.drain(..used);
    }
    for (_, t) in tasks {
        t.abort();
    }
    let _ = out.send(Out::Frame(Frame::GoAway {
        last_good: last_stream,
        status: 0,
    }));
    drop(out);
    let _ = writer.await;
}

/// The session-level frames every SPDY handler answers the same way: the peer's initial window
/// (SETTINGS), window grants, and pings (the client's have odd ids; they are echoed). Anything
/// else is ignored.
pub(crate) fn session_control(frame: Frame, out: &mpsc::UnboundedSender<Out>) {
    match frame {
        Frame::Settings { entries, .. } => {
            for (_, id, value) in entries {
                if id == spdy::SETTINGS_INITIAL_WINDOW_SIZE {
                    let _ = out.send(Out::InitialWindow(value));
                }
            }
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let _ = out.send(Out::Window(stream_id, delta));
        }
        Frame::Ping { id } if id % 2 == 1 => {
            let _ = out.send(Out::Frame(Frame::Ping { id }));
        }
        _ => {}
    }
}

/// Tells the peer it may send `n` more bytes on a stream and on the session.
pub(crate) fn grant(out: &mpsc::UnboundedSender<Out>, stream_id: u32, n: u32) {
    if n == 0 {
        return;
    }
    if stream_id != 0 {
        let _ = out.send(Out::Frame(Frame::WindowUpdate {
            stream_id,
            delta: n,
        }));
    }
    let _ = out.send(Out::Frame(Frame::WindowUpdate {
        stream_id: 0,
        delta: n,
    }));
}

pub(crate) fn data(stream_id: u32, flags: u8, data: Vec<u8>) -> Out {
    Out::Frame(Frame::Data {
        stream_id,
        flags,
        data,
    })
}

/// One forwarded connection: dial the pod's port and copy both ways.
async fn forward(
    target: PodTarget,
    port: String,
    data_id: u32,
    error_id: u32,
    mut from_client: mpsc::UnboundedReceiver<Vec<u8>>,
    out: mpsc::UnboundedSender<Out>,
) {
    let close = |out: &mpsc::UnboundedSender<Out>| {
        let _ = out.send(data(data_id, spdy::FLAG_FIN, Vec::new()));
        let _ = out.send(data(error_id, spdy::FLAG_FIN, Vec::new()));
    };
    let port_num = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            let msg = format!("invalid port {port:?}");
            let _ = out.send(data(error_id, 0, msg.into_bytes()));
            return close(&out);
        }
    };
    let conn = target
        .hook
        .connect(
            &target.namespace,
            &target.name,
            &target.uid,
            target.host_network,
            port_num,
        )
        .await;
    let tcp = match conn {
        Ok(c) => c,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port_num} to pod {}, uid {}: {}",
                target.name, target.uid, e.message
            );
            debug!(%msg);
            let _ = out.send(data(error_id, 0, msg.into_bytes()));
            return close(&out);
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut pod_r, mut pod_w) = tcp.into_split();
    let up_out = out.clone();
    let up = tokio::spawn(async move {
        while let Some(chunk) = from_client.recv().await {
            let n = chunk.len() as u32;
            if pod_w.write_all(&chunk).await.is_err() {
                break;
            }
            grant(&up_out, data_id, n);
        }
        // The client closed its half (or the stream went away): half-close towards the pod.
        let _ = pod_w.shutdown().await;
        // Keep consuming so the window stays open for a peer still sending.
        while let Some(chunk) = from_client.recv().await {
            grant(&up_out, data_id, chunk.len() as u32);
        }
    });
    let mut buf = vec![0u8; CHUNK];
    loop {
        match pod_r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(data(data_id, 0, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    up.abort();
    close(&out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_respects_windows_once_the_peer_does_flow_control() {
        let mut w = Writer::new();
        // No WINDOW_UPDATE seen yet (spdystream): nothing is held back.
        let big = vec![1u8; 100_000];
        let f = w.apply(Out::Frame(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: big.clone(),
        }));
        assert_eq!(f.len(), 1);
        // A peer that grants windows is held to them.
        let mut w = Writer::new();
        assert!(w.apply(Out::Window(0, 0)).is_empty());
        let f = w.apply(Out::Frame(Frame::Data {
            stream_id: 3,
            flags: spdy::FLAG_FIN,
            data: big,
        }));
        assert_eq!(f.len(), 1);
        let Frame::Data { data, flags, .. } = &f[0] else {
            panic!()
        };
        assert_eq!((data.len(), *flags), (65536, 0));
        // Control frames are not held back.
        assert_eq!(w.apply(Out::Frame(Frame::Ping { id: 1 })).len(), 1);
        // The stream window opens, the session one is still closed.
        assert!(w.apply(Out::Window(3, 40_000)).is_empty());
        let f = w.apply(Out::Window(0, 20_000));
        let Frame::Data { data, flags, .. } = &f[0] else {
            panic!()
        };
        assert_eq!((data.len(), *flags), (20_000, 0));
        let f = w.apply(Out::Window(0, 100_000));
        let Frame::Data { data, flags, .. } = &f[0] else {
            panic!()
        };
        assert_eq!(
            (data.len(), *flags),
            (100_000 - 65536 - 20_000, spdy::FLAG_FIN)
        );
        assert!(w.pending.is_empty());
    }

    struct Refuse;
    impl k3rs_client::PodPortForward for Refuse {
        fn connect<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: bool,
            port: u16,
        ) -> k3rs_client::BoxFuture<'a, k3rs_client::Result<tokio::net::TcpStream>> {
            Box::pin(async move {
                if port == 1 {
                    return Err(k3rs_client::ClientError {
                        code: 500,
                        reason: "InternalError".into(),
                        message: "connection refused".into(),
                    });
                }
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map_err(|e| k3rs_client::ClientError {
                        code: 500,
                        reason: "InternalError".into(),
                        message: e.to_string(),
                    })
            })
        }
    }

    fn syn(id: u32, kind: &str, port: u16, request: u32) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), request.to_string()),
            ],
        }
    }

    /// A SPDY client session against `serve` over an in-memory pipe: one connection to a
    /// local echo-ish server, one to a refused port.
    #[tokio::test]
    async fn forwards_bytes_and_reports_dial_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(b"hi ").await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let (client, server) = tokio::io::duplex(1 << 20);
        let target = PodTarget {
            hook: Arc::new(Refuse),
            namespace: "default".into(),
            name: "p".into(),
            uid: "u".into(),
            host_network: false,
        };
        tokio::spawn(serve(server, target));
        let (mut cr, mut cw) = tokio::io::split(client);
        let mut enc = Encoder::new().unwrap();
        let mut wire = Vec::new();
        for f in [
            syn(1, "error", port, 0),
            Frame::Data {
                stream_id: 1,
                flags: spdy::FLAG_FIN,
                data: Vec::new(),
            },
            syn(3, "data", port, 0),
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: b"hello".to_vec(),
            },
            syn(5, "error", 1, 1),
            syn(7, "data", 1, 1),
            Frame::Ping { id: 9 },
        ] {
            enc.encode(&f, &mut wire).unwrap();
        }
        cw.write_all(&wire).await.unwrap();
        let mut dec = Decoder::default();
        let mut buf = Vec::new();
        let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut fins = Vec::new();
        let (mut replies, mut pings, mut updates) = (0, 0, 0);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while fins.len() < 4 {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, cr.read(&mut chunk))
                .await
                .expect("session answers in time")
                .unwrap();
            assert!(n > 0, "session closed early");
            buf.extend_from_slice(&chunk[..n]);
            while let Some((f, len)) = dec.decode(&buf).unwrap() {
                buf.drain(..len);
                match f {
                    Frame::SynReply { .. } => replies += 1,
                    Frame::Ping { id } => pings += id,
                    Frame::WindowUpdate {
                        stream_id: 3,
                        delta,
                    } => updates += delta,
                    Frame::Data {
                        stream_id,
                        flags,
                        data,
                    } => {
                        got.entry(stream_id).or_default().extend(data);
                        if flags & spdy::FLAG_FIN != 0 {
                            fins.push(stream_id);
                        }
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(replies, 4);
        assert_eq!(pings, 9);
        assert_eq!(
            updates, 5,
            "the 5 bytes written to the pod are granted back"
        );
        assert_eq!(got.get(&3).map(Vec::as_slice), Some(&b"hi hello"[..]));
        assert!(got.get(&1).is_none_or(Vec::is_empty));
        let err = String::from_utf8(got[&5].clone()).unwrap();
        assert!(err.contains("error forwarding port 1"), "{err}");
        fins.sort();
        assert_eq!(fins, vec![1, 3, 5, 7]);
    }
}
