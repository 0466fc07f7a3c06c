//! HTTPS serving: TLS with optional client certificates, per-request authentication and
//! authorization, and routing to discovery, OpenAPI, health and resource handlers.

use crate::auth::{self, Attributes, User};
use crate::body::{self, Body};
use crate::objects::{self, Part, Query, Target};
use crate::state::Api;
use crate::status::ApiError;
use crate::{discovery, subresources, watch};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::{debug, info_span, Instrument};

pub const KUBERNETES_VERSION: &str = "v1.33.0";

pub fn version_string() -> String {
    format!("{KUBERNETES_VERSION}+k3rs1")
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33",
        "gitVersion": version_string(),
        "gitCommit": option_env!("K3RS_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rustc",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64")),
    })
}

fn parse_query(q: Option<&str>) -> Query {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Authenticates a request from the connection's client certificate or its bearer token.
fn authenticate(
    api: &Api,
    cert_user: Option<&User>,
    req: &Request<Incoming>,
) -> Result<User, ApiError> {
    if let Some(h) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    {
        if let Some(token) = h.strip_prefix("Bearer ") {
            return api
                .auth
                .from_bearer(token.trim())
                .ok_or_else(ApiError::unauthorized);
        }
    }
    Ok(cert_user.cloned().unwrap_or_else(User::anonymous))
}

pub async fn handle(
    api: Arc<Api>,
    cert_user: Option<User>,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = info_span!("request", %method, %path);
    let started = std::time::Instant::now();
    let resp = async {
        match route(&api, cert_user.as_ref(), req).await {
            Ok(r) => r,
            Err(e) => body::error_response(&e),
        }
    }
    .instrument(span.clone())
    .await;
    debug!(parent: &span, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "done");
    resp
}

fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/version/"
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), body::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(body::MAX_BODY))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

