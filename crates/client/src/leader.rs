//! Leader election through a Lease, as Kubernetes' client-go does it:
//! whoever holds an unexpired lease leads; the leader renews it; a leader
//! that cannot renew in time steps down, and another takes over once the
//! lease expires.

use std::time::Duration;

use skiff::pb::coordination::v1::{Lease, LeaseSpec};
use skiff::pb::meta::v1::ObjectMeta;
use tokio::sync::watch;

use crate::api::Api;

/// Lease timing and identity.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the lease (`kube-system`).
    pub namespace: String,
    /// Name of the lease (`kube-scheduler`).
    pub name: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Kubernetes' defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A lease record as this candidate last saw it, and when (on its own
/// clock): a lease counts as expired once its record has not changed for
/// its duration *as observed here*, whatever the holder's clock says (as
/// client-go does).
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    /// Holder and renewTime.
    record: (String, Option<(i64, i32)>),
    /// When this record was first seen.
    at: tokio::time::Instant,
}

/// Whether `record` has stood unchanged for `duration` by `now`, updating
/// what was observed.
fn expired_locally(
    observed: &mut Option<Observed>,
    record: (String, Option<(i64, i32)>),
    duration: Duration,
    now: tokio::time::Instant,
) -> bool {
    match observed {
        Some(o) if o.record == record => now.duration_since(o.at) >= duration,
        _ => {
            *observed = Some(Observed { record, at: now });
            false
        }
    }
}

/// Tries once to acquire or renew; Ok(true) when we hold the lease now.
async fn try_acquire(
    api: &Api<Lease>,
    config: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, tonic::Status> {
    let at = skiff::time::now();
    let mine = |spec: &mut LeaseSpec, transitions: i32| {
        spec.holder_identity = Some(config.identity.clone());
        spec.lease_duration_seconds = Some(config.lease_duration.as_secs().max(1) as i32);
        spec.renew_time = Some(at);
        spec.lease_transitions = Some(transitions);
    };
    match api.get(&config.namespace, &config.name).await {
        Err(status) if status.code() == tonic::Code::NotFound => {
            let mut spec = LeaseSpec {
                acquire_time: Some(at),
                ..Default::default()
            };
            mine(&mut spec, 0);
            let lease = Lease {
                metadata: Some(ObjectMeta {
                    name: config.name.clone(),
                    namespace: config.namespace.clone(),
                    ..Default::default()
                }),
                spec: Some(spec),
                ..Default::default()
            };
            match api.create(lease).await {
                Ok(_) => Ok(true),
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(false),
                Err(s) => Err(s),
            }
        }
        Err(status) => Err(status),
        Ok(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let ours = holder == config.identity;
            let record = (
                holder.clone(),
                spec.renew_time.map(|t| (t.seconds, t.nanos)),
            );
            let duration = Duration::from_secs(u64::from(
                spec.lease_duration_seconds
                    .unwrap_or(15)
                    .max(1)
                    .unsigned_abs(),
            ));
            let stale = expired_locally(observed, record, duration, tokio::time::Instant::now());
            if !ours && !holder.is_empty() && !stale {
                return Ok(false);
            }
            let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
            if !ours {
                spec.acquire_time = Some(at);
            }
            mine(spec, transitions);
            // A compare-and-swap on the version read: two candidates
            // taking over at once cannot both win.
            match api.update(lease).await {
                Ok(_) => Ok(true),
                Err(s) if s.code() == tonic::Code::Aborted => Ok(false),
                Err(s) => Err(s),
            }
        }
    }
}

/// Campaigns for the lease forever; the returned channel says whether we
/// lead now. Stops when the receiver is dropped.
pub fn elect(api: Api<Lease>, config: LeaderConfig) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut last_renew = tokio::time::Instant::now();
        let mut observed = None;
        loop {
            if tx.is_closed() {
                return;
            }
            let leading = *tx.borrow();
            let attempt = tokio::time::Instant::now();
            // A call that hangs must not keep a leader leading past its
            // deadline.
            let result = match tokio::time::timeout(
                config.retry_period,
                try_acquire(&api, &config, &mut observed),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(tonic::Status::deadline_exceeded("lease call timed out")),
            };
            match result {
                Ok(true) => {
                    last_renew = attempt;
                    if !leading {
                        tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
                        let _ = tx.send(true);
                    }
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!(lease = %config.name, "lost the lease to another candidate");
                        let _ = tx.send(false);
                    }
                }
                Err(status) => {
                    if leading && last_renew.elapsed() > config.renew_deadline {
                        tracing::warn!(lease = %config.name, %status, "could not renew the lease in time; stepping down");
                        let _ = tx.send(false);
                    }
                }
            }
            tokio::time::sleep(config.retry_period).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_standing_still_for_its_duration_on_our_clock() {
        let start = tokio::time::Instant::now();
        let mut observed = None;
        let record = |renew: i64| ("other".to_string(), Some((renew, 0)));
        let d = Duration::from_secs(15);
        assert!(
            !expired_locally(&mut observed, record(100), d, start),
            "first sight"
        );
        assert!(!expired_locally(
            &mut observed,
            record(100),
            d,
            start + Duration::from_secs(14)
        ));
        // Renewed: the clock starts again.
        assert!(!expired_locally(
            &mut observed,
            record(110),
            d,
            start + Duration::from_secs(14)
        ));
        assert!(!expired_locally(
            &mut observed,
            record(110),
            d,
            start + Duration::from_secs(28)
        ));
        assert!(expired_locally(
            &mut observed,
            record(110),
            d,
            start + Duration::from_secs(29)
        ));
    }
}
