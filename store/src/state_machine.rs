//! openraft's state machine: applies entries to the MVCC keyspace, builds and installs
//! snapshots, and tells watchers and the lease table what changed.
//!
//! The live database sits in `state/<generation>/`, named by `state/CURRENT`. Installing a
//! snapshot opens its checkpoint as a new generation and swaps it in; readers holding the old
//! handle finish on it, and its directory is removed once the last of them is gone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use keel_prometheus::Gauge;
use keel_proto::etcdserverpb as pb;
use openraft::alias::{LogIdOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use parking_lot::{Mutex, RwLock};
use rocksdb::checkpoint::Checkpoint;
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options};
use tokio::sync::watch;

use crate::codec::to_bytes;
use crate::error::{Result, StoreError};
use crate::lease::Lessor;
use crate::mirror::Mirrors;
use crate::mvcc::{self, ALL_CFS, CF_META, META_APPLIED, META_MEMBERSHIP, View};
use crate::snapshot::{SnapshotDir, SnapshotMeta, SnapshotStore, list_files, sync_dir};
use crate::txn::{Applied, Applier, KeyIndex, LeaseEffect};
use crate::types::{Command, CommandResult, Outcome, TypeConfig};
use crate::watch::{HubMessage, RevisionEvents, WatchHub, WatchSpec, Watcher};
use crate::worker::Worker;

type Snapshot = SnapshotOf<TypeConfig, SnapshotDir>;

/// Writes one apply batch collects before it is flushed.
const MAX_BATCH_WRITES: usize = 4096;

/// Entries applied but not yet written: the state machine applies a run of committed entries
/// into one `WriteBatch` and one write, instead of one per entry.
#[derive(Default)]
struct Pending {
    batch: crate::txn::BatchOps,
    /// Values written by the batch, for later entries that read them.
    values: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    membership: Option<StoredMembershipOf<TypeConfig>>,
    last_applied: Option<LogIdOf<TypeConfig>>,
    lease_effects: Vec<LeaseEffect>,
    revisions: Vec<RevisionEvents>,
    replies: Vec<(openraft::storage::ApplyResponder<TypeConfig>, CommandResult)>,
    compacted: bool,
}

/// Whether an entry reads what only the database shows (leases, the compaction horizon,
/// history at a past revision) and so must see every earlier entry written.
fn needs_own_write(payload: &EntryPayload<Command, u64, crate::types::Member>) -> bool {
    match payload {
        EntryPayload::Normal(Command::Txn(txn)) => crate::txn::reads_history(txn),
        EntryPayload::Normal(_) => true,
        _ => false,
    }
}

/// Events a physical compaction step handles at once.
const COMPACTION_CHUNK: usize = 10_000;

/// State the state machine shares with readers, watchers and the lease table.
pub struct SmShared {
    data_dir: PathBuf,
    db: Arc<RwLock<Arc<DB>>>,
    /// Old generations waiting for their last reader.
    retired: Mutex<Vec<(Arc<DB>, PathBuf)>>,
    applied: watch::Sender<i64>,
    pub(crate) hub: WatchHub,
    pub(crate) lessor: Arc<Lessor>,
    /// Key ranges also held in memory (see [`crate::mirror`]).
    pub(crate) mirrors: Mirrors,
    snapshots: SnapshotStore,
    compactor: Worker<()>,
    /// Live keys (etcd's `etcd_debugging_mvcc_keys_total`), as of the last applied batch.
    pub(crate) live_keys: Gauge,
    /// 1 while a snapshot received from the leader is being installed.
    pub(crate) installing_snapshot: Gauge,
}

impl SmShared {
    /// The current state machine database.
    pub fn db(&self) -> Arc<DB> {
        self.db.read().clone()
    }

    /// The last applied revision.
    pub fn applied_revision(&self) -> i64 {
        *self.applied.borrow()
    }

    pub fn subscribe_applied(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    pub fn watch(self: &Arc<Self>, spec: WatchSpec) -> Result<Watcher> {
        Watcher::new(self.clone(), spec)
    }

    pub fn hub(&self) -> &WatchHub {
        &self.hub
    }

    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }

    /// Bytes on disk of the current database.
    pub fn disk_size(&self) -> u64 {
        crate::log_store::property_sum(&self.db(), &ALL_CFS)
    }

    /// Asks the background compactor to remove history below the horizon now.
    pub fn request_physical_compaction(&self) {
        let _ = self.compactor.send(());
    }

