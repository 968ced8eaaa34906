//! `skiff.core.v1.PodLogs`, `PodExec` and `PodPortForward`: the pods/log,
//! pods/exec and pods/portforward subresources. The API server finds
//! the pod's node and proxies the stream from that node's agent
//! (`skiff.agent.v1.Agent/Logs` at the Node's InternalIP and
//! `daemonEndpoints.kubeletEndpoint` port), like the Kubernetes API server
//! reaches the kubelet; see the agent's `server` module for why a proxy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use skiff::pb::agent::v1::agent_client::AgentClient;
use skiff::pb::api::v1::GetRequest;
use skiff::pb::core::v1::pod_exec_input::Input;
use skiff::pb::core::v1::pod_exec_server::PodExec;
use skiff::pb::core::v1::pod_logs_server::PodLogs;
use skiff::pb::core::v1::pod_port_forward_server::PodPortForward;
use skiff::pb::core::v1::port_forward_input::Input as ForwardInput;
use skiff::pb::core::v1::{
    LogChunk, Node, Pod, PodExecInput, PodExecOutput, PodExecRequest, PodExecResponse,
    PodLogsRequest, PortForwardInput, PortForwardOutput, PortForwardStart,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::actor::{ActorHandle, Op, Reply};

/// The service.
pub struct PodLogsService {
    actor: ActorHandle,
    agents: Agents,
}

/// How the API server reaches agents over TLS: the CA their certificates
/// chain to, and the certificate it presents (`system:apiserver`).
#[derive(Clone, Debug)]
pub struct AgentTls {
    /// The cluster CA.
    pub ca_pem: String,
    /// Its client certificate.
    pub identity: skiff_pki::tls::SwappableIdentity,
}

/// Clients of the nodes' agents: one channel per agent address and node,
/// reused across requests.
#[derive(Default)]
pub struct Agents {
    channels: Mutex<HashMap<(String, String), Channel>>,
    /// None: agents are reached in plaintext (an `--insecure` cluster).
    tls: Option<AgentTls>,
}

impl Agents {
    /// Clients reaching agents with `tls` (None: plaintext).
    pub fn new(tls: Option<AgentTls>) -> Self {
        Self {
            channels: Mutex::default(),
            tls,
        }
    }

    /// A channel to the agent of `node` at `host:port`; over TLS, the
    /// agent must prove it is `system:node:NODE`.
    fn channel(&self, host: &str, port: i32, node: &str) -> Result<Channel, Status> {
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let key = (address.clone(), node.to_string());
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| Status::internal("agent channel cache poisoned"))?;
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let internal = |e: String| Status::internal(format!("agent address {address:?}: {e}"));
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(5));
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => {
                let client = skiff_pki::tls::ClientTls::with_identity(
                    &tls.ca_pem,
                    tls.identity.clone(),
                    skiff_pki::tls::ServerCheck::Identity(format!("system:node:{node}")),
                )
                .map_err(|e| internal(e.to_string()))?;
                let connector = client
                    .connector(host)
                    .map_err(|e| internal(e.to_string()))?;
                endpoint.connect_with_connector_lazy(connector)
            }
        };
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    /// A client of `node`'s agent (its InternalIP and kubelet port), and
    /// how to name it in messages.
    ///
    /// # Errors
    /// UNAVAILABLE when the node does not say where its agent listens.
    pub fn client(&self, node: &Node) -> Result<(AgentClient<Channel>, String), Status> {
        let node_name = node
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let ip = status
            .addresses
            .iter()
            .find(|a| a.r#type == "InternalIP")
            .map(|a| a.address.clone());
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port)
            .filter(|p| *p > 0);
        let (Some(ip), Some(port)) = (ip, port) else {
            return Err(Status::unavailable(format!(
                "node {node_name:?} does not say where its agent listens (no InternalIP or kubelet port): is it a hollow node?"
            )));
        };
        let client = AgentClient::new(self.channel(&ip, port, node_name)?);
        Ok((
            client,
            format!("the agent of node {node_name:?} at {ip}:{port}"),
        ))
    }
}

