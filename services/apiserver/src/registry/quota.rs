//! ResourceQuota admission, on create (and on an update, for what it
//! adds: a Service made a LoadBalancer): every quota of the namespace
//! that counts the object and caps something it uses is charged before
//! the object is written — its `status.used` raised by a write conditional on
//! the version read, so two creates racing for the last of a quota cannot
//! both have it — and a create that would pass a cap is refused with
//! Kubernetes' message. A charge whose object then is not written stays
//! until the quota controller's next count, as in Kubernetes.

use std::collections::BTreeSet;

use skiff::pb::core::v1::{Pod, ResourceQuota};
use skiff::quantity::Quantity;
use skiff::quota::{self, ResourceList};

use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::*;

impl Registry {
    /// Whether `namespace` has a ResourceQuota (as the index knows).
    pub(super) async fn has_quotas(&self, namespace: &str) -> Result<bool> {
        Ok(!self.indexed(&self.quotas, namespace).await?.is_empty())
    }

    /// Charges the namespace's quotas for `obj` using `usage` (all it
    /// uses on a create, what it adds on an update; on a dry run, only
    /// checks).
    ///
    /// # Errors
    /// PERMISSION_DENIED (Kubernetes' 403) when a cap would be passed or
    /// a pod lacks a request a quota needs; ABORTED when the quotas kept
    /// changing.
    pub(super) async fn charge_quotas<K: Strategy>(
        &self,
        obj: &K,
        usage: &ResourceList,
        dry_run: bool,
    ) -> Result<()> {
        // Callers ask has_quotas first (a namespace without any is the
        // common case and reads nothing more).
        if !K::NAMESPACED || usage.is_empty() {
            return Ok(());
        }
        let subject = Charged {
            plural: K::PLURAL,
            namespace: obj.namespace(),
            name: obj.name(),
            covers: &quota::covers::<K>,
            counted_by: &|q| quota::quota_counts(q, obj),
            pod: (obj as &dyn std::any::Any).downcast_ref::<Pod>(),
        };
        self.charge(&subject, usage, dry_run).await
    }

    /// [`Self::charge_quotas`] once for every kind: what it needs of the
    /// object is in `obj`.
    async fn charge(&self, obj: &Charged<'_>, usage: &ResourceList, dry_run: bool) -> Result<()> {
        let namespace = obj.namespace;
        let refused = |why: String| {
            ApiError::Denied(format!("{} {:?} is forbidden: {why}", obj.plural, obj.name))
        };
        // Quotas charged already by an earlier try (not charged twice).
        let mut charged: BTreeSet<String> = BTreeSet::new();
        for _ in 0..MAX_RETRIES {
            // The quotas as stored now: their versions make the charge
            // conditional.
            let list = self
                .list::<ResourceQuota>(ListRequest {
                    namespace: namespace.to_string(),
                    ..Default::default()
                })
                .await?;
            let (_, quotas) = ResourceQuota::list_parts(list);
            let mut charges = Vec::new();
            for mut q in quotas {
                if charged.contains(q.name()) {
                    continue;
                }
                let status = q.status.clone().unwrap_or_default();
                // A quota counts once its controller has said what it
                // caps (Kubernetes matches on status.hard): what it caps
                // of what the kind uses, whether this object uses it or
                // not (a pod without requests under a CPU quota).
                let capped: BTreeSet<String> = status
                    .hard
                    .keys()
                    .filter(|k| (obj.covers)(k))
                    .cloned()
                    .collect();
                if capped.is_empty() || !(obj.counted_by)(&q) {
                    continue;
                }
                if let Some(pod) = obj.pod
                    && let Some(why) = quota::missing_requirements(pod, &capped)
                {
                    return Err(refused(format!("failed quota: {}: {why}", q.name())));
                }
                if capped.iter().any(|k| !status.used.contains_key(k)) {
                    return Err(refused(format!(
                        "status unknown for quota: {}, resources: {}",
                        q.name(),
                        capped.iter().cloned().collect::<Vec<_>>().join(",")
                    )));
                }
                let hard = quota::parse(&status.hard);
                let used = quota::parse(&status.used);
                let requested: ResourceList = quota::mask(usage, &capped)
                    .into_iter()
                    .filter(|(_, v)| !v.is_zero())
                    .collect();
                if requested.is_empty() {
                    continue;
                }
                let mut after = used.clone();
                quota::add(&mut after, &requested);
                let exceeded: Vec<&String> = requested
                    .keys()
                    .filter(|k| after.get(*k) > hard.get(*k))
                    .collect();
                if !exceeded.is_empty() {
                    let zero = Quantity::default();
                    let at = |list: &ResourceList| -> ResourceList {
                        exceeded
                            .iter()
                            .map(|k| ((*k).clone(), *list.get(*k).unwrap_or(&zero)))
                            .collect()
                    };
                    return Err(refused(format!(
                        "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                        q.name(),
                        quota::pretty(&at(&requested)),
                        quota::pretty(&at(&used)),
                        quota::pretty(&at(&hard)),
                    )));
                }
                let status = q.status.get_or_insert_with(Default::default);
                for (k, v) in quota::mask(&after, requested.keys()) {
                    status.used.insert(k, v.to_string());
                }
                charges.push(q);
            }
            if dry_run {
                return Ok(());
            }
            let mut raced = false;
            for q in charges {
                let name = q.name().to_string();
                // Boxed: an update charges quotas, and this is an update.
                match Box::pin(self.update_status(q)).await {
                    Ok(_) => {
                        charged.insert(name);
                    }
                    // Changed since read (another charge, the controller):
                    // judge again on the new count.
                    Err(ApiError::Conflict { .. }) => {
                        raced = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !raced {
                return Ok(());
            }
        }
        Err(ApiError::Precondition(format!(
            "{} {:?} was not written: the quotas of namespace {namespace} kept changing; try again",
            obj.plural, obj.name
        )))
    }
}

/// What charging quotas needs of the object charged, whatever its kind:
/// the charge itself is compiled once, not once per kind.
struct Charged<'a> {
    plural: &'static str,
    namespace: &'a str,
    name: &'a str,
    /// Whether the kind's usage is measured in a resource (`quota::covers`).
    covers: &'a (dyn Fn(&str) -> bool + Sync),
    /// Whether a quota counts the object (its scopes).
    counted_by: &'a (dyn Fn(&ResourceQuota) -> bool + Sync),
    /// The object, if it is a pod (quotas may need its requests).
    pod: Option<&'a Pod>,
}
