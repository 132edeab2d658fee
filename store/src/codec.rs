//! Value layouts of the MVCC column families, and postcard helpers for everything else.

use keel_proto::mvccpb::{self, KeyValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StoreError};

const LIVE: u8 = 1;
const TOMBSTONE: u8 = 2;

/// One version of a key as stored in the `kv` column family. The key and its revision live
/// in the RocksDB key; this is the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    Live {
        create_revision: i64,
        version: i64,
        lease: i64,
        value: Vec<u8>,
    },
    /// The key was deleted at this revision.
    Tombstone,
}

impl Version {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Version::Live { create_revision, version, lease, value } => {
                let mut out = Vec::with_capacity(25 + value.len());
                out.push(LIVE);
                out.extend_from_slice(&create_revision.to_be_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&lease.to_be_bytes());
                out.extend_from_slice(value);
                out
            }
            Version::Tombstone => vec![TOMBSTONE],
        }
    }

    pub fn decode(raw: &[u8], user_key: &[u8]) -> Result<Version> {
        let bad =
            |what: &str| StoreError::corrupt(format!("value of key {:?}: {what}", String::from_utf8_lossy(user_key)));
        match raw.first() {
            Some(&TOMBSTONE) if raw.len() == 1 => Ok(Version::Tombstone),
            Some(&LIVE) if raw.len() >= 25 => {
                let int = |at: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&raw[at..at + 8]);
                    i64::from_be_bytes(b)
                };
                Ok(Version::Live {
                    create_revision: int(1),
                    version: int(9),
                    lease: int(17),
                    value: raw[25..].to_vec(),
                })
            }
            Some(_) => Err(bad("unknown record kind or short record")),
            None => Err(bad("empty record")),
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self, Version::Live { .. })
    }

    /// Whether an encoded record is a live version, checked as strictly as `decode` checks
    /// it but without copying the value: what counting a range needs.
    pub fn is_live_record(raw: &[u8], user_key: &[u8]) -> Result<bool> {
        match raw.first() {
            Some(&TOMBSTONE) if raw.len() == 1 => Ok(false),
            Some(&LIVE) if raw.len() >= 25 => Ok(true),
            Some(_) => Err(StoreError::corrupt(format!(
                "value of key {:?}: unknown record kind or short record",
                String::from_utf8_lossy(user_key)
            ))),
            None => {
                Err(StoreError::corrupt(format!("value of key {:?}: empty record", String::from_utf8_lossy(user_key))))
            }
        }
    }

    /// The etcd record for this version, moving the value; `None` for a tombstone.
    pub fn into_key_value(self, user_key: &[u8], mod_revision: i64) -> Option<KeyValue> {
        match self {
            Version::Live { create_revision, version, lease, value } => {
                Some(KeyValue { key: user_key.to_vec(), create_revision, mod_revision, version, value, lease })
            }
            Version::Tombstone => None,
        }
    }

    /// The etcd record for this version, or `None` for a tombstone.
    pub fn to_key_value(&self, user_key: &[u8], mod_revision: i64) -> Option<KeyValue> {
        match self {
            Version::Live { create_revision, version, lease, value } => Some(KeyValue {
                key: user_key.to_vec(),
                create_revision: *create_revision,
                mod_revision,
                version: *version,
                value: value.clone(),
                lease: *lease,
            }),
            Version::Tombstone => None,
        }
    }
}

/// The event index entry: which key changed at a revision, and how.
pub fn encode_event(kind: mvccpb::event::EventType, user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + user_key.len());
    out.push(kind as u8);
    out.extend_from_slice(user_key);
    out
}

pub fn decode_event(raw: &[u8]) -> Result<(mvccpb::event::EventType, Vec<u8>)> {
    let kind = match raw.first() {
        Some(0) => mvccpb::event::EventType::Put,
        Some(1) => mvccpb::event::EventType::Delete,
        _ => return Err(StoreError::corrupt(format!("event record {raw:?}: unknown kind"))),
    };
    Ok((kind, raw[1..].to_vec()))
}

pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Internal(format!("encode: {e}")))
}

/// Decodes `raw`; `what` names the record in the error so corruption can be located.
pub fn from_bytes<T: DeserializeOwned>(raw: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(raw).map_err(|e| StoreError::corrupt(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_corruption_is_named() {
        let live = Version::Live { create_revision: 3, version: 2, lease: -1, value: b"v".to_vec() };
        assert_eq!(Version::decode(&live.encode(), b"k").unwrap(), live);
        assert_eq!(Version::decode(&Version::Tombstone.encode(), b"k").unwrap(), Version::Tombstone);
        let err = Version::decode(&[LIVE, 1, 2], b"some/key").unwrap_err();
        assert!(err.to_string().contains("some/key"), "{err}");
    }
}
