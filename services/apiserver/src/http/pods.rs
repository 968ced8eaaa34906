//! The pods' streaming subresources over HTTP: `log` (a plain-text
//! stream, `kubectl logs [-f]`) and `exec` (a WebSocket speaking
//! Kubernetes' `v5.channel.k8s.io` / `v4.channel.k8s.io` protocols:
//! `kubectl exec [-it]`, `kubectl cp`); `portforward` has a module of its
//! own. Both are proxied from the pod's
//! node agent by the same code as the gRPC `PodLogs` and `PodExec`.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use skiff::pb::core::v1::pod_exec_input::Input;
use skiff::pb::core::v1::pod_exec_output::Output;
use skiff::pb::core::v1::{PodExecInput, PodExecRequest, PodLogsRequest, TerminalSize};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};

use super::{Ctx, Failure, Reply, Request, websocket};
use crate::logs::PodLogsService;

/// The channel protocols offered, preferred first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Channels of the protocols.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the client closes a channel (`[255, channel]`).
const CLOSE: u8 = 255;
/// Whether this module serves the request.
pub fn handles(req: &Request) -> bool {
    req.target.group.is_empty()
        && req.target.resource == "pods"
        && matches!(
            req.target.subresource.as_str(),
            "log" | "exec" | "attach" | "portforward" | "eviction"
        )
}

/// Serves `log`, `exec`, `eviction` and `portforward`.
///
/// # Errors
/// What to answer instead, as a Status.
pub async fn serve(ctx: Ctx, logs: Arc<PodLogsService>, req: Request) -> Result<Reply, Failure> {
    if req.target.namespace.is_empty() || req.target.name.is_empty() {
        return Err(Failure::no_route());
    }
    match (&req.method, req.target.subresource.as_str()) {
        (&Method::GET, "log") => log(ctx, &logs, req).await,
        (&Method::GET | &Method::POST, "exec" | "attach") => exec(ctx, logs, req).await,
        (&Method::POST, "eviction") => evict(ctx, req).await,
        (&Method::GET | &Method::POST, "portforward") => {
            super::portforward::serve(ctx, logs, req).await
        }
        (method, sub) => Err(Failure::not_allowed(
            &method.to_string().to_lowercase(),
            &format!("pods/{sub}"),
        )),
    }
}

/// An agent's or a lookup's error, as Kubernetes words the common ones.
fn failure(status: &tonic::Status) -> Failure {
    match status.code() {
        // Not scheduled, not started, no such container: the request
        // cannot be served as asked (Kubernetes' 400).
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
            Failure::bad_request(status.message())
        }
        _ => Failure::from_grpc(status),
    }
}

async fn log(ctx: Ctx, logs: &PodLogsService, req: Request) -> Result<Reply, Failure> {
    let t = &req.target;
    ctx.authorize("get", t, &t.name, None).await?;
    let q = &req.query;
    let since_seconds = match (
        q.int("sinceSeconds").map_err(Failure::bad_request)?,
        q.get("sinceTime"),
    ) {
        (Some(s), _) => Some(s),
        (None, Some(time)) => {
            let at =
                time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                    Failure::bad_request(format!("sinceTime: Invalid value: {time:?}: {e}"))
                })?;
            Some(
                (time::OffsetDateTime::now_utc() - at)
                    .whole_seconds()
                    .max(0),
            )
        }
        (None, None) => None,
    };
    let limit = q
        .int("limitBytes")
        .map_err(Failure::bad_request)?
        .filter(|l| *l > 0)
        .map(|l| l as usize);
    let request = PodLogsRequest {
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        container: q.str("container").to_string(),
        follow: q.flag("follow"),
        tail_lines: q.int("tailLines").map_err(Failure::bad_request)?,
        since_seconds,
        previous: q.flag("previous"),
        timestamps: q.flag("timestamps"),
    };
    let chunks = logs
        .log(request)
        .await
        .map_err(|s| failure(&s))?
        .into_inner();
    let mut left = limit.unwrap_or(usize::MAX);
    let bytes = chunks
        .take_while(|chunk| std::future::ready(chunk.is_ok()))
        .filter_map(|chunk| std::future::ready(chunk.ok()))
        .map(move |chunk| {
            let mut data = Bytes::from(chunk.data);
            data.truncate(left);
            left -= data.len();
            data
        })
        .take_while(|data| std::future::ready(!data.is_empty()));
    Ok(super::streamed("text/plain", bytes))
}

