//! Checking and applying etcd transactions against the MVCC keyspace.
//!
//! [`validate`] runs before a request is proposed and refuses what etcd refuses (missing keys,
//! too many operations, a key written twice). [`Applier`] runs inside the state machine: it
//! evaluates compares and operations against the state as of the previous entry plus what the
//! same entry already wrote, and collects every write in one `WriteBatch`.

use std::collections::{BTreeMap, BTreeSet};
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

/// Applies one log entry's command at `revision`, against the live database.
pub struct Applier<'a> {
    view: View<'a>,
    revision: i64,
    batch: WriteBatch,
    /// Keys this entry already wrote, newest version first.
    written: BTreeMap<Vec<u8>, Version>,
    events: Vec<mvccpb::Event>,
    lease_effects: Vec<LeaseEffect>,
}

/// Everything one entry changed, ready to be committed together.
pub struct Applied {
    pub batch: WriteBatch,
    pub events: Vec<mvccpb::Event>,
    pub lease_effects: Vec<LeaseEffect>,
}

impl<'a> Applier<'a> {
    pub fn new(view: View<'a>, revision: i64) -> Self {
        Applier {
            view,
            revision,
            batch: WriteBatch::default(),
            written: BTreeMap::new(),
            events: Vec::new(),
            lease_effects: Vec::new(),
        }
    }

    /// Hands over the writes; on error, nothing the entry did is kept.
    pub fn finish(self) -> Applied {
        Applied { batch: self.batch, events: self.events, lease_effects: self.lease_effects }
    }

    pub fn txn(&mut self, txn: &pb::TxnRequest) -> Result<pb::TxnResponse> {
        let mut succeeded = true;
        for c in &txn.compare {
            if !self.compare(c)? {
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

    /// The newest version of `key`, counting what this entry wrote.
    fn latest(&self, key: &[u8]) -> Result<Option<(i64, Version)>> {
        if let Some(v) = self.written.get(key) {
            return Ok(Some((self.revision, v.clone())));
        }
        self.view.version_at(key, i64::MAX)
    }

    fn latest_kv(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.latest(key)?.and_then(|(rev, v)| v.to_key_value(key, rev)))
    }

    /// Every live key in `range` now, counting what this entry wrote, in key order.
    fn latest_in_range(&self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let mut found: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        self.view.scan(range, i64::MAX, |key, rev, version| {
            if let Some(kv) = version.to_key_value(key, rev) {
                found.insert(key.to_vec(), kv);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        for (key, version) in &self.written {
            if !range.contains(key) {
                continue;
            }
            match version.to_key_value(key, self.revision) {
                Some(kv) => found.insert(key.clone(), kv),
                None => found.remove(key),
            };
        }
        Ok(found.into_values().collect())
    }

    fn compare(&self, c: &pb::Compare) -> Result<bool> {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        let range = KeyRange::new(&c.key, &c.range_end);
        let kvs = match &range {
            KeyRange::Single(key) => self.latest_kv(key)?.into_iter().collect(),
            _ => self.latest_in_range(&range)?,
        };
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
        if !self.written.keys().any(|k| range.contains(k)) {
            return self.view.range(req, i64::MAX);
        }
        let mut builder = RangeBuilder::new(req);
        for kv in self.latest_in_range(&range)? {
            let _ = builder.push(kv);
        }
        Ok(builder.finish())
    }

    fn put(&mut self, req: &pb::PutRequest) -> Result<pb::PutResponse> {
        let current = self.latest(&req.key)?;
        let prev = current.as_ref().and_then(|(rev, v)| v.to_key_value(&req.key, *rev));
        let (value, lease) = match (&prev, req.ignore_value, req.ignore_lease) {
            (None, true, _) | (None, _, true) => return Err(StoreError::KeyNotFound),
            (p, ignore_value, ignore_lease) => (
                if ignore_value { p.as_ref().map(|p| p.value.clone()).unwrap_or_default() } else { req.value.clone() },
                if ignore_lease { p.as_ref().map_or(0, |p| p.lease) } else { req.lease },
            ),
        };
        if lease != 0 && self.view.lease(lease)?.is_none() {
            return Err(StoreError::LeaseNotFound);
        }
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (self.revision, 1),
        };
        let record = Version::Live { create_revision, version, lease, value };
        let kv = record.to_key_value(&req.key, self.revision);
        self.write_version(&req.key, record, EventType::Put)?;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.batch.delete_cf(self.view.cf(CF_LEASE_KEYS)?, lease_attachment_key(old_lease, &req.key));
            }
            if lease != 0 {
                self.batch.put_cf(self.view.cf(CF_LEASE_KEYS)?, lease_attachment_key(lease, &req.key), []);
            }
        }
        self.events.push(mvccpb::Event { r#type: EventType::Put as i32, kv, prev_kv: prev.clone() });
        Ok(pb::PutResponse { header: None, prev_kv: if req.prev_kv { prev } else { None } })
    }

    fn delete_range(&mut self, req: &pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let doomed = match &range {
            KeyRange::Single(key) => self.latest_kv(key)?.into_iter().collect(),
            _ => self.latest_in_range(&range)?,
        };
        for kv in &doomed {
            self.delete_key(kv.clone())?;
        }
        Ok(pb::DeleteRangeResponse {
            header: None,
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }

    fn delete_key(&mut self, prev: KeyValue) -> Result<()> {
        self.write_version(&prev.key, Version::Tombstone, EventType::Delete)?;
        if prev.lease != 0 {
            self.batch.delete_cf(self.view.cf(CF_LEASE_KEYS)?, lease_attachment_key(prev.lease, &prev.key));
        }
        self.events.push(mvccpb::Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: prev.key.clone(), mod_revision: self.revision, ..Default::default() }),
            prev_kv: Some(prev),
        });
        Ok(())
    }

    fn write_version(&mut self, key: &[u8], version: Version, kind: EventType) -> Result<()> {
        let sub = self.events.len() as u32;
        self.batch.put_cf(self.view.cf(CF_KV)?, version_key(key, self.revision), version.encode());
        self.batch.put_cf(self.view.cf(CF_EVENTS)?, event_key(self.revision, sub), encode_event(kind, key));
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
        self.batch.put_cf(self.view.cf(CF_LEASES)?, lease_key(id), to_bytes(&LeaseRecord { ttl })?);
        self.lease_effects.push(LeaseEffect::Granted { id, ttl });
        Ok(())
    }

    /// Revokes a lease and deletes every key attached to it, all at this revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<()> {
        if self.view.lease(id)?.is_none() {
            return Err(StoreError::LeaseNotFound);
        }
        for key in self.view.lease_keys(id)? {
            if let Some(kv) = self.latest_kv(&key)?
                && kv.lease == id
            {
                self.delete_key(kv)?;
            }
            self.batch.delete_cf(self.view.cf(CF_LEASE_KEYS)?, lease_attachment_key(id, &key));
        }
        self.batch.delete_cf(self.view.cf(CF_LEASES)?, lease_key(id));
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
        self.batch.put_cf(self.view.cf(CF_META)?, META_COMPACTED, to_bytes(&revision)?);
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
