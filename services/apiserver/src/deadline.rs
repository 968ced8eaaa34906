//! Every request has a deadline, as kube-apiserver's `--request-timeout`:
//! 60 s, 30 s for reads; a request still running then is answered with
//! DEADLINE_EXCEEDED (HTTP: 504, reason `Timeout`). Long-running requests
//! — watches, logs followed, exec, attach, port-forward, and anything
//! upgraded to another protocol — run for as long as their client keeps
//! them.
//!
//! The work a write started goes on in the API actor after its caller has
//! been answered (as in Kubernetes, a timed-out write may still land); no
//! write is cut in half.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::body::Body;

/// How long a write may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a read (get, list) may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// gRPC methods that stream for as long as the client wants.
const STREAMING_METHODS: &[&str] = &["Watch", "Stream", "ServerReflectionInfo"];
/// gRPC services that only stream (logs, exec, attach, port-forward).
const STREAMING_SERVICES: &[&str] = &["PodLogs", "PodExec", "PodAttach", "PodPortForward"];
/// HTTP subresources that stream.
const STREAMING_SUBRESOURCES: &[&str] = &["/exec", "/attach", "/portforward", "/proxy"];

/// The deadline of a request, or none for a long-running one.
pub fn deadline_of<B>(request: &http::Request<B>) -> Option<Duration> {
    let path = request.uri().path();
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        // `/skiff.core.v1.Pods/Get`
        let (service, method) = path.trim_start_matches('/').rsplit_once('/')?;
        let service = service.rsplit('.').next().unwrap_or(service);
        if STREAMING_METHODS.contains(&method)
            || STREAMING_SERVICES.iter().any(|s| service.starts_with(s))
        {
            return None;
        }
        return Some(if matches!(method, "Get" | "List") {
            READ_TIMEOUT
        } else {
            WRITE_TIMEOUT
        });
    }
    if request.headers().contains_key(http::header::UPGRADE)
        || STREAMING_SUBRESOURCES.iter().any(|s| path.ends_with(s))
    {
        return None;
    }
    let query = request.uri().query().unwrap_or("");
    // The flags as the HTTP door reads them (Go's strconv.ParseBool).
    let streaming = query.split('&').any(|pair| {
        pair.split_once('=').is_some_and(|(key, value)| {
            matches!(key, "watch" | "follow")
                && matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
        })
    }) || path.contains("/watch/");
    if streaming {
        return None;
    }
    Some(if request.method() == http::Method::GET {
        READ_TIMEOUT
    } else {
        WRITE_TIMEOUT
    })
}

/// The answer to a request that ran out of time.
fn timed_out(grpc: bool, after: Duration) -> http::Response<Body> {
    let message = format!(
        "the request did not finish within {}s (the server's request timeout); a write may still take effect: read the object again",
        after.as_secs()
    );
    if grpc {
        return tonic::Status::deadline_exceeded(message).into_http();
    }
    let status = crate::http::Failure::new(504, "Timeout", message).to_json();
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(
        bytes::Bytes::from(status.to_string()),
    )));
    *response.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// See the module doc.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = deadline_of(&request);
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let future = self.inner.call(request);
        Box::pin(async move {
            let Some(after) = deadline else {
                return future.await;
            };
            match tokio::time::timeout(after, future).await {
                Ok(answer) => answer,
                Err(_) => Ok(timed_out(grpc, after)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    }

    fn rest(method: &str, uri: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
    }

    #[test]
    fn reads_writes_and_long_running_requests_get_their_deadlines() {
        assert_eq!(
            deadline_of(&grpc("/skiff.core.v1.Pods/Get")),
            Some(READ_TIMEOUT)
        );
        assert_eq!(
            deadline_of(&grpc("/skiff.core.v1.Pods/List")),
            Some(READ_TIMEOUT)
        );
        assert_eq!(
            deadline_of(&grpc("/skiff.core.v1.Pods/Create")),
            Some(WRITE_TIMEOUT)
        );
        assert_eq!(deadline_of(&grpc("/skiff.core.v1.Pods/Watch")), None);
        assert_eq!(deadline_of(&grpc("/skiff.core.v1.PodLogs/Logs")), None);
        assert_eq!(deadline_of(&grpc("/skiff.core.v1.PodExec/Exec")), None);
        assert_eq!(
            deadline_of(&rest("GET", "/api/v1/namespaces/default/pods")),
            Some(READ_TIMEOUT)
        );
        assert_eq!(
            deadline_of(&rest("POST", "/api/v1/namespaces/default/pods")),
            Some(WRITE_TIMEOUT)
        );
        assert_eq!(
            deadline_of(&rest("GET", "/api/v1/pods?watch=true&resourceVersion=5")),
            None
        );
        assert_eq!(
            deadline_of(&rest("GET", "/api/v1/pods?resourceVersion=5&watch=True")),
            None
        );
        assert_eq!(
            deadline_of(&rest("GET", "/api/v1/namespaces/d/pods/p/log?follow=true")),
            None
        );
        assert_eq!(
            deadline_of(&rest("POST", "/api/v1/namespaces/d/pods/p/exec")),
            None
        );
        assert_eq!(
            deadline_of(&rest("POST", "/api/v1/namespaces/d/pods/p/portforward")),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_is_answered_timeout() {
        use tower::{Layer as _, ServiceExt as _};
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Infallible>(http::Response::new(Body::empty()))
        });
        let service = DeadlineLayer.layer(slow);
        let answer = service
            .clone()
            .oneshot(rest("GET", "/api/v1/pods"))
            .await
            .unwrap();
        assert_eq!(answer.status(), http::StatusCode::GATEWAY_TIMEOUT);
        let answer = service
            .oneshot(grpc("/skiff.core.v1.Pods/Create"))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(answer.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("60s"), "{status:?}");
    }
}