/// `pods/eviction` (`kubectl drain`): the registry's eviction, which
/// deletes the pod with the Eviction's DeleteOptions unless its
/// PodDisruptionBudget allows no disruption now (429).
async fn evict(ctx: Ctx, req: Request) -> Result<Reply, Failure> {
    use crate::actor::{Op, Reply as ActorReply};
    let t = &req.target;
    ctx.authorize("create", t, &t.name, None).await?;
    let eviction = super::objects::body_json(&req)?;
    let name = eviction
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(&t.name);
    if name != t.name {
        return Err(Failure::bad_request(format!(
            "name in URL does not match name in Eviction object: {:?} != {name:?}",
            t.name
        )));
    }
    let options = super::field(&eviction, "deleteOptions", "delete_options")
        .cloned()
        .unwrap_or(json!({}));
    let (delete, dry) = super::objects::delete_options_in(&options, &req)?;
    // The Eviction as the gRPC door receives it.
    let eviction = skiff::pb::policy::v1::Eviction {
        metadata: Some(skiff::pb::meta::v1::ObjectMeta {
            name: t.name.clone(),
            namespace: t.namespace.clone(),
            ..Default::default()
        }),
        delete_options: Some(skiff::pb::policy::v1::DeleteOptions {
            grace_period_seconds: delete.grace_period_seconds,
            preconditions: delete.preconditions,
            dry_run: Vec::new(),
            propagation_policy: delete.propagation_policy,
        }),
        ..Default::default()
    };
    match ctx
        .actor
        .call(Op::<skiff::pb::core::v1::Pod>::Evict(
            Box::new(eviction),
            dry,
        ))
        .await
    {
        Ok(ActorReply::Object(_)) => Ok(super::json(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )),
        Ok(_) => Err(Failure::new(500, "InternalError", "unexpected reply")),
        Err(e) => Err(Failure::from_api(&e, "Pod")),
    }
}

