//! The resource quota controller: each ResourceQuota's status — the caps
//! in force (`status.hard`, what admission enforces) and what the
//! namespace uses of them (`status.used`), counted from the objects
//! (Kubernetes' resourcequota controller).
//!
//! Pods, Services and claims are counted from the shared informers, and
//! any change of theirs recounts their namespace's quotas (so a deleted
//! or finished pod frees its share soon); other kinds (`configmaps`,
//! `count/deployments.apps`...) are listed. A count that differs from the
//! status is made again from the API before it is written, and the write
//! is conditional on the quota's version. A resource counted lower than
//! its status is written only once the lower count has held for
//! [`SETTLE`] with the status value unchanged: a create charges its quota
//! before it writes its object, and counted in between, the object is
//! missing — its charge must not go to the next create. Every quota is also recounted every [`RESYNC`], which returns
//! a charge admission made for an object that was then not written, and
//! counts kinds without an informer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff::pb::api::v1::ListRequest;
use skiff::pb::core::v1::{
    PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaStatus, Service,
};
use skiff::quota::{self, ResourceList};
use skiff::{ObjectRef, Resource};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// How often every quota is recounted in full.
pub const RESYNC: Duration = Duration::from_secs(15);
/// How long a count lower than the status must hold, on an unchanged
/// quota, before it is written: far longer than a create takes between
/// its charge and its write.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Resources counted lower than their status: the status value then, and
/// since when the count has been lower with that value.
type Lowered = BTreeMap<String, (String, std::time::Instant)>;

/// See the module doc. Keys are quotas.
pub struct QuotaController {
    api: Api<ResourceQuota>,
    channel: tonic::transport::Channel,
    quotas: Store<ResourceQuota>,
    pods: Store<Pod>,
    services: Store<Service>,
    claims: Store<PersistentVolumeClaim>,
    /// Per quota, the resources counted lower than their status.
    lower: std::sync::Mutex<std::collections::HashMap<ObjectRef, Lowered>>,
}

/// Counts the objects of the namespaced kind whose count `resource`
/// names (`configmaps`, `count/jobs.batch`); None for a name no kind
/// counts by.
macro_rules! count_every_kind {
    ($($st:ident $kind:ident, $ty:path, $tr:path, $srv:ty;)*) => {
        async fn count_of(
            channel: &tonic::transport::Channel,
            namespace: &str,
            resource: &str,
        ) -> Result<Option<usize>, Error> {
            $(
                if <$ty as Resource>::NAMESPACED
                    && quota::covers::<$ty>(resource)
                {
                    let list = Api::<$ty>::new(channel.clone())
                        .list(ListRequest {
                            namespace: namespace.to_string(),
                            ..Default::default()
                        })
                        .await?;
                    return Ok(Some(<$ty as Resource>::list_parts(list).1.len()));
                }
            )*
            Ok(None)
        }
    };
}

skiff::for_each_kind!(count_every_kind);

/// Whether the informers' kinds account for `resource` (else it is a
/// count of another kind).
fn from_informers(resource: &str) -> bool {
    quota::covers::<Pod>(resource)
        || quota::covers::<Service>(resource)
        || quota::covers::<PersistentVolumeClaim>(resource)
}

/// What the quota's namespace uses of what it caps, counting the objects
/// of the informers' kinds at `now` (Unix seconds).
pub fn used_by(
    q: &ResourceQuota,
    pods: &[Arc<Pod>],
    services: &[Arc<Service>],
    claims: &[Arc<PersistentVolumeClaim>],
    now: i64,
) -> ResourceList {
    let hard = q.spec.clone().unwrap_or_default().hard;
    let mut usages: Vec<ResourceList> = Vec::new();
    usages.extend(
        pods.iter()
            .filter(|p| quota::quota_counts(q, p.as_ref()))
            .map(|p| quota::pod_usage_at(p, now)),
    );
    usages.extend(
        services
            .iter()
            .filter(|s| quota::quota_counts(q, s.as_ref()))
            .map(|s| quota::service_usage(s)),
    );
    usages.extend(
        claims
            .iter()
            .filter(|c| quota::quota_counts(q, c.as_ref()))
            .map(|c| quota::claim_usage(c)),
    );
    quota::used_of(&hard, &usages)
}

