//! The Kubernetes HTTP API, on the same port as gRPC: what kubectl, helm
//! and the client libraries speak (JSON over REST, watch streams,
//! discovery, Tables, the patch types).
//!
//! It is a codec, not a second API: every call goes to the same API actors
//! and registry as its gRPC twin (validation, defaults, admission,
//! resourceVersions and watch live there once). A request whose
//! content-type is `application/grpc*` never gets here; everything else
//! does, after the shared authentication layer put its caller in the
//! request's extensions. Each request is authorized here, once its object
//! is read, with the same authorizer and the same attributes as gRPC.
//!
//! # Layout
//!
//! - [`path`]: what a URL addresses (Kubernetes' request info) and its
//!   query.
//! - [`status`]: errors as `metav1.Status`.
//! - `discovery`: `/version`, `/api`, `/apis`, the per-group-version
//!   resource lists (legacy and aggregated), the OpenAPI v3 index and the
//!   PATCH operations kubectl looks for.
//! - `objects`: get, list, watch, create, update, patch, delete and
//!   deletecollection for every kind, and the `status`, `scale` and
//!   `binding` subresources; the verbs in `objects/` (`common`, `read`,
//!   `write`, `delete`, `subresources`).
//! - `patch`: JSON patch, merge patch and strategic merge patch.
//! - `table`: server-side Tables (`kubectl get`'s columns).
//! - `reviews`: `auth can-i`, `auth whoami` and `create token`.
//! - `metrics`: metrics.k8s.io (`kubectl top`).
//! - `protobuf`: request bodies in Kubernetes' protobuf (client-go's typed
//!   clients), read into the same JSON.
//! - `pods`: `pods/log` and `pods/exec` (WebSocket channel protocols),
//!   proxied from the agents like their gRPC twins.
//! - `portforward`: `pods/portforward` over SPDY/3.1 (`spdy`), tunnelled
//!   in a WebSocket or on WebSocket channels (`portforward/channels`).
//! - `websocket`: the 101 answer and the server's side of a WebSocket,
//!   for `pods` and `portforward`.
//! - `versions`: kinds also served in a second version; `openapi`: the
//!   kinds' OpenAPI v3 schemas.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff::pb::authentication::v1::UserInfo;
use tonic::body::Body;

use crate::actor::ActorHandle;
use crate::auth::Checker;
use crate::auth::attributes::Attributes;
use crate::strategy::Strategy;

mod discovery;
mod metrics;
mod objects;
mod openapi;
pub(crate) mod patch;
pub mod path;
mod pods;
mod portforward;
mod protobuf;
mod reviews;
mod spdy;
mod status;
mod table;
mod versions;
mod websocket;

pub use status::Failure;

use path::{Query, Route, Target, split_version};

/// An HTTP response.
pub type Reply = http::Response<Body>;

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The largest request body read (objects are refused over 1.5 MiB; a
/// patch or a JSON encoding may be larger than the object).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The Kubernetes version Skiff's API answers as (helm reads it as
/// semver; kubectl warns about a skew of more than one minor).
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "35");

/// A kind as the HTTP API serves it.
#[derive(Clone, Copy)]
pub struct KindEntry {
    /// `Pod`.
    pub kind: &'static str,
    /// "" for core, `apps`, ...
    pub group: &'static str,
    /// `v1`.
    pub version: &'static str,
    /// `pods`.
    pub plural: &'static str,
    /// kubectl's short names.
    pub short_names: &'static [&'static str],
    /// Lives in a namespace.
    pub namespaced: bool,
    /// Has a `status` subresource.
    pub status: bool,
    /// Has a `binding` subresource (pods).
    pub binding: bool,
    /// Has a `scale` subresource (autoscaling/v1 Scale).
    pub scale: bool,
    /// Serves a request addressed to the kind.
    serve: fn(Ctx, Request) -> BoxFuture<Result<Reply, Failure>>,
}

