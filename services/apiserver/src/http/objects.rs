//! Every kind's REST verbs over the API actors: get, list, watch, create,
//! update, patch, delete, deletecollection, and the `status`, `scale` and
//! `binding` subresources. Bodies are Kubernetes' JSON
//! ([`skiff::json`]); what a write means is the registry's, as for gRPC.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, Method, StatusCode};
use prost::Message as _;
use serde_json::{Value, json};
use skiff::pb::api::v1::{
    DeleteRequest, EventType, GetRequest, ListRequest, Preconditions, WatchRequest,
};

use super::patch::{self, PatchType};
use super::table::{self, Include};
use super::{Ctx, Failure, JsonKind, Reply, Request, json};
use crate::actor::{Op, Reply as ActorReply};
use crate::error::ApiError;

/// Attempts of a patch or scale that keeps losing races with other
/// writers (each is read, changed and written again).
const MAX_ATTEMPTS: usize = 8;
/// Unknown fields dropped from one body before it is refused (each is
/// found by a decode of the whole body).
const MAX_UNKNOWN_FIELDS: usize = 32;

/// Serves one request to kind `K`.
///
/// # Errors
/// What to answer instead, as a Status.
pub async fn serve<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    let item = !t.name.is_empty();
    if (!K::NAMESPACED && !t.namespace.is_empty())
        || (K::NAMESPACED && item && t.namespace.is_empty())
    {
        return Err(Failure::no_route());
    }
    let entry = super::kind_at(&t.group, &t.version, &t.resource);
    let has = |sub: &str| {
        entry.is_some_and(|e| match sub {
            "status" => e.status,
            "scale" => e.scale,
            "binding" => e.binding,
            _ => false,
        })
    };
    let sub = t.subresource.as_str();
    match (&req.method, item, sub) {
        (&Method::GET, false, "") if req.query.flag("watch") => watch::<K>(ctx, req).await,
        (&Method::GET, false, "") => list::<K>(ctx, req).await,
        (&Method::GET, true, "") => get::<K>(ctx, req).await,
        (&Method::GET, true, "status") if has("status") => get::<K>(ctx, req).await,
        (&Method::POST, false, "") => create::<K>(ctx, req).await,
        (&Method::PUT, true, "") => update::<K>(ctx, req).await,
        (&Method::PUT, true, "status") if has("status") => update::<K>(ctx, req).await,
        (&Method::PATCH, true, "") => patch::<K>(ctx, req).await,
        (&Method::PATCH, true, "status") if has("status") => patch::<K>(ctx, req).await,
        (&Method::DELETE, true, "") => delete::<K>(ctx, req).await,
        (&Method::DELETE, false, "") => delete_collection::<K>(ctx, req).await,
        (&Method::POST, true, "binding") if has("binding") => bind::<K>(ctx, req).await,
        (&Method::GET | &Method::PUT | &Method::PATCH, true, "scale") if has("scale") => {
            scale::<K>(ctx, req).await
        }
        (method, _, "") => Err(Failure::not_allowed(
            &method.to_string().to_lowercase(),
            &t.resource,
        )),
        _ => Err(Failure::no_route()),
    }
}

// === reading and writing JSON ===

fn api<K: JsonKind>(e: ApiError) -> Failure {
    Failure::from_api(&e, K::KIND)
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(500, "InternalError", format!("encoding the reply: {e}"))
}

/// An object as sent to clients: apiVersion and kind set.
fn encode<K: JsonKind>(mut obj: K) -> Result<Value, Failure> {
    obj.set_type_meta();
    skiff::json::to_value(&obj).map_err(internal)
}

/// An object (stored form) as the request's version shows it.
fn shown(value: Value, req: &Request) -> Value {
    match req.view {
        Some(view) => view.shown(value),
        None => value,
    }
}

/// A body in the request's version, in the stored form.
fn stored(value: Value, req: &Request) -> Value {
    match req.view {
        Some(view) => view.stored(value),
        None => value,
    }
}

/// An object decoded from a body in another version than the stored
/// one: its status, a conversion of the stored status, is not the
/// client's to write here (only through `status`), so the stored status
/// stays.
fn from_view<K: JsonKind>(obj: &mut K, req: &Request) {
    if req.view.is_some() && req.target.subresource != "status" {
        obj.clear_status();
    }
}

