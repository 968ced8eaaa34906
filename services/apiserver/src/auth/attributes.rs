//! What a call asks to do, in Kubernetes' authorization terms: verb, API
//! group, resource and subresource, namespace and name. Read from the gRPC
//! path and, where the object matters, from the request's first message,
//! decoded only as far as its namespace and name (every request shape in
//! `proto/` keeps them at the same field numbers).

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use tonic::Status;
use tonic::body::Body;

/// The largest first message read to authorize a call (the API refuses
/// objects over 1.5 MiB anyway).
const MAX_PEEK: usize = 2 * 1024 * 1024;
/// How long a caller may take to send the first message.
const PEEK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One action, as the authorizer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, delete.
    pub verb: String,
    /// "" for core, "apps", "rbac.authorization.k8s.io", ...
    pub group: String,
    /// `pods`; empty for a call about no resource (then `path` says which).
    pub resource: String,
    /// `status`, `binding`, `log`, `exec`, `token`, ...
    pub subresource: String,
    /// Empty: cluster-scoped, or every namespace (list and watch).
    pub namespace: String,
    /// Empty: any (list, watch, create with a generated name).
    pub name: String,
    /// The gRPC method, for calls about no resource.
    pub path: String,
    /// A service-account token request's bound pod (name, uid).
    pub bound_pod: Option<(String, String)>,
    /// The call's first message, for rules that read the whole object
    /// (RBAC's escalation check).
    pub message: Option<Bytes>,
}

impl Attributes {
    /// `pods/status` or `pods`.
    pub fn full_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// Kubernetes' wording of a refusal: `pods "web" is forbidden: User
    /// "u" cannot get resource "pods" in API group "" in the namespace
    /// "default"`.
    pub fn forbidden(&self, user: &str, why: &str) -> String {
        let what = if self.resource.is_empty() {
            format!("{} is forbidden: User {user:?} cannot call it", self.path)
        } else {
            let object = if self.name.is_empty() {
                self.full_resource()
            } else {
                format!("{} {:?}", self.full_resource(), self.name)
            };
            let scope = if self.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {:?}", self.namespace)
            };
            format!(
                "{object} is forbidden: User {user:?} cannot {} resource {:?} in API group {:?} {scope}",
                self.verb,
                self.full_resource(),
                self.group
            )
        };
        if why.is_empty() {
            what
        } else {
            format!("{what}: {why}")
        }
    }
}

/// How a method's first message names its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Nothing to read.
    Nothing,
    /// `namespace = 1` (list and watch requests).
    Namespace,
    /// `namespace = 1, name = 2` (get, delete, logs, exec).
    NamespaceName,
    /// An object: `metadata = 3` with `name = 1, namespace = 3`.
    Object,
    /// Attach's first input: `start = 1`, a `NamespaceName`.
    AttachStart,
    /// PortForward's first input: `start = 1`, a `NamespaceName`.
    ForwardStart,
    /// A TokenRequest: an object, and its bound pod.
    TokenRequest,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NamespaceName {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetaHead {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "3")]
    namespace: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ObjectHead {
    #[prost(message, optional, tag = "3")]
    metadata: Option<MetaHead>,
}

/// What a kind's service names: its API group, plural and scope.
struct KindInfo {
    service: &'static str,
    group: &'static str,
    plural: &'static str,
    namespaced: bool,
}

macro_rules! kind_infos {
    ($($st:ident $kind:ident, $ty:path, $tr:path, $srv:ty;)*) => {
        const KINDS: &[KindInfo] = &[$(
            KindInfo {
                service: <$ty as skiff::Resource>::SERVICE,
                group: crate::http::path::split_version(<$ty as skiff::Resource>::API_VERSION).0,
                plural: <$ty as skiff::Resource>::PLURAL,
                namespaced: <$ty as skiff::Resource>::NAMESPACED,
            },
        )*];
    };
}

skiff::for_each_kind!(kind_infos);

