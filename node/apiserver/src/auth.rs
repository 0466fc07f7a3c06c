//! Authentication (client certificates, service-account bearer tokens) and RBAC authorization.

use crate::meta;
use crate::state::Api;
use k3rs_pki::ServiceAccountKeys;
use serde_json::{json, Value};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: Vec<(String, Vec<String>)>,
}

impl User {
    pub fn anonymous() -> Self {
        User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: vec![],
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == "system:anonymous"
    }

    pub fn info_json(&self) -> Value {
        let mut v = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = Value::Object(
                self.extra
                    .iter()
                    .map(|(k, vs)| (k.clone(), json!(vs)))
                    .collect(),
            );
        }
        v
    }
}

pub struct Authenticator {
    pub service_accounts: Option<ServiceAccountKeys>,
}

impl Authenticator {
    /// Identity from a verified TLS client certificate.
    pub fn from_certificate(&self, der: &[u8]) -> Option<User> {
        let id = k3rs_pki::client_identity(der).ok()?;
        let mut groups = id.groups;
        groups.push("system:authenticated".into());
        Some(User {
            name: id.user,
            uid: String::new(),
            groups,
            extra: vec![],
        })
    }

    /// Identity from `Authorization: Bearer <jwt>`; None when the token is not valid.
    pub fn from_bearer(&self, token: &str) -> Option<User> {
        let keys = self.service_accounts.as_ref()?;
        let claims = keys.verify(token, chrono::Utc::now().timestamp()).ok()?;
        let mut extra = Vec::new();
        if let Some((pod, uid)) = &claims.pod {
            extra.push((
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.clone()],
            ));
            extra.push((
                "authentication.kubernetes.io/pod-uid".into(),
                vec![uid.clone()],
            ));
        }
        let mut groups = claims.groups();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        Some(User {
            name: claims.username(),
            uid: claims.service_account_uid.clone(),
            groups,
            extra,
        })
    }
}

/// The attributes an authorization decision is made on.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Set for non-resource requests (`/version`, `/healthz`, ...).
    pub path: Option<String>,
}

fn matches(list: &Value, want: &str) -> bool {
    list.as_array().is_some_and(|a| {
        a.iter()
            .any(|v| v.as_str() == Some("*") || v.as_str() == Some(want))
    })
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if let Some(path) = &a.path {
        let Some(urls) = rule["nonResourceURLs"].as_array() else {
            return false;
        };
        let url_ok = urls.iter().filter_map(Value::as_str).any(|u| {
            u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        });
        return url_ok && matches(&rule["verbs"], &a.verb);
    }
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = rule["resources"].as_array().is_some_and(|rs| {
        rs.iter().filter_map(Value::as_str).any(|r| {
            r == "*"
                || r == resource
                || (a.subresource.is_empty() && r == a.resource)
                || r.strip_prefix("*/").is_some_and(|s| s == a.subresource)
                || r.strip_suffix("/*")
                    .is_some_and(|base| base == a.resource && !a.subresource.is_empty())
        })
    });
    let names_ok = match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => {
            names.iter().any(|n| n.as_str() == Some(a.name.as_str()))
        }
        _ => true,
    };
    matches(&rule["verbs"], &a.verb)
        && matches(&rule["apiGroups"], &a.group)
        && resource_ok
        && names_ok
}

