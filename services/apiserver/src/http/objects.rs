//! Every kind's REST verbs over the API actors: get, list, watch, create,
//! update, patch, delete, deletecollection, and the `status`, `scale` and
//! `binding` subresources. Bodies are Kubernetes' JSON
//! ([`skiff::json`]); what a write means is the registry's, as for gRPC.
//!
//! [`serve`] routes a request to its verb; the verbs sit in files of
//! their own beside this one:
//!
//! - `common`: what the verbs share: the request's body as JSON, decoding
//!   with `fieldValidation`, the request's version, `dryRun`, replies.
//! - `read`: get, list and watch.
//! - `write`: create, update, patch and server-side apply.
//! - `delete`: delete, deletecollection and DeleteOptions.
//! - `subresources`: `binding` and `scale`.

use http::Method;

use super::{Ctx, Failure, JsonKind, Reply, Request};

mod common;
mod delete;
mod read;
mod subresources;
mod write;

pub(super) use common::{body_json, decode_as, validation};
pub(super) use delete::delete_options_in;

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
    // The object itself or its status: one arm each.
    let object_or_status = sub.is_empty() || (sub == "status" && has("status"));
    match (&req.method, item, sub) {
        (&Method::GET, false, "") if req.query.flag("watch") => read::watch::<K>(ctx, req).await,
        (&Method::GET, false, "") => read::list::<K>(ctx, req).await,
        (&Method::GET, true, _) if object_or_status => read::get::<K>(ctx, req).await,
        (&Method::POST, false, "") => write::create::<K>(ctx, req).await,
        (&Method::PUT, true, _) if object_or_status => write::update::<K>(ctx, req).await,
        (&Method::PATCH, true, _) if object_or_status => write::patch::<K>(ctx, req).await,
        (&Method::DELETE, true, "") => delete::delete::<K>(ctx, req).await,
        (&Method::DELETE, false, "") => delete::delete_collection::<K>(ctx, req).await,
        (&Method::POST, true, "binding") if has("binding") => {
            subresources::bind::<K>(ctx, req).await
        }
        (&Method::GET | &Method::PUT | &Method::PATCH, true, "scale") if has("scale") => {
            subresources::scale::<K>(ctx, req).await
        }
        (method, _, "") => Err(Failure::not_allowed(
            &method.to_string().to_lowercase(),
            &t.resource,
        )),
        _ => Err(Failure::no_route()),
    }
}

#[cfg(test)]
mod tests;