impl QuotaController {
    fn forget(&self, key: &ObjectRef) {
        if let Ok(mut lower) = self.lower.lock() {
            lower.remove(key);
        }
    }

    fn quotas_in(&self, namespace: &str) -> Vec<ObjectRef> {
        self.quotas
            .list()
            .into_iter()
            .filter(|q| q.namespace() == namespace)
            .map(|q| q.object_ref())
            .collect()
    }

    /// The status `q` should have, counting the given objects of its
    /// namespace and listing the kinds without an informer.
    async fn count(
        &self,
        q: &ResourceQuota,
        pods: &[Arc<Pod>],
        services: &[Arc<Service>],
        claims: &[Arc<PersistentVolumeClaim>],
    ) -> Result<ResourceQuotaStatus, Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut used = used_by(q, pods, services, claims, now);
        let spec = q.spec.clone().unwrap_or_default();
        // Scoped quotas count pods only (validation keeps them to that).
        let scoped = !quota::scope_requirements(&spec).is_empty();
        for resource in spec.hard.keys().filter(|r| !scoped && !from_informers(r)) {
            if let Some(n) = count_of(&self.channel, q.namespace(), resource).await? {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                used.insert(
                    resource.clone(),
                    skiff::quantity::Quantity::from_milli(n.saturating_mul(1000)),
                );
            }
        }
        Ok(ResourceQuotaStatus {
            hard: spec.hard,
            used: quota::to_strings(&used),
        })
    }

    /// The status to write for a count: the count, but a resource counted
    /// lower than its status keeps its status value until the lower count
    /// has held for [`SETTLE`] with that value unchanged; and when the
    /// next held-back resource settles.
    fn settle(
        &self,
        key: &ObjectRef,
        status: Option<&ResourceQuotaStatus>,
        counted: &ResourceQuotaStatus,
        now: std::time::Instant,
    ) -> Result<(ResourceQuotaStatus, Option<Duration>), Error> {
        let was = status.map(|s| s.used.clone()).unwrap_or_default();
        let before = quota::parse(&was);
        let mut out = counted.clone();
        let mut wait: Option<Duration> = None;
        let mut lower = self
            .lower
            .lock()
            .map_err(|_| Error::Other("poisoned".into()))?;
        let seen = lower.remove(key).unwrap_or_default();
        let mut still = Lowered::new();
        for (k, v) in quota::parse(&counted.used) {
            let (Some(old), Some(old_text)) = (before.get(&k), was.get(&k)) else {
                continue;
            };
            if v >= *old {
                continue;
            }
            let since = match seen.get(&k) {
                Some((value, at)) if value == old_text => *at,
                _ => now,
            };
            let held = now.duration_since(since);
            if held < SETTLE {
                out.used.insert(k.clone(), old_text.clone());
                wait = Some(wait.map_or(SETTLE - held, |w| w.min(SETTLE - held)));
            }
            still.insert(k, (old_text.clone(), since));
        }
        if !still.is_empty() {
            lower.insert(key.clone(), still);
        }
        Ok((out, wait))
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(cached) = self.quotas.get(&key.namespace, &key.name) else {
            self.forget(&key);
            return Ok(Action::AwaitChange);
        };
        let in_ns = |ns: &str| ns == key.namespace;
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| in_ns(p.namespace()))
            .collect();
        let services: Vec<Arc<Service>> = self
            .services
            .list()
            .into_iter()
            .filter(|s| in_ns(s.namespace()))
            .collect();
        let claims: Vec<Arc<PersistentVolumeClaim>> = self
            .claims
            .list()
            .into_iter()
            .filter(|c| in_ns(c.namespace()))
            .collect();
        let quick = self.count(&cached, &pods, &services, &claims).await?;
        let (quick, wait) = self.settle(
            &key,
            cached.status.as_ref(),
            &quick,
            std::time::Instant::now(),
        )?;
        let again = Action::Requeue(wait.unwrap_or(RESYNC));
        if same_status(cached.status.as_ref(), &quick) {
            return Ok(again);
        }
        // A change to write: count again from the API itself. The
        // informers may be behind a create that admission charged a moment
        // ago; counting from them would hand its share to the next create.
        let q = match self.api.get(&key.namespace, &key.name).await {
            Ok(q) => q,
            Err(s) if s.code() == tonic::Code::NotFound => {
                self.forget(&key);
                return Ok(Action::AwaitChange);
            }
            Err(s) => return Err(s.into()),
        };
        let listed = ListRequest {
            namespace: key.namespace.clone(),
            ..Default::default()
        };
        let pods = arcs(Pod::list_parts(
            Api::<Pod>::new(self.channel.clone())
                .list(listed.clone())
                .await?,
        ));
        let services = arcs(Service::list_parts(
            Api::<Service>::new(self.channel.clone())
                .list(listed.clone())
                .await?,
        ));
        let claims = arcs(PersistentVolumeClaim::list_parts(
            Api::<PersistentVolumeClaim>::new(self.channel.clone())
                .list(listed)
                .await?,
        ));
        let counted = self.count(&q, &pods, &services, &claims).await?;
        let (status, wait) =
            self.settle(&key, q.status.as_ref(), &counted, std::time::Instant::now())?;
        let again = Action::Requeue(wait.unwrap_or(RESYNC));
        if same_status(q.status.as_ref(), &status) {
            return Ok(again);
        }
        let mut updated = q;
        updated.status = Some(status);
        match self.api.update_status(updated).await {
            Ok(_) => tracing::debug!(quota = %key, "quota usage counted"),
            // Charged or changed meanwhile: count again.
            Err(s) if s.code() == tonic::Code::Aborted => {
                return Ok(Action::Requeue(Duration::from_millis(100)));
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                self.forget(&key);
                return Ok(Action::AwaitChange);
            }
            Err(s) => return Err(s.into()),
        }
        Ok(again)
    }
}