fn subject_matches(subject: &Value, user: &User, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str().unwrap_or("") {
        "User" => name == user.name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

async fn role_rules(api: &Api, role_ref: &Value, namespace: &str) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or("");
    let key = match role_ref["kind"].as_str() {
        Some("ClusterRole") => format!("/registry/rbac.authorization.k8s.io/clusterroles/{name}"),
        _ => format!("/registry/rbac.authorization.k8s.io/roles/{namespace}/{name}"),
    };
    match api.store.get(&key).await {
        Ok(Some(kv)) => {
            let role = meta::decode_from_store(&kv.value, kv.mod_revision);
            role["rules"].as_array().cloned().unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// RBAC: cluster role bindings apply everywhere, role bindings within their namespace.
pub async fn authorize(api: &Api, user: &User, a: &Attributes) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let list = |prefix: String| async move {
        match api.store.list(&prefix, None, None, None).await {
            Ok(l) => l
                .items
                .iter()
                .map(|kv| meta::decode_from_store(&kv.value, kv.mod_revision))
                .collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        }
    };
    for crb in list("/registry/rbac.authorization.k8s.io/clusterrolebindings/".into()).await {
        let bound = crb["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, "")));
        if bound
            && role_rules(api, &crb["roleRef"], "")
                .await
                .iter()
                .any(|r| rule_allows(r, a))
        {
            return true;
        }
    }
    if !a.namespace.is_empty() && a.path.is_none() {
        let prefix = format!(
            "/registry/rbac.authorization.k8s.io/rolebindings/{}/",
            a.namespace
        );
        for rb in list(prefix).await {
            let bound = rb["subjects"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, &a.namespace)));
            if bound
                && role_rules(api, &rb["roleRef"], &a.namespace)
                    .await
                    .iter()
                    .any(|r| rule_allows(r, a))
            {
                return true;
            }
        }
    }
    false
}

/// A SelfSubjectRulesReview's status: every rule bound to `user` cluster-wide or in
/// `namespace` (what `kubectl auth can-i --list` prints).
pub async fn rules_review(api: &Api, user: &User, namespace: &str) -> Value {
    let mut rules: Vec<Value> = Vec::new();
    if user.groups.iter().any(|g| g == "system:masters") {
        rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    let mut bindings: Vec<(Value, &str)> = Vec::new();
    let prefixes = [
        (
            "/registry/rbac.authorization.k8s.io/clusterrolebindings/".to_string(),
            "",
        ),
        (
            format!("/registry/rbac.authorization.k8s.io/rolebindings/{namespace}/"),
            namespace,
        ),
    ];
    for (prefix, ns) in &prefixes {
        if prefix.ends_with("//") {
            continue;
        }
        if let Ok(l) = api.store.list(prefix, None, None, None).await {
            for kv in &l.items {
                bindings.push((meta::decode_from_store(&kv.value, kv.mod_revision), ns));
            }
        }
    }
    for (b, ns) in bindings {
        let bound = b["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, ns)));
        if bound {
            rules.extend(role_rules(api, &b["roleRef"], ns).await);
        }
    }
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if r.get("nonResourceURLs").is_some_and(|u| u.is_array()) {
            non_resource_rules
                .push(json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}));
        } else {
            let mut rr = json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"]});
            if r.get("resourceNames").is_some_and(|n| n.is_array()) {
                rr["resourceNames"] = r["resourceNames"].clone();
            }
            resource_rules.push(rr);
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// Upstream's Forbidden message: `User "u" cannot list resource "pods" in API group "" in the namespace "ns"`.
pub fn forbidden_message(user: &User, a: &Attributes) -> String {
    if let Some(path) = &a.path {
        return format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.name, a.verb, path
        );
    }
    let what = if a.name.is_empty() {
        a.resource.clone()
    } else {
        format!("{} \"{}\"", a.resource, a.name)
    };
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    format!(
        "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.name, a.verb, a.group
    )
}

/// Acts on `Impersonate-User` / `Impersonate-Group` / `Impersonate-Uid` /
/// `Impersonate-Extra-<key>` headers (`kubectl --as`, `--as-group`): each needs the
/// `impersonate` verb on users, groups, uids or userextras/<key>, like upstream. The impersonated
/// user is also `system:authenticated`, unless it is anonymous.
pub async fn impersonate(
    api: &Api,
    user: User,
    headers: &hyper::HeaderMap,
) -> Result<User, crate::status::ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let Some(name) = values("impersonate-user").into_iter().next() else {
        if headers.contains_key("impersonate-group") {
            return Err(crate::status::ApiError::bad_request(
                "requested impersonation of groups without impersonating a user",
            ));
        }
        return Ok(user);
    };
    let check = |resource: &str, subresource: &str, target: String| Attributes {
        verb: "impersonate".into(),
        group: if resource == "users" || resource == "groups" {
            String::new()
        } else {
            "authentication.k8s.io".into()
        },
        resource: resource.into(),
        subresource: subresource.into(),
        name: target,
        ..Default::default()
    };
    let mut wanted = vec![check("users", "", name.clone())];
    let groups = values("impersonate-group");
    wanted.extend(groups.iter().map(|g| check("groups", "", g.clone())));
    let uid = values("impersonate-uid").into_iter().next();
    wanted.extend(uid.iter().map(|u| check("uids", "", u.clone())));
    let mut extra: Vec<(String, Vec<String>)> = Vec::new();
    for (key, value) in headers {
        if let Some(k) = key.as_str().strip_prefix("impersonate-extra-") {
            let v = value.to_str().unwrap_or("").to_string();
            wanted.push(check("userextras", k, v.clone()));
            match extra.iter_mut().find(|(ek, _)| ek == k) {
                Some((_, vs)) => vs.push(v),
                None => extra.push((k.to_string(), vec![v])),
            }
        }
    }
    for a in &wanted {
        if !authorize(api, &user, a).await {
            return Err(crate::status::ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: User \"{}\" cannot impersonate resource \"{}\" in API group \"{}\" at the cluster scope",
                a.resource, a.name, user.name, a.resource, a.group
            )));
        }
    }
    let mut groups = groups;
    if name != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    Ok(User {
        name,
        uid: uid.unwrap_or_default(),
        groups,
        extra,
    })
}

