//! `pods/portforward` (`kubectl port-forward`): Kubernetes' port-forward
//! protocol (`portforward.k8s.io`) over SPDY/3.1, either tunnelled in a
//! WebSocket (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.35 asks for
//! first) or on the upgraded connection itself (`Upgrade: SPDY/3.1`, its
//! fallback).
//!
//! The client opens two streams per connection it forwards, both with the
//! headers `port` and `requestid`: an error stream (`streamtype: error`),
//! on which the server writes why forwarding failed, if it did, and then
//! ends; and a data stream (`streamtype: data`) carrying the connection's
//! bytes both ways. Each pair becomes one `PodPortForward` connection
//! through the pod's agent, the same path the gRPC door takes.
//!
//! The WebSocket channel protocol (`v4.channel.k8s.io`, the Python
//! client's) is in `portforward/channels.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt as _, Stream, StreamExt as _};
use skiff::pb::core::v1::port_forward_input::Input;
use skiff::pb::core::v1::{PortForwardInput, PortForwardStart};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::spdy::{self, Frame};
use super::{Ctx, Failure, Reply, Request};
use crate::logs::PodLogsService;

mod channels;

/// The port-forward protocol's name, as negotiated.
const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol tunnelling SPDY.
const TUNNELLED: &str = "SPDY/3.1+portforward.k8s.io";
/// The WebSocket subprotocol of channels: per port, data on channel 2i
/// and errors on 2i+1, each opened by a frame of the port number.
const CHANNELS: &str = "v4.channel.k8s.io";
/// The most connections forwarded at once on one port-forward session.
const MAX_PAIRS: usize = 256;
/// The most ports of one WebSocket channel session (two channels each,
/// numbered in a byte).
const MAX_CHANNEL_PORTS: usize = 64;
/// The most bytes buffered for a data stream whose pair is not complete.
const MAX_EARLY: usize = 256 * 1024;
/// How long a pair may wait for its second stream (the kubelet's stream
/// creation timeout).
const PAIRING: Duration = Duration::from_secs(30);
/// How long the client's bytes may wait for a pod that does not read them
/// before its connection is reset: the session reads every connection's
/// frames in one loop, which must not stall for one of them.
const PATIENCE: Duration = Duration::from_secs(10);

/// Serves `pods/NAME/portforward`.
///
/// # Errors
/// Not allowed, or not an upgrade to one of the two protocols.
pub async fn serve(
    ctx: Ctx,
    logs: Arc<PodLogsService>,
    mut req: Request,
) -> Result<Reply, Failure> {
    let t = req.target.clone();
    ctx.authorize("create", &t, &t.name, None).await?;
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let upgrade = header("upgrade");
    let offered = header("sec-websocket-protocol");
    let offers = |protocol: &str| offered.split(',').any(|o| o.trim() == protocol);
    let transport = if upgrade.eq_ignore_ascii_case("websocket") {
        if offers(TUNNELLED) {
            Transport::Tunnelled
        } else if offers(CHANNELS) {
            Transport::Channels(ports_of(&req)?)
        } else {
            return Err(Failure::bad_request(format!(
                "no protocol Skiff speaks among {offered:?}: port forwarding offers {TUNNELLED:?} and {CHANNELS:?} over a WebSocket"
            )));
        }
    } else if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Err(Failure::bad_request(
            "Upgrade request required: port forwarding is served over SPDY/3.1, tunnelled in a WebSocket or not, or over WebSocket channels",
        ));
    } else if !header("x-stream-protocol-version")
        .split(',')
        .any(|p| p.trim() == PROTOCOL)
    {
        return Err(Failure::bad_request(format!(
            "unable to upgrade: no protocol Skiff speaks was offered: port forwarding speaks {PROTOCOL:?}"
        )));
    } else {
        Transport::Spdy
    };
    let Some(on_upgrade) = req.upgrade.take() else {
        return Err(Failure::bad_request(
            "this connection cannot be upgraded (HTTP/1.1 is needed for port forwarding)",
        ));
    };
    let key = header("sec-websocket-key");
    let session = Session {
        logs,
        namespace: t.namespace.clone(),
        name: t.name.clone(),
    };
    let reply = match &transport {
        Transport::Tunnelled => super::websocket::switching_protocols(&key, TUNNELLED),
        Transport::Channels(_) => super::websocket::switching_protocols(&key, CHANNELS),
        Transport::Spdy => {
            let mut reply = http::Response::new(tonic::body::Body::empty());
            *reply.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            let headers = reply.headers_mut();
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("Upgrade"),
            );
            headers.insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("SPDY/3.1"),
            );
            headers.insert(
                "x-stream-protocol-version",
                http::HeaderValue::from_static(PROTOCOL),
            );
            reply
        }
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "port-forward: the upgrade did not happen");
                return;
            }
        };
        match transport {
            Transport::Channels(ports) => {
                session
                    .channels(super::websocket::server(upgraded).await, ports)
                    .await
            }
            Transport::Tunnelled => {
                let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
                let (mut sink, source) = super::websocket::server(upgraded).await.split();
                let incoming = source
                    .take_while(|m| {
                        std::future::ready(matches!(m, Ok(m) if !matches!(m, Message::Close(_))))
                    })
                    .filter_map(|m| {
                        std::future::ready(match m {
                            Ok(Message::Binary(data)) => Some(data),
                            _ => None,
                        })
                    });
                let writer = tokio::spawn(async move {
                    let mut out_rx = out_rx;
                    while let Some(bytes) = out_rx.recv().await {
                        if sink.send(Message::Binary(bytes)).await.is_err() {
                            return;
                        }
                    }
                    let _ = sink.close().await;
                });
                session.run(incoming, out_tx).await;
                let _ = writer.await;
            }
            Transport::Spdy => {
                let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
                let (reader, mut writer) = tokio::io::split(upgraded);
                let incoming = tokio_util::io::ReaderStream::new(reader)
                    .take_while(|r| std::future::ready(r.is_ok()))
                    .filter_map(|r| std::future::ready(r.ok()));
                let writer = tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt as _;
                    let mut out_rx = out_rx;
                    while let Some(bytes) = out_rx.recv().await {
                        if writer.write_all(&bytes).await.is_err() {
                            return;
                        }
                        // Written is not sent until flushed (a buffered
                        // transport holds it): kubectl waits for each reply.
                        if out_rx.is_empty() && writer.flush().await.is_err() {
                            return;
                        }
                    }
                    let _ = writer.shutdown().await;
                });
                session.run(incoming, out_tx).await;
                let _ = writer.await;
            }
        }
    });
    Ok(reply)
}

