//! The `binding` subresource (pods) and the `scale` subresource
//! (workloads, as autoscaling/v1 Scale objects).

use http::{Method, StatusCode};
use prost::Message as _;
use serde_json::{Value, json};

use super::common::{
    MAX_ATTEMPTS, Validation, body_json, decode, decode_as, dry_run, encode, kept_changing, object,
    read, reply, validation,
};
use crate::actor::Op;
use crate::error::ApiError;
use crate::http::patch::{self, PatchType};
use crate::http::{Ctx, Failure, JsonKind, Reply, Request, json};

pub(super) async fn bind<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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
pub(super) fn to_scale(obj: &Value) -> Value {
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
pub(super) async fn scale<K: JsonKind>(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
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
            Op::UpdateDryRun(Box::new(obj))
        } else {
            Op::Update(Box::new(obj))
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
