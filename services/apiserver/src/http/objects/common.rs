//! What the verbs share: objects and bodies as JSON in the request's
//! version, decoding with `fieldValidation` (unknown fields refused,
//! warned about or dropped), `dryRun`, the namespace and name a body must
//! match, replies with `Warning` headers, and the read of the current
//! object a read-change-write starts with.

use http::{HeaderValue, StatusCode};
use serde_json::Value;
use skiff::pb::api::v1::GetRequest;

use crate::actor::{Op, Reply as ActorReply};
use crate::error::ApiError;
use crate::http::{Ctx, Failure, JsonKind, Reply, Request, json};

/// Attempts of a patch or scale that keeps losing races with other
/// writers (each is read, changed and written again).
pub(super) const MAX_ATTEMPTS: usize = 8;
/// Unknown fields dropped from one body before it is refused (each is
/// found by a decode of the whole body).
const MAX_UNKNOWN_FIELDS: usize = 32;

pub(super) fn api<K: JsonKind>(e: ApiError) -> Failure {
    Failure::from_api(&e, K::KIND)
}

pub(super) fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(500, "InternalError", format!("encoding the reply: {e}"))
}

/// An object as sent to clients: apiVersion and kind set.
pub(super) fn encode<K: JsonKind>(mut obj: K) -> Result<Value, Failure> {
    obj.set_type_meta();
    skiff::json::to_value(&obj).map_err(internal)
}

/// An object (stored form) as the request's version shows it.
pub(super) fn shown(value: Value, req: &Request) -> Value {
    match req.view {
        Some(view) => view.shown(value),
        None => value,
    }
}

/// A body in the request's version, in the stored form.
pub(super) fn stored(value: Value, req: &Request) -> Value {
    match req.view {
        Some(view) => view.stored(value),
        None => value,
    }
}

/// An object decoded from a body in another version than the stored
/// one: its status, a conversion of the stored status, is not the
/// client's to write here (only through `status`), so the stored status
/// stays.
pub(super) fn from_view<K: JsonKind>(obj: &mut K, req: &Request) {
    if req.view.is_some() && req.target.subresource != "status" {
        obj.clear_status();
    }
}

/// The `apiVersion` the request addresses (of lists).
pub(super) fn api_version_of<K: JsonKind>(req: &Request) -> String {
    match req.view {
        Some(_) if req.target.group.is_empty() => req.target.version.clone(),
        Some(_) => format!("{}/{}", req.target.group, req.target.version),
        None => K::API_VERSION.to_string(),
    }
}

/// A field selector in the stored kind's field names.
pub(super) fn field_selector(req: &Request) -> String {
    let selector = req.query.str("fieldSelector");
    match req.view {
        Some(view) => view.stored_selector(selector),
        None => selector.to_string(),
    }
}

/// One object from an actor reply.
pub(super) fn object<K: JsonKind>(reply: Result<ActorReply<K>, ApiError>) -> Result<K, Failure> {
    match reply.map_err(api::<K>)? {
        ActorReply::Object(obj) => Ok(*obj),
        _ => Err(internal("the API actor answered with something else")),
    }
}

/// A reply of `value`, with `Warning` headers.
pub(super) fn reply(code: StatusCode, value: &Value, warnings: &[String]) -> Reply {
    let mut reply = json(code, value);
    for warning in warnings {
        let text = format!("299 - {}", serde_json::Value::String(warning.clone()));
        if let Ok(header) = HeaderValue::from_str(&text) {
            reply.headers_mut().append(http::header::WARNING, header);
        }
    }
    reply
}

/// `dryRun=All`, or not a dry run.
pub(super) fn dry_run(req: &Request) -> Result<bool, Failure> {
    let values = req.query.all("dryRun");
    match values.as_slice() {
        [] => Ok(false),
        all if all.iter().all(|v| *v == "All") => Ok(true),
        other => Err(Failure::bad_request(format!(
            "dryRun: Unsupported value: {:?}: supported values: \"All\"",
            other.iter().find(|v| **v != "All").unwrap_or(&"")
        ))),
    }
}

/// What happens to fields the kind does not have (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::http) enum Validation {
    /// Refused: 400.
    Strict,
    /// Dropped, with a `Warning` header (Kubernetes' default).
    Warn,
    /// Dropped.
    Ignore,
}

pub(in crate::http) fn validation(req: &Request) -> Result<Validation, Failure> {
    match req.query.get("fieldValidation") {
        None | Some("" | "Warn") => Ok(Validation::Warn),
        Some("Strict") => Ok(Validation::Strict),
        Some("Ignore") => Ok(Validation::Ignore),
        Some(other) => Err(Failure::bad_request(format!(
            "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
        ))),
    }
}

