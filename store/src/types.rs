//! The Raft type configuration and what one log entry carries.

use std::fmt;

use keel_proto::etcdserverpb as pb;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A member's Raft id. Derived from its peer address, so every member computes the same id
/// for the same `--initial-cluster` entry without talking to the others.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The store's Raft types: etcd transactions in, their results out.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
);

/// What the cluster knows about a member; kept in the Raft membership so that it replicates
/// and survives snapshots with it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// `host:port` the member's Raft peer service listens on.
    pub peer_addr: String,
    /// `host:port` of the member's etcd v3 API; empty until the member has announced it.
    pub client_addr: String,
    /// `host:port` of the member's Kubernetes API; empty where not served.
    pub api_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// The id of the member whose peer service is at `peer_addr`.
pub fn member_id_for(peer_addr: &str) -> NodeId {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let id = fnv1a(peer_addr.as_bytes());
    if id == 0 { 1 } else { id }
}

/// The id of a cluster bootstrapped from `members` (order does not matter).
pub fn cluster_id_for(members: &[(String, String)]) -> u64 {
    let mut sorted: Vec<String> = members.iter().map(|(n, p)| format!("{n}={p}")).collect();
    sorted.sort();
    fnv1a(sorted.join(",").as_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One replicated command. The state machine applies it deterministically at the revision
/// equal to the index of the log entry that carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Puts, deletes and transactions; plain puts and deletes are one-operation transactions.
    Txn(pb::TxnRequest),
    /// Drop history below `revision`.
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Txn(t) => {
                write!(f, "txn(compares={}, success={}, failure={})", t.compare.len(), t.success.len(), t.failure.len())
            }
            Command::Compact { revision } => write!(f, "compact({revision})"),
            Command::LeaseGrant { id, ttl } => write!(f, "lease-grant({id:x}, {ttl}s)"),
            Command::LeaseRevoke { id } => write!(f, "lease-revoke({id:x})"),
        }
    }
}

/// What applying a log entry produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResult {
    /// The store revision after the entry: the entry's log index.
    pub revision: i64,
    pub outcome: Result<Outcome, StoreError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Txn(pb::TxnResponse),
    Compacted,
    LeaseGranted {
        id: i64,
        ttl: i64,
    },
    LeaseRevoked,
    /// Blank and membership entries.
    Nothing,
}
