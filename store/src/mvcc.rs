//! The MVCC keyspace inside the state machine's RocksDB, and every read of it.
//!
//! Column families:
//! * `kv` — one record per version of a key: `escaped key ++ !revision` → [`Version`]. Newer
//!   versions of a key sort first, so the visible version at revision `r` is the first one at
//!   or below `r`.
//! * `events` — `revision ++ sub` → (kind, key): what changed at each revision, in order. Watches
//!   replay history from it.
//! * `leases`, `lease_keys` — granted leases and the keys attached to them.
//! * `meta` — applied log id, membership, compaction horizon.

use std::ops::ControlFlow;

use keel_proto::etcdserverpb as pb;
use keel_proto::mvccpb::{self, KeyValue, event::EventType};
use openraft::alias::{LogIdOf, StoredMembershipOf};
use rocksdb::{DB, DBRawIterator, ReadOptions, Snapshot};
use serde::{Deserialize, Serialize};

use crate::codec::{Version, decode_event, from_bytes};
use crate::error::{Result, StoreError};
use crate::keys::{self, KeyRange, decode_event_key, decode_version_key, event_key, user_key_prefix, version_key};
use crate::types::TypeConfig;

pub const CF_META: &str = "meta";
pub const CF_KV: &str = "kv";
pub const CF_EVENTS: &str = "events";
pub const CF_LEASES: &str = "leases";
pub const CF_LEASE_KEYS: &str = "lease_keys";
pub const ALL_CFS: [&str; 5] = [CF_META, CF_KV, CF_EVENTS, CF_LEASES, CF_LEASE_KEYS];

pub const META_APPLIED: &[u8] = b"applied";
pub const META_MEMBERSHIP: &[u8] = b"membership";
pub const META_COMPACTED: &[u8] = b"compacted";
pub const META_COMPACTED_PHYSICAL: &[u8] = b"compacted_physical";
pub const META_CLUSTER_ID: &[u8] = b"cluster_id";

/// Events one [`View::events_since`] call looks at, matching or not.
const EVENT_SCAN_BUDGET: usize = 20_000;

/// A lease as the state machine keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl: i64,
}

/// A consistent read of the state machine: a RocksDB snapshot, or the live database for the
/// state machine's own reads while it applies.
pub struct View<'a> {
    db: &'a DB,
    snapshot: Option<Snapshot<'a>>,
}

impl<'a> View<'a> {
    pub fn snapshot(db: &'a DB) -> View<'a> {
        View { db, snapshot: Some(db.snapshot()) }
    }

    /// The database as it is now, for the single writer.
    pub fn live(db: &'a DB) -> View<'a> {
        View { db, snapshot: None }
    }

    pub fn db(&self) -> &'a DB {
        self.db
    }

    pub fn cf(&self, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::corrupt(format!("state machine has no `{name}` column family")))
    }