/// What a call is, before its body is read: None for calls every
/// authenticated caller may make (reflection, health, who am I).
fn classify(path: &str) -> Option<(Attributes, Shape, bool)> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let attrs = |verb: &str, group: &str, resource: &str, sub: &str| Attributes {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: sub.into(),
        path: path.into(),
        ..Default::default()
    };
    if let Some(kind) = KINDS.iter().find(|k| k.service == service) {
        let (verb, sub, shape) = match method {
            "Create" => ("create", "", Shape::Object),
            "Get" => ("get", "", Shape::NamespaceName),
            "List" => ("list", "", Shape::Namespace),
            "Watch" => ("watch", "", Shape::Namespace),
            "Update" => ("update", "", Shape::Object),
            "UpdateStatus" => ("update", "status", Shape::Object),
            "Delete" => ("delete", "", Shape::NamespaceName),
            "Bind" => ("create", "binding", Shape::Object),
            "Evict" => ("create", "eviction", Shape::Object),
            _ => return Some((attrs("", "", "", ""), Shape::Nothing, false)),
        };
        return Some((
            attrs(verb, kind.group, kind.plural, sub),
            shape,
            kind.namespaced,
        ));
    }
    let found = match (service, method) {
        ("skiff.core.v1.PodLogs", "Logs") => {
            (attrs("get", "", "pods", "log"), Shape::NamespaceName, true)
        }
        ("skiff.core.v1.PodExec", "Exec") => (
            attrs("create", "", "pods", "exec"),
            Shape::NamespaceName,
            true,
        ),
        ("skiff.core.v1.PodExec", "Attach") => (
            attrs("create", "", "pods", "exec"),
            Shape::AttachStart,
            true,
        ),
        ("skiff.core.v1.PodExec", "AttachContainer") => (
            attrs("create", "", "pods", "attach"),
            Shape::AttachStart,
            true,
        ),
        ("skiff.core.v1.PodPortForward", "PortForward") => (
            attrs("create", "", "pods", "portforward"),
            Shape::ForwardStart,
            true,
        ),
        ("skiff.metrics.v1.Metrics", "ListNodeMetrics") => (
            attrs("list", "metrics.k8s.io", "nodes", ""),
            Shape::Nothing,
            false,
        ),
        ("skiff.metrics.v1.Metrics", "ListPodMetrics") => (
            attrs("list", "metrics.k8s.io", "pods", ""),
            Shape::Namespace,
            true,
        ),
        ("skiff.authentication.v1.Certificates", "Join") => (
            attrs(
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests",
                "nodeclient",
            ),
            Shape::Nothing,
            false,
        ),
        ("skiff.authentication.v1.Certificates", "Renew") => (
            attrs(
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests",
                "selfnodeclient",
            ),
            Shape::Nothing,
            false,
        ),
        ("skiff.authentication.v1.ServiceAccountTokens", "Create") => (
            attrs("create", "", "serviceaccounts", "token"),
            Shape::TokenRequest,
            true,
        ),
        _ => return None,
    };
    Some(found)
}

/// Whether anyone, even a caller with no identity, may make the call
/// (health checks, like Kubernetes' `/healthz`).
pub fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

/// The attributes of a call: from its path, and when its object matters
/// from its first message, which is read and put back in front of the
/// rest of the body. None: a call any authenticated caller may make.
///
/// # Errors
/// A body that cannot be read or decoded, or a compressed first message.
pub async fn read(
    request: http::Request<Body>,
) -> (Result<Option<Attributes>, Status>, http::Request<Body>) {
    let Some((mut attrs, shape, namespaced)) = classify(request.uri().path()) else {
        return (Ok(None), request);
    };
    if shape == Shape::Nothing {
        return (Ok(Some(attrs)), request);
    }
    let (parts, body) = request.into_parts();
    let peeked = tokio::time::timeout(PEEK_TIMEOUT, peek(body))
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(
                "the request's first message did not arrive in time",
            ))
        });
    let (first, body) = match peeked {
        Ok(peeked) => peeked,
        Err(e) => return (Err(e), http::Request::from_parts(parts, Body::default())),
    };
    let request = http::Request::from_parts(parts, body);
    let Some(message) = first else {
        // A stream that ended before its first message: nothing to do,
        // nothing to allow but the call itself.
        return (Ok(Some(attrs)), request);
    };
    let decoded = decode(&message, shape, &mut attrs);
    attrs.message = Some(message);
    if let Err(e) = decoded {
        return (
            Err(Status::invalid_argument(format!(
                "the request does not decode: {e}"
            ))),
            request,
        );
    }
    if namespaced && attrs.namespace.is_empty() && attrs.verb != "list" && attrs.verb != "watch" {
        // As the registry reads it.
        attrs.namespace = "default".into();
    }
    if !namespaced {
        attrs.namespace.clear();
    }
    (Ok(Some(attrs)), request)
}

