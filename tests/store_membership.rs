//! Membership changes with real processes: members join (`keel server --join`), are
//! registered etcd-style (`member add`, then started), promoted, removed and replaced
//! online; a five-member cluster survives two failures; a lagging member catches up from a
//! snapshot after a restart.

mod support;

use std::process::Command;
use std::time::Duration;

use support::eventually;
use support::processes::{Cluster, keel_binary};

fn keel_member(endpoints: &[String], args: &[&str]) -> String {
    let out = Command::new(keel_binary())
        .args(["member", "--endpoints", &endpoints.join(",")])
        .args(args)
        .output()
        .expect("keel member runs");
    assert!(out.status.success(), "keel member {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Voters as a running member sees them (`None` while it cannot answer).
async fn voters(cluster: &Cluster) -> Option<usize> {
    let member = cluster.members.iter().find(|m| m.is_running())?;
    let members = member.etcd().members().await.ok()?;
    Some(members.iter().filter(|m| !m.is_learner).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_leave_and_are_replaced_online() {
    let mut cluster = Cluster::start(3, &[]).await;
    let etcd = cluster.members[0].etcd();
    etcd.put("before", "3 members").await.expect("write");

    // Grow to five: each joins as a learner, catches up, and becomes a voter.
    let m4 = cluster.join_new("m4");
    let m5 = cluster.join_new("m5");
    eventually(Duration::from_secs(60), "five voters", || async { (voters(&cluster).await == Some(5)).then_some(()) })
        .await;
    let listed = keel_member(&cluster.endpoints(), &["list"]);
    assert_eq!(listed.lines().filter(|l| l.contains("voter")).count(), 5, "{listed}");
    for name in ["m4", "m5"] {
        assert!(listed.contains(name), "{listed}");
    }
    let kv = cluster.members[m5].etcd().get("before").await.expect("read on a joined member");
    assert!(kv.is_some(), "the joined member has the data written before it joined");

    // Five members tolerate two failures.
    let leader = cluster.wait_for_leader().await;
    cluster.members[leader].kill();
    let other = (0..5).find(|&i| i != leader && i != m4).expect("another member");
    cluster.members[other].kill();
    let survivor = (0..5).find(|&i| cluster.members[i].is_running()).expect("survivor");
    eventually(Duration::from_secs(20), "a write with two of five members down", || async {
        cluster.members[survivor].etcd().put("during", "two down").await.ok()
    })
    .await;

    // Remove one dead member for good and replace the other with a new one.
    let dead_id = {
        let members = cluster.members[survivor].etcd().members().await.expect("list");
        members.iter().find(|m| m.name == cluster.members[leader].name).expect("dead member listed").id
    };
    keel_member(&cluster.endpoints(), &["remove", &format!("{dead_id:x}")]);
    cluster.members[other].start();
    let m6 = cluster.join_new("m6");
    eventually(Duration::from_secs(60), "five voters again", || async {
        (voters(&cluster).await == Some(5)).then_some(())
    })
    .await;
    let listed = keel_member(&cluster.endpoints(), &["list"]);
    assert!(!listed.contains(&cluster.members[leader].peer), "removed member still listed: {listed}");
    let kv = cluster.members[m6].etcd().get("during").await.expect("read on the replacement");
    assert!(kv.is_some());

    let revision = cluster.members[m6].etcd().put("after", "x").await.expect("write");
    cluster.wait_applied(revision).await;
    let mut hashes = Vec::new();
    for m in cluster.members.iter().filter(|m| m.is_running()) {
        hashes.push(m.etcd().hash_kv(revision).await.expect("hash").hash);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "replicas differ: {hashes:x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_style_add_then_start_then_promote() {
    let mut cluster = Cluster::start(3, &[]).await;
    let host = 40;
    let peer = cluster.subnet.free_addr(host);
    let client = cluster.subnet.free_addr(host);
    let added = keel_member(&cluster.endpoints(), &["add", &peer, "--learner"]);
    assert!(added.contains("added member"), "{added}");
    assert!(added.contains("(unstarted)"), "{added}");

    let endpoints = cluster.endpoints().join(",");
    let mut member = cluster.member("m4", &peer, &client, &["--join", &endpoints]);
    member.start();
    cluster.members.push(member);
    let id = eventually(Duration::from_secs(30), "the learner to start and announce itself", || async {
        let members = cluster.members[0].etcd().members().await.ok()?;
        members.iter().find(|m| m.name == "m4" && m.is_learner).map(|m| m.id)
    })
    .await;
    eventually(Duration::from_secs(30), "the learner to be promoted", || async {
        let out = Command::new(keel_binary())
            .args(["member", "--endpoints", &endpoints, "promote", &format!("{id:x}")])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
    assert_eq!(voters(&cluster).await, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_that_fell_far_behind_installs_a_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-count", "300", "--snapshot-catchup-entries", "50"]).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = (leader + 1) % 3;
    let before = std::fs::read_to_string(cluster.members[lagging].data_dir.join("state/CURRENT")).expect("CURRENT");
    cluster.members[lagging].kill();
    let etcd = cluster.members[leader].etcd();
    let mut revision = 0;
    for n in 0..1000 {
        revision = etcd.put(&format!("bulk/{n}"), "value").await.expect("write");
    }
    cluster.members[lagging].start();
    cluster.wait_applied(revision).await;
    let after = std::fs::read_to_string(cluster.members[lagging].data_dir.join("state/CURRENT")).expect("CURRENT");
    assert_ne!(before, after, "the member caught up without installing a snapshot");
    let a = cluster.members[lagging].etcd().hash_kv(revision).await.expect("hash").hash;
    let b = etcd.hash_kv(revision).await.expect("hash").hash;
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_after_the_log_was_purged_is_caught_up_by_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-count", "300", "--snapshot-catchup-entries", "50"]).await;
    let etcd = cluster.members[0].etcd();
    let mut revision = 0;
    for n in 0..800 {
        revision = etcd.put(&format!("early/{n}"), "v").await.expect("write");
    }
    let m4 = cluster.join_new("m4");
    eventually(Duration::from_secs(60), "four voters", || async { (voters(&cluster).await == Some(4)).then_some(()) })
        .await;
    cluster.wait_applied(revision).await;
    let generation = std::fs::read_to_string(cluster.members[m4].data_dir.join("state/CURRENT")).expect("CURRENT");
    assert_ne!(
        generation.trim(),
        "sm-000001",
        "the new member replayed the whole log instead of installing a snapshot"
    );
    let kv = cluster.members[m4].etcd().get_with("early/0", true).await.expect("read");
    assert!(kv.is_some(), "the joined member has the data written before it joined");
    let a = cluster.members[m4].etcd().hash_kv(revision).await.expect("hash").hash;
    let b = etcd.hash_kv(revision).await.expect("hash").hash;
    assert_eq!(a, b);
}

/// A member that is down is retried at openraft's backoff pace, and its peers say so once, not
/// per failed message. The leader used to reconnect to a killed follower as fast as
/// `connect()` failed — tens of thousands of times a second, a core busy and two warnings
/// logged each time — because openraft's backoff only runs while it produces a request, which
/// the transport asked for only once connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_is_retried_at_the_backoff_pace_and_caught_up_when_back() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let follower_id = format!("{:x}", cluster.members[follower].id().await);
    let leader_api = cluster.members[leader].api.clone();
    let failures = || {
        support::prometheus::scrape(&leader_api).count("etcd_network_peer_sent_failures_total", &[("To", &follower_id)])
    };

    let logged_before = cluster.members[leader].log_text().len();
    cluster.members[follower].kill();
    let etcd = cluster.members[leader].etcd();
    etcd.put("while-down", "1").await.expect("a write with one of three members down");
    // The first failures come as the connection breaks; count from a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = failures();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let retries = failures() - before;
    // Heartbeats go out every 50 ms here (the tests' flags) and replication is retried every
    // 200 ms (openraft's default backoff): about 50 failures in two seconds. Without the
    // backoff, a debug build counted 4,000.
    assert!(before > 0.0, "the failures to reach the dead member are counted");
    assert!(retries <= 200.0, "{retries} failed attempts to reach a dead member in 2 s");

    // Backing off does not keep a returning member waiting long.
    cluster.members[follower].start();
    let revision = etcd.put("after-restart", "2").await.expect("write");
    let restarted = cluster.members[follower].etcd();
    eventually(Duration::from_secs(10), "the restarted member to catch up", || async {
        let kv = restarted.get("after-restart").await.ok()??;
        (kv.mod_revision >= revision).then_some(())
    })
    .await;

    // The outage in the leader's log: its start and its end, and openraft's per-message
    // warnings once each (they pass once per 30 s).
    let log = eventually(Duration::from_secs(10), "the leader to log the member's return", || async {
        let log = cluster.members[leader].log_text().split_off(logged_before);
        log.contains("member reachable again").then_some(log)
    })
    .await;
    let lines = |text: &str| log.lines().filter(|l| l.contains(text) && l.contains(&follower_id)).count();
    assert_eq!(lines("lost contact with member"), 1, "{log}");
    assert_eq!(lines("member reachable again"), 1, "{log}");
    let heartbeat_warnings = log.lines().filter(|l| l.contains("failed to send a heartbeat")).count();
    assert!(heartbeat_warnings <= 1, "{heartbeat_warnings} heartbeat warnings in 3 s:\n{log}");
}

/// A healthy start logs no errors. Members announcing their addresses together used to
/// collide in openraft's membership changes, each refusal logged as an ERROR (a dozen per new
/// three-member cluster); the leader now makes those changes one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_starts_without_errors_in_its_logs() {
    let cluster = Cluster::start(3, &[]).await;
    let etcd = cluster.members[0].etcd();
    eventually(Duration::from_secs(20), "every member's client address announced", || async {
        let members = etcd.members().await.ok()?;
        (members.len() == 3 && members.iter().all(|m| !m.client_ur_ls.is_empty())).then_some(())
    })
    .await;
    for member in &cluster.members {
        let log = member.log_text();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.is_empty(), "{} logged errors at start:\n{}", member.name, errors.join("\n"));
        // What an operator reads instead of openraft's state dumps: the election, and who is in.
        assert!(log.contains("leader elected"), "{} did not log the election:\n{log}", member.name);
        let membership = log.lines().rfind(|l| l.contains("cluster membership committed"));
        let membership = membership.unwrap_or_else(|| panic!("{} did not log the membership:\n{log}", member.name));
        assert_eq!(membership.matches(" voter at ").count(), 3, "{membership}");
        for other in &cluster.members {
            assert!(membership.contains(&format!("{}=", other.name)), "{membership}");
            assert!(membership.contains(&format!("voter at {}", other.peer)), "{membership}");
        }
    }
}

/// `/readyz` says whether a member can serve, as kube-apiserver's does for etcd: a member cut
/// off from the majority fails it (HTTP 500, naming the store) within an election timeout,
/// and passes again once the majority is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_on_a_member_cut_off_from_the_majority() {
    let mut cluster = Cluster::start(3, &[]).await;
    let readyz = |api: &str| support::http_get(api, "/readyz?verbose");
    for member in &cluster.members {
        let api = member.api.clone();
        eventually(Duration::from_secs(10), "every member ready", || async {
            let (status, _, body) = readyz(&api);
            (status.contains(" 200 ") && body.contains("[+]etcd ok")).then_some(())
        })
        .await;
    }
    let leader = cluster.wait_for_leader().await;
    let survivor = (0..3).find(|&i| i != leader).expect("a follower");
    let other = (0..3).find(|&i| i != leader && i != survivor).expect("another follower");
    cluster.members[leader].kill();
    cluster.members[other].kill();
    let api = cluster.members[survivor].api.clone();
    let body = eventually(Duration::from_secs(10), "the survivor to report itself not ready", || async {
        let (status, _, body) = readyz(&api);
        status.contains(" 500 ").then_some(body)
    })
    .await;
    assert!(body.contains("[-]etcd failed") && body.contains("readyz check failed"), "{body}");
    // The probe itself stays up: /livez answers.
    assert!(support::http_get(&api, "/livez").0.contains(" 200 "));

    cluster.members[other].start();
    eventually(Duration::from_secs(20), "the survivor ready again with a majority back", || async {
        readyz(&api).0.contains(" 200 ").then_some(())
    })
    .await;
}
