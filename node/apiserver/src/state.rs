//! The API server's shared state: the store, the resource index (built-ins plus CRDs) and the
//! generated OpenAPI documents.

use k3rs_openapi::OpenApi;
use k3rs_resources::{builtin_resources, ResourceType};
use k3rs_store::Store;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock};

/// Served resource types, looked up by group/version/plural or by kind.
#[derive(Default)]
pub struct ResourceIndex {
    pub types: Vec<Arc<ResourceType>>,
    /// CRD-defined types: (type, openAPIV3Schema, additionalPrinterColumns, preserve unknown fields).
    pub custom: Vec<CustomType>,
}

pub struct CustomType {
    pub rt: Arc<ResourceType>,
    pub schema: Value,
    pub printer_columns: Value,
}

impl ResourceIndex {
    pub fn builtin() -> Self {
        ResourceIndex {
            types: builtin_resources().into_iter().map(Arc::new).collect(),
            custom: Vec::new(),
        }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// The preferred (first listed) version of a group/plural, for cross-version lookups.
    pub fn find_any_version(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|r| r.group == group && r.plural == plural && r.stored)
            .cloned()
    }

    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|r| r.group == group && r.kind == kind)
            .cloned()
    }

    pub fn custom_type(&self, rt: &ResourceType) -> Option<&CustomType> {
        self.custom.iter().find(|c| {
            c.rt.group == rt.group && c.rt.version == rt.version && c.rt.plural == rt.plural
        })
    }

    /// Distinct stored resources (one per group/plural), e.g. for namespace cleanup and GC.
    pub fn stored_resources(&self) -> Vec<Arc<ResourceType>> {
        let mut seen = std::collections::HashSet::new();
        self.types
            .iter()
            .filter(|r| r.stored && seen.insert((r.group.clone(), r.plural.clone())))
            .cloned()
            .collect()
    }

    /// Replaces the CRD-defined types with those of the given established CRDs.
    pub fn set_custom(&mut self, crds: &[Value]) {
        let old: Vec<Arc<ResourceType>> = self.custom.iter().map(|c| c.rt.clone()).collect();
        self.types
            .retain(|t| !old.iter().any(|c| Arc::ptr_eq(c, t)));
        self.custom.clear();
        for crd in crds {
            let spec = &crd["spec"];
            let group = spec["group"].as_str().unwrap_or_default().to_string();
            let names = &spec["names"];
            let strs = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for version in spec["versions"].as_array().into_iter().flatten() {
                if version["served"] == Value::Bool(false) {
                    continue;
                }
                let mut subresources = Vec::new();
                if version.pointer("/subresources/status").is_some() {
                    subresources.push("status".to_string());
                }
                if version.pointer("/subresources/scale").is_some() {
                    subresources.push("scale".to_string());
                }
                let rt =
                    Arc::new(ResourceType {
                        group: group.clone(),
                        version: version["name"].as_str().unwrap_or_default().to_string(),
                        kind: names["kind"].as_str().unwrap_or_default().to_string(),
                        plural: names["plural"].as_str().unwrap_or_default().to_string(),
                        singular: names["singular"].as_str().map(String::from).unwrap_or_else(
                            || names["kind"].as_str().unwrap_or_default().to_lowercase(),
                        ),
                        namespaced: spec["scope"].as_str() != Some("Cluster"),
                        short_names: strs(&names["shortNames"]),
                        categories: strs(&names["categories"]),
                        subresources,
                        verbs: k3rs_resources::ALL_VERBS
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                        stored: true,
                    });
                self.types.push(rt.clone());
                self.custom.push(CustomType {
                    rt,
                    schema: version
                        .pointer("/schema/openAPIV3Schema")
                        .cloned()
                        .unwrap_or(Value::Null),
                    printer_columns: version
                        .get("additionalPrinterColumns")
                        .cloned()
                        .unwrap_or(Value::Array(vec![])),
                });
            }
        }
    }
}