/// Decodes a message, its error as text.
fn de<M: prost::Message + Default>(message: &[u8]) -> Result<M, String> {
    M::decode(message).map_err(|e| e.to_string())
}

fn decode(message: &[u8], shape: Shape, attrs: &mut Attributes) -> Result<(), String> {
    match shape {
        Shape::Nothing => {}
        Shape::Namespace => attrs.namespace = de::<NamespaceName>(message)?.namespace,
        Shape::NamespaceName => {
            let head = de::<NamespaceName>(message)?;
            attrs.namespace = head.namespace;
            attrs.name = head.name;
        }
        Shape::Object => {
            let meta = de::<ObjectHead>(message)?.metadata.unwrap_or_default();
            attrs.namespace = meta.namespace;
            attrs.name = meta.name;
        }
        Shape::AttachStart => {
            // The real type: `start` is in a oneof, and a look-alike would
            // merge repeated `start`s differently from the handler.
            use skiff::pb::core::v1::pod_exec_input::Input;
            let first = de::<skiff::pb::core::v1::PodExecInput>(message)?;
            let Some(Input::Start(start)) = first.input else {
                return Err("the first message of Attach must be `start`".into());
            };
            attrs.namespace = start.namespace;
            attrs.name = start.name;
        }
        Shape::ForwardStart => {
            use skiff::pb::core::v1::port_forward_input::Input;
            let first = de::<skiff::pb::core::v1::PortForwardInput>(message)?;
            let Some(Input::Start(start)) = first.input else {
                return Err("the first message of PortForward must be `start`".into());
            };
            attrs.namespace = start.namespace;
            attrs.name = start.name;
        }
        Shape::TokenRequest => {
            let request = de::<skiff::pb::authentication::v1::TokenRequest>(message)?;
            let meta = request.metadata.unwrap_or_default();
            attrs.namespace = meta.namespace;
            attrs.name = meta.name;
            attrs.bound_pod = request
                .spec
                .and_then(|s| s.bound_object_ref)
                .filter(|r| r.kind == "Pod")
                .map(|r| (r.name, r.uid));
        }
    }
    Ok(())
}

