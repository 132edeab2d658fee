//! etcd's Lease service. Keep-alives and time-to-live are answered by the leader, which owns
//! lease deadlines; any member forwards them.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use keel_proto::etcdserverpb::{self as pb, lease_server::Lease};
use keel_store::Store;
use tonic::{Request, Response, Status, Streaming};

use crate::header;
use crate::status::to_status;

pub struct LeaseService {
    store: Store,
}

impl LeaseService {
    pub fn new(store: Store) -> Self {
        LeaseService { store }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        let (id, ttl, revision) = self.store.lease_grant(request.id, request.ttl).await.map_err(to_status)?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(header(&self.store, revision)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let revision = self.store.lease_revoke(request.into_inner().id).await.map_err(to_status)?;
        Ok(Response::new(pb::LeaseRevokeResponse { header: Some(header(&self.store, revision)) }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let store = self.store.clone();
        let responses = request.into_inner().then(move |item| {
            let store = store.clone();
            async move {
                let id = item?.id;
                // etcd answers an unknown or expired lease with TTL 0, not an error.
                let ttl = store.lease_keep_alive(id).await.map_err(to_status)?.unwrap_or(0);
                let revision = store.state().applied_revision();
                Ok(pb::LeaseKeepAliveResponse { header: Some(header(&store, revision)), id, ttl })
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let found = self.store.lease_time_to_live(request.id).await.map_err(to_status)?;
        let revision = self.store.state().applied_revision();
        let (ttl, granted_ttl, keys) = match found {
            Some((remaining, granted)) => {
                let keys =
                    if request.keys { self.store.lease_keys(request.id).map_err(to_status)? } else { Vec::new() };
                (remaining, granted, keys)
            }
            // etcd reports a lease it does not know with TTL -1.
            None => (-1, 0, Vec::new()),
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(header(&self.store, revision)),
            id: request.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.store.linearize().await.map_err(to_status)?;
        let revision = self.store.state().applied_revision();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(header(&self.store, revision)),
            leases: self.store.lease_ids().into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
