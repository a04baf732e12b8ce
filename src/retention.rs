//! The `[retention]` policy: which backups to keep. Pure, so both strategies
//! share it and it is tested without a cloud.
//!
//! A backup is kept if any rule keeps it: `keep_last` keeps the newest N;
//! `keep_daily` keeps the newest backup of each of the N most recent UTC days
//! that have one; `keep_weekly` likewise per ISO week. Everything else goes.

use std::collections::BTreeSet;

use crate::time::Timestamp;

use crate::config::Retention;

/// Indexes (into `times`) of the backups the policy deletes, oldest first.
/// With no rule set, nothing is deleted.
pub fn to_delete(policy: &Retention, times: &[Timestamp]) -> Vec<usize> {
    if !policy.is_set() {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a])); // newest first
    let mut keep = BTreeSet::new();
    if let Some(n) = policy.keep_last {
        keep.extend(order.iter().take(n as usize));
    }
    let mut by_period = |n: Option<u32>, period: &dyn Fn(Timestamp) -> i64| {
        let Some(n) = n else { return };
        let mut seen = Vec::new();
        for &i in &order {
            let p = period(times[i]);
            if !seen.contains(&p) {
                if seen.len() == n as usize {
                    break;
                }
                seen.push(p);
                keep.insert(i);
            }
        }
    };
    by_period(policy.keep_daily, &Timestamp::day);
    by_period(policy.keep_weekly, &Timestamp::iso_week_monday);
    let mut delete: Vec<usize> = order.into_iter().filter(|i| !keep.contains(i)).collect();
    delete.reverse();
    delete
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy(last: Option<u32>, daily: Option<u32>, weekly: Option<u32>) -> Retention {
        Retention {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            after_backup: true,
        }
    }

    #[test]
    fn nothing_set_deletes_nothing() {
        let times = [at("2026-11-01T00:00:00Z")];
        assert!(to_delete(&policy(None, None, None), &times).is_empty());
    }

    #[test]
    fn keep_last() {
        let times = [
            at("2026-11-03T00:00:00Z"),
            at("2026-11-01T00:00:00Z"),
            at("2026-11-04T00:00:00Z"),
            at("2026-11-02T00:00:00Z"),
        ];
        assert_eq!(to_delete(&policy(Some(2), None, None), &times), vec![1, 3]);
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day() {
        let times = [
            at("2026-11-24T01:00:00Z"), // 0
            at("2026-11-24T23:00:00Z"), // 1 newest of the 24th
            at("2026-11-25T08:00:00Z"), // 2 newest of the 25th
            at("2026-11-25T02:00:00Z"), // 3
            at("2026-11-23T12:00:00Z"), // 4 the 23rd: beyond 2 days
        ];
        assert_eq!(
            to_delete(&policy(None, Some(2), None), &times),
            vec![4, 0, 3]
        );
    }

    #[test]
    fn rules_add_up() {
        let times = [
            at("2026-11-02T10:00:00Z"), // 0 Monday of week 45
            at("2026-11-09T10:00:00Z"), // 1 Monday of week 46
            at("2026-11-16T10:00:00Z"), // 2 week 47
            at("2026-11-16T11:00:00Z"), // 3 week 47, newest
        ];
        // keep_last 1 keeps 3; keep_weekly 2 keeps 3 and 1.
        assert_eq!(
            to_delete(&policy(Some(1), None, Some(2)), &times),
            vec![0, 2]
        );
    }
}