/// Reads the body up to its first gRPC message (5-byte frame header, then
/// the message); returns the message and a body that yields everything
/// read, then the rest.
async fn peek(mut body: Body) -> Result<(Option<Bytes>, Body), Status> {
    let mut buf = BytesMut::new();
    let mut ended = false;
    let wanted = |buf: &BytesMut| -> Option<usize> {
        (buf.len() >= 5).then(|| 5 + u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize)
    };
    loop {
        if let Some(total) = wanted(&buf) {
            if total > MAX_PEEK {
                return Err(Status::resource_exhausted(format!(
                    "the request's first message is {total} bytes; at most {MAX_PEEK} are accepted"
                )));
            }
            if buf.len() >= total {
                break;
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(Status::cancelled(format!("reading the request: {e}"))),
            None => {
                ended = true;
                break;
            }
        }
    }
    let read = buf.freeze();
    let message = match wanted(&BytesMut::from(&read[..read.len().min(5)])) {
        Some(total) if read.len() >= total => {
            if read[0] != 0 {
                return Err(Status::invalid_argument(
                    "compressed requests are not accepted",
                ));
            }
            Some(read.slice(5..total))
        }
        _ => None,
    };
    let replay = if ended {
        Body::new(http_body_util::Full::new(read))
    } else {
        let first =
            futures::stream::once(
                async move { Ok::<_, tonic::Status>(http_body::Frame::data(read)) },
            );
        let rest = futures::TryStreamExt::map_err(http_body_util::BodyStream::new(body), |e| {
            Status::cancelled(format!("reading the request: {e}"))
        });
        Body::new(http_body_util::StreamBody::new(futures::StreamExt::chain(
            first, rest,
        )))
    };
    Ok((message, replay))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &impl prost::Message) -> Bytes {
        let bytes = message.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
        Bytes::from(out)
    }

    async fn attributes(path: &str, body: Bytes) -> (Option<Attributes>, Bytes) {
        let request = http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(Body::new(http_body_util::Full::new(body)))
            .unwrap();
        let (attrs, request) = read(request).await;
        let replayed = request.into_body().collect().await.unwrap().to_bytes();
        (attrs.unwrap(), replayed)
    }

    #[tokio::test]
    async fn an_update_status_names_its_object_and_the_body_is_replayed_whole() {
        let mut pod = skiff::pb::core::v1::Pod::default();
        let meta = skiff::Resource::metadata_mut(&mut pod);
        meta.name = "web".into();
        meta.namespace = "shop".into();
        let body = framed(&pod);
        let (attrs, replayed) = attributes("/skiff.core.v1.Pods/UpdateStatus", body.clone()).await;
        let attrs = attrs.unwrap();
        assert_eq!(
            (
                attrs.verb.as_str(),
                attrs.full_resource(),
                attrs.namespace.as_str(),
                attrs.name.as_str()
            ),
            ("update", "pods/status".to_string(), "shop", "web")
        );
        assert_eq!(replayed, body);
    }

    #[tokio::test]
    async fn gets_default_their_namespace_lists_do_not_and_cluster_kinds_have_none() {
        let get = skiff::pb::api::v1::GetRequest {
            namespace: String::new(),
            name: "x".into(),
        };
        let (attrs, _) = attributes("/skiff.core.v1.Secrets/Get", framed(&get)).await;
        assert_eq!(attrs.unwrap().namespace, "default");
        let list = skiff::pb::api::v1::ListRequest {
            label_selector: "a=b".into(),
            ..Default::default()
        };
        let (attrs, _) = attributes("/skiff.core.v1.Pods/List", framed(&list)).await;
        let attrs = attrs.unwrap();
        assert_eq!((attrs.namespace.as_str(), attrs.name.as_str()), ("", ""));
        let (attrs, _) = attributes("/skiff.core.v1.Nodes/Get", framed(&get)).await;
        let attrs = attrs.unwrap();
        assert_eq!((attrs.namespace.as_str(), attrs.name.as_str()), ("", "x"));
        let (attrs, _) = attributes(
            "/skiff.rbac.v1.ClusterRoles/List",
            framed(&skiff::pb::api::v1::ListRequest::default()),
        )
        .await;
        assert_eq!(attrs.unwrap().group, "rbac.authorization.k8s.io");
    }

    #[tokio::test]
    async fn attach_is_judged_on_the_start_the_handler_will_use() {
        use skiff::pb::core::v1::pod_exec_input::Input;
        use skiff::pb::core::v1::{PodExecInput, PodExecRequest};
        // Two `start`s around another input: the oneof keeps the last one
        // whole, and so must the check.
        let mut bytes = Vec::new();
        for input in [
            Input::Start(PodExecRequest {
                namespace: "a".into(),
                name: "web".into(),
                ..Default::default()
            }),
            Input::CloseStdin(false),
            Input::Start(PodExecRequest {
                name: "web".into(),
                ..Default::default()
            }),
        ] {
            bytes.extend(prost::Message::encode_to_vec(&PodExecInput {
                input: Some(input),
            }));
        }
        let mut framed_bytes = vec![0u8];
        framed_bytes.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        framed_bytes.extend(bytes);
        let (attrs, _) =
            attributes("/skiff.core.v1.PodExec/Attach", Bytes::from(framed_bytes)).await;
        let attrs = attrs.unwrap();
        assert_eq!(
            (attrs.namespace.as_str(), attrs.name.as_str()),
            ("default", "web")
        );
        // A first message that is not `start` is refused.
        let stdin = PodExecInput {
            input: Some(Input::Stdin(b"x".to_vec())),
        };
        let request = http::Request::builder()
            .uri("http://x/skiff.core.v1.PodExec/Attach")
            .body(Body::new(http_body_util::Full::new(framed(&stdin))))
            .unwrap();
        assert!(read(request).await.0.is_err());
    }

    #[tokio::test]
    async fn reflection_and_unknown_services_need_only_an_identity() {
        let (attrs, _) = attributes(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            Bytes::new(),
        )
        .await;
        assert!(attrs.is_none());
        assert!(is_public("/grpc.health.v1.Health/Check"));
    }

    #[test]
    fn a_refusal_reads_like_kubernetes() {
        let attrs = Attributes {
            verb: "list".into(),
            resource: "pods".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        assert_eq!(
            attrs.forbidden("jane", ""),
            "pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
    }
}
