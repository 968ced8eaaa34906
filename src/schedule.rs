//! CronJob schedules: the five cron fields (minute hour day-of-month month
//! day-of-week, with lists, ranges, steps and names) or `@hourly`,
//! `@daily` and the like, in UTC or a CronJob's `timeZone` (an IANA name,
//! `Europe/Berlin`; the database is built in, as Kubernetes' is), as the
//! API validates them and the CronJob controller reads them; and
//! [`job_for`], the Job a CronJob makes (a scheduled run, or
//! `create job --from=cronjob/NAME`).

use std::str::FromStr as _;

use chrono::TimeZone as _;

use crate::validation::Invalid;

/// A parsed schedule, and the time zone it is read in.
#[derive(Debug, Clone)]
pub struct Schedule(croner::Cron, chrono_tz::Tz);

/// Reads a time zone name (`UTC`, `Europe/Berlin`).
///
/// # Errors
/// A name the time zone database does not know.
pub fn time_zone(name: &str) -> Result<chrono_tz::Tz, Invalid> {
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| Invalid(format!("unknown time zone {name:?}")))
}

/// Parses a schedule in time zone `zone` (None: UTC).
///
/// # Errors
/// What is wrong with either.
pub fn parse_in(schedule: &str, zone: Option<&str>) -> Result<Schedule, Invalid> {
    let tz = zone.map_or(Ok(chrono_tz::UTC), time_zone)?;
    parse(schedule).map(|s| Schedule(s.0, tz))
}

/// Parses a schedule (in UTC). `@midnight` is `@daily`, as in Kubernetes.
///
/// # Errors
/// What is wrong with it.
pub fn parse(schedule: &str) -> Result<Schedule, Invalid> {
    if schedule.contains("TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if schedule.split_whitespace().count() > 5 {
        return Err(
            "a schedule has five fields (minute hour day-of-month month day-of-week)".into(),
        );
    }
    let schedule = match schedule.trim() {
        "@midnight" => "@daily",
        other => other,
    };
    croner::Cron::from_str(schedule)
        .map(|cron| Schedule(cron, chrono_tz::UTC))
        .map_err(|e| Invalid(e.to_string()))
}

impl Schedule {
    /// The first time after `after` (seconds since the epoch) it fires.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let at = self.1.timestamp_opt(after, 0).single()?;
        self.0
            .find_next_occurrence(&at, false)
            .ok()
            .map(|t| t.timestamp())
    }

    /// The latest time in `(after, now]` it fired, and how many times it
    /// did (counted up to `cap`: past it, only the latest matters).
    pub fn latest_between(&self, after: i64, now: i64, cap: usize) -> (Option<i64>, usize) {
        let latest = self
            .1
            .timestamp_opt(now, 0)
            .single()
            .and_then(|at| self.0.find_previous_occurrence(&at, true).ok())
            .map(|t| t.timestamp())
            .filter(|&t| t > after);
        let Some(latest) = latest else {
            return (None, 0);
        };
        let (mut count, mut from) = (0, after);
        while count < cap {
            match self.next_after(from) {
                Some(t) if t <= latest => {
                    count += 1;
                    from = t;
                }
                _ => break,
            }
        }
        (Some(latest), count)
    }
}

/// The Job named `name` that `cron` makes from its job template: the
/// template's labels, annotations and spec, the `annotation` the caller
/// marks the run with (the scheduled time, or `instantiate: manual`), and
/// the CronJob as its controller.
pub fn job_for(
    cron: &crate::pb::batch::v1::CronJob,
    name: String,
    annotation: (&str, String),
) -> crate::pb::batch::v1::Job {
    use crate::Resource as _;
    let template = cron
        .spec
        .as_ref()
        .and_then(|s| s.job_template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations;
    annotations.insert(annotation.0.to_string(), annotation.1);
    crate::pb::batch::v1::Job {
        metadata: Some(crate::pb::meta::v1::ObjectMeta {
            name,
            namespace: cron.namespace().to_string(),
            labels: tmeta.labels,
            annotations,
            owner_references: vec![cron.controller_reference()],
            ..Default::default()
        }),
        spec: template.spec,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_schedules_fire_on_their_minutes() {
        let every_five = parse("*/5 * * * *").unwrap();
        // 2026-12-01T00:01:00Z → 00:05.
        let start = 1_796_083_260;
        assert_eq!(every_five.next_after(start), Some(start - 60 + 300));
        let (latest, count) = every_five.latest_between(start, start + 3600, 100);
        assert_eq!(count, 12);
        assert_eq!(latest, Some(start - 60 + 3600));
        assert!(parse("@hourly").is_ok());
        assert!(parse("0 0 * * MON").is_ok());
        assert!(parse("* * * * * *").is_err(), "no seconds field");
        assert!(parse("61 * * * *").is_err());
        assert!(parse("nonsense").is_err());
        assert!(parse("@midnight").is_ok());
    }

    #[test]
    fn a_time_zone_moves_the_runs_to_its_clock() {
        // 2026-12-01T00:01:00Z; 03:00 in Berlin (UTC+1 in December) is
        // 02:00 UTC.
        let start = 1_796_083_260;
        let berlin = parse_in("0 3 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(berlin.next_after(start), Some(start - 60 + 2 * 3600));
        let utc = parse_in("0 3 * * *", None).unwrap();
        assert_eq!(utc.next_after(start), Some(start - 60 + 3 * 3600));
        assert!(parse_in("0 3 * * *", Some("Mars/Olympus")).is_err());
        assert!(parse("CRON_TZ=UTC 0 3 * * *").is_err());
    }

    #[test]
    fn past_the_count_cap_the_latest_run_is_still_the_latest() {
        let every_minute = parse("* * * * *").unwrap();
        let start = 1_796_083_200;
        // Two days missed: 2,880 runs; the count stops at 100, the latest
        // is the last minute, not the 100th.
        let now = start + 2 * 86_400 + 30;
        let (latest, count) = every_minute.latest_between(start, now, 100);
        assert_eq!(count, 100);
        assert_eq!(latest, Some(start + 2 * 86_400));
        assert_eq!(every_minute.latest_between(now, now, 100), (None, 0));
    }
}