    /// Rewrites the database files to reclaim space (etcd's defragment).
    pub fn compact_disk(&self) -> Result<()> {
        let db = self.db();
        for name in ALL_CFS {
            if let Some(cf) = db.cf_handle(name) {
                db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
            }
        }
        Ok(())
    }

    /// A consistent checkpoint of the current database at `dest` (which must not exist).
    pub fn checkpoint_to(&self, dest: &Path) -> Result<()> {
        let db = self.db();
        Checkpoint::new(&db)
            .and_then(|c| c.create_checkpoint(dest))
            .map_err(|e| StoreError::storage("create checkpoint", e))
    }

    fn drop_unused_generations(&self) {
        let mut retired = self.retired.lock();
        retired.retain(|(db, path)| {
            if Arc::strong_count(db) > 1 {
                return true;
            }
            let _ = fs::remove_dir_all(path);
            false
        });
    }
}

pub struct StateMachine {
    shared: Arc<SmShared>,
    /// The live keys, for applying writes without reading history (see [`KeyIndex`]).
    index: KeyIndex,
}

impl StateMachine {
    /// Opens (or, for a brand-new member, creates) the state machine under `data_dir`.
    pub fn open(data_dir: &Path, create: bool, lessor: Arc<Lessor>) -> Result<StateMachine> {
        let state_dir = data_dir.join("state");
        let current_file = state_dir.join("CURRENT");
        let generation = match fs::read_to_string(&current_file) {
            Ok(name) => name.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir_all(&state_dir).map_err(|e| StoreError::storage("create state dir", e))?;
                let name = "sm-000001".to_string();
                write_current(&state_dir, &name)?;
                name
            }
            Err(e) => {
                return Err(StoreError::corrupt(format!(
                    "cannot read {}: {e}; the state machine is missing",
                    current_file.display()
                )));
            }
        };
        let path = state_dir.join(&generation);
        let db = open_db(&path, create)?;
        // Generations left behind by a crash mid-install.
        if let Ok(entries) = fs::read_dir(&state_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("sm-") && name != generation {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let view = View::live(&db);
        let revision = view.revision()?;
        lessor.reset(view.leases()?);
        let index = KeyIndex::build(&view)?;
        drop(view);
        let db = Arc::new(RwLock::new(Arc::new(db)));
        let compactor = spawn_compactor(Arc::downgrade(&db))?;
        let shared = Arc::new(SmShared {
            data_dir: data_dir.to_path_buf(),
            db,
            retired: Mutex::new(Vec::new()),
            applied: watch::channel(revision).0,
            hub: WatchHub::default(),
            lessor,
            mirrors: Mirrors::new(revision),
            snapshots: SnapshotStore::new(data_dir.join("snapshots"))?,
            compactor,
            live_keys: Gauge::default(),
            installing_snapshot: Gauge::default(),
        });
        shared.live_keys.set(index.len() as i64);
        shared.request_physical_compaction();
        Ok(StateMachine { shared, index })
    }

    /// Index of the newest snapshot this member holds.
    pub fn snapshot_index(&self) -> Result<Option<u64>> {
        Ok(self.shared.snapshots.current()?.and_then(|(meta, _)| meta.last_log_id.map(|l| l.index)))
    }

    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }

    /// Applies one entry into `pending`: its writes join the batch, the in-memory index moves
    /// on at once (later entries of the batch read it), and everything others can observe
    /// (the write, events, the applied revision, the reply) waits for [`Self::flush`].
    fn apply_entry(
        &mut self,
        db: &DB,
        log_id: &LogIdOf<TypeConfig>,
        payload: &EntryPayload<Command, u64, crate::types::Member>,
        pending: &mut Pending,
    ) -> Result<CommandResult> {
        let revision = log_id.index as i64;
        let mut applier = Applier::new(View::live(db), &self.index, &pending.values, revision);
        let outcome = match payload {
            EntryPayload::Blank => Ok(Outcome::Nothing),
            EntryPayload::Normal(command) => apply_command(&mut applier, command),
            EntryPayload::Membership(m) => {
                pending.membership = Some(StoredMembership::new(Some(*log_id), m.clone()));
                Ok(Outcome::Nothing)
            }
        };
        // A failed entry changes nothing.
        let applied = if outcome.is_ok() {
            applier.finish()
        } else {
            drop(applier);
            Applied::empty()
        };
        // An error that says something about this machine rather than about the request must
        // stop the member: applying differently from the others would fork the replicas.
        if let Err(e) = &outcome
            && !is_deterministic(e)
        {
            return Err(e.clone());
        }
        let Applied { batch, events, lease_effects, index_changes, values } = applied;
        pending.batch.extend(batch);
        pending.values.extend(values);
        self.index.update(index_changes);
        pending.lease_effects.extend(lease_effects);
        if !events.is_empty() {
            pending.revisions.push(RevisionEvents::new(revision, events));
        }
        pending.last_applied = Some(*log_id);
        if matches!(payload, EntryPayload::Normal(Command::Compact { .. })) && outcome.is_ok() {
            pending.compacted = true;
        }
        Ok(CommandResult { revision, outcome })
    }

