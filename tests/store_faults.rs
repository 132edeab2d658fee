//! Real `keel server` processes under concurrent load while the leader is killed (SIGKILL),
//! paused (SIGSTOP) and members restart from disk. The recorded client history must be
//! linearizable, no acknowledged write may be lost, every watcher must see every event once
//! and in order (resuming on another member when its own fails), and all replicas must end
//! identical.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::linearizability;
use support::processes::Cluster;
use support::watch_check::{check_agreement, check_watcher, events_of};
use support::workload::{self, PREFIX, Recorder};

const KEYS: usize = 8;
const CLIENTS: u64 = 6;
/// Acknowledged writes below which a history proves too little to be worth checking.
const MIN_ACKNOWLEDGED: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_and_pause_under_load() {
    let mut cluster = Cluster::start(3, &["--watch-progress-notify-interval", "300ms"]).await;
    let endpoints = cluster.endpoints();
    let recorder = Recorder::new();
    let done_at = Arc::new(std::sync::atomic::AtomicI64::new(0));

    let watchers: Vec<_> =
        (0..3).map(|i| tokio::spawn(workload::watcher(endpoints.clone(), i, 1, done_at.clone()))).collect();
    let clients: Vec<_> =
        (0..CLIENTS).map(|id| tokio::spawn(workload::client(id, endpoints.clone(), KEYS, recorder.clone()))).collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    // The leader dies without warning, and comes back from its data directory.
    let leader = cluster.wait_for_leader().await;
    cluster.members[leader].kill();
    let successor = cluster.wait_for_leader().await;
    assert_ne!(successor, leader);
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.members[leader].start();

    // The leader freezes for longer than an election timeout, then wakes up as a stale leader.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = cluster.wait_for_leader().await;
    cluster.members[leader].pause();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.members[leader].resume();

    // And once more, killed while the previous one is still catching up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = cluster.wait_for_leader().await;
    cluster.members[leader].kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.members[leader].start();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // How much load gets through the faults depends on how busy the machine is; the history
    // is only worth checking once enough writes were acknowledged, so the healed cluster
    // keeps taking load until they were (bounded, so a cluster that stopped serving fails).
    let healed_at = std::time::Instant::now();
    while recorder.acknowledged_writes() < MIN_ACKNOWLEDGED && healed_at.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    recorder.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    cluster.wait_for_leader().await;
    let status = cluster.members[0].etcd().status().await.expect("status");
    let final_revision = status.header.expect("header").revision;
    cluster.wait_applied(final_revision).await;
    recorder.final_reads(&cluster.endpoints(), KEYS).await;

    let operations = recorder.operations.lock().clone();
    let acknowledged = recorder.acknowledged_writes();
    let unknown = recorder.writes.lock().len() - acknowledged;
    eprintln!(
        "history: {} operations, {acknowledged} acknowledged writes, {unknown} of unknown outcome",
        operations.len()
    );
    assert!(
        acknowledged >= MIN_ACKNOWLEDGED,
        "the healed cluster acknowledged only {acknowledged} writes in a minute of load"
    );
    let violations = linearizability::check(&operations);
    assert!(violations.is_empty(), "not linearizable: {violations:?}");

    // Each key's version counts the writes applied to it: never fewer than were acknowledged.
    let client = cluster.members[0].etcd();
    for k in 0..KEYS {
        let key = format!("{PREFIX}k{k}");
        let acked = recorder.writes.lock().iter().filter(|w| w.key == key && w.revision.is_some()).count() as i64;
        let version = client.get(&key).await.expect("get").map_or(0, |kv| kv.version);
        assert!(version >= acked, "{key}: {acked} writes acknowledged but version is {version}: writes were lost");
    }

    // Every replica holds the same keyspace.
    let mut hashes = Vec::new();
    for m in &cluster.members {
        hashes.push(m.etcd().hash_kv(final_revision).await.expect("hash").hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "replicas differ: {hashes:x?}");

    done_at.store(final_revision, Ordering::Relaxed);
    let writes = recorder.writes.lock().clone();
    let mut all_events = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        let deliveries =
            tokio::time::timeout(Duration::from_secs(30), w).await.expect("watcher finished").expect("watcher task");
        let problems = check_watcher(&deliveries, 1, final_revision, &writes);
        assert!(problems.is_empty(), "watcher {i}: {problems:?}");
        all_events.push(events_of(&deliveries));
    }
    for pair in all_events.windows(2) {
        assert_eq!(check_agreement(&pair[0], &pair[1]), None);
    }
}
