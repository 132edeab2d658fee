//! A linearizability checker for histories of a key-value store, key by key (a history is
//! linearizable if and only if each key's sub-history is). Each key is a register: writes set
//! a value, reads return one. It is the Wing & Gong search with Lowe's memoisation, as
//! Porcupine implements it: try to linearize operations in an order consistent with real
//! time, backtracking when a read cannot be explained.
//!
//! Writes whose outcome the client does not know (timeouts, connection loss) never return:
//! they may take effect at any point after their call, or not at all.

use std::collections::{BTreeMap, HashSet};

/// One client operation on one key, with real-time bounds from the client's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub key: String,
    pub call: u64,
    /// `None` when the client never learned the outcome.
    pub ret: Option<u64>,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Write(u64),
    /// A read and what it returned (`None`: the key did not exist).
    Read(Option<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub operations: usize,
}

/// Checks every key; returns the keys whose history cannot be linearized.
pub fn check(history: &[Operation]) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        // A read without an answer says nothing.
        if op.ret.is_none() && matches!(op.kind, Kind::Read(_)) {
            continue;
        }
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    by_key
        .into_iter()
        .filter(|(_, ops)| !check_register(ops))
        .map(|(key, ops)| Violation { key: key.to_string(), operations: ops.len() })
        .collect()
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// The search over one register. Entries form a doubly linked list (index 0 is the head
/// sentinel) of call and return events in time order; linearizing an operation unlinks both of
/// its events, backtracking links them back.
fn check_register(ops: &[&Operation]) -> bool {
    let n = ops.len();
    if n == 0 {
        return true;
    }
    // (time, is_return, op): at equal times calls come first, so operations that touch are
    // treated as concurrent (the permissive choice).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, i));
        events.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    let mut entries = vec![Entry { op: usize::MAX, is_call: false, prev: 0, next: 1 }];
    let mut call_entry = vec![0usize; n];
    let mut ret_entry = vec![0usize; n];
    for (pos, &(_, is_return, op)) in events.iter().enumerate() {
        let index = pos + 1;
        entries.push(Entry {
            op,
            is_call: !is_return,
            prev: index - 1,
            next: if pos + 1 == events.len() { usize::MAX } else { index + 1 },
        });
        if is_return {
            ret_entry[op] = index;
        } else {
            call_entry[op] = index;
        }
    }
    entries[0].next = 1;

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state: Option<u64> = None;
    let mut cursor = entries[0].next;

    let unlink = |entries: &mut Vec<Entry>, i: usize| {
        let (p, nx) = (entries[i].prev, entries[i].next);
        entries[p].next = nx;
        if nx != usize::MAX {
            entries[nx].prev = p;
        }
    };
    let relink = |entries: &mut Vec<Entry>, i: usize| {
        let (p, nx) = (entries[i].prev, entries[i].next);
        entries[p].next = i;
        if nx != usize::MAX {
            entries[nx].prev = i;
        }
    };

    while entries[0].next != usize::MAX {
        if cursor == usize::MAX {
            // Ran off the end: only unknown-outcome calls remain unlinearized in this branch;
            // they may simply never have happened.
            return true;
        }
        let entry = entries[cursor];
        if entry.is_call {
            let op = ops[entry.op];
            let next_state = match &op.kind {
                Kind::Write(v) => Some(Some(*v)),
                Kind::Read(seen) => (*seen == state).then_some(state),
            };
            if let Some(next_state) = next_state {
                let mut with = linearized.clone();
                with[entry.op / 64] |= 1 << (entry.op % 64);
                if cache.insert((with.clone(), next_state)) {
                    stack.push((entry.op, state));
                    linearized = with;
                    state = next_state;
                    unlink(&mut entries, call_entry[entry.op]);
                    unlink(&mut entries, ret_entry[entry.op]);
                    cursor = entries[0].next;
                    continue;
                }
            }
            cursor = entry.next;
        } else {
            // A return whose call is still pending: undo the last choice.
            if ops[entry.op].ret.is_none() {
                // The return of an unknown-outcome op sorts last; reaching it means every
                // operation with a known return was linearized.
                return true;
            }
            let Some((op, previous)) = stack.pop() else {
                return false;
            };
            state = previous;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut entries, ret_entry[op]);
            relink(&mut entries, call_entry[op]);
            cursor = entries[call_entry[op]].next;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, ret: Option<u64>, v: u64) -> Operation {
        Operation { key: "k".into(), call, ret, kind: Kind::Write(v) }
    }

    fn r(call: u64, ret: u64, v: Option<u64>) -> Operation {
        Operation { key: "k".into(), call, ret: Some(ret), kind: Kind::Read(v) }
    }

    #[test]
    fn accepts_linearizable_histories() {
        assert!(check(&[w(0, Some(10), 1), r(11, 12, Some(1))]).is_empty());
        // Concurrent read may see either value.
        assert!(check(&[w(0, Some(10), 1), w(20, Some(30), 2), r(25, 26, Some(1)), r(27, 40, Some(2))]).is_empty());
        assert!(check(&[r(0, 1, None), w(2, Some(3), 7)]).is_empty());
        // An unknown write may have happened...
        assert!(check(&[w(0, None, 5), r(10, 11, Some(5))]).is_empty());
        // ...or not.
        assert!(check(&[w(0, None, 5), r(10, 11, None)]).is_empty());
    }

    #[test]
    fn rejects_stale_and_invented_reads() {
        // Stale read: 2 was acknowledged before the read began.
        assert_eq!(
            check(&[w(0, Some(1), 1), w(2, Some(3), 2), r(4, 5, Some(1))]),
            vec![Violation { key: "k".into(), operations: 3 }]
        );
        // A value nobody wrote.
        assert!(!check(&[w(0, Some(1), 1), r(2, 3, Some(9))]).is_empty());
        // Lost write: acknowledged, then the key reads as never written.
        assert!(!check(&[w(0, Some(1), 1), r(2, 3, None)]).is_empty());
        // Reads going back in time.
        assert!(!check(&[w(0, Some(10), 1), w(0, Some(10), 2), r(11, 12, Some(2)), r(13, 14, Some(1))]).is_empty());
    }
}
