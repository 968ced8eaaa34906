//! Resource usage: what the kubelet's stats summary gives metrics-server.
//!
//! A sampler reads every running container's counters from the runtime
//! (Docker stats, or /proc for the process runtime) and the host's from
//! /proc every `interval`; usage is the rate between the last two samples
//! of the same container, so a container shows up from its second sample
//! on. `Agent/Stats` serves the latest summary; the API server's
//! `skiff.metrics.v1.Metrics` service gathers them for `skiff top`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use skiff::pb::agent::v1::StatsSummary;
use skiff::pb::meta::v1::ObjectMeta;
use skiff::pb::metrics::v1::{ContainerMetrics, NodeMetrics, PodMetrics};
use skiff::quantity::{Format, Quantity};
use skiff_runtime::{Container, ContainerStats, Runtime, State, labels};

/// The latest summary, shared with the gRPC service.
#[derive(Clone, Default)]
pub struct Latest(Arc<RwLock<Option<StatsSummary>>>);

impl Latest {
    /// The summary of the last sample, once there were two.
    pub fn get(&self) -> Option<StatsSummary> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, summary: StatsSummary) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(summary);
    }
}

/// One reading of cumulative counters.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    stats: ContainerStats,
}

/// Usage between two readings: CPU in millicores, memory as of the later.
fn rate(before: Reading, now: Reading) -> Option<(i64, u64)> {
    let elapsed = now.at.checked_duration_since(before.at)?.as_nanos();
    if elapsed == 0 {
        return None;
    }
    // A restarted container's counter starts again: no rate across it.
    let used = now.stats.cpu_nanos.checked_sub(before.stats.cpu_nanos)?;
    let millicores = (u128::from(used) * 1000 + elapsed / 2) / elapsed;
    Some((
        i64::try_from(millicores).unwrap_or(i64::MAX),
        now.stats.memory_bytes,
    ))
}

/// The usage map as Kubernetes writes it: `cpu` in cores, `memory` in
/// Ki (as metrics-server does).
fn usage(millicores: i64, memory_bytes: u64) -> BTreeMap<String, String> {
    let kib = i64::try_from(memory_bytes / 1024).unwrap_or(i64::MAX / 2048);
    let memory = Quantity::from_value(kib * 1024)
        .unwrap_or_default()
        .with_format(Format::BinarySi);
    BTreeMap::from([
        (
            "cpu".to_string(),
            Quantity::from_milli(millicores).to_string(),
        ),
        ("memory".to_string(), memory.to_string()),
    ])
}

fn timestamp(at: SystemTime) -> skiff::wkt::Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    skiff::wkt::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

fn duration(d: Duration) -> skiff::wkt::Duration {
    skiff::wkt::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The host's counters: busy CPU time (all but idle and iowait, from
/// /proc/stat) and memory in use (MemTotal - MemAvailable).
fn host_reading() -> Option<ContainerStats> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| *t)
        .sum();
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let used_kib = field("MemTotal:")?.saturating_sub(field("MemAvailable:")?);
    Some(ContainerStats {
        cpu_nanos: busy.saturating_mul(1_000_000_000) / per_second,
        memory_bytes: used_kib * 1024,
    })
}

/// Samples usage every `interval` and keeps the latest summary.
pub struct Sampler {
    runtime: Arc<dyn Runtime>,
    node_name: String,
    latest: Latest,
    /// The previous reading of each container (by runtime id) and of the
    /// host (by "").
    previous: HashMap<String, Reading>,
}

impl Sampler {
    /// A sampler of `runtime`'s containers on node `node_name`.
    pub fn new(runtime: Arc<dyn Runtime>, node_name: &str, latest: Latest) -> Self {
        Self {
            runtime,
            node_name: node_name.to_string(),
            latest,
            previous: HashMap::new(),
        }
    }

