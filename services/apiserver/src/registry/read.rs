//! Get and List (label and field selectors, paging with continue tokens,
//! resourceVersion semantics), and the filter watches share.

use std::collections::BTreeMap;

use base64::Engine as _;
use skiff::keys;
use skiff::pb::api::v1::{EventType, GetRequest, ListRequest};
use skiff::pb::meta::v1::ListMeta;
use skiff::selector::{FieldSelector, LabelSelector};
use skiff_store::{EventKind, ListOptions};

use crate::cache::{Change, decode};
use crate::error::{ApiError, Result};
use crate::strategy::{self, Strategy};

use super::*;

/// A position in a paged list: the revision of the first page and the
/// last key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(token: &str) -> Result<Self> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(|| {
                ApiError::Invalid(
                    "continue: Invalid value: not a token returned by this server's List".into(),
                )
            })
    }
}

/// What a list or watch selects.
pub(super) struct Filter {
    /// Only keys under this prefix (the namespace).
    pub(super) prefix: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub(super) fn new<K: Strategy>(namespace: &str, labels: &str, fields: &str) -> Result<Self> {
        if K::NAMESPACED
            && !namespace.is_empty()
            && let Err(reason) = skiff::validation::is_dns1123_label(namespace)
        {
            return Err(ApiError::Invalid(format!(
                "namespace: Invalid value: {namespace:?}: {reason}"
            )));
        }
        let labels = LabelSelector::parse(labels)
            .map_err(|e| ApiError::Invalid(format!("labelSelector: {e}")))?;
        let allowed = strategy::selectable_fields::<K>();
        let fields = FieldSelector::parse_with(fields, &allowed)
            .map_err(|e| ApiError::Invalid(format!("fieldSelector: {e}")))?;
        Ok(Self {
            prefix: keys::list::<K>(namespace),
            labels,
            fields,
        })
    }

    pub(super) fn matches<K: Strategy>(&self, key: &str, obj: &K) -> bool {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        let labels = obj.metadata().map_or(&NO_LABELS, |m| &m.labels);
        key.starts_with(&self.prefix)
            && (self.labels.is_empty() || self.labels.matches(labels))
            && (self.fields.is_empty() || self.fields.matches(|f| strategy::field_value(obj, f)))
    }

    /// What a change means to this watcher: a change that makes an object
    /// start (stop) matching is an ADDED (DELETED) event for it.
    pub(super) fn classify<K: Strategy>(&self, change: &Change<K>) -> Option<EventType> {
        let old = change
            .prev
            .as_ref()
            .is_some_and(|p| self.matches(&change.key, &**p));
        if change.kind == EventKind::Delete && change.prev.is_none() {
            // The deleted object's last state is unknown (compacted): every
            // watcher of its namespace hears of the delete.
            return change
                .key
                .starts_with(&self.prefix)
                .then_some(EventType::Deleted);
        }
        let new = change.kind == EventKind::Put && self.matches(&change.key, &*change.object);
        match (old, new) {
            (false, true) => Some(EventType::Added),
            (true, true) => Some(EventType::Modified),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        }
    }
}

impl Registry {
    /// Reads one object.
    ///
    /// # Errors
    /// NotFound.
    pub async fn get<K: Strategy>(&self, req: GetRequest) -> Result<K> {
        let namespace = effective_namespace::<K>(&req.namespace);
        let key = keys::object::<K>(&namespace, &req.name);
        match self.read::<K>(&key).await? {
            Some((obj, _)) => Ok(obj),
            None => Err(not_found::<K>(&namespace, &req.name)),
        }
    }

    /// Lists objects, filtered and paged.
    ///
    /// # Errors
    /// Bad selectors or continue tokens; an expired continue token.
    pub async fn list<K: Strategy>(&self, req: ListRequest) -> Result<K::List> {
        let filter = Filter::new::<K>(&req.namespace, &req.label_selector, &req.field_selector)?;
        let limit = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
        let (mut revision, mut start_after) = if req.r#continue.is_empty() {
            (0, None)
        } else {
            let token = ContinueToken::decode(&req.r#continue)?;
            (token.rv, Some(token.start))
        };
        let mut items = Vec::new();
        let mut next = None;
        'pages: loop {
            // Read in chunks: a selector matching few objects must not cost
            // one store read per object.
            let want = if limit == 0 {
                0
            } else {
                (limit - items.len()).max(LIST_CHUNK)
            };
            let page = self
                .store
                .list(ListOptions {
                    prefix: filter.prefix.clone(),
                    start_after: start_after.clone(),
                    limit: want,
                    revision,
                })
                .await
                .map_err(|e| match e {
                    skiff_store::Error::Compacted { .. } => ApiError::Expired(
                        "continue: the list's resourceVersion has been compacted; start the list again without a continue token".into(),
                    ),
                    other => other.into(),
                })?;
            revision = page.revision;
            let count = page.kvs.len();
            for (i, kv) in page.kvs.into_iter().enumerate() {
                let Some(obj) = decode::<K>(&kv.value, kv.mod_revision) else {
                    return Err(ApiError::Internal(format!(
                        "undecodable {} at {}",
                        K::KIND,
                        kv.key
                    )));
                };
                if filter.matches(&kv.key, &obj) {
                    items.push(obj);
                }
                start_after = Some(kv.key);
                if limit > 0 && items.len() == limit {
                    // Full: continue after this key if anything follows.
                    if i + 1 < count || page.more {
                        next = start_after.clone();
                    }
                    break 'pages;
                }
            }
            if !page.more {
                break;
            }
        }
        let metadata = ListMeta {
            resource_version: revision.to_string(),
            r#continue: next
                .map(|start| {
                    ContinueToken {
                        rv: revision,
                        start,
                    }
                    .encode()
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        Ok(K::into_list(metadata, items))
    }
}
