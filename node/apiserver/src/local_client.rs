//! The in-process [`k3rs_client::Client`]: components running inside `k3rs server` call the
//! object handlers directly — no HTTP, TLS or JSON round trip, and no RBAC (trusted callers).

use crate::objects::{self, DeleteOptions, Part, Query, Target};
use crate::state::Api;
use crate::status::ApiError;
use crate::watch::{self, WatchItem};
use k3rs_client::{
    BoxFuture, Client, ClientError, DeleteParams, ListParams, ObjectList, Patch, Resource,
    WatchEvent, WatchStream,
};
use k3rs_resources::ResourceType;
use serde_json::Value;
use std::sync::Arc;

#[derive(Clone)]
pub struct LocalClient {
    api: Arc<Api>,
}

impl LocalClient {
    pub fn new(api: Arc<Api>) -> Self {
        LocalClient { api }
    }

    /// An API server on an in-memory store with K3s's default service network, for the
    /// components' tests and benchmarks. Returns once the bootstrap objects (system namespaces,
    /// their default ServiceAccounts, which pods need at admission) exist.
    pub async fn in_memory() -> Result<Arc<dyn Client>, crate::Error> {
        use std::net::{IpAddr, Ipv4Addr};
        let info = crate::ServerInfo {
            advertise_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 6443,
            service_ip: IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)),
            service_cidr: (Ipv4Addr::new(10, 43, 0, 0), 16),
        };
        let api = Api::start(k3rs_store::Store::in_memory(), None, info, String::new()).await?;
        let client: Arc<dyn Client> = Arc::new(LocalClient::new(api));
        let sa = Resource::core("serviceaccounts");
        for _ in 0..1000 {
            if client
                .get(&sa, Some("kube-system"), "default")
                .await
                .is_ok()
                && client.get(&sa, Some("default"), "default").await.is_ok()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(client)
    }

    fn resolve(&self, r: &Resource) -> Result<Arc<ResourceType>, ClientError> {
        self.api
            .find(&r.group, &r.version, &r.plural)
            .ok_or_else(|| to_client_error(ApiError::not_found(&r.group, &r.plural, "")))
    }
}

fn to_client_error(e: ApiError) -> ClientError {
    ClientError {
        code: e.code,
        reason: e.reason.to_string(),
        message: e.message,
    }
}

fn namespace_for<'a>(rt: &ResourceType, ns: Option<&'a str>) -> Option<&'a str> {
    if rt.namespaced {
        ns
    } else {
        None
    }
}

fn list_query(p: &ListParams) -> Query {
    let mut q = Query::new();
    if let Some(s) = &p.label_selector {
        q.insert("labelSelector".into(), s.clone());
    }
    if let Some(s) = &p.field_selector {
        q.insert("fieldSelector".into(), s.clone());
    }
    if let Some(l) = p.limit {
        q.insert("limit".into(), l.to_string());
    }
    if let Some(c) = &p.continue_token {
        q.insert("continue".into(), c.clone());
    }
    if let Some(rv) = &p.resource_version {
        q.insert("resourceVersion".into(), rv.clone());
    }
    if let Some(t) = p.timeout_seconds {
        q.insert("timeoutSeconds".into(), t.to_string());
    }
    if p.allow_bookmarks {
        q.insert("allowWatchBookmarks".into(), "true".into());
    }
    q
}

fn manager_query(field_manager: &str) -> Query {
    let mut q = Query::new();
    q.insert("fieldManager".into(), field_manager.to_string());
    q
}

impl Client for LocalClient {
    fn get<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, k3rs_client::Result<Value>> {
        Box::pin(async move {
            let rt = self.resolve(r)?;
            let t = Target {
                rt: &rt,
                namespace: namespace_for(&rt, namespace),
                name: Some(name),
            };
            let mut obj = objects::get(&self.api, &t, name)
                .await
                .map_err(to_client_error)?;
            objects::set_type_meta(&rt, &mut obj);
            Ok(obj)
        })
    }

