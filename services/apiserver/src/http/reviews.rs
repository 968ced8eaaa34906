//! What kubectl asks about the caller: `auth can-i`
//! (SelfSubjectAccessReview), `auth can-i --list`
//! (SelfSubjectRulesReview), `auth whoami` (SelfSubjectReview), and
//! `create token` (the `serviceaccounts/token` subresource, a
//! TokenRequest). The answers come from the same authorizer and token
//! issuer as gRPC's `Identity` and `ServiceAccountTokens`.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use skiff::pb::authentication::v1::TokenRequest;
use skiff::pb::authentication::v1::service_account_tokens_server::ServiceAccountTokens as _;

use super::{Ctx, Failure, Reply, Request, field, json};
use crate::auth::attributes::Attributes;
use crate::auth::services::IdentityServices;

/// The resources this module serves: (group, version, resource,
/// subresource).
pub const SERVED: &[(&str, &str, &str, &str)] = &[
    ("authorization.k8s.io", "v1", "selfsubjectaccessreviews", ""),
    ("authorization.k8s.io", "v1", "selfsubjectrulesreviews", ""),
    ("authentication.k8s.io", "v1", "selfsubjectreviews", ""),
    ("", "v1", "serviceaccounts", "token"),
];

/// Whether this module serves the request.
pub fn handles(req: &Request) -> bool {
    let t = &req.target;
    SERVED.iter().any(|(g, v, r, s)| {
        t.group == *g && t.version == *v && t.resource == *r && t.subresource == *s
    })
}

/// Serves a review or a token request.
///
/// # Errors
/// What to answer instead, as a Status.
pub async fn serve(
    ctx: Ctx,
    identity: Option<Arc<IdentityServices>>,
    req: Request,
) -> Result<Reply, Failure> {
    if req.method != Method::POST {
        return Err(Failure::not_allowed(
            &req.method.to_string().to_lowercase(),
            &req.target.resource,
        ));
    }
    match req.target.resource.as_str() {
        "selfsubjectaccessreviews" => access_review(&ctx, &req).await,
        "selfsubjectrulesreviews" => rules_review(&ctx, &req),
        "selfsubjectreviews" => Ok(who_am_i(&ctx)),
        _ => token(&ctx, identity, &req).await,
    }
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

async fn access_review(ctx: &Ctx, req: &Request) -> Result<Reply, Failure> {
    let review = super::objects::body_json(req)?;
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let attrs = if let Some(r) = field(&spec, "resourceAttributes", "resource_attributes") {
        Attributes {
            verb: text(r, "verb"),
            group: text(r, "group"),
            resource: text(r, "resource"),
            subresource: text(r, "subresource"),
            namespace: text(r, "namespace"),
            name: text(r, "name"),
            ..Default::default()
        }
    } else if let Some(n) = field(&spec, "nonResourceAttributes", "non_resource_attributes") {
        Attributes {
            verb: text(n, "verb"),
            path: text(n, "path"),
            ..Default::default()
        }
    } else {
        return Err(Failure::new(
            422,
            "Invalid",
            "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: null: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    };
    // Paths that are no resource's: discovery, health and version are
    // every authenticated caller's (Kubernetes' system:discovery). A
    // refusal gives no reason, as RBAC's (kubectl prints "no").
    let allowed = if attrs.resource.is_empty() {
        super::is_api_path(&attrs.path)
    } else {
        ctx.checker.authorize(&ctx.user, &attrs).await.is_ok()
    };
    let status = json!({"allowed": allowed});
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {},
            "spec": spec,
            "status": status,
        }),
    ))
}

fn rules_review(ctx: &Ctx, req: &Request) -> Result<Reply, Failure> {
    let review = super::objects::body_json(req)?;
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let namespace = text(&spec, "namespace");
    let status = ctx.checker.rules_review(&ctx.user, &namespace);
    let mut status = skiff::json::to_value(&status)
        .map_err(|e| Failure::new(500, "InternalError", e.to_string()))?;
    // Required in Kubernetes' SubjectRulesReviewStatus, even when empty
    // or false (the Python client refuses a status without them).
    if let Some(fields) = status.as_object_mut() {
        for (key, empty) in [
            ("resourceRules", json!([])),
            ("nonResourceRules", json!([])),
            ("incomplete", json!(false)),
        ] {
            fields.entry(key).or_insert(empty);
        }
    }
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectRulesReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {},
            "spec": spec,
            "status": status,
        }),
    ))
}

fn who_am_i(ctx: &Ctx) -> Reply {
    let user = &ctx.user;
    let mut info = json!({"username": user.username, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    json(
        StatusCode::CREATED,
        &json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {},
            "status": {"userInfo": info},
        }),
    )
}

async fn token(
    ctx: &Ctx,
    identity: Option<Arc<IdentityServices>>,
    req: &Request,
) -> Result<Reply, Failure> {
    let t = &req.target;
    if t.namespace.is_empty() || t.name.is_empty() {
        return Err(Failure::no_route());
    }
    let value = if req.body.is_empty() {
        json!({})
    } else {
        super::objects::body_json(req)?
    };
    let mut warnings = Vec::new();
    let mut request: TokenRequest = super::objects::decode_as(
        value,
        "TokenRequest",
        "v1",
        super::objects::validation(req)?,
        &mut warnings,
    )?;
    let meta = request.metadata.get_or_insert_with(Default::default);
    meta.name = t.name.clone();
    meta.namespace = t.namespace.clone();
    let bound_pod = request
        .spec
        .as_ref()
        .and_then(|s| s.bound_object_ref.as_ref())
        .filter(|b| b.kind == "Pod")
        .map(|b| (b.name.clone(), b.uid.clone()));
    let attrs = Attributes {
        verb: "create".into(),
        resource: "serviceaccounts".into(),
        subresource: "token".into(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        bound_pod,
        ..Default::default()
    };
    ctx.checker
        .authorize(&ctx.user, &attrs)
        .await
        .map_err(|why| Failure::new(403, "Forbidden", why))?;
    let Some(identity) = identity else {
        return Err(Failure::bad_request(
            "this cluster issues no service-account tokens: it runs without TLS (--insecure)",
        ));
    };
    let mut call = tonic::Request::new(request);
    call.extensions_mut().insert(ctx.user.clone());
    let issued = identity
        .create(call)
        .await
        .map_err(|s| Failure::from_grpc(&s))?
        .into_inner();
    let value = skiff::json::to_value(&issued)
        .map_err(|e| Failure::new(500, "InternalError", e.to_string()))?;
    Ok(json(StatusCode::CREATED, &value))
}
