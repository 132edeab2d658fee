//! Snapshots: RocksDB checkpoints of the state machine, kept under `snapshots/`, shipped to
//! other members file by file in chunks, and installed by swapping in a new database.

use std::fs;
use std::path::{Path, PathBuf};

use openraft::alias::SnapshotMetaOf;
use serde::{Deserialize, Serialize};

use crate::codec::{from_bytes, to_bytes};
use crate::error::{Result, StoreError};
use crate::types::TypeConfig;

pub type SnapshotMeta = SnapshotMetaOf<TypeConfig>;

/// A snapshot's data: the directory of a RocksDB checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDir {
    pub path: PathBuf,
}

/// What the sender announces before the files of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub vote: openraft::alias::VoteOf<TypeConfig>,
    pub meta: SnapshotMeta,
    /// Every file of the checkpoint and its size; the receiver checks it got exactly these.
    pub files: Vec<(String, u64)>,
}

/// Lists the files of a checkpoint directory (it has no subdirectories).
pub fn list_files(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::storage(&format!("list {}", dir.display()), e))? {
        let entry = entry.map_err(|e| StoreError::storage("read snapshot dir", e))?;
        let meta = entry.metadata().map_err(|e| StoreError::storage("stat snapshot file", e))?;
        if meta.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// The snapshots directory of a member: `<index>-<term>-<node>` checkpoint directories, each
/// with a `<name>.meta` file written after the checkpoint is complete.
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn new(dir: PathBuf) -> Result<SnapshotStore> {
        fs::create_dir_all(&dir).map_err(|e| StoreError::storage(&format!("create {}", dir.display()), e))?;
        // Half-written checkpoints from a crash are useless.
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::storage("list snapshots", e))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(SnapshotStore { dir })
    }

    pub fn name_for(meta: &SnapshotMeta) -> String {
        match &meta.last_log_id {
            Some(l) => format!("{:020}-{}", l.index, l.leader_id),
            None => "00000000000000000000-none".to_string(),
        }
    }

    /// A fresh path to build a checkpoint at; [`SnapshotStore::commit`] publishes it.
    pub fn staging_path(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!(".tmp-{name}"));
        let _ = fs::remove_dir_all(&path);
        path
    }

    /// Publishes a finished checkpoint as the snapshot `meta` describes and drops older ones.
    pub fn commit(&self, staged: &Path, meta: &SnapshotMeta) -> Result<SnapshotDir> {
        let name = Self::name_for(meta);
        let final_path = self.dir.join(&name);
        if final_path.exists() {
            fs::remove_dir_all(&final_path).map_err(|e| StoreError::storage("replace snapshot", e))?;
        }
        fs::rename(staged, &final_path).map_err(|e| StoreError::storage("publish snapshot", e))?;
        let meta_path = self.dir.join(format!("{name}.meta"));
        let tmp_meta = self.dir.join(format!(".tmp-{name}.meta"));
        fs::write(&tmp_meta, to_bytes(meta)?).map_err(|e| StoreError::storage("write snapshot meta", e))?;
        fs::rename(&tmp_meta, &meta_path).map_err(|e| StoreError::storage("publish snapshot meta", e))?;
        sync_dir(&self.dir)?;
        self.prune(&name);
        Ok(SnapshotDir { path: final_path })
    }

    /// Keeps the newest snapshot and the one before it (a peer may still be receiving it).
    fn prune(&self, newest: &str) {
        let mut names = self.names();
        names.retain(|n| n.as_str() != newest);
        names.sort();
        let keep_previous = names.pop();
        for name in names {
            let _ = fs::remove_file(self.dir.join(format!("{name}.meta")));
            let _ = fs::remove_dir_all(self.dir.join(&name));
        }
        drop(keep_previous);
    }

    fn names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".meta").filter(|n| !n.starts_with(".tmp-")).map(str::to_string)
            })
            .collect()
    }

    /// The newest complete snapshot.
    pub fn current(&self) -> Result<Option<(SnapshotMeta, SnapshotDir)>> {
        let Some(name) = self.names().into_iter().max() else {
            return Ok(None);
        };
        let raw = fs::read(self.dir.join(format!("{name}.meta")))
            .map_err(|e| StoreError::storage("read snapshot meta", e))?;
        let meta: SnapshotMeta = from_bytes(&raw, &format!("snapshot meta {name}"))?;
        let path = self.dir.join(&name);
        if !path.is_dir() {
            return Err(StoreError::corrupt(format!("snapshot {name} has metadata but no data directory")));
        }
        Ok(Some((meta, SnapshotDir { path })))
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::storage(&format!("sync {}", dir.display()), e))
}
