//! Store errors as etcd reports them. etcd clients match on these exact messages (clientv3's
//! `rpctypes`), so the text is etcd's, not ours.

use keel_store::StoreError;
use tonic::{Code, Status};

pub fn to_status(e: StoreError) -> Status {
    let (code, message) = match &e {
        StoreError::Compacted { .. } => (Code::OutOfRange, "mvcc: required revision has been compacted".to_string()),
        StoreError::FutureRevision => (Code::OutOfRange, "mvcc: required revision is a future revision".to_string()),
        StoreError::LeaseNotFound => (Code::NotFound, "requested lease not found".to_string()),
        StoreError::LeaseExists => (Code::FailedPrecondition, "lease already exists".to_string()),
        StoreError::KeyNotFound => (Code::InvalidArgument, "key not found".to_string()),
        StoreError::MemberNotFound => (Code::NotFound, "member not found".to_string()),
        StoreError::InvalidArgument(msg) => (Code::InvalidArgument, msg.clone()),
        StoreError::RequestTooLarge => (Code::InvalidArgument, "request is too large".to_string()),
        StoreError::NoLeader => (Code::Unavailable, "no leader".to_string()),
        StoreError::LeaderChanged => (Code::Unavailable, "leader changed".to_string()),
        StoreError::Timeout => (Code::Unavailable, "request timed out".to_string()),
        StoreError::Membership(msg) => (Code::FailedPrecondition, msg.clone()),
        StoreError::Stopped => (Code::Unavailable, "server stopped".to_string()),
        StoreError::Unavailable(msg) => (Code::Unavailable, msg.clone()),
        StoreError::Corrupt(msg) => (Code::DataLoss, format!("data corruption: {msg}")),
        StoreError::Storage(msg) | StoreError::Internal(msg) => (Code::Internal, msg.clone()),
    };
    Status::new(code, format!("etcdserver: {message}"))
}

/// Refuses a request larger than etcd's `--max-request-bytes`.
pub fn check_size(message: &impl prost::Message) -> Result<(), Status> {
    if message.encoded_len() > crate::MAX_REQUEST_BYTES {
        return Err(to_status(StoreError::RequestTooLarge));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_etcd_client_expectations() {
        let compacted = to_status(StoreError::Compacted { compact_revision: 5 });
        assert_eq!(compacted.code(), Code::OutOfRange);
        assert_eq!(compacted.message(), "etcdserver: mvcc: required revision has been compacted");
        assert_eq!(to_status(StoreError::LeaseNotFound).message(), "etcdserver: requested lease not found");
        assert_eq!(to_status(StoreError::RequestTooLarge).message(), "etcdserver: request is too large");
        assert_eq!(to_status(StoreError::NoLeader).code(), Code::Unavailable);
    }
}