/// The `apiVersion` the request addresses (of lists).
fn api_version_of<K: JsonKind>(req: &Request) -> String {
    match req.view {
        Some(_) if req.target.group.is_empty() => req.target.version.clone(),
        Some(_) => format!("{}/{}", req.target.group, req.target.version),
        None => K::API_VERSION.to_string(),
    }
}

/// A field selector in the stored kind's field names.
fn field_selector(req: &Request) -> String {
    let selector = req.query.str("fieldSelector");
    match req.view {
        Some(view) => view.stored_selector(selector),
        None => selector.to_string(),
    }
}

/// One object from an actor reply.
fn object<K: JsonKind>(reply: Result<ActorReply<K>, ApiError>) -> Result<K, Failure> {
    match reply.map_err(api::<K>)? {
        ActorReply::Object(obj) => Ok(obj),
        _ => Err(internal("the API actor answered with something else")),
    }
}

/// A reply of `value`, with `Warning` headers.
fn reply(code: StatusCode, value: &Value, warnings: &[String]) -> Reply {
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
fn dry_run(req: &Request) -> Result<bool, Failure> {
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
pub(super) enum Validation {
    /// Refused: 400.
    Strict,
    /// Dropped, with a `Warning` header (Kubernetes' default).
    Warn,
    /// Dropped.
    Ignore,
}

pub(super) fn validation(req: &Request) -> Result<Validation, Failure> {
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
pub(super) fn body_json(req: &Request) -> Result<Value, Failure> {
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/json");
    let base = content_type.split(';').next().unwrap_or("").trim();
    if base == super::protobuf::MEDIA_TYPE {
        return super::protobuf::to_json(&req.body).map_err(Failure::bad_request);
    }
    if !(base == "application/json" || base.is_empty() || base == "*/*") {
        return Err(Failure::unsupported_media(
            content_type,
            &["application/json", super::protobuf::MEDIA_TYPE],
        ));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| Failure::bad_request(format!("the request body is not JSON: {e}")))
}

/// Reads an object of kind `K`; unknown fields as `validation` says.
fn decode<K: JsonKind>(
    value: Value,
    validation: Validation,
    warnings: &mut Vec<String>,
) -> Result<K, Failure> {
    let version = K::API_VERSION.rsplit('/').next().unwrap_or(K::API_VERSION);
    decode_as(value, K::KIND, version, validation, warnings)
}

/// Reads a message of `kind` in `version` (a kind, or a Binding).
pub(super) fn decode_as<M: serde::de::DeserializeOwned>(
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
            Err(message) => message,
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
fn place<K: JsonKind>(obj: &mut K, req: &Request) -> Result<(), Failure> {
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
fn same_name<K: JsonKind>(obj: &mut K, req: &Request) -> Result<(), Failure> {
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

// === the verbs ===

async fn get<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    ctx.authorize("get", t, &t.name, None).await?;
    let obj: K = object(
        ctx.actor
            .call(Op::<K>::Get(GetRequest {
                namespace: t.namespace.clone(),
                name: t.name.clone(),
            }))
            .await,
    )?;
    let rv = obj.resource_version().to_string();
    let value = encode(obj)?;
    // (A Table's cells are read from the stored form, whatever the version.)
    if table::wanted(&req.headers) {
        let include = Include::parse(req.query.get("includeObject"));
        return Ok(json(
            StatusCode::OK,
            &table::of(K::KIND, &[value], &rv, include),
        ));
    }
    Ok(json(StatusCode::OK, &shown(value, &req)))
}

fn list_request(req: &Request) -> Result<ListRequest, Failure> {
    Ok(ListRequest {
        namespace: req.target.namespace.clone(),
        label_selector: req.query.str("labelSelector").to_string(),
        field_selector: field_selector(req),
        limit: req
            .query
            .int("limit")
            .map_err(Failure::bad_request)?
            .unwrap_or(0),
        r#continue: req.query.str("continue").to_string(),
    })
}

/// One page of objects, and the list's metadata.
async fn list_page<K: JsonKind>(
    ctx: &Ctx,
    request: ListRequest,
) -> Result<(skiff::pb::meta::v1::ListMeta, Vec<K>), Failure> {
    match ctx
        .actor
        .call(Op::<K>::List(request))
        .await
        .map_err(api::<K>)?
    {
        ActorReply::List(list) => Ok(K::list_parts(list)),
        _ => Err(internal("the API actor answered with something else")),
    }
}

async fn list<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    ctx.authorize("list", t, "", None).await?;
    let (meta, items) = list_page::<K>(&ctx, list_request(&req)?).await?;
    if table::wanted(&req.headers) {
        let include = Include::parse(req.query.get("includeObject"));
        return Ok(json(
            StatusCode::OK,
            &table::of_all(K::KIND, items, encode, &meta.resource_version, include)?,
        ));
    }
    let mut metadata = json!({"resourceVersion": meta.resource_version});
    if !meta.r#continue.is_empty() {
        metadata["continue"] = json!(meta.r#continue);
    }
    if let Some(left) = meta.remaining_item_count {
        metadata["remainingItemCount"] = json!(left);
    }
    // Written item by item: a long list is never all in memory twice
    // (as objects and as a JSON tree), only as objects and as the text.
    let head = json!({
        "kind": format!("{}List", K::KIND),
        "apiVersion": api_version_of::<K>(&req),
        "metadata": metadata,
    });
    let mut out = serde_json::to_vec(&head).map_err(internal)?;
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let value = shown(skiff::json::to_value(&item).map_err(internal)?, &req);
        serde_json::to_writer(&mut out, &value).map_err(internal)?;
    }
    out.extend_from_slice(b"]}");
    Ok(super::json_bytes(StatusCode::OK, out))
}

/// One watch event as a line: `{"type":"ADDED","object":{...}}\n`, the
/// object a one-row Table when the client asked for Tables.
fn event_line(kind: &str, object: &Value, table: Option<Include>) -> Bytes {
    let object = match table {
        Some(include) if kind != "BOOKMARK" && kind != "ERROR" => {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let kind_name = object.get("kind").and_then(Value::as_str).unwrap_or("");
            table::of(kind_name, std::slice::from_ref(object), &rv, include)
        }
        _ => object.clone(),
    };
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    Bytes::from(line)
}

fn error_line(failure: &Failure) -> Bytes {
    event_line("ERROR", &failure.to_json(), None)
}

fn event_name(kind: EventType) -> &'static str {
    match kind {
        EventType::Added => "ADDED",
        EventType::Modified => "MODIFIED",
        EventType::Deleted => "DELETED",
        EventType::Bookmark => "BOOKMARK",
        EventType::Unspecified => "ERROR",
    }
}

/// A stream of events, kept open until the client goes, the watch's
/// `timeoutSeconds` pass or the registry ends it. With
/// `sendInitialEvents=true` (client-go's WatchList), every current object
/// comes first as ADDED, then a BOOKMARK marked
/// `k8s.io/initial-events-end`, then the changes after the list.
async fn watch<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    ctx.authorize("watch", t, "", None).await?;
    let table = table::wanted(&req.headers).then(|| Include::parse(req.query.get("includeObject")));
    let timeout = req
        .query
        .int("timeoutSeconds")
        .map_err(Failure::bad_request)?
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64));
    let mut from = req.query.str("resourceVersion").to_string();
    let mut initial = Vec::new();
    if req.query.flag("sendInitialEvents") {
        let mut page = list_request(&req)?;
        page.limit = 500;
        loop {
            let (meta, items) = list_page::<K>(&ctx, page.clone()).await?;
            for item in items {
                let value = encode(item)?;
                let value = if table.is_some() {
                    value
                } else {
                    shown(value, &req)
                };
                initial.push(event_line("ADDED", &value, table));
            }
            from = meta.resource_version.clone();
            if meta.r#continue.is_empty() {
                break;
            }
            page.r#continue = meta.r#continue;
        }
        let mut end = K::default();
        end.set_type_meta();
        let meta = end.metadata_mut();
        meta.resource_version = from.clone();
        meta.annotations
            .insert("k8s.io/initial-events-end".into(), "true".into());
        initial.push(event_line("BOOKMARK", &shown(encode(end)?, &req), None));
    }
    let request = WatchRequest {
        namespace: t.namespace.clone(),
        label_selector: req.query.str("labelSelector").to_string(),
        field_selector: field_selector(&req),
        resource_version: from,
        allow_bookmarks: req.query.flag("allowWatchBookmarks"),
    };
    let changes = match ctx.actor.call(Op::<K>::Watch(request)).await {
        Ok(ActorReply::Watch(stream)) => stream,
        Ok(_) => return Err(internal("the API actor answered with something else")),
        // A version no longer kept: 200 and an ERROR event, as Kubernetes.
        Err(e @ ApiError::Expired(_)) => {
            return Ok(stream_reply(futures::stream::iter([error_line(
                &Failure::from_api(&e, K::KIND),
            )])));
        }
        Err(e) => return Err(api::<K>(e)),
    };
    let view = req.view.filter(|_| table.is_none());
    let lines = changes
        .map(move |event| match event {
            Ok(event) => {
                let (kind, obj) = K::event_parts(event);
                let show = |value: Value| match view {
                    Some(view) => view.shown(value),
                    None => value,
                };
                match obj.map(|o| encode(o).map(show)) {
                    Some(Ok(value)) => (false, event_line(event_name(kind), &value, table)),
                    Some(Err(f)) => (true, error_line(&f)),
                    None => (true, error_line(&internal("an event without its object"))),
                }
            }
            Err(status) => (true, error_line(&Failure::from_grpc(&status))),
        })
        .scan(false, |ended, (last, line)| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = last;
            futures::future::ready(Some(line))
        });
    let events = futures::stream::iter(initial).chain(lines);
    Ok(match timeout {
        Some(after) => stream_reply(events.take_until(tokio::time::sleep(after))),
        None => stream_reply(events),
    })
}