    /// Writes the pending batch with the applied log id, then tells the world: lease table,
    /// watchers (revision by revision), the applied revision, and the waiting clients.
    fn flush(&mut self, db: &DB, pending: &mut Pending) -> Result<()> {
        let Some(last_applied) = pending.last_applied.take() else {
            return Ok(());
        };
        let meta = db.cf_handle(CF_META).ok_or_else(|| StoreError::corrupt("no meta column family"))?;
        let mut batch = std::mem::take(&mut pending.batch).into_write_batch(db)?;
        batch.put_cf(meta, META_APPLIED, to_bytes(&last_applied)?);
        if let Some(m) = pending.membership.take() {
            batch.put_cf(meta, META_MEMBERSHIP, to_bytes(&m)?);
        }
        // Readers of mirrored keys wait from the write until the mirror has the batch too, so
        // none sees the database ahead of the mirror.
        let mut mirror = self.shared.mirrors.update();
        db.write_opt(batch, &unlogged())?;
        mirror.apply(&pending.revisions, last_applied.index as i64);
        drop(mirror);
        pending.values.clear();
        for effect in pending.lease_effects.drain(..) {
            match effect {
                LeaseEffect::Granted { id, ttl } => self.shared.lessor.granted(id, ttl),
                LeaseEffect::Revoked { id } => self.shared.lessor.revoked(id),
            }
        }
        for events in pending.revisions.drain(..) {
            self.shared.hub.publish(HubMessage::Revision(Arc::new(events)));
        }
        self.shared.applied.send_replace(last_applied.index as i64);
        self.shared.live_keys.set(self.index.len() as i64);
        if std::mem::take(&mut pending.compacted) {
            self.shared.request_physical_compaction();
        }
        for (responder, result) in pending.replies.drain(..) {
            responder.send(result);
        }
        Ok(())
    }

    /// Takes a checkpoint of the live database while entries go on being applied. The flush a
    /// checkpoint needs (of whole memtables, tens of MiB under load) used to hold every apply,
    /// and so every write, for a second or more. No pause is needed for consistency: a flush
    /// of all column families is atomic (`atomic_flush`), and the applied log id and membership
    /// are written in the same batch as the data they cover, so the checkpoint's own, read back
    /// from it, describe exactly what it holds.
    fn build_snapshot_now(shared: &SmShared) -> Result<Snapshot> {
        let db = shared.db();
        let staged = shared.snapshots.staging_path("building");
        Checkpoint::new(&db)
            .and_then(|c| c.create_checkpoint(&staged))
            .map_err(|e| StoreError::storage("create snapshot checkpoint", e))?;
        drop(db);
        // Generations replaced by installed snapshots go once nothing reads them any more,
        // whether or not this build publishes a new snapshot.
        shared.drop_unused_generations();
        let meta = checkpoint_meta(&staged)?;
        if let Some((current, dir)) = shared.snapshots.current()?
            && current.last_log_id >= meta.last_log_id
        {
            // Nothing applied since the last snapshot, or a newer one was installed meanwhile.
            let _ = fs::remove_dir_all(&staged);
            return Ok(Snapshot { meta: current, snapshot: dir });
        }
        let dir = shared.snapshots.commit(&staged, &meta)?;
        Ok(Snapshot { meta, snapshot: dir })
    }