fn verb_of(method: &Method, has_name: bool, q: &Query) -> &'static str {
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match *method {
        Method::GET | Method::HEAD if watching => "watch",
        Method::GET | Method::HEAD if has_name => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if has_name => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

async fn route(
    api: &Arc<Api>,
    cert_user: Option<&User>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let user = authenticate(api, cert_user, &req)?;
    let user = auth::impersonate(api, user, req.headers()).await?;
    let path = req.uri().path().trim_end_matches('/').to_string();
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let q = parse_query(req.uri().query());
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("")
        .to_string();

    if is_public(&path) {
        return Ok(match path.as_str() {
            "/version" => body::json_response(200, &version_info()),
            _ => health(api, &path).await,
        });
    }
    if user.is_anonymous() {
        return Err(ApiError::unauthorized());
    }
    let target = crate::path::parse(&path);
    let Some(crate::path::Target::Resource(rp)) = target else {
        let attrs = Attributes {
            verb: req
                .method()
                .as_str()
                .to_ascii_lowercase()
                .replace("head", "get"),
            path: Some(path.clone()),
            ..Default::default()
        };
        if !auth::authorize(api, &user, &attrs).await {
            return Err(ApiError::forbidden(auth::forbidden_message(&user, &attrs)));
        }
        return non_resource(api, &path, target, &accept).await;
    };
    let verb = verb_of(req.method(), rp.name.is_some(), &q);
    let attrs = Attributes {
        verb: verb.into(),
        group: rp.group.clone(),
        resource: rp.resource.clone(),
        subresource: rp.subresource.clone().unwrap_or_default(),
        namespace: rp.namespace.clone().unwrap_or_default(),
        name: rp.name.clone().unwrap_or_default(),
        path: None,
    };
    if !auth::authorize(api, &user, &attrs).await {
        return Err(ApiError::forbidden(auth::forbidden_message(&user, &attrs)));
    }
    // A WebSocket `GET` on exec/attach/portforward creates a session like the SPDY `POST`
    // does: upstream (AuthorizePodWebsocketUpgradeCreatePermission, on since 1.32) also
    // demands `create`.
    if verb == "get"
        && matches!(
            attrs.subresource.as_str(),
            "exec" | "attach" | "portforward"
        )
    {
        let create = Attributes {
            verb: "create".into(),
            ..attrs.clone()
        };
        if !auth::authorize(api, &user, &create).await {
            return Err(ApiError::forbidden(auth::forbidden_message(&user, &create)));
        }
    }
    let rt = api
        .find(&rp.group, &rp.version, &rp.resource)
        .ok_or_else(|| {
            ApiError::not_found(&rp.group, &rp.resource, rp.name.as_deref().unwrap_or(""))
                .tap_message("the server could not find the requested resource")
        })?;
    if rt.namespaced
        && rp.namespace.is_none()
        && !matches!(verb, "list" | "watch")
        && rt.kind != "Namespace"
    {
        return Err(ApiError::not_found(&rp.group, &rp.resource, "")
            .tap_message("the server could not find the requested resource"));
    }
    let wanted = body::wanted(req.headers().get(ACCEPT));
    let media = body::media_type(req.headers().get(CONTENT_TYPE));
    let method = req.method().clone();
    let ns = if rt.namespaced {
        rp.namespace.clone()
    } else {
        None
    };
    let t = Target {
        rt: &rt,
        namespace: ns.as_deref(),
        name: rp.name.as_deref(),
    };
    let sub = rp.subresource.as_deref();

    if !rt.stored {
        let raw = read_body(req).await?;
        return virtual_resource(api, &user, &t, &media, &raw).await;
    }
    if let Some(s) = sub {
        if !rt.has_subresource(s) {
            return Err(ApiError::not_found(
                &rp.group,
                &format!("{}/{s}", rp.resource),
                rp.name.as_deref().unwrap_or(""),
            ));
        }
    }
    let name = rp.name.clone();
    match (method, name.as_deref(), sub) {
        (Method::GET, None, None) if verb == "watch" => {
            watch::watch(api.clone(), rt.clone(), ns.clone(), None, &q, wanted).await
        }
        (Method::GET, Some(n), None) if verb == "watch" => {
            watch::watch(
                api.clone(),
                rt.clone(),
                ns.clone(),
                Some(n.to_string()),
                &q,
                wanted,
            )
            .await
        }
        (Method::GET, None, None) => {
            let out = objects::list(api, &t, &q).await?;
            Ok(match wanted {
                body::Wanted::Table => {
                    let rv = out.revision.to_string();
                    let mut table =
                        objects::table(api, &rt, &out.items, Some(rv), out.continue_token, true);
                    objects::include_objects(
                        &rt,
                        &mut table,
                        out.items,
                        q.get("includeObject").map(String::as_str),
                    );
                    body::json_response(200, &table)
                }
                body::Wanted::PartialObjectMetadata => {
                    let mut l = objects::list_object(&rt, out);
                    if let Some(items) = l["items"].as_array_mut() {
                        for i in items.iter_mut() {
                            *i = objects::partial_metadata(i);
                        }
                    }
                    l["kind"] = json!("PartialObjectMetadataList");
                    l["apiVersion"] = json!("meta.k8s.io/v1");
                    body::json_response(200, &l)
                }
                body::Wanted::Object => body::json_response(200, &objects::list_object(&rt, out)),
            })
        }
        (Method::GET, Some(n), None | Some("status")) => {
            let obj = objects::get(api, &t, n).await?;
            Ok(body::json_response(
                200,
                &objects::render_one(api, &rt, obj, wanted),
            ))
        }
        (Method::GET, Some(n), Some("log")) => pod_log(api, &t, n, &q).await,
        (Method::GET | Method::POST, Some(n), Some("exec")) => {
            crate::streaming::stream(api, &t, n, req, crate::streaming::Kind::Exec).await
        }
        (Method::GET | Method::POST, Some(n), Some("attach")) => {
            crate::streaming::stream(api, &t, n, req, crate::streaming::Kind::Attach).await
        }
        (Method::GET | Method::POST, Some(n), Some("portforward")) => {
            crate::portforward::port_forward(api, &t, n, req).await
        }
        (Method::GET, Some(n), Some("scale")) => {
            let obj = objects::get(api, &t, n).await?;
            Ok(body::json_response(200, &objects::to_scale(&rt, &obj)))
        }
        (Method::POST, None, None) => {
            let raw = read_body(req).await?;
            let obj = body::decode_object(&media, &raw)?;
            let w = objects::create(api, &t, obj, &q).await?;
            Ok(written(api, &rt, w, 201, wanted))
        }
        (Method::POST, Some(n), Some("token")) => {
            let raw = read_body(req).await?;
            let req = if raw.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                body::decode_object(&media, &raw)?
            };
            Ok(body::json_response(
                201,
                &subresources::token_request(api, &t, n, req).await?,
            ))
        }
        (Method::POST, Some(n), Some("binding")) => {
            let raw = read_body(req).await?;
            let binding = body::decode_object(&media, &raw)?;
            Ok(body::json_response(
                201,
                &subresources::bind_pod(api, &t, n, &binding).await?,
            ))
        }
        (Method::POST, Some(n), Some("eviction")) => {
            let raw = read_body(req).await?;
            let eviction = if raw.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                body::decode_object(&media, &raw)?
            };
            Ok(body::json_response(
                201,
                &subresources::evict_pod(api, &t, n, &eviction, &q).await?,
            ))
        }
        (Method::PUT, Some(n), None | Some("status")) => {
            let raw = read_body(req).await?;
            let obj = body::decode_object(&media, &raw)?;
            let part = if sub == Some("status") {
                Part::Status
            } else {
                Part::Main
            };
            let w = objects::update(api, &t, n, obj, part, &q).await?;
            let code = if w.created { 201 } else { 200 };
            Ok(written(api, &rt, w, code, wanted))
        }
        (Method::PUT, Some(n), Some("scale")) => {
            let raw = read_body(req).await?;
            let scale = body::decode_object(&media, &raw)?;
            Ok(body::json_response(
                200,
                &objects::write_scale(api, &t, n, &scale, &q).await?,
            ))
        }
        (Method::PATCH, Some(n), None | Some("status")) => {
            let raw = read_body(req).await?;
            let part = if sub == Some("status") {
                Part::Status
            } else {
                Part::Main
            };
            let w = objects::patch(api, &t, n, &media, &raw, part, &q).await?;
            let code = if w.created { 201 } else { 200 };
            Ok(written(api, &rt, w, code, wanted))
        }
        (Method::PATCH, Some(n), Some("scale")) => {
            let raw = read_body(req).await?;
            let obj = objects::get(api, &t, n).await?;
            let mut scale = objects::to_scale(&rt, &obj);
            let patch = body::decode_json(&raw)?;
            match media.as_str() {
                "application/json-patch+json" => k3rs_patch::json_patch(&mut scale, &patch),
                _ => k3rs_patch::merge_patch(&mut scale, &patch),
            }
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok(body::json_response(
                200,
                &objects::write_scale(api, &t, n, &scale, &q).await?,
            ))
        }
        (Method::DELETE, Some(n), None) => {
            let raw = read_body(req).await?;
            let opts = objects::delete_options(&q, &raw)?;
            let (mut obj, code) = objects::delete(api, &t, n, &opts, &q).await?;
            objects::set_type_meta(&rt, &mut obj);
            Ok(body::json_response(code, &obj))
        }
        (Method::DELETE, None, None) => {
            if !rt.verbs.iter().any(|v| v == "deletecollection") {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({})",
                    rt.plural
                )));
            }
            let raw = read_body(req).await?;
            let opts = objects::delete_options(&q, &raw)?;
            Ok(body::json_response(
                200,
                &objects::delete_collection(api, &t, &opts, &q).await?,
            ))
        }
        (m, _, s) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m} {}{})",
            rt.plural,
            s.map(|s| format!("/{s}")).unwrap_or_default()
        ))),
    }
}

