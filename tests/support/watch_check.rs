//! Checks what a watcher received against what clients wrote and against other watchers.
//!
//! The guarantees (etcd's, and keel's): events arrive in revision order, each exactly once,
//! with no gaps; all events of one revision arrive in one response; a progress notification
//! at revision R means no event at or below R follows it; a watch resumed from the last
//! revision seen continues the same sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One event as a watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeenEvent {
    pub revision: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

/// What one watch response carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Events(Vec<SeenEvent>),
    /// A progress notification (bookmark) at this revision.
    Progress(i64),
}

/// A write a client made and what it learned about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub value: String,
    /// The revision the store reported, `None` if the outcome is unknown.
    pub revision: Option<i64>,
}

/// Checks one watcher's deliveries. `from` is the start revision it asked for; `through` is
/// the last revision it is expected to have reached.
pub fn check_watcher(deliveries: &[Delivery], from: i64, through: i64, writes: &[Write]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut last: Option<(i64, usize)> = None;
    let mut seen: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut responses_of_revision: HashMap<i64, usize> = HashMap::new();
    let mut bookmark = i64::MIN;
    for (i, delivery) in deliveries.iter().enumerate() {
        match delivery {
            Delivery::Progress(rev) => {
                if *rev < bookmark {
                    problems.push(format!("progress went back from {bookmark} to {rev}"));
                }
                bookmark = bookmark.max(*rev);
            }
            Delivery::Events(events) => {
                for e in events {
                    if e.revision < from {
                        problems.push(format!("event at {} before the start revision {from}", e.revision));
                    }
                    if e.revision <= bookmark {
                        problems.push(format!("event at {} after a progress notification at {bookmark}", e.revision));
                    }
                    if let Some((prev, prev_response)) = last {
                        if e.revision < prev {
                            problems.push(format!("event at {} after one at {prev}", e.revision));
                        }
                        if e.revision == prev && prev_response != i {
                            problems.push(format!("revision {} split across responses", e.revision));
                        }
                    }
                    if !seen.insert((e.revision, e.key.clone())) {
                        problems.push(format!("duplicate event for {} at {}", e.key, e.revision));
                    }
                    *responses_of_revision.entry(e.revision).or_default() += 1;
                    last = Some((e.revision, i));
                }
            }
        }
    }

    // Every acknowledged write in range was delivered, with the value written.
    let delivered: BTreeMap<(i64, String), Option<String>> = deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Events(events) => Some(events),
            Delivery::Progress(_) => None,
        })
        .flatten()
        .map(|e| ((e.revision, e.key.clone()), e.value.clone()))
        .collect();
    for w in writes {
        let Some(rev) = w.revision else { continue };
        if rev < from || rev > through {
            continue;
        }
        match delivered.get(&(rev, w.key.clone())) {
            None => problems.push(format!("gap: write of {} at {rev} never delivered", w.key)),
            Some(v) if v.as_deref() != Some(w.value.as_str()) => {
                problems.push(format!("write of {} at {rev} delivered as {v:?}, written {:?}", w.key, w.value))
            }
            Some(_) => {}
        }
    }
    // Every delivered put is a write somebody made (unknown outcomes included).
    let written: HashMap<(&str, &str), Option<i64>> =
        writes.iter().map(|w| ((w.key.as_str(), w.value.as_str()), w.revision)).collect();
    for ((rev, key), value) in &delivered {
        let Some(value) = value else { continue };
        match written.get(&(key.as_str(), value.as_str())) {
            None => problems.push(format!("event {key}={value} at {rev} matches no write")),
            Some(Some(acked)) if acked != rev => {
                problems.push(format!("event {key}={value} at {rev}, but the write was acknowledged at {acked}"))
            }
            Some(_) => {}
        }
    }
    problems
}

/// The events of a watcher, flattened in order.
pub fn events_of(deliveries: &[Delivery]) -> Vec<SeenEvent> {
    deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Events(e) => Some(e.clone()),
            Delivery::Progress(_) => None,
        })
        .flatten()
        .collect()
}

/// Two watchers of the same range from the same revision must agree on their common prefix.
pub fn check_agreement(a: &[SeenEvent], b: &[SeenEvent]) -> Option<String> {
    let common = a.len().min(b.len());
    (0..common).find(|&i| a[i] != b[i]).map(|i| format!("watchers disagree at event {i}: {:?} vs {:?}", a[i], b[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: i64, key: &str, value: &str) -> SeenEvent {
        SeenEvent { revision, key: key.into(), value: Some(value.into()) }
    }

    fn write(key: &str, value: &str, revision: i64) -> Write {
        Write { key: key.into(), value: value.into(), revision: Some(revision) }
    }

    #[test]
    fn a_clean_stream_passes() {
        let writes = vec![write("a", "1", 5), write("b", "2", 7)];
        let deliveries = vec![
            Delivery::Events(vec![ev(5, "a", "1")]),
            Delivery::Progress(6),
            Delivery::Events(vec![ev(7, "b", "2")]),
        ];
        assert!(check_watcher(&deliveries, 1, 7, &writes).is_empty());
    }

    #[test]
    fn each_broken_guarantee_is_caught() {
        let writes = vec![write("a", "1", 5), write("b", "2", 7), write("c", "3", 7)];
        let cases: Vec<(Vec<Delivery>, &str)> = vec![
            (vec![Delivery::Events(vec![ev(5, "a", "1"), ev(7, "b", "2")])], "gap"),
            (
                vec![
                    Delivery::Events(vec![ev(5, "a", "1")]),
                    Delivery::Events(vec![ev(7, "b", "2"), ev(7, "c", "3")]),
                    Delivery::Events(vec![ev(5, "a", "1")]),
                ],
                "after one at",
            ),
            (
                vec![Delivery::Events(vec![ev(5, "a", "1"), ev(7, "b", "2")]), Delivery::Events(vec![ev(7, "c", "3")])],
                "split",
            ),
            (
                vec![
                    Delivery::Events(vec![ev(5, "a", "1")]),
                    Delivery::Progress(7),
                    Delivery::Events(vec![ev(7, "b", "2"), ev(7, "c", "3")]),
                ],
                "progress notification",
            ),
            (vec![Delivery::Events(vec![ev(5, "a", "1"), ev(7, "b", "2"), ev(7, "c", "9")])], "delivered as"),
        ];
        for (deliveries, want) in cases {
            let problems = check_watcher(&deliveries, 1, 7, &writes);
            assert!(problems.iter().any(|p| p.contains(want)), "expected {want:?} in {problems:?}");
        }
        assert!(check_agreement(&[ev(5, "a", "1")], &[ev(5, "a", "2")]).is_some());
        assert!(check_agreement(&[ev(5, "a", "1")], &[ev(5, "a", "1"), ev(6, "b", "1")]).is_none());
    }
}
