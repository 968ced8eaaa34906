//! The horizontal pod autoscaler: every sync period, each
//! HorizontalPodAutoscaler reads its target's pods' usage from the
//! metrics API (`skiff.metrics.v1.Metrics`, what `skiff top` reads) and
//! sets the target's replicas so that the average use meets the target —
//! a share of the pods' requests (`Utilization`) or a quantity per pod
//! (`AverageValue`) — with Kubernetes' 10 % tolerance, the most any
//! metric asks for, bounded by min/max replicas and by the stabilization
//! windows (scaling down takes the highest recommendation of the last
//! 300 s by default, scaling up the lowest of its window, 0 s by default).
//!
//! The arithmetic is pure ([`metric_replicas`], [`stabilize`]) and unit
//! tested.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff::pb::api::v1::ListRequest;
use skiff::pb::apps::v1::{Deployment, ReplicaSet};
use skiff::pb::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricStatus, MetricTarget, MetricValueStatus, ResourceMetricStatus,
};
use skiff::pb::core::v1::{Pod, ReplicationController};
use skiff::pb::metrics::v1::metrics_client::MetricsClient;
use skiff::quantity::Quantity;
use skiff::selector::LabelSelector;
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// Changes within this share of the target are not acted on.
const TOLERANCE: f64 = 0.1;
/// Kubernetes' default scale-down window.
const DOWN_WINDOW_SECS: i32 = 300;

/// One pod's use of a resource and what it requests, in milli-units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Use (milli-cores, or milli-bytes).
    pub usage: i64,
    /// Request (0: none).
    pub request: i64,
}

/// The replicas one metric asks for, and what it measured.
///
/// # Errors
/// No samples yet, or a `Utilization` target over pods without requests.
pub fn metric_replicas(
    resource: &str,
    target: &MetricTarget,
    samples: &[Sample],
    current: i32,
) -> Result<(i32, MetricValueStatus), String> {
    if samples.is_empty() {
        return Err(format!("no {resource} metrics for the pods yet"));
    }
    let count = samples.len() as f64;
    let usage: i64 = samples.iter().map(|s| s.usage).sum();
    let average = Quantity::from_milli(usage / samples.len() as i64).to_string();
    let scaled = |ratio: f64| -> i32 {
        if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (ratio * count).ceil() as i32
        }
    };
    match target.r#type.as_str() {
        "Utilization" => {
            if samples.iter().any(|s| s.request <= 0) {
                return Err(format!("missing request for {resource} on a pod"));
            }
            let requested: i64 = samples.iter().map(|s| s.request).sum();
            let utilization = usage as f64 * 100.0 / requested as f64;
            let wanted = f64::from(target.average_utilization.unwrap_or(80).max(1));
            Ok((
                scaled(utilization / wanted),
                MetricValueStatus {
                    average_utilization: Some(utilization.round() as i32),
                    average_value: average,
                    value: String::new(),
                },
            ))
        }
        "AverageValue" => {
            let wanted = target
                .average_value
                .parse::<Quantity>()
                .map_err(|e| format!("averageValue {:?}: {e}", target.average_value))?
                .milli_value()
                .max(1);
            let ratio = (usage as f64 / count) / wanted as f64;
            Ok((
                scaled(ratio),
                MetricValueStatus {
                    average_utilization: None,
                    average_value: average,
                    value: String::new(),
                },
            ))
        }
        other => Err(format!("target type {other:?} is not supported")),
    }
}

/// Kubernetes' stabilization: the replicas are held above the highest
/// recommendation of the scale-down window and below the lowest of the
/// scale-up window (`history` holds (age, recommendation), the newest
/// included).
pub fn stabilize(
    current: i32,
    history: &[(Duration, i32)],
    up_window: Duration,
    down_window: Duration,
) -> i32 {
    let within = |window: Duration| {
        history
            .iter()
            .filter(move |(age, _)| *age <= window)
            .map(|(_, r)| *r)
    };
    let up = within(up_window).min().unwrap_or(current);
    let down = within(down_window).max().unwrap_or(current);
    let mut stabilized = current;
    if stabilized < up {
        stabilized = up;
    }
    if stabilized > down {
        stabilized = down;
    }
    stabilized
}

