//! What an HTTP request addresses: Kubernetes' URL layout, read the way
//! its API server's request-info factory reads it.

use std::collections::HashMap;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz` (and their sub-checks).
    Health,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: the named groups.
    Groups,
    /// `/apis/{group}`: one named group.
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`: the resources of one group
    /// version.
    Resources {
        /// "" for core.
        group: String,
        /// `v1`.
        version: String,
    },
    /// `/openapi/v2`: one Swagger 2.0 document of every kind.
    OpenApiV2,
    /// `/openapi/v3`: the index of the group versions' documents.
    OpenApiIndex,
    /// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`.
    OpenApi {
        /// "" for core.
        group: String,
        /// `v1`.
        version: String,
    },
    /// An object or a collection of objects.
    Object(Target),
    /// Nothing is served there.
    Unknown,
}

/// An object, or a collection of them, as a URL names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// "" for core.
    pub group: String,
    /// `v1`.
    pub version: String,
    /// "" for cluster-scoped objects, or every namespace.
    pub namespace: String,
    /// The plural: `pods`.
    pub resource: String,
    /// "" for a collection.
    pub name: String,
    /// `status`, `scale`, `binding`, ...; "" for the object itself.
    pub subresource: String,
}

/// The namespace subresources (after `namespaces/{name}/`): anything else
/// there is a namespaced resource.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// The first segment of every path [`route`] knows: a route starting with
/// another word must be added here too.
const FIRST_SEGMENTS: &[&str] = &[
    "version", "healthz", "livez", "readyz", "api", "apis", "openapi",
];

/// Reads a request path.
pub fn route(path: &str) -> Route {
    // Every gRPC call passes here (`is_api_path`): its path, which starts
    // with its service's name, is told apart without the parse.
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if !FIRST_SEGMENTS.contains(&first) {
        return Route::Unknown;
    }
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        ["version"] => Route::Version,
        [check, ..] if ["healthz", "livez", "readyz"].contains(check) => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group((*group).to_string()),
        ["api", version] => Route::Resources {
            group: String::new(),
            version: (*version).to_string(),
        },
        ["apis", group, version] => Route::Resources {
            group: (*group).to_string(),
            version: (*version).to_string(),
        },
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiIndex,
        ["openapi", "v3", "api", version] => Route::OpenApi {
            group: String::new(),
            version: (*version).to_string(),
        },
        ["openapi", "v3", "apis", group, version] => Route::OpenApi {
            group: (*group).to_string(),
            version: (*version).to_string(),
        },
        ["api", version, rest @ ..] => object("", version, rest),
        ["apis", group, version, rest @ ..] => object(group, version, rest),
        _ => Route::Unknown,
    }
}

fn object(group: &str, version: &str, mut rest: &[&str]) -> Route {
    let mut target = Target {
        group: group.to_string(),
        version: version.to_string(),
        ..Default::default()
    };
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        target.namespace = rest[1].to_string();
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    match rest {
        [resource] => target.resource = (*resource).to_string(),
        [resource, name] => {
            target.resource = (*resource).to_string();
            target.name = (*name).to_string();
        }
        [resource, name, sub] => {
            target.resource = (*resource).to_string();
            target.name = (*name).to_string();
            target.subresource = (*sub).to_string();
        }
        _ => return Route::Unknown,
    }
    if target.resource == "namespaces" {
        // `namespaces/{name}[/status]` is the namespace object itself.
        target.namespace.clear();
    }
    Route::Object(target)
}

/// A request's query parameters (the last value of a repeated one wins,
/// but [`Query::all`] keeps them all).
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Reads `a=1&b=x%20y`.
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            query
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or "".
    pub fn str(&self, key: &str) -> &str {
        self.get(key).unwrap_or("")
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean as Kubernetes reads one: `true` or `1` (Go's
    /// `strconv.ParseBool` also takes `t`, `T`, `TRUE`, `True`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    /// An integer parameter; a malformed one is the caller's mistake.
    ///
    /// # Errors
    /// The parameter and what it should be.
    pub fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{key}: Invalid value: {v:?}: must be an integer")),
        }
    }

    /// The parameters as a map (the last value of each).
    pub fn map(&self) -> HashMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// `apps/v1` → (`apps`, `v1`); `v1` → ("", `v1`).
