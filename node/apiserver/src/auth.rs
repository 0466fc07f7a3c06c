//! Authentication (client certificates, service-account bearer tokens) and RBAC authorization.

use crate::meta;
use crate::state::Api;
use futures_util::FutureExt;
use k3rs_pki::ServiceAccountKeys;
use k3rs_store::{EventKind, Store, Watcher};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

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

const RBAC_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

type RbacObjects = BTreeMap<String, Value>;

/// Roles and bindings held in memory, so authorizing a request reads nothing from the store.
/// A store watch keeps the copy current and is drained before every use; the store publishes a
/// write's event before the write returns, so a client's next request already sees its own RBAC
/// change (read-your-writes, unlike upstream's informer-fed authorizer).
#[derive(Default)]
pub struct RbacCache {
    state: tokio::sync::Mutex<Option<(Watcher, Arc<RbacObjects>)>>,
}

impl RbacCache {
    async fn load(store: &Store) -> Result<(Watcher, Arc<RbacObjects>), k3rs_store::Error> {
        let list = store.list(RBAC_PREFIX, None, None, None).await?;
        let watcher = store.watch(RBAC_PREFIX, list.revision).await?;
        let objects = list
            .items
            .iter()
            .map(|kv| {
                let obj = meta::decode_from_store(&kv.value, kv.mod_revision);
                (kv.key.clone(), obj)
            })
            .collect();
        Ok((watcher, Arc::new(objects)))
    }

    /// The roles and bindings as of now.
    async fn snapshot(&self, store: &Store) -> Arc<RbacObjects> {
        let mut state = self.state.lock().await;
        // Twice at most: a watch that ended is replaced by a fresh list and watch once.
        for _ in 0..2 {
            if state.is_none() {
                match Self::load(store).await {
                    Ok(loaded) => *state = Some(loaded),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading RBAC objects; denying");
                        return Arc::default();
                    }
                }
            }
            let Some((watcher, objects)) = state.as_mut() else {
                break;
            };
            let mut ended = false;
            while let Some(next) = watcher.next().now_or_never() {
                let Some(ev) = next else {
                    ended = true;
                    break;
                };
                let objects = Arc::make_mut(objects);
                if ev.kind == EventKind::Delete {
                    objects.remove(&ev.kv.key);
                } else {
                    let obj = meta::decode_from_store(&ev.kv.value, ev.kv.mod_revision);
                    objects.insert(ev.kv.key, obj);
                }
            }
            if !ended {
                return objects.clone();
            }
            *state = None;
        }
        Arc::default()
    }
}

/// Objects of one kind (`clusterrolebindings/`, `rolebindings/<ns>/` ...) in the snapshot.
fn of_kind<'a>(objects: &'a RbacObjects, kind_path: &str) -> impl Iterator<Item = &'a Value> {
    let prefix = format!("{RBAC_PREFIX}{kind_path}");
    objects
        .range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
}

fn role_rules<'a>(objects: &'a RbacObjects, role_ref: &Value, namespace: &str) -> &'a [Value] {
    let name = role_ref["name"].as_str().unwrap_or("");
    let key = match role_ref["kind"].as_str() {
        Some("ClusterRole") => format!("{RBAC_PREFIX}clusterroles/{name}"),
        _ => format!("{RBAC_PREFIX}roles/{namespace}/{name}"),
    };
    objects
        .get(&key)
        .and_then(|role| role["rules"].as_array())
        .map_or(&[], Vec::as_slice)
}

/// The bindings that apply in `namespace` (cluster role bindings, then that namespace's role
/// bindings) whose subjects include `user`, with the namespace their role is resolved in.
fn bindings_of<'a>(
    objects: &'a RbacObjects,
    user: &'a User,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a Value, &'a str)> {
    let cluster = of_kind(objects, "clusterrolebindings/").map(|b| (b, ""));
    let local = (!namespace.is_empty())
        .then(|| {
            of_kind(objects, &format!("rolebindings/{namespace}/")).map(move |b| (b, namespace))
        })
        .into_iter()
        .flatten();
    cluster.chain(local).filter(move |(b, ns)| {
        b["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, ns)))
    })
}

/// RBAC: cluster role bindings apply everywhere, role bindings within their namespace.
pub async fn authorize(api: &Api, user: &User, a: &Attributes) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let objects = api.rbac.snapshot(&api.store).await;
    // Non-resource URLs are cluster-scoped: only cluster role bindings grant them.
    let namespace = if a.path.is_none() {
        a.namespace.as_str()
    } else {
        ""
    };
    let allowed = bindings_of(&objects, user, namespace).any(|(b, ns)| {
        role_rules(&objects, &b["roleRef"], ns)
            .iter()
            .any(|r| rule_allows(r, a))
    });
    allowed
}

/// A SelfSubjectRulesReview's status: every rule bound to `user` cluster-wide or in
/// `namespace` (what `kubectl auth can-i --list` prints).
pub async fn rules_review(api: &Api, user: &User, namespace: &str) -> Value {
    let mut rules: Vec<Value> = Vec::new();
    if user.groups.iter().any(|g| g == "system:masters") {
        rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    let objects = api.rbac.snapshot(&api.store).await;
    for (b, ns) in bindings_of(&objects, user, namespace) {
        rules.extend(role_rules(&objects, &b["roleRef"], ns).iter().cloned());
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

    /// The in-memory copy follows the store at once: a binding works on the very next check
    /// after its write returned, and stops working once deleted.
    #[tokio::test]
    async fn rbac_cache_reads_its_own_writes() {
        let info = crate::ServerInfo {
            advertise_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 6443,
            service_ip: std::net::Ipv4Addr::new(10, 43, 0, 1).into(),
            service_cidr: (std::net::Ipv4Addr::new(10, 43, 0, 0), 16),
        };
        let api = Api::start(Store::in_memory(), None, info, String::new())
            .await
            .unwrap();
        let user = User {
            name: "alice".into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
            extra: Vec::new(),
        };
        let mut a = attrs("list", "", "pods");
        a.namespace = "team".into();
        assert!(!authorize(&api, &user, &a).await);

        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "reader", "namespace": "team"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice-reads", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        let role_key = format!("{RBAC_PREFIX}roles/team/reader");
        let binding_key = format!("{RBAC_PREFIX}rolebindings/team/alice-reads");
        api.store
            .create(&role_key, meta::encode_for_store(&role))
            .await
            .unwrap();
        api.store
            .create(&binding_key, meta::encode_for_store(&binding))
            .await
            .unwrap();
        assert!(
            authorize(&api, &user, &a).await,
            "allowed right after the write"
        );
        a.namespace = "other".into();
        assert!(
            !authorize(&api, &user, &a).await,
            "a role binding is namespaced"
        );
        a.namespace = "team".into();
        let review = rules_review(&api, &user, "team").await;
        let rules = review["resourceRules"].as_array().unwrap();
        assert!(
            rules.iter().any(|r| r["resources"] == json!(["pods"])),
            "{review}"
        );

        api.store.delete(&binding_key, None).await.unwrap();
        assert!(
            !authorize(&api, &user, &a).await,
            "revoked right after the delete"
        );
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