/// Reads one object through the API actor.
pub(crate) async fn get<K: crate::strategy::Strategy>(
    actor: &ActorHandle,
    namespace: &str,
    name: &str,
) -> Result<K, Status> {
    let op = Op::<K>::Get(GetRequest {
        namespace: namespace.to_string(),
        name: name.to_string(),
    });
    match actor.call(op).await? {
        Reply::Object(obj) => Ok(*obj),
        _ => Err(Status::internal("unexpected reply kind")),
    }
}

impl PodLogsService {
    /// A service reading pods and nodes through `actor`, reaching agents
    /// with `tls` (None: plaintext).
    pub fn new(actor: ActorHandle, tls: Option<AgentTls>) -> Self {
        Self {
            actor,
            agents: Agents::new(tls),
        }
    }
}

/// The stream of a pod's log.
pub type LogStream = tonic::Streaming<LogChunk>;

impl PodLogsService {
    /// The agent of the node running `namespace/name`, and how to name it
    /// in messages.
    async fn agent(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(AgentClient<Channel>, String), Status> {
        let pod: Pod = get(&self.actor, namespace, name).await?;
        let node_name = pod
            .spec
            .as_ref()
            .map(|s| s.node_name.clone())
            .unwrap_or_default();
        if node_name.is_empty() {
            return Err(Status::failed_precondition(format!(
                "pod {name:?} in namespace {namespace:?} is not scheduled to a node yet"
            )));
        }
        let node: Node = get(&self.actor, "", &node_name).await.map_err(|s| {
            Status::unavailable(format!(
                "node {node_name:?} of pod {name:?}: {}",
                s.message()
            ))
        })?;
        self.agents.client(&node)
    }
}

/// What an attached stream joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A command it runs in a container (`exec -i/-t`).
    Command,
    /// The container's own process (`attach`).
    Container,
}

/// An agent's UNAVAILABLE, naming the agent.
fn unreachable(agent: &str, status: Status) -> Status {
    if status.code() == tonic::Code::Unavailable {
        Status::unavailable(format!("{agent} does not answer: {}", status.message()))
    } else {
        status
    }
}

fn default_namespace(namespace: &mut String) {
    if namespace.is_empty() {
        *namespace = "default".into();
    }
}

impl PodLogsService {
    /// A pod's log from its node's agent (both doors call this).
    ///
    /// # Errors
    /// The pod or its node cannot be read, or the agent refuses.
    pub async fn log(&self, mut req: PodLogsRequest) -> Result<Response<LogStream>, Status> {
        default_namespace(&mut req.namespace);
        let (mut client, agent) = self.agent(&req.namespace, &req.name).await?;
        client.logs(req).await.map_err(|s| unreachable(&agent, s))
    }

    /// Runs a command in a pod's container to its end (both doors).
    ///
    /// # Errors
    /// As [`PodLogsService::log`].
    pub async fn exec_once(&self, mut req: PodExecRequest) -> Result<PodExecResponse, Status> {
        default_namespace(&mut req.namespace);
        let (mut client, agent) = self.agent(&req.namespace, &req.name).await?;
        client
            .exec(req)
            .await
            .map(Response::into_inner)
            .map_err(|s| unreachable(&agent, s))
    }

    /// Runs `start` attached: `rest` (input, resizes, stdin's end) goes on
    /// to the agent as it comes; the output comes back as a stream (both
    /// doors call this).
    ///
    /// # Errors
    /// As [`PodLogsService::log`].
    pub async fn attach_with(
        &self,
        mut start: PodExecRequest,
        rest: impl futures::Stream<Item = PodExecInput> + Send + 'static,
        to: Attach,
    ) -> Result<tonic::Streaming<PodExecOutput>, Status> {
        use futures::StreamExt as _;
        default_namespace(&mut start.namespace);
        let (mut client, agent) = self.agent(&start.namespace, &start.name).await?;
        let first = PodExecInput {
            input: Some(Input::Start(start)),
        };
        let forwarded = futures::stream::once(std::future::ready(first)).chain(rest);
        let attached = match to {
            Attach::Command => client.attach(forwarded).await,
            Attach::Container => client.attach_container(forwarded).await,
        };
        attached
            .map(Response::into_inner)
            .map_err(|s| unreachable(&agent, s))
    }
}