/// The command's end as the channel protocols carry it (client-go reads
/// the exit code from the first cause).
fn exit_status(code: i32, command: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// One frame of a channel.
fn framed(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(frame.into())
}

/// `exec` runs a command in a container; `attach` joins the container's
/// own process (no command; its output, stdin if the container keeps it
/// open, resizes if it has a terminal). The same WebSocket protocols.
async fn exec(ctx: Ctx, logs: Arc<PodLogsService>, mut req: Request) -> Result<Reply, Failure> {
    let t = req.target.clone();
    ctx.authorize("create", &t, &t.name, None).await?;
    let attach = t.subresource == "attach";
    let q = &req.query;
    let command: Vec<String> = q.all("command").into_iter().map(str::to_string).collect();
    if command.is_empty() && !attach {
        return Err(Failure::bad_request("you must specify at least 1 command"));
    }
    if !command.is_empty() && attach {
        return Err(Failure::bad_request(
            "attach runs no command: it joins the container's own process (use exec)",
        ));
    }
    let start = PodExecRequest {
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        container: q.str("container").to_string(),
        command: command.clone(),
        timeout_seconds: None,
        tty: q.flag("tty"),
        stdin: q.flag("stdin"),
    };
    let header = |name: http::header::HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let key = header(http::header::SEC_WEBSOCKET_KEY);
    let offered = header(http::header::SEC_WEBSOCKET_PROTOCOL);
    let upgrade = header(http::header::UPGRADE);
    if !upgrade.eq_ignore_ascii_case("websocket") || key.is_empty() {
        return Err(Failure::bad_request(
            "Upgrade request required: exec is served over a WebSocket (v5.channel.k8s.io)",
        ));
    }
    let Some(protocol) = PROTOCOLS
        .iter()
        .find(|p| offered.split(',').any(|o| o.trim() == **p))
    else {
        return Err(Failure::bad_request(format!(
            "no protocol Skiff speaks among {offered:?}: offer one of {PROTOCOLS:?}"
        )));
    };
    let Some(on_upgrade) = req.upgrade.take() else {
        return Err(Failure::bad_request(
            "this connection cannot be upgraded (HTTP/1.1 is needed for a WebSocket)",
        ));
    };
    // The command starts before the upgrade is accepted, so that a wrong
    // pod or container is an ordinary error.
    let (input, inputs) = tokio::sync::mpsc::channel::<PodExecInput>(16);
    // Attached, so output streams as it comes (`kubectl cp`, `tail -f`);
    // a runtime that cannot attach (host processes) runs a command
    // without stdin or a terminal to its end instead.
    let interactive = start.stdin || start.tty;
    let to = if attach {
        crate::logs::Attach::Container
    } else {
        crate::logs::Attach::Command
    };
    let attached = match logs
        .attach_with(
            start.clone(),
            tokio_stream::wrappers::ReceiverStream::new(inputs),
            to,
        )
        .await
    {
        Ok(outputs) => Some(outputs),
        Err(e)
            if !interactive
                && !attach
                && matches!(
                    e.code(),
                    tonic::Code::Unimplemented | tonic::Code::FailedPrecondition
                ) =>
        {
            None
        }
        Err(e) => return Err(failure(&e)),
    };
    let v5 = *protocol == PROTOCOLS[0];
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "exec: the upgrade did not happen");
                return;
            }
        };
        let socket = websocket::server(hyper_util::rt::TokioIo::new(upgraded)).await;
        let (mut sink, mut source) = socket.split();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(64);
        // What the client sends: stdin, resizes, stdin's end. Pings are
        // answered by the socket itself as it is read.
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = source.next().await {
                let data = match message {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some((&channel, rest)) = data.split_first() else {
                    continue;
                };
                let sent = match channel {
                    STDIN if !rest.is_empty() => Input::Stdin(rest.to_vec()),
                    RESIZE => {
                        let size: Value = serde_json::from_slice(rest).unwrap_or(Value::Null);
                        let dim = |k: &str| size.get(k).and_then(Value::as_u64).unwrap_or(0) as u32;
                        Input::Resize(TerminalSize {
                            width: dim("Width"),
                            height: dim("Height"),
                        })
                    }
                    CLOSE if v5 && rest.first() == Some(&STDIN) => Input::CloseStdin(true),
                    _ => continue,
                };
                if input
                    .send(PodExecInput { input: Some(sent) })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
            let _ = sink.close().await;
        });
        let mut reader = reader;
        let status = match attached {
            Some(mut outputs) => {
                // An attached container's process reports no exit status:
                // its output's end is the end.
                let mut status = Some(if attach {
                    json!({"metadata": {}, "status": "Success"})
                } else {
                    json!({
                        "metadata": {}, "status": "Failure", "reason": "InternalError",
                        "message": "the command's output ended without its exit status",
                    })
                });
                loop {
                    // The client gone (closed, or its socket failed): the
                    // command's stream is dropped, which ends it.
                    let next = tokio::select! {
                        next = outputs.next() => next,
                        _ = &mut reader => break,
                    };
                    let Some(next) = next else {
                        break;
                    };
                    let message = match next {
                        Ok(out) => match out.output {
                            Some(Output::Stdout(data)) => framed(STDOUT, &data),
                            Some(Output::Stderr(data)) => framed(STDERR, &data),
                            Some(Output::ExitCode(code)) => {
                                status = Some(exit_status(code, &command));
                                break;
                            }
                            None => continue,
                        },
                        Err(e) => {
                            status = Some(Failure::from_grpc(&e).to_json());
                            break;
                        }
                    };
                    if out_tx.send(message).await.is_err() {
                        break;
                    }
                }
                status
            }
            None => match logs.exec_once(start).await {
                Ok(done) => {
                    if !done.stdout.is_empty() {
                        let _ = out_tx.send(framed(STDOUT, &done.stdout)).await;
                    }
                    if !done.stderr.is_empty() {
                        let _ = out_tx.send(framed(STDERR, &done.stderr)).await;
                    }
                    Some(exit_status(done.exit_code, &command))
                }
                Err(e) => Some(failure(&e).to_json()),
            },
        };
        if let Some(status) = status {
            let _ = out_tx
                .send(framed(ERROR, status.to_string().as_bytes()))
                .await;
        }
        drop(out_tx);
        let _ = writer.await;
        reader.abort();
    });
    Ok(websocket::switching_protocols(&key, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_travel_as_kubernetes_statuses() {
        let ok = exit_status(0, &["true".into()]);
        assert_eq!(ok["status"], "Success");
        let failed = exit_status(2, &["sh".into(), "-c".into(), "exit 2".into()]);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "2");
    }

    #[test]
    fn frames_lead_with_their_channel() {
        let Message::Binary(data) = framed(STDERR, b"oops") else {
            panic!("not binary");
        };
        assert_eq!(&data[..], b"\x02oops");
    }
}
