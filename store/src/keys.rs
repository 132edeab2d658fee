//! Byte layouts of the keys the store writes to RocksDB.
//!
//! Every numeric part is big-endian so that RocksDB's byte order is numeric order. User keys
//! are escaped (`0x00` becomes `0x00 0xFF`) and terminated by `0x00 0x00`, which keeps the
//! order of user keys and lets a revision follow a key of any length.

use crate::error::{Result, StoreError};

/// Appends the order-preserving encoding of `user_key` to `out`.
pub fn encode_user_key(user_key: &[u8], out: &mut Vec<u8>) {
    out.reserve(user_key.len() + 2);
    for &b in user_key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The encoded key alone: every version of `user_key` sorts at or after it, and every
/// version of a smaller key sorts before it.
pub fn user_key_prefix(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 2);
    encode_user_key(user_key, &mut out);
    out
}

/// Key of one version of `user_key` in the `kv` column family. Newer revisions sort first.
pub fn version_key(user_key: &[u8], revision: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 10);
    encode_user_key(user_key, &mut out);
    out.extend_from_slice(&inverted(revision).to_be_bytes());
    out
}

/// Splits a `kv` column family key into the user key and the revision.
pub fn decode_version_key(raw: &[u8]) -> Result<(Vec<u8>, i64)> {
    let (user_key, rest) = decode_user_key(raw)?;
    let rev: [u8; 8] =
        rest.try_into().map_err(|_| StoreError::corrupt(format!("kv key {raw:?}: revision is not 8 bytes")))?;
    Ok((user_key, inverted_back(u64::from_be_bytes(rev))))
}

/// Decodes an escaped user key, returning it and the bytes after its terminator.
pub fn decode_user_key(raw: &[u8]) -> Result<(Vec<u8>, &[u8])> {
    let mut key = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != 0 {
            key.push(b);
            i += 1;
            continue;
        }
        match raw.get(i + 1) {
            Some(0xFF) => {
                key.push(0);
                i += 2;
            }
            Some(0) => return Ok((key, &raw[i + 2..])),
            _ => return Err(StoreError::corrupt(format!("key {raw:?}: bad escape at byte {i}"))),
        }
    }
    Err(StoreError::corrupt(format!("key {raw:?}: missing terminator")))
}

fn inverted(revision: i64) -> u64 {
    u64::MAX - revision as u64
}

fn inverted_back(stored: u64) -> i64 {
    (u64::MAX - stored) as i64
}

/// Key of the `sub`-th event at `revision` in the `events` column family.
pub fn event_key(revision: i64, sub: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(revision as u64).to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

pub fn decode_event_key(raw: &[u8]) -> Result<(i64, u32)> {
    if raw.len() != 12 {
        return Err(StoreError::corrupt(format!("event key {raw:?} is not 12 bytes")));
    }
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&raw[..8]);
    let mut sub = [0u8; 4];
    sub.copy_from_slice(&raw[8..]);
    Ok((u64::from_be_bytes(rev) as i64, u32::from_be_bytes(sub)))
}

/// Key of a lease in the `leases` column family.
pub fn lease_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

/// Key tying `user_key` to lease `id` in the `lease_keys` column family.
pub fn lease_attachment_key(id: i64, user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + user_key.len());
    out.extend_from_slice(&lease_key(id));
    out.extend_from_slice(user_key);
    out
}

