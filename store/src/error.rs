//! The store's error type. It crosses the wire between members (a follower forwards a request
//! and relays the leader's answer), so it is plain data.

use serde::{Deserialize, Serialize};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    /// The revision asked for is below the compaction horizon.
    #[error("mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("key not found")]
    KeyNotFound,
    #[error("member not found")]
    MemberNotFound,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("request is too large")]
    RequestTooLarge,
    /// No leader is known; the request was not proposed.
    #[error("no leader")]
    NoLeader,
    /// The request may or may not have been applied: leadership changed while it was in flight.
    #[error("leader changed")]
    LeaderChanged,
    #[error("request timed out")]
    Timeout,
    /// A membership change is already under way, or the cluster refused the change.
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("data corruption: {0}")]
    Corrupt(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("member is stopping")]
    Stopped,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn storage(context: &str, err: impl std::fmt::Display) -> Self {
        StoreError::Storage(format!("{context}: {err}"))
    }

    pub fn corrupt(context: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(context.to_string())
    }

    /// A database that would not open: corruption when RocksDB says so, otherwise a storage
    /// error (a full disk, permissions, a missing directory) that says what it is.
    pub fn opening(what: &str, path: &std::path::Path, e: rocksdb::Error) -> Self {
        let context = format!("cannot open {what} at {}: {e}", path.display());
        match e.kind() {
            rocksdb::ErrorKind::Corruption => StoreError::Corrupt(context),
            _ => StoreError::Storage(context),
        }
    }

    /// Whether retrying the same request elsewhere cannot apply it twice.
    pub fn is_retryable_unapplied(&self) -> bool {
        matches!(self, StoreError::NoLeader | StoreError::Stopped)
    }
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        std::io::Error::other(e.to_string())
    }
}
