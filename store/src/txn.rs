//! Checking and applying etcd transactions against the MVCC keyspace.
//!
//! [`validate`] runs before a request is proposed and refuses what etcd refuses (missing keys,
//! too many operations, a key written twice). [`Applier`] runs inside the state machine: it
//! evaluates compares and operations against the state as of the previous entry plus what the
//! same entry already wrote, and collects every write in one `WriteBatch`. [`read_only`]
//! answers transactions that only read, from a snapshot, without the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;

use keel_proto::etcdserverpb as pb;
use keel_proto::mvccpb::{self, KeyValue, event::EventType};
use rocksdb::WriteBatch;

use crate::codec::{Version, encode_event, to_bytes};
use crate::error::{Result, StoreError};
use crate::keys::{KeyRange, event_key, lease_attachment_key, lease_key, version_key};
use crate::mvcc::{
    CF_EVENTS, CF_KV, CF_LEASE_KEYS, CF_LEASES, CF_META, LeaseRecord, META_COMPACTED, RangeBuilder, View,
};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// Refuses requests etcd refuses before they reach the log.
pub fn validate(txn: &pb::TxnRequest) -> Result<()> {
    for c in &txn.compare {
        if c.key.is_empty() {
            return Err(invalid("key is not provided"));
        }
    }
    if txn.success.len() > MAX_TXN_OPS || txn.failure.len() > MAX_TXN_OPS {
        return Err(invalid("too many operations in txn request"));
    }
    for branch in [&txn.success, &txn.failure] {
        for op in branch.iter() {
            validate_op(op)?;
        }
        branch_writes(branch)?;
    }
    Ok(())
}

fn validate_op(op: &pb::RequestOp) -> Result<()> {
    use pb::request_op::Request;
    match &op.request {
        Some(Request::RequestRange(r)) if r.key.is_empty() => Err(invalid("key is not provided")),
        Some(Request::RequestPut(p)) if p.key.is_empty() => Err(invalid("key is not provided")),
        Some(Request::RequestPut(p)) if p.ignore_value && !p.value.is_empty() => Err(invalid("value is provided")),
        Some(Request::RequestPut(p)) if p.ignore_lease && p.lease != 0 => Err(invalid("lease is provided")),
        Some(Request::RequestDeleteRange(d)) if d.key.is_empty() => Err(invalid("key is not provided")),
        Some(Request::RequestTxn(t)) => validate(t),
        Some(_) => Ok(()),
        None => Err(invalid("empty operation in txn request")),
    }
}

/// The keys one branch puts and the ranges it deletes; a key written twice is refused.
fn branch_writes(ops: &[pb::RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>)> {
    use pb::request_op::Request;
    let mut puts = BTreeSet::new();
    let mut deletes = Vec::new();
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(p)) if !puts.insert(p.key.clone()) => {
                return Err(duplicate());
            }
            Some(Request::RequestDeleteRange(d)) => deletes.push(KeyRange::new(&d.key, &d.range_end)),
            Some(Request::RequestTxn(t)) => {
                // Either branch of a nested transaction may run, so both count.
                let (sp, sd) = branch_writes(&t.success)?;
                let (fp, fd) = branch_writes(&t.failure)?;
                for key in sp.into_iter().chain(fp) {
                    if puts.contains(&key) {
                        return Err(duplicate());
                    }
                    puts.insert(key);
                }
                deletes.extend(sd);
                deletes.extend(fd);
            }
            _ => {}
        }
    }
    for key in &puts {
        if deletes.iter().any(|d| d.contains(key)) {
            return Err(duplicate());
        }
    }
    Ok((puts, deletes))
}

fn invalid(msg: &str) -> StoreError {
    StoreError::InvalidArgument(msg.to_string())
}

fn duplicate() -> StoreError {
    invalid("duplicate key given in txn request")
}

/// What an applied entry did to leases, for the in-memory lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEffect {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

/// A column family of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    Kv,
    Events,
    Leases,
    LeaseKeys,
    Meta,
}

impl Cf {
    fn name(self) -> &'static str {
        match self {
            Cf::Kv => CF_KV,
            Cf::Events => CF_EVENTS,
            Cf::Leases => CF_LEASES,
            Cf::LeaseKeys => CF_LEASE_KEYS,
            Cf::Meta => CF_META,
        }
    }
}

/// Writes waiting to go to RocksDB in one batch. Kept as plain data (RocksDB's `WriteBatch`
/// cannot be appended to another) so entries can each collect theirs and the state machine
/// can join them.
#[derive(Debug, Default)]
pub struct BatchOps {
    ops: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
}

