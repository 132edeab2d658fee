//! Bad input never half-writes and never starts a damaged member: malformed and oversized
//! requests get gRPC errors; corrupted or truncated data directories are refused at start
//! with a message that says what is wrong.

mod support;

use std::path::Path;
use std::time::Duration;

use keel_proto::etcdserverpb as pb;
use support::eventually;
use support::processes::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused() {
    let cluster = Cluster::start(1, &[]).await;
    let etcd = cluster.members[0].etcd();
    let mut kv = etcd.kv.clone();

    let too_big = pb::PutRequest { key: b"big".to_vec(), value: vec![b'x'; 1_600_000], ..Default::default() };
    let err = kv.put(too_big).await.expect_err("oversized value");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "etcdserver: request is too large");

    let huge = pb::PutRequest { key: b"huge".to_vec(), value: vec![b'x'; 3_000_000], ..Default::default() };
    let err = kv.put(huge).await.expect_err("value over the gRPC limit");
    assert_ne!(err.code(), tonic::Code::Ok);

    let err = kv.put(pb::PutRequest::default()).await.expect_err("empty key");
    assert_eq!(err.message(), "etcdserver: key is not provided");

    let dup = pb::TxnRequest {
        compare: vec![],
        success: vec![
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: b"d".to_vec(),
                    ..Default::default()
                })),
            },
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"z".to_vec(),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    let err = kv.txn(dup).await.expect_err("a key written twice in one txn");
    assert_eq!(err.message(), "etcdserver: duplicate key given in txn request");

    let lease_missing = pb::PutRequest { key: b"l".to_vec(), lease: 12345, ..Default::default() };
    let err = kv.put(lease_missing).await.expect_err("unknown lease");
    assert_eq!(err.message(), "etcdserver: requested lease not found");

    // A garbage gRPC body is a decode error, not a crash.
    let raw =
        reqwest_free_post(&cluster.members[0].client, "/etcdserverpb.KV/Put", &[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    assert!(raw.contains("grpc-status"), "{raw}");

    for key in ["big", "huge", "d", "l"] {
        assert!(etcd.get(key).await.expect("read").is_none(), "{key} was written");
    }
    assert!(etcd.put("still", "works").await.is_ok());
}

/// Sends one HTTP/2 gRPC request with a hand-made body and returns the response headers and
/// trailers as text.
async fn reqwest_free_post(endpoint: &str, path: &str, body: &[u8]) -> String {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = RawCodec;
    let result: Result<tonic::Response<Vec<u8>>, tonic::Status> =
        grpc.unary(tonic::Request::new(body[5..].to_vec()), path.parse().expect("path"), codec).await;
    match result {
        Ok(r) => format!("ok grpc-status: 0 {:?}", r.into_inner()),
        Err(status) => format!("grpc-status: {:?} {}", status.code(), status.message()),
    }
}

/// Passes bytes through unchanged, to send a body that is not a valid message.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn files_with_extension(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_with_extension(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out
}

fn truncate_half(path: &Path) {
    let len = std::fs::metadata(path).expect("stat").len();
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    file.set_len(len / 2).expect("truncate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_data_directories_are_refused_at_start() {
    let mut cluster = Cluster::start(1, &[]).await;
    let etcd = cluster.members[0].etcd();
    for n in 0..200 {
        etcd.put(&format!("k{n}"), &"v".repeat(100)).await.expect("write");
    }
    // Push the state machine into SST files so there is one to damage.
    etcd.maintenance.clone().defragment(pb::DefragmentRequest {}).await.expect("defragment");
    let status = cluster.members[0].terminate();
    assert!(status.success(), "clean stop: {status:?}");
    let pristine = cluster.dir().join("pristine");
    copy_dir(&cluster.members[0].data_dir, &pristine);

    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage, &str)> = vec![
        ("member.json removed", |d| std::fs::remove_file(d.join("member.json")).expect("rm"), "no member.json"),
        ("member.json garbled", |d| std::fs::write(d.join("member.json"), b"{not json").expect("write"), "damaged"),
        (
            "state pointer garbled",
            |d| std::fs::write(d.join("state/CURRENT"), b"sm-999").expect("write"),
            "cannot open the state machine",
        ),
        (
            "state machine table truncated",
            |d| {
                let ssts = files_with_extension(&d.join("state"), "sst");
                assert!(!ssts.is_empty(), "no SST files to damage");
                for sst in ssts {
                    truncate_half(&sst);
                }
            },
            "cannot open the state machine",
        ),
        (
            "Raft log truncated",
            |d| {
                for wal in files_with_extension(&d.join("raft"), "log") {
                    std::fs::OpenOptions::new().write(true).open(&wal).expect("open").set_len(0).expect("truncate");
                }
            },
            "log entries are missing",
        ),
        ("Raft log removed", |d| std::fs::remove_dir_all(d.join("raft")).expect("rm"), "cannot open the Raft log"),
    ];
    for (what, damage, expected) in cases {
        let data_dir = &cluster.members[0].data_dir;
        std::fs::remove_dir_all(data_dir).expect("reset");
        copy_dir(&pristine, data_dir);
        damage(data_dir);
        std::fs::write(&cluster.members[0].log, b"").expect("clear log");
        cluster.members[0].start();
        let (status, log) = cluster.members[0]
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{what}: the member kept running on a damaged data directory"));
        assert!(!status.success(), "{what}: exited successfully");
        assert!(log.contains(expected), "{what}: expected {expected:?} in:\n{log}");
    }

    // The undamaged copy still starts and serves everything.
    let data_dir = cluster.members[0].data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("reset");
    copy_dir(&pristine, &data_dir);
    cluster.members[0].start();
    cluster.wait_for_leader().await;
    let kv = cluster.members[0].etcd().get("k199").await.expect("read");
    assert!(kv.is_some());
}

