//! Turns a request path into what it addresses: group, version, resource, namespace, name, subresource.

/// The parts of a resource request path (`/api/v1/namespaces/ns/pods/p/log`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What a path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api` or `/apis`.
    GroupList {
        legacy: bool,
    },
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`.
    GroupVersion {
        group: String,
        version: String,
    },
    Resource(ResourcePath),
}

const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Parses an API path; None when it is not under /api or /apis.
pub fn parse(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest): (String, &[&str]) = match segments.as_slice() {
        ["api"] => return Some(Target::GroupList { legacy: true }),
        ["apis"] => return Some(Target::GroupList { legacy: false }),
        ["api", rest @ ..] => (String::new(), rest),
        ["apis", g] => return Some(Target::Group(g.to_string())),
        ["apis", g, rest @ ..] => (g.to_string(), rest),
        _ => return None,
    };
    let (version, rest) = rest.split_first()?;
    if rest.is_empty() {
        return Some(Target::GroupVersion {
            group,
            version: version.to_string(),
        });
    }
    let mut p = ResourcePath {
        group,
        version: version.to_string(),
        ..Default::default()
    };
    let rest: &[&str] = match rest {
        // `namespaces/<ns>/status|finalize` address the Namespace itself (as upstream's RequestInfo).
        ["namespaces", ns, more @ ..]
            if !(more.is_empty()
                || more.len() == 1 && NAMESPACE_SUBRESOURCES.contains(&more[0])) =>
        {
            p.namespace = Some(ns.to_string());
            more
        }
        other => other,
    };
    match rest {
        [res] => p.resource = res.to_string(),
        [res, name] => {
            p.resource = res.to_string();
            p.name = Some(name.to_string());
        }
        [res, name, sub @ ..] => {
            p.resource = res.to_string();
            p.name = Some(name.to_string());
            // Proxy paths carry a tail; keep the first segment as the subresource.
            p.subresource = sub.first().map(|s| s.to_string());
        }
        _ => return None,
    }
    if p.resource.is_empty() || p.name.as_deref() == Some("") {
        return None;
    }
    Some(Target::Resource(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse(path) {
            Some(Target::Resource(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn core_and_group_paths() {
        let r = res("/api/v1/namespaces/default/pods/web/log");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.resource, "pods");
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("log"));
        let r = res("/apis/apps/v1/deployments");
        assert_eq!((r.group.as_str(), r.namespace), ("apps", None));
        // A namespace object itself.
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(r.resource, "namespaces");
        assert_eq!(r.name.as_deref(), Some("kube-system"));
        let r = res("/api/v1/namespaces/kube-system/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
        assert_eq!(
            parse("/apis/apps/v1"),
            Some(Target::GroupVersion {
                group: "apps".into(),
                version: "v1".into()
            })
        );
        assert_eq!(parse("/api"), Some(Target::GroupList { legacy: true }));
        assert_eq!(parse("/healthz"), None);
    }
}
