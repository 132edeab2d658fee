//! Prometheus metrics as keel's members serve them on `/metrics`, in the text exposition
//! format (version 0.0.4) that Prometheus, kube-apiserver and etcd speak.
//!
//! Deliberately small, instead of the `prometheus` or `prometheus-client` crates: their
//! labelled families look a label set up in a locked map on every observation and
//! `prometheus-client`'s histograms take a lock per observation. keel counts on the request
//! path of every API call, so here every metric is a fixed set of atomics that the code
//! observing it already holds (a label set is an index computed from enums, or a slot the
//! caller owns), and labels are only written out, never looked up.
//!
//! * [`metric`]: [`Counter`], [`Gauge`] and [`Histogram`];
//! * [`encoder`]: [`Encoder`], which writes families in the text format;
//! * [`process`]: the `process_*` metrics every Prometheus client library exports.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod encoder;
pub mod metric;
pub mod process;

pub use encoder::{Encoder, Kind};
pub use metric::{Counter, Gauge, Histogram};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Something that writes metric families when `/metrics` is scraped. Each family is written
/// by exactly one collector.
pub trait Collect: Send + Sync {
    fn collect(&self, encoder: &mut Encoder);
}
