//! Patch and apply semantics of the Kubernetes API server, on plain JSON values.
//!
//! * [`merge_patch`] — RFC 7386 JSON merge patch (`application/merge-patch+json`).
//! * [`json_patch`] — RFC 6902 JSON patch (`application/json-patch+json`).
//! * [`strategic_merge_patch`] — Kubernetes strategic merge patch
//!   (`application/strategic-merge-patch+json`), driven by a compact table of the
//!   built-in types' `patchStrategy`/`patchMergeKey` tags ([`field_strategy`]).
//! * [`server_side_apply`] / [`record_update`] — server-side apply
//!   (`application/apply-patch+yaml`) and field ownership in `metadata.managedFields`.
//!
//! Objects are full Kubernetes objects as [`serde_json::Value`]; nothing here does I/O.
#![forbid(unsafe_code)]

mod apply;
mod fieldpath;
mod jsonpatch;
mod merge;
mod schema;
mod strategic;

pub use apply::{record_update, server_side_apply, ApplyConflict, ApplyError};
pub use jsonpatch::json_patch;
pub use merge::merge_patch;
pub use schema::{field_strategy, root_definition, supports_strategic_merge, FieldStrategy};
pub use strategic::strategic_merge_patch;

/// Errors from [`merge_patch`], [`json_patch`] and [`strategic_merge_patch`].
///
/// The API server maps `Invalid`/`TestFailed`/`PathNotFound` to 422 (Invalid)
/// and `Unsupported` to 415.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PatchError {
    /// The patch document is malformed (wrong shape, bad directive, missing merge key).
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON patch `test` operation did not match.
    #[error("test operation failed: {0}")]
    TestFailed(String),
    /// A JSON patch operation referred to a location that does not exist.
    #[error("path not found: {0}")]
    PathNotFound(String),
    /// Strategic merge patch is not supported for this kind (custom resources).
    #[error("strategic merge patch is not supported for {0}")]
    Unsupported(String),
}
