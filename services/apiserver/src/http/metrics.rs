//! `metrics.k8s.io/v1beta1` (what `kubectl top` reads): NodeMetrics and
//! PodMetrics from the same usage service as gRPC's `Metrics`, gathered
//! from the agents when asked.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use skiff::pb::api::v1::ListRequest;
use skiff::pb::metrics::v1::metrics_server::Metrics as _;

use super::{Ctx, Failure, Reply, Request, json};
use crate::usage::UsageService;

/// The group version.
pub const GROUP: &str = "metrics.k8s.io";
/// Its version.
pub const VERSION: &str = "v1beta1";

/// Whether this module serves the request.
pub fn handles(req: &Request) -> bool {
    let t = &req.target;
    t.group == GROUP
        && t.version == VERSION
        && matches!(t.resource.as_str(), "nodes" | "pods")
        && t.subresource.is_empty()
}

/// Serves a list or one object's usage.
///
/// # Errors
/// What to answer instead, as a Status.
pub async fn serve(ctx: Ctx, usage: Arc<UsageService>, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    if req.method != Method::GET {
        return Err(Failure::not_allowed(
            &req.method.to_string().to_lowercase(),
            &t.resource,
        ));
    }
    let nodes = t.resource == "nodes";
    if nodes && !t.namespace.is_empty() {
        return Err(Failure::no_route());
    }
    let verb = if t.name.is_empty() { "list" } else { "get" };
    ctx.authorize(verb, t, &t.name, None).await?;
    let mut fields = req.query.str("fieldSelector").to_string();
    if !t.name.is_empty() {
        if !fields.is_empty() {
            fields.push(',');
        }
        fields.push_str(&format!("metadata.name={}", t.name));
    }
    let list = ListRequest {
        namespace: t.namespace.clone(),
        label_selector: req.query.str("labelSelector").to_string(),
        field_selector: fields,
        ..Default::default()
    };
    let (kind, items) = if nodes {
        let found = usage
            .list_node_metrics(tonic::Request::new(list))
            .await
            .map_err(|s| Failure::from_grpc(&s))?
            .into_inner();
        ("NodeMetrics", to_values(&found.items)?)
    } else {
        let found = usage
            .list_pod_metrics(tonic::Request::new(list))
            .await
            .map_err(|s| Failure::from_grpc(&s))?
            .into_inner();
        ("PodMetrics", to_values(&found.items)?)
    };
    let api_version = format!("{GROUP}/{VERSION}");
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut item| {
            item["kind"] = json!(kind);
            item["apiVersion"] = json!(api_version);
            item
        })
        .collect();
    if t.name.is_empty() {
        return Ok(json(
            StatusCode::OK,
            &json!({
                "kind": format!("{kind}List"),
                "apiVersion": api_version,
                "metadata": {},
                "items": items,
            }),
        ));
    }
    match items.into_iter().next() {
        Some(item) => Ok(json(StatusCode::OK, &item)),
        None => Err(Failure::new(
            404,
            "NotFound",
            format!("{}.{GROUP} {:?} not found", t.resource, t.name),
        )),
    }
}

fn to_values<T: serde::Serialize>(items: &[T]) -> Result<Vec<Value>, Failure> {
    items
        .iter()
        .map(|i| {
            skiff::json::to_value(i).map_err(|e| Failure::new(500, "InternalError", e.to_string()))
        })
        .collect()
}
