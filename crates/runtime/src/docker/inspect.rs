//! Listing and inspecting containers: the agent's relist, one list of
//! the node's containers plus an inspect only of those whose state
//! changed since.

use std::collections::HashMap;
use std::time::SystemTime;

use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::ListContainersOptionsBuilder;

use super::{DockerRuntime, PodNetwork, docker_error};
use crate::{Container, Error, Result, State, labels};

/// The Docker time format (RFC 3339 with nanoseconds); the zero time
/// (`0001-01-01T00:00:00Z`, "never") is `None`.
pub(super) fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    let s = s?;
    if s.starts_with("0001-") {
        return None;
    }
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
}

impl DockerRuntime {
    /// Every container of this node (of one pod, with `pod_uid`), running
    /// or not, as the engine lists them.
    pub(super) async fn summaries(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let mut wanted = vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={}", labels::NODE, self.node),
        ];
        if let Some(uid) = pod_uid {
            wanted.push(format!("{}={uid}", labels::POD_UID));
        }
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(docker_error)
    }

    async fn inspect(&self, id: &str, ip: Option<String>) -> Result<Container> {
        let found = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(docker_error)?;
        let config = found.config.unwrap_or_default();
        let state = found.state.unwrap_or_default();
        let started_at = parse_time(state.started_at.as_deref());
        let status = state.status.map(|s| s.to_string()).unwrap_or_default();
        let state = match status.as_str() {
            "created" => State::Created,
            "running" => State::Running { started_at },
            "exited" => State::Exited {
                exit_code: state.exit_code.unwrap_or_default(),
                started_at,
                finished_at: parse_time(state.finished_at.as_deref()),
                oom_killed: state.oom_killed.unwrap_or_default(),
            },
            other => State::Unknown(other.to_string()),
        };
        Ok(Container {
            id: found.id.unwrap_or_default(),
            name: found
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            image_id: found.image.unwrap_or_default(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            state,
            ip,
            created: found
                .created
                .and_then(|c| parse_time(Some(&c.to_string())))
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64),
        })
    }

    /// The node's containers (of one pod, with `pod_uid`) ([`Runtime::list`](crate::Runtime::list)).
    pub(super) async fn list_containers(&self, pod_uid: Option<&str>) -> Result<Vec<Container>> {
        let summaries = self.summaries(pod_uid).await?;
        let mut out = Vec::with_capacity(summaries.len());
        let mut seen = HashMap::new();
        for summary in summaries {
            let Some(id) = summary.id.clone() else {
                continue;
            };
            let theirs = summary
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::CLUSTER))
                .is_some_and(|c| !c.is_empty() && !self.cluster.is_empty() && *c != self.cluster);
            if theirs {
                continue;
            }
            let state = summary
                .state
                .unwrap_or(ContainerSummaryStateEnum::EMPTY)
                .to_string();
            let ip = match &self.network {
                PodNetwork::Docker(name) => summary
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(name))
                    .and_then(|e| e.ip_address)
                    .filter(|ip| !ip.is_empty()),
                PodNetwork::Cni(cni) => (state == "running")
                    .then(|| cni.attachment(&id).and_then(|a| a.ip()))
                    .flatten()
                    .map(|ip| ip.to_string()),
            };
            let cached = self
                .inspected
                .lock()
                .ok()
                .and_then(|c| c.get(&id).cloned())
                .filter(|(s, c)| *s == state && c.ip == ip);
            let container = match cached {
                Some((_, c)) => c,
                None => match self.inspect(&id, ip).await {
                    Ok(c) => c,
                    // Removed between the list and the inspect.
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                },
            };
            seen.insert(id, (state, container.clone()));
            out.push(self.without_network_is_dead(container));
        }
        if let Ok(mut cache) = self.inspected.lock() {
            if pod_uid.is_none() {
                // A full list: forget containers that are gone.
                *cache = seen;
            } else {
                cache.extend(seen);
            }
        }
        Ok(out)
    }
}
