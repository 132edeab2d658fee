//! What the API needs from a store, as a trait: the registry is written against [`Storage`],
//! and [`keel_store::Store`] (the Raft store) is the implementation. Reads and writes carry
//! revisions so that every precondition is checked inside one store transaction, never by a
//! read followed by a write.

use std::sync::Arc;

use futures::future::BoxFuture;
use keel_store::keys::KeyRange;
use keel_store::watch::{WatchSpec, Watcher};
use keel_store::{Store, mvccpb, pb};

use crate::error::{ApiError, Result};

/// One stored object: its key, its serialized form and the revisions the store gave it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every write acknowledged before the read started (a Raft ReadIndex round).
    Linearizable,
    /// Whatever this member has applied; never older than what it served before.
    Local,
}

/// One page of a listing, all read at `revision`.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Stored>,
    pub revision: i64,
    /// Objects in the range after this page.
    pub remaining: i64,
}

/// The condition a write holds for, checked atomically with the write itself.
#[derive(Debug, Clone)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this modification revision.
    Revision(i64),
    /// The key must exist.
    Exists,
    /// Whatever the key holds (a delete of something that may already be gone).
    Any,
}

#[derive(Debug, Clone)]
pub enum WriteOp {
    Put { key: String, value: Vec<u8>, precondition: Precondition },
    Delete { key: String, precondition: Precondition },
}

impl WriteOp {
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key, .. } => key,
        }
    }
}

#[derive(Debug)]
pub enum WriteOutcome {
    /// Every operation applied, at this revision.
    Applied { revision: i64 },
    /// Nothing applied: the operation at `index` found the key in this state.
    Refused { index: usize, current: Option<Stored> },
}

#[derive(Debug, Clone)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change in a watch; for a delete, `value` is the last state before it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    pub key: String,
    /// Shared, not copied, when one change goes to many watches.
    pub value: bytes::Bytes,
    /// The revision of the change (for a delete, the deleting revision).
    pub revision: i64,
    pub create_revision: i64,
    /// For a put that replaced a value, that value.
    pub previous: Option<bytes::Bytes>,
}

/// Changes in revision order, whole revisions at a time.
pub trait ChangeFeed: Send {
    /// The next changes; never empty. Fails with 410 Gone if history was compacted under it.
    fn next(&mut self) -> BoxFuture<'_, Result<Vec<Change>>>;

    /// Every change at or below this revision has been handed out (a bookmark may say so).
    fn progress_revision(&self) -> i64;
}

pub trait Storage: Send + Sync + 'static {
    fn get(&self, key: &str, consistency: Consistency) -> BoxFuture<'_, Result<(Option<Stored>, i64)>>;

    /// Keys in `[start, end)` at `revision` (0: the latest), at most `limit` of them (0: all).
    fn list(
        &self,
        start: &str,
        end: &str,
        revision: i64,
        limit: i64,
        consistency: Consistency,
    ) -> BoxFuture<'_, Result<Page>>;

    /// All operations or none, at one revision.
    fn write(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<WriteOutcome>>;

    /// Changes to keys in `[start, end)` from `start_revision` on (0: from now).
    fn watch(&self, start: &str, end: &str, start_revision: i64) -> Result<Box<dyn ChangeFeed>>;

    /// Everything up to this revision is applied on this member.
    fn local_revision(&self) -> i64;

    /// The oldest revision still readable.
    fn compacted_revision(&self) -> i64;

    /// Whether this replica can serve reads and writes now: `Err` with the reason when they
    /// would only wait and time out. `/readyz` reports it, as
    /// kube-apiserver's reports etcd's.
    fn ready(&self) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Grants a lease of `ttl_seconds`; keys put under it go when it expires or is revoked.
    /// Only keel's own records outside the Kubernetes keyspace use leases (node metrics).
    fn lease_grant(&self, _ttl_seconds: i64) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async { Err(ApiError::internal("this store has no leases")) })
    }

    /// Renews a lease; `false` when it no longer exists.
    fn lease_keep_alive(&self, _id: i64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async { Err(ApiError::internal("this store has no leases")) })
    }

    /// Revokes a lease and deletes the keys still attached to it.
    fn lease_revoke(&self, _id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Err(ApiError::internal("this store has no leases")) })
    }

    /// Puts `value` at `key` attached to `lease` (moving it off any lease it was on), without
    /// preconditions; returns the revision.
    fn put_leased(&self, _key: &str, _value: Vec<u8>, _lease: i64) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async { Err(ApiError::internal("this store has no leases")) })
    }
}