    fn list<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        params: &'a ListParams,
    ) -> BoxFuture<'a, k3rs_client::Result<ObjectList>> {
        Box::pin(async move {
            let rt = self.resolve(r)?;
            let t = Target {
                rt: &rt,
                namespace: namespace_for(&rt, namespace),
                name: None,
            };
            let out = objects::list(&self.api, &t, &list_query(params))
                .await
                .map_err(to_client_error)?;
            let items = out
                .items
                .into_iter()
                .map(|mut o| {
                    objects::set_type_meta(&rt, &mut o);
                    o
                })
                .collect();
            Ok(ObjectList {
                items,
                resource_version: out.revision.to_string(),
                continue_token: out.continue_token,
            })
        })
    }

    fn watch<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        params: &'a ListParams,
    ) -> BoxFuture<'a, k3rs_client::Result<WatchStream>> {
        Box::pin(async move {
            let rt = self.resolve(r)?;
            let ns = namespace_for(&rt, namespace).map(String::from);
            let mut items =
                watch::events(self.api.clone(), rt.clone(), ns, None, &list_query(params))
                    .await
                    .map_err(to_client_error)?;
            let (tx, rx) = tokio::sync::mpsc::channel(256);
            tokio::spawn(async move {
                while let Some(item) = items.recv().await {
                    let ev = match item {
                        WatchItem::Event(kind, mut obj) => {
                            objects::set_type_meta(&rt, &mut obj);
                            match kind {
                                "ADDED" => WatchEvent::Added(obj),
                                "DELETED" => WatchEvent::Deleted(obj),
                                _ => WatchEvent::Modified(obj),
                            }
                        }
                        WatchItem::Bookmark { revision, .. } => WatchEvent::Bookmark {
                            resource_version: revision.to_string(),
                        },
                        WatchItem::Error(e) => WatchEvent::Error(to_client_error(e)),
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            });
            Ok(WatchStream::new(rx))
        })
    }

    fn create<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        object: Value,
        field_manager: &'a str,
    ) -> BoxFuture<'a, k3rs_client::Result<Value>> {
        Box::pin(async move {
            let rt = self.resolve(r)?;
            let t = Target {
                rt: &rt,
                namespace: namespace_for(&rt, namespace),
                name: None,
            };
            let w = objects::create(&self.api, &t, object, &manager_query(field_manager))
                .await
                .map_err(to_client_error)?;
            let mut obj = w.object;
            objects::set_type_meta(&rt, &mut obj);
            Ok(obj)
        })
    }

    fn replace<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
        object: Value,
        subresource: Option<&'a str>,
        field_manager: &'a str,
    ) -> BoxFuture<'a, k3rs_client::Result<Value>> {
        Box::pin(async move {
            let rt = self.resolve(r)?;
            let t = Target {
                rt: &rt,
                namespace: namespace_for(&rt, namespace),
                name: Some(name),
            };
            let part = if subresource == Some("status") {
                Part::Status
            } else {
                Part::Main
            };
            let w = objects::update(
                &self.api,
                &t,
                name,
                object,
                part,
                &manager_query(field_manager),
            )
            .await
            .map_err(to_client_error)?;
            let mut obj = w.object;
            objects::set_type_meta(&rt, &mut obj);
            Ok(obj)
        })
    }

    fn patch<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
        patch: Patch,
        subresource: Option<&'a str>,
        field_manager: &'a str,
    ) -> BoxFuture<'a, k3rs_client::Result<Value>> {
        Box::pin(async move {
            let rt = self.resolve(r)?;
            let t = Target {
                rt: &rt,
                namespace: namespace_for(&rt, namespace),
                name: Some(name),
            };
            let mut q = manager_query(field_manager);
            let (media, body) = match patch {
                Patch::Merge(v) => ("application/merge-patch+json", v),
                Patch::Json(v) => ("application/json-patch+json", v),
                Patch::Strategic(v) => ("application/strategic-merge-patch+json", v),
                Patch::Apply { object, force } => {
                    if force {
                        q.insert("force".into(), "true".into());
                    }
                    ("application/apply-patch+yaml", object)
                }
            };
            let raw = serde_json::to_vec(&body).unwrap_or_default();
            let obj = if subresource == Some("scale") {
                let current = objects::get(&self.api, &t, name)
                    .await
                    .map_err(to_client_error)?;
                let mut scale = objects::to_scale(&rt, &current);
                match media {
                    "application/json-patch+json" => k3rs_patch::json_patch(&mut scale, &body),
                    _ => k3rs_patch::merge_patch(&mut scale, &body),
                }
                .map_err(|e| to_client_error(ApiError::bad_request(e.to_string())))?;
                objects::write_scale(&self.api, &t, name, &scale, &q)
                    .await
                    .map_err(to_client_error)?
            } else {
                let part = if subresource == Some("status") {
                    Part::Status
                } else {
                    Part::Main
                };
                let w = objects::patch(&self.api, &t, name, media, &raw, part, &q)
                    .await
                    .map_err(to_client_error)?;
                let mut obj = w.object;
                objects::set_type_meta(&rt, &mut obj);
                obj
            };
            Ok(obj)
        })
    }

    fn delete<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
        params: &'a DeleteParams,
    ) -> BoxFuture<'a, k3rs_client::Result<Value>> {
        Box::pin(async move {
            let rt = self.resolve(r)?;
            let t = Target {
                rt: &rt,
                namespace: namespace_for(&rt, namespace),
                name: Some(name),
            };
            let opts = DeleteOptions {
                propagation: params.propagation.clone(),
                grace_period: params.grace_period_seconds,
                precondition_uid: params.precondition_uid.clone(),
                precondition_rv: None,
            };
            let (mut obj, _) = objects::delete(&self.api, &t, name, &opts, &Query::new())
                .await
                .map_err(to_client_error)?;
            objects::set_type_meta(&rt, &mut obj);
            Ok(obj)
        })
    }

    fn create_subresource<'a>(
        &'a self,
        r: &'a Resource,
        namespace: Option<&'a str>,
        name: &'a str,
        subresource: &'a str,
        body: Value,
    ) -> BoxFuture<'a, k3rs_client::Result<Value>> {
        Box::pin(async move {
            let rt = self.resolve(r)?;
            let t = Target {
                rt: &rt,
                namespace: namespace_for(&rt, namespace),
                name: Some(name),
            };
            let result = match subresource {
                "binding" => crate::subresources::bind_pod(&self.api, &t, name, &body).await,
                "token" => crate::subresources::token_request(&self.api, &t, name, body).await,
                "eviction" => {
                    crate::subresources::evict_pod(&self.api, &t, name, &body, &Query::new()).await
                }
                other => Err(ApiError::method_not_allowed(format!(
                    "subresource {other} cannot be created"
                ))),
            };
            result.map_err(to_client_error)
        })
    }
}