fn stream_reply(lines: impl futures::Stream<Item = Bytes> + Send + 'static) -> Reply {
    super::streamed("application/json", lines)
}

async fn create<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    if K::NAMESPACED && req.target.namespace.is_empty() {
        return Err(Failure::no_route());
    }
    let dry = dry_run(&req)?;
    let validation = validation(&req)?;
    // (Authorized once the object is read: the node rules need its name.
    // The read is bounded: MAX_BODY, MAX_UNKNOWN_FIELDS.)
    let mut warnings = Vec::new();
    let mut obj: K = decode(stored(body_json(&req)?, &req), validation, &mut warnings)?;
    from_view(&mut obj, &req);
    place(&mut obj, &req)?;
    let name = obj.name().to_string();
    ctx.authorize(
        "create",
        &req.target,
        &name,
        Some(obj.encode_to_vec().into()),
    )
    .await?;
    let op = if dry {
        Op::CreateDryRun(obj)
    } else {
        Op::Create(obj)
    };
    let created = object(ctx.write(op).await)?;
    Ok(reply(
        StatusCode::CREATED,
        &shown(encode(created)?, &req),
        &warnings,
    ))
}

async fn update<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let dry = dry_run(&req)?;
    let validation = validation(&req)?;
    let t = &req.target;
    ctx.authorize("update", t, &t.name, None).await?;
    let mut warnings = Vec::new();
    let mut obj: K = decode(stored(body_json(&req)?, &req), validation, &mut warnings)?;
    from_view(&mut obj, &req);
    place(&mut obj, &req)?;
    same_name(&mut obj, &req)?;
    ctx.authorize("update", t, &t.name, Some(obj.encode_to_vec().into()))
        .await?;
    let updated = object(ctx.write(write_op(t, dry, obj)?).await)?;
    Ok(reply(
        StatusCode::OK,
        &shown(encode(updated)?, &req),
        &warnings,
    ))
}

