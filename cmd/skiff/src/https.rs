//! One HTTPS request to a Kubernetes API (Skiff's own, for `skiff get
//! --raw`, or the cluster a server runs in, for `--publish-credentials`):
//! HTTP/2 over the TLS a client config or a service account describes.

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tower::ServiceExt as _;

/// How long one request may take, connection included.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where and as whom requests go.
pub(crate) struct Target {
    /// `https://host:port`.
    pub(crate) base: String,
    /// The CA the server must chain to, and a client certificate if any.
    pub(crate) tls: skiff_client::ClientTls,
    /// A bearer token (a service account's), if any.
    pub(crate) token: Option<String>,
}

/// A reply: its status and body.
pub(crate) struct Reply {
    pub(crate) status: http::StatusCode,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as text (lossy), for messages.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Target {
    /// `method path` with a JSON `body`.
    ///
    /// # Errors
    /// The server cannot be reached or the exchange fails (a reply with
    /// an error status is a [`Reply`], not an error).
    pub(crate) async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Reply> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .with_context(|| format!("{} took longer than {TIMEOUT:?}", self.base))?
    }

    async fn exchange(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Reply> {
        let uri: http::Uri = format!("{}{path}", self.base)
            .parse()
            .with_context(|| format!("{}{path} is not a URL", self.base))?;
        let host = uri.host().context("a URL without a host")?.to_string();
        let connector = self.tls.connector(&host)?;
        let io = connector
            .oneshot(uri.clone())
            .await
            .with_context(|| format!("reaching {}", self.base))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .with_context(|| format!("speaking HTTP/2 to {}", self.base))?;
        let driver = tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let payload = match body {
            Some(body) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(body)?)
            }
            None => Bytes::new(),
        };
        let response = sender
            .send_request(request.body(Full::new(payload))?)
            .await
            .with_context(|| format!("asking {}", self.base))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading {}'s reply", self.base))?
            .to_bytes();
        driver.abort();
        Ok(Reply { status, body })
    }
}
