//! The history of a controller's pod templates, as Kubernetes keeps it for
//! DaemonSets and StatefulSets: one ControllerRevision per template it ran,
//! named `NAME-HASH`, holding the strategic merge patch that puts that
//! template back, numbered in the order the templates were last used (a
//! rollback renumbers the revision it returns to), at most
//! `revisionHistoryLimit` old ones kept besides those a pod still runs.
//! `kubectl rollout history|undo` reads and applies them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use skiff::Resource;
use skiff::pb::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use skiff::pb::core::v1::{Pod, PodTemplateSpec};
use skiff::pb::meta::v1::ObjectMeta;
use skiff_client::{Api, Store};

use crate::replicaset::delete_exactly;
use crate::runtime::Error;

/// The label naming the template revision a pod runs (and its revision
/// is labelled with).
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// A kind whose templates have a history.
pub trait Versioned: Resource {
    /// Its pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// How many old revisions it keeps (Kubernetes' default: 10).
    fn history_limit(&self) -> usize;
}

impl Versioned for DaemonSet {
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }

    fn history_limit(&self) -> usize {
        let limit = self.spec.as_ref().and_then(|s| s.revision_history_limit);
        usize::try_from(limit.unwrap_or(10)).unwrap_or(0)
    }
}

impl Versioned for StatefulSet {
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }

    fn history_limit(&self) -> usize {
        let limit = self.spec.as_ref().and_then(|s| s.revision_history_limit);
        usize::try_from(limit.unwrap_or(10)).unwrap_or(0)
    }
}

/// The template hash a ControllerRevision is of (its label).
fn hash_of(r: &ControllerRevision) -> String {
    r.metadata()
        .and_then(|m| m.labels.get(REVISION_LABEL).cloned())
        .unwrap_or_default()
}

/// The revisions to delete, oldest first: old ones (neither the current
/// template's, `hash`, nor one a pod runs) beyond `limit`
/// (revisionHistoryLimit).
fn prunable<'a>(
    owned: &'a [Arc<ControllerRevision>],
    hash: &str,
    running: &[&str],
    limit: usize,
) -> Vec<&'a Arc<ControllerRevision>> {
    let mut old: Vec<&Arc<ControllerRevision>> = owned
        .iter()
        .filter(|r| {
            let h = hash_of(r);
            h != hash && !running.contains(&h.as_str())
        })
        .collect();
    old.sort_by_key(|r| r.revision);
    let excess = old.len().saturating_sub(limit);
    old.truncate(excess);
    old
}

/// The template revision a pod runs ("" for none).
pub fn revision_of(pod: &Pod) -> &str {
    pod.metadata
        .as_ref()
        .and_then(|m| m.labels.get(REVISION_LABEL))
        .map_or("", String::as_str)
}

/// The revision of `owner`'s current template (its `hash`), numbered
/// `number`: its data is the strategic merge patch that puts the template
/// back (`{"spec":{"template":{..., "$patch":"replace"}}}`, what `kubectl
/// rollout undo` sends), its labels the template's and the hash.
///
/// # Errors
/// The template does not encode as JSON.
pub fn revision<K: Versioned>(
    owner: &K,
    hash: &str,
    number: i64,
) -> Result<ControllerRevision, Error> {
    let meta = owner.metadata().cloned().unwrap_or_default();
    let template = owner.template().cloned().unwrap_or_default();
    let mut labels = template
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), hash.into());
    let mut template = skiff::json::to_value(&template).map_err(|e| Error::Other(e.to_string()))?;
    template["$patch"] = serde_json::json!("replace");
    let data = serde_json::from_value(serde_json::json!({"spec": {"template": template}}))
        .map_err(|e| Error::Other(e.to_string()))?;
    let annotations = meta
        .annotations
        .get("kubernetes.io/change-cause")
        .map(|cause| [("kubernetes.io/change-cause".to_string(), cause.clone())].into())
        .unwrap_or_default();
    Ok(ControllerRevision {
        metadata: Some(ObjectMeta {
            // (The name's prefix cut as Kubernetes cuts it: names are at
            // most 253 characters.)
            name: format!("{}-{hash}", meta.name.chars().take(223).collect::<String>()),
            namespace: meta.namespace.clone(),
            labels,
            annotations,
            owner_references: vec![owner.controller_reference()],
            ..Default::default()
        }),
        data: Some(data),
        revision: number,
        ..Default::default()
    })
}

/// Writes the revisions of one controller's objects.
pub struct History {
    revisions: Api<ControllerRevision>,
    store: Store<ControllerRevision>,
    /// The last revision number written per owner (by uid), and the
    /// template hash it was given to: the cache may not show it yet, and
    /// two revisions must not share a number.
    numbered: Mutex<HashMap<String, (i64, String)>>,
}

impl History {
    /// History through `revisions`, read from `store`.
    pub fn new(revisions: Api<ControllerRevision>, store: Store<ControllerRevision>) -> Self {
        Self {
            revisions,
            store,
            numbered: Mutex::new(HashMap::new()),
        }
    }

