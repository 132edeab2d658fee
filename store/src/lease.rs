//! The in-memory lease table. Every member keeps it in step with the applied log; only the
//! leader's deadlines matter: it renews leases on keep-alive and proposes the revocation of
//! those that expire. A new leader restarts every deadline at a full TTL, as etcd does, so a
//! leader change never expires a lease early.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::mvcc::LeaseRecord;

/// etcd's upper bound on a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone)]
struct LeaseState {
    ttl: i64,
    expiry: Instant,
    /// A revocation for it has been proposed and not yet applied.
    revoking: bool,
}

pub struct Lessor {
    leases: Mutex<HashMap<i64, LeaseState>>,
    /// TTLs below this are raised to it: a lease must outlive an election.
    pub min_ttl: i64,
}

impl Lessor {
    pub fn new(min_ttl: i64) -> Lessor {
        Lessor { leases: Mutex::new(HashMap::new()), min_ttl }
    }

    fn deadline(ttl: i64) -> Instant {
        Instant::now() + Duration::from_secs(ttl.max(0) as u64)
    }

    /// Replaces the table with the leases of a freshly opened or installed state machine.
    pub fn reset(&self, leases: Vec<(i64, LeaseRecord)>) {
        let mut table = self.leases.lock();
        table.clear();
        for (id, record) in leases {
            table.insert(id, LeaseState { ttl: record.ttl, expiry: Self::deadline(record.ttl), revoking: false });
        }
    }

    pub fn granted(&self, id: i64, ttl: i64) {
        self.leases.lock().insert(id, LeaseState { ttl, expiry: Self::deadline(ttl), revoking: false });
    }

    pub fn revoked(&self, id: i64) {
        self.leases.lock().remove(&id);
    }

    /// This member became leader: every lease gets a full TTL from now.
    pub fn promote(&self) {
        for lease in self.leases.lock().values_mut() {
            lease.expiry = Self::deadline(lease.ttl);
            lease.revoking = false;
        }
    }

    /// Keep-alive on the leader: the new TTL, or `None` if the lease does not exist (or has
    /// already expired and is being revoked).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut table = self.leases.lock();
        let lease = table.get_mut(&id)?;
        if lease.revoking {
            return None;
        }
        lease.expiry = Self::deadline(lease.ttl);
        Some(lease.ttl)
    }

    /// Remaining and granted TTL in seconds, as the leader sees them.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let table = self.leases.lock();
        let lease = table.get(&id)?;
        let remaining = lease.expiry.saturating_duration_since(Instant::now());
        // etcd rounds up: the lease expires in under TTL+1 seconds.
        let secs = remaining.as_secs() as i64 + i64::from(remaining.subsec_nanos() > 0);
        Some((secs, lease.ttl))
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.lock().contains_key(&id)
    }

    /// Leases past their deadline that nobody is revoking yet; they are marked as being revoked.
    pub fn take_expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, lease) in self.leases.lock().iter_mut() {
            if !lease.revoking && lease.expiry <= now {
                lease.revoking = true;
                out.push(*id);
            }
        }
        out
    }

    /// The revocation of `id` could not be proposed; try again later.
    pub fn revoke_failed(&self, id: i64) {
        if let Some(lease) = self.leases.lock().get_mut(&id) {
            lease.revoking = false;
        }
    }

    /// The TTL a grant request of `requested` seconds gets.
    pub fn effective_ttl(&self, requested: i64) -> i64 {
        requested.max(self.min_ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_leases_are_handed_out_once_and_renewal_refuses_them() {
        let lessor = Lessor::new(1);
        lessor.granted(7, 0);
        lessor.granted(8, 3600);
        assert_eq!(lessor.take_expired(), vec![7]);
        assert!(lessor.take_expired().is_empty(), "a lease being revoked is not handed out twice");
        assert_eq!(lessor.renew(7), None);
        assert_eq!(lessor.renew(8), Some(3600));
        lessor.revoke_failed(7);
        assert_eq!(lessor.take_expired(), vec![7]);
        lessor.revoked(7);
        assert!(!lessor.contains(7));
        let (remaining, granted) = lessor.time_to_live(8).unwrap();
        assert_eq!(granted, 3600);
        assert!(remaining > 3500 && remaining <= 3600);
    }
}
