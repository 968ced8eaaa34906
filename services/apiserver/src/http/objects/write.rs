//! The writes: create, update, patch (JSON, merge and strategic merge,
//! again while other writers come first) and server-side apply.

use http::StatusCode;
use serde_json::{Value, json};

use super::common::{
    MAX_ATTEMPTS, api_version_of, body_json, decode, dry_run, encode, from_view, kept_changing,
    object, place, read, reply, same_name, shown, stored, validation,
};
use crate::actor::Op;
use crate::error::ApiError;
use crate::http::patch::{self, PatchType};
use crate::http::{Ctx, Failure, JsonKind, Reply, Request};

pub(super) async fn create<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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
        Op::CreateDryRun(Box::new(obj))
    } else {
        Op::Create(Box::new(obj))
    };
    let created = object(ctx.write(op).await)?;
    Ok(reply(
        StatusCode::CREATED,
        &shown(encode(created)?, &req),
        &warnings,
    ))
}

pub(super) async fn update<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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
fn write_op<K: JsonKind>(t: &crate::http::Target, dry: bool, obj: K) -> Result<Op<K>, Failure> {
    Ok(match (t.subresource.as_str(), dry) {
        ("status", true) => {
            return Err(Failure::bad_request(
                "dryRun: a dry run of a status update is not supported",
            ));
        }
        ("status", false) => Op::UpdateStatus(Box::new(obj)),
        (_, true) => Op::UpdateDryRun(Box::new(obj)),
        (_, false) => Op::Update(Box::new(obj)),
    })
}

pub(super) async fn patch<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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
                Op::CreateDryRun(Box::new(obj))
            } else {
                Op::Create(Box::new(obj))
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
fn conflict(e: &crate::apply::Error, t: &crate::http::Target) -> Failure {
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
