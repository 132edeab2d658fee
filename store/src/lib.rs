//! keel's replicated store: openraft over RocksDB with an MVCC keyspace that has etcd's
//! semantics (revisions, history, transactions, leases, watches).
//!
//! * [`types`] declares the Raft type configuration and what a log entry carries.
//! * [`log_store`] and [`state_machine`] are the two halves of openraft's storage.
//! * [`mvcc`] is the keyspace layout inside the state machine's RocksDB.
//! * [`network`] and [`peer`] carry Raft and forwarded requests between members.
//! * [`node`] ties them together into [`Store`], the API the rest of keel uses.
//! * [`telemetry`] reports a member on `/metrics` under etcd's metric names.
//!
//! The store knows nothing about Kubernetes.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod error;
pub mod forward;
pub mod keys;
pub mod lease;
pub mod log_store;
pub mod member;
pub mod mirror;
pub mod mvcc;
pub mod network;
pub mod node;
pub mod peer;
pub mod read_index;
pub mod snapshot;
pub mod state_machine;
pub mod telemetry;
pub mod txn;
pub mod types;
pub mod watch;
pub mod worker;

pub use error::{Result, StoreError};
pub use keel_proto::{etcdserverpb as pb, mvccpb};
pub use node::{Bootstrap, Store, StoreConfig, StoreStatus};
pub use types::{Command, CommandResult, Member, NodeId, TypeConfig};