impl PodLogsService {
    /// Connects to `start`'s port of its pod through the pod's agent:
    /// `rest` (data, the client's half-close) goes on as it comes; what the
    /// pod sends comes back as a stream that ends when the pod's side
    /// closes (both doors call this).
    ///
    /// # Errors
    /// As [`PodLogsService::log`]; FAILED_PRECONDITION when nothing
    /// accepts on the port.
    pub async fn port_forward_with(
        &self,
        mut start: PortForwardStart,
        rest: impl futures::Stream<Item = PortForwardInput> + Send + 'static,
    ) -> Result<tonic::Streaming<PortForwardOutput>, Status> {
        use futures::StreamExt as _;
        default_namespace(&mut start.namespace);
        let (mut client, agent) = self.agent(&start.namespace, &start.name).await?;
        let first = PortForwardInput {
            input: Some(ForwardInput::Start(start)),
        };
        let forwarded = futures::stream::once(std::future::ready(first)).chain(rest);
        client
            .port_forward(forwarded)
            .await
            .map(Response::into_inner)
            .map_err(|s| unreachable(&agent, s))
    }
}

#[tonic::async_trait]
impl PodPortForward for PodLogsService {
    type PortForwardStream = tonic::Streaming<PortForwardOutput>;

    async fn port_forward(
        &self,
        request: Request<tonic::Streaming<PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        use futures::StreamExt as _;
        let mut inputs = request.into_inner();
        let Some(ForwardInput::Start(start)) = inputs.message().await?.and_then(|m| m.input) else {
            return Err(Status::invalid_argument(
                "the first message must be `start`: which pod and port",
            ));
        };
        let rest = inputs
            .take_while(|m| std::future::ready(m.is_ok()))
            .filter_map(|m| std::future::ready(m.ok()));
        self.port_forward_with(start, rest).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl PodLogs for PodLogsService {
    type LogsStream = LogStream;

    async fn logs(&self, request: Request<PodLogsRequest>) -> Result<Response<LogStream>, Status> {
        self.log(request.into_inner()).await
    }
}

#[tonic::async_trait]
impl PodExec for PodLogsService {
    async fn exec(
        &self,
        request: Request<PodExecRequest>,
    ) -> Result<Response<PodExecResponse>, Status> {
        self.exec_once(request.into_inner())
            .await
            .map(Response::new)
    }

    type AttachStream = tonic::Streaming<PodExecOutput>;

    async fn attach(
        &self,
        request: Request<tonic::Streaming<PodExecInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use futures::StreamExt as _;
        let mut inputs = request.into_inner();
        let Some(Input::Start(start)) = inputs.message().await?.and_then(|m| m.input) else {
            return Err(Status::invalid_argument(
                "the first message must be `start`: what to run and where",
            ));
        };
        // The client's messages go on to the agent as they come.
        let rest = inputs
            .take_while(|m| std::future::ready(m.is_ok()))
            .filter_map(|m| std::future::ready(m.ok()));
        self.attach_with(start, rest, Attach::Command)
            .await
            .map(Response::new)
    }

    type AttachContainerStream = tonic::Streaming<PodExecOutput>;

    async fn attach_container(
        &self,
        request: Request<tonic::Streaming<PodExecInput>>,
    ) -> Result<Response<Self::AttachContainerStream>, Status> {
        use futures::StreamExt as _;
        let mut inputs = request.into_inner();
        let Some(Input::Start(start)) = inputs.message().await?.and_then(|m| m.input) else {
            return Err(Status::invalid_argument(
                "the first message must be `start`: which pod and container",
            ));
        };
        let rest = inputs
            .take_while(|m| std::future::ready(m.is_ok()))
            .filter_map(|m| std::future::ready(m.ok()));
        self.attach_with(start, rest, Attach::Container)
            .await
            .map(Response::new)
    }
}
