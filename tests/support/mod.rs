//! Shared support for keel's integration and end-to-end tests: cluster harnesses (in-process
//! and real processes), an etcd API client, and the linearizability and watch checkers.
#![allow(dead_code)]

pub mod client;
pub mod containerd;
pub mod inproc;
pub mod kubectl;
pub mod linearizability;
pub mod net;
pub mod processes;
pub mod prometheus;
pub mod watch_check;
pub mod workload;

use std::future::Future;
use std::time::{Duration, Instant};

/// Sends the store's logs to the test's output (`KEEL_TEST_LOG` filters, default `warn`).
pub fn init_logging() {
    let filter = std::env::var("KEEL_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
