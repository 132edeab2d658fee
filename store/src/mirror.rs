//! In-memory copies of small key ranges that are read on nearly every request and rarely
//! written: the API's admission reads a namespace, a service account, the namespace's limit
//! ranges and quotas, and the priority classes on every pod create. Served from RocksDB, each
//! such read is an iterator and a seek through every memtable and level, about a sixth of a
//! member's CPU per create; kube-apiserver reads the same objects from its informers' caches.
//!
//! A mirror is exact, not a cache that may be stale. Its lock is taken before an applied
//! batch is written to the database and released once the batch's changes are in memory too,
//! before the applied revision moves on; it carries the revision it reflects. A reader thus
//! never finds the database ahead of the mirror (one half of a transaction new, the other
//! old). A read served from it sees every write this member has applied and acknowledged, as
//! a read of the database would, and its header revision is the one its contents are at, so a
//! watch started from it neither skips nor repeats a change. Only reads of the latest
//! revision are served here; history stays in the database.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_proto::mvccpb::{KeyValue, event::EventType};
use parking_lot::{RwLock, RwLockWriteGuard};
use rocksdb::DB;

use crate::error::Result;
use crate::keys::{KeyRange, prefix_end};
use crate::mvcc::{RangeBuilder, View};
use crate::pb;
use crate::watch::RevisionEvents;

#[derive(Default)]
pub struct Mirrors {
    state: RwLock<MirrorState>,
}

/// The mirror locked for a change to the database (see [`Mirrors::update`]).
pub struct MirrorUpdate<'a> {
    state: RwLockWriteGuard<'a, MirrorState>,
}

