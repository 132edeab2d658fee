//! The Raft log on RocksDB: entries in the `logs` column family keyed by big-endian index,
//! vote / committed / last-purged in `meta`.
//!
//! Durability: vote, truncate and purge are written with `sync` before they return. Appends are
//! written to RocksDB at once (so they are readable, as openraft requires) and acknowledged
//! after a dedicated flusher thread has fsynced the write-ahead log; one fsync covers every
//! append that arrived while the previous one ran (group commit).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use keel_prometheus::Histogram;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::codec::{from_bytes, to_bytes};
use crate::error::{Result, StoreError};
use crate::keys::{decode_index_key, index_key};
use crate::types::TypeConfig;
use crate::worker::Worker;

/// etcd's buckets for `etcd_disk_wal_fsync_duration_seconds`: 1 ms to 8 s, doubling.
pub const WAL_FSYNC_BUCKETS: &[f64] =
    &[0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: Arc<Worker<IOFlushed<TypeConfig>>>,
    /// How long each sync of the log took: etcd's WAL fsync, which operators watch for a
    /// disk too slow for Raft.
    fsyncs: Arc<Histogram>,
}

impl LogStore {
    /// Opens the log at `path`. `create` is true only for a brand-new member: an existing
    /// member whose log is missing is refused rather than silently started empty.
    pub fn open(path: &Path, create: bool) -> Result<LogStore> {
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(create);
        opts.set_paranoid_checks(true);
        // A torn tail from a crash is dropped (those writes were never acknowledged); damage
        // before the tail fails the open.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        opts.set_max_total_wal_size(64 << 20);
        let cfs = [CF_LOGS, CF_META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| StoreError::opening("the Raft log", path, e))?;
        let db = Arc::new(db);
        let fsyncs = Arc::new(Histogram::new(WAL_FSYNC_BUCKETS));
        let flusher = Arc::new(spawn_flusher(db.clone(), fsyncs.clone())?);
        let store = LogStore { db, flusher, fsyncs };
        // Every entry must decode and sit at the index its key says.
        store.check_integrity()?;
        Ok(store)
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| StoreError::corrupt(format!("Raft log has no `{name}` column family")))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        let raw = self.db.get_cf(self.cf(CF_META)?, key)?;
        raw.map(|raw| from_bytes(&raw, &format!("raft meta {}", String::from_utf8_lossy(key)))).transpose()
    }

    fn put_meta_synced<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META)?, key, to_bytes(value)?);
        self.write_synced(batch)?;
        Ok(())
    }

    /// Writes `batch` and syncs the log to disk before returning.
    fn write_synced(&self, batch: WriteBatch) -> std::result::Result<(), rocksdb::Error> {
        let started = Instant::now();
        let result = self.db.write_opt(batch, &synced());
        self.fsyncs.observe(started.elapsed());
        result
    }

    fn last_entry(&self) -> Result<Option<Entry>> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOGS)?, IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                Ok(Some(decode_entry(&key, &value)?))
            }
        }
    }

    fn first_index(&self) -> Result<Option<u64>> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOGS)?, IteratorMode::Start);
        match it.next() {
            None => Ok(None),
            Some(item) => Ok(Some(decode_index_key(&item?.0)?)),
        }
    }

    /// The log must be contiguous from just after the last purged entry to the last entry, and
    /// must reach the committed index this member persisted.
    fn check_integrity(&self) -> Result<()> {
        let purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let committed: Option<LogId> = self.get_meta(KEY_COMMITTED)?;
        let _vote: Option<Vote> = self.get_meta(KEY_VOTE)?;
        let last = self.last_entry()?.map(|e| e.index());
        let first = self.first_index()?;
        let purged_index = purged.as_ref().map(|p| p.index());
        let last_known = last.or(purged_index);
        if let (Some(first), Some(purged)) = (first, purged_index)
            && first > purged + 1
        {
            return Err(StoreError::corrupt(format!(
                "Raft log starts at {first} but only entries up to {purged} were purged: entries are missing"
            )));
        }
        if let Some(c) = &committed
            && last_known.is_none_or(|l| l < c.index())
        {
            return Err(StoreError::corrupt(format!(
                "Raft log ends at {last_known:?} but entry {} was committed here: the log was truncated",
                c.index()
            )));
        }
        if let (Some(first), Some(last)) = (first, last) {
            let count = self.db.iterator_cf(self.cf(CF_LOGS)?, IteratorMode::Start).count() as u64;
            if count != last - first + 1 {
                return Err(StoreError::corrupt(format!(
                    "Raft log from {first} to {last} holds {count} entries: entries are missing"
                )));
            }
        }
        Ok(())
    }

    /// Index of the last entry, or of the last purged one when the log is empty.
    pub fn last_index(&self) -> Result<Option<u64>> {
        let purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = self.last_entry()?.map(|e| e.index());
        Ok(last.max(purged.map(|p| p.index())))
    }

    pub fn read_committed_index(&self) -> Result<Option<u64>> {
        Ok(self.get_meta::<LogId>(KEY_COMMITTED)?.map(|l| l.index()))
    }

    /// Size on disk, for status reporting.
    pub fn disk_size(&self) -> u64 {
        property_sum(&self.db, &[CF_LOGS, CF_META])
    }

    /// Durations of the log's syncs to disk: appends' group commits, votes, truncations and
    /// purges.
    pub fn fsync_durations(&self) -> &Histogram {
        &self.fsyncs
    }
}

