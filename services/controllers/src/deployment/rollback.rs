//! Rollback, `kubectl rollout undo` server side: the annotation
//! `skiff.dev/rollback-to-revision: N` (0: the previous revision) copies
//! that revision's template back into the Deployment.

use skiff::Resource as _;
use skiff::pb::apps::v1::{Deployment, ReplicaSet};
use skiff_client::events::EventType;

use super::{DeploymentController, HASH_LABEL, ROLLBACK_TO, revision};
use crate::runtime::{Action, Error};

impl DeploymentController {
    /// `kubectl rollout undo`, server side: the revision's template goes
    /// back into the Deployment.
    pub(super) async fn rollback(
        &self,
        d: &Deployment,
        wanted: &str,
        owned: &[ReplicaSet],
    ) -> Result<Action, Error> {
        let mut by_revision: Vec<&ReplicaSet> = owned.iter().collect();
        by_revision.sort_by_key(|rs| std::cmp::Reverse(revision(rs)));
        let target = match wanted.parse::<i64>() {
            Ok(0) => by_revision.get(1).copied(),
            Ok(n) => by_revision.iter().copied().find(|rs| revision(rs) == n),
            Err(_) => None,
        };
        let mut next = d.clone();
        let meta = next.metadata.get_or_insert_with(Default::default);
        meta.annotations.remove(ROLLBACK_TO);
        next.status = None;
        match target {
            Some(rs) => {
                let mut template = rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.clone())
                    .unwrap_or_default();
                if let Some(m) = template.metadata.as_mut() {
                    m.labels.remove(HASH_LABEL);
                }
                next.spec.get_or_insert_with(Default::default).template = Some(template);
                self.deployments.update(next).await?;
                let message = format!(
                    "Rolled back deployment {:?} to revision {}",
                    d.name(),
                    revision(rs)
                );
                self.recorder
                    .record(d, EventType::Normal, "DeploymentRollback", &message)
                    .await;
            }
            None => {
                self.deployments.update(next).await?;
                let message = format!("Unable to find the revision {wanted:?} to roll back to");
                self.recorder
                    .record(
                        d,
                        EventType::Warning,
                        "DeploymentRollbackRevisionNotFound",
                        &message,
                    )
                    .await;
            }
        }
        Ok(Action::AwaitChange)
    }
}
