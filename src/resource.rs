//! What the API knows about each kind.

use crate::pb::api::v1::EventType;
use std::collections::BTreeMap;

use crate::pb::meta::v1::{ListMeta, ObjectMeta, OwnerReference};

/// What `labels()` and `annotations()` return for an object without metadata.
static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// A kind the API serves. Implemented for every line of `proto/kinds.tsv`
/// by build.rs, so generic code (the API server's registry, informers, the
/// CLI) handles every kind the same way.
pub trait Resource:
    prost::Message + Default + Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// The kind's page of objects (`PodList`).
    type List: prost::Message + Default + Send + 'static;
    /// One change as streamed by Watch (`PodWatchEvent`).
    type WatchEvent: prost::Message + Default + Send + 'static;
    /// `Pod`.
    const KIND: &'static str;
    /// Kubernetes apiVersion: `v1`, `apps/v1`, `coordination.k8s.io/v1`.
    const API_VERSION: &'static str;
    /// Lower-case plural used in keys and on the command line: `pods`.
    const PLURAL: &'static str;
    /// Fully qualified gRPC service name: `skiff.core.v1.Pods`.
    const SERVICE: &'static str;
    /// Whether objects live in a namespace.
    const NAMESPACED: bool;
    /// Whether the kind has a status only UpdateStatus may change.
    const HAS_STATUS: bool;
    /// kubectl's short names: `po`.
    const SHORT_NAMES: &'static [&'static str];

    /// The object's metadata, if set.
    fn metadata(&self) -> Option<&ObjectMeta>;
    /// The object's metadata, created empty if unset.
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
    /// `(apiVersion, kind)` as the client sent them.
    fn type_meta(&self) -> (&str, &str);
    /// Sets apiVersion and kind to this kind's.
    fn set_type_meta(&mut self);
    /// Clears apiVersion and kind (they are not stored).
    fn clear_type_meta(&mut self);
    /// Replaces this object's status with `other`'s (no-op without status).
    fn copy_status_from(&mut self, other: &Self);
    /// Removes the status (no-op without status).
    fn clear_status(&mut self);
    /// Whether this object's status equals `other`'s (true without status).
    fn same_status(&self, other: &Self) -> bool;
    /// Whether the status is set at all (false without status).
    fn status_set(&self) -> bool;
    /// Wraps a page of objects.
    fn into_list(metadata: ListMeta, items: Vec<Self>) -> Self::List;
    /// Wraps one watch event.
    fn into_event(kind: EventType, object: Self) -> Self::WatchEvent;
    /// Wraps one watch event whose object is already encoded (the
    /// protobuf of a `Self`): sent as is, decoded as the object.
    fn encoded_event(kind: EventType, object: bytes::Bytes) -> Self::WatchEvent;
    /// Unwraps a page of objects.
    fn list_parts(list: Self::List) -> (ListMeta, Vec<Self>);
    /// Unwraps one watch event (an unknown type reads as unspecified).
    fn event_parts(event: Self::WatchEvent) -> (EventType, Option<Self>);

    /// `metadata.name`, or "" when unset.
    fn name(&self) -> &str {
        self.metadata().map_or("", |m| m.name.as_str())
    }

    /// `metadata.namespace`, or "" when unset.
    fn namespace(&self) -> &str {
        self.metadata().map_or("", |m| m.namespace.as_str())
    }

    /// `metadata.resourceVersion`, or "" when unset.
    fn resource_version(&self) -> &str {
        self.metadata().map_or("", |m| m.resource_version.as_str())
    }

    /// `metadata.uid`, or "" when unset.
    fn uid(&self) -> &str {
        self.metadata().map_or("", |m| m.uid.as_str())
    }

    /// `metadata.generation`, or 0 when unset.
    fn generation(&self) -> i64 {
        self.metadata().map_or(0, |m| m.generation)
    }

    /// `metadata.labels` (empty when unset).
    fn labels(&self) -> &BTreeMap<String, String> {
        self.metadata().map_or(&EMPTY, |m| &m.labels)
    }

    /// `metadata.annotations` (empty when unset).
    fn annotations(&self) -> &BTreeMap<String, String> {
        self.metadata().map_or(&EMPTY, |m| &m.annotations)
    }

    /// `metadata.ownerReferences` (empty when unset).
    fn owner_references(&self) -> &[OwnerReference] {
        self.metadata()
            .map_or(&[], |m| m.owner_references.as_slice())
    }

    /// The owner reference marked as controller, if any.
    fn controlled_by(&self) -> Option<&OwnerReference> {
        self.owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
    }

    /// Everything a client may change through Update, encoded: the object
    /// without metadata, type meta and status. Generation moves when this
    /// changes. Maps are BTreeMaps, so the encoding is deterministic.
    fn spec_fingerprint(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.clear_type_meta();
        copy.clear_status();
        *copy.metadata_mut() = ObjectMeta::default();
        copy.encode_to_vec()
    }

    /// The reference by which the objects this one controls name it as
    /// their controller (and block its foreground deletion).
    fn controller_reference(&self) -> OwnerReference {
        let meta = self.metadata().cloned().unwrap_or_default();
        OwnerReference {
            api_version: Self::API_VERSION.into(),
            kind: Self::KIND.into(),
            name: meta.name,
            uid: meta.uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// `namespace/name` (or `name`) for messages.
    fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            namespace: self.namespace().to_string(),
            name: self.name().to_string(),
        }
    }
}

/// Where an object is: namespace (empty for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectRef {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// An object reference.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}
