//! etcd semantics of the store, checked through its API on a one-member cluster: transactions
//! (compares of every target, both branches, nested), range options, historical reads,
//! deletes with previous values, put flags, leases, watch filters and previous values, and
//! automatic compaction by age and by revision count.

mod support;

use std::time::Duration;

use keel_store::keys::KeyRange;
use keel_store::pb;
use keel_store::watch::WatchSpec;
use keel_store::{Store, StoreError};
use support::eventually;
use support::inproc::{InProcCluster, fast_tuning, put, put_with_lease};

fn op_put(key: &str, value: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn op_get(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn compare(
    key: &str,
    target: pb::compare::CompareTarget,
    result: pb::compare::CompareResult,
    value: pb::compare::TargetUnion,
) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        target_union: Some(value),
        range_end: vec![],
    }
}

async fn txn(
    store: &Store,
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
) -> pb::TxnResponse {
    store.txn(pb::TxnRequest { compare, success, failure }).await.expect("txn").0
}

async fn range(store: &Store, request: pb::RangeRequest) -> Result<pb::RangeResponse, StoreError> {
    store.range(&request).await.map(|(r, _)| r)
}

fn keys(r: &pb::RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_compare_every_target_and_run_the_right_branch() {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let cluster = InProcCluster::start(1, fast_tuning()).await;
    let s = cluster.store(0);
    let created = put(s, "a", "1").await.expect("put");
    let modified = put(s, "a", "2").await.expect("put");

    let cases: Vec<(pb::Compare, bool)> = vec![
        (compare("a", T::Version, R::Equal, U::Version(2)), true),
        (compare("a", T::Version, R::Greater, U::Version(2)), false),
        (compare("a", T::Create, R::Equal, U::CreateRevision(created)), true),
        (compare("a", T::Mod, R::Equal, U::ModRevision(modified)), true),
        (compare("a", T::Mod, R::Less, U::ModRevision(modified)), false),
        (compare("a", T::Value, R::Equal, U::Value(b"2".to_vec())), true),
        (compare("a", T::Value, R::NotEqual, U::Value(b"2".to_vec())), false),
        (compare("a", T::Lease, R::Equal, U::Lease(0)), true),
        // A missing key has version 0 and no value: a value compare fails whatever it says.
        (compare("missing", T::Version, R::Equal, U::Version(0)), true),
        (compare("missing", T::Value, R::NotEqual, U::Value(b"x".to_vec())), false),
    ];
    for (i, (c, expected)) in cases.into_iter().enumerate() {
        let r = txn(s, vec![c], vec![op_get("a")], vec![]).await;
        assert_eq!(r.succeeded, expected, "case {i}");
        assert_eq!(r.responses.len(), usize::from(expected), "case {i}: the branch that ran");
    }

    // A ranged compare must hold for every key in the range.
    put(s, "r/1", "x").await.expect("put");
    put(s, "r/2", "y").await.expect("put");
    let mut ranged = compare("r/", T::Value, R::Equal, U::Value(b"x".to_vec()));
    ranged.range_end = b"r0".to_vec();
    assert!(!txn(s, vec![ranged.clone()], vec![], vec![]).await.succeeded);
    put(s, "r/2", "x").await.expect("put");
    assert!(txn(s, vec![ranged], vec![], vec![]).await.succeeded);

    // Writes inside a transaction are visible to later reads in it, all at one revision, and
    // nested transactions see the state their parent left.
    let nested = pb::TxnRequest {
        compare: vec![compare("t1", T::Value, R::Equal, U::Value(b"v".to_vec()))],
        success: vec![op_put("t2", "nested")],
        failure: vec![],
    };
    let r = txn(
        s,
        vec![],
        vec![
            op_put("t1", "v"),
            op_get("t1"),
            pb::RequestOp { request: Some(pb::request_op::Request::RequestTxn(nested)) },
        ],
        vec![],
    )
    .await;
    let Some(pb::response_op::Response::ResponseRange(inner_read)) = &r.responses[1].response else {
        panic!("expected a range response: {r:?}");
    };
    assert_eq!(inner_read.kvs[0].value, b"v");
    let Some(pb::response_op::Response::ResponseTxn(inner)) = &r.responses[2].response else {
        panic!("expected a txn response: {r:?}");
    };
    assert!(inner.succeeded);
    let t1 = range(s, pb::RangeRequest { key: b"t1".to_vec(), ..Default::default() }).await.expect("read");
    let t2 = range(s, pb::RangeRequest { key: b"t2".to_vec(), ..Default::default() }).await.expect("read");
    assert_eq!(t1.kvs[0].mod_revision, t2.kvs[0].mod_revision, "one transaction, one revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_honour_limits_sorting_filters_and_past_revisions() {
    use pb::range_request::{SortOrder, SortTarget};
    let cluster = InProcCluster::start(1, fast_tuning()).await;
    let s = cluster.store(0);
    let first = put(s, "k/b", "2").await.expect("put");
    put(s, "k/a", "3").await.expect("put");
    put(s, "k/c", "1").await.expect("put");
    // A key deleted at the end of the range: counted by no page, and no reason for `more`.
    put(s, "k/d", "4").await.expect("put");
    s.txn(pb::TxnRequest {
        compare: vec![],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: b"k/d".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    })
    .await
    .expect("delete k/d");
    let before_delete = put(s, "other", "x").await.expect("put");

    let prefix = |extra: fn(&mut pb::RangeRequest)| {
        let mut r = pb::RangeRequest { key: b"k/".to_vec(), range_end: b"k0".to_vec(), ..Default::default() };
        extra(&mut r);
        r
    };
    let all = range(s, prefix(|_| {})).await.expect("range");
    assert_eq!(keys(&all), ["k/a", "k/b", "k/c"]);
    assert_eq!((all.count, all.more), (3, false));

    let limited = range(s, prefix(|r| r.limit = 2)).await.expect("range");
    assert_eq!(keys(&limited), ["k/a", "k/b"]);
    assert_eq!((limited.count, limited.more), (3, true));
    let exactly = range(s, prefix(|r| r.limit = 3)).await.expect("range");
    assert_eq!((keys(&exactly).len(), exactly.count, exactly.more), (3, 3, false));
    let one = range(s, prefix(|r| r.limit = 1)).await.expect("range");
    assert_eq!((keys(&one), one.count, one.more), (vec!["k/a".to_string()], 3, true));

    let by_value = range(
        s,
        prefix(|r| {
            r.sort_target = SortTarget::Value as i32;
            r.sort_order = SortOrder::Descend as i32;
        }),
    )
    .await
    .expect("range");
    assert_eq!(keys(&by_value), ["k/a", "k/b", "k/c"]);
    let by_key_desc = range(s, prefix(|r| r.sort_order = SortOrder::Descend as i32)).await.expect("range");
    assert_eq!(keys(&by_key_desc), ["k/c", "k/b", "k/a"]);

    let counted = range(s, prefix(|r| r.count_only = true)).await.expect("range");
    assert!(counted.kvs.is_empty() && counted.count == 3);
    let keys_only = range(s, prefix(|r| r.keys_only = true)).await.expect("range");
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    // Sorted on the values before they are dropped, as etcd does.
    let keys_by_value = range(
        s,
        prefix(|r| {
            r.keys_only = true;
            r.sort_target = SortTarget::Value as i32;
            r.sort_order = SortOrder::Descend as i32;
        }),
    )
    .await
    .expect("range");
    assert_eq!(keys(&keys_by_value), ["k/a", "k/b", "k/c"]);
    assert!(keys_by_value.kvs.iter().all(|kv| kv.value.is_empty()));

    let newer = range(
        s,
        pb::RangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            min_mod_revision: first + 1,
            ..Default::default()
        },
    )
    .await
    .expect("range");
    assert_eq!(keys(&newer), ["k/a", "k/c"]);
    // With a revision filter, `more` says whether a key past the limit passes it.
    let only_b = range(
        s,
        pb::RangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            max_mod_revision: first,
            limit: 1,
            ..Default::default()
        },
    )
    .await
    .expect("range");
    assert_eq!((keys(&only_b), only_b.count, only_b.more), (vec!["k/b".to_string()], 3, false));

    let deleted = s
        .txn(pb::TxnRequest {
            compare: vec![],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: b"k/".to_vec(),
                    range_end: b"k0".to_vec(),
                    prev_kv: true,
                })),
            }],
            failure: vec![],
        })
        .await
        .expect("delete")
        .0;
    let Some(pb::response_op::Response::ResponseDeleteRange(d)) = &deleted.responses[0].response else {
        panic!("expected a delete response");
    };
    assert_eq!(d.deleted, 3);
    assert_eq!(d.prev_kvs.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(), [b"3", b"2", b"1"]);

    assert_eq!(range(s, prefix(|_| {})).await.expect("range").count, 0);
    let past = range(
        s,
        pb::RangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            revision: before_delete,
            ..Default::default()
        },
    )
    .await
    .expect("range at a past revision");
    assert_eq!(keys(&past), ["k/a", "k/b", "k/c"]);
    let future = range(s, pb::RangeRequest { key: b"k/a".to_vec(), revision: 1_000_000, ..Default::default() }).await;
    assert_eq!(future, Err(StoreError::FutureRevision));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_flags_and_leases_behave_as_in_etcd() {
    let cluster = InProcCluster::start(1, fast_tuning()).await;
    let s = cluster.store(0);
    let put_req = |key: &str, value: &str, f: fn(&mut pb::PutRequest)| {
        let mut p = pb::PutRequest { key: key.into(), value: value.into(), ..Default::default() };
        f(&mut p);
        pb::TxnRequest {
            compare: vec![],
            success: vec![pb::RequestOp { request: Some(pb::request_op::Request::RequestPut(p)) }],
            failure: vec![],
        }
    };
    assert_eq!(s.txn(put_req("nokey", "", |p| p.ignore_value = true)).await.err(), Some(StoreError::KeyNotFound));
    let (id, _, _) = s.lease_grant(0, 60).await.expect("grant");
    put_with_lease(s, "leased", "v1", id).await.expect("put with lease");
    // ignore_value keeps the value, ignore_lease keeps the lease.
    s.txn(put_req("leased", "", |p| {
        p.ignore_value = true;
        p.ignore_lease = true;
    }))
    .await
    .expect("put keeping value and lease");
    let kv = range(s, pb::RangeRequest { key: b"leased".to_vec(), ..Default::default() }).await.expect("read").kvs[0]
        .clone();
    assert_eq!((kv.value.as_slice(), kv.lease, kv.version), (b"v1".as_slice(), id, 2));
    let prev = s.txn(put_req("leased", "v3", |p| p.prev_kv = true)).await.expect("put").0;
    let Some(pb::response_op::Response::ResponsePut(p)) = &prev.responses[0].response else { panic!("put response") };
    assert_eq!(p.prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b"v1".to_vec()));
    // The plain put detached the key from its lease; revoking the lease leaves it alone.
    s.lease_revoke(id).await.expect("revoke");
    assert!(
        !range(s, pb::RangeRequest { key: b"leased".to_vec(), ..Default::default() })
            .await
            .expect("read")
            .kvs
            .is_empty()
    );
    assert_eq!(put_with_lease(s, "x", "y", id).await.err(), Some(StoreError::LeaseNotFound));
    assert_eq!(
        s.lease_grant(0, 9_000_000_001).await.err().map(|e| e.to_string()),
        Some("too large lease TTL".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_filter_and_carry_previous_values() {
    let cluster = InProcCluster::start(1, fast_tuning()).await;
    let s = cluster.store(0);
    let start = put(s, "w", "1").await.expect("put");
    let spec = |skip_puts, skip_deletes, prev_kv| WatchSpec {
        range: KeyRange::new(b"w", b""),
        start_revision: start + 1,
        prev_kv,
        skip_puts,
        skip_deletes,
    };
    let mut all = s.watch(spec(false, false, true)).expect("watch");
    let mut no_puts = s.watch(spec(true, false, false)).expect("watch");
    put(s, "w", "2").await.expect("put");
    s.txn(pb::TxnRequest {
        compare: vec![],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: b"w".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    })
    .await
    .expect("delete");
    // One call may hand out several revisions (whole ones) at a time.
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(all.next().await.expect("events"));
    }
    let (put_event, delete_event) = (events[0].clone(), events[1].clone());
    assert_eq!(put_event.prev_kv.map(|kv| kv.value), Some(b"1".to_vec()));
    assert_eq!(delete_event.r#type, keel_store::mvccpb::event::EventType::Delete as i32);
    assert_eq!(delete_event.prev_kv.map(|kv| kv.value), Some(b"2".to_vec()));
    let only = no_puts.next().await.expect("event");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].r#type, keel_store::mvccpb::event::EventType::Delete as i32);
    assert!(only[0].prev_kv.is_none(), "prev_kv only when asked for");
    // The watcher is complete up to the present once idle.
    let now = s.state().applied_revision();
    assert_eq!(all.progress_revision(), now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_compacted_automatically_by_count_and_by_age() {
    let mut tuning = fast_tuning();
    tuning.history_max_revisions = 20;
    tuning.history_retention = Duration::from_secs(2);
    let cluster = InProcCluster::start(1, tuning).await;
    let s = cluster.store(0).clone();
    let first = put(&s, "c", "0").await.expect("put");
    let mut last = first;
    for n in 1..60 {
        last = put(&s, "c", &n.to_string()).await.expect("put");
    }
    // The revision cap keeps at most 20 revisions of history...
    eventually(Duration::from_secs(10), "compaction by revision count", || {
        let s = s.clone();
        async move { (s.status().compact_revision >= last - 20).then_some(()) }
    })
    .await;
    let old = range(&s, pb::RangeRequest { key: b"c".to_vec(), revision: first, ..Default::default() }).await;
    assert!(matches!(old, Err(StoreError::Compacted { .. })), "{old:?}");
    // ...and the retention drops even those once they are older than two seconds.
    eventually(Duration::from_secs(15), "compaction by age", || {
        let s = s.clone();
        async move { (s.status().compact_revision >= last).then_some(()) }
    })
    .await;
    let kv = range(&s, pb::RangeRequest { key: b"c".to_vec(), ..Default::default() }).await.expect("read");
    assert_eq!(kv.kvs[0].value, b"59", "compaction keeps the present");
}

/// Small ranges are served on the caller's task, larger ones in the blocking pool: both give
/// the same answer, on either side of the switch (256 records, versions included, or 1 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_small_and_large_read_the_same() {
    let cluster = InProcCluster::start(1, fast_tuning()).await;
    let s = cluster.store(0);
    for i in 0..300 {
        put(s, &format!("big/{i:03}"), "v").await.expect("put");
    }
    // Rewrites add versions that a range visits but does not return.
    for _ in 0..3 {
        put(s, "small/a", "v").await.expect("put");
    }
    put(s, "small/b", "v").await.expect("put");
    let whole = |prefix: &str| pb::RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: format!("{}0", prefix.trim_end_matches('/')).into_bytes(),
        ..Default::default()
    };
    let big = range(s, whole("big/")).await.expect("range");
    assert_eq!((big.kvs.len(), big.count, big.more), (300, 300, false));
    assert_eq!(keys(&big).last().map(String::as_str), Some("big/299"));
    let small = range(s, whole("small/")).await.expect("range");
    assert_eq!(keys(&small), ["small/a", "small/b"]);
    assert_eq!(small.kvs[0].version, 3);
    let page = range(s, pb::RangeRequest { limit: 10, ..whole("big/") }).await.expect("range");
    assert_eq!((page.kvs.len(), page.count, page.more), (10, 300, true));
    // An old revision of a key rewritten many times: the newer versions stepped over count.
    let first_hot = put(s, "hot/k", "v0").await.expect("put");
    for i in 1..300 {
        put(s, "hot/k", &format!("v{i}")).await.expect("put");
    }
    let old = range(s, pb::RangeRequest { revision: first_hot, ..whole("hot/") }).await.expect("range");
    assert_eq!((old.kvs.len(), old.kvs[0].value.as_slice(), old.kvs[0].version), (1, &b"v0"[..], 1));
    // Few records but over a MiB of them: read in the pool too.
    let wide_value = "w".repeat(600 * 1024);
    for i in 0..3 {
        put(s, &format!("wide/{i}"), &wide_value).await.expect("put");
    }
    let wide = range(s, whole("wide/")).await.expect("range");
    assert_eq!(keys(&wide), ["wide/0", "wide/1", "wide/2"]);
    assert!(wide.kvs.iter().all(|kv| kv.value.len() == 600 * 1024));
}
