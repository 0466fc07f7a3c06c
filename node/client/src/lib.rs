//! The Kubernetes API as components inside k3rs use it: get/list/watch/create/replace/patch/delete
//! on JSON objects. The scheduler, controllers and the kubelet are written against [`Client`];
//! in a server they get the in-process implementation (no HTTP, no TLS, no RBAC — trusted
//! callers), and an agent gets an HTTPS implementation.
#![forbid(unsafe_code)]

pub mod events;
pub mod informer;
pub mod labels;
pub mod leaderelection;

use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A resource type by group, version and plural (`Resource::new("apps", "v1", "deployments")`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl Resource {
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Resource {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
        }
    }

    /// A core (`v1`) resource.
    pub fn core(plural: &str) -> Self {
        Self::new("", "v1", plural)
    }
}

/// Query parameters of list and watch.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// For watch: start after this version ("" or None = send the current state as ADDED first).
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
}

impl ListParams {
    pub fn labels(selector: &str) -> Self {
        ListParams {
            label_selector: Some(selector.into()),
            ..Default::default()
        }
    }

    pub fn fields(selector: &str) -> Self {
        ListParams {
            field_selector: Some(selector.into()),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct ObjectList {
    pub items: Vec<Value>,
    pub resource_version: String,
    pub continue_token: Option<String>,
}

#[derive(Clone, Debug)]
pub enum WatchEvent {
    Added(Value),
    Modified(Value),
    Deleted(Value),
    Bookmark {
        resource_version: String,
    },
    /// The watch ended with an error (e.g. 410 Gone): re-list and watch again.
    Error(ClientError),
}

/// A stream of watch events; `None` when the watch ended (timeout or server shutdown).
pub struct WatchStream {
    rx: tokio::sync::mpsc::Receiver<WatchEvent>,
}

impl WatchStream {
    pub fn new(rx: tokio::sync::mpsc::Receiver<WatchEvent>) -> Self {
        WatchStream { rx }
    }

    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }
}

#[derive(Clone, Debug)]
pub enum Patch {
    /// application/merge-patch+json
    Merge(Value),
    /// application/json-patch+json
    Json(Value),
    /// application/strategic-merge-patch+json
    Strategic(Value),
    /// application/apply-patch+yaml (server-side apply)
    Apply { object: Value, force: bool },
}

#[derive(Clone, Debug, Default)]
pub struct DeleteParams {
    /// "Background" (default), "Foreground" or "Orphan".
    pub propagation: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
}

/// An API error: HTTP code, Kubernetes reason and message (the `Status` object's fields).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ClientError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }
    pub fn is_conflict(&self) -> bool {
        self.code == 409 && self.reason == "Conflict"
    }
    pub fn is_already_exists(&self) -> bool {
        self.code == 409 && self.reason == "AlreadyExists"
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// The API operations components need. `namespace` is ignored for cluster-scoped resources;
/// `field_manager` names the writer in managedFields (e.g. "deployment-controller").
pub trait Client: Send + Sync {
    fn get<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Value>>;
    fn list<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        params: &'a ListParams,
    ) -> BoxFuture<'a, Result<ObjectList>>;
    fn watch<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        params: &'a ListParams,
    ) -> BoxFuture<'a, Result<WatchStream>>;
    fn create<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        object: Value,
        field_manager: &'a str,
    ) -> BoxFuture<'a, Result<Value>>;
    /// PUT; a `metadata.resourceVersion` in `object` is a precondition (409 Conflict when stale).
    /// `subresource` = Some("status") writes only status.
    fn replace<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
        object: Value,
        subresource: Option<&'a str>,
        field_manager: &'a str,
    ) -> BoxFuture<'a, Result<Value>>;
    fn patch<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
        patch: Patch,
        subresource: Option<&'a str>,
        field_manager: &'a str,
    ) -> BoxFuture<'a, Result<Value>>;
    /// Returns the object as it is after the call (being deleted, or its last state).
    fn delete<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
        params: &'a DeleteParams,
    ) -> BoxFuture<'a, Result<Value>>;
    /// POST to a subresource that creates something: `pods/binding`, `pods/eviction`, `serviceaccounts/token`.
    fn create_subresource<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
        subresource: &'a str,
        body: Value,
    ) -> BoxFuture<'a, Result<Value>>;
}

/// `pods/log` options (kubectl logs flags).
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub container: String,
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<usize>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<String>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

/// Streams a container's log; implemented by the node that runs the pod.
pub trait PodLogs: Send + Sync {
    /// Chunks of log output; the stream ends when the log ends (or, with `follow`, when the
    /// container stops or the receiver is dropped).
    fn logs<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        opts: &'a LogOptions,
    ) -> BoxFuture<'a, Result<tokio::sync::mpsc::Receiver<Vec<u8>>>>;
}

/// A `pods/exec` request (`kubectl exec` query parameters).
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
}

/// A terminal's size in columns and rows (`kubectl exec -t` / `attach -t` resize messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// A `pods/attach` request (`kubectl attach` query parameters).
#[derive(Clone, Debug, Default)]
pub struct AttachRequest {
    pub container: String,
    pub stdin: bool,
    pub tty: bool,
}

/// A running exec or attach session: write stdin (drop the sender to close it), send terminal
/// sizes (with a TTY), read stdout/stderr until they end, then the exit code. Dropping the
/// session detaches (an attached container keeps running).
pub struct ExecSession {
    pub stdin: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Present when the session has a terminal.
    pub resize: Option<tokio::sync::mpsc::Sender<TerminalSize>>,
    pub stdout: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub stderr: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub exit: tokio::sync::oneshot::Receiver<i32>,
}

/// Runs commands in a pod's containers; implemented by the node that runs the pod.
pub trait PodExec: Send + Sync {
    fn exec<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        request: &'a ExecRequest,
    ) -> BoxFuture<'a, Result<ExecSession>>;

    /// Attaches to the main process of a running container (`kubectl attach`): its output from
    /// now on, its stdin when the container keeps it open. The session's exit code is 0.
    fn attach<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        request: &'a AttachRequest,
    ) -> BoxFuture<'a, Result<ExecSession>> {
        let _ = (namespace, uid, request);
        Box::pin(async move {
            Err(ClientError {
                code: 400,
                reason: "BadRequest".into(),
                message: format!("pod {name} is not running on a node that serves attach"),
            })
        })
    }
}

/// Opens TCP connections to a pod's ports (`kubectl port-forward`); implemented by the node
/// that runs the pod.
pub trait PodPortForward: Send + Sync {
    fn connect<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
        host_network: bool,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream>>;
}
