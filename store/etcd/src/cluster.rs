//! etcd's Cluster service: member list, add, remove, update, promote.

use keel_proto::etcdserverpb::{self as pb, cluster_server::Cluster};
use keel_store::member::MemberInfo;
use keel_store::{Store, StoreError};
use tonic::{Request, Response, Status};

use crate::header;
use crate::status::to_status;

pub struct ClusterService {
    store: Store,
}

impl ClusterService {
    pub fn new(store: Store) -> Self {
        ClusterService { store }
    }

    fn members(&self) -> Vec<pb::Member> {
        self.store.members().iter().map(to_member).collect()
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(header(&self.store, self.store.state().applied_revision()))
    }
}

fn url(addr: &str) -> Vec<String> {
    if addr.is_empty() { Vec::new() } else { vec![format!("http://{addr}")] }
}

pub fn to_member(info: &MemberInfo) -> pb::Member {
    pb::Member {
        id: info.id,
        name: info.member.name.clone(),
        peer_ur_ls: url(&info.member.peer_addr),
        client_ur_ls: url(&info.member.client_addr),
        is_learner: info.is_learner,
    }
}

/// `http://host:port` (as etcd clients send peer URLs) to `host:port`.
fn peer_addr(urls: &[String]) -> Result<String, Status> {
    let first = urls.first().ok_or_else(|| to_status(StoreError::InvalidArgument("no peer URL given".into())))?;
    let addr = first.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    if addr.is_empty() || !addr.contains(':') {
        return Err(to_status(StoreError::InvalidArgument(format!(
            "peer URL {first:?} is not of the form http://host:port"
        ))));
    }
    Ok(addr.to_string())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let request = request.into_inner();
        let addr = peer_addr(&request.peer_ur_ls)?;
        if self.store.members().iter().any(|m| m.member.peer_addr == addr) {
            return Err(to_status(StoreError::Membership("Peer URLs already exists".into())));
        }
        let (added, members) = self.store.add_member(&addr, request.is_learner).await.map_err(to_status)?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(to_member(&added)),
            members: members.iter().map(to_member).collect(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let members = self.store.remove_member(request.into_inner().id).await.map_err(to_status)?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members: members.iter().map(to_member).collect(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let addr = peer_addr(&request.peer_ur_ls)?;
        let members = self.store.update_member_peer(request.id, &addr).await.map_err(to_status)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members: members.iter().map(to_member).collect(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.store.linearize().await.map_err(to_status)?;
        }
        Ok(Response::new(pb::MemberListResponse { header: self.header(), members: self.members() }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let members = self.store.promote_member(request.into_inner().id).await.map_err(to_status)?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members: members.iter().map(to_member).collect(),
        }))
    }
}