/// A kind the HTTP API can read and write as JSON.
pub trait JsonKind: Strategy + Serialize + DeserializeOwned {}
impl<K: Strategy + Serialize + DeserializeOwned> JsonKind for K {}

fn serve_kind<K: JsonKind>(ctx: Ctx, request: Request) -> BoxFuture<Result<Reply, Failure>> {
    Box::pin(objects::serve::<K>(ctx, request))
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The kinds whose replicas the `scale` subresource sets.
const SCALABLE: &[&str] = &[
    "Deployment",
    "ReplicaSet",
    "ReplicationController",
    "StatefulSet",
];

const fn scalable(kind: &str) -> bool {
    let mut i = 0;
    while i < SCALABLE.len() {
        if same(SCALABLE[i], kind) {
            return true;
        }
        i += 1;
    }
    false
}

macro_rules! kind_entries {
    ($($st:ident $kind:ident, $ty:path, $tr:path, $srv:ty;)*) => {
        /// Every kind the HTTP API serves (all of `proto/kinds.tsv`).
        pub static KINDS: &[KindEntry] = &[$(
            KindEntry {
                kind: <$ty as skiff::Resource>::KIND,
                group: split_version(<$ty as skiff::Resource>::API_VERSION).0,
                version: split_version(<$ty as skiff::Resource>::API_VERSION).1,
                plural: <$ty as skiff::Resource>::PLURAL,
                short_names: <$ty as skiff::Resource>::SHORT_NAMES,
                namespaced: <$ty as skiff::Resource>::NAMESPACED,
                status: <$ty as skiff::Resource>::HAS_STATUS,
                binding: same(stringify!($st), "pod"),
                scale: scalable(<$ty as skiff::Resource>::KIND),
                serve: serve_kind::<$ty>,
            },
        )*];
    };
}

skiff::for_each_kind!(kind_entries);

/// The kinds served in a second version (see `versions`), as entries of
/// that version serving the stored kind.
static VIEW_KINDS: std::sync::LazyLock<Vec<KindEntry>> = std::sync::LazyLock::new(|| {
    versions::VIEWS
        .iter()
        .filter_map(|view| {
            let stored = KINDS.iter().find(|k| {
                k.group == view.stored_group
                    && k.version == view.stored_version
                    && k.plural == view.plural
            })?;
            Some(KindEntry {
                group: view.group,
                version: view.version,
                ..*stored
            })
        })
        .collect()
});

/// Every kind in every version served: the stored versions first.
pub fn all_kinds() -> impl Iterator<Item = &'static KindEntry> {
    KINDS.iter().chain(VIEW_KINDS.iter())
}

/// The kind served at `group/version/resource`.
pub fn kind_at(group: &str, version: &str, resource: &str) -> Option<&'static KindEntry> {
    all_kinds().find(|k| k.group == group && k.version == version && k.plural == resource)
}

/// The writer a request names: `fieldManager`, else the first word of its
/// User-Agent (`kubectl/v1.35.2 (linux/amd64) ...` → `kubectl`), as
/// Kubernetes names managers.
fn writer_of(query: &Query, headers: &HeaderMap) -> Option<crate::apply::Writer> {
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(manager) => manager.to_string(),
        None => headers
            .get(http::header::USER_AGENT)
            .and_then(|ua| ua.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .map(str::trim)
            .filter(|m| !m.is_empty())?
            .to_string(),
    };
    Some(crate::apply::Writer {
        manager: manager.chars().take(128).collect(),
        explicit: true,
    })
}

/// Whether anyone, even a caller with no credentials, may ask (as
/// Kubernetes' `system:public-info-viewer`: health and version).
pub fn is_public(path: &str) -> bool {
    matches!(path::route(path), Route::Version | Route::Health)
}

/// Whether `path` is one the Kubernetes HTTP API serves (every other path
/// is a gRPC method's, and is checked as one).
pub fn is_api_path(path: &str) -> bool {
    path::route(path) != Route::Unknown
}