trait TapMessage {
    fn tap_message(self, m: &str) -> Self;
}

impl TapMessage for ApiError {
    fn tap_message(mut self, m: &str) -> Self {
        self.message = m.to_string();
        self
    }
}

fn written(
    api: &Api,
    rt: &k3rs_resources::ResourceType,
    w: objects::Written,
    code: u16,
    wanted: body::Wanted,
) -> Response<Body> {
    let mut resp = body::json_response(code, &objects::render_one(api, rt, w.object, wanted));
    for warning in w.warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

async fn health(api: &Api, path: &str) -> Response<Body> {
    let ok = api.store.current_revision().await.is_ok();
    let verbose = path.contains("verbose");
    let text = if verbose {
        format!(
            "[{}]etcd ok\nhealthz check {}\n",
            if ok { "+" } else { "-" },
            if ok { "passed" } else { "failed" }
        )
    } else if ok {
        "ok".to_string()
    } else {
        "[-]etcd failed: reason withheld\nhealthz check failed".to_string()
    };
    body::bytes_response(
        if ok { 200 } else { 500 },
        "text/plain; charset=utf-8",
        text,
    )
}

async fn non_resource(
    api: &Arc<Api>,
    path: &str,
    target: Option<crate::path::Target>,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    use crate::path::Target as T;
    match target {
        Some(T::GroupList { legacy }) => {
            if let Some(v) = discovery::aggregated_version(accept) {
                let doc = discovery::aggregated(api, legacy, v);
                let ct = format!(
                    "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
                );
                return Ok(body::bytes_response(
                    200,
                    &ct,
                    serde_json::to_vec(&doc).unwrap_or_default(),
                ));
            }
            Ok(body::json_response(
                200,
                &if legacy {
                    discovery::api_versions(&api.info)
                } else {
                    discovery::api_group_list(api)
                },
            ))
        }
        Some(T::Group(g)) => discovery::api_group(api, &g)
            .map(|v| body::json_response(200, &v))
            .ok_or_else(|| {
                ApiError::not_found("", "", "")
                    .tap_message("the server could not find the requested resource")
            }),
        Some(T::GroupVersion { group, version }) => discovery::resource_list(api, &group, &version)
            .map(|v| body::json_response(200, &v))
            .ok_or_else(|| {
                ApiError::not_found("", "", "")
                    .tap_message("the server could not find the requested resource")
            }),
        Some(T::Resource(_)) => unreachable_resource(),
        None => openapi(api, path, accept),
    }
}

fn unreachable_resource() -> Result<Response<Body>, ApiError> {
    Err(ApiError::internal("resource path routed as non-resource"))
}

fn openapi(api: &Api, path: &str, accept: &str) -> Result<Response<Body>, ApiError> {
    let doc = api.openapi();
    if path == "/openapi/v2" || path == "/swagger-2.0.0.pb-v1" {
        if accept.contains("protobuf") || path.ends_with("pb-v1") {
            return Ok(body::bytes_response(
                200,
                "application/octet-stream",
                doc.v2_protobuf(),
            ));
        }
        return Ok(body::bytes_response(200, "application/json", doc.v2_json()));
    }
    if path == "/openapi/v3" {
        return Ok(body::json_response(200, &doc.v3_index()));
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        if let Some((bytes, _hash)) = doc.v3_document(gv) {
            return Ok(body::bytes_response(200, "application/json", bytes));
        }
    }
    Err(ApiError::not_found("", "", "")
        .tap_message("the server could not find the requested resource"))
}

/// Creation-only kinds that are answered, never stored.
async fn virtual_resource(
    api: &Api,
    user: &User,
    t: &Target<'_>,
    media: &str,
    raw: &[u8],
) -> Result<Response<Body>, ApiError> {
    let mut obj = body::decode_object(media, raw)?;
    let kind = t.rt.kind.as_str();
    objects::set_type_meta(t.rt, &mut obj);
    match kind {
        "SelfSubjectAccessReview" => {
            obj["status"] = auth::access_review(api, user, &obj["spec"]).await;
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let spec = &obj["spec"];
            let subject = User {
                name: spec["user"].as_str().unwrap_or("").to_string(),
                uid: spec["uid"].as_str().unwrap_or("").to_string(),
                groups: spec["groups"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|g| g.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                extra: vec![],
            };
            obj["status"] = auth::access_review(api, &subject, spec).await;
        }
        "SelfSubjectReview" => {
            obj["status"] = json!({"userInfo": user.info_json()});
        }
        "SelfSubjectRulesReview" => {
            let ns = obj
                .pointer("/spec/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            obj["status"] = auth::rules_review(api, user, &ns).await;
        }
        "TokenReview" => {
            let token = obj
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or("");
            obj["status"] = match api.auth.from_bearer(token) {
                Some(u) => {
                    json!({"authenticated": true, "user": u.info_json(), "audiences": obj.pointer("/spec/audiences").cloned().unwrap_or(json!([]))})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
        }
        "Binding" => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            return Ok(body::json_response(
                201,
                &subresources::bind_pod(api, t, &name, &obj).await?,
            ));
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{kind} is not supported"
            )))
        }
    }
    Ok(body::json_response(201, &obj))
}

/// `pods/<name>/log`: streamed from the node that runs the pod.
async fn pod_log(
    api: &Api,
    t: &Target<'_>,
    name: &str,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    let pod = objects::get(api, t, name).await?;
    let names: Vec<String> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| {
            pod.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let main: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if names.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if main.len() == 1 => main[0].to_string(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                main.join(" ")
            )))
        }
    };
    let Some(logs) = api.pod_logs.read().expect("pod logs lock").clone() else {
        return Err(ApiError::bad_request(format!(
            "pod {name} is not running on a node that serves logs"
        )));
    };
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: pod is not scheduled"
        )));
    }
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let opts = k3rs_client::LogOptions {
        container,
        follow: flag("follow"),
        previous: flag("previous"),
        tail_lines: q.get("tailLines").and_then(|v| v.parse().ok()),
        since_seconds: q.get("sinceSeconds").and_then(|v| v.parse().ok()),
        since_time: q.get("sinceTime").cloned(),
        timestamps: flag("timestamps"),
        limit_bytes: q.get("limitBytes").and_then(|v| v.parse().ok()),
    };
    let ns = t.namespace.unwrap_or("default");
    let uid = crate::meta::uid(&pod).unwrap_or("");
    let mut rx = logs
        .logs(ns, name, uid, &opts)
        .await
        .map_err(|e| ApiError::bad_request(e.message))?;
    let (tx, body_rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
    >(16);
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if tx
                .send(Ok(hyper::body::Frame::data(Bytes::from(chunk))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let body =
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body_rx))
            .boxed();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}
