//! Discovery: which groups, versions and resources the API serves, in both
//! of the forms clients ask for (the aggregated v2 documents kubectl 1.35
//! asks for first, and the legacy per-group-version lists `kubectl drain`
//! and older clients read), `/version`, and the OpenAPI v3 documents
//! kubectl reads to learn that the server validates fields itself.
//!
//! Everything comes from [`super::all_kinds`]: a kind added to
//! `proto/kinds.tsv` is discovered with no other change.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::path::Route;
use super::{Failure, KUBERNETES_VERSION, KindEntry, Reply, json};

/// The verbs every kind serves.
const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Kinds in kubectl's `all` category (`kubectl get all`).
const ALL_CATEGORY: &[&str] = &[
    "pods",
    "replicationcontrollers",
    "services",
    "daemonsets",
    "deployments",
    "replicasets",
    "statefulsets",
    "horizontalpodautoscalers",
    "jobs",
    "cronjobs",
];

/// The aggregated discovery media type, as the reply's Content-Type.
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `/version`.
pub fn version() -> Value {
    let (major, minor) = KUBERNETES_VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0+skiff-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

/// The architecture as Go names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Serves a discovery or OpenAPI route.
///
/// # Errors
/// 404 for a group or version that is not served.
pub fn serve(route: &Route, headers: &HeaderMap) -> Result<Reply, Failure> {
    let aggregated = wants_aggregated(headers);
    match route {
        Route::CoreVersions if aggregated => Ok(aggregated_reply(&[""])),
        Route::CoreVersions => {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            Ok(json(
                StatusCode::OK,
                &json!({
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
                }),
            ))
        }
        Route::Groups if aggregated => {
            let named: Vec<&str> = groups().keys().copied().filter(|g| !g.is_empty()).collect();
            Ok(aggregated_reply(&named))
        }
        Route::Groups => {
            let groups: Vec<Value> = groups()
                .into_iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, versions)| api_group(g, &versions))
                .collect();
            Ok(json(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        Route::Group(group) => match groups().remove(group.as_str()) {
            Some(versions) if !group.is_empty() => {
                let mut doc = api_group(group, &versions);
                doc["kind"] = json!("APIGroup");
                doc["apiVersion"] = json!("v1");
                Ok(json(StatusCode::OK, &doc))
            }
            _ => Err(Failure::no_route()),
        },
        Route::Resources { group, version } => {
            let kinds = kinds_of(group, version);
            let mut resources: Vec<Value> =
                kinds.iter().flat_map(|k| legacy_resources(k)).collect();
            resources.extend(legacy_extras(group, version));
            if resources.is_empty() {
                return Err(Failure::no_route());
            }
            Ok(json(
                StatusCode::OK,
                &json!({
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": group_version(group, version),
                    "resources": resources,
                }),
            ))
        }
        Route::OpenApiV2 => {
            // JSON only: a client that takes only the protobuf form
            // (client-go) is told so, and does without, as when there is
            // no document.
            let accept = headers
                .get(http::header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .unwrap_or("");
            let json_ok = accept.is_empty()
                || accept.split(',').any(|choice| {
                    let media = choice.split(';').next().unwrap_or("").trim();
                    matches!(media, "application/json" | "*/*" | "application/*")
                });
            if !json_ok {
                return Err(Failure::new(
                    406,
                    "NotAcceptable",
                    format!("only application/json is served at /openapi/v2, not {accept:?}"),
                ));
            }
            Ok(json(StatusCode::OK, &openapi_v2()))
        }
        Route::OpenApiIndex => Ok(json(StatusCode::OK, &openapi_index())),
        Route::OpenApi { group, version } => {
            let kinds = kinds_of(group, version);
            if kinds.is_empty() {
                return Err(Failure::no_route());
            }
            Ok(json(
                StatusCode::OK,
                &openapi_document(group, version, &kinds),
            ))
        }
        _ => Err(Failure::no_route()),
    }
}

/// Whether the client asks for aggregated discovery v2 (the parameters in
/// any order).
fn wants_aggregated(headers: &HeaderMap) -> bool {
    let Some(accept) = headers
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
    else {
        return false;
    };
    accept.split(',').any(|choice| {
        let params: Vec<&str> = choice.split(';').map(str::trim).collect();
        params.first() == Some(&"application/json")
            && params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Resources that are no stored kind: the reviews and the metrics.
struct Extra {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespaced: bool,
    verbs: &'static [&'static str],
}

const EXTRAS: &[Extra] = &[
    Extra {
        group: "authorization.k8s.io",
        version: "v1",
        resource: "selfsubjectaccessreviews",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        verbs: &["create"],
    },
    Extra {
        group: "authorization.k8s.io",
        version: "v1",
        resource: "selfsubjectrulesreviews",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
        verbs: &["create"],
    },
    Extra {
        group: "authentication.k8s.io",
        version: "v1",
        resource: "selfsubjectreviews",
        kind: "SelfSubjectReview",
        namespaced: false,
        verbs: &["create"],
    },
    Extra {
        group: "metrics.k8s.io",
        version: "v1beta1",
        resource: "nodes",
        kind: "NodeMetrics",
        namespaced: false,
        verbs: &["get", "list"],
    },
    Extra {
        group: "metrics.k8s.io",
        version: "v1beta1",
        resource: "pods",
        kind: "PodMetrics",
        namespaced: true,
        verbs: &["get", "list"],
    },
];

/// Every group and its versions (the stored version first: preferred).
fn groups() -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let all = super::all_kinds()
        .map(|k| (k.group, k.version))
        .chain(EXTRAS.iter().map(|e| (e.group, e.version)));
    for (group, version) in all {
        let versions = groups.entry(group).or_default();
        if !versions.contains(&version) {
            versions.push(version);
        }
    }
    groups
}

/// The extras of a group version, as legacy `APIResource`s.
fn legacy_extras(group: &str, version: &str) -> Vec<Value> {
    EXTRAS
        .iter()
        .filter(|e| e.group == group && e.version == version)
        .map(|e| {
            json!({
                "name": e.resource, "singularName": e.kind.to_lowercase(),
                "namespaced": e.namespaced, "kind": e.kind, "verbs": e.verbs,
            })
        })
        .collect()
}

/// The extras of a group version, as aggregated resources.
fn aggregated_extras(group: &str, version: &str) -> Vec<Value> {
    EXTRAS
        .iter()
        .filter(|e| e.group == group && e.version == version)
        .map(|e| {
            json!({
                "resource": e.resource, "singularResource": e.kind.to_lowercase(),
                "scope": if e.namespaced { "Namespaced" } else { "Cluster" },
                "responseKind": {"group": e.group, "version": e.version, "kind": e.kind},
                "verbs": e.verbs,
            })
        })
        .collect()
}

fn kinds_of(group: &str, version: &str) -> Vec<&'static KindEntry> {
    super::all_kinds()
        .filter(|k| k.group == group && k.version == version)
        .collect()
}

fn api_group(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": group_version(group, v), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions[0],
    })
}

fn categories(kind: &KindEntry) -> Vec<&'static str> {
    if ALL_CATEGORY.contains(&kind.plural) {
        vec!["all"]
    } else {
        Vec::new()
    }
}