/// A request to a kind, read.
pub struct Request {
    /// What it addresses.
    pub target: Target,
    /// GET, POST, ...
    pub method: Method,
    /// Its query parameters.
    pub query: Query,
    /// Its headers (Accept, Content-Type).
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The connection's upgrade, if the client asked for one (WebSocket).
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The version it addresses, when that is not the stored one: bodies
    /// are converted on the way in and out.
    pub view: Option<&'static versions::View>,
}

/// What serving a request needs besides the request.
#[derive(Clone)]
pub struct Ctx {
    /// The API actor calls go to.
    pub actor: ActorHandle,
    /// Authorizes the caller.
    checker: Arc<Checker>,
    /// The caller.
    pub user: UserInfo,
    /// Who writes, for field ownership: `fieldManager`, else the client's
    /// name from its User-Agent (Kubernetes' default).
    pub writer: Option<crate::apply::Writer>,
}

impl Ctx {
    /// A write through the API actor, as [`Ctx::writer`] (its fields are
    /// recorded as its own).
    ///
    /// # Errors
    /// The operation's.
    pub async fn write<K: Strategy>(
        &self,
        op: crate::actor::Op<K>,
    ) -> crate::error::Result<crate::actor::Reply<K>> {
        crate::apply::as_writer(self.writer.clone(), self.actor.call(op)).await
    }

    /// Whether the caller may `verb` the target (with `object`, for the
    /// rules that read it); 403 with Kubernetes' wording if not.
    ///
    /// # Errors
    /// Forbidden.
    pub async fn authorize(
        &self,
        verb: &str,
        target: &Target,
        name: &str,
        object: Option<Bytes>,
    ) -> Result<(), Failure> {
        let attrs = Attributes {
            verb: verb.into(),
            group: target.group.clone(),
            resource: target.resource.clone(),
            subresource: target.subresource.clone(),
            namespace: target.namespace.clone(),
            name: name.into(),
            path: String::new(),
            bound_pod: None,
            message: object,
        };
        self.checker
            .authorize(&self.user, &attrs)
            .await
            .map_err(|message| {
                let mut failure = Failure::new(403, "Forbidden", message);
                failure.details = Some(serde_json::json!({
                    "name": name, "group": target.group, "kind": target.resource,
                }));
                failure
            })
    }

    /// RBAC's escalation check alone, for a write whose object is known
    /// only after the request was authorized (a patch).
    ///
    /// # Errors
    /// Forbidden.
    pub async fn no_escalation(
        &self,
        target: &Target,
        name: &str,
        object: Bytes,
    ) -> Result<(), Failure> {
        let attrs = Attributes {
            verb: "update".into(),
            group: target.group.clone(),
            resource: target.resource.clone(),
            namespace: target.namespace.clone(),
            name: name.into(),
            message: Some(object),
            ..Default::default()
        };
        self.checker
            .no_escalation(&self.user, &attrs)
            .await
            .map_err(|message| Failure::new(403, "Forbidden", message))
    }
}

/// The HTTP API: a tower service for the requests that are not gRPC.
#[derive(Clone)]
pub struct HttpApi {
    actor: ActorHandle,
    checker: Arc<Checker>,
    /// Reaches the agents for logs and exec.
    logs: Arc<crate::logs::PodLogsService>,
    /// Issues service-account tokens (None: a plaintext cluster).
    identity: Option<Arc<crate::auth::services::IdentityServices>>,
    /// Resource usage from the agents (metrics.k8s.io).
    usage: Arc<crate::usage::UsageService>,
}

impl HttpApi {
    /// The API, calling `actor`, authorizing with `checker`, reaching
    /// agents through `logs` and `usage`, issuing tokens with `identity`.
    pub fn new(
        actor: ActorHandle,
        checker: Arc<Checker>,
        logs: Arc<crate::logs::PodLogsService>,
        identity: Option<Arc<crate::auth::services::IdentityServices>>,
        usage: Arc<crate::usage::UsageService>,
    ) -> Self {
        Self {
            actor,
            checker,
            logs,
            identity,
            usage,
        }
    }