/// The write an update or patch of `t` makes: of the status for the
/// `status` subresource (never a dry run: gRPC's UpdateStatus has none),
/// else of the object.
fn write_op<K: JsonKind>(t: &super::Target, dry: bool, obj: K) -> Result<Op<K>, Failure> {
    Ok(match (t.subresource.as_str(), dry) {
        ("status", true) => {
            return Err(Failure::bad_request(
                "dryRun: a dry run of a status update is not supported",
            ));
        }
        ("status", false) => Op::UpdateStatus(obj),
        (_, true) => Op::UpdateDryRun(obj),
        (_, false) => Op::Update(obj),
    })
}

async fn read<K: JsonKind>(ctx: &Ctx, req: &Request) -> Result<K, Failure> {
    object(
        ctx.actor
            .call(Op::<K>::Get(GetRequest {
                namespace: req.target.namespace.clone(),
                name: req.target.name.clone(),
            }))
            .await,
    )
}

async fn patch<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("");
    let kind = match PatchType::of(content_type) {
        None => {
            return Err(Failure::unsupported_media(content_type, patch::MEDIA_TYPES));
        }
        Some(PatchType::Apply) if req.target.subresource.is_empty() => {
            return server_side_apply::<K>(ctx, req).await;
        }
        Some(PatchType::Apply) => {
            return Err(Failure::bad_request(
                "server-side apply of a subresource is not supported by Skiff yet",
            ));
        }
        Some(kind) => kind,
    };
    let dry = dry_run(&req)?;
    let validation = validation(&req)?;
    let t = &req.target;
    ctx.authorize("patch", t, &t.name, None).await?;
    for _ in 0..MAX_ATTEMPTS {
        let mut warnings = Vec::new();
        let current: K = read(&ctx, &req).await?;
        let current_rv = current.resource_version().to_string();
        // Patched in the request's version.
        let patched = patch::apply(kind, &shown(encode(current)?, &req), &req.body)
            .map_err(|e| Failure::new(422, "Invalid", e))?;
        let mut obj: K = decode(stored(patched, &req), validation, &mut warnings)?;
        from_view(&mut obj, &req);
        place(&mut obj, &req)?;
        same_name(&mut obj, &req)?;
        // A patch that names a resourceVersion is conditional on it; one
        // that does not is applied to whatever is current, again if
        // another writer came first.
        let pinned = obj.resource_version() != current_rv;
        ctx.no_escalation(t, &t.name, obj.encode_to_vec().into())
            .await?;
        match ctx.write(write_op(t, dry, obj)?).await {
            Err(ApiError::Conflict { .. }) if !pinned => continue,
            result => {
                let updated = object(result)?;
                return Ok(reply(
                    StatusCode::OK,
                    &shown(encode(updated)?, &req),
                    &warnings,
                ));
            }
        }
    }
    Err(kept_changing(t, "patched"))
}