/// A log filter that does not parse stops the binary with the parser's reason; it used to be
/// replaced by `info` without a word.
#[test]
fn an_invalid_log_filter_is_refused() {
    let out = std::process::Command::new(support::processes::keel_binary())
        .args([
            "--log-level",
            "keel_store=loud",
            "server",
            "--name",
            "m1",
            "--data-dir",
            "/nonexistent/keel-log-filter-test",
        ])
        .output()
        .expect("keel runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid --log-level \"keel_store=loud\""), "{stderr}");
    assert!(stderr.contains("expected one of"), "the parser's reason: {stderr}");
}

/// Unmounts the small filesystem a test made, however the test ends (lazily: whatever still
/// holds it open lets go when it exits).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk stops the member with the reason and a non-zero exit, as etcd stops on a failed
/// WAL write, and loses no acknowledged write: it used to stay up with its Raft stopped,
/// answering `/healthz` with 200, failing every write and logging an error for each (60 MB in
/// 20 s). With room again it starts with everything it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_member_and_loses_no_acknowledged_write() {
    // The member's data directory moves onto a 64 MiB tmpfs (the tests run as root, as the
    // containerd ones need). Declared before the cluster, so that the member is stopped before
    // it is unmounted, however the test ends.
    let mount_point = tempfile::Builder::new().prefix("keel-full-disk-").tempdir().expect("mount point");
    let small = mount_point.path().to_path_buf();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&small).status();
    assert!(mounted.is_ok_and(|s| s.success()), "mount a tmpfs (needs root)");
    let _unmount = Mounted(small.clone());
    let mut cluster = Cluster::start(1, &[]).await;
    let status = cluster.members[0].terminate();
    assert!(status.success(), "clean stop: {status:?}");
    let data_dir = cluster.members[0].data_dir.clone();
    copy_dir(&data_dir, &small.join("m1"));
    std::fs::remove_dir_all(&data_dir).expect("move the data directory");
    std::os::unix::fs::symlink(small.join("m1"), &data_dir).expect("link the data directory");
    cluster.members[0].start();
    let etcd = cluster.members[0].etcd();
    let value = "v".repeat(256 * 1024);
    eventually(Duration::from_secs(20), "the member back", || async { etcd.status().await.ok() }).await;

    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..1_000 {
        let key = format!("full/{i:04}");
        match etcd.put(&key, &value).await {
            Ok(_) => acknowledged.push(key),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    assert!(refused.is_some(), "1,000 writes of 256 KiB fit on 64 MiB");
    assert!(acknowledged.len() > 10, "only {} writes before the disk filled", acknowledged.len());
    let (status, log) =
        cluster.members[0].wait_exit(Duration::from_secs(20)).expect("the member stops when its disk is full");
    assert!(!status.success(), "{status:?}");
    let reason = log.lines().find(|l| l.contains("the store stopped")).unwrap_or_else(|| panic!("no reason:\n{log}"));
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(log.len() < 200_000, "{} bytes of log", log.len());

    // With room again, it starts with every write it acknowledged.
    let grown = std::process::Command::new("mount").args(["-o", "remount,size=512m"]).arg(&small).status();
    assert!(grown.is_ok_and(|s| s.success()), "grow the tmpfs");
    std::fs::write(&cluster.members[0].log, b"").expect("clear log");
    cluster.members[0].start();
    eventually(Duration::from_secs(20), "the member back", || async { etcd.status().await.ok() }).await;
    for key in &acknowledged {
        let kv = etcd.get(key).await.expect("read").unwrap_or_else(|| panic!("{key} was acknowledged and is gone"));
        assert_eq!(kv.value.len(), value.len(), "{key}");
    }
    etcd.put("after", "room again").await.expect("a write with room again");
    // A single member is its own majority: ready.
    let (status, _, body) = support::http_get(&cluster.members[0].api, "/readyz?verbose");
    assert!(status.contains(" 200 ") && body.contains("[+]etcd ok"), "{status}\n{body}");
}

/// A SIGTERM that arrives while a member is still starting stops it cleanly once it has
/// started. The handler used to be installed only when everything was up, so a signal in
/// between killed the member outright: on a loaded machine, a test that stopped a member just
/// after its start saw it die of SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_starting_stops_the_member_cleanly() {
    let mut cluster = Cluster::start(1, &[]).await;
    assert!(cluster.members[0].terminate().success(), "clean stop");
    let member = &mut cluster.members[0];
    let starts = |member: &support::processes::Member| member.log_text().matches("store member started").count();
    let before = starts(member);
    member.start();
    // As early as the log shows: the store is open, the APIs are not served yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while starts(member) == before {
        assert!(std::time::Instant::now() < deadline, "the member did not start:\n{}", member.log_text());
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = member.terminate();
    assert!(status.success(), "stopped by SIGTERM while starting: {status:?}\n{}", member.log_text());
}