/// Addresses the server announces (discovery, the `kubernetes` endpoints).
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub advertise_ip: IpAddr,
    pub port: u16,
    pub service_ip: IpAddr,
    /// Service CIDR (network, prefix length) that ClusterIPs come from.
    pub service_cidr: (Ipv4Addr, u8),
}

pub struct Api {
    pub store: Store,
    pub resources: RwLock<ResourceIndex>,
    pub openapi: RwLock<Arc<OpenApi>>,
    pub auth: crate::auth::Authenticator,
    /// Roles and bindings for authorization, kept in memory.
    pub rbac: crate::auth::RbacCache,
    pub info: ServerInfo,
    /// The cluster CA certificate, published to every namespace as `kube-root-ca.crt`.
    pub cluster_ca_pem: String,
    /// Log streaming of the local node's pods, once its kubelet runs.
    pub pod_logs: RwLock<Option<Arc<dyn k3rs_client::PodLogs>>>,
    /// Exec into the local node's pods, once its kubelet runs.
    pub pod_exec: RwLock<Option<Arc<dyn k3rs_client::PodExec>>>,
    /// Port-forward into the local node's pods, once its kubelet runs.
    pub pod_port_forward: RwLock<Option<Arc<dyn k3rs_client::PodPortForward>>>,
}

impl Api {
    /// Builds the served state over a store: resource index (built-ins plus stored CRDs),
    /// OpenAPI, and the bootstrap objects. No network: `ApiServer::bind` serves it over HTTPS,
    /// in-process components use it through `LocalClient`.
    pub async fn start(
        store: Store,
        service_accounts: Option<k3rs_pki::ServiceAccountKeys>,
        info: ServerInfo,
        cluster_ca_pem: String,
    ) -> Result<Arc<Api>, crate::Error> {
        let index = ResourceIndex::builtin();
        let types: Vec<ResourceType> = index.types.iter().map(|t| (**t).clone()).collect();
        let openapi = OpenApi::build(&types, &[]);
        let api = Arc::new(Api {
            store,
            resources: RwLock::new(index),
            openapi: RwLock::new(Arc::new(openapi)),
            auth: crate::auth::Authenticator { service_accounts },
            rbac: Default::default(),
            info,
            cluster_ca_pem,
            pod_logs: RwLock::new(None),
            pod_exec: RwLock::new(None),
            pod_port_forward: RwLock::new(None),
        });
        api.reload_crds().await?;
        crate::bootstrap::run(&api)
            .await
            .map_err(crate::Error::Bootstrap)?;
        Ok(api)
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.resources
            .read()
            .expect("resource index lock")
            .find(group, version, plural)
    }

    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.resources
            .read()
            .expect("resource index lock")
            .by_kind(group, kind)
    }

    pub fn openapi(&self) -> Arc<OpenApi> {
        self.openapi.read().expect("openapi lock").clone()
    }

    /// Rebuilds the CRD-defined part of the index and the OpenAPI documents from the store.
    pub async fn reload_crds(&self) -> Result<(), k3rs_store::Error> {
        let list = self
            .store
            .list(
                "/registry/apiextensions.k8s.io/customresourcedefinitions/",
                None,
                None,
                None,
            )
            .await?;
        let crds: Vec<Value> = list
            .items
            .iter()
            .map(|kv| crate::meta::decode_from_store(&kv.value, kv.mod_revision))
            .collect();
        let (types, schemas) = {
            let mut index = self.resources.write().expect("resource index lock");
            index.set_custom(&crds);
            let types: Vec<ResourceType> = index.types.iter().map(|t| (**t).clone()).collect();
            let schemas: Vec<(ResourceType, Value)> = index
                .custom
                .iter()
                .map(|c| ((*c.rt).clone(), c.schema.clone()))
                .collect();
            (types, schemas)
        };
        let doc = OpenApi::build(&types, &schemas);
        *self.openapi.write().expect("openapi lock") = Arc::new(doc);
        Ok(())
    }
}