/// A read-change-write that lost every race it ran (409).
fn kept_changing(t: &super::Target, doing: &str) -> Failure {
    Failure::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} {:?}: the object kept changing while it was {doing}; try again",
            t.resource, t.name
        ),
    )
}

/// Server-side apply (`application/apply-patch+yaml`): the body is the
/// manager's whole intent for the object, merged in by [`crate::apply`];
/// a missing object is created.
async fn server_side_apply<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    let manager = req.query.str("fieldManager").to_string();
    if manager.is_empty() {
        return Err(Failure::bad_request(
            "fieldManager: Required value: is required for apply requests",
        ));
    }
    let force = req.query.flag("force");
    let dry = dry_run(&req)?;
    let validation = validation(&req)?;
    let config: Value = serde_yaml::from_slice(&req.body).map_err(|e| {
        Failure::bad_request(format!("the applied configuration does not parse: {e}"))
    })?;
    let (api_version, kind) = (
        config
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or(""),
        config.get("kind").and_then(Value::as_str).unwrap_or(""),
    );
    let wanted = api_version_of::<K>(&req);
    if api_version != wanted || kind != K::KIND {
        return Err(Failure::bad_request(format!(
            "the applied configuration is a {kind} of {api_version:?}, not a {} of {wanted:?}",
            K::KIND,
        )));
    }
    // Applied in the stored version (and its field owners recorded so).
    let config = stored(config, &req);
    ctx.authorize("patch", t, &t.name, None).await?;
    let now = skiff::time::rfc3339(skiff::time::now_seconds().seconds);
    for _ in 0..MAX_ATTEMPTS {
        let current = match read::<K>(&ctx, &req).await {
            Ok(current) => Some(current),
            Err(f) if f.code == 404 => None,
            Err(f) => return Err(f),
        };
        let current_rv = current
            .as_ref()
            .map(|c| c.resource_version().to_string())
            .unwrap_or_default();
        let live = current.map(encode).transpose()?;
        let merged = crate::apply::apply(
            live.as_ref(),
            &config,
            &manager,
            K::API_VERSION,
            force,
            &now,
        )
        .map_err(|e| conflict(&e, t))?;
        let mut warnings = Vec::new();
        let mut obj: K = decode(merged, validation, &mut warnings)?;
        from_view(&mut obj, &req);
        place(&mut obj, &req)?;
        same_name(&mut obj, &req)?;
        let encoded = obj.encode_to_vec();
        if live.is_none() {
            // Applying what does not exist creates it.
            ctx.authorize("create", t, &t.name, Some(encoded.into()))
                .await?;
            obj.metadata_mut().resource_version.clear();
            let op = if dry {
                Op::CreateDryRun(obj)
            } else {
                Op::Create(obj)
            };
            match ctx.actor.call(op).await {
                Err(ApiError::AlreadyExists { .. }) => continue,
                result => {
                    let created = object(result)?;
                    return Ok(reply(
                        StatusCode::CREATED,
                        &shown(encode(created)?, &req),
                        &warnings,
                    ));
                }
            }
        }
        let pinned = config
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|rv| !rv.is_empty() && rv != current_rv);
        ctx.no_escalation(t, &t.name, encoded.into()).await?;
        match ctx.actor.call(write_op(t, dry, obj)?).await {
            Err(ApiError::Conflict { .. }) if !pinned => continue,
            result => {
                let updated = object(result)?;
                return Ok(reply(
                    StatusCode::OK,
                    &shown(encode(updated)?, &req),
                    &warnings,
                ));
            }
        }
    }
    Err(kept_changing(t, "applied"))
}