impl BatchOps {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), Some(value.into())));
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), None));
    }

    pub fn extend(&mut self, other: BatchOps) {
        self.ops.extend(other.ops);
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn into_write_batch(self, db: &rocksdb::DB) -> Result<WriteBatch> {
        let mut batch = WriteBatch::default();
        for (cf, key, value) in self.ops {
            let handle = db
                .cf_handle(cf.name())
                .ok_or_else(|| StoreError::corrupt(format!("state machine has no `{}` column family", cf.name())))?;
            match value {
                Some(v) => batch.put_cf(handle, key, v),
                None => batch.delete_cf(handle, key),
            }
        }
        Ok(batch)
    }
}

/// Whether a transaction reads history at a past revision (which only the database has).
pub fn reads_history(txn: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    txn.success.iter().chain(&txn.failure).any(|op| match &op.request {
        Some(Request::RequestRange(r)) => r.revision > 0,
        Some(Request::RequestTxn(t)) => reads_history(t),
        _ => false,
    })
}

/// Everything about the newest version of a live key except its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMeta {
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// The live keys and their newest version, in key order: the state machine's in-memory
/// index (etcd keeps one too). Applying a write needs the previous version's create revision,
/// version and lease; finding them here instead of seeking through RocksDB's history is what
/// keeps a put cheap. Values stay on disk.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, KeyMeta>,
}

