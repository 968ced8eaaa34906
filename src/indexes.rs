//! Sets of completion indexes as Indexed Jobs write them: `"0,2-4,7"`
//! (increasing, non-overlapping intervals), in `status.completedIndexes`,
//! `status.failedIndexes` and a success policy's `succeededIndexes`.

use std::collections::BTreeSet;

use crate::validation::Invalid;

/// Parses `"0,2-4"`; every index must be below `limit`.
///
/// # Errors
/// A malformed part, an index out of range, or intervals out of order.
pub fn parse(text: &str, limit: i32) -> Result<BTreeSet<i32>, Invalid> {
    let mut set = BTreeSet::new();
    let mut last: Option<i32> = None;
    if text.is_empty() {
        return Ok(set);
    }
    for part in text.split(',') {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let number = |s: &str| {
            s.parse::<i32>().map_err(|_| {
                Invalid(format!(
                    "{part:?} is not an index or an interval of indexes"
                ))
            })
        };
        let (from, to) = (number(from)?, number(to)?);
        if from < 0 || to < from || (part.contains('-') && to == from) {
            return Err(format!("{part:?} is not an interval of indexes").into());
        }
        if to >= limit {
            return Err(format!("index {to} is not below the completions ({limit})").into());
        }
        if last.is_some_and(|l| from <= l) {
            return Err("the intervals must be increasing and must not overlap".into());
        }
        last = Some(to);
        set.extend(from..=to);
    }
    Ok(set)
}

/// Writes a set as `"0,2-4"`.
pub fn format(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in set {
        run = match run {
            Some((from, to)) if i == to + 1 => Some((from, i)),
            Some((from, to)) => {
                parts.push(interval(from, to));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((from, to)) = run {
        parts.push(interval(from, to));
    }
    parts.join(",")
}

/// One run as Kubernetes writes it: `3`, `3,4`, `3-5`.
fn interval(from: i32, to: i32) -> String {
    match to - from {
        0 => from.to_string(),
        1 => format!("{from},{to}"),
        _ => format!("{from}-{to}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_sets_read_and_write_as_kubernetes_writes_them() {
        let set = parse("0,2-4,7", 10).unwrap();
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
        assert_eq!(format(&set), "0,2-4,7");
        assert_eq!(format(&BTreeSet::new()), "");
        assert_eq!(format(&[0, 1, 3, 4, 5].into()), "0,1,3-5");
        assert!(parse("3-3", 10).is_err());
        assert!(parse("3-1", 10).is_err());
        assert!(parse("2,1", 10).is_err());
        assert!(parse("9-10", 10).is_err());
        assert!(parse("x", 10).is_err());
    }
}
