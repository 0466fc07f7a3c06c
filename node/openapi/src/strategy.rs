//! The single place where patch strategies come from: the strategic-merge table that
//! `k3rs-patch` transcribes from the `patchStrategy` / `patchMergeKey` tags of k8s.io/api.

/// `(x-kubernetes-patch-strategy, x-kubernetes-patch-merge-key)` of `property` of `definition`.
pub(crate) fn field_strategy(
    definition: &str,
    property: &str,
) -> Option<(&'static str, Option<&'static str>)> {
    k3rs_patch::field_strategy(definition, property).map(|s| (s.strategy, s.merge_key))
}
