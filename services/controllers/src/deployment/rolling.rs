//! The arithmetic of a rolling update, as Kubernetes' deployment
//! controller does it: pure functions over replica counts, unit-tested.

use skiff::validation::Invalid;
use skiff::wkt::Value;
use skiff::wkt::value::Kind;

/// `maxSurge`/`maxUnavailable` as a count: an integer, or a percentage of
/// `replicas` (surge rounds up, unavailability down).
///
/// # Errors
/// A value that is neither (the API validates, so only a bug gets here).
pub fn int_or_percent(
    value: Option<&Value>,
    replicas: i32,
    round_up: bool,
) -> Result<i32, Invalid> {
    let Some(kind) = value.and_then(|v| v.kind.as_ref()) else {
        return Ok(0);
    };
    match kind {
        // `as` saturates: a huge number is i32::MAX, never a wrap.
        Kind::NumberValue(n) => Ok(n.max(0.0) as i32),
        Kind::StringValue(s) => {
            let Some(p) = s.strip_suffix('%') else {
                return s
                    .parse()
                    .map_err(|_| Invalid(format!("{s:?} is neither a number nor a percentage")));
            };
            let p: i64 = p
                .parse()
                .map_err(|_| Invalid(format!("{s:?} is not a percentage")))?;
            let scaled = p * i64::from(replicas);
            let count = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            Ok(count.clamp(0, i64::from(i32::MAX)) as i32)
        }
        _ => Err("maxSurge/maxUnavailable must be a number or a percentage".into()),
    }
}

/// Resolved surge and unavailability; both 0 would deadlock a rollout, so
/// unavailability is then 1 (Kubernetes' rule).
pub fn fenceposts(
    surge: Option<&Value>,
    unavailable: Option<&Value>,
    replicas: i32,
) -> Result<(i32, i32), String> {
    let surge = int_or_percent(surge, replicas, true)?;
    let mut unavailable = int_or_percent(unavailable, replicas, false)?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable.min(replicas.max(0))))
}

/// The new ReplicaSet's replicas for this step: up as far as the surge
/// allows, never past `replicas`.
pub fn new_replicas(replicas: i32, max_surge: i32, all_replicas: i32, new_replicas: i32) -> i32 {
    if new_replicas >= replicas {
        return replicas;
    }
    let max_total = replicas.saturating_add(max_surge);
    if all_replicas >= max_total {
        return new_replicas;
    }
    new_replicas + (max_total - all_replicas).min(replicas - new_replicas)
}

/// One old ReplicaSet's counts, oldest first in the slices below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// spec.replicas.
    pub replicas: i32,
    /// status.availableReplicas.
    pub available: i32,
}

/// The old ReplicaSets' replicas after this step: first their unhealthy
/// (not available) replicas go, then available ones as far as keeping
/// `replicas - max_unavailable` available allows. `new` is the new
/// ReplicaSet's counts.
pub fn old_replicas(replicas: i32, max_unavailable: i32, new: Counts, olds: &[Counts]) -> Vec<i32> {
    let mut next: Vec<i32> = olds.iter().map(|o| o.replicas).collect();
    let old_total: i32 = next.iter().sum();
    if old_total == 0 {
        return next;
    }
    let all = old_total + new.replicas;
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new.replicas - new.available).max(0);
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return next;
    }
    // Unhealthy replicas first: removing them costs no availability.
    let mut cleaned = 0;
    for (i, old) in olds.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (next[i] - old.available).max(0);
        let down = unhealthy.min(max_scaled_down - cleaned);
        next[i] -= down;
        cleaned += down;
    }
    // Then available ones, keeping min_available.
    let available: i32 = new.available + olds.iter().map(|o| o.available).sum::<i32>();
    if available <= min_available {
        return next;
    }
    let mut budget = available - min_available;
    for n in next.iter_mut() {
        if budget == 0 {
            break;
        }
        let down = (*n).min(budget);
        *n -= down;
        budget -= down;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    fn n(v: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(v)),
        }
    }

    #[test]
    fn percentages_round_surge_up_and_unavailability_down() {
        assert_eq!(fenceposts(Some(&s("25%")), Some(&s("25%")), 10), Ok((3, 2)));
        assert_eq!(fenceposts(Some(&n(1.0)), Some(&n(0.0)), 3), Ok((1, 0)));
        assert_eq!(
            fenceposts(Some(&s("0%")), Some(&s("0%")), 3),
            Ok((0, 1)),
            "never both 0"
        );
        assert_eq!(fenceposts(Some(&s("10%")), Some(&s("10%")), 3), Ok((1, 0)));
    }

    #[test]
    fn huge_surges_do_not_overflow() {
        let (surge, _) = fenceposts(Some(&n(1e10)), Some(&n(0.0)), 3).unwrap();
        assert_eq!(surge, i32::MAX);
        assert_eq!(new_replicas(3, surge, 3, 0), 3);
    }

    #[test]
    fn the_new_set_grows_within_the_surge() {
        assert_eq!(new_replicas(3, 1, 3, 0), 1);
        assert_eq!(new_replicas(3, 1, 4, 1), 1, "at replicas + surge: wait");
        assert_eq!(new_replicas(3, 1, 3, 1), 2);
        assert_eq!(new_replicas(3, 0, 3, 0), 0);
        assert_eq!(new_replicas(3, 5, 3, 0), 3, "never beyond replicas");
        assert_eq!(new_replicas(3, 1, 6, 5), 3, "scaled down to replicas");
    }

    #[test]
    fn old_sets_shrink_only_as_far_as_availability_allows() {
        let new = Counts {
            replicas: 1,
            available: 0,
        };
        let olds = [Counts {
            replicas: 3,
            available: 3,
        }];
        // 3 replicas, maxUnavailable 0: nothing may go until the new pod is available.
        assert_eq!(old_replicas(3, 0, new, &olds), vec![3]);
        let new = Counts {
            replicas: 1,
            available: 1,
        };
        assert_eq!(old_replicas(3, 0, new, &olds), vec![2]);
        // maxUnavailable 1: one old may go at once.
        let new = Counts {
            replicas: 1,
            available: 0,
        };
        assert_eq!(old_replicas(3, 1, new, &olds), vec![2]);
    }

    #[test]
    fn unhealthy_old_replicas_go_first() {
        let new = Counts {
            replicas: 0,
            available: 0,
        };
        let olds = [Counts {
            replicas: 3,
            available: 1,
        }];
        // One may go (3 - 1 available are needed; only 1 is): an
        // unavailable one.
        assert_eq!(old_replicas(3, 1, new, &olds), vec![2]);
    }

    #[test]
    fn the_oldest_sets_shrink_first() {
        let new = Counts {
            replicas: 2,
            available: 2,
        };
        let olds = [
            Counts {
                replicas: 1,
                available: 1,
            },
            Counts {
                replicas: 2,
                available: 2,
            },
        ];
        assert_eq!(old_replicas(4, 1, new, &olds), vec![0, 1]);
    }
}