/// Answers a SelfSubjectAccessReview / SubjectAccessReview spec for `user`.
pub async fn access_review(api: &Api, user: &User, spec: &Value) -> Value {
    let attrs = if let Some(r) = spec.get("resourceAttributes") {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        Attributes {
            verb: s("verb"),
            group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            namespace: s("namespace"),
            name: s("name"),
            path: None,
        }
    } else if let Some(n) = spec.get("nonResourceAttributes") {
        Attributes {
            verb: n["verb"].as_str().unwrap_or("").into(),
            path: Some(n["path"].as_str().unwrap_or("").into()),
            ..Default::default()
        }
    } else {
        Attributes::default()
    };
    let allowed = authorize(api, user, &attrs).await;
    let mut status = json!({"allowed": allowed});
    if !allowed {
        status["reason"] = json!("");
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_like_rbac() {
        let rule =
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        assert!(rule_allows(&rule, &attrs("get", "", "pods")));
        assert!(!rule_allows(&rule, &attrs("delete", "", "pods")));
        assert!(!rule_allows(&rule, &attrs("get", "apps", "pods")));
        let mut a = attrs("get", "", "pods");
        a.subresource = "log".into();
        assert!(rule_allows(&rule, &a));
        a.subresource = "exec".into();
        assert!(!rule_allows(&rule, &a));
        let star = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(&star, &a));
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["x"], "verbs": ["get"]});
        let mut b = attrs("get", "", "configmaps");
        b.name = "y".into();
        assert!(!rule_allows(&named, &b));
        let nr = json!({"nonResourceURLs": ["/healthz", "/api/*"], "verbs": ["get"]});
        let c = Attributes {
            verb: "get".into(),
            path: Some("/api/v1".into()),
            ..Default::default()
        };
        assert!(rule_allows(&nr, &c));
    }

    #[test]
    fn subjects() {
        let u = User {
            name: "system:serviceaccount:ns:sa".into(),
            uid: String::new(),
            groups: vec!["system:serviceaccounts".into()],
            extra: vec![],
        };
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}),
            &u,
            ""
        ));
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "sa"}),
            &u,
            "ns"
        ));
        assert!(subject_matches(
            &json!({"kind": "Group", "name": "system:serviceaccounts"}),
            &u,
            ""
        ));
        assert!(!subject_matches(
            &json!({"kind": "User", "name": "bob"}),
            &u,
            ""
        ));
    }
}
