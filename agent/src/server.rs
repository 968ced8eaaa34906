//! The agent's gRPC service (`skiff.agent.v1.Agent`): container logs,
//! exec, port forwarding and resource usage.
//!
//! Users never call it directly: `skiff.core.v1.PodLogs/Logs` on the API
//! server looks up the pod's node and proxies to the node's agent (its
//! InternalIP and `daemonEndpoints.kubeletEndpoint` port), the way the
//! Kubernetes API server reaches the kubelet. We chose the proxy over a
//! tunnel held open by the agent because it keeps the agent stateless
//! towards the master and the API server's path short; a node behind NAT
//! needs its agent port reachable (a tunnel would lift that, later).

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::{Stream, StreamExt as _};
use skiff::pb::agent::v1::agent_server::Agent;
use skiff::pb::core::v1::pod_exec_input::Input;
use skiff::pb::core::v1::pod_exec_output::Output;
use skiff::pb::core::v1::port_forward_input::Input as ForwardInput;
use skiff::pb::core::v1::{
    LogChunk, Pod, PodExecInput, PodExecOutput, PodExecRequest, PodExecResponse, PodLogsRequest,
    PortForwardInput, PortForwardOutput,
};
use skiff_client::Store;
use skiff_runtime::{Container, LogOptions, Runtime, State};
use tonic::{Request, Response, Status};

use crate::containers::Role;
use crate::status;

/// The service.
pub struct AgentService {
    /// The pods bound to this node.
    pub pods: Store<Pod>,
    /// The runtime holding their containers.
    pub runtime: Arc<dyn Runtime>,
    /// The latest resource usage sample.
    pub usage: crate::stats::Latest,
    /// How often usage is sampled (for the message before the first).
    pub stats_every: std::time::Duration,
}

/// A stream of log chunks.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

impl AgentService {
    /// The instances (newest first) of a pod's container, the container
    /// named or the pod's only one.
    async fn instances(
        &self,
        namespace: &str,
        pod_name: &str,
        container: &str,
    ) -> Result<(String, Vec<Container>), Status> {
        let pod = self.pods.get(namespace, pod_name).ok_or_else(|| {
            Status::not_found(format!(
                "pod {pod_name:?} in namespace {namespace:?} is not on this node"
            ))
        })?;
        let spec = pod.spec.clone().unwrap_or_default();
        let uid = pod
            .metadata
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        let name = if container.is_empty() {
            match spec.containers.as_slice() {
                [only] => only.name.clone(),
                many => {
                    let names: Vec<&str> = many.iter().map(|c| c.name.as_str()).collect();
                    return Err(Status::invalid_argument(format!(
                        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                        names.join(" ")
                    )));
                }
            }
        } else {
            container.to_string()
        };
        let role = if spec.containers.iter().any(|c| c.name == name) {
            Role::App
        } else if spec.init_containers.iter().any(|c| c.name == name) {
            Role::Init
        } else {
            return Err(Status::invalid_argument(format!(
                "container {name} is not valid for pod {pod_name}"
            )));
        };
        let containers = self
            .runtime
            .list(Some(&uid))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let found = status::instances(&containers, role, &name)
            .into_iter()
            .cloned()
            .collect();
        Ok((name, found))
    }

    /// The running instance of the container a request names, to run
    /// its command in.
    async fn running(&self, req: &PodExecRequest) -> Result<Container, Status> {
        if req.command.is_empty() {
            return Err(Status::invalid_argument(
                "command: Required value: what to run",
            ));
        }
        self.running_container(req).await
    }

    /// The running instance of the container a request names.
    async fn running_container(&self, req: &PodExecRequest) -> Result<Container, Status> {
        let (name, found) = self
            .instances(&req.namespace, &req.name, &req.container)
            .await?;
        found
            .into_iter()
            .find(|c| matches!(c.state, State::Running { .. }))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "container {name:?} in pod {:?} is not running",
                    req.name
                ))
            })
    }
}

/// A stream of what a forwarded port sends back.
pub type ForwardStream = Pin<Box<dyn Stream<Item = Result<PortForwardOutput, Status>> + Send>>;

/// The largest piece of a forwarded connection read at once.
const FORWARD_CHUNK: usize = 32 * 1024;

