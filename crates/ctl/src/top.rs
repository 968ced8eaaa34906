//! `top nodes` and `top pods`: resource usage as kubectl top prints it,
//! from the API server's `skiff.metrics.v1.Metrics` (metrics.k8s.io).

use skiff::pb::api::v1::ListRequest;
use skiff::pb::core::v1::Node;
use skiff::pb::metrics::v1::metrics_client::MetricsClient;
use skiff::pb::metrics::v1::{ContainerMetrics, PodMetrics};
use skiff::quantity::Quantity;

use crate::{Ctl, CtlError, Result, table};

/// What `top pods` prints and how.
#[derive(Debug, Clone, Default)]
pub struct TopPods {
    /// Only this pod.
    pub name: Option<String>,
    /// Every namespace.
    pub all_namespaces: bool,
    /// Label selector.
    pub selector: String,
    /// One row per container.
    pub containers: bool,
    /// `cpu` or `memory`: biggest first.
    pub sort_by: Option<String>,
}

/// Millicores and bytes of a usage map.
fn amounts(usage: &std::collections::BTreeMap<String, String>) -> (i64, i64) {
    let read = |key: &str| {
        usage
            .get(key)
            .and_then(|v| v.parse::<Quantity>().ok())
            .unwrap_or_default()
    };
    (read("cpu").milli_value(), read("memory").value())
}

/// kubectl's cells: `250m`, `64Mi`.
fn cpu_cell(millicores: i64) -> String {
    format!("{millicores}m")
}

fn memory_cell(bytes: i64) -> String {
    format!("{}Mi", bytes / (1024 * 1024))
}

fn percent(used: i64, of: i64) -> String {
    if of <= 0 {
        "<unknown>".to_string()
    } else {
        format!("{}%", used * 100 / of)
    }
}

fn sort_key(sort_by: Option<&str>, (cpu, memory): (i64, i64)) -> i64 {
    match sort_by {
        Some("cpu") => -cpu,
        Some("memory") => -memory,
        _ => 0,
    }
}

fn check_sort(sort_by: Option<&str>) -> Result<()> {
    match sort_by {
        None | Some("cpu") | Some("memory") => Ok(()),
        Some(other) => Err(CtlError(format!(
            "error: --sort-by accepts only cpu or memory, not {other:?}"
        ))),
    }
}

impl Ctl {
    fn metrics(&self) -> MetricsClient<tonic::transport::Channel> {
        MetricsClient::new(self.channel.clone())
    }