/// What the autoscaler needs of a scalable kind.
trait Scalable: Resource {
    fn replicas(&self) -> i32;
    fn set_replicas(&mut self, replicas: i32);
    fn selector(&self) -> Option<LabelSelector>;
}

fn meta_selector(s: Option<&skiff::pb::meta::v1::LabelSelector>) -> Option<LabelSelector> {
    LabelSelector::try_from(s?).ok()
}

impl Scalable for Deployment {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
    fn selector(&self) -> Option<LabelSelector> {
        meta_selector(self.spec.as_ref()?.selector.as_ref())
    }
}

impl Scalable for ReplicaSet {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
    fn selector(&self) -> Option<LabelSelector> {
        meta_selector(self.spec.as_ref()?.selector.as_ref())
    }
}

impl Scalable for ReplicationController {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
    fn selector(&self) -> Option<LabelSelector> {
        let map = &self.spec.as_ref()?.selector;
        LabelSelector::from_parts(map, &[]).ok()
    }
}

/// The scaled object's replicas and selector, read live.
async fn read_target<K: Scalable>(
    api: &Api<K>,
    namespace: &str,
    name: &str,
) -> Result<(i32, Option<LabelSelector>), tonic::Status> {
    let obj = api.get(namespace, name).await?;
    Ok((obj.replicas(), obj.selector()))
}

/// Sets the object's replicas (read-modify-write, retried on races).
async fn scale_target<K: Scalable>(
    api: &Api<K>,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Result<(), tonic::Status> {
    let mut last = tonic::Status::aborted("kept changing");
    for _ in 0..5 {
        let mut obj = api.get(namespace, name).await?;
        obj.set_replicas(replicas);
        match api.update(obj).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::Aborted => last = s,
            Err(s) => return Err(s),
        }
    }
    Err(last)
}

/// See the module doc.
pub struct Autoscaler {
    recorder: Arc<Recorder>,
    autoscalers: Api<HorizontalPodAutoscaler>,
    store: Store<HorizontalPodAutoscaler>,
    pods: Store<Pod>,
    metrics: MetricsClient<tonic::transport::Channel>,
    deployments: Api<Deployment>,
    replicasets: Api<ReplicaSet>,
    controllers: Api<ReplicationController>,
    /// How often each autoscaler looks again.
    sync: Duration,
    /// Recommendations per autoscaler: (when, replicas).
    history: Mutex<HashMap<ObjectRef, Vec<(Instant, i32)>>>,
    /// The current scale-up period per autoscaler: when it began and the
    /// replicas then (the rate limit counts from them, however often the
    /// autoscaler syncs within the period).
    periods: Mutex<HashMap<ObjectRef, (Instant, i32)>>,
}

impl Autoscaler {
    /// An autoscaler over `channel` and the shared caches, syncing every
    /// `sync`.
    pub fn new(
        recorder: Arc<Recorder>,
        channel: tonic::transport::Channel,
        store: Store<HorizontalPodAutoscaler>,
        pods: Store<Pod>,
        sync: Duration,
    ) -> Self {
        Self {
            recorder,
            autoscalers: Api::new(channel.clone()),
            store,
            pods,
            metrics: MetricsClient::new(channel.clone()),
            deployments: Api::new(channel.clone()),
            replicasets: Api::new(channel.clone()),
            controllers: Api::new(channel),
            sync,
            history: Mutex::new(HashMap::new()),
            periods: Mutex::new(HashMap::new()),
        }
    }

