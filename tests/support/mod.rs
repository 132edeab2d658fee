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

/// A plain HTTP/1.1 `GET` of `path` on `addr`, as a load balancer's or Prometheus' probe sends
/// it: (status line, content type, body).
pub fn http_get(addr: &str, path: &str) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response with a body");
    let status = head.lines().next().unwrap_or("").to_string();
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("content-type")))
        .map_or("", |(_, value)| value.trim())
        .to_string();
    (status, content_type, body.to_string())
}

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