/// How a port-forward session travels.
enum Transport {
    /// SPDY in WebSocket binary messages (kubectl).
    Tunnelled,
    /// SPDY on the upgraded connection (kubectl's fallback).
    Spdy,
    /// WebSocket channels, one pair per port of `?ports=` (the Python
    /// client).
    Channels(Vec<u16>),
}

/// The `ports` of a WebSocket channel session (`?ports=80,8080` or
/// repeated).
fn ports_of(req: &Request) -> Result<Vec<u16>, Failure> {
    let mut ports = Vec::new();
    for text in req
        .query
        .all("ports")
        .into_iter()
        .flat_map(|p| p.split(','))
    {
        let port = text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                Failure::bad_request(format!(
                    "ports: Invalid value: {text:?}: must be a port from 1 to 65535"
                ))
            })?;
        if ports.contains(&port) {
            return Err(Failure::bad_request(format!(
                "ports: Duplicate value: {port}"
            )));
        }
        ports.push(port);
    }
    if ports.is_empty() {
        return Err(Failure::bad_request(
            "ports: Required value: at least one port to forward (?ports=8080)",
        ));
    }
    if ports.len() > MAX_CHANNEL_PORTS {
        return Err(Failure::bad_request(format!(
            "ports: Too many: {} ports, at most {MAX_CHANNEL_PORTS} in one session",
            ports.len()
        )));
    }
    Ok(ports)
}

/// One port-forward session: the pod, and how to reach its agent.
struct Session {
    logs: Arc<PodLogsService>,
    namespace: String,
    name: String,
}

