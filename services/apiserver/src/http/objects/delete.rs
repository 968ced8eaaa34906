//! Deletes: delete (at once, or the object as it goes when finalizers or
//! a grace period keep it), deletecollection, and Kubernetes'
//! DeleteOptions from the body and the query.

use http::StatusCode;
use serde_json::{Value, json};
use skiff::pb::api::v1::{DeleteRequest, Preconditions};

use super::common::{api, body_json, dry_run, encode, object, read, shown};
use super::read::{list_page, list_request};
use crate::actor::Op;
use crate::error::ApiError;
use crate::http::{Ctx, Failure, JsonKind, Reply, Request, json};

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
pub(in crate::http) fn delete_options_in(
    body: &Value,
    req: &Request,
) -> Result<(DeleteRequest, bool), Failure> {
    let field = |camel: &str, snake: &str| crate::http::field(body, camel, snake).cloned();
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

pub(super) async fn delete<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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

pub(super) async fn delete_collection<K: JsonKind>(
    ctx: Ctx,
    req: Request,
) -> Result<Reply, Failure> {
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
