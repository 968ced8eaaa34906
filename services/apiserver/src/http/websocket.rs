//! WebSockets on upgraded connections, as `exec`, `attach` and
//! `portforward` speak them: the 101 answer and the server's side.

use http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tonic::body::Body;

use super::Reply;

/// The largest WebSocket message or frame read from a client (the Python
/// client sends port-forward data in 1 MiB pieces behind a channel byte).
const MAX_MESSAGE: usize = 1024 * 1024 + 1024;

/// The server's side of a WebSocket on an upgraded connection.
pub(super) async fn server<S>(io: S) -> tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await
}

/// How WebSockets are read: client-go sends stdin and tunnelled SPDY in
/// 32 KiB pieces, so nothing needs more than [`MAX_MESSAGE`].
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The 101 answer accepting a WebSocket with the client's `key` and the
/// chosen `protocol`.
pub(super) fn switching_protocols(key: &str, protocol: &'static str) -> Reply {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut reply = http::Response::new(Body::empty());
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = reply.headers_mut();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    headers.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    reply
}
