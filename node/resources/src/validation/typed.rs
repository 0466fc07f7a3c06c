//! Decoding into the `k8s-openapi` type of a kind: type errors with their JSON path, and
//! unknown-field detection by round trip (decode, encode, compare keys).

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::FieldError;

use k8s_openapi::api::{
    admissionregistration::v1 as admission, apps::v1 as apps, authentication::v1 as authn,
    authorization::v1 as authz, autoscaling::v1 as as1, autoscaling::v2 as as2, batch::v1 as batch,
    certificates::v1 as certs, coordination::v1 as coord, core::v1 as core,
    discovery::v1 as discovery, events::v1 as events, networking::v1 as net, node::v1 as node,
    policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as sched, storage::v1 as storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;

fn round_trip<T: DeserializeOwned + Serialize>(text: &str) -> Result<Value, serde_json::Error> {
    let typed: T = serde_json::from_str(text)?;
    serde_json::to_value(&typed)
}

macro_rules! kinds {
    ($($group:literal, $version:literal, $kind:literal => $ty:ty;)*) => {
        /// Decodes `text` as the type of (group, version, kind) and encodes it back; None for
        /// kinds without a type here.
        fn dispatch(group: &str, version: &str, kind: &str, text: &str) -> Option<Result<Value, serde_json::Error>> {
            match (group, version, kind) {
                $(($group, $version, $kind) => Some(round_trip::<$ty>(text)),)*
                _ => None,
            }
        }
    };
}

kinds! {
    "", "v1", "Binding" => core::Binding;
    "", "v1", "ComponentStatus" => core::ComponentStatus;
    "", "v1", "ConfigMap" => core::ConfigMap;
    "", "v1", "Endpoints" => core::Endpoints;
    "", "v1", "Event" => core::Event;
    "", "v1", "LimitRange" => core::LimitRange;
    "", "v1", "Namespace" => core::Namespace;
    "", "v1", "Node" => core::Node;
    "", "v1", "PersistentVolumeClaim" => core::PersistentVolumeClaim;
    "", "v1", "PersistentVolume" => core::PersistentVolume;
    "", "v1", "Pod" => core::Pod;
    "", "v1", "PodTemplate" => core::PodTemplate;
    "", "v1", "ReplicationController" => core::ReplicationController;
    "", "v1", "ResourceQuota" => core::ResourceQuota;
    "", "v1", "Secret" => core::Secret;
    "", "v1", "ServiceAccount" => core::ServiceAccount;
    "", "v1", "Service" => core::Service;
    "admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration" => admission::MutatingWebhookConfiguration;
    "admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration" => admission::ValidatingWebhookConfiguration;
    "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy" => admission::ValidatingAdmissionPolicy;
    "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding" => admission::ValidatingAdmissionPolicyBinding;
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition" => apiext::CustomResourceDefinition;
    "apps", "v1", "ControllerRevision" => apps::ControllerRevision;
    "apps", "v1", "DaemonSet" => apps::DaemonSet;
    "apps", "v1", "Deployment" => apps::Deployment;
    "apps", "v1", "ReplicaSet" => apps::ReplicaSet;
    "apps", "v1", "StatefulSet" => apps::StatefulSet;
    "authentication.k8s.io", "v1", "TokenReview" => authn::TokenReview;
    "authentication.k8s.io", "v1", "SelfSubjectReview" => authn::SelfSubjectReview;
    "authentication.k8s.io", "v1", "TokenRequest" => authn::TokenRequest;
    "authorization.k8s.io", "v1", "LocalSubjectAccessReview" => authz::LocalSubjectAccessReview;
    "authorization.k8s.io", "v1", "SelfSubjectAccessReview" => authz::SelfSubjectAccessReview;
    "authorization.k8s.io", "v1", "SelfSubjectRulesReview" => authz::SelfSubjectRulesReview;
    "authorization.k8s.io", "v1", "SubjectAccessReview" => authz::SubjectAccessReview;
    "autoscaling", "v1", "HorizontalPodAutoscaler" => as1::HorizontalPodAutoscaler;
    "autoscaling", "v1", "Scale" => as1::Scale;
    "autoscaling", "v2", "HorizontalPodAutoscaler" => as2::HorizontalPodAutoscaler;
    "batch", "v1", "CronJob" => batch::CronJob;
    "batch", "v1", "Job" => batch::Job;
    "certificates.k8s.io", "v1", "CertificateSigningRequest" => certs::CertificateSigningRequest;
    "coordination.k8s.io", "v1", "Lease" => coord::Lease;
    "discovery.k8s.io", "v1", "EndpointSlice" => discovery::EndpointSlice;
    "events.k8s.io", "v1", "Event" => events::Event;
    "networking.k8s.io", "v1", "IngressClass" => net::IngressClass;
    "networking.k8s.io", "v1", "Ingress" => net::Ingress;
    "networking.k8s.io", "v1", "NetworkPolicy" => net::NetworkPolicy;
    "node.k8s.io", "v1", "RuntimeClass" => node::RuntimeClass;
    "policy", "v1", "PodDisruptionBudget" => policy::PodDisruptionBudget;
    "policy", "v1", "Eviction" => policy::Eviction;
    "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding" => rbac::ClusterRoleBinding;
    "rbac.authorization.k8s.io", "v1", "ClusterRole" => rbac::ClusterRole;
    "rbac.authorization.k8s.io", "v1", "RoleBinding" => rbac::RoleBinding;
    "rbac.authorization.k8s.io", "v1", "Role" => rbac::Role;
    "scheduling.k8s.io", "v1", "PriorityClass" => sched::PriorityClass;
    "storage.k8s.io", "v1", "CSIDriver" => storage::CSIDriver;
    "storage.k8s.io", "v1", "CSINode" => storage::CSINode;
    "storage.k8s.io", "v1", "CSIStorageCapacity" => storage::CSIStorageCapacity;
    "storage.k8s.io", "v1", "StorageClass" => storage::StorageClass;
    "storage.k8s.io", "v1", "VolumeAttachment" => storage::VolumeAttachment;
}

/// The object as the type expects it: apiVersion and kind forced to the served ones (the
/// apiserver takes them from the URL; k8s-openapi rejects mismatches).
fn normalized(group: &str, version: &str, kind: &str, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        m.insert("apiVersion".into(), Value::String(api_version));
        m.insert("kind".into(), Value::String(kind.to_string()));
    }
    v
}