    fn event(
        &self,
        hpa: &HorizontalPodAutoscaler,
        kind: EventType,
        reason: &'static str,
        message: String,
    ) {
        let (recorder, hpa) = (Arc::clone(&self.recorder), hpa.clone());
        tokio::spawn(async move {
            recorder.record(&hpa, kind, reason, &message).await;
        });
    }

    /// Per resource (cpu, memory), each ready pod's use and request.
    async fn samples(
        &self,
        namespace: &str,
        selector: &LabelSelector,
    ) -> Result<HashMap<String, Vec<Sample>>, tonic::Status> {
        let usage = self
            .metrics
            .clone()
            .list_pod_metrics(ListRequest {
                namespace: namespace.to_string(),
                label_selector: selector.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let milli = |q: Option<&String>| {
            q.and_then(|q| q.parse::<Quantity>().ok())
                .map_or(0, |q| q.milli_value())
        };
        let mut samples: HashMap<String, Vec<Sample>> = HashMap::new();
        for item in usage.items {
            let name = item
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            let Some(pod) = self.pods.get(namespace, &name) else {
                continue;
            };
            let running = pod.status.as_ref().is_some_and(|s| s.phase == "Running")
                && pod
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.deletion_timestamp.is_none());
            if !running {
                continue;
            }
            let containers = pod.spec.clone().unwrap_or_default().containers;
            for resource in ["cpu", "memory"] {
                let used: i64 = item
                    .containers
                    .iter()
                    .map(|c| milli(c.usage.get(resource)))
                    .sum();
                let requested: i64 = containers
                    .iter()
                    .map(|c| milli(c.resources.as_ref().and_then(|r| r.requests.get(resource))))
                    .sum();
                samples
                    .entry(resource.to_string())
                    .or_default()
                    .push(Sample {
                        usage: used,
                        request: requested,
                    });
            }
        }
        Ok(samples)
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(hpa) = self.store.get(&key.namespace, &key.name) else {
            if let Ok(mut h) = self.history.lock() {
                h.remove(&key);
            }
            if let Ok(mut p) = self.periods.lock() {
                p.remove(&key);
            }
            return Ok(Action::AwaitChange);
        };
        let spec = hpa.spec.clone().unwrap_or_default();
        let target = spec.scale_target_ref.clone().unwrap_or_default();
        let ns = key.namespace.as_str();
        let read = match target.kind.as_str() {
            "Deployment" => read_target(&self.deployments, ns, &target.name).await,
            "ReplicaSet" => read_target(&self.replicasets, ns, &target.name).await,
            "ReplicationController" => read_target(&self.controllers, ns, &target.name).await,
            other => Err(tonic::Status::invalid_argument(format!(
                "kind {other:?} cannot be scaled"
            ))),
        };
        let mut conditions = Vec::new();
        let condition = |kind: &str, ok: bool, reason: &str, message: String| {
            HorizontalPodAutoscalerCondition {
                r#type: kind.into(),
                status: if ok { "True" } else { "False" }.into(),
                last_transition_time: Some(skiff::time::now_seconds()),
                reason: reason.into(),
                message,
            }
        };
        let (current, selector) = match read {
            Ok((current, Some(selector))) => (current, selector),
            Ok((_, None)) | Err(_) => {
                let why = format!(
                    "the target {} {:?} cannot be read",
                    target.kind, target.name
                );
                conditions.push(condition(
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    why.clone(),
                ));
                self.report(&hpa, 0, 0, Vec::new(), conditions, false)
                    .await?;
                return Ok(Action::Requeue(self.sync));
            }
        };
        let samples = match self.samples(ns, &selector).await {
            Ok(s) => s,
            Err(s) => {
                let why = format!("the metrics API: {}", s.message());
                conditions.push(condition(
                    "ScalingActive",
                    false,
                    "FailedGetResourceMetric",
                    why,
                ));
                self.report(&hpa, current, current, Vec::new(), conditions, false)
                    .await?;
                return Ok(Action::Requeue(self.sync));
            }
        };
        let mut recommendation: Option<i32> = None;
        let mut measured = Vec::new();
        let mut failure = None;
        for metric in &spec.metrics {
            let Some(resource) = &metric.resource else {
                continue;
            };
            let target = resource.target.clone().unwrap_or_default();
            let empty = Vec::new();
            let samples = samples.get(&resource.name).unwrap_or(&empty);
            match metric_replicas(&resource.name, &target, samples, current) {
                Ok((replicas, value)) => {
                    recommendation = Some(recommendation.map_or(replicas, |r| r.max(replicas)));
                    measured.push(MetricStatus {
                        r#type: "Resource".into(),
                        resource: Some(ResourceMetricStatus {
                            name: resource.name.clone(),
                            current: Some(value),
                        }),
                    });
                }
                Err(why) => failure = Some(why),
            }
        }
        let Some(recommendation) = recommendation else {
            let why = failure.unwrap_or_else(|| "no metrics".into());
            conditions.push(condition(
                "ScalingActive",
                false,
                "FailedGetResourceMetric",
                why,
            ));
            self.report(&hpa, current, current, measured, conditions, false)
                .await?;
            return Ok(Action::Requeue(self.sync));
        };
        let min = spec.min_replicas.unwrap_or(1).max(1);
        let max = spec.max_replicas.max(min);
        let bounded = recommendation.clamp(min, max);
        let (up_window, down_window) = windows(spec.behavior.as_ref());
        let desired = {
            let mut all = self
                .history
                .lock()
                .map_err(|_| Error::Other("poisoned".into()))?;
            let history = all.entry(key.clone()).or_default();
            // Ages from this recommendation's time: it is in both windows.
            let now = Instant::now();
            history.push((now, bounded));
            let keep = up_window.max(down_window);
            history.retain(|(at, _)| now.duration_since(*at) <= keep);
            let aged: Vec<(Duration, i32)> = history
                .iter()
                .map(|(at, r)| (now.duration_since(*at), *r))
                .collect();
            let stable = stabilize(current, &aged, up_window, down_window);
            // Kubernetes' scale-up rate, counted from the replicas at the
            // start of the current 15 s period.
            let mut periods = self
                .periods
                .lock()
                .map_err(|_| Error::Other("poisoned".into()))?;
            let period = periods.entry(key.clone()).or_insert((now, current));
            if now.duration_since(period.0) >= SCALE_UP_PERIOD {
                *period = (now, current);
            }
            let limit = scale_up_limit(period.1, spec.behavior.is_some());
            stable.min(limit.max(current)).clamp(min, max)
        };
        let mut scaled = false;
        if desired != current {
            let result = match target.kind.as_str() {
                "Deployment" => scale_target(&self.deployments, ns, &target.name, desired).await,
                "ReplicaSet" => scale_target(&self.replicasets, ns, &target.name, desired).await,
                _ => scale_target(&self.controllers, ns, &target.name, desired).await,
            };
            match result {
                Ok(()) => {
                    scaled = true;
                    let direction = if desired > current { "above" } else { "below" };
                    self.event(
                        &hpa,
                        EventType::Normal,
                        "SuccessfulRescale",
                        format!("New size: {desired}; reason: resource use {direction} target"),
                    );
                }
                Err(s) => {
                    self.event(
                        &hpa,
                        EventType::Warning,
                        "FailedRescale",
                        s.message().to_string(),
                    );
                    return Err(s.into());
                }
            }
        }
        conditions.push(condition(
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size or was applied".into(),
        ));
        conditions.push(condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "the HPA was able to compute the replica count from the resource metrics".into(),
        ));
        let limited = recommendation != bounded;
        conditions.push(condition(
            "ScalingLimited",
            limited,
            if recommendation > max {
                "TooManyReplicas"
            } else if recommendation < min {
                "TooFewReplicas"
            } else {
                "DesiredWithinRange"
            },
            if limited {
                format!("the desired count {recommendation} is outside [{min}, {max}]")
            } else {
                format!("the desired count is within [{min}, {max}]")
            },
        ));
        self.report(&hpa, current, desired, measured, conditions, scaled)
            .await?;
        Ok(Action::Requeue(self.sync))
    }