/// A kind's subresources: (name, group, version, kind, verbs).
fn subresources(
    kind: &KindEntry,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
)> {
    let mut subs = Vec::new();
    if kind.status {
        subs.push((
            "status",
            kind.group,
            kind.version,
            kind.kind,
            &["get", "patch", "update"][..],
        ));
    }
    if kind.scale {
        subs.push((
            "scale",
            "autoscaling",
            "v1",
            "Scale",
            &["get", "patch", "update"][..],
        ));
    }
    if kind.binding {
        subs.push(("binding", "", "v1", "Binding", &["create"][..]));
    }
    if kind.kind == "Pod" {
        subs.push(("eviction", "policy", "v1", "Eviction", &["create"][..]));
        subs.push(("log", "", "v1", "Pod", &["get"][..]));
        subs.push(("exec", "", "v1", "PodExecOptions", &["create", "get"][..]));
        subs.push((
            "attach",
            "",
            "v1",
            "PodAttachOptions",
            &["create", "get"][..],
        ));
        subs.push((
            "portforward",
            "",
            "v1",
            "PodPortForwardOptions",
            &["create", "get"][..],
        ));
    }
    if kind.kind == "ServiceAccount" {
        subs.push((
            "token",
            "authentication.k8s.io",
            "v1",
            "TokenRequest",
            &["create"][..],
        ));
    }
    subs
}

fn singular(kind: &KindEntry) -> String {
    kind.kind.to_lowercase()
}

/// A kind and its subresources as `APIResource`s of the legacy list.
fn legacy_resources(kind: &KindEntry) -> Vec<Value> {
    let mut out = vec![json!({
        "name": kind.plural,
        "singularName": singular(kind),
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": VERBS,
        "shortNames": kind.short_names,
        "categories": categories(kind),
        "storageVersionHash": "",
    })];
    for (sub, group, version, sub_kind, verbs) in subresources(kind) {
        let mut resource = json!({
            "name": format!("{}/{sub}", kind.plural),
            "singularName": "",
            "namespaced": kind.namespaced,
            "kind": sub_kind,
            "verbs": verbs,
        });
        if group != kind.group || version != kind.version {
            resource["group"] = json!(group);
            resource["version"] = json!(version);
        }
        out.push(resource);
    }
    out
}