/// The type error of `obj`, if it does not decode into its kind's type.
pub(crate) fn decode_error(
    group: &str,
    version: &str,
    kind: &str,
    obj: &Value,
) -> Option<FieldError> {
    let text = serde_json::to_string(&normalized(group, version, kind, obj)).ok()?;
    let err = dispatch(group, version, kind, &text)?.err()?;
    let path = path_at(&text, err.column().saturating_sub(1));
    let mut message = err.to_string();
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    let bad = value_at(obj, &path).cloned().unwrap_or(Value::Null);
    Some(FieldError::invalid(path, &bad, &message))
}

/// Unknown fields of `obj` as dotted paths (see `validation::unknown_fields`).
pub(crate) fn unknown_fields(group: &str, version: &str, kind: &str, obj: &Value) -> Vec<String> {
    let input = normalized(group, version, kind, obj);
    let Ok(text) = serde_json::to_string(&input) else {
        return vec![];
    };
    let Some(Ok(output)) = dispatch(group, version, kind, &text) else {
        return vec![];
    };
    let mut out = vec![];
    diff(&input, &output, "", &mut out);
    out
}

fn diff(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => diff(v, bv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The value at a dotted path produced by [`path_at`] ("spec.ports[0].port").
fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    if path.is_empty() {
        return Some(cur);
    }
    for seg in path.split('.') {
        let (key, rest) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if !key.is_empty() {
            cur = cur.get(key)?;
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            cur = cur.get(idx.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(cur)
}

enum Frame {
    Object(Option<String>),
    Array(usize),
}

/// The JSON path ("spec.template.spec.containers[0].image") of the value being read at byte
/// offset `pos` of compact JSON `text` (serde_json reports errors just after the bad token).
fn path_at(text: &str, pos: usize) -> String {
    let bytes = text.as_bytes();
    let end = pos.min(bytes.len());
    let mut stack: Vec<Frame> = vec![];
    let mut expecting_key = false;
    let mut i = 0;
    while i < end {
        match bytes[i] {
            b'{' => {
                stack.push(Frame::Object(None));
                expecting_key = true;
            }
            b'[' => {
                stack.push(Frame::Array(0));
                expecting_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expecting_key = false;
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array(n)) => *n += 1,
                Some(Frame::Object(k)) => {
                    *k = None;
                    expecting_key = true;
                }
                None => {}
            },
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if expecting_key {
                    let raw = &text[start..i.min(text.len())];
                    let key = serde_json::from_str::<String>(&format!("\"{raw}\""))
                        .unwrap_or_else(|_| raw.to_string());
                    if let Some(Frame::Object(k)) = stack.last_mut() {
                        *k = Some(key);
                    }
                    expecting_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object(Some(k)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object(None) => {}
            Frame::Array(n) => path.push_str(&format!("[{n}]")),
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn path_of_type_errors() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"replicas": "three"}});
        let e = decode_error("apps", "v1", "Deployment", &d).unwrap();
        assert_eq!(e.field, "spec.replicas");
        assert_eq!(e.reason, "FieldValueInvalid");
        assert!(
            e.message
                .starts_with("Invalid value: \"three\": invalid type: string"),
            "{}",
            e.message
        );

        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "x"}, {"name": "b", "image": "y", "ports": [{"containerPort": 80}, {"containerPort": true}]}]}});
        let e = decode_error("", "v1", "Pod", &p).unwrap();
        assert_eq!(e.field, "spec.containers[1].ports[1].containerPort");
        assert!(decode_error("", "v1", "Pod", &json!({"metadata": {"name": "p"}})).is_none());
        assert!(decode_error("example.com", "v1", "Widget", &p).is_none());
    }
}