/// A forwarded connection's two streams.
struct Pair {
    port: String,
    error: Option<u32>,
    data: Option<u32>,
    /// When its first stream came.
    opened: Instant,
    /// Data the client sent before the pair was complete, and its size.
    early: Vec<Bytes>,
    early_bytes: usize,
    /// The client ended its side of the data stream early.
    early_fin: bool,
    /// Where the client's bytes go once forwarding started.
    to_pod: Option<mpsc::Sender<PortForwardInput>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Pair {
    fn new() -> Self {
        Self {
            port: String::new(),
            error: None,
            data: None,
            opened: Instant::now(),
            early: Vec::new(),
            early_bytes: 0,
            early_fin: false,
            to_pod: None,
            task: None,
        }
    }
}

/// How a forwarded connection ended: its request id and data stream, and
/// why it failed.
type Ended = (String, u32, Option<String>);

impl Session {
    /// Reads the client's frames until it goes away, forwarding each
    /// stream pair through the pod's agent.
    async fn run(self, incoming: impl Stream<Item = Bytes> + Send, out: mpsc::Sender<Bytes>) {
        let session = Arc::new(self);
        let mut incoming = std::pin::pin!(incoming);
        let mut reader = spdy::Reader::default();
        let mut writer = spdy::Writer::default();
        let mut pairs: HashMap<String, Pair> = HashMap::new();
        // Which pair each stream belongs to.
        let mut streams: HashMap<u32, String> = HashMap::new();
        let (ended_tx, mut ended_rx) = mpsc::channel::<Ended>(16);
        'session: loop {
            let bytes = tokio::select! {
                bytes = incoming.next() => match bytes {
                    Some(bytes) => bytes,
                    None => break,
                },
                Some((request, data, error)) = ended_rx.recv() => {
                    // (Not a later pair that reused the request id.)
                    if pairs.get(&request).is_some_and(|p| p.data == Some(data))
                        && let Some(pair) = pairs.remove(&request)
                    {
                        finish(&out, &mut streams, &pair, error).await;
                    }
                    continue;
                }
            };
            reader.push(&bytes);
            loop {
                let frame = match reader.next() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "port-forward: protocol error");
                        break 'session;
                    }
                };
                match frame {
                    Frame::SynStream {
                        id,
                        fin: _,
                        headers,
                    } => {
                        if out.send(writer.syn_reply(id)).await.is_err() {
                            break 'session;
                        }
                        let found = |name: &str| {
                            headers
                                .iter()
                                .find(|(n, _)| n == name)
                                .map(|(_, v)| v.clone())
                        };
                        let kind = found("streamtype").unwrap_or_default();
                        let port = found("port").unwrap_or_default();
                        // Clients before request ids paired a data stream
                        // with the error stream opened just before it.
                        let request = found("requestid").unwrap_or_else(|| match kind.as_str() {
                            "data" => id.saturating_sub(2).to_string(),
                            _ => id.to_string(),
                        });
                        let known = kind == "error" || kind == "data";
                        // Pairs whose second stream never came are given up.
                        let stale: Vec<String> = pairs
                            .iter()
                            .filter(|(_, p)| p.task.is_none() && p.opened.elapsed() > PAIRING)
                            .map(|(r, _)| r.clone())
                            .collect();
                        for request in stale {
                            if let Some(pair) = pairs.remove(&request) {
                                let error = "timed out waiting for the other stream of the pair";
                                finish(&out, &mut streams, &pair, Some(error.into())).await;
                            }
                        }
                        if !known || (!pairs.contains_key(&request) && pairs.len() >= MAX_PAIRS) {
                            let _ = out.send(spdy::rst_stream(id, spdy::REFUSED_STREAM)).await;
                            continue;
                        }
                        let pair = pairs.entry(request.clone()).or_insert_with(Pair::new);
                        let slot = if kind == "error" {
                            &mut pair.error
                        } else {
                            &mut pair.data
                        };
                        if slot.is_some() || (!pair.port.is_empty() && pair.port != port) {
                            let _ = out.send(spdy::rst_stream(id, spdy::PROTOCOL_ERROR)).await;
                            continue;
                        }
                        *slot = Some(id);
                        pair.port = port;
                        streams.insert(id, request.clone());
                        if let (Some(_), Some(data)) = (pair.error, pair.data) {
                            session.start(pair, data, &request, &out, ended_tx.clone());
                        }
                    }
                    Frame::Data { id, fin, data } => {
                        let Some(request) = streams.get(&id).cloned() else {
                            continue;
                        };
                        let Some(pair) = pairs.get_mut(&request) else {
                            continue;
                        };
                        if pair.data != Some(id) {
                            // The error stream is the server's to write.
                            continue;
                        }
                        let stuck = match pair.to_pod.clone() {
                            Some(to_pod) => {
                                if fin {
                                    pair.to_pod = None;
                                }
                                let mut inputs = Vec::with_capacity(2);
                                if !data.is_empty() {
                                    inputs.push(Input::Data(data.to_vec()));
                                }
                                if fin {
                                    inputs.push(Input::CloseWrite(true));
                                }
                                !deliver(&to_pod, inputs).await
                            }
                            None if pair.task.is_none() => {
                                if pair.early_bytes + data.len() > MAX_EARLY {
                                    let _ =
                                        out.send(spdy::rst_stream(id, spdy::PROTOCOL_ERROR)).await;
                                    continue;
                                }
                                if !data.is_empty() {
                                    pair.early_bytes += data.len();
                                    pair.early.push(data);
                                }
                                pair.early_fin |= fin;
                                false
                            }
                            None => false,
                        };
                        if stuck {
                            // A pod that does not read must not stall the
                            // session's other connections: this one is reset.
                            if let Some(pair) = pairs.remove(&request) {
                                if let Some(task) = &pair.task {
                                    task.abort();
                                }
                                let _ = out.send(spdy::rst_stream(id, spdy::CANCEL)).await;
                                let error = format!(
                                    "the pod did not read what was sent to its port {} for {PATIENCE:?}",
                                    pair.port
                                );
                                finish(&out, &mut streams, &pair, Some(error)).await;
                            }
                        }
                    }
                    Frame::RstStream { id } => {
                        // The client is done with the connection: stop
                        // forwarding it and end its error stream, which
                        // the client waits for.
                        let Some(request) = streams.get(&id).cloned() else {
                            continue;
                        };
                        if let Some(pair) = pairs.remove(&request) {
                            if let Some(task) = &pair.task {
                                task.abort();
                            }
                            finish(&out, &mut streams, &pair, None).await;
                        }
                    }
                    Frame::Ping { id } => {
                        if out.send(spdy::ping(id)).await.is_err() {
                            break 'session;
                        }
                    }
                    Frame::GoAway => break 'session,
                    Frame::Ignored => {}
                }
            }
        }
        for pair in pairs.values() {
            if let Some(task) = &pair.task {
                task.abort();
            }
        }
    }

    /// Starts forwarding a complete pair: a connection to the pod's port
    /// through its agent, its bytes sent back on the data stream.
    fn start(
        self: &Arc<Self>,
        pair: &mut Pair,
        data_stream: u32,
        request: &str,
        out: &mpsc::Sender<Bytes>,
        ended: mpsc::Sender<Ended>,
    ) {
        // Room for what came early, so none of it is dropped.
        let (to_pod, from_client) = mpsc::channel::<PortForwardInput>(64 + pair.early.len() + 1);
        pair.early_bytes = 0;
        for data in pair.early.drain(..) {
            let _ = to_pod.try_send(PortForwardInput {
                input: Some(Input::Data(data.to_vec())),
            });
        }
        if pair.early_fin {
            let _ = to_pod.try_send(PortForwardInput {
                input: Some(Input::CloseWrite(true)),
            });
        } else {
            pair.to_pod = Some(to_pod);
        }
        let session = Arc::clone(self);
        let out = out.clone();
        let request = request.to_string();
        let port_text = pair.port.clone();
        pair.task = Some(tokio::spawn(async move {
            let error = session
                .forward(&port_text, data_stream, from_client, &out)
                .await
                .err();
            let _ = ended.send((request, data_stream, error)).await;
        }));
    }

    async fn forward(
        &self,
        port_text: &str,
        data_stream: u32,
        from_client: mpsc::Receiver<PortForwardInput>,
        out: &mpsc::Sender<Bytes>,
    ) -> Result<(), String> {
        let port = port_text
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {port_text:?}: must be between 1 and 65535"))?;
        let start = PortForwardStart {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port: i32::from(port),
        };
        let mut outputs = self
            .logs
            .port_forward_with(
                start,
                tokio_stream::wrappers::ReceiverStream::new(from_client),
            )
            .await
            .map_err(|s| s.message().to_string())?;
        while let Some(output) = outputs.next().await {
            let output = output.map_err(|s| s.message().to_string())?;
            for piece in output.data.chunks(spdy::MAX_DATA) {
                if out
                    .send(spdy::data(data_stream, false, piece))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Hands the client's `inputs` to a connection's task, waiting at most
/// [`PATIENCE`] for room; false when the pod did not take them in time (a
/// connection already over takes anything).
async fn deliver(to_pod: &mpsc::Sender<PortForwardInput>, inputs: Vec<Input>) -> bool {
    for input in inputs {
        let input = PortForwardInput { input: Some(input) };
        match to_pod.try_send(input) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(input)) => {
                if tokio::time::timeout(PATIENCE, to_pod.send(input))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        }
    }
    true
}

/// Ends a pair: the data stream's server side, then the error stream with
/// the error written first, if any (the client reads the error stream to
/// its end before it lets the connection go).
async fn finish(
    out: &mpsc::Sender<Bytes>,
    streams: &mut HashMap<u32, String>,
    pair: &Pair,
    error: Option<String>,
) {
    if let Some(data) = pair.data {
        streams.remove(&data);
        let _ = out.send(spdy::data(data, true, b"")).await;
    }
    if let Some(id) = pair.error {
        streams.remove(&id);
        if let Some(error) = error {
            let _ = out.send(spdy::data(id, false, error.as_bytes())).await;
        }
        let _ = out.send(spdy::data(id, true, b"")).await;
    }
}
