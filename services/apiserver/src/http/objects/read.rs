//! The reads: get, list (item by item, or as a Table) and watch (a
//! stream of JSON lines, after the current objects with
//! `sendInitialEvents`).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::StatusCode;
use serde_json::{Value, json};
use skiff::pb::api::v1::{EventType, GetRequest, ListRequest, WatchRequest};

use super::common::{api, api_version_of, encode, field_selector, internal, object, shown};
use crate::actor::{Op, Reply as ActorReply};
use crate::error::ApiError;
use crate::http::table::{self, Include};
use crate::http::{Ctx, Failure, JsonKind, Reply, Request, json};
use crate::registry::Delivery;

pub(super) async fn get<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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

pub(super) fn list_request(req: &Request) -> Result<ListRequest, Failure> {
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
pub(super) async fn list_page<K: JsonKind>(
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

pub(super) async fn list<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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
    Ok(crate::http::json_bytes(StatusCode::OK, out))
}

/// One watch event as a line: `{"type":"ADDED","object":{...}}\n`, the
/// object a one-row Table when the client asked for Tables.
fn event_line(kind: &str, object: &Value, table: Option<Include>) -> Bytes {
    let row;
    let object = match table {
        Some(include) if kind != "BOOKMARK" && kind != "ERROR" => {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let kind_name = object.get("kind").and_then(Value::as_str).unwrap_or("");
            row = table::of(kind_name, std::slice::from_ref(object), &rv, include);
            &row
        }
        _ => object,
    };
    shared_event_line(
        kind,
        &serde_json::to_vec(object).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// An event line around an object already in JSON, `type` first as
/// Kubernetes writes it.
fn shared_event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
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
pub(super) async fn watch<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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
        .map(move |event| {
            let (kind, obj) = match event {
                // As stored: the change's JSON, encoded once for every
                // watcher it reaches.
                Ok(Delivery::Change(kind, change)) if view.is_none() && table.is_none() => {
                    if let Some(object) = change.json(|obj| {
                        let value = encode(obj.clone()).ok()?;
                        serde_json::to_vec(&value).ok().map(Bytes::from)
                    }) {
                        return (false, shared_event_line(event_name(kind), &object));
                    }
                    (kind, (*change.object).clone())
                }
                Ok(Delivery::Change(kind, change)) => (kind, (*change.object).clone()),
                Ok(Delivery::Object(kind, obj)) => (kind, obj),
                Err(e) => return (true, error_line(&Failure::from_api(&e, K::KIND))),
            };
            let show = |value: Value| match view {
                Some(view) => view.shown(value),
                None => value,
            };
            match encode(obj).map(show) {
                Ok(value) => (false, event_line(event_name(kind), &value, table)),
                Err(f) => (true, error_line(&f)),
            }
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
    crate::http::streamed("application/json", lines)
}
