//! Facts about pods every component reads the same way.

use crate::pb::core::v1::Pod;

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}