    /// Writes the status when it changed; a condition keeps its
    /// transition time while its status stays.
    async fn report(
        &self,
        hpa: &HorizontalPodAutoscaler,
        current: i32,
        desired: i32,
        measured: Vec<MetricStatus>,
        mut conditions: Vec<HorizontalPodAutoscalerCondition>,
        scaled: bool,
    ) -> Result<(), Error> {
        let before = hpa.status.clone().unwrap_or_default();
        for c in &mut conditions {
            if let Some(old) = before
                .conditions
                .iter()
                .find(|o| o.r#type == c.r#type && o.status == c.status)
            {
                c.last_transition_time.clone_from(&old.last_transition_time);
            }
        }
        let status = HorizontalPodAutoscalerStatus {
            observed_generation: hpa.metadata.as_ref().map(|m| m.generation),
            last_scale_time: if scaled {
                Some(skiff::time::now_seconds())
            } else {
                before.last_scale_time
            },
            current_replicas: current,
            desired_replicas: desired,
            current_metrics: measured,
            conditions,
        };
        if hpa.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = hpa.clone();
        updated.status = Some(status);
        match self.autoscalers.update_status(updated).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::Aborted || s.code() == tonic::Code::NotFound => {
                Ok(())
            }
            Err(s) => Err(s.into()),
        }
    }
}