impl KeyIndex {
    /// Reads the newest version of every key from the keyspace.
    pub fn build(view: &View<'_>) -> Result<KeyIndex> {
        let mut keys = BTreeMap::new();
        view.scan(&KeyRange::From(Vec::new()), i64::MAX, |key, rev, version| {
            if let Version::Live { create_revision, version, lease, .. } = version {
                keys.insert(key.to_vec(), KeyMeta { mod_revision: rev, create_revision, version, lease });
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(KeyIndex { keys })
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyMeta> {
        self.keys.get(key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Live keys in `range`, in order.
    pub fn range<'s>(&'s self, range: &KeyRange) -> Box<dyn Iterator<Item = (&'s Vec<u8>, &'s KeyMeta)> + 's> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        match range {
            KeyRange::Single(k) => Box::new(self.keys.get_key_value(k).into_iter()),
            _ if range.is_empty() => Box::new(std::iter::empty()),
            KeyRange::From(k) => Box::new(self.keys.range::<[u8], _>((Included(k.as_slice()), Unbounded))),
            KeyRange::Between(k, end) => {
                Box::new(self.keys.range::<[u8], _>((Included(k.as_slice()), Excluded(end.as_slice()))))
            }
        }
    }

    /// Records what an applied entry changed.
    pub fn update(&mut self, changes: Vec<(Vec<u8>, Option<KeyMeta>)>) {
        for (key, meta) in changes {
            match meta {
                Some(meta) => self.keys.insert(key, meta),
                None => self.keys.remove(&key),
            };
        }
    }
}

/// Whether compare `c` holds for the keys it names, given as they are now (all of them for a
/// ranged compare). Values are only needed for `VALUE` compares.
fn compare_holds(c: &pb::Compare, kvs: &[KeyValue]) -> Result<bool> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let target = CompareTarget::try_from(c.target).map_err(|_| invalid("unknown compare target"))?;
    let result = CompareResult::try_from(c.result).map_err(|_| invalid("unknown compare result"))?;
    if kvs.is_empty() && target == CompareTarget::Value {
        // A missing key has no value to compare; etcd fails the compare.
        return Ok(false);
    }
    let holds = |ord: std::cmp::Ordering| match result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
        CompareResult::NotEqual => ord.is_ne(),
    };
    let check = |kv: &KeyValue| -> bool {
        let int_target = |actual: i64| {
            let expected = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version)
                | (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create)
                | (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod)
                | (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            holds(actual.cmp(&expected))
        };
        match target {
            CompareTarget::Version => int_target(kv.version),
            CompareTarget::Create => int_target(kv.create_revision),
            CompareTarget::Mod => int_target(kv.mod_revision),
            CompareTarget::Lease => int_target(kv.lease),
            CompareTarget::Value => {
                let expected: &[u8] = match &c.target_union {
                    Some(TargetUnion::Value(v)) => v,
                    _ => &[],
                };
                holds(kv.value.as_slice().cmp(expected))
            }
        }
    };
    if kvs.is_empty() {
        return Ok(check(&KeyValue::default()));
    }
    Ok(kvs.iter().all(check))
}

fn needs_values(c: &pb::Compare) -> bool {
    c.target == pb::compare::CompareTarget::Value as i32
}

/// Answers a transaction that only reads (compares and ranges, in any branch), from a
/// consistent view, without going through the log.
pub fn read_only(view: &View<'_>, txn: &pb::TxnRequest) -> Result<pb::TxnResponse> {
    let current = view.revision()?;
    let mut succeeded = true;
    for c in &txn.compare {
        let range = KeyRange::new(&c.key, &c.range_end);
        let mut kvs = Vec::new();
        view.scan(&range, current, |key, rev, version| {
            if let Some(kv) = version.to_key_value(key, rev) {
                kvs.push(kv);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if !compare_holds(c, &kvs)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        use pb::request_op::Request;
        use pb::response_op::Response;
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                let revision = if r.revision > 0 { r.revision } else { current };
                view.check_readable(revision)?;
                Response::ResponseRange(view.range(r, revision)?)
            }
            Some(Request::RequestTxn(t)) => Response::ResponseTxn(read_only(view, t)?),
            _ => return Err(StoreError::Internal("a write in a read-only transaction".into())),
        };
        responses.push(pb::ResponseOp { response: Some(response) });
    }
    Ok(pb::TxnResponse { header: None, succeeded, responses })
}

/// Applies one log entry's command at `revision`. Reads see the state after the previous
/// entry (the in-memory index for metadata, point lookups for values) plus what this entry
/// already wrote; writes collect in one `WriteBatch` and in a list of index changes, both
/// dropped if the entry fails, so a failed entry changes nothing.
pub struct Applier<'a> {
    view: View<'a>,
    index: &'a KeyIndex,
    /// Values earlier entries of the same batch wrote (not on disk yet).
    batch_values: &'a HashMap<Vec<u8>, Vec<u8>>,
    revision: i64,
    batch: BatchOps,
    /// Keys this entry already wrote, newest version.
    written: BTreeMap<Vec<u8>, Version>,
    events: Vec<mvccpb::Event>,
    lease_effects: Vec<LeaseEffect>,
}

/// Everything one entry changed, ready to be committed together.
pub struct Applied {
    pub batch: BatchOps,
    /// Events in the order the writes happened; `prev_kv` is left empty (watchers that want
    /// it look it up, see [`crate::watch::RevisionEvents`]).
    pub events: Vec<mvccpb::Event>,
    pub lease_effects: Vec<LeaseEffect>,
    pub index_changes: Vec<(Vec<u8>, Option<KeyMeta>)>,
    /// Values of the keys this entry put.
    pub values: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Applied {
    pub fn empty() -> Applied {
        Applied {
            batch: BatchOps::default(),
            events: Vec::new(),
            lease_effects: Vec::new(),
            index_changes: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<'a> Applier<'a> {
    pub fn new(
        view: View<'a>,
        index: &'a KeyIndex,
        batch_values: &'a HashMap<Vec<u8>, Vec<u8>>,
        revision: i64,
    ) -> Self {
        Applier {
            view,
            index,
            batch_values,
            revision,
            batch: BatchOps::default(),
            written: BTreeMap::new(),
            events: Vec::new(),
            lease_effects: Vec::new(),
        }
    }

    pub fn finish(self) -> Applied {
        let revision = self.revision;
        let values = self
            .written
            .iter()
            .filter_map(|(key, version)| match version {
                Version::Live { value, .. } => Some((key.clone(), value.clone())),
                Version::Tombstone => None,
            })
            .collect();
        let index_changes = self
            .written
            .into_iter()
            .map(|(key, version)| {
                let meta = match version {
                    Version::Live { create_revision, version, lease, .. } => {
                        Some(KeyMeta { mod_revision: revision, create_revision, version, lease })
                    }
                    Version::Tombstone => None,
                };
                (key, meta)
            })
            .collect();
        Applied { batch: self.batch, events: self.events, lease_effects: self.lease_effects, index_changes, values }
    }

    pub fn txn(&mut self, txn: &pb::TxnRequest) -> Result<pb::TxnResponse> {
        let mut succeeded = true;
        for c in &txn.compare {
            let range = KeyRange::new(&c.key, &c.range_end);
            let kvs = self.live_in_range(&range, needs_values(c))?;
            if !compare_holds(c, &kvs)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.op(op)?);
        }
        Ok(pb::TxnResponse { header: None, succeeded, responses })
    }

    fn op(&mut self, op: &pb::RequestOp) -> Result<pb::ResponseOp> {
        use pb::request_op::Request;
        use pb::response_op::Response;
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Response::ResponseRange(self.range(r)?),
            Some(Request::RequestPut(p)) => Response::ResponsePut(self.put(p)?),
            Some(Request::RequestDeleteRange(d)) => Response::ResponseDeleteRange(self.delete_range(d)?),
            Some(Request::RequestTxn(t)) => Response::ResponseTxn(self.txn(t)?),
            None => return Err(invalid("empty operation in txn request")),
        };
        Ok(pb::ResponseOp { response: Some(response) })
    }

    /// The newest version of `key` now (this entry's writes included), without its value.
    fn meta(&self, key: &[u8]) -> Option<KeyMeta> {
        match self.written.get(key) {
            Some(Version::Live { create_revision, version, lease, .. }) => Some(KeyMeta {
                mod_revision: self.revision,
                create_revision: *create_revision,
                version: *version,
                lease: *lease,
            }),
            Some(Version::Tombstone) => None,
            None => self.index.get(key).copied(),
        }
    }

    /// The record of a live key; its value is read only when `with_value`.
    fn key_value(&self, key: &[u8], meta: &KeyMeta, with_value: bool) -> Result<KeyValue> {
        let value = if !with_value {
            Vec::new()
        } else if let Some(Version::Live { value, .. }) = self.written.get(key) {
            value.clone()
        } else if let Some(value) = self.batch_values.get(key) {
            // A live key put earlier in this batch: that put is its newest version (a later
            // delete would have made it not live, a later put would have replaced the value).
            value.clone()
        } else {
            let raw = self.view.get(CF_KV, &version_key(key, meta.mod_revision))?.ok_or_else(|| {
                StoreError::corrupt(format!(
                    "key {:?} is indexed at revision {} but that version is missing",
                    String::from_utf8_lossy(key),
                    meta.mod_revision
                ))
            })?;
            match Version::decode(&raw, key)? {
                Version::Live { value, .. } => value,
                Version::Tombstone => {
                    return Err(StoreError::corrupt(format!(
                        "key {:?} is indexed as live at revision {} but was deleted there",
                        String::from_utf8_lossy(key),
                        meta.mod_revision
                    )));
                }
            }
        };
        Ok(KeyValue {
            key: key.to_vec(),
            create_revision: meta.create_revision,
            mod_revision: meta.mod_revision,
            version: meta.version,
            value,
            lease: meta.lease,
        })
    }

    /// Every live key in `range` now, in key order.
    fn live_in_range(&self, range: &KeyRange, with_values: bool) -> Result<Vec<KeyValue>> {
        if let KeyRange::Single(key) = range {
            return match self.meta(key) {
                Some(meta) => Ok(vec![self.key_value(key, &meta, with_values)?]),
                None => Ok(Vec::new()),
            };
        }
        let mut keys: BTreeSet<&[u8]> = self.index.range(range).map(|(k, _)| k.as_slice()).collect();
        keys.extend(self.written.keys().filter(|k| range.contains(k)).map(|k| k.as_slice()));
        let mut out = Vec::new();
        for key in keys {
            if let Some(meta) = self.meta(key) {
                out.push(self.key_value(key, &meta, with_values)?);
            }
        }
        Ok(out)
    }

    fn range(&self, req: &pb::RangeRequest) -> Result<pb::RangeResponse> {
        if req.revision > 0 {
            let compacted = self.view.compacted()?;
            if req.revision < compacted {
                return Err(StoreError::Compacted { compact_revision: compacted });
            }
            if req.revision >= self.revision {
                return Err(StoreError::FutureRevision);
            }
            return self.view.range(req, req.revision);
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        let with_values = RangeBuilder::needs_values(req);
        let mut builder = RangeBuilder::new(req);
        for kv in self.live_in_range(&range, with_values)? {
            let _ = builder.push(kv);
        }
        Ok(builder.finish())
    }

    fn put(&mut self, req: &pb::PutRequest) -> Result<pb::PutResponse> {
        let current = self.meta(&req.key);
        if current.is_none() && (req.ignore_value || req.ignore_lease) {
            return Err(StoreError::KeyNotFound);
        }
        let prev = match &current {
            Some(meta) => Some(self.key_value(&req.key, meta, req.prev_kv || req.ignore_value)?),
            None => None,
        };
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        if lease != 0 && self.view.lease(lease)?.is_none() {
            return Err(StoreError::LeaseNotFound);
        }
        let (create_revision, version) = match &current {
            Some(m) => (m.create_revision, m.version + 1),
            None => (self.revision, 1),
        };
        let record = Version::Live { create_revision, version, lease, value };
        let kv = record.to_key_value(&req.key, self.revision);
        self.write_version(&req.key, record, EventType::Put)?;
        let old_lease = current.map_or(0, |m| m.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.batch.delete(Cf::LeaseKeys, lease_attachment_key(old_lease, &req.key));
            }
            if lease != 0 {
                self.batch.put(Cf::LeaseKeys, lease_attachment_key(lease, &req.key), Vec::new());
            }
        }
        self.events.push(mvccpb::Event { r#type: EventType::Put as i32, kv, prev_kv: None });
        Ok(pb::PutResponse { header: None, prev_kv: if req.prev_kv { prev } else { None } })
    }

    fn delete_range(&mut self, req: &pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let doomed = self.live_in_range(&range, req.prev_kv)?;
        for kv in &doomed {
            self.delete_key(&kv.key, kv.lease)?;
        }
        Ok(pb::DeleteRangeResponse {
            header: None,
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }

    fn delete_key(&mut self, key: &[u8], lease: i64) -> Result<()> {
        self.write_version(key, Version::Tombstone, EventType::Delete)?;
        if lease != 0 {
            self.batch.delete(Cf::LeaseKeys, lease_attachment_key(lease, key));
        }
        self.events.push(mvccpb::Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: key.to_vec(), mod_revision: self.revision, ..Default::default() }),
            prev_kv: None,
        });
        Ok(())
    }

    fn write_version(&mut self, key: &[u8], version: Version, kind: EventType) -> Result<()> {
        let sub = self.events.len() as u32;
        self.batch.put(Cf::Kv, version_key(key, self.revision), version.encode());
        self.batch.put(Cf::Events, event_key(self.revision, sub), encode_event(kind, key));
        self.written.insert(key.to_vec(), version);
        Ok(())
    }

    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<()> {
        if id <= 0 {
            return Err(invalid("lease id must be positive"));
        }
        if self.view.lease(id)?.is_some() {
            return Err(StoreError::LeaseExists);
        }
        self.batch.put(Cf::Leases, lease_key(id), to_bytes(&LeaseRecord { ttl })?);
        self.lease_effects.push(LeaseEffect::Granted { id, ttl });
        Ok(())
    }

    /// Revokes a lease and deletes every key attached to it, all at this revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<()> {
        if self.view.lease(id)?.is_none() {
            return Err(StoreError::LeaseNotFound);
        }
        for key in self.view.lease_keys(id)? {
            if self.meta(&key).is_some_and(|m| m.lease == id) {
                self.delete_key(&key, id)?;
            } else {
                self.batch.delete(Cf::LeaseKeys, lease_attachment_key(id, &key));
            }
        }
        self.batch.delete(Cf::Leases, lease_key(id));
        self.lease_effects.push(LeaseEffect::Revoked { id });
        Ok(())
    }

    pub fn compact(&mut self, revision: i64) -> Result<()> {
        let compacted = self.view.compacted()?;
        if revision <= compacted {
            return Err(StoreError::Compacted { compact_revision: compacted });
        }
        if revision >= self.revision {
            return Err(StoreError::FutureRevision);
        }
        self.batch.put(Cf::Meta, META_COMPACTED, to_bytes(&revision)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request;

    fn put(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest { compare: vec![], success, failure: vec![] }
    }

    #[test]
    fn validation_refuses_what_etcd_refuses() {
        let cases: Vec<(pb::TxnRequest, Option<&str>)> = vec![
            (txn(vec![put("a"), put("b")]), None),
            (txn(vec![put("a"), put("a")]), Some("duplicate key")),
            (txn(vec![put("b"), del("a", "c")]), Some("duplicate key")),
            (txn(vec![put("c"), del("a", "c")]), None),
            (txn(vec![put("")]), Some("key is not provided")),
            (txn((0..129).map(|i| put(&format!("k{i}"))).collect()), Some("too many operations")),
            (
                txn(vec![put("a"), pb::RequestOp { request: Some(Request::RequestTxn(txn(vec![put("a")]))) }]),
                Some("duplicate key"),
            ),
        ];
        for (i, (t, want)) in cases.into_iter().enumerate() {
            match (validate(&t), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }
}