    /// Swaps in the state of a received snapshot; returns the index of its keys.
    fn install(shared: &SmShared, meta: &SnapshotMeta, data: &SnapshotDir) -> Result<KeyIndex> {
        let state_dir = shared.data_dir.join("state");
        let generation = next_generation(&state_dir)?;
        let path = state_dir.join(&generation);
        fs::create_dir_all(&path).map_err(|e| StoreError::storage("create generation dir", e))?;
        for (file, _) in list_files(&data.path)? {
            let from = data.path.join(&file);
            let to = path.join(&file);
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).map_err(|e| StoreError::storage(&format!("copy snapshot file {file}"), e))?;
            }
        }
        sync_dir(&path)?;
        let db = open_db(&path, false)?;
        let view = View::live(&db);
        if view.applied()? != meta.last_log_id {
            return Err(StoreError::corrupt(format!(
                "snapshot says it covers {:?} but its data is at {:?}",
                meta.last_log_id,
                view.applied()?
            )));
        }
        let revision = view.revision()?;
        let leases = view.leases()?;
        let index = KeyIndex::build(&view)?;
        drop(view);
        // Publish the installed state as this member's snapshot before switching to it: a
        // state machine ahead of the log is then always explained by a snapshot.
        let staged = shared.snapshots.staging_path(&SnapshotStore::name_for(meta));
        Checkpoint::new(&db)
            .and_then(|c| c.create_checkpoint(&staged))
            .map_err(|e| StoreError::storage("checkpoint installed snapshot", e))?;
        shared.snapshots.commit(&staged, meta)?;
        write_current(&state_dir, &generation)?;
        // The mirror takes in the snapshot under the same lock as the swap, so no reader sees
        // one of them installed and the other not.
        let mut mirror = shared.mirrors.update();
        mirror.reload(&View::live(&db), revision)?;
        let old = std::mem::replace(&mut *shared.db.write(), Arc::new(db));
        drop(mirror);
        let old_path = old.path().to_path_buf();
        shared.retired.lock().push((old, old_path));
        if data.path.starts_with(shared.data_dir.join("incoming")) {
            let _ = fs::remove_dir_all(&data.path);
        }

        shared.lessor.reset(leases);
        shared.hub.publish(HubMessage::Resync);
        shared.applied.send_replace(revision);
        shared.drop_unused_generations();
        shared.request_physical_compaction();
        Ok(index)
    }
}

fn apply_command(applier: &mut Applier<'_>, command: &Command) -> Result<Outcome> {
    match command {
        Command::Txn(txn) => applier.txn(txn).map(Outcome::Txn),
        Command::Compact { revision } => applier.compact(*revision).map(|_| Outcome::Compacted),
        Command::LeaseGrant { id, ttl } => {
            applier.lease_grant(*id, *ttl).map(|_| Outcome::LeaseGranted { id: *id, ttl: *ttl })
        }
        Command::LeaseRevoke { id } => applier.lease_revoke(*id).map(|_| Outcome::LeaseRevoked),
    }
}

/// Errors every member reaches the same way from the same log.
fn is_deterministic(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Compacted { .. }
            | StoreError::FutureRevision
            | StoreError::LeaseNotFound
            | StoreError::LeaseExists
            | StoreError::KeyNotFound
            | StoreError::InvalidArgument(_)
    )
}

/// The state machine writes without its own write-ahead log: the Raft log is that log. After
/// a crash the database comes back as of its last flush (atomic across column families) and
/// openraft re-applies the committed entries after it, which are still in the Raft log because
/// the log is only purged behind snapshots, and taking a snapshot flushes.
fn unlogged() -> rocksdb::WriteOptions {
    let mut opts = rocksdb::WriteOptions::default();
    opts.disable_wal(true);
    opts
}

pub(crate) fn open_db(path: &Path, create: bool) -> Result<DB> {
    let mut opts = Options::default();
    opts.set_atomic_flush(true);
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_paranoid_checks(true);
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    opts.set_max_background_jobs(2);
    let cache = Cache::new_lru_cache(64 << 20);
    let cfs = ALL_CFS.map(|name| {
        let mut cf_opts = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        if name == mvcc::CF_KV {
            table.set_bloom_filter(10.0, false);
        }
        cf_opts.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(name, cf_opts)
    });
    DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| StoreError::opening("the state machine", path, e))
}

fn write_current(state_dir: &Path, generation: &str) -> Result<()> {
    let tmp = state_dir.join("CURRENT.tmp");
    fs::write(&tmp, generation).map_err(|e| StoreError::storage("write state CURRENT", e))?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| StoreError::storage("sync state CURRENT", e))?;
    fs::rename(&tmp, state_dir.join("CURRENT")).map_err(|e| StoreError::storage("publish state CURRENT", e))?;
    sync_dir(state_dir)
}

