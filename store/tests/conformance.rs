//! openraft's storage conformance suite, run against keel's RocksDB log store and state machine.

use std::sync::Arc;

use keel_store::lease::Lessor;
use keel_store::log_store::LogStore;
use keel_store::state_machine::StateMachine;
use keel_store::types::TypeConfig;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let fail = |e: &dyn std::error::Error| StorageError::read(TypeConfig::err_from_string(e.to_string()));
        let dir = TempDir::new().map_err(|e| fail(&e))?;
        let log = LogStore::open(&dir.path().join("raft"), true).map_err(|e| fail(&e))?;
        let sm = StateMachine::open(dir.path(), true, Arc::new(Lessor::new(1))).map_err(|e| fail(&e))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() {
    Suite::test_all(RocksBuilder).await.expect("conformance suite");
}
