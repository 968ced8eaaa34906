//! `pods/portforward` over WebSocket channels (`v4.channel.k8s.io`, what
//! the Python client speaks): one connection per port of `?ports=`, its
//! bytes on channel 2i both ways and why it failed on channel 2i+1.

use std::sync::Arc;

use futures::{SinkExt as _, StreamExt as _};
use skiff::pb::core::v1::port_forward_input::Input;
use skiff::pb::core::v1::{PortForwardInput, PortForwardStart};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{PATIENCE, Session, deliver};

impl Session {
    /// A WebSocket channel session: one connection to each of `ports`,
    /// its bytes on channel 2i both ways, why it failed on 2i+1; each
    /// channel opened by a frame of its port number (little-endian). The
    /// socket closes when every connection has, or when the client goes.
    pub(super) async fn channels<S>(
        self,
        socket: tokio_tungstenite::WebSocketStream<S>,
        ports: Vec<u16>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut source) = socket.split();
        for (i, port) in ports.iter().enumerate() {
            let [low, high] = port.to_le_bytes();
            for channel in [2 * i, 2 * i + 1] {
                let opening = vec![channel as u8, low, high];
                if sink.send(Message::Binary(opening.into())).await.is_err() {
                    return;
                }
            }
        }
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let session = Arc::new(self);
        let mut to_pods = Vec::with_capacity(ports.len());
        let mut stops = Vec::with_capacity(ports.len());
        let mut connections = tokio::task::JoinSet::new();
        fn framed(channel: usize, data: &[u8]) -> Message {
            let mut frame = Vec::with_capacity(data.len() + 1);
            frame.push(channel as u8);
            frame.extend_from_slice(data);
            Message::Binary(frame.into())
        }
        for (i, port) in ports.iter().enumerate() {
            let (to_pod, from_client) = mpsc::channel::<PortForwardInput>(64);
            to_pods.push(Some(to_pod));
            let (session, out, port) = (Arc::clone(&session), out_tx.clone(), *port);
            stops.push(connections.spawn(async move {
                let start = PortForwardStart {
                    namespace: session.namespace.clone(),
                    name: session.name.clone(),
                    port: i32::from(port),
                };
                let inputs = tokio_stream::wrappers::ReceiverStream::new(from_client);
                let error = match session.logs.port_forward_with(start, inputs).await {
                    Ok(mut outputs) => loop {
                        match outputs.next().await {
                            Some(Ok(output)) => {
                                if out.send(framed(2 * i, &output.data)).await.is_err() {
                                    break None;
                                }
                            }
                            Some(Err(status)) => break Some(status.message().to_string()),
                            None => break None,
                        }
                    },
                    Err(status) => Some(status.message().to_string()),
                };
                if let Some(error) = error {
                    let _ = out.send(framed(2 * i + 1, error.as_bytes())).await;
                }
            }));
        }
        loop {
            tokio::select! {
                message = source.next() => match message {
                    Some(Ok(Message::Binary(data))) => {
                        let Some((&channel, rest)) = data.split_first() else {
                            continue;
                        };
                        let channel = usize::from(channel);
                        // Only data channels are the client's to write.
                        let Some(slot) = to_pods.get_mut(channel / 2).filter(|_| channel % 2 == 0) else {
                            continue;
                        };
                        if let Some(to_pod) = slot.clone()
                            && !rest.is_empty()
                            && !deliver(&to_pod, vec![Input::Data(rest.to_vec())]).await
                        {
                            // A pod that does not read: its connection is
                            // given up, and the client told why (the
                            // others go on).
                            *slot = None;
                            let port = channel / 2;
                            stops[port].abort();
                            let why = format!(
                                "the pod did not read what was sent to its port {} for {PATIENCE:?}",
                                ports[port]
                            );
                            let _ = out_tx.send(framed(channel + 1, why.as_bytes())).await;
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                done = connections.join_next() => {
                    if done.is_none() {
                        break;
                    }
                }
            }
        }
        // The client gone, or every connection over: what is left ends.
        drop(out_tx);
        drop(to_pods);
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        let _ = writer.await;
    }
}