fn next_generation(state_dir: &Path) -> Result<String> {
    let mut highest = 0u64;
    for entry in fs::read_dir(state_dir).map_err(|e| StoreError::storage("list state dir", e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("sm-").and_then(|n| n.parse::<u64>().ok()) {
            highest = highest.max(n);
        }
    }
    Ok(format!("sm-{:06}", highest + 1))
}

/// One thread removes compacted history, whenever a compaction (or an install) asks for it.
/// It sees the current database through a weak handle, so it never keeps one alive.
fn spawn_compactor(db: std::sync::Weak<RwLock<Arc<DB>>>) -> Result<Worker<()>> {
    Worker::spawn("mvcc-compactor", move |wanted: std::sync::mpsc::Receiver<()>| {
        while wanted.recv().is_ok() {
            while wanted.try_recv().is_ok() {}
            let Some(current) = db.upgrade() else { return };
            let db = current.read().clone();
            drop(current);
            let result = View::live(&db).compacted().and_then(|h| mvcc::compact_physical(&db, h, COMPACTION_CHUNK));
            if let Err(e) = result {
                tracing::error!(error = %e, "physical compaction failed");
            }
        }
    })
}

fn io_err(e: StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

async fn blocking<T, F>(f: F) -> std::result::Result<T, io::Error>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("state machine task failed: {e}")))?
        .map_err(io_err)
}

/// Takes the snapshot in openraft's builder task, beside the applies (see
/// [`StateMachine::build_snapshot_now`]).
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotDir;

    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot, io::Error> {
        let shared = self.shared.clone();
        blocking(move || StateMachine::build_snapshot_now(&shared)).await
    }
}

/// The applied log id and membership a checkpoint holds, read from it.
fn checkpoint_meta(path: &Path) -> Result<SnapshotMeta> {
    let db = DB::open_cf_for_read_only(&Options::default(), path, ALL_CFS, false)
        .map_err(|e| StoreError::storage("open the snapshot checkpoint", e))?;
    let view = View::live(&db);
    Ok(SnapshotMeta { last_log_id: view.applied()?, last_membership: view.membership()? })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotDir;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let db = self.shared.db();
        let view = View::live(&db);
        Ok((view.applied().map_err(io_err)?, view.membership().map_err(io_err)?))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> std::result::Result<(), io::Error>
    where
        Strm: Stream<Item = std::result::Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let db = self.shared.db();
        let mut pending = Pending::default();
        while let Some((entry, responder)) = entries.try_next().await? {
            // Entries that read state the batch may not show yet get a write of their own.
            let alone = needs_own_write(&entry.payload);
            if alone {
                self.flush(&db, &mut pending).map_err(io_err)?;
            }
            let result = self.apply_entry(&db, &entry.log_id, &entry.payload, &mut pending).map_err(io_err)?;
            if let Some(responder) = responder {
                pending.replies.push((responder, result));
            }
            if alone || pending.batch.len() >= MAX_BATCH_WRITES {
                self.flush(&db, &mut pending).map_err(io_err)?;
            }
        }
        self.flush(&db, &mut pending).map_err(io_err)
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone() }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotDir,
    ) -> std::result::Result<(), io::Error> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        self.shared.installing_snapshot.inc();
        let installed = blocking(move || StateMachine::install(&shared, &meta, &snapshot)).await;
        self.shared.installing_snapshot.dec();
        self.index = installed?;
        self.shared.live_keys.set(self.index.len() as i64);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> std::result::Result<Option<Snapshot>, io::Error> {
        Ok(self.shared.snapshots.current().map_err(io_err)?.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Answers an etcd range from a consistent view of the current database.
pub fn range(shared: &SmShared, req: &pb::RangeRequest) -> Result<(pb::RangeResponse, i64)> {
    range_within(shared, req, usize::MAX, usize::MAX)?
        .ok_or_else(|| StoreError::Internal("an unbounded range ran out of budget".into()))
}

/// [`range`], or `None` once it would visit more than `max_records` records or `max_bytes`
/// bytes of them.
pub fn range_within(
    shared: &SmShared,
    req: &pb::RangeRequest,
    max_records: usize,
    max_bytes: usize,
) -> Result<Option<(pb::RangeResponse, i64)>> {
    let db = shared.db();
    let view = View::snapshot(&db);
    let current = view.revision()?;
    let revision = if req.revision > 0 { req.revision } else { current };
    view.check_readable(revision)?;
    Ok(view.range_within(req, revision, max_records, max_bytes)?.map(|response| (response, current)))
}