pub const fn split_version(api_version: &'static str) -> (&'static str, &'static str) {
    let bytes = api_version.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'/' {
            let (group, version) = bytes.split_at(i);
            let version = version.split_at(1).1;
            return match (std::str::from_utf8(group), std::str::from_utf8(version)) {
                (Ok(g), Ok(v)) => (g, v),
                _ => ("", api_version),
            };
        }
        i += 1;
    }
    ("", api_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(group: &str, ns: &str, resource: &str, name: &str, sub: &str) -> Route {
        Route::Object(Target {
            group: group.into(),
            version: "v1".into(),
            namespace: ns.into(),
            resource: resource.into(),
            name: name.into(),
            subresource: sub.into(),
        })
    }

    #[test]
    fn urls_name_objects_as_kubernetes_reads_them() {
        assert_eq!(route("/api/v1/pods"), target("", "", "pods", "", ""));
        assert_eq!(
            route("/api/v1/namespaces/default/pods"),
            target("", "default", "pods", "", "")
        );
        assert_eq!(
            route("/api/v1/namespaces/default/pods/web/status"),
            target("", "default", "pods", "web", "status")
        );
        assert_eq!(
            route("/apis/apps/v1/namespaces/prod/deployments/web/scale"),
            target("apps", "prod", "deployments", "web", "scale")
        );
        assert_eq!(route("/api/v1/nodes/n1"), target("", "", "nodes", "n1", ""));
        // The namespace object itself, and its subresources.
        assert_eq!(
            route("/api/v1/namespaces/prod"),
            target("", "", "namespaces", "prod", "")
        );
        assert_eq!(
            route("/api/v1/namespaces/prod/status"),
            target("", "", "namespaces", "prod", "status")
        );
        assert_eq!(
            route("/api/v1/namespaces"),
            target("", "", "namespaces", "", "")
        );
        assert_eq!(route("/api/v1/namespaces/a/pods/b/c/d"), Route::Unknown);
    }

    #[test]
    fn discovery_and_health_urls_are_known() {
        assert_eq!(route("/version"), Route::Version);
        assert_eq!(route("/readyz"), Route::Health);
        assert_eq!(route("/livez/ping"), Route::Health);
        assert_eq!(route("/api"), Route::CoreVersions);
        assert_eq!(route("/apis/"), Route::Groups);
        assert_eq!(route("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(
            route("/apis/apps/v1"),
            Route::Resources {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        assert_eq!(
            route("/openapi/v3/apis/apps/v1"),
            Route::OpenApi {
                group: "apps".into(),
                version: "v1".into()
            }
        );
        assert_eq!(route("/metrics/x"), Route::Unknown);
    }

    /// Which paths are the HTTP API's and which a gRPC method's (checked
    /// as one), with the first-word shortcut in front of the parse.
    #[test]
    fn api_paths_are_told_from_grpc_methods() {
        for (path, api) in [
            ("/version", true),
            ("/healthz", true),
            ("/healthz/etcd", true),
            ("/livez/ping", true),
            ("/readyz", true),
            ("//api//v1/pods", true),
            ("/api", true),
            ("/apis/", true),
            ("/apis/apps/v1/namespaces/a/deployments/b/scale", true),
            ("/openapi/v2", true),
            ("/openapi/v3/apis/apps/v1", true),
            ("/openapi/v4", false),
            ("/api/v1/namespaces/a/pods/b/c/d", false),
            ("/skiff.core.v1.Pods/Create", false),
            ("/grpc.health.v1.Health/Check", false),
            ("/metrics", false),
            ("/", false),
            ("", false),
        ] {
            assert_eq!(super::super::is_api_path(path), api, "{path}");
        }
    }

    #[test]
    fn queries_decode_and_read_flags_like_go() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a,b)&watch=1&limit=500&watch=true",
        ));
        assert_eq!(q.str("labelSelector"), "app=web,tier in (a,b)");
        assert!(q.flag("watch"));
        assert_eq!(q.int("limit"), Ok(Some(500)));
        assert!(q.int("nope").unwrap().is_none());
        assert!(Query::parse(Some("limit=x")).int("limit").is_err());
        assert!(!Query::parse(Some("watch=false")).flag("watch"));
    }
}
