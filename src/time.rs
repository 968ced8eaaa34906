//! Timestamps as objects carry them.

use pbjson_types::Timestamp;

/// Now, to the nanosecond (leases, heartbeats).
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Now, to the second: Kubernetes' precision for metadata and condition
/// timestamps.
pub fn now_seconds() -> Timestamp {
    Timestamp { nanos: 0, ..now() }
}