/// The aggregated documents of `groups`.
fn aggregated_reply(groups: &[&str]) -> Reply {
    let all = self::groups();
    let items: Vec<Value> = groups
        .iter()
        .filter_map(|g| all.get(g).map(|versions| (*g, versions)))
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let mut resources: Vec<Value> = kinds_of(group, version)
                        .into_iter()
                        .map(|k| {
                            let subresources: Vec<Value> = subresources(k)
                                .into_iter()
                                .map(|(sub, g, v, kind, verbs)| {
                                    json!({
                                        "subresource": sub,
                                        "responseKind": {"group": g, "version": v, "kind": kind},
                                        "verbs": verbs,
                                    })
                                })
                                .collect();
                            json!({
                                "resource": k.plural,
                                "singularResource": singular(k),
                                "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                                "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                                "verbs": VERBS,
                                "shortNames": k.short_names,
                                "categories": categories(k),
                                "subresources": subresources,
                            })
                        })
                        .collect();
                    resources.extend(aggregated_extras(group, version));
                    json!({"version": version, "freshness": "Current", "resources": resources})
                })
                .collect();
            json!({"metadata": {"name": group}, "versions": versions})
        })
        .collect();
    let mut reply = json(
        StatusCode::OK,
        &json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": items,
        }),
    );
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(AGGREGATED),
    );
    reply
}

/// `/openapi/v3`: one document per group version.
fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for (group, versions) in groups() {
        for version in versions {
            let path = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", env!("CARGO_PKG_VERSION"))}),
            );
        }
    }
    json!({"paths": paths})
}

/// A group version's OpenAPI v3 document: each kind's schema (see
/// `openapi`), and its PATCH operation with its group-version-kind, the
/// `fieldValidation` parameter and the patch types it takes. That is what kubectl reads to learn that the server
/// validates fields itself (so it sends `fieldValidation=Strict` rather
/// than validating against a schema). Without strategic merge patch in
/// the list, kubectl computes its apply patches from its own compiled
/// types, which carry Kubernetes' merge keys.
fn openapi_document(group: &str, version: &str, kinds: &[&KindEntry]) -> Value {
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    for k in kinds {
        let item = if k.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", k.plural)
        } else {
            format!("{prefix}/{}/{{name}}", k.plural)
        };
        let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
        paths.insert(
            item,
            json!({
                "patch": {
                    "operationId": format!("patch{}", k.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [
                        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                    ],
                    "requestBody": {"content": {
                        "application/json-patch+json": {"schema": {"type": "object"}},
                        "application/merge-patch+json": {"schema": {"type": "object"}},
                    }},
                    "responses": {"200": {"description": "OK"}},
                },
            }),
        );
    }
    let (major, minor) = KUBERNETES_VERSION;
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{major}.{minor}.0")},
        "paths": paths,
        "components": {"schemas": super::openapi::components(&kinds
            .iter()
            .map(|k| (k.kind, k.group, k.version))
            .collect::<Vec<_>>())},
    })
}

/// `/openapi/v2`: every kind's schema as a Swagger 2.0 definition and its
/// PATCH operation, as in the v3 documents.
fn openapi_v2() -> Value {
    let kinds: Vec<&KindEntry> = super::all_kinds().collect();
    let mut paths = serde_json::Map::new();
    for k in &kinds {
        let prefix = if k.group.is_empty() {
            format!("/api/{}", k.version)
        } else {
            format!("/apis/{}/{}", k.group, k.version)
        };
        let item = if k.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", k.plural)
        } else {
            format!("{prefix}/{}/{{name}}", k.plural)
        };
        let query = |name: &str| json!({"name": name, "in": "query", "type": "string", "uniqueItems": true});
        let path =
            |name: &str| json!({"name": name, "in": "path", "required": true, "type": "string"});
        let mut in_path = vec![path("name")];
        if k.namespaced {
            in_path.push(path("namespace"));
        }
        // (Unique across groups: Event is served in two.)
        let group = k.group.replace(['.', '-'], "_");
        paths.insert(
            item,
            json!({
                "parameters": in_path,
                "patch": {
                    "operationId": format!("patch{group}{}{}", k.kind, k.version),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
                    "consumes": ["application/json-patch+json", "application/merge-patch+json"],
                    "produces": ["application/json"],
                    "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation")],
                    "responses": {"200": {"description": "OK"}},
                },
            }),
        );
    }
    let stored: Vec<(&str, &str, &str)> = super::KINDS
        .iter()
        .map(|k| (k.kind, k.group, k.version))
        .collect();
    let mut definitions = Value::Object(super::openapi::components(&stored));
    super::openapi::refer_to(&mut definitions, "#/definitions/");
    let (major, minor) = KUBERNETES_VERSION;
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v{major}.{minor}.0")},
        "paths": paths,
        "definitions": definitions,
    })
}

#[cfg(test)]
mod tests;
