//! A member's identity on disk (`member.json`) and views of the cluster's membership.

use std::fs;
use std::path::Path;

use openraft::alias::StoredMembershipOf;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::snapshot::sync_dir;
use crate::types::{Member, NodeId, TypeConfig};

const IDENTITY_FILE: &str = "member.json";
const FORMAT: u32 = 1;

/// Which cluster a data directory belongs to and who it is there. Written once, when the
/// member is created; a data directory without it is not served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub cluster_id: u64,
    pub member_id: NodeId,
    pub name: String,
}

impl Identity {
    pub fn new(cluster_id: u64, member_id: NodeId, name: &str) -> Identity {
        Identity { format: FORMAT, cluster_id, member_id, name: name.to_string() }
    }

    /// `None` for a directory that holds no member yet.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>> {
        let path = data_dir.join(IDENTITY_FILE);
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::storage(&format!("read {}", path.display()), e)),
        };
        let identity: Identity = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::corrupt(format!("{} is damaged: {e}", path.display())))?;
        if identity.format != FORMAT {
            return Err(StoreError::corrupt(format!(
                "{} has format {}, this keel reads format {FORMAT}",
                path.display(),
                identity.format
            )));
        }
        Ok(Some(identity))
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        fs::create_dir_all(data_dir).map_err(|e| StoreError::storage("create data dir", e))?;
        let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
        let body = serde_json::to_vec_pretty(self).map_err(|e| StoreError::Internal(e.to_string()))?;
        fs::write(&tmp, body).map_err(|e| StoreError::storage("write member.json", e))?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| StoreError::storage("sync member.json", e))?;
        fs::rename(&tmp, data_dir.join(IDENTITY_FILE)).map_err(|e| StoreError::storage("publish member.json", e))?;
        sync_dir(data_dir)
    }
}

/// One member as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub member: Member,
    pub is_learner: bool,
}

/// Voters then learners, each in id order.
pub fn members_of(membership: &StoredMembershipOf<TypeConfig>) -> Vec<MemberInfo> {
    let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut out: Vec<MemberInfo> = membership
        .nodes()
        .map(|(id, member)| MemberInfo { id: *id, member: member.clone(), is_learner: !voters.contains(id) })
        .collect();
    out.sort_by_key(|m| (m.is_learner, m.id));
    out
}