/// Copies a forwarded connection both ways: the client's messages into
/// the socket (a `close_write` or the client's end shuts its writing
/// half), the socket's bytes out until the pod's side closes.
fn forward(
    socket: tokio::net::TcpStream,
    mut messages: tonic::Streaming<PortForwardInput>,
) -> ForwardStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (reader, mut writer) = socket.into_split();
    let feeder = tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let written = match message.input {
                Some(ForwardInput::Data(bytes)) => writer.write_all(&bytes).await,
                Some(ForwardInput::CloseWrite(true)) => break,
                _ => Ok(()),
            };
            if written.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    // The feeder ends with the output: when the pod's side closes, and
    // when the API server drops the stream (a feeder blocked writing to a
    // pod that does not read would otherwise live on).
    let feeder = AbortOnDrop(feeder);
    let output = futures::stream::unfold(
        (reader, vec![0u8; FORWARD_CHUNK], feeder),
        |(mut reader, mut buf, feeder)| async move {
            match reader.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    let data = buf[..n].to_vec();
                    Some((Ok(PortForwardOutput { data }), (reader, buf, feeder)))
                }
                // The pod's side closed (or failed): the connection ends.
                _ => None,
            }
        },
    );
    Box::pin(output)
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream of an attached command's output.
pub type AttachStream = Pin<Box<dyn Stream<Item = Result<PodExecOutput, Status>> + Send>>;

/// An attached process's output as messages: stdout and stderr apart.
fn output_messages(
    output: skiff_runtime::AttachedOutput,
) -> impl Stream<Item = Result<PodExecOutput, Status>> + Send {
    output.map(|chunk| {
        chunk
            .map(|(stderr, bytes)| PodExecOutput {
                output: Some(if stderr {
                    Output::Stderr(bytes.to_vec())
                } else {
                    Output::Stdout(bytes.to_vec())
                }),
            })
            .map_err(|e| Status::unavailable(e.to_string()))
    })
}

/// What an attached stream is attached to, for its terminal's resizes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attachee {
    /// A command run in a container (exec).
    Command,
    /// A container's own process (attach).
    Container,
}