impl MirrorUpdate<'_> {
    /// Takes in an applied batch's changes; `revision` is the batch's last.
    pub fn apply(&mut self, revisions: &[RevisionEvents], revision: i64) {
        let state = &mut *self.state;
        state.revision = state.revision.max(revision);
        if state.ranges.is_empty() {
            return;
        }
        for event in revisions.iter().flat_map(|r| r.events.iter()) {
            let Some(kv) = &event.kv else { continue };
            if !state.mirrored(&kv.key) {
                continue;
            }
            if event.r#type == EventType::Delete as i32 {
                state.keys.remove(&kv.key);
            } else {
                state.keys.insert(kv.key.clone(), kv.clone());
            }
        }
    }

    /// Loads every mirrored range again from `view`, a snapshot being installed at `revision`.
    pub fn reload(&mut self, view: &View<'_>, revision: i64) -> Result<()> {
        let state = &mut *self.state;
        state.keys.clear();
        state.revision = revision;
        for (start, end) in state.ranges.clone() {
            state.load(view, &start, &end)?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct MirrorState {
    /// Mirrored prefixes as `[start, end)`.
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// The applied revision the contents are at.
    revision: i64,
    keys: BTreeMap<Vec<u8>, KeyValue>,
}

impl MirrorState {
    fn mirrored(&self, key: &[u8]) -> bool {
        self.ranges.iter().any(|(start, end)| key >= start.as_slice() && key < end.as_slice())
    }

    fn covers(&self, range: &KeyRange) -> bool {
        match range {
            KeyRange::Single(key) => self.mirrored(key),
            KeyRange::Between(start, end) => {
                self.ranges.iter().any(|(s, e)| start.as_slice() >= s.as_slice() && end.as_slice() <= e.as_slice())
            }
            KeyRange::From(_) => false,
        }
    }

    fn load(&mut self, view: &View<'_>, start: &[u8], end: &[u8]) -> Result<()> {
        let range = KeyRange::Between(start.to_vec(), end.to_vec());
        view.scan(&range, i64::MAX, |key, revision, version| {
            if let Some(kv) = version.into_key_value(key, revision) {
                self.keys.insert(kv.key.clone(), kv);
            }
            Ok(std::ops::ControlFlow::Continue(()))
        })
    }
}

impl Mirrors {
    pub fn new(revision: i64) -> Mirrors {
        Mirrors { state: RwLock::new(MirrorState { revision, ..Default::default() }) }
    }

    /// Starts mirroring every key under `prefix`, loaded from the database `current` gives.
    /// The database is looked up under the mirror's lock, so neither a batch nor a snapshot
    /// can be half taken in (written or swapped in, not yet mirrored) while it loads.
    pub fn register(&self, prefix: &[u8], current: impl FnOnce() -> Arc<DB>) -> Result<()> {
        let Some(end) = prefix_end(prefix) else {
            return Err(crate::error::StoreError::InvalidArgument("a mirrored prefix needs an end".into()));
        };
        let mut state = self.state.write();
        if state.covers(&KeyRange::Between(prefix.to_vec(), end.clone())) {
            return Ok(());
        }
        let db = current();
        state.load(&View::live(&db), prefix, &end)?;
        state.ranges.push((prefix.to_vec(), end));
        Ok(())
    }

    /// Holds off readers while the database changes under them: take it before writing an
    /// applied batch (or swapping in a snapshot) and apply the change to it before dropping
    /// it.
    pub fn update(&self) -> MirrorUpdate<'_> {
        MirrorUpdate { state: self.state.write() }
    }

    /// Answers a range of the latest revision that lies within a mirrored prefix, with the
    /// revision its answer is at; `None` for any other range.
    pub fn range(&self, request: &pb::RangeRequest) -> Option<(pb::RangeResponse, i64)> {
        if request.revision != 0 {
            return None;
        }
        let range = KeyRange::new(&request.key, &request.range_end);
        let state = self.state.read();
        if !state.covers(&range) {
            return None;
        }
        // Values are copied (under the lock) only when the range needs them.
        let with_values = RangeBuilder::needs_values(request);
        let copy = |kv: &KeyValue| {
            if with_values { kv.clone() } else { KeyValue { key: kv.key.clone(), value: Vec::new(), ..*kv } }
        };
        let mut builder = RangeBuilder::new(request);
        match &range {
            KeyRange::Single(key) => {
                if let Some(kv) = state.keys.get(key) {
                    let _ = builder.push(copy(kv));
                }
            }
            KeyRange::Between(start, end) if start < end => {
                for (_, kv) in state.keys.range::<[u8], _>((
                    std::ops::Bound::Included(start.as_slice()),
                    std::ops::Bound::Excluded(end.as_slice()),
                )) {
                    let _ = builder.push(copy(kv));
                }
            }
            _ => {}
        }
        Some((builder.finish(), state.revision))
    }

    /// Keys held in memory (logged when a member starts).
    pub fn len(&self) -> usize {
        self.state.read().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A put's event as the mirror would hold it; the tests build changes with it.
    fn put_event(key: &str, value: &str, revision: i64) -> keel_proto::mvccpb::Event {
        keel_proto::mvccpb::Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn request(key: &str, end: &str) -> pb::RangeRequest {
        pb::RangeRequest { key: key.into(), range_end: end.into(), ..Default::default() }
    }

    #[test]
    fn serves_only_latest_reads_inside_mirrored_prefixes_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state_machine::open_db(dir.path(), true).unwrap();
        let mirrors = Mirrors::new(4);
        let db = Arc::new(db);
        mirrors.register(b"/registry/core/namespaces/", || db.clone()).unwrap();

        let mut delete = put_event("/registry/core/namespaces/a", "", 6);
        delete.r#type = EventType::Delete as i32;
        mirrors.update().apply(
            &[
                RevisionEvents::new(5, vec![put_event("/registry/core/namespaces/a", "A", 5)]),
                RevisionEvents::new(5, vec![put_event("/registry/core/pods/x/p", "P", 5)]),
            ],
            5,
        );
        mirrors.update().apply(&[RevisionEvents::new(6, vec![put_event("/registry/core/namespaces/b", "B", 6)])], 6);

        let (one, revision) = mirrors.range(&request("/registry/core/namespaces/a", "")).unwrap();
        assert_eq!((one.kvs.len(), one.kvs[0].value.as_slice(), revision), (1, &b"A"[..], 6));
        let (all, _) = mirrors.range(&request("/registry/core/namespaces/", "/registry/core/namespaces0")).unwrap();
        assert_eq!(
            all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
            vec![b"/registry/core/namespaces/a".to_vec(), b"/registry/core/namespaces/b".to_vec()]
        );
        let mut limited = request("/registry/core/namespaces/", "/registry/core/namespaces0");
        limited.limit = 1;
        let (page, _) = mirrors.range(&limited).unwrap();
        assert_eq!((page.kvs.len(), page.more, page.count), (1, true, 2));
        let mut keys_only = request("/registry/core/namespaces/", "/registry/core/namespaces0");
        keys_only.keys_only = true;
        let (keys, _) = mirrors.range(&keys_only).unwrap();
        assert!(keys.kvs.len() == 2 && keys.kvs.iter().all(|kv| kv.value.is_empty() && kv.mod_revision > 0));
        let mut count_only = request("/registry/core/namespaces/", "/registry/core/namespaces0");
        count_only.count_only = true;
        let (counted, _) = mirrors.range(&count_only).unwrap();
        assert_eq!((counted.kvs.len(), counted.count), (0, 2));
        // Sorted by value ("0" < "A" < "B", against key order), then stripped, as etcd does.
        mirrors.update().apply(&[RevisionEvents::new(6, vec![put_event("/registry/core/namespaces/c", "0", 6)])], 6);
        let mut by_value = keys_only.clone();
        by_value.sort_target = pb::range_request::SortTarget::Value as i32;
        let (sorted, _) = mirrors.range(&by_value).unwrap();
        assert_eq!(
            sorted.kvs.iter().map(|kv| (kv.key.clone(), kv.value.len())).collect::<Vec<_>>(),
            vec![
                (b"/registry/core/namespaces/c".to_vec(), 0),
                (b"/registry/core/namespaces/a".to_vec(), 0),
                (b"/registry/core/namespaces/b".to_vec(), 0)
            ]
        );

        mirrors.update().apply(&[RevisionEvents::new(7, vec![delete])], 7);
        let (gone, revision) = mirrors.range(&request("/registry/core/namespaces/a", "")).unwrap();
        assert_eq!((gone.kvs.len(), revision), (0, 7));

        // Not mirrored: other prefixes, ranges reaching outside, past revisions.
        assert!(mirrors.range(&request("/registry/core/pods/x/p", "")).is_none());
        assert!(mirrors.range(&request("/registry/core/", "/registry/core0")).is_none());
        let mut past = request("/registry/core/namespaces/b", "");
        past.revision = 6;
        assert!(mirrors.range(&past).is_none());
        assert_eq!(mirrors.len(), 2);
    }
}