    /// Samples forever.
    pub async fn run(mut self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sample().await {
                tracing::warn!(error = %e, "sampling resource usage");
            }
        }
    }

    /// Takes one sample and, where there was one before, publishes the
    /// rates.
    pub async fn sample(&mut self) -> skiff_runtime::Result<()> {
        let containers: Vec<Container> = self
            .runtime
            .list(None)
            .await?
            .into_iter()
            .filter(|c| {
                matches!(c.state, State::Running { .. })
                    && c.label(labels::CONTAINER_NAME) != labels::SANDBOX
                    && !c.label(labels::POD_UID).is_empty()
            })
            .collect();
        let readings = futures::future::join_all(containers.iter().map(|c| async {
            let stats = self.runtime.stats(&c.id).await;
            (Instant::now(), stats)
        }))
        .await;
        let now = SystemTime::now();
        let mut window = Duration::ZERO;
        let mut pods: BTreeMap<String, PodMetrics> = BTreeMap::new();
        let mut previous = HashMap::new();
        for (container, (at, stats)) in containers.iter().zip(readings) {
            let Ok(stats) = stats else {
                // Gone between the list and the read: next time.
                continue;
            };
            let reading = Reading { at, stats };
            previous.insert(container.id.clone(), reading);
            let Some(before) = self.previous.get(&container.id).copied() else {
                continue;
            };
            let Some((millicores, memory)) = rate(before, reading) else {
                continue;
            };
            window = window.max(at.duration_since(before.at));
            let uid = container.label(labels::POD_UID);
            let pod = pods.entry(uid.to_string()).or_insert_with(|| PodMetrics {
                api_version: "metrics.k8s.io/v1beta1".into(),
                kind: "PodMetrics".into(),
                metadata: Some(ObjectMeta {
                    name: container.label(labels::POD_NAME).to_string(),
                    namespace: container.label(labels::POD_NAMESPACE).to_string(),
                    uid: uid.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            pod.containers.push(ContainerMetrics {
                name: container.label(labels::CONTAINER_NAME).to_string(),
                usage: usage(millicores, memory),
            });
        }
        let host = host_reading().map(|stats| Reading {
            at: Instant::now(),
            stats,
        });
        let host_before = self.previous.get("").copied();
        if let Some(host) = host {
            previous.insert(String::new(), host);
        }
        self.previous = previous;
        let (Some(before), Some(host)) = (host_before, host) else {
            return Ok(());
        };
        let Some((millicores, memory)) = rate(before, host) else {
            return Ok(());
        };
        let node_window = host.at.duration_since(before.at);
        let node = NodeMetrics {
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "NodeMetrics".into(),
            metadata: Some(ObjectMeta {
                name: self.node_name.clone(),
                ..Default::default()
            }),
            timestamp: Some(timestamp(now)),
            window: Some(duration(node_window)),
            usage: usage(millicores, memory),
        };
        let pods = pods
            .into_values()
            .map(|mut pod| {
                pod.timestamp = Some(timestamp(now));
                pod.window = Some(duration(window));
                pod.containers.sort_by(|a, b| a.name.cmp(&b.name));
                pod
            })
            .collect();
        self.latest.set(StatsSummary {
            node: Some(node),
            pods,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_runtime::fake::FakeRuntime;

    #[test]
    fn rates_are_millicores_over_the_elapsed_time() {
        let start = Instant::now();
        let before = Reading {
            at: start,
            stats: ContainerStats {
                cpu_nanos: 1_000_000_000,
                memory_bytes: 1,
            },
        };
        let after = Reading {
            at: start + Duration::from_secs(2),
            stats: ContainerStats {
                cpu_nanos: 2_000_000_000,
                memory_bytes: 5 << 20,
            },
        };
        assert_eq!(rate(before, after), Some((500, 5 << 20)));
        // A counter that went back (a restart) gives no rate.
        assert_eq!(rate(after, before), None);
        let restarted = Reading {
            at: start + Duration::from_secs(3),
            stats: ContainerStats::default(),
        };
        assert_eq!(rate(after, restarted), None);
    }

    #[test]
    fn usage_is_written_as_kubernetes_quantities() {
        let u = usage(250, 64 << 20);
        assert_eq!(u["cpu"], "250m");
        assert_eq!(u["memory"], "64Mi");
        let u = usage(2000, 1536 + 100);
        assert_eq!(u["cpu"], "2");
        assert_eq!(u["memory"], "1Ki");
    }

    #[test]
    fn the_host_counters_read() {
        let host = host_reading().expect("/proc/stat and /proc/meminfo");
        assert!(host.cpu_nanos > 0);
        assert!(host.memory_bytes > 0);
    }

    #[tokio::test]
    async fn pods_appear_from_their_second_sample_with_their_rates() {
        let fake = Arc::new(FakeRuntime::with_images(&["app"]));
        let runtime: Arc<dyn Runtime> = fake.clone();
        let labels = BTreeMap::from([
            (labels::POD_UID.to_string(), "u1".to_string()),
            (labels::POD_NAME.to_string(), "burn".to_string()),
            (labels::POD_NAMESPACE.to_string(), "default".to_string()),
            (labels::CONTAINER_NAME.to_string(), "main".to_string()),
        ]);
        let mut sandbox_labels = labels.clone();
        sandbox_labels.insert(labels::CONTAINER_NAME.into(), labels::SANDBOX.into());
        let sandbox_id = runtime
            .run_sandbox(&skiff_runtime::SandboxSpec {
                name: "burn".into(),
                labels: sandbox_labels,
                ..Default::default()
            })
            .await
            .unwrap();
        let id = runtime
            .create(&skiff_runtime::ContainerSpec {
                name: "burn-main".into(),
                image: "app".into(),
                labels,
                sandbox_id,
                ..Default::default()
            })
            .await
            .unwrap();
        runtime.start(&id).await.unwrap();
        let latest = Latest::default();
        let mut sampler = Sampler::new(runtime, "n1", latest.clone());
        sampler.sample().await.unwrap();
        assert!(latest.get().is_none(), "one sample gives no rate");
        fake.set_stats(
            &id,
            ContainerStats {
                cpu_nanos: 10_000_000_000,
                memory_bytes: 3 << 20,
            },
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        sampler.sample().await.unwrap();
        let summary = latest.get().expect("a summary after two samples");
        assert_eq!(summary.node.unwrap().metadata.unwrap().name, "n1");
        let [pod] = summary.pods.as_slice() else {
            panic!("one pod: {:?}", summary.pods);
        };
        let meta = pod.metadata.clone().unwrap();
        assert_eq!(
            (meta.namespace.as_str(), meta.name.as_str()),
            ("default", "burn")
        );
        assert_eq!(pod.containers[0].name, "main");
        let cpu: Quantity = pod.containers[0].usage["cpu"].parse().unwrap();
        assert!(cpu.milli_value() > 1000, "10 s of CPU in ~50 ms: {cpu}");
        assert_eq!(pod.containers[0].usage["memory"], "3Mi");
    }
}
