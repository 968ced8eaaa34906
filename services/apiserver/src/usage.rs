//! `skiff.metrics.v1.Metrics`: resource usage (Kubernetes'
//! metrics.k8s.io, what metrics-server serves), gathered from the agents
//! when asked (`Agent/Stats`); nothing is stored. A node whose agent does
//! not answer is left out, as metrics-server leaves out what it could not
//! scrape, and said in the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skiff::pb::agent::v1::{StatsRequest, StatsSummary};
use skiff::pb::api::v1::ListRequest;
use skiff::pb::core::v1::{Node, NodeList, Pod, PodList};
use skiff::pb::metrics::v1::metrics_server::Metrics;
use skiff::pb::metrics::v1::{NodeMetrics, NodeMetricsList, PodMetrics, PodMetricsList};
use tonic::{Request, Response, Status};

use crate::actor::{ActorHandle, Op, Reply};
use crate::logs::Agents;

/// How long one agent may take to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The service.
pub struct UsageService {
    actor: ActorHandle,
    agents: Agents,
}

impl UsageService {
    /// A service reading pods and nodes through `actor`, reaching agents
    /// with `tls` (None: plaintext).
    pub fn new(actor: ActorHandle, tls: Option<crate::logs::AgentTls>) -> Self {
        Self {
            actor,
            agents: Agents::new(tls),
        }
    }

    async fn list<K: crate::strategy::Strategy>(
        &self,
        req: ListRequest,
    ) -> Result<K::List, Status> {
        match self.actor.call(Op::<K>::List(req)).await? {
            Reply::List(list) => Ok(list),
            _ => Err(Status::internal("unexpected reply kind")),
        }
    }

    /// The summaries of `nodes`' agents, by node name; those that fail
    /// are logged and left out.
    async fn summaries(&self, nodes: &[Node]) -> HashMap<String, StatsSummary> {
        let asks = nodes.iter().map(|node| async move {
            let name = node.metadata.as_ref()?.name.clone();
            let (mut client, agent) = match self.agents.client(node) {
                Ok(found) => found,
                Err(status) => {
                    tracing::debug!(node = %name, error = %status.message(), "no usage");
                    return None;
                }
            };
            match tokio::time::timeout(AGENT_TIMEOUT, client.stats(StatsRequest {})).await {
                Ok(Ok(summary)) => Some((name, summary.into_inner())),
                Ok(Err(status)) => {
                    tracing::info!(%agent, error = %status.message(), "no usage from this node");
                    None
                }
                Err(_) => {
                    tracing::info!(%agent, "no usage from this node: no answer in {AGENT_TIMEOUT:?}");
                    None
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

fn all_nodes() -> ListRequest {
    ListRequest::default()
}

#[tonic::async_trait]
impl Metrics for UsageService {
    async fn list_node_metrics(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<NodeMetricsList>, Status> {
        let mut req = request.into_inner();
        // Nodes are cluster-scoped.
        req.namespace.clear();
        let nodes: NodeList = self.list::<Node>(req).await?;
        let mut summaries = self.summaries(&nodes.items).await;
        let items: Vec<NodeMetrics> = nodes
            .items
            .iter()
            .filter_map(|node| {
                let meta = node.metadata.as_ref()?;
                let mut usage = summaries.remove(&meta.name)?.node?;
                let m = usage.metadata.get_or_insert_with(Default::default);
                m.name = meta.name.clone();
                m.labels = meta.labels.clone();
                Some(usage)
            })
            .collect();
        Ok(Response::new(NodeMetricsList {
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "NodeMetricsList".into(),
            items,
        }))
    }

    async fn list_pod_metrics(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<PodMetricsList>, Status> {
        let mut req = request.into_inner();
        req.limit = 0;
        req.r#continue.clear();
        let pods: PodList = self.list::<Pod>(req).await?;
        let wanted: Vec<&str> = pods
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref().map(|s| s.node_name.as_str()))
            .filter(|n| !n.is_empty())
            .collect();
        let nodes: NodeList = self.list::<Node>(all_nodes()).await?;
        let nodes: Vec<Node> = nodes
            .items
            .into_iter()
            .filter(|n| {
                n.metadata
                    .as_ref()
                    .is_some_and(|m| wanted.contains(&m.name.as_str()))
            })
            .collect();
        let summaries = self.summaries(&nodes).await;
        // Each node's pods by uid.
        let by_uid: HashMap<&str, &PodMetrics> = summaries
            .values()
            .flat_map(|s| s.pods.iter())
            .filter_map(|p| Some((p.metadata.as_ref()?.uid.as_str(), p)))
            .collect();
        let items: Vec<PodMetrics> = pods
            .items
            .iter()
            .filter_map(|pod| {
                let meta = pod.metadata.as_ref()?;
                let mut usage = (*by_uid.get(meta.uid.as_str())?).clone();
                let m = usage.metadata.get_or_insert_with(Default::default);
                m.name = meta.name.clone();
                m.namespace = meta.namespace.clone();
                m.labels = meta.labels.clone();
                Some(usage)
            })
            .collect();
        Ok(Response::new(PodMetricsList {
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetricsList".into(),
            items,
        }))
    }
}

/// The service as a tonic server.
pub fn server(
    usage: Arc<UsageService>,
) -> skiff::pb::metrics::v1::metrics_server::MetricsServer<UsageService> {
    skiff::pb::metrics::v1::metrics_server::MetricsServer::from_arc(usage)
}
