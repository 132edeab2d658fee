//! Protocol scenarios on in-process three-member clusters, with faults injected by the
//! transport filter: partitions, isolation, loss and delay, lagging members, leases across a
//! leader change, compaction, graceful leadership hand-over.

mod support;

use std::time::Duration;

use keel_store::StoreError;
use keel_store::keys::KeyRange;
use keel_store::watch::WatchSpec;
use support::eventually;
use support::inproc::{InProcCluster, fast_tuning, get, put, put_with_lease, value_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_or_serve_stale_reads_and_catches_up_when_healed() {
    let cluster = InProcCluster::start(3, fast_tuning()).await;
    let old = cluster.leader().await;
    put(cluster.store(old), "k", "v1").await.expect("first write");

    let majority = cluster.followers_of(old);
    cluster.filter.partition(vec![vec![cluster.id(old)], majority.iter().map(|&i| cluster.id(i)).collect()]);

    // The cut-off leader can neither commit nor confirm it still leads.
    let write = put(cluster.store(old), "k", "lost?").await;
    assert!(write.is_err(), "a minority committed a write: {write:?}");
    let read = get(cluster.store(old), "k", false).await;
    assert!(read.is_err(), "a minority served a linearizable read: {read:?}");

    let new = cluster.leader_among(&majority).await;
    let rev = put(cluster.store(new), "k", "v2").await.expect("majority writes");

    cluster.filter.heal();
    cluster.wait_applied(old, rev).await;
    for i in 0..3 {
        let kv = get(cluster.store(i), "k", false).await.expect("read after heal");
        assert_eq!(value_of(&kv).as_deref(), Some("v2"), "member {i}");
    }
    let hashes: Vec<u32> = (0..3).map(|i| cluster.store(i).hash_kv(rev).expect("hash").0).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_followers_see_every_acknowledged_write() {
    let cluster = InProcCluster::start(3, fast_tuning()).await;
    let leader = cluster.leader().await;
    for n in 0..50 {
        let writer = (leader + n) % 3;
        let value = format!("v{n}");
        put(cluster.store(writer), "counter", &value).await.expect("write");
        for reader in 0..3 {
            let kv = get(cluster.store(reader), "counter", false).await.expect("read");
            assert_eq!(value_of(&kv), Some(value.clone()), "member {reader} after write {n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_slow_network_still_converges() {
    let cluster = InProcCluster::start(3, fast_tuning()).await;
    cluster.filter.set_drop_rate(0.1);
    cluster.filter.set_delay(Duration::from_millis(5));
    let mut acknowledged = Vec::new();
    for n in 0..60 {
        let key = format!("lossy/{n}");
        // Requests routed through a dropped forward may fail; the store must not apply
        // anything twice or lose what it acknowledged.
        if let Ok(rev) = put(cluster.store(n % 3), &key, "x").await {
            acknowledged.push((key, rev));
        }
    }
    cluster.filter.heal();
    assert!(acknowledged.len() > 30, "only {} of 60 writes got through", acknowledged.len());
    let last = acknowledged.iter().map(|(_, r)| *r).max().expect("some writes");
    for i in 0..3 {
        cluster.wait_applied(i, last).await;
        for (key, rev) in &acknowledged {
            let kv = get(cluster.store(i), key, true).await.expect("read").expect("acknowledged key exists");
            assert_eq!(kv.mod_revision, *rev);
            assert_eq!(kv.version, 1, "{key} was applied twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_outlive_a_leader_change_only_while_kept_alive() {
    let cluster = InProcCluster::start(3, fast_tuning()).await;
    let leader = cluster.leader().await;
    let store = cluster.store(leader);
    let (kept, _, _) = store.lease_grant(0, 2).await.expect("grant");
    let (abandoned, ttl, _) = store.lease_grant(0, 2).await.expect("grant");
    assert_eq!(ttl, 2);
    put_with_lease(store, "kept", "1", kept).await.expect("attach");
    let rev = put_with_lease(store, "abandoned", "1", abandoned).await.expect("attach");

    let followers = cluster.followers_of(leader);
    let watcher_store = cluster.store(followers[0]).clone();
    let mut watch = watcher_store
        .watch(WatchSpec {
            range: KeyRange::new(b"abandoned", b""),
            start_revision: rev + 1,
            prev_kv: true,
            skip_puts: false,
            skip_deletes: false,
        })
        .expect("watch");

    cluster.filter.isolate(cluster.id(leader));
    let new_leader = cluster.leader_among(&followers).await;
    let keeper = cluster.store(new_leader).clone();
    let keep_alive = tokio::spawn(async move {
        loop {
            let _ = keeper.lease_keep_alive(kept).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    let events = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the abandoned lease expires")
        .expect("watch events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].r#type, keel_store::mvccpb::event::EventType::Delete as i32);
    assert_eq!(events[0].prev_kv.as_ref().map(|kv| kv.lease), Some(abandoned));

    let kv = get(cluster.store(new_leader), "kept", false).await.expect("read");
    assert!(kv.is_some(), "a lease kept alive across the leader change expired");
    let ttl = cluster.store(new_leader).lease_time_to_live(abandoned).await.expect("ttl");
    assert_eq!(ttl, None, "the abandoned lease is revoked");
    keep_alive.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_catches_up_from_a_snapshot() {
    let mut tuning = fast_tuning();
    tuning.snapshot_entries = 200;
    tuning.keep_entries = 50;
    let cluster = InProcCluster::start(3, tuning).await;
    let leader = cluster.leader().await;
    let lagging = cluster.followers_of(leader)[0];
    let generation_before =
        std::fs::read_to_string(cluster.configs[lagging].data_dir.join("state/CURRENT")).expect("CURRENT");
    // Every member also holds "bulk/" in memory: the installed snapshot must replace it.
    for i in 0..3 {
        cluster.store(i).mirror(b"bulk/").expect("mirror");
    }
    let first = put(cluster.store(leader), "bulk/0", "before").await.expect("write");
    cluster.wait_applied(lagging, first).await;

    cluster.filter.isolate(cluster.id(lagging));
    let mut last = 0;
    for n in 0..700 {
        last = put(cluster.store(leader), &format!("bulk/{n}"), "payload").await.expect("write");
    }
    // The leader drops log entries behind its snapshots between replication attempts; once
    // it has, the lagging member can only be caught up with a snapshot.
    let leader_store = cluster.store(leader).clone();
    eventually(Duration::from_secs(30), "the leader to purge its log past 300", || {
        let s = leader_store.clone();
        async move { (s.status().purged_index > 300).then_some(()) }
    })
    .await;
    cluster.filter.heal();
    cluster.wait_applied(lagging, last).await;

    let generation_after =
        std::fs::read_to_string(cluster.configs[lagging].data_dir.join("state/CURRENT")).expect("CURRENT");
    assert_ne!(generation_before, generation_after, "the member caught up from the log, not from a snapshot");
    let hashes: Vec<u32> = (0..3).map(|i| cluster.store(i).hash_kv(last).expect("hash").0).collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let kv = get(cluster.store(lagging), "bulk/0", true).await.expect("read");
    assert_eq!(value_of(&kv).as_deref(), Some("payload"));
    let all = keel_store::pb::RangeRequest {
        key: b"bulk/".to_vec(),
        range_end: b"bulk0".to_vec(),
        serializable: true,
        ..Default::default()
    };
    let (held, revision) = cluster.store(lagging).range(&all).await.expect("range");
    assert_eq!((held.count, held.kvs.len(), revision), (700, 700, last));
    assert!(held.kvs.iter().all(|kv| kv.value == b"payload"), "a value from before the snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_history_is_reported_never_skipped() {
    let cluster = InProcCluster::start(3, fast_tuning()).await;
    let leader = cluster.leader().await;
    let store = cluster.store(leader);
    let first = put(store, "c", "1").await.expect("write");
    put(store, "c", "2").await.expect("write");
    let third = put(store, "c", "3").await.expect("write");
    store.compact(third, true).await.expect("compact");

    let old = keel_store::pb::RangeRequest { key: b"c".to_vec(), revision: first, ..Default::default() };
    match store.range(&old).await {
        Err(StoreError::Compacted { compact_revision }) => assert_eq!(compact_revision, third),
        other => panic!("read below the horizon returned {other:?}"),
    }
    let spec = |start| WatchSpec {
        range: KeyRange::new(b"c", b""),
        start_revision: start,
        prev_kv: false,
        skip_puts: false,
        skip_deletes: false,
    };
    for i in 0..3 {
        cluster.wait_applied(i, third + 1).await;
        assert!(
            matches!(cluster.store(i).watch(spec(first)), Err(StoreError::Compacted { .. })),
            "member {i} accepted a watch below the horizon"
        );
    }
    // From the horizon on, history is intact.
    let mut watch = cluster.store(0).watch(spec(third)).expect("watch at the horizon");
    let events = watch.next().await.expect("events");
    assert_eq!(events[0].kv.as_ref().map(|kv| kv.value.clone()), Some(b"3".to_vec()));
    let at = keel_store::pb::RangeRequest { key: b"c".to_vec(), revision: third, ..Default::default() };
    let (r, _) = store.range(&at).await.expect("read at the horizon");
    assert_eq!(r.kvs[0].version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_leadership() {
    let mut cluster = InProcCluster::start(3, fast_tuning()).await;
    let leader = cluster.leader().await;
    let rev = put(cluster.store(leader), "before", "x").await.expect("write");
    cluster.store(leader).step_down().await.expect("hand over leadership");
    let others = cluster.followers_of(leader);
    let new = cluster.leader_among(&others).await;
    assert_ne!(new, leader);
    cluster.stop(leader).await;
    put(cluster.store(new), "after", "y").await.expect("write under the new leader");
    cluster.restart(leader).await;
    cluster.wait_applied(leader, rev).await;
    eventually(Duration::from_secs(10), "the restarted member to see the later write", || async {
        let kv = get(cluster.store(leader), "after", true).await.ok()?;
        (value_of(&kv).as_deref() == Some("y")).then_some(())
    })
    .await;
}