/// The end of the range of every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return String::from_utf8_lossy(&end).into_owned();
        }
    }
    "\0".into()
}

fn stored(kv: mvccpb::KeyValue) -> Result<Stored> {
    let key = String::from_utf8(kv.key).map_err(|e| ApiError::internal(format!("stored key is not UTF-8: {e}")))?;
    Ok(Stored { key, value: kv.value, create_revision: kv.create_revision, mod_revision: kv.mod_revision })
}

fn compare(key: &str, precondition: &Precondition) -> Option<pb::Compare> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let (result, target, union) = match precondition {
        Precondition::Absent => (CompareResult::Equal, CompareTarget::Create, TargetUnion::CreateRevision(0)),
        Precondition::Exists => (CompareResult::Greater, CompareTarget::Create, TargetUnion::CreateRevision(0)),
        Precondition::Revision(rev) => (CompareResult::Equal, CompareTarget::Mod, TargetUnion::ModRevision(*rev)),
        Precondition::Any => return None,
    };
    Some(pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(union),
    })
}

fn request_op(request: pb::request_op::Request) -> pb::RequestOp {
    pb::RequestOp { request: Some(request) }
}

impl Storage for Store {
    fn get(&self, key: &str, consistency: Consistency) -> BoxFuture<'_, Result<(Option<Stored>, i64)>> {
        let request = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable: consistency == Consistency::Local,
            ..Default::default()
        };
        Box::pin(async move {
            let (response, revision) = self.range(&request).await?;
            let found = response.kvs.into_iter().next().map(stored).transpose()?;
            Ok((found, revision))
        })
    }

    fn list(
        &self,
        start: &str,
        end: &str,
        revision: i64,
        limit: i64,
        consistency: Consistency,
    ) -> BoxFuture<'_, Result<Page>> {
        let request = pb::RangeRequest {
            key: start.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            revision,
            limit,
            serializable: consistency == Consistency::Local || revision > 0,
            ..Default::default()
        };
        Box::pin(async move {
            let (response, store_revision) = self.range(&request).await?;
            let returned = response.kvs.len() as i64;
            let items = response.kvs.into_iter().map(stored).collect::<Result<Vec<_>>>()?;
            let revision = if revision > 0 { revision } else { store_revision };
            Ok(Page { items, revision, remaining: (response.count - returned).max(0) })
        })
    }

    fn write(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<WriteOutcome>> {
        use pb::request_op::Request;
        let mut compares = Vec::with_capacity(ops.len());
        let mut success = Vec::with_capacity(ops.len());
        let mut failure = Vec::with_capacity(ops.len());
        for op in &ops {
            match op {
                WriteOp::Put { key, value, precondition } => {
                    compares.extend(compare(key, precondition));
                    success.push(request_op(Request::RequestPut(pb::PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: value.clone(),
                        ..Default::default()
                    })));
                }
                WriteOp::Delete { key, precondition } => {
                    compares.extend(compare(key, precondition));
                    success.push(request_op(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                        key: key.as_bytes().to_vec(),
                        ..Default::default()
                    })));
                }
            }
            failure.push(request_op(Request::RequestRange(pb::RangeRequest {
                key: op.key().as_bytes().to_vec(),
                ..Default::default()
            })));
        }
        let request = pb::TxnRequest { compare: compares, success, failure };
        Box::pin(async move {
            let (response, revision) = self.txn(request).await?;
            if response.succeeded {
                return Ok(WriteOutcome::Applied { revision });
            }
            // Find the first operation whose precondition the current state breaks.
            for (index, (op, reply)) in ops.iter().zip(response.responses).enumerate() {
                let current = match reply.response {
                    Some(pb::response_op::Response::ResponseRange(range)) => {
                        range.kvs.into_iter().next().map(stored).transpose()?
                    }
                    other => return Err(ApiError::internal(format!("txn failure branch answered {other:?}"))),
                };
                let holds = match (op, &current) {
                    (WriteOp::Put { precondition, .. } | WriteOp::Delete { precondition, .. }, current) => {
                        match (precondition, current) {
                            (Precondition::Absent, None) => true,
                            (Precondition::Exists, Some(_)) | (Precondition::Any, _) => true,
                            (Precondition::Revision(rev), Some(kv)) => kv.mod_revision == *rev,
                            _ => false,
                        }
                    }
                };
                if !holds {
                    return Ok(WriteOutcome::Refused { index, current });
                }
            }
            Err(ApiError::internal("store refused a write whose preconditions all hold"))
        })
    }

    fn watch(&self, start: &str, end: &str, start_revision: i64) -> Result<Box<dyn ChangeFeed>> {
        let spec = WatchSpec {
            range: KeyRange::new(start.as_bytes(), end.as_bytes()),
            start_revision,
            prev_kv: true,
            skip_puts: false,
            skip_deletes: false,
        };
        Ok(Box::new(Store::watch(self, spec)?))
    }

    fn local_revision(&self) -> i64 {
        self.state().applied_revision()
    }

    fn ready(&self) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(self.readiness())
    }

    fn compacted_revision(&self) -> i64 {
        self.status().compact_revision
    }

    fn lease_grant(&self, ttl_seconds: i64) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move { Ok(Store::lease_grant(self, 0, ttl_seconds).await?.0) })
    }

    fn lease_keep_alive(&self, id: i64) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move { Ok(Store::lease_keep_alive(self, id).await?.is_some()) })
    }

    fn lease_revoke(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            Store::lease_revoke(self, id).await?;
            Ok(())
        })
    }

    fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> BoxFuture<'_, Result<i64>> {
        use pb::request_op::Request;
        let put = pb::PutRequest { key: key.as_bytes().to_vec(), value, lease, ..Default::default() };
        let request = pb::TxnRequest {
            compare: Vec::new(),
            success: vec![request_op(Request::RequestPut(put))],
            failure: Vec::new(),
        };
        Box::pin(async move {
            let (_, revision) = self.txn(request).await?;
            Ok(revision)
        })
    }
}

impl ChangeFeed for Watcher {
    fn next(&mut self) -> BoxFuture<'_, Result<Vec<Change>>> {
        Box::pin(async move {
            loop {
                let events = Watcher::next(self).await?;
                let changes: Vec<Change> = events.into_iter().filter_map(change).collect();
                if !changes.is_empty() {
                    return Ok(changes);
                }
            }
        })
    }

    fn progress_revision(&self) -> i64 {
        Watcher::progress_revision(self)
    }
}

fn change(event: mvccpb::Event) -> Option<Change> {
    let kv = event.kv?;
    let key = String::from_utf8(kv.key).ok()?;
    if event.r#type == mvccpb::event::EventType::Delete as i32 {
        let prev = event.prev_kv?;
        Some(Change {
            kind: ChangeKind::Delete,
            key,
            value: prev.value.into(),
            revision: kv.mod_revision,
            create_revision: prev.create_revision,
            previous: None,
        })
    } else {
        Some(Change {
            kind: ChangeKind::Put,
            key,
            value: kv.value.into(),
            revision: kv.mod_revision,
            create_revision: kv.create_revision,
            previous: event.prev_kv.map(|p| p.value.into()),
        })
    }
}

pub type SharedStorage = Arc<dyn Storage>;
