//! Compaction of the store's history, as kube-apiserver does it: every
//! interval, everything older than the revision sampled one interval
//! before is dropped, so watchers and paged lists always have one
//! interval of history to resume from.
//!
//! The sample is kept in the store itself (under [`SAMPLE_KEY`]), so a
//! restarted server compacts when the last sample falls due rather than
//! one or two intervals after its own start: a server restarted more often
//! than the interval still compacts. Several servers over one etcd share
//! the sample; a compaction another has done already is only logged.

use std::sync::Arc;
use std::time::Duration;

use skiff_store::Store;

/// Where the last sample is kept (outside every kind's prefix).
pub const SAMPLE_KEY: &str = "/registry/compaction/sample";

/// The store's revision at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// The store's revision then.
    pub revision: i64,
    /// When (milliseconds since the epoch).
    pub at_ms: i64,
}

/// How long from `now_ms` until `sample` is one `interval` old: zero when
/// it is already, never more than `interval` (a sample stamped in the
/// future — a clock stepped back, a peer's clock ahead — waits one
/// interval, not the skew).
pub fn until_due(sample: &Sample, interval: Duration, now_ms: i64) -> Duration {
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let left = sample
        .at_ms
        .saturating_add(interval_ms)
        .saturating_sub(now_ms)
        .clamp(0, interval_ms);
    Duration::from_millis(left.unsigned_abs())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The sample kept in `store`, if any.
async fn kept(store: &dyn Store) -> Option<Sample> {
    let kv = store.get(SAMPLE_KEY).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// Samples the store's revision now and keeps the sample.
async fn take(store: &dyn Store) -> Option<Sample> {
    let revision = match store.current_revision().await {
        Ok(revision) => revision,
        Err(e) => {
            tracing::warn!(error = %e, "reading the store revision for compaction");
            return None;
        }
    };
    let sample = Sample {
        revision,
        at_ms: now(),
    };
    let value = bytes::Bytes::from(serde_json::to_vec(&sample).unwrap_or_default());
    let written = match store.update(SAMPLE_KEY, value.clone(), None).await {
        Err(skiff_store::Error::NotFound { .. }) => store.create(SAMPLE_KEY, value).await,
        other => other,
    };
    if let Err(e) = written {
        // Kept in memory all the same: only a restart forgets it.
        tracing::warn!(error = %e, "keeping the compaction sample");
    }
    Some(sample)
}

/// Compacts `store` every `interval`, keeping one interval of history.
pub async fn run(store: Arc<dyn Store>, interval: Duration) {
    let mut sample = match kept(store.as_ref()).await {
        Some(sample) => Some(sample),
        None => take(store.as_ref()).await,
    };
    // Never a busy loop, whatever the configuration says.
    let interval = interval.max(Duration::from_millis(100));
    loop {
        let wait = sample.map_or(interval, |s| until_due(&s, interval, now()));
        tokio::time::sleep(wait).await;
        if let Some(Sample { revision, .. }) = sample.filter(|s| s.revision > 0) {
            match store.compact(revision).await {
                Ok(()) => tracing::debug!(revision, "compacted the store"),
                Err(e) => tracing::warn!(error = %e, revision, "compacting the store"),
            }
        }
        sample = take(store.as_ref()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_falls_due_one_interval_after_it_was_taken() {
        let sample = Sample {
            revision: 10,
            at_ms: 1_000_000,
        };
        let five = Duration::from_secs(300);
        assert_eq!(until_due(&sample, five, 1_000_000), five);
        assert_eq!(
            until_due(&sample, five, 1_200_000),
            Duration::from_secs(100)
        );
        assert_eq!(
            until_due(&sample, five, 5_000_000),
            Duration::ZERO,
            "overdue"
        );
        assert_eq!(
            until_due(&sample, five, 1_000_000 - 3_600_000),
            five,
            "stamped an hour ahead of this clock: one interval, not the skew"
        );
        let sub_second = Duration::from_millis(500);
        assert_eq!(
            until_due(&sample, sub_second, 1_000_200),
            Duration::from_millis(300)
        );
    }

    #[tokio::test]
    async fn a_restarted_server_compacts_when_the_kept_sample_falls_due() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(skiff_store::EmbeddedStore::open(dir.path().join("state.redb")).unwrap());
        let mut last = 0;
        for i in 0..5 {
            last = store
                .create(&format!("/registry/configmaps/default/c{i}"), "x".into())
                .await
                .unwrap();
        }
        // A sample a previous run took ten minutes ago, at revision `last`.
        let old = Sample {
            revision: last,
            at_ms: now() - 600_000,
        };
        store
            .create(SAMPLE_KEY, serde_json::to_vec(&old).unwrap().into())
            .await
            .unwrap();
        // A five-minute interval: the kept sample is overdue, so the first
        // compaction comes at once, not five (or ten) minutes from now.
        let compactor = tokio::spawn(run(Arc::clone(&store), Duration::from_secs(300)));
        let compacted = async {
            loop {
                match store.watch("/registry/configmaps/", last - 1).await {
                    Err(skiff_store::Error::Compacted { .. }) => return,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), compacted)
            .await
            .expect("compacted to the kept sample");
        // And a new sample is kept, for the next run.
        tokio::time::timeout(Duration::from_secs(20), async {
            while kept(store.as_ref()).await == Some(old) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("a new sample");
        let new = kept(store.as_ref()).await.unwrap();
        assert!(
            new.revision >= last && new.at_ms >= old.at_ms + 600_000,
            "{new:?}"
        );
        compactor.abort();
    }
}