/// Feeds an attached command or container from the client's messages:
/// stdin bytes, terminal resizes, and the end of stdin, which closes the
/// process's when `close` (else later input is ignored, and the process's
/// stdin stays open for the next client: a container attached without
/// `stdinOnce`).
async fn feed_attached(
    runtime: Arc<dyn Runtime>,
    (attachee, id): (Attachee, String),
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    mut messages: tonic::Streaming<PodExecInput>,
    (stdin, close): (bool, bool),
) {
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = stdin;
    while let Some(Ok(message)) = messages.next().await {
        match message.input {
            Some(Input::Stdin(bytes)) if stdin => {
                let written = input.write_all(&bytes).await.and(input.flush().await);
                if written.is_err() {
                    break;
                }
            }
            Some(Input::Resize(size)) => {
                let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                let (width, height) = (clamp(size.width), clamp(size.height));
                let _ = match attachee {
                    Attachee::Command => runtime.exec_resize(&id, width, height).await,
                    Attachee::Container => runtime.resize(&id, width, height).await,
                };
            }
            Some(Input::CloseStdin(true)) if close => break,
            Some(Input::CloseStdin(true)) => stdin = false,
            _ => {}
        }
    }
    // The end of stdin, or of the client: the process sees EOF (without
    // stdin, the runtime did not attach one: nothing to close).
    if stdin && close {
        let _ = input.shutdown().await;
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type AttachStream = AttachStream;

    async fn stats(
        &self,
        _request: Request<skiff::pb::agent::v1::StatsRequest>,
    ) -> Result<Response<skiff::pb::agent::v1::StatsSummary>, Status> {
        self.usage.get().map(Response::new).ok_or_else(|| {
            Status::unavailable(format!(
                "no resource usage yet: usage is a rate between two samples, taken every {:?}",
                self.stats_every
            ))
        })
    }

    async fn attach(
        &self,
        request: Request<tonic::Streaming<PodExecInput>>,
    ) -> Result<Response<AttachStream>, Status> {
        let mut messages = request.into_inner();
        let Some(Input::Start(req)) = messages.message().await?.and_then(|m| m.input) else {
            return Err(Status::invalid_argument(
                "the first message must be `start`: what to run and where",
            ));
        };
        let running = self.running(&req).await?;
        let attached = self
            .runtime
            .exec_attach(&running.id, &req.command, req.tty, req.stdin)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let runtime = Arc::clone(&self.runtime);
        let exec = attached.exec.clone();
        let feeder = tokio::spawn(feed_attached(
            Arc::clone(&runtime),
            (Attachee::Command, exec.clone()),
            attached.input,
            messages,
            (req.stdin, true),
        ));
        let output = output_messages(attached.output);
        // When the output ends, the command has: its exit code closes the
        // stream.
        let exit = futures::stream::once(async move {
            feeder.abort();
            let code = runtime
                .exec_exit_code(&exec)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            Ok(PodExecOutput {
                output: Some(Output::ExitCode(i32::try_from(code).unwrap_or(-1))),
            })
        });
        Ok(Response::new(Box::pin(output.chain(exit))))
    }

    type AttachContainerStream = AttachStream;

    async fn attach_container(
        &self,
        request: Request<tonic::Streaming<PodExecInput>>,
    ) -> Result<Response<AttachStream>, Status> {
        let mut messages = request.into_inner();
        let Some(Input::Start(req)) = messages.message().await?.and_then(|m| m.input) else {
            return Err(Status::invalid_argument(
                "the first message must be `start`: which pod and container",
            ));
        };
        if !req.command.is_empty() {
            return Err(Status::invalid_argument(
                "command: Forbidden: attach runs nothing: it joins the container's own process (use exec to run a command)",
            ));
        }
        let running = self.running_container(&req).await?;
        // What the container was made with: stdin only if it keeps one
        // open, and closed when the client's ends only if it is to be
        // read once (else the next attach reads on).
        let name = running
            .label(skiff_runtime::labels::CONTAINER_NAME)
            .to_string();
        let spec = self
            .pods
            .get(&req.namespace, &req.name)
            .and_then(|p| p.spec.clone())
            .and_then(|s| s.containers.into_iter().find(|c| c.name == name))
            .unwrap_or_default();
        if req.stdin && !spec.stdin {
            return Err(Status::failed_precondition(format!(
                "container {name:?} in pod {:?} does not keep its stdin open (stdin: true): attach without stdin",
                req.name
            )));
        }
        let attached = self
            .runtime
            .attach(&running.id, req.stdin)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let feeder = AbortOnDrop(tokio::spawn(feed_attached(
            Arc::clone(&self.runtime),
            (Attachee::Container, running.id.clone()),
            attached.input,
            messages,
            (req.stdin, spec.stdin_once),
        )));
        // The output ends with the process (or the client): no exit code
        // (Kubernetes' attach reports none).
        let output = output_messages(attached.output).map(move |message| {
            let _ = &feeder;
            message
        });
        Ok(Response::new(Box::pin(output)))
    }

    type PortForwardStream = ForwardStream;

    async fn port_forward(
        &self,
        request: Request<tonic::Streaming<PortForwardInput>>,
    ) -> Result<Response<ForwardStream>, Status> {
        let mut messages = request.into_inner();
        let Some(ForwardInput::Start(start)) = messages.message().await?.and_then(|m| m.input)
        else {
            return Err(Status::invalid_argument(
                "the first message must be `start`: which pod and port",
            ));
        };
        let port = u16::try_from(start.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "port: Invalid value: {}: must be between 1 and 65535, inclusive",
                    start.port
                ))
            })?;
        let pod = self
            .pods
            .get(&start.namespace, &start.name)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "pod {:?} in namespace {:?} is not on this node",
                    start.name, start.namespace
                ))
            })?;
        let uid = pod
            .metadata
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        let containers = self
            .runtime
            .list(Some(&uid))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let sandbox = containers
            .into_iter()
            .filter(|c| {
                c.label(skiff_runtime::labels::CONTAINER_NAME) == skiff_runtime::labels::SANDBOX
            })
            .filter(|c| matches!(c.state, State::Running { .. }))
            .max_by_key(|c| c.created)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "pod {:?} has no running sandbox: it is not running",
                    start.name
                ))
            })?;
        // Nothing accepting on the port is the pod's state, not the
        // agent's: FAILED_PRECONDITION, the runtime's words.
        let socket = self.runtime.dial(&sandbox, port).await.map_err(|e| {
            let why = match e {
                skiff_runtime::Error::Runtime(why) => why,
                other => other.to_string(),
            };
            Status::failed_precondition(format!(
                "error forwarding port {port} to pod {}, uid {uid}: {why}",
                start.name
            ))
        })?;
        Ok(Response::new(forward(socket, messages)))
    }

    async fn exec(
        &self,
        request: Request<PodExecRequest>,
    ) -> Result<Response<PodExecResponse>, Status> {
        let req = request.into_inner();
        let running = self.running(&req).await?;
        let timeout = std::time::Duration::from_secs(
            req.timeout_seconds.unwrap_or(300).clamp(1, 3600) as u64,
        );
        let out = self
            .runtime
            .exec(&running.id, &req.command, timeout)
            .await
            .map_err(|e| match e {
                skiff_runtime::Error::Timeout(_) => Status::deadline_exceeded(e.to_string()),
                other => Status::unavailable(other.to_string()),
            })?;
        Ok(Response::new(PodExecResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code as i32,
        }))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<PodLogsRequest>) -> Result<Response<LogStream>, Status> {
        let req = request.into_inner();
        let (name, found) = self
            .instances(&req.namespace, &req.name, &req.container)
            .await?;
        let found: Vec<&Container> = found.iter().collect();

        let chosen = if req.previous {
            // As the container's lastState: the newest instance that has
            // ended (the running one, if any, is newer).
            found
                .iter()
                .find(|c| matches!(c.state, State::Exited { .. }))
                .copied()
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "previous terminated container {name:?} in pod {:?} not found",
                        req.name
                    ))
                })?
        } else {
            found.first().copied().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "container {name:?} in pod {:?} is waiting to start",
                    req.name
                ))
            })?
        };
        let since = req.since_seconds.map(|s| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
                - s
        });
        let options = LogOptions {
            follow: req.follow,
            tail: req.tail_lines.map(|t| t.max(0) as u64),
            since,
            timestamps: req.timestamps,
        };
        let stream = self
            .runtime
            .logs(&chosen.id, &options)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let stream = stream.map(|chunk| {
            chunk
                .map(|data| LogChunk {
                    data: data.to_vec(),
                })
                .map_err(|e| Status::unavailable(e.to_string()))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Lets only the API server (`system:apiserver`) or an admin
/// (`system:masters`) call the agent, when it serves TLS; any other
/// certificate of the cluster (another node, a service account's pod) gets
/// PERMISSION_DENIED.
#[derive(Clone, Copy, Debug)]
pub struct ApiServerOnly {
    /// Off on a plaintext agent (an `--insecure` cluster).
    pub enforce: bool,
}

impl<S> tower::Layer<S> for ApiServerOnly {
    type Service = ApiServerOnlyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiServerOnlyService {
            enforce: self.enforce,
            inner,
        }
    }
}

/// The service [`ApiServerOnly`] makes.
#[derive(Clone, Debug)]
pub struct ApiServerOnlyService<S> {
    enforce: bool,
    inner: S,
}

/// The callers an agent answers.
fn may_call(peer: Option<&skiff_pki::tls::PeerInfo>) -> Result<(), String> {
    let cert = peer.and_then(skiff_pki::tls::PeerInfo::certificate);
    match cert {
        Some(c) if c.common_name == "system:apiserver" => Ok(()),
        Some(c) if c.organizations.iter().any(|o| o == "system:masters") => Ok(()),
        Some(c) => Err(format!(
            "User {:?} cannot call the agent: only the API server may (use `skiff logs`, `skiff exec`, `skiff top`)",
            c.common_name
        )),
        None => Err("the agent needs a client certificate".into()),
    }
}

impl<S, B> tower::Service<http::Request<B>> for ApiServerOnlyService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, S::Error>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if self.enforce
            && let Err(why) = may_call(request.extensions().get::<skiff_pki::tls::PeerInfo>())
        {
            return futures::future::Either::Right(futures::future::ready(Ok(
                Status::permission_denied(why).into_http(),
            )));
        }
        futures::future::Either::Left(self.inner.call(request))
    }
}
