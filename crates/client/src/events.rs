//! Recording Events: what happened to an object and why, deduplicated —
//! the same reason and message for the same object bumps the count of one
//! Event instead of writing another.

use std::collections::HashMap;
use std::sync::Mutex;

use skiff::Resource;
use skiff::pb::core::v1::{Event, EventSource, ObjectReference};
use skiff::pb::meta::v1::ObjectMeta;

use crate::api::Api;

/// Normal or Warning, as Kubernetes' event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Things working as intended.
    Normal,
    /// Something to look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// What makes two events the same: object uid, reason, message.
type Occurrence = (String, String, String);

/// Writes Events for one component. Cheap to share (`Arc`).
pub struct Recorder {
    api: Api<Event>,
    component: String,
    /// Events written so far, as last written, to count repeats instead of
    /// writing anew. The Event itself is kept (not read back before an
    /// update): a node may write Events but not read them, as in
    /// Kubernetes.
    seen: Mutex<HashMap<Occurrence, Event>>,
}

impl Recorder {
    /// A recorder writing as `component` (`default-scheduler`, ...).
    pub fn new(channel: tonic::transport::Channel, component: &str) -> Self {
        Self {
            api: Api::new(channel),
            component: component.to_string(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `reason` happened to `object`. Failures are logged,
    /// not returned: an event is never worth failing the work it reports.
    pub async fn record<K: Resource>(
        &self,
        object: &K,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let meta = object.metadata().cloned().unwrap_or_default();
        let key = (meta.uid.clone(), reason.to_string(), message.to_string());
        let known = self.seen.lock().ok().and_then(|s| s.get(&key).cloned());
        let now = skiff::time::now_seconds();
        if let Some(mut event) = known {
            event.count += 1;
            event.last_timestamp = Some(now);
            // Changed or deleted by someone else meanwhile: a new Event.
            if let Ok(updated) = self.api.update(event).await {
                self.remember(key, updated);
                return;
            }
        }
        // Events of cluster-scoped objects live in `default`, as in
        // Kubernetes.
        let namespace = if meta.namespace.is_empty() {
            "default".to_string()
        } else {
            meta.namespace.clone()
        };
        let name = format!("{}.{}", meta.name, &uuid_suffix());
        let event = Event {
            metadata: Some(ObjectMeta {
                name: name.clone(),
                namespace: namespace.clone(),
                ..Default::default()
            }),
            involved_object: Some(ObjectReference {
                kind: K::KIND.into(),
                api_version: K::API_VERSION.into(),
                namespace: meta.namespace,
                name: meta.name,
                uid: meta.uid,
                resource_version: meta.resource_version,
                ..Default::default()
            }),
            reason: reason.to_string(),
            message: message.to_string(),
            source: Some(EventSource {
                component: self.component.clone(),
                ..Default::default()
            }),
            first_timestamp: Some(now),
            last_timestamp: Some(now),
            count: 1,
            r#type: kind.as_str().into(),
            reporting_component: self.component.clone(),
            ..Default::default()
        };
        match self.api.create(event).await {
            Ok(created) => self.remember(key, created),
            Err(status) => tracing::debug!(%status, reason, "recording an event"),
        }
    }

    fn remember(&self, key: Occurrence, event: Event) {
        if let Ok(mut seen) = self.seen.lock() {
            // Bounded: forget everything rather than grow forever.
            if seen.len() > 4_096 {
                seen.clear();
            }
            seen.insert(key, event);
        }
    }
}

/// 16 hex characters, unique enough for event names.
fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}", (nanos as u64) ^ n.rotate_left(32))
}