/// Sum of live SST and memtable sizes over the named column families.
pub(crate) fn property_sum(db: &DB, cfs: &[&str]) -> u64 {
    cfs.iter()
        .filter_map(|name| db.cf_handle(name))
        .map(|cf| {
            let sst = db.property_int_value_cf(cf, "rocksdb.total-sst-files-size").ok().flatten().unwrap_or(0);
            let mem = db.property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
            sst + mem
        })
        .sum()
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry> {
    let index = decode_index_key(key)?;
    let entry: Entry = from_bytes(value, &format!("Raft log entry {index}"))?;
    if entry.index() != index {
        return Err(StoreError::corrupt(format!("Raft log entry stored at {index} says it is {}", entry.index())));
    }
    Ok(entry)
}

/// One thread that fsyncs the write-ahead log for every append waiting on it.
fn spawn_flusher(db: Arc<DB>, fsyncs: Arc<Histogram>) -> Result<Worker<IOFlushed<TypeConfig>>> {
    Worker::spawn("raft-log-fsync", move |rx: std_mpsc::Receiver<IOFlushed<TypeConfig>>| {
        while let Ok(first) = rx.recv() {
            let mut waiting = vec![first];
            waiting.extend(rx.try_iter());
            let started = Instant::now();
            let result = db.flush_wal(true);
            fsyncs.observe(started.elapsed());
            for callback in waiting {
                callback.io_completed(result.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string())));
            }
        }
    })
}

fn io_err(e: StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let cf = self.cf(CF_LOGS).map_err(io_err)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&index_key(start), Direction::Forward)) {
            let (key, value) = item.map_err(|e| io::Error::other(e.to_string()))?;
            let index = decode_index_key(&key).map_err(io_err)?;
            if !range.contains(&index) {
                break;
            }
            out.push(decode_entry(&key, &value).map_err(io_err)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE).map_err(io_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED).map_err(io_err)?;
        let last_log_id = self.last_entry().map_err(io_err)?.map(|e| e.log_id()).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), io::Error> {
        self.put_meta_synced(KEY_VOTE, vote).map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> std::result::Result<(), io::Error> {
        // Not synced: a committed index that falls back after a crash is learned again from
        // the leader, and losing it never breaks safety.
        let cf = self.cf(CF_META).map_err(io_err)?;
        match committed {
            Some(c) => self.db.put_cf(cf, KEY_COMMITTED, to_bytes(&c).map_err(io_err)?),
            None => self.db.delete_cf(cf, KEY_COMMITTED),
        }
        .map_err(|e| io::Error::other(e.to_string()))
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, io::Error> {
        self.get_meta(KEY_COMMITTED).map_err(io_err)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> std::result::Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.cf(CF_LOGS).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, index_key(entry.index()), to_bytes(&entry).map_err(io_err)?);
        }
        self.db.write(batch).map_err(|e| io::Error::other(e.to_string()))?;
        if let Err(callback) = self.flusher.send(callback) {
            callback.io_completed(Err(io::Error::other("the Raft log flusher has stopped")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> std::result::Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let cf = self.cf(CF_LOGS).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(from), index_key(u64::MAX));
        self.write_synced(batch).map_err(|e| io::Error::other(e.to_string()))
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), io::Error> {
        // The purged marker goes first: entries at or below it are ignored from then on, so a
        // crash between the two writes leaves nothing inconsistent.
        self.put_meta_synced(KEY_LAST_PURGED, &log_id).map_err(io_err)?;
        let cf = self.cf(CF_LOGS).map_err(io_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(0), index_key(log_id.index() + 1));
        self.write_synced(batch).map_err(|e| io::Error::other(e.to_string()))
    }
}