/// Apply's conflicts as Kubernetes answers them: 409, one cause per field.
fn conflict(e: &crate::apply::Error, t: &super::Target) -> Failure {
    let crate::apply::Error::Conflicts(conflicts) = e;
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(manager, field)| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {manager:?}"),
                "field": field,
            })
        })
        .collect();
    let mut failure = Failure::new(409, "Conflict", e.message());
    failure.details = Some(json!({"name": t.name, "kind": t.resource, "causes": causes}));
    failure
}

/// Kubernetes' DeleteOptions, from the body (JSON or protobuf: its fields
/// by their JSON or proto names) and the query; and whether they ask for
/// a dry run.
fn delete_options(req: &Request) -> Result<(DeleteRequest, bool), Failure> {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        body_json(req).map_err(|f| {
            Failure::bad_request(format!("the DeleteOptions do not parse: {}", f.message))
        })?
    };
    delete_options_in(&body, req)
}

/// DeleteOptions as JSON (`body`, or an Eviction's `deleteOptions`), and
/// the request's query.
pub(super) fn delete_options_in(
    body: &Value,
    req: &Request,
) -> Result<(DeleteRequest, bool), Failure> {
    let field = |camel: &str, snake: &str| super::field(body, camel, snake).cloned();
    let grace = match field("gracePeriodSeconds", "grace_period_seconds").and_then(|g| g.as_i64()) {
        Some(g) => Some(g),
        None => req
            .query
            .int("gracePeriodSeconds")
            .map_err(Failure::bad_request)?,
    };
    let orphan = field("orphanDependents", "orphan_dependents").and_then(|o| o.as_bool())
        == Some(true)
        || req.query.flag("orphanDependents");
    let propagation = field("propagationPolicy", "propagation_policy")
        .and_then(|p| p.as_str().map(str::to_string))
        .or(req.query.get("propagationPolicy").map(str::to_string))
        .unwrap_or_else(|| {
            if orphan {
                "Orphan".into()
            } else {
                String::new()
            }
        });
    let preconditions = field("preconditions", "preconditions").map(|p| {
        let text = |camel: &str, snake: &str| {
            p.get(camel)
                .or_else(|| p.get(snake))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Preconditions {
            uid: text("uid", "uid"),
            resource_version: text("resourceVersion", "resource_version"),
        }
    });
    let dry = dry_run(req)?
        || field("dryRun", "dry_run")
            .and_then(|d| d.as_array().cloned())
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    Ok((
        DeleteRequest {
            namespace: req.target.namespace.clone(),
            name: req.target.name.clone(),
            propagation_policy: propagation,
            preconditions,
            grace_period_seconds: grace,
        },
        dry,
    ))
}

/// Kubernetes' answer to a delete that left nothing behind.
fn deleted(name: &str, resource: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": resource, "uid": uid},
    })
}

