//! OpenAPI documents of the API server, generated from the k8s-openapi types (their `schemars`
//! JSON Schemas) and from CustomResourceDefinition schemas:
//!
//! * `GET /openapi/v3` — [`OpenApi::v3_index`], and `GET /openapi/v3/<api/v1|apis/g/v>` —
//!   [`OpenApi::v3_document`] (kubectl 1.29+ `apply` and `explain`);
//! * `GET /openapi/v2` — [`OpenApi::v2_json`] and, in gnostic protobuf,
//!   [`OpenApi::v2_protobuf`] (kubectl 1.27/1.28).
//!
//! Definitions are named like kube-apiserver's (`io.k8s.api.apps.v1.Deployment`) and carry
//! `x-kubernetes-group-version-kind` and the patch-strategy extensions kubectl's strategic
//! merge reads; every resource gets its collection/item/`status`/`scale` paths with upstream
//! operation ids and `dryRun`/`fieldManager`/`fieldValidation`/`force` parameters.
//!
//! [`OpenApi::build`] only indexes its inputs. Each document is generated on first request and
//! kept serialized (one copy of bytes per document); the hash in the index is a content hash of
//! the *inputs* of a document (resources, CRD schemas, generator version), so it changes
//! whenever the document would, without building every document up front.
#![forbid(unsafe_code)]

mod gnostic;
mod kinds;
mod paths;
mod schemas;
mod strategy;

use std::sync::OnceLock;

use bytes::Bytes;
use k3rs_resources::ResourceType;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha512};

use crate::paths::Flavor;
use crate::schemas::Kind;

/// Version published in `info.version`.
const KUBERNETES_VERSION: &str = "v1.33.0";

/// Changes whenever the generated documents change for the same inputs.
const GENERATOR: &str = concat!("k3rs-openapi/", env!("CARGO_PKG_VERSION"), "/1");

/// The OpenAPI documents of one set of served resources.
pub struct OpenApi {
    group_versions: Vec<GroupVersion>,
    v2_json: OnceLock<Bytes>,
    v2_protobuf: OnceLock<Bytes>,
}

/// One `/openapi/v3/<path>` document.
struct GroupVersion {
    /// `api/v1` or `apis/<group>/<version>`.
    path: String,
    kinds: Vec<Kind>,
    hash: String,
    document: OnceLock<Bytes>,
}

impl OpenApi {
    /// Indexes the served resources. `crd_schemas`: extra (ResourceType, openAPIV3Schema JSON)
    /// from CustomResourceDefinitions; a resource listed in both uses the CRD schema.
    pub fn build(resources: &[ResourceType], crd_schemas: &[(ResourceType, Value)]) -> OpenApi {
        let same = |a: &ResourceType, b: &ResourceType| {
            a.group == b.group && a.version == b.version && a.plural == b.plural
        };
        let mut all: Vec<Kind> = Vec::with_capacity(resources.len() + crd_schemas.len());
        for r in resources {
            if all.iter().any(|k| same(&k.resource, r)) {
                continue;
            }
            let schema = crd_schemas
                .iter()
                .find(|(c, _)| same(c, r))
                .map(|(_, s)| s.clone());
            all.push(Kind::new(r.clone(), schema));
        }
        for (r, schema) in crd_schemas {
            if !all.iter().any(|k| same(&k.resource, r)) {
                all.push(Kind::new(r.clone(), Some(schema.clone())));
            }
        }

        let mut group_versions: Vec<GroupVersion> = Vec::new();
        for kind in all {
            let path = paths::group_version_prefix(&kind.resource.group, &kind.resource.version)
                [1..]
                .to_string();
            match group_versions.iter_mut().find(|gv| gv.path == path) {
                Some(gv) => gv.kinds.push(kind),
                None => group_versions.push(GroupVersion {
                    path,
                    kinds: vec![kind],
                    hash: String::new(),
                    document: OnceLock::new(),
                }),
            }
        }
        for gv in &mut group_versions {
            gv.hash = input_hash(&gv.path, &gv.kinds);
        }
        OpenApi {
            group_versions,
            v2_json: OnceLock::new(),
            v2_protobuf: OnceLock::new(),
        }
    }

    /// `GET /openapi/v3`:
    /// `{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=<HASH>"}, …}}`.
    pub fn v3_index(&self) -> Value {
        let paths: Map<String, Value> = self
            .group_versions
            .iter()
            .map(|gv| {
                let url = format!("/openapi/v3/{}?hash={}", gv.path, gv.hash);
                (gv.path.clone(), json!({ "serverRelativeURL": url }))
            })
            .collect();
        json!({ "paths": paths })
    }

    /// `GET /openapi/v3/<path>` (`api/v1`, `apis/apps/v1`; a leading `/` and a `?query` are
    /// ignored): the serialized JSON document and its hash (the one in [`Self::v3_index`]).
    /// `Bytes` clones share one buffer. `None` for an unknown group version.
    pub fn v3_document(&self, path: &str) -> Option<(Bytes, String)> {
        let path = path.split('?').next().unwrap_or(path);
        let path = path.trim_start_matches('/').trim_end_matches('/');
        let gv = self.group_versions.iter().find(|gv| gv.path == path)?;
        let doc = gv.document.get_or_init(|| build_v3(gv));
        Some((doc.clone(), gv.hash.clone()))
    }

    /// `GET /openapi/v2` as JSON (Swagger 2.0) — every group version in one document.
    pub fn v2_json(&self) -> Bytes {
        self.v2_json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&self.v2_value()).unwrap_or_default()))
            .clone()
    }

    /// `GET /openapi/v2` as `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`
    /// (gnostic `openapi.v2.Document`; kubectl expects the reply typed
    /// `application/octet-stream`).
    pub fn v2_protobuf(&self) -> Bytes {
        self.v2_protobuf
            .get_or_init(|| Bytes::from(gnostic::encode_document(&self.v2_value())))
            .clone()
    }

    fn v2_value(&self) -> Value {
        let kinds: Vec<&Kind> = self
            .group_versions
            .iter()
            .flat_map(|gv| gv.kinds.iter())
            .collect();
        let mut defs = schemas::definitions(&kinds);
        schemas::finish_v2(&mut defs);
        let mut paths = Map::new();
        for k in &kinds {
            paths::add_paths(&mut paths, Flavor::V2, k);
        }
        json!({
            "swagger": "2.0",
            "info": { "title": "Kubernetes", "version": KUBERNETES_VERSION },
            "paths": paths,
            "definitions": defs,
            "securityDefinitions": {
                "BearerToken": {
                    "description": "Bearer Token authentication",
                    "in": "header",
                    "name": "authorization",
                    "type": "apiKey",
                },
            },
            "security": [{ "BearerToken": [] }],
        })
    }
}

fn build_v3(gv: &GroupVersion) -> Bytes {
    let kinds: Vec<&Kind> = gv.kinds.iter().collect();
    let mut defs = schemas::definitions(&kinds);
    schemas::finish_v3(&mut defs);
    let mut paths = Map::new();
    for k in &kinds {
        paths::add_paths(&mut paths, Flavor::V3, k);
    }
    let doc = json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes", "version": KUBERNETES_VERSION },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                },
            },
        },
    });
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

/// Upper-case hex SHA-512 (like kube-apiserver's hashes) of everything a document is built from.
fn input_hash(path: &str, kinds: &[Kind]) -> String {
    let mut h = Sha512::new();
    h.update(GENERATOR.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    for k in kinds {
        h.update([0]);
        h.update(format!("{:?}", k.resource).as_bytes());
        if let schemas::Source::Crd(schema) = &k.source {
            h.update(schema.to_string().as_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests;
