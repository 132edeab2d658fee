//! Clusters of real `keel server` processes on loopback, for tests that kill, pause and
//! restart members. Members are stopped when the cluster is dropped; the data and logs of a
//! failed test are kept and their location printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::client::Etcd;
use super::eventually;
use super::net::Subnet;

pub fn keel_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// Flags that make elections and snapshots quick enough for tests.
pub const FAST_FLAGS: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "300", "--request-timeout", "3s"];

pub struct Member {
    pub name: String,
    pub peer: String,
    pub client: String,
    /// The Kubernetes API address (`host:port`).
    pub api: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    stopped: bool,
}

impl Member {
    pub fn etcd(&self) -> Etcd {
        Etcd::new(&self.client)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open member log");
        let child = Command::new(keel_binary())
            .args(&self.args)
            .env("KEEL_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel server");
        self.child = Some(child);
        self.stopped = false;
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("member is running").id() as i32)
    }

    /// SIGKILL: the process dies without any chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a graceful stop (a leader hands over leadership first).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("member is running");
        if self.stopped {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        child.wait().expect("wait for member")
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&mut self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP");
        self.stopped = true;
    }

    pub fn resume(&mut self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT");
        self.stopped = false;
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits for the process to exit on its own; returns its status and its log.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(std::process::ExitStatus, String)> {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some((status, self.log_text()));
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The member id, as the cluster knows it.
    pub async fn id(&self) -> u64 {
        self.etcd().status().await.expect("status").header.expect("header").member_id
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.stopped
            && let Some(child) = &self.child
        {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
        self.kill();
    }
}

/// A free port on the same loopback address as `addr`.
fn free_port_beside(addr: &str) -> String {
    let ip = addr.rsplit_once(':').map(|(ip, _)| ip).unwrap_or("127.0.0.1");
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind a loopback port");
    format!("{ip}:{}", listener.local_addr().expect("local addr").port())
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub subnet: Subnet,
    dir: Option<tempfile::TempDir>,
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `size` members as one new cluster and waits for a leader.
    pub async fn start(size: usize, extra_flags: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new().prefix("keel-cluster-").tempdir().expect("temp dir");
        let subnet = Subnet::random();
        let mut planned = Vec::new();
        for i in 0..size {
            let host = 10 + i as u8;
            planned.push((format!("m{}", i + 1), subnet.free_addr(host), subnet.free_addr(host)));
        }
        let initial: Vec<String> = planned.iter().map(|(n, p, _)| format!("{n}={p}")).collect();
        let initial = initial.join(",");
        let extra: Vec<String> = extra_flags.iter().map(|s| s.to_string()).collect();
        let mut cluster = Cluster { members: Vec::new(), subnet, dir: Some(dir), extra };
        for (name, peer, client) in planned {
            let member = cluster.member(&name, &peer, &client, &["--initial-cluster", &initial]);
            cluster.members.push(member);
        }
        for m in &mut cluster.members {
            m.start();
        }
        cluster.wait_for_leader().await;
        cluster
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("cluster dir").path()
    }

    /// Describes a member of this cluster (not started).
    pub fn member(&self, name: &str, peer: &str, client: &str, bootstrap: &[&str]) -> Member {
        let data_dir = self.dir().join(name);
        let log = self.dir().join(format!("{name}.log"));
        let api = free_port_beside(peer);
        let mut args: Vec<String> = vec![
            "server".into(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-peer".into(),
            peer.into(),
            "--listen-client".into(),
            client.into(),
            "--listen-api".into(),
            api.clone(),
        ];
        args.extend(bootstrap.iter().map(|s| s.to_string()));
        args.extend(FAST_FLAGS.iter().map(|s| s.to_string()));
        args.extend(self.extra.iter().cloned());
        Member {
            name: name.into(),
            peer: peer.into(),
            client: client.into(),
            api,
            data_dir,
            log,
            args,
            child: None,
            stopped: false,
        }
    }

    /// Adds a new member that joins through the existing ones, and starts it.
    pub fn join_new(&mut self, name: &str) -> usize {
        let host = 10 + self.members.len() as u8;
        let peer = self.subnet.free_addr(host);
        let client = self.subnet.free_addr(host);
        let endpoints: Vec<String> = self.members.iter().filter(|m| m.is_running()).map(|m| m.client.clone()).collect();
        let mut member = self.member(name, &peer, &client, &["--join", &endpoints.join(",")]);
        member.start();
        self.members.push(member);
        self.members.len() - 1
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().filter(|m| m.is_running()).map(|m| m.client.clone()).collect()
    }

    /// Index of the member every running member agrees leads.
    pub async fn wait_for_leader(&self) -> usize {
        eventually(Duration::from_secs(20), "a leader all running members agree on", || async {
            let mut leader = None;
            let mut ids = Vec::new();
            for m in self.members.iter().filter(|m| m.is_running() && !m.stopped) {
                let status = super::client::with_deadline(Duration::from_millis(500), m.etcd().status()).await.ok()?;
                if status.leader == 0 || leader.is_some_and(|l| l != status.leader) {
                    return None;
                }
                leader = Some(status.leader);
                ids.push(status.header?.member_id);
            }
            let leader = leader?;
            let index = ids.iter().position(|id| *id == leader)?;
            let running: Vec<usize> = (0..self.members.len())
                .filter(|i| self.members[*i].is_running() && !self.members[*i].stopped)
                .collect();
            Some(running[index])
        })
        .await
    }

    /// Waits until every running member has applied at least `revision`.
    pub async fn wait_applied(&self, revision: i64) {
        for m in self.members.iter().filter(|m| m.is_running() && !m.stopped) {
            eventually(Duration::from_secs(30), &format!("{} to apply {revision}", m.name), || async {
                let s = m.etcd().status().await.ok()?;
                (s.raft_applied_index as i64 >= revision).then_some(())
            })
            .await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if m.stopped
                && let Some(child) = &m.child
            {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            }
            m.kill();
        }
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("test failed: cluster data and member logs kept in {}", kept.display());
        }
    }
}