async fn delete<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    let (options, dry) = delete_options(&req)?;
    ctx.authorize("delete", t, &t.name, None).await?;
    if dry {
        // Nothing changes: the answer is the object as it is.
        let current: K = read(&ctx, &req).await?;
        return Ok(json(StatusCode::OK, &shown(encode(current)?, &req)));
    }
    let gone: K = object(ctx.actor.call(Op::<K>::Delete(options)).await)?;
    let meta = gone.metadata().cloned().unwrap_or_default();
    if meta.deletion_timestamp.is_some() {
        // Still there (finalizers, a grace period): the object says when.
        return Ok(json(StatusCode::OK, &shown(encode(gone)?, &req)));
    }
    Ok(json(
        StatusCode::OK,
        &deleted(&meta.name, &t.resource, &meta.uid),
    ))
}

async fn delete_collection<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    if dry_run(&req)? {
        return Err(Failure::bad_request(
            "dryRun: a dry run of deletecollection is not supported",
        ));
    }
    if K::NAMESPACED && t.namespace.is_empty() {
        return Err(Failure::not_allowed("deletecollection", &t.resource));
    }
    ctx.authorize("deletecollection", t, "", None).await?;
    let (options, _) = delete_options(&req)?;
    let mut page = list_request(&req)?;
    page.limit = 0;
    let (_, items) = list_page::<K>(&ctx, page).await?;
    for item in items {
        let request = DeleteRequest {
            namespace: item.namespace().to_string(),
            name: item.name().to_string(),
            ..options.clone()
        };
        match ctx.actor.call(Op::<K>::Delete(request)).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(api::<K>(e)),
        }
    }
    Ok(json(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    ))
}

async fn bind<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    if dry_run(&req)? {
        return Err(Failure::bad_request(
            "dryRun: a dry run of a binding is not supported",
        ));
    }
    let t = &req.target;
    ctx.authorize("create", t, &t.name, None).await?;
    let mut warnings = Vec::new();
    let mut binding: skiff::pb::core::v1::Binding = decode_as(
        body_json(&req)?,
        "Binding",
        "v1",
        validation(&req)?,
        &mut warnings,
    )?;
    let meta = binding.metadata.get_or_insert_with(Default::default);
    if meta.name.is_empty() {
        meta.name = req.target.name.clone();
    }
    if meta.name != req.target.name {
        return Err(Failure::bad_request(format!(
            "the name of the binding ({}) does not match the pod's ({})",
            meta.name, req.target.name
        )));
    }
    meta.namespace = req.target.namespace.clone();
    ctx.authorize("create", t, &t.name, Some(binding.encode_to_vec().into()))
        .await?;
    object::<K>(ctx.actor.call(Op::<K>::Bind(Box::new(binding))).await)?;
    Ok(reply(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &warnings,
    ))
}

/// The label selector of a workload's JSON as a string (`app=web,tier in
/// (a,b)`): a LabelSelector, or a ReplicationController's plain map.
fn selector_string(selector: &Value) -> String {
    let Some(map) = selector.as_object() else {
        return String::new();
    };
    if !map.contains_key("matchLabels") && !map.contains_key("matchExpressions") {
        return map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(",");
    }
    let mut parts: Vec<String> = map
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    for e in map
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                _ => format!("!{key}"),
            },
        );
    }
    parts.join(",")
}