/// Big-endian `u64` key, as used for Raft log indexes.
pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn decode_index_key(raw: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = raw.try_into().map_err(|_| StoreError::corrupt(format!("log key {raw:?} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The smallest key greater than every key that starts with `prefix`, or `None` when no such
/// key exists (the prefix is all `0xFF`). This is etcd's "prefix end".
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An etcd key range: `range_end` empty means the single key, `[0]` means every key from `key`
/// on, anything else is the half-open range `[key, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    Single(Vec<u8>),
    From(Vec<u8>),
    Between(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            [0] => KeyRange::From(key.to_vec()),
            end => KeyRange::Between(key.to_vec(), end.to_vec()),
        }
    }

    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Single(k) | KeyRange::From(k) | KeyRange::Between(k, _) => k,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => key == k.as_slice(),
            KeyRange::From(k) => key >= k.as_slice(),
            KeyRange::Between(k, end) => key >= k.as_slice() && key < end.as_slice(),
        }
    }

    /// Whether the two ranges share a key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        let (a_start, a_end) = self.bounds();
        let (b_start, b_end) = other.bounds();
        let a_before_b_ends = b_end.as_ref().is_none_or(|end| a_start < end.as_slice());
        let b_before_a_ends = a_end.as_ref().is_none_or(|end| b_start < end.as_slice());
        a_before_b_ends && b_before_a_ends
    }

    /// Start (inclusive) and end (exclusive, `None` for unbounded).
    fn bounds(&self) -> (&[u8], Option<Vec<u8>>) {
        match self {
            KeyRange::Single(k) => {
                let mut end = k.clone();
                end.push(0);
                (k, Some(end))
            }
            KeyRange::From(k) => (k, None),
            KeyRange::Between(k, end) => (k, Some(end.clone())),
        }
    }

    /// Exclusive upper bound in the encoded `kv` key space, `None` when unbounded.
    pub fn encoded_upper_bound(&self) -> Option<Vec<u8>> {
        match self {
            KeyRange::Single(k) => {
                let mut next = k.clone();
                next.push(0);
                Some(user_key_prefix(&next))
            }
            KeyRange::From(_) => None,
            KeyRange::Between(_, end) => Some(user_key_prefix(end)),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Between(k, end) if end <= k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_preserves_key_order_across_revisions() {
        let keys: Vec<&[u8]> = vec![b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00", b"a\x00b", b"ab", b"b"];
        let mut encoded = Vec::new();
        for k in &keys {
            for rev in [1i64, 7, i64::MAX - 1] {
                encoded.push((version_key(k, rev), k.to_vec(), rev));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let order: Vec<(Vec<u8>, i64)> = sorted.iter().map(|(_, k, r)| (k.clone(), *r)).collect();
        let mut expected: Vec<(Vec<u8>, i64)> = encoded.iter().map(|(_, k, r)| (k.clone(), *r)).collect();
        // Keys ascending, revisions descending within a key.
        expected.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        assert_eq!(order, expected);
        for (raw, k, rev) in &encoded {
            assert_eq!(decode_version_key(raw).unwrap(), (k.clone(), *rev));
        }
    }

    #[test]
    fn upper_bound_excludes_exactly_the_keys_past_the_range() {
        let range = KeyRange::new(b"a", b"b");
        let bound = range.encoded_upper_bound().unwrap();
        assert!(version_key(b"a\xff\xff", 1) < bound);
        assert!(version_key(b"b", i64::MAX - 1) >= bound);
        let single = KeyRange::new(b"a", b"");
        let bound = single.encoded_upper_bound().unwrap();
        assert!(version_key(b"a", 1) < bound);
        assert!(version_key(b"a\x00", i64::MAX - 1) >= bound);
    }

    #[test]
    fn corrupt_keys_are_errors() {
        assert!(decode_user_key(b"abc").is_err());
        assert!(decode_user_key(b"a\x00\x07").is_err());
        assert!(decode_version_key(&user_key_prefix(b"a")).is_err());
    }

    #[test]
    fn prefix_end_and_overlap() {
        assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        let r = |k: &[u8], e: &[u8]| KeyRange::new(k, e);
        assert!(r(b"a", b"c").overlaps(&r(b"b", b"")));
        assert!(!r(b"a", b"b").overlaps(&r(b"b", b"")));
        assert!(r(b"a", b"\x00").overlaps(&r(b"zzz", b"")));
        assert!(!r(b"b", b"").overlaps(&r(b"a", b"b")));
        assert!(r(b"a", b"").overlaps(&r(b"a", b"")));
    }
}