    fn read_options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            opts.set_snapshot(s);
        }
        opts
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = self.cf(cf)?;
        Ok(self.db.get_cf_opt(cf, key, &self.read_options())?)
    }

    pub fn iter(&self, cf: &str, upper_bound: Option<Vec<u8>>) -> Result<DBRawIterator<'a>> {
        let cf = self.cf(cf)?;
        let mut opts = self.read_options();
        if let Some(ub) = upper_bound {
            opts.set_iterate_upper_bound(ub);
        }
        Ok(self.db.raw_iterator_cf_opt(cf, opts))
    }

    pub fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.get(CF_META, key)?
            .map(|raw| from_bytes(&raw, &format!("state machine meta {}", String::from_utf8_lossy(key))))
            .transpose()
    }

    pub fn applied(&self) -> Result<Option<LogIdOf<TypeConfig>>> {
        self.get_meta(META_APPLIED)
    }

    /// The store revision this view shows: the index of the last applied entry.
    pub fn revision(&self) -> Result<i64> {
        Ok(self.applied()?.map_or(0, |l| l.index as i64))
    }

    pub fn membership(&self) -> Result<StoredMembershipOf<TypeConfig>> {
        Ok(self.get_meta(META_MEMBERSHIP)?.unwrap_or_default())
    }

    /// Revisions below this are gone.
    pub fn compacted(&self) -> Result<i64> {
        Ok(self.get_meta(META_COMPACTED)?.unwrap_or(0))
    }

    pub fn compacted_physical(&self) -> Result<i64> {
        Ok(self.get_meta(META_COMPACTED_PHYSICAL)?.unwrap_or(0))
    }

    /// Checks that `revision` can be read: not below the horizon, not above the present.
    pub fn check_readable(&self, revision: i64) -> Result<()> {
        let compacted = self.compacted()?;
        if revision < compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        if revision > self.revision()? {
            return Err(StoreError::FutureRevision);
        }
        Ok(())
    }

    /// The newest version of `key` at or below `revision`, with its revision.
    pub fn version_at(&self, key: &[u8], revision: i64) -> Result<Option<(i64, Version)>> {
        let prefix = user_key_prefix(key);
        let mut it = self.iter(CF_KV, None)?;
        it.seek(version_key(key, revision));
        if let Some(raw_key) = it.key()
            && raw_key.len() == prefix.len() + 8
            && raw_key.starts_with(&prefix)
        {
            let (_, rev) = decode_version_key(raw_key)?;
            let value = it.value().unwrap_or_default();
            return Ok(Some((rev, Version::decode(value, key)?)));
        }
        it.status()?;
        Ok(None)
    }

    /// The key as it is at `revision`, if it exists then.
    pub fn get_kv(&self, key: &[u8], revision: i64) -> Result<Option<KeyValue>> {
        Ok(self.version_at(key, revision)?.and_then(|(rev, v)| v.to_key_value(key, rev)))
    }

    /// Visits every key alive at `revision` in `range`, in key order.
    pub fn scan<F>(&self, range: &KeyRange, revision: i64, mut visit: F) -> Result<()>
    where
        F: FnMut(&[u8], i64, Version) -> Result<ControlFlow<()>>,
    {
        self.scan_records(range, revision, usize::MAX, |user_key, rev, record| {
            let version = Version::decode(record, user_key)?;
            if version.is_live() { visit(user_key, rev, version) } else { Ok(ControlFlow::Continue(())) }
        })?;
        Ok(())
    }

    /// Visits every key's newest record at or below `revision` in `range` (tombstones too),
    /// still encoded, in key order: callers that only count need not decode values.
    /// Gives up (`Ok(false)`) after `max_steps` records, versions newer than `revision`
    /// stepped over included.
    fn scan_records<F>(&self, range: &KeyRange, revision: i64, max_steps: usize, mut visit: F) -> Result<bool>
    where
        F: FnMut(&[u8], i64, &[u8]) -> Result<ControlFlow<()>>,
    {
        if range.is_empty() {
            return Ok(true);
        }
        let mut it = self.iter(CF_KV, range.encoded_upper_bound())?;
        it.seek(user_key_prefix(range.start()));
        let mut steps = 0usize;
        while let Some(raw_key) = it.key() {
            steps += 1;
            if steps > max_steps {
                return Ok(false);
            }
            let (user_key, rev) = decode_version_key(raw_key)?;
            if rev > revision {
                it.next();
                continue;
            }
            let prefix = raw_key[..raw_key.len() - 8].to_vec();
            if visit(&user_key, rev, it.value().unwrap_or_default())?.is_break() {
                return Ok(true);
            }
            skip_older_versions(&mut it, &prefix);
        }
        it.status()?;
        Ok(true)
    }

    /// An etcd range read at `revision` (already checked readable).
    ///
    /// Once the limit is reached (or for `count_only`) the rest of the range is only counted:
    /// each key's record is checked for liveness without decoding or copying its value, so
    /// paging through a large prefix (kubectl's 500 at a time) costs a key walk per page,
    /// not a copy of every value after the page.
    pub fn range(&self, req: &pb::RangeRequest, revision: i64) -> Result<pb::RangeResponse> {
        self.range_within(req, revision, usize::MAX, usize::MAX)?
            .ok_or_else(|| StoreError::Internal("an unbounded range ran out of budget".into()))
    }

    /// [`View::range`], given up (`None`) as soon as it would visit more than `max_records`
    /// records (versions included) or `max_bytes` bytes of them.
    pub fn range_within(
        &self,
        req: &pb::RangeRequest,
        revision: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<pb::RangeResponse>> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut builder = RangeBuilder::new(req);
        let mut bytes = 0usize;
        let mut over_budget = false;
        let finished = self.scan_records(&range, revision, max_records, |user_key, rev, record| {
            bytes += record.len();
            if bytes > max_bytes {
                over_budget = true;
                return Ok(ControlFlow::Break(()));
            }
            if builder.only_counting() {
                if Version::is_live_record(record, user_key)? {
                    builder.count_one_more();
                }
            } else {
                let version = Version::decode(record, user_key)?;
                if version.is_live() {
                    let _ = builder.push_version(user_key, rev, version);
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok((finished && !over_budget).then(|| builder.finish()))
    }

    /// The events from `start` on (inclusive), limited to keys in `range`, in revision order.
    /// Stops after `max_events` events but never inside a revision. Returns the events and
    /// the next revision to read from.
    pub fn events_since(
        &self,
        start: i64,
        up_to: i64,
        range: &KeyRange,
        want_prev: bool,
        max_events: usize,
    ) -> Result<(Vec<(i64, mvccpb::Event)>, i64)> {
        let mut out: Vec<(i64, mvccpb::Event)> = Vec::new();
        let mut it = self.iter(CF_EVENTS, Some(event_key(up_to.saturating_add(1), 0).to_vec()))?;
        it.seek(event_key(start, 0));
        let mut next = start;
        let mut scanned = 0usize;
        while let Some(raw_key) = it.key() {
            let (rev, _sub) = decode_event_key(raw_key)?;
            // A revision's events always travel together; a long stretch of events outside
            // the range ends a call too, so one call never scans unbounded history.
            if (out.len() >= max_events || scanned >= EVENT_SCAN_BUDGET) && rev != next - 1 {
                return Ok((out, rev));
            }
            scanned += 1;
            next = rev + 1;
            let (kind, key) = decode_event(it.value().unwrap_or_default())?;
            if range.contains(&key) {
                out.push((rev, self.event_at(kind, &key, rev, want_prev)?));
            }
            it.next();
        }
        it.status()?;
        Ok((out, up_to + 1))
    }

    /// The event that changed `key` at `revision`.
    pub fn event_at(&self, kind: EventType, key: &[u8], revision: i64, want_prev: bool) -> Result<mvccpb::Event> {
        let kv = match kind {
            EventType::Put => self
                .version_at(key, revision)?
                .and_then(|(rev, v)| if rev == revision { v.to_key_value(key, rev) } else { None }),
            EventType::Delete => Some(KeyValue { key: key.to_vec(), mod_revision: revision, ..Default::default() }),
        };
        let Some(kv) = kv else {
            return Err(StoreError::corrupt(format!(
                "event at revision {revision} names key {:?} but that version is missing",
                String::from_utf8_lossy(key)
            )));
        };
        let prev_kv = if want_prev { self.get_kv(key, revision - 1)? } else { None };
        Ok(mvccpb::Event { r#type: kind as i32, kv: Some(kv), prev_kv })
    }

    pub fn lease(&self, id: i64) -> Result<Option<LeaseRecord>> {
        self.get(CF_LEASES, &keys::lease_key(id))?.map(|raw| from_bytes(&raw, &format!("lease {id:x}"))).transpose()
    }

    pub fn leases(&self) -> Result<Vec<(i64, LeaseRecord)>> {
        let mut out = Vec::new();
        let mut it = self.iter(CF_LEASES, None)?;
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let id = keys::decode_index_key(k)? as i64;
            out.push((id, from_bytes(v, &format!("lease {id:x}"))?));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Keys attached to lease `id`.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        let prefix = keys::lease_key(id);
        let upper = keys::lease_key(id.wrapping_add(1));
        let upper = if id == -1 { None } else { Some(upper.to_vec()) };
        let mut it = self.iter(CF_LEASE_KEYS, upper)?;
        it.seek(prefix);
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(k[8..].to_vec());
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// etcd's HashKV: a CRC32 over every key version visible at `revision`.
    pub fn hash_kv(&self, revision: i64) -> Result<u32> {
        let mut hasher = crc32fast::Hasher::new();
        self.scan(&KeyRange::From(Vec::new()), revision, |key, rev, version| {
            if let Some(kv) = version.to_key_value(key, rev) {
                hasher.update(&kv.key);
                hasher.update(&kv.create_revision.to_be_bytes());
                hasher.update(&kv.mod_revision.to_be_bytes());
                hasher.update(&kv.version.to_be_bytes());
                hasher.update(&kv.lease.to_be_bytes());
                hasher.update(&kv.value);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(hasher.finalize())
    }
}

/// Builds an etcd range response from the keys of a range, visited in key order: applies the
/// revision filters, `keys_only`, `count_only`, sorting and the limit as etcd does. `count` is
/// every key in the range, unaffected by limit and filters.
pub struct RangeBuilder<'r> {
    req: &'r pb::RangeRequest,
    sort_target: pb::range_request::SortTarget,
    sort_order: pb::range_request::SortOrder,
    limit: usize,
    natural_order: bool,
    kvs: Vec<KeyValue>,
    count: i64,
    more: bool,
}

impl<'r> RangeBuilder<'r> {
    /// Whether a range must read the values it pushes: its answer carries them, or it is
    /// sorted by them (they are dropped after the sort, in `finish`, as etcd does).
    pub fn needs_values(req: &pb::RangeRequest) -> bool {
        !req.count_only && (!req.keys_only || req.sort_target == pb::range_request::SortTarget::Value as i32)
    }

    pub fn new(req: &'r pb::RangeRequest) -> Self {
        use pb::range_request::{SortOrder, SortTarget};
        let sort_order = SortOrder::try_from(req.sort_order).unwrap_or_default();
        let sort_target = SortTarget::try_from(req.sort_target).unwrap_or_default();
        let natural_order = sort_target == SortTarget::Key && sort_order != SortOrder::Descend;
        let limit = if req.limit > 0 && natural_order { req.limit as usize } else { usize::MAX };
        RangeBuilder { req, sort_target, sort_order, limit, natural_order, kvs: Vec::new(), count: 0, more: false }
    }

    /// Whether every further key is only counted: the response is full (in key order) or
    /// only the count was asked for.
    fn only_counting(&self) -> bool {
        let filtered = self.req.min_mod_revision > 0
            || self.req.max_mod_revision > 0
            || self.req.min_create_revision > 0
            || self.req.max_create_revision > 0;
        self.req.count_only || (self.natural_order && !filtered && self.kvs.len() >= self.limit)
    }

    /// Counts a live key past the limit (see `only_counting`).
    fn count_one_more(&mut self) {
        self.count += 1;
        if !self.req.count_only {
            self.more = true;
        }
    }

    pub fn push_version(&mut self, key: &[u8], mod_revision: i64, version: Version) -> ControlFlow<()> {
        self.count += 1;
        if self.req.count_only {
            return ControlFlow::Continue(());
        }
        match version.into_key_value(key, mod_revision) {
            Some(kv) => self.push_kv(kv),
            None => ControlFlow::Continue(()),
        }
    }

    /// Adds a live key that was already counted.
    fn push_kv(&mut self, mut kv: KeyValue) -> ControlFlow<()> {
        if !passes_revision_filters(self.req, &kv) {
            return ControlFlow::Continue(());
        }
        if self.kvs.len() >= self.limit {
            self.more = true;
            return ControlFlow::Continue(());
        }
        // Values sorted on are dropped after the sort (in `finish`), as etcd does.
        if self.req.keys_only && self.sort_target != pb::range_request::SortTarget::Value {
            kv.value.clear();
        }
        self.kvs.push(kv);
        ControlFlow::Continue(())
    }

    /// Adds a live key, counting it.
    pub fn push(&mut self, kv: KeyValue) -> ControlFlow<()> {
        self.count += 1;
        if self.req.count_only {
            return ControlFlow::Continue(());
        }
        self.push_kv(kv)
    }

    pub fn finish(mut self) -> pb::RangeResponse {
        if !self.natural_order {
            sort_kvs(&mut self.kvs, self.sort_target, self.sort_order);
            if self.req.limit > 0 && self.kvs.len() > self.req.limit as usize {
                self.kvs.truncate(self.req.limit as usize);
                self.more = true;
            }
        }
        if self.req.keys_only {
            self.kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        pb::RangeResponse { header: None, kvs: self.kvs, more: self.more, count: self.count }
    }
}

/// Moves `it` past the remaining (older) versions of the key whose encoded prefix is `prefix`.
fn skip_older_versions(it: &mut DBRawIterator<'_>, prefix: &[u8]) {
    // A few steps are cheaper than a seek; a long history is skipped with one seek.
    for _ in 0..4 {
        it.next();
        match it.key() {
            Some(k) if k.len() == prefix.len() + 8 && k.starts_with(prefix) => continue,
            _ => return,
        }
    }
    let mut past = prefix.to_vec();
    past.extend_from_slice(&[0xFF; 8]);
    it.seek(past);
}

fn passes_revision_filters(req: &pb::RangeRequest, kv: &KeyValue) -> bool {
    (req.min_mod_revision <= 0 || kv.mod_revision >= req.min_mod_revision)
        && (req.max_mod_revision <= 0 || kv.mod_revision <= req.max_mod_revision)
        && (req.min_create_revision <= 0 || kv.create_revision >= req.min_create_revision)
        && (req.max_create_revision <= 0 || kv.create_revision <= req.max_create_revision)
}

fn sort_kvs(kvs: &mut [KeyValue], target: pb::range_request::SortTarget, order: pb::range_request::SortOrder) {
    use pb::range_request::SortTarget as T;
    kvs.sort_by(|a, b| match target {
        T::Key => a.key.cmp(&b.key),
        T::Version => a.version.cmp(&b.version).then(a.key.cmp(&b.key)),
        T::Create => a.create_revision.cmp(&b.create_revision).then(a.key.cmp(&b.key)),
        T::Mod => a.mod_revision.cmp(&b.mod_revision).then(a.key.cmp(&b.key)),
        T::Value => a.value.cmp(&b.value).then(a.key.cmp(&b.key)),
    });
    if order == pb::range_request::SortOrder::Descend {
        kvs.reverse();
    }
}

/// Removes history below `horizon` from disk, in steps of `chunk` events: for each key changed
/// since the last physical compaction, the newest version at or below the horizon stays
/// (unless it is a deletion older than the horizon) and everything older goes; the event
/// index below the horizon goes too. Reads below the horizon were refused since the Compact
/// entry applied, so nobody can see the intermediate states.
pub fn compact_physical(db: &DB, horizon: i64, chunk: usize) -> Result<()> {
    loop {
        let view = View::live(db);
        let from = view.compacted_physical()?;
        if from >= horizon {
            return Ok(());
        }
        let cf_kv = view.cf(CF_KV)?;
        let cf_events = view.cf(CF_EVENTS)?;
        let mut keys = std::collections::BTreeSet::new();
        let mut it = view.iter(CF_EVENTS, Some(event_key(horizon, 0).to_vec()))?;
        it.seek(event_key(from, 0));
        let mut reached = horizon;
        let mut scanned = 0usize;
        while let Some(raw) = it.key() {
            let (rev, _) = decode_event_key(raw)?;
            if scanned >= chunk {
                reached = rev;
                break;
            }
            scanned += 1;
            let (_, key) = decode_event(it.value().unwrap_or_default())?;
            keys.insert(key);
            it.next();
        }
        it.status()?;
        drop(it);

        let mut batch = rocksdb::WriteBatch::default();
        for key in &keys {
            let prefix = user_key_prefix(key);
            let mut versions = view.iter(CF_KV, None)?;
            versions.seek(version_key(key, horizon));
            let mut first = true;
            while let Some(raw) = versions.key() {
                if raw.len() != prefix.len() + 8 || !raw.starts_with(&prefix) {
                    break;
                }
                let (_, rev) = decode_version_key(raw)?;
                let keep = first && {
                    let version = Version::decode(versions.value().unwrap_or_default(), key)?;
                    version.is_live() || rev == horizon
                };
                if !keep {
                    batch.delete_cf(cf_kv, raw);
                }
                first = false;
                versions.next();
            }
            versions.status()?;
        }
        // The event index keeps the horizon revision itself: a watch may start there.
        batch.delete_range_cf(cf_events, event_key(from, 0), event_key(reached, 0));
        batch.put_cf(view.cf(CF_META)?, META_COMPACTED_PHYSICAL, crate::codec::to_bytes(&reached)?);
        // Unlogged like every state machine write (see state_machine::unlogged): a crash then
        // never keeps these deletions while losing the horizon that allowed them.
        let mut unlogged = rocksdb::WriteOptions::default();
        unlogged.disable_wal(true);
        db.write_opt(batch, &unlogged)?;
    }
}
