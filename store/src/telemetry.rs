//! What a member reports on `/metrics`, under etcd's names where the meaning is the same, so
//! that dashboards and alerts written for etcd (no leader, frequent leader changes, failed
//! proposals, slow WAL fsyncs, database size) work on keel's store.
//!
//! Gauges of Raft progress are read from openraft's metrics at the scrape; only what openraft
//! does not keep is counted as it happens (leader changes, failed proposals, fsync times).

use keel_prometheus::{Collect, Encoder, Kind};

use crate::node::Store;

impl Collect for Store {
    fn collect(&self, encoder: &mut Encoder) {
        let inner = &self.inner;
        // The same figures `etcdctl endpoint status` reads, taken the same way.
        let status = self.status();
        encoder
            .family("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.", Kind::Gauge)
            .sample(&[], status.leader.is_some());
        encoder
            .family(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                Kind::Gauge,
            )
            .sample(&[], self.is_leader());
        encoder
            .family(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                Kind::Gauge,
            )
            .sample(&[], status.is_learner);
        encoder
            .family("etcd_server_leader_changes_seen_total", "The number of leader changes seen.", Kind::Counter)
            .sample(&[], inner.leader_changes.get());
        // Gauges in etcd as well: they are the Raft log's committed and applied indexes.
        encoder
            .family(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
                Kind::Gauge,
            )
            .sample(&[], status.committed_index);
        encoder
            .family(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
                Kind::Gauge,
            )
            .sample(&[], status.applied_index);
        encoder
            .family("etcd_server_proposals_failed_total", "The total number of failed proposals seen.", Kind::Counter)
            .sample(&[], inner.proposals_failed.get());
        encoder
            .family(
                "etcd_server_snapshot_apply_in_progress_total",
                "1 if the server is applying the incoming snapshot. 0 if none.",
                Kind::Gauge,
            )
            .sample(&[], inner.sm.installing_snapshot.get());
        // What `etcdctl endpoint status` reports as the database size: the state machine's
        // RocksDB and the Raft log's.
        encoder
            .family(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                Kind::Gauge,
            )
            .sample(&[], status.db_size);
        encoder
            .family("etcd_debugging_mvcc_keys_total", "Total number of keys.", Kind::Gauge)
            .sample(&[], inner.sm.live_keys.get());
        encoder
            .family(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                Kind::Histogram,
            )
            .histogram(&[], inner.log.fsync_durations());
        let mut failures = encoder.family(
            "etcd_network_peer_sent_failures_total",
            "The total number of send failures from peers.",
            Kind::Counter,
        );
        for (peer, count) in inner.peer_health.failures_by_peer() {
            failures.sample(&[("To", &format!("{peer:x}"))], count);
        }
        encoder
            .family(
                "keel_store_mirrored_keys",
                "Keys this member also holds in memory for admission's lookups (Store::mirror).",
                Kind::Gauge,
            )
            .sample(&[], self.mirrored_keys());
    }
}
