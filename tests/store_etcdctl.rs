//! The real `etcdctl` (v3.4, from Debian's etcd-client) against a three-member keel cluster,
//! always through a follower: get/put/del, txn, watch, member list, endpoint status, leases,
//! snapshot save.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::processes::Cluster;

fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("etcdctl is installed (Debian package etcd-client)");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("etcdctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(endpoint: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = etcdctl(endpoint, args, None);
    assert!(success, "etcdctl {args:?} failed: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_a_follower() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = &cluster.members[(leader + 1) % 3];
    let ep = follower.client.as_str();

    assert_eq!(ok(ep, &["put", "greeting", "hello"]).trim(), "OK");
    assert_eq!(ok(ep, &["get", "greeting"]), "greeting\nhello\n");
    ok(ep, &["put", "dir/a", "1"]);
    ok(ep, &["put", "dir/b", "2"]);
    assert_eq!(ok(ep, &["get", "dir/", "--prefix", "--keys-only"]), "dir/a\n\ndir/b\n\n");
    let json = ok(ep, &["get", "dir/a", "-w", "json"]);
    assert!(json.contains("\"count\":1") && json.contains("\"version\":1"), "{json}");
    assert_eq!(ok(ep, &["del", "dir/", "--prefix"]).trim(), "2");

    // A watch started before the writes sees them, in order.
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", ep, "watch", "w/", "--prefix"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    tokio::time::sleep(Duration::from_millis(700)).await;
    ok(ep, &["put", "w/1", "one"]);
    ok(ep, &["put", "w/2", "two"]);
    ok(ep, &["del", "w/1"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = watch.kill();
    let output = watch.wait_with_output().expect("watch output");
    let seen = String::from_utf8_lossy(&output.stdout);
    assert_eq!(seen, "PUT\nw/1\none\nPUT\nw/2\ntwo\nDELETE\nw/1\n\n", "watch printed {seen:?}");

    // Interactive txn: compares, then success ops, then failure ops.
    let (success, out, err) = etcdctl(
        ep,
        &["txn"],
        Some("value(\"greeting\") = \"hello\"\n\nput greeting bye\nput txn-ran yes\n\nput greeting failed\n\n"),
    );
    assert!(success, "{err}");
    assert!(out.starts_with("SUCCESS"), "{out}");
    assert_eq!(ok(ep, &["get", "greeting", "--print-value-only"]).trim(), "bye");

    let members = ok(ep, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for m in &cluster.members {
        assert!(members.contains(&m.peer) && members.contains(&m.client), "{members}");
    }
    let status = ok(ep, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"leader\"") && status.contains("\"raftAppliedIndex\""), "{status}");

    let grant = ok(ep, &["lease", "grant", "30"]);
    let lease = grant.split_whitespace().nth(1).expect("lease id").to_string();
    ok(ep, &["put", "leased", "v", "--lease", &lease]);
    let ttl = ok(ep, &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    let kept = ok(ep, &["lease", "keep-alive", "--once", &lease]);
    assert!(kept.contains("keepalived with TTL(30)"), "{kept}");
    ok(ep, &["lease", "revoke", &lease]);
    assert_eq!(ok(ep, &["get", "leased"]), "");

    let snapshot = cluster.dir().join("snap.db");
    let saved = etcdctl(ep, &["snapshot", "save", snapshot.to_str().expect("path")], None);
    assert!(saved.0, "snapshot save: {}", saved.2);
    let size = std::fs::metadata(&snapshot).expect("snapshot file").len();
    assert!(size > 32, "snapshot is {size} bytes");

    // Bad input gets a clear error and changes nothing.
    let big = "x".repeat(1_600_000);
    let (success, _, err) = etcdctl(ep, &["put", "big"], Some(&big));
    assert!(!success && err.contains("request is too large"), "{err}");
    let (success, _, err) = etcdctl(ep, &["get", "greeting", "--rev", "99999999"], None);
    let _ = success;
    assert!(err.contains("future revision"), "{err}");
    assert_eq!(ok(ep, &["get", "big"]), "");
}
