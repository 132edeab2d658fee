//! The scheduler: assigns pending pods to nodes, on the Raft leader only.
//!
//! The filters and scores are the pure `keel-scheduler-framework` crate (table-tested
//! without a cluster); this crate is the loop that feeds them from informers and binds
//! through `pods/binding`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub use keel_scheduler_framework as framework;

pub mod scheduler;

pub use scheduler::{Scheduler, loops};
