//! What the API server knows about resource types, with no I/O: the registry of built-in kinds,
//! validation and defaulting against the real Kubernetes types, and `kubectl get` table columns.
#![forbid(unsafe_code)]

pub mod qos;
pub mod quantity;
pub mod quota;
pub mod registry;

pub use registry::{builtin_resources, ResourceType, ALL_VERBS, GROUP_ORDER};
pub mod table;
pub mod validation;