impl Reconciler for Autoscaler {
    fn name(&self) -> &'static str {
        "horizontalpodautoscaling"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the autoscaler controller: each autoscaler requeues itself every
/// sync period; a change to one is looked at at once.
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, keys_of};
    use futures::FutureExt as _;
    let controller = Arc::new(Autoscaler::new(
        Arc::clone(&shared.recorder),
        shared.channel.clone(),
        shared.autoscalers.store.clone(),
        shared.pods.store.clone(),
        shared.autoscaler_sync,
    ));
    let store = shared.autoscalers.store.clone();
    Controller::new(controller)
        .for_kind(&shared.autoscalers)
        .reads(&shared.pods.store)
        .run(move || keys_of(&store), workers)
        .boxed()
}

/// The period Kubernetes' scale-up rate is counted over.
const SCALE_UP_PERIOD: Duration = Duration::from_secs(15);

/// The stabilization windows, up and down: `behavior.scaleUp` and
/// `behavior.scaleDown`'s `stabilizationWindowSeconds`, or Kubernetes'
/// defaults (none up, 300 s down).
fn windows(
    behavior: Option<&skiff::pb::autoscaling::v2::HorizontalPodAutoscalerBehavior>,
) -> (Duration, Duration) {
    let window = |rules: Option<&skiff::pb::autoscaling::v2::HpaScalingRules>, default: i32| {
        Duration::from_secs(
            rules
                .and_then(|r| r.stabilization_window_seconds)
                .unwrap_or(default)
                .max(0)
                .unsigned_abs()
                .into(),
        )
    };
    let behavior = behavior.cloned().unwrap_or_default();
    (
        window(behavior.scale_up.as_ref(), 0),
        window(behavior.scale_down.as_ref(), DOWN_WINDOW_SECS),
    )
}

/// The most replicas a scale-up period may reach from `start`, the
/// replicas when it began: with a `behavior`, Kubernetes' default
/// policies (4 pods or 100%, the larger); without one, its older rule
/// (twice as many, at least 4).
fn scale_up_limit(start: i32, behavior: bool) -> i32 {
    if behavior {
        start.saturating_add(4).max(start.saturating_mul(2))
    } else {
        start.saturating_mul(2).max(4)
    }
}

#[cfg(test)]
mod tests;