    /// `top nodes [NAME] [-l SELECTOR] [--sort-by cpu|memory]`: NAME,
    /// CPU(cores), CPU(%), MEMORY(bytes), MEMORY(%) of allocatable.
    ///
    /// # Errors
    /// The server's; no usage yet.
    pub async fn top_nodes(
        &self,
        name: Option<&str>,
        selector: &str,
        sort_by: Option<&str>,
    ) -> Result<String> {
        check_sort(sort_by)?;
        let request = ListRequest {
            label_selector: selector.to_string(),
            field_selector: name
                .map(|n| format!("metadata.name={n}"))
                .unwrap_or_default(),
            ..Default::default()
        };
        let usage = self
            .metrics()
            .list_node_metrics(request.clone())
            .await
            .map_err(|s| self.server_error(s, "Node", name.unwrap_or_default()))?
            .into_inner();
        let nodes = skiff_client::Api::<Node>::new(self.channel.clone())
            .list(request)
            .await
            .map_err(|s| self.server_error(s, "Node", name.unwrap_or_default()))?;
        if nodes.items.is_empty() {
            return Err(match name {
                Some(n) => CtlError(format!(
                    "Error from server (NotFound): nodes {n:?} not found"
                )),
                None => CtlError("No resources found".to_string()),
            });
        }
        if usage.items.is_empty() {
            return Err(CtlError("error: metrics not available yet".to_string()));
        }
        let mut rows: Vec<(i64, Vec<String>)> = usage
            .items
            .iter()
            .map(|m| {
                let node_name = m.metadata.as_ref().map_or("", |m| m.name.as_str());
                let (cpu, memory) = amounts(&m.usage);
                let allocatable = nodes
                    .items
                    .iter()
                    .find(|n| n.metadata.as_ref().is_some_and(|m| m.name == node_name))
                    .and_then(|n| n.status.as_ref())
                    .map(|s| amounts(&s.allocatable))
                    .unwrap_or_default();
                (
                    sort_key(sort_by, (cpu, memory)),
                    vec![
                        node_name.to_string(),
                        cpu_cell(cpu),
                        percent(cpu, allocatable.0),
                        memory_cell(memory),
                        percent(memory, allocatable.1),
                    ],
                )
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let header = ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"];
        Ok(render(&header, rows))
    }

    /// `top pods [NAME] [-n NS | -A] [-l SELECTOR] [--containers]
    /// [--sort-by cpu|memory]`.
    ///
    /// # Errors
    /// The server's; a pod without usage yet.
    pub async fn top_pods(&self, options: &TopPods) -> Result<String> {
        check_sort(options.sort_by.as_deref())?;
        let namespace = if options.all_namespaces {
            String::new()
        } else {
            self.namespace.clone()
        };
        let name = options.name.as_deref().map(|n| {
            n.strip_prefix("pod/")
                .or_else(|| n.strip_prefix("pods/"))
                .unwrap_or(n)
        });
        let request = ListRequest {
            namespace: namespace.clone(),
            label_selector: options.selector.clone(),
            field_selector: name
                .map(|n| format!("metadata.name={n}"))
                .unwrap_or_default(),
            ..Default::default()
        };
        let usage = self
            .metrics()
            .list_pod_metrics(request)
            .await
            .map_err(|s| self.server_error(s, "Pod", name.unwrap_or_default()))?
            .into_inner();
        if usage.items.is_empty() {
            return Err(match name {
                // Says whether it exists at all.
                Some(n) => {
                    skiff_client::Api::<skiff::pb::core::v1::Pod>::new(self.channel.clone())
                        .get(&namespace, n)
                        .await
                        .map_err(|s| self.server_error(s, "Pod", n))?;
                    CtlError(format!(
                        "error: metrics not available yet for pod {namespace}/{n}"
                    ))
                }
                None => CtlError("error: metrics not available yet".to_string()),
            });
        }
        let sort_by = options.sort_by.as_deref();
        let mut rows: Vec<(i64, Vec<String>)> = Vec::new();
        for pod in &usage.items {
            let (pod_namespace, pod_name) = pod
                .metadata
                .as_ref()
                .map_or(("", ""), |m| (m.namespace.as_str(), m.name.as_str()));
            let mut row = |cells: Vec<String>, amounts: (i64, i64)| {
                let mut line = Vec::new();
                if options.all_namespaces {
                    line.push(pod_namespace.to_string());
                }
                line.extend(cells);
                line.push(cpu_cell(amounts.0));
                line.push(memory_cell(amounts.1));
                rows.push((sort_key(sort_by, amounts), line));
            };
            if options.containers {
                for c in &pod.containers {
                    row(
                        vec![pod_name.to_string(), c.name.clone()],
                        amounts(&c.usage),
                    );
                }
            } else {
                row(vec![pod_name.to_string()], pod_total(pod));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let mut header = Vec::new();
        if options.all_namespaces {
            header.push("NAMESPACE");
        }
        if options.containers {
            header.extend(["POD", "NAME"]);
        } else {
            header.push("NAME");
        }
        header.extend(["CPU(cores)", "MEMORY(bytes)"]);
        Ok(render(&header, rows))
    }
}

/// A pod's usage: the sum of its containers'.
fn pod_total(pod: &PodMetrics) -> (i64, i64) {
    pod.containers
        .iter()
        .map(|c: &ContainerMetrics| amounts(&c.usage))
        .fold((0, 0), |(c, m), (cpu, memory)| (c + cpu, m + memory))
}

fn render(header: &[&str], rows: Vec<(i64, Vec<String>)>) -> String {
    let mut table = vec![header.iter().map(|h| h.to_string()).collect()];
    table.extend(rows.into_iter().map(|(_, r)| r));
    table::render(&table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn usage(cpu: &str, memory: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cpu".to_string(), cpu.to_string()),
            ("memory".to_string(), memory.to_string()),
        ])
    }

    #[test]
    fn cells_read_like_kubectl_top() {
        let (cpu, memory) = amounts(&usage("1", "1536Ki"));
        assert_eq!(cpu_cell(cpu), "1000m");
        assert_eq!(memory_cell(memory), "1Mi");
        assert_eq!(percent(500, 2000), "25%");
        assert_eq!(percent(500, 0), "<unknown>");
    }

    #[test]
    fn a_pod_is_the_sum_of_its_containers() {
        let pod = PodMetrics {
            containers: vec![
                ContainerMetrics {
                    name: "a".into(),
                    usage: usage("250m", "10Mi"),
                },
                ContainerMetrics {
                    name: "b".into(),
                    usage: usage("750m", "6Mi"),
                },
            ],
            ..Default::default()
        };
        assert_eq!(pod_total(&pod), (1000, 16 << 20));
    }

    #[test]
    fn rows_sort_biggest_first_and_align() {
        let rows = vec![
            (
                sort_key(Some("cpu"), (5, 0)),
                vec!["small".into(), "5m".into()],
            ),
            (
                sort_key(Some("cpu"), (900, 0)),
                vec!["big".into(), "900m".into()],
            ),
        ];
        let mut sorted = rows.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let text = render(&["NAME", "CPU(cores)"], sorted);
        assert_eq!(text, "NAME    CPU(cores)\nbig     900m\nsmall   5m\n");
        assert!(check_sort(Some("disk")).is_err());
    }
}
