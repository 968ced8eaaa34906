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

/// `seconds` since the epoch as RFC 3339 in UTC, to the second
/// (`2026-12-05T08:00:00Z`), as Kubernetes writes times in annotations.
pub fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Seconds since the epoch of an RFC 3339 time, or None if it is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_kubernetes_writes_them() {
        assert_eq!(super::rfc3339(1_796_083_200), "2026-12-01T00:00:00Z");
        assert_eq!(
            super::parse_rfc3339("2026-12-01T00:00:00Z"),
            Some(1_796_083_200)
        );
        assert_eq!(super::parse_rfc3339("yesterday"), None);
    }
}