/// A listed page's objects, shared.
fn arcs<L, K>((_, items): (L, Vec<K>)) -> Vec<Arc<K>> {
    items.into_iter().map(Arc::new).collect()
}

/// Whether two statuses say the same amounts (`1000m` is `1`).
fn same_status(old: Option<&ResourceQuotaStatus>, new: &ResourceQuotaStatus) -> bool {
    let Some(old) = old else {
        return false;
    };
    let same = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.len() == b.len() && quota::parse(a) == quota::parse(b) && a.keys().eq(b.keys())
    };
    same(&old.hard, &new.hard) && same(&old.used, &new.used)
}

impl Reconciler for QuotaController {
    fn name(&self) -> &'static str {
        "resourcequota"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the quota controller: keys are quotas, woken by quotas and by
/// the pods, Services and claims of their namespace.
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed, keys_of};
    use futures::FutureExt as _;
    let controller = Arc::new(QuotaController {
        api: Api::new(shared.channel.clone()),
        channel: shared.channel.clone(),
        quotas: shared.resourcequotas.store.clone(),
        pods: shared.pods.store.clone(),
        services: shared.services.store.clone(),
        claims: shared.persistentvolumeclaims.store.clone(),
        lower: Default::default(),
    });
    let (by_pod, by_service, by_claim) = (
        Arc::clone(&controller),
        Arc::clone(&controller),
        Arc::clone(&controller),
    );
    let quotas = shared.resourcequotas.store.clone();
    Controller::new(controller)
        .for_kind(&shared.resourcequotas)
        .watches(&shared.pods, move |change| {
            by_pod.quotas_in(changed(change).namespace())
        })
        .watches(&shared.services, move |change| {
            by_service.quotas_in(changed(change).namespace())
        })
        .watches(&shared.persistentvolumeclaims, move |change| {
            by_claim.quotas_in(changed(change).namespace())
        })
        .run(move || keys_of(&quotas), workers)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{
        Container, PodSpec, PodStatus, ResourceQuotaSpec, ResourceRequirements,
    };

    fn pod(cpu: &str, phase: &str) -> Arc<Pod> {
        Arc::new(Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: [("cpu".to_string(), cpu.to_string())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: phase.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn status(used: &[(&str, &str)]) -> ResourceQuotaStatus {
        ResourceQuotaStatus {
            used: used
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_lower_count_is_written_only_once_it_has_held() {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let controller = QuotaController {
            api: Api::new(channel.clone()),
            channel,
            quotas: skiff_client::store::store::<ResourceQuota>().1,
            pods: skiff_client::store::store::<Pod>().1,
            services: skiff_client::store::store::<Service>().1,
            claims: skiff_client::store::store::<PersistentVolumeClaim>().1,
            lower: Default::default(),
        };
        let key = ObjectRef::new("team", "compute");
        let t0 = std::time::Instant::now();
        let stored = status(&[("pods", "3"), ("secrets", "1")]);
        // Pods went down, secrets up: the rise is written at once, the
        // fall held back.
        let counted = status(&[("pods", "2"), ("secrets", "2")]);
        let (out, wait) = controller
            .settle(&key, Some(&stored), &counted, t0)
            .unwrap();
        assert_eq!(out, status(&[("pods", "3"), ("secrets", "2")]));
        assert_eq!(wait, Some(SETTLE));
        let half = t0 + SETTLE / 2;
        let (out, wait) = controller
            .settle(&key, Some(&stored), &counted, half)
            .unwrap();
        assert_eq!(out.used["pods"], "3");
        assert_eq!(wait, Some(SETTLE / 2));
        // A charge meanwhile (the status value changed): the clock starts
        // again.
        let charged = status(&[("pods", "4"), ("secrets", "2")]);
        let (out, _) = controller
            .settle(&key, Some(&charged), &counted, t0 + SETTLE)
            .unwrap();
        assert_eq!(out.used["pods"], "4");
        let (out, wait) = controller
            .settle(&key, Some(&charged), &counted, t0 + SETTLE * 2)
            .unwrap();
        assert_eq!((out.used["pods"].as_str(), wait), ("2", None));
        controller.forget(&key);
        assert!(controller.lower.lock().unwrap().is_empty());
    }

    #[test]
    fn used_counts_live_pods_services_and_zero_for_the_rest() {
        let q = ResourceQuota {
            spec: Some(ResourceQuotaSpec {
                hard: [
                    ("pods", "5"),
                    ("requests.cpu", "2"),
                    ("services.nodeports", "4"),
                    ("persistentvolumeclaims", "1"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pods = vec![
            pod("500m", "Running"),
            pod("1", "Pending"),
            pod("1", "Succeeded"),
        ];
        let services = vec![Arc::new(Service {
            spec: Some(skiff::pb::core::v1::ServiceSpec {
                r#type: "NodePort".into(),
                ports: vec![Default::default()],
                ..Default::default()
            }),
            ..Default::default()
        })];
        let used = quota::to_strings(&used_by(&q, &pods, &services, &[], 0));
        let want: BTreeMap<String, String> = [
            ("persistentvolumeclaims", "0"),
            ("pods", "2"),
            ("requests.cpu", "1500m"),
            ("services.nodeports", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(used, want);
        assert!(from_informers("requests.cpu"));
        assert!(!from_informers("configmaps"));
        assert!(!from_informers("count/deployments.apps"));
    }
}