/// The request body as JSON (create, update, bind).
pub(in crate::http) fn body_json(req: &Request) -> Result<Value, Failure> {
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/json");
    let base = content_type.split(';').next().unwrap_or("").trim();
    if base == crate::http::protobuf::MEDIA_TYPE {
        return crate::http::protobuf::to_json(&req.body).map_err(Failure::bad_request);
    }
    if !(base == "application/json" || base.is_empty() || base == "*/*") {
        return Err(Failure::unsupported_media(
            content_type,
            &["application/json", crate::http::protobuf::MEDIA_TYPE],
        ));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| Failure::bad_request(format!("the request body is not JSON: {e}")))
}

/// Reads an object of kind `K`; unknown fields as `validation` says.
pub(super) fn decode<K: JsonKind>(
    value: Value,
    validation: Validation,
    warnings: &mut Vec<String>,
) -> Result<K, Failure> {
    let version = K::API_VERSION.rsplit('/').next().unwrap_or(K::API_VERSION);
    decode_as(value, K::KIND, version, validation, warnings)
}

/// Reads a message of `kind` in `version` (a kind, or a Binding).
pub(in crate::http) fn decode_as<M: serde::de::DeserializeOwned>(
    mut value: Value,
    kind: &str,
    version: &str,
    validation: Validation,
    warnings: &mut Vec<String>,
) -> Result<M, Failure> {
    let cannot = |why: &str| {
        Failure::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {why}"
        ))
    };
    skiff::json::quantities_as_strings(&mut value);
    // Each unknown field is found, reported or dropped, one at a time (a
    // few: each costs a decode).
    for _ in 0..MAX_UNKNOWN_FIELDS {
        let message = match skiff::json::read::<M>(&value) {
            Ok(obj) => return Ok(obj),
            Err(e) => e.to_string(),
        };
        let Some((parent, field)) = unknown_field(&message) else {
            return Err(cannot(&message));
        };
        let full = if parent.is_empty() {
            field.clone()
        } else {
            format!("{parent}.{field}")
        };
        match validation {
            Validation::Strict => {
                return Err(cannot(&format!(
                    "strict decoding error: unknown field {full:?}"
                )));
            }
            Validation::Warn => warnings.push(format!("unknown field {full:?}")),
            Validation::Ignore => {}
        }
        if !remove_field(&mut value, &parent, &field) {
            return Err(cannot(&message));
        }
    }
    Err(cannot("too many unknown fields"))
}

/// `spec.containers[0].imag: unknown field \`imag\`, expected ...` → the
/// parent's path and the field.
fn unknown_field(message: &str) -> Option<(String, String)> {
    let at = message.find("unknown field `")?;
    let rest = &message[at + "unknown field `".len()..];
    let field = rest.split('`').next()?.to_string();
    // The path ends with the field itself.
    let path = message[..at].trim_end_matches(": ").trim_end_matches(':');
    let parent = path
        .strip_suffix(field.as_str())
        .map_or(path, |p| p.trim_end_matches('.'));
    let parent = if parent == "." { "" } else { parent };
    Some((parent.to_string(), field))
}

/// Removes `field` from the object at `parent` (`spec.containers[0]`).
fn remove_field(value: &mut Value, parent: &str, field: &str) -> bool {
    let mut at = value;
    for segment in parent.split('.').filter(|s| !s.is_empty()) {
        let mut parts = segment.split('[');
        let key = parts.next().unwrap_or("");
        if !key.is_empty() {
            let Some(next) = at.get_mut(key) else {
                return false;
            };
            at = next;
        }
        for index in parts {
            let Some(i) = index.trim_end_matches(']').parse::<usize>().ok() else {
                return false;
            };
            let Some(next) = at.get_mut(i) else {
                return false;
            };
            at = next;
        }
    }
    at.as_object_mut()
        .is_some_and(|map| map.remove(field).is_some())
}

/// Puts the object in the request's namespace (it may repeat it, not name
/// another).
pub(super) fn place<K: JsonKind>(obj: &mut K, req: &Request) -> Result<(), Failure> {
    if !K::NAMESPACED {
        return Ok(());
    }
    let meta = obj.metadata_mut();
    if !meta.namespace.is_empty() && meta.namespace != req.target.namespace {
        return Err(Failure::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    meta.namespace = req.target.namespace.clone();
    Ok(())
}

/// The object must be the one the URL names.
pub(super) fn same_name<K: JsonKind>(obj: &mut K, req: &Request) -> Result<(), Failure> {
    let meta = obj.metadata_mut();
    if meta.name.is_empty() {
        meta.name = req.target.name.clone();
    }
    if meta.name != req.target.name {
        return Err(Failure::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            meta.name, req.target.name
        )));
    }
    Ok(())
}

pub(super) async fn read<K: JsonKind>(ctx: &Ctx, req: &Request) -> Result<K, Failure> {
    object(
        ctx.actor
            .call(Op::<K>::Get(GetRequest {
                namespace: req.target.namespace.clone(),
                name: req.target.name.clone(),
            }))
            .await,
    )
}

/// A read-change-write that lost every race it ran (409).
pub(super) fn kept_changing(t: &crate::http::Target, doing: &str) -> Failure {
    Failure::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {:?}: the object kept changing while it was {doing}; try again",
            t.resource, t.name
        ),
    )
}