    async fn serve<B>(self, request: http::Request<B>) -> Reply
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut parts, body) = request.into_parts();
        if parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        {
            // A gRPC method no service has.
            let (parts, ()) = tonic::Status::unimplemented(format!(
                "no gRPC method {} (grpcurl list shows the services)",
                parts.uri.path()
            ))
            .into_http::<()>()
            .into_parts();
            return http::Response::from_parts(parts, Body::empty());
        }
        let route = path::route(parts.uri.path());
        let user = crate::auth::caller(&parts.extensions).cloned();
        let query = Query::parse(parts.uri.query());
        let answer = match (route, user) {
            (Route::Version, _) => Ok(json(StatusCode::OK, &discovery::version())),
            (Route::Health, _) => Ok(text(StatusCode::OK, "ok")),
            (_, None) => Err(Failure::new(401, "Unauthorized", "Unauthorized")),
            (Route::Object(target), Some(user)) => {
                let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) => {
                        return failure(&Failure::new(
                            413,
                            "RequestEntityTooLarge",
                            format!("the request body could not be read: {e}"),
                        ));
                    }
                };
                let ctx = Ctx {
                    actor: self.actor.clone(),
                    checker: Arc::clone(&self.checker),
                    user,
                    writer: writer_of(&query, &parts.headers),
                };
                let entry = kind_at(&target.group, &target.version, &target.resource);
                let view = versions::view_at(&target.group, &target.version, &target.resource);
                let request = Request {
                    target,
                    method: parts.method,
                    query,
                    headers: parts.headers,
                    body,
                    upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
                    view,
                };
                match entry {
                    _ if reviews::handles(&request) => {
                        reviews::serve(ctx, self.identity.clone(), request).await
                    }
                    _ if metrics::handles(&request) => {
                        metrics::serve(ctx, Arc::clone(&self.usage), request).await
                    }
                    None => Err(Failure::no_route()),
                    Some(_) if pods::handles(&request) => {
                        pods::serve(ctx, Arc::clone(&self.logs), request).await
                    }
                    Some(entry) => (entry.serve)(ctx, request).await,
                }
            }
            (route, Some(_)) => discovery::serve(&route, &parts.headers),
        };
        answer.unwrap_or_else(|f| failure(&f))
    }
}

impl<B> tower::Service<http::Request<B>> for HttpApi
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = BoxFuture<Result<Reply, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(request).await) })
    }
}

/// A JSON response.
pub fn json(code: StatusCode, value: &impl Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(code, bytes),
        Err(e) => failure(&Failure::new(
            500,
            "InternalError",
            format!("encoding the reply: {e}"),
        )),
    }
}

/// A response of JSON already encoded.
pub fn json_bytes(code: StatusCode, bytes: Vec<u8>) -> Reply {
    with_type(code, "application/json", Bytes::from(bytes))
}

fn text(code: StatusCode, body: &'static str) -> Reply {
    with_type(
        code,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn with_type(code: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut reply = http::Response::new(Body::new(http_body_util::Full::new(body)));
    *reply.status_mut() = code;
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    reply
}

/// A streamed response of `content_type` (a watch, a log).
pub fn streamed(
    content_type: &'static str,
    chunks: impl futures::Stream<Item = Bytes> + Send + 'static,
) -> Reply {
    use futures::StreamExt as _;
    let frames = chunks.map(|chunk| Ok::<_, Infallible>(http_body::Frame::data(chunk)));
    let mut reply = http::Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    reply
}

/// A field of a body read as JSON, by its JSON name or its proto name
/// (protobuf bodies are read into proto names).
pub fn field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake))
}

/// A failure as a Status response.
pub fn failure(failure: &Failure) -> Reply {
    let code = StatusCode::from_u16(failure.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut reply = json(code, &failure.to_json());
    if failure.code == 429 {
        reply
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    reply
}