    /// The revisions `owner` controls, as the cache has them.
    pub fn owned<K: Resource>(&self, owner: &K) -> Vec<Arc<ControllerRevision>> {
        let uid = owner.metadata().map(|m| m.uid.clone()).unwrap_or_default();
        self.store
            .list()
            .into_iter()
            .filter(|r| r.namespace() == owner.namespace())
            .filter(|r| r.controlled_by().is_some_and(|o| o.uid == uid))
            .collect()
    }

    /// Keeps the history (see the module doc): the current template's
    /// revision (`hash`) is the newest; old ones beyond the limit that no
    /// pod runs (`running`: the revisions its pods run) are deleted.
    ///
    /// # Errors
    /// What the API said.
    pub async fn record<K: Versioned>(
        &self,
        owner: &K,
        hash: &str,
        running: &[&str],
    ) -> Result<(), Error> {
        let uid = owner.metadata().map(|m| m.uid.clone()).unwrap_or_default();
        let owned = self.owned(owner);
        let cached = owned.iter().map(|r| r.revision).max().unwrap_or(0);
        let (written, written_hash) = self
            .numbered
            .lock()
            .ok()
            .and_then(|n| n.get(&uid).cloned())
            .unwrap_or_default();
        let newest = cached.max(written);
        let remember = |number: i64| {
            if let Ok(mut numbered) = self.numbered.lock() {
                numbered.insert(uid.clone(), (number, hash.to_string()));
            }
        };
        match owned.iter().find(|r| hash_of(r) == hash) {
            Some(current) if current.revision == newest => {}
            // Given the newest number already; the cache is behind.
            Some(_) if written == newest && written_hash == hash => {}
            Some(current) => {
                // Back to an older template: it is the newest again.
                let mut renumbered = (**current).clone();
                renumbered.revision = newest + 1;
                match self.revisions.update(renumbered).await {
                    Ok(_) => remember(newest + 1),
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(s.into()),
                }
            }
            None => {
                let made = revision(owner, hash, newest + 1)?;
                match self.revisions.create(made.clone()).await {
                    Ok(_) => remember(newest + 1),
                    // The cache had not shown it yet, or it was left by a
                    // set of this name deleted with --cascade=orphan: an
                    // unowned revision of this template is adopted.
                    Err(s) if s.code() == tonic::Code::AlreadyExists => {
                        if self.adopt(owner, &made, newest + 1).await? {
                            remember(newest + 1);
                        }
                    }
                    Err(s) => return Err(s.into()),
                }
            }
        }
        for gone in prunable(&owned, hash, running, owner.history_limit()) {
            match self.revisions.delete(delete_exactly(gone.as_ref())).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
        }
        Ok(())
    }

    /// Takes over the existing revision named as `made` when no controller
    /// owns it and it holds the same template; true when it did.
    async fn adopt<K: Versioned>(
        &self,
        owner: &K,
        made: &ControllerRevision,
        number: i64,
    ) -> Result<bool, Error> {
        let mut existing = match self.revisions.get(made.namespace(), made.name()).await {
            Ok(r) => r,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(false),
            Err(s) => return Err(s.into()),
        };
        if existing.controlled_by().is_some() || existing.data != made.data {
            return Ok(false);
        }
        existing
            .metadata_mut()
            .owner_references
            .push(owner.controller_reference());
        existing.revision = number;
        match self.revisions.update(existing).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::Aborted || s.code() == tonic::Code::NotFound => {
                Ok(false)
            }
            Err(s) => Err(s.into()),
        }
    }

    /// Forgets an owner that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut numbered) = self.numbered.lock() {
            numbered.remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(hash: &str, number: i64) -> Arc<ControllerRevision> {
        let mut r = ControllerRevision {
            revision: number,
            ..Default::default()
        };
        let meta = skiff::Resource::metadata_mut(&mut r);
        meta.name = format!("ds-{hash}");
        meta.labels.insert(REVISION_LABEL.into(), hash.into());
        Arc::new(r)
    }

    #[test]
    fn old_revisions_beyond_the_limit_go_oldest_first_unless_a_pod_runs_them() {
        let owned: Vec<_> = ["h1", "h2", "h3", "h4", "h5"]
            .iter()
            .zip(1..)
            .map(|(h, n)| made(h, n))
            .collect();
        let names = |gone: Vec<&Arc<ControllerRevision>>| -> Vec<String> {
            gone.iter().map(|r| hash_of(r)).collect()
        };
        // h5 is current and a pod still runs h2: of h1, h3, h4 one stays.
        assert_eq!(names(prunable(&owned, "h5", &["h2"], 1)), ["h1", "h3"]);
        assert!(prunable(&owned, "h5", &[], 10).is_empty());
        assert_eq!(
            names(prunable(&owned, "h5", &[], 0)),
            ["h1", "h2", "h3", "h4"]
        );
    }
}
