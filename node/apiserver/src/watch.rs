//! Watch streams: newline-delimited `{"type":..,"object":..}` events over a chunked response,
//! with initial events, selector transitions, bookmarks and timeouts.

use crate::body::{Body, Wanted};
use crate::meta;
use crate::objects::{self, Query, Selectors, Target};
use crate::state::Api;
use crate::status::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use k3rs_resources::ResourceType;
use k3rs_store::EventKind;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// Upstream picks a random timeout between 30 and 60 minutes when the client sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Encoder {
    api: Arc<Api>,
    rt: Arc<ResourceType>,
    wanted: Wanted,
    sent_columns: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, mut obj: Value) -> Bytes {
        objects::set_type_meta(&self.rt, &mut obj);
        let object = match self.wanted {
            Wanted::Object => obj,
            Wanted::PartialObjectMetadata => objects::partial_metadata(&obj),
            Wanted::Table => {
                let rv = meta::resource_version(&obj).map(String::from);
                // Column definitions go with the first event only, as upstream sends them.
                let t = objects::table(&self.api, &self.rt, &[obj], rv, None, !self.sent_columns);
                self.sent_columns = true;
                t
            }
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, revision: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": {
            "kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta}}))
        .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn error_event(err: &ApiError) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": err.to_status()}))
        .unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// One item of a watch, before encoding.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// ADDED, MODIFIED or DELETED with the object (resourceVersion set).
    Event(&'static str, Value),
    Bookmark {
        revision: i64,
        initial_end: bool,
    },
    Error(ApiError),
}

/// Starts a watch and returns its items; the HTTP layer and in-process clients both consume it.
/// The stream ends at `timeoutSeconds`, when the receiver is dropped, or after an Error item.
pub async fn events(
    api: Arc<Api>,
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    q: &Query,
) -> Result<mpsc::Receiver<WatchItem>, ApiError> {
    let mut sel = Selectors::from_query(q)?;
    if let Some(n) = &name {
        let field = format!("metadata.name={n}");
        sel.field = crate::selectors::FieldSelector::parse(&field)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let target = Target {
        rt: &rt,
        namespace: namespace.as_deref(),
        name: None,
    };
    let prefix = target.prefix();
    let rv = q.get("resourceVersion").cloned().unwrap_or_default();
    let send_initial = match q.get("sendInitialEvents").map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        _ => rv.is_empty() || rv == "0",
    };
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);

    // Initial state, then the watch starts exactly at the revision it was read at.
    let mut initial = Vec::new();
    let start: i64 = if send_initial {
        let mut list_q = q.clone();
        list_q.remove("limit");
        list_q.remove("continue");
        list_q.remove("resourceVersion");
        if let Some(n) = &name {
            list_q.insert("fieldSelector".into(), format!("metadata.name={n}"));
        }
        let out = objects::list(&api, &target, &list_q).await?;
        initial = out.items;
        out.revision
    } else if rv.is_empty() || rv == "0" {
        api.store.current_revision().await?
    } else {
        rv.parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?
    };

    let (tx, rx) = mpsc::channel::<WatchItem>(256);
    let watcher = api.store.watch(&prefix, start).await;
    tokio::spawn(async move {
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(WatchItem::Error(ApiError::from(e))).await;
                return;
            }
        };
        for obj in initial {
            if tx.send(WatchItem::Event("ADDED", obj)).await.is_err() {
                return;
            }
        }
        if send_initial
            && bookmarks
            && tx
                .send(WatchItem::Bookmark {
                    revision: start,
                    initial_end: true,
                })
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_revision = start;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(WatchItem::Bookmark { revision: last_revision, initial_end: false }).await.is_err() { return; }
                }
                _ = tx.closed() => return,
                ev = watcher.next() => {
                    let Some(ev) = ev else {
                        let _ = tx.send(WatchItem::Error(ApiError::gone("watch closed: too old resource version, please re-list"))).await;
                        return;
                    };
                    last_revision = ev.kv.mod_revision;
                    let obj = meta::decode_from_store(&ev.kv.value, ev.kv.mod_revision);
                    let now_matches = ev.kind != EventKind::Delete && sel.matches(&obj);
                    let was_matching = ev.prev.as_ref().is_some_and(|p| sel.matches(&meta::decode_from_store(&p.value, p.mod_revision)));
                    let kind = match (ev.kind, was_matching, now_matches) {
                        (EventKind::Delete, _, _) if sel.matches(&obj) => "DELETED",
                        (EventKind::Delete, _, _) => continue,
                        (_, false, true) => "ADDED",
                        (_, true, true) => "MODIFIED",
                        (_, true, false) => "DELETED",
                        (_, false, false) => continue,
                    };
                    if tx.send(WatchItem::Event(kind, obj)).await.is_err() { return; }
                }
            }
        }
    });
    Ok(rx)
}

/// The HTTP watch: items encoded as newline-delimited JSON over a chunked response.
pub async fn watch(
    api: Arc<Api>,
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    q: &Query,
    wanted: Wanted,
) -> Result<Response<Body>, ApiError> {
    let mut items = events(api.clone(), rt.clone(), namespace, name, q).await?;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let mut enc = Encoder {
        api,
        rt,
        wanted,
        sent_columns: false,
    };
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                item = items.recv() => item,
            };
            let Some(item) = item else { return };
            let bytes = match item {
                WatchItem::Event(kind, obj) => enc.event(kind, obj),
                WatchItem::Bookmark {
                    revision,
                    initial_end,
                } => enc.bookmark(revision, initial_end),
                WatchItem::Error(e) => error_event(&e),
            };
            if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}
