//! Leader election through a Lease, as Kubernetes' client-go does it:
//! whoever holds an unexpired lease leads; the leader renews it; a leader
//! that cannot renew in time steps down, and another takes over once the
//! lease expires.

use std::time::Duration;

use skiff::pb::coordination::v1::{Lease, LeaseSpec};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::wkt::Timestamp;
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

fn expired(spec: &LeaseSpec, at: &Timestamp) -> bool {
    let Some(renew) = &spec.renew_time else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed_ns = i128::from(renew.seconds) * 1_000_000_000 + i128::from(renew.nanos);
    let now_ns = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    now_ns > renewed_ns + i128::from(duration) * 1_000_000_000
}

/// Tries once to acquire or renew; Ok(true) when we hold the lease now.
async fn try_acquire(api: &Api<Lease>, config: &LeaderConfig) -> Result<bool, tonic::Status> {
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
            if !ours && !holder.is_empty() && !expired(spec, &at) {
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
        loop {
            if tx.is_closed() {
                return;
            }
            let leading = *tx.borrow();
            let attempt = tokio::time::Instant::now();
            // A call that hangs must not keep a leader leading past its
            // deadline.
            let result =
                match tokio::time::timeout(config.retry_period, try_acquire(&api, &config)).await {
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
    fn a_lease_expires_after_its_duration() {
        let spec = LeaseSpec {
            renew_time: Some(Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(!expired(
            &spec,
            &Timestamp {
                seconds: 114,
                nanos: 0
            }
        ));
        assert!(expired(
            &spec,
            &Timestamp {
                seconds: 116,
                nanos: 0
            }
        ));
        assert!(expired(
            &LeaseSpec::default(),
            &Timestamp {
                seconds: 0,
                nanos: 0
            }
        ));
    }
}