/// A workload's autoscaling/v1 Scale.
fn to_scale(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let pick = |key: &str| meta.get(key).cloned().unwrap_or(Value::Null);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": pick("name"),
            "namespace": pick("namespace"),
            "uid": pick("uid"),
            "resourceVersion": pick("resourceVersion"),
            "creationTimestamp": pick("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(obj.pointer("/spec/selector").unwrap_or(&Value::Null)),
        },
    })
}

/// `scale`: read or set a workload's replicas through a Scale object.
async fn scale<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    let verb = match req.method {
        Method::GET => "get",
        Method::PUT => "update",
        _ => "patch",
    };
    ctx.authorize(verb, t, &t.name, None).await?;
    let dry = dry_run(&req)?;
    for _ in 0..MAX_ATTEMPTS {
        let current: K = read(&ctx, &req).await?;
        let current_rv = current.resource_version().to_string();
        let mut value = encode(current)?;
        let scale = to_scale(&value);
        let wanted = match req.method {
            Method::GET => return Ok(json(StatusCode::OK, &scale)),
            Method::PUT => body_json(&req)?,
            _ => {
                let content_type = req
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|c| c.to_str().ok())
                    .unwrap_or("");
                let kind = PatchType::of(content_type)
                    .filter(|k| *k != PatchType::Apply)
                    .ok_or_else(|| {
                        Failure::unsupported_media(content_type, &patch::MEDIA_TYPES[..3])
                    })?;
                patch::apply(kind, &scale, &req.body)
                    .map_err(|e| Failure::new(422, "Invalid", e))?
            }
        };
        let replicas = wanted
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let asked_rv = wanted
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let pinned = !asked_rv.is_empty() && asked_rv != current_rv;
        value["spec"]["replicas"] = json!(replicas);
        if pinned {
            value["metadata"]["resourceVersion"] = json!(asked_rv);
        }
        let obj: K = decode(value, Validation::Ignore, &mut Vec::new())?;
        let op = if dry {
            Op::UpdateDryRun(obj)
        } else {
            Op::Update(obj)
        };
        match ctx.write(op).await {
            Err(ApiError::Conflict { .. }) if !pinned => continue,
            result => {
                let updated = object(result)?;
                return Ok(json(StatusCode::OK, &to_scale(&encode(updated)?)));
            }
        }
    }
    Err(kept_changing(t, "scaled"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::Pod;

    #[test]
    fn unknown_fields_are_refused_warned_or_dropped_by_path() {
        let pod = json!({
            "metadata": {"name": "x", "colour": "red"},
            "spec": {"containers": [{"name": "c", "image": "i", "imag": "typo"}]}
        });
        let mut warnings = Vec::new();
        let err = decode::<Pod>(pod.clone(), Validation::Strict, &mut warnings).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("strict decoding error: unknown field"),
            "{}",
            err.message
        );
        let obj: Pod = decode(pod.clone(), Validation::Warn, &mut warnings).unwrap();
        assert_eq!(skiff::Resource::name(&obj), "x");
        assert_eq!(
            warnings,
            [
                "unknown field \"metadata.colour\"",
                "unknown field \"spec.containers[0].imag\""
            ]
        );
        let mut quiet = Vec::new();
        decode::<Pod>(pod, Validation::Ignore, &mut quiet).unwrap();
        assert!(quiet.is_empty());
        // A wrong type is refused whatever the validation.
        let bad = json!({"metadata": {"name": 5}});
        let err = decode::<Pod>(bad, Validation::Ignore, &mut quiet).unwrap_err();
        assert!(err.message.contains("metadata.name"), "{}", err.message);
    }

    #[test]
    fn scales_carry_replicas_and_the_selector_as_a_string() {
        let deployment = json!({
            "metadata": {"name": "web", "namespace": "prod", "resourceVersion": "7"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
            "status": {"replicas": 2}
        });
        let scale = to_scale(&deployment);
        assert_eq!(scale["spec"]["replicas"], 3);
        assert_eq!(scale["status"]["replicas"], 2);
        assert_eq!(scale["status"]["selector"], "app=web,tier in (a,b)");
        assert_eq!(scale["metadata"]["resourceVersion"], "7");
        let rc = json!({"spec": {"selector": {"app": "web"}}});
        assert_eq!(to_scale(&rc)["status"]["selector"], "app=web");
    }
}
