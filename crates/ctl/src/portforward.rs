//! `port-forward POD [LOCAL:]REMOTE...`: local ports that lead to a pod's
//! ports, each accepted connection carried by one
//! `skiff.core.v1.PodPortForward/PortForward` stream (kubectl's
//! port-forward over the gRPC door).

use futures::StreamExt as _;
use skiff::pb::core::v1::pod_port_forward_client::PodPortForwardClient;
use skiff::pb::core::v1::port_forward_input::Input;
use skiff::pb::core::v1::{PortForwardInput, PortForwardStart};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Ctl, CtlError, Result};

/// One `[LOCAL:]REMOTE` argument; LOCAL 0 (`:REMOTE`) picks a free port,
/// a lone REMOTE listens on the same number.
///
/// # Errors
/// Not a port number.
pub fn parse_ports(spec: &str) -> Result<(u16, u16)> {
    let port = |text: &str, what: &str| {
        text.parse::<u16>().map_err(|_| {
            CtlError(format!(
                "error: invalid {what} port {text:?} in {spec:?}: ports are numbers from 1 to 65535"
            ))
        })
    };
    let (local, remote) = match spec.split_once(':') {
        Some(("", remote)) => (0, port(remote, "remote")?),
        Some((local, remote)) => (port(local, "local")?, port(remote, "remote")?),
        None => {
            let remote = port(spec, "remote")?;
            (remote, remote)
        }
    };
    if remote == 0 {
        return Err(CtlError(format!(
            "error: remote port in {spec:?} must be between 1 and 65535"
        )));
    }
    Ok((local, remote))
}

impl Ctl {
    /// Listens on `address` for each `(local, remote)` pair and forwards
    /// every connection to the pod's `remote` port, until interrupted.
    /// Prints `Forwarding from ADDRESS:LOCAL -> REMOTE` per port once
    /// listening, and `Handling connection for LOCAL` per connection, as
    /// kubectl does.
    ///
    /// # Errors
    /// The pod does not exist or does not run; a local port is taken.
    pub async fn port_forward(&self, pod: &str, ports: &[(u16, u16)], address: &str) -> Result<()> {
        let pod = pod
            .strip_prefix("pod/")
            .or_else(|| pod.strip_prefix("pods/"))
            .unwrap_or(pod)
            .to_string();
        // A pod that is not there or not running is refused now, not at
        // the first connection.
        let found = crate::kind_of("pod")?
            .get(&self.channel, &self.namespace, &pod)
            .await
            .map_err(|s| self.server_error(s, "Pod", &pod))?;
        let phase = found["status"]["phase"].as_str().unwrap_or("").to_string();
        if phase != "Running" {
            return Err(CtlError(format!(
                "error: unable to forward port because pod is not running. Current status={phase}"
            )));
        }
        let mut listeners = Vec::new();
        for (local, remote) in ports {
            let listener = tokio::net::TcpListener::bind((address, *local))
                .await
                .map_err(|e| {
                    CtlError(format!("error: unable to listen on {address}:{local}: {e}"))
                })?;
            let bound = listener.local_addr().map(|a| a.port()).unwrap_or(*local);
            say(&format!("Forwarding from {address}:{bound} -> {remote}"));
            listeners.push((listener, bound, *remote));
        }
        let mut accepting = tokio::task::JoinSet::new();
        for (listener, local, remote) in listeners {
            let client = PodPortForwardClient::new(self.channel.clone());
            let start = PortForwardStart {
                namespace: self.namespace.clone(),
                name: pod.clone(),
                port: i32::from(remote),
            };
            accepting.spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    say(&format!("Handling connection for {local}"));
                    let client = client.clone();
                    let start = start.clone();
                    tokio::spawn(async move {
                        if let Err(e) = forward(client, start, socket).await {
                            eprintln!(
                                "error: an error occurred forwarding {local} -> {remote}: {e}"
                            );
                        }
                    });
                }
            });
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = accepting.join_next() => {}
        }
        Ok(())
    }
}

/// A line on stdout; a reader gone away is no reason to stop forwarding.
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Carries one accepted connection over one stream.
async fn forward(
    mut client: PodPortForwardClient<tonic::transport::Channel>,
    start: PortForwardStart,
    socket: tokio::net::TcpStream,
) -> std::result::Result<(), String> {
    let (mut reader, mut writer) = socket.into_split();
    let (tx, rx) = tokio::sync::mpsc::channel::<PortForwardInput>(64);
    let _ = tx
        .send(PortForwardInput {
            input: Some(Input::Start(start)),
        })
        .await;
    // What the local side sends, until it half-closes.
    let sending = tokio::spawn(async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Input::Data(buffer[..n].to_vec());
                    if tx
                        .send(PortForwardInput { input: Some(data) })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = tx
            .send(PortForwardInput {
                input: Some(Input::CloseWrite(true)),
            })
            .await;
        // The stream stays open for the pod's answer while `tx` lives.
        std::future::pending::<()>().await;
    });
    let outputs = client
        .port_forward(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let result = async {
        let mut outputs = outputs.map_err(|s| s.message().to_string())?.into_inner();
        while let Some(output) = outputs.next().await {
            let output = output.map_err(|s| s.message().to_string())?;
            writer
                .write_all(&output.data)
                .await
                .map_err(|e| e.to_string())?;
        }
        let _ = writer.shutdown().await;
        Ok(())
    }
    .await;
    sending.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_as_kubectl_reads_them() {
        assert_eq!(parse_ports("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_ports("18080:80").unwrap(), (18080, 80));
        assert_eq!(parse_ports(":80").unwrap(), (0, 80));
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("80:0").is_err());
        assert!(parse_ports("70000").is_err());
    }
}
