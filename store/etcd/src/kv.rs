//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use keel_proto::etcdserverpb::{self as pb, kv_server::Kv};
use keel_store::{Store, StoreError};
use tonic::{Request, Response, Status};

use crate::header;
use crate::status::{check_size, to_status};

pub struct KvService {
    store: Store,
}

impl KvService {
    pub fn new(store: Store) -> Self {
        KvService { store }
    }

    /// Runs a one-operation transaction and hands back that operation's response.
    async fn single(&self, op: pb::request_op::Request) -> Result<(pb::response_op::Response, i64), Status> {
        let txn =
            pb::TxnRequest { compare: vec![], success: vec![pb::RequestOp { request: Some(op) }], failure: vec![] };
        let (response, revision) = self.store.txn(txn).await.map_err(to_status)?;
        let first = response
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response)
            .ok_or_else(|| to_status(StoreError::Internal("transaction returned no response".into())))?;
        Ok((first, revision))
    }
}

/// Fills the header of every response inside a transaction, as etcd does.
fn fill_headers(response: &mut pb::TxnResponse, header: &pb::ResponseHeader) {
    use pb::response_op::Response;
    response.header = Some(*header);
    for op in &mut response.responses {
        match &mut op.response {
            Some(Response::ResponseRange(r)) => r.header = Some(*header),
            Some(Response::ResponsePut(r)) => r.header = Some(*header),
            Some(Response::ResponseDeleteRange(r)) => r.header = Some(*header),
            Some(Response::ResponseTxn(t)) => fill_headers(t, header),
            None => {}
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let request = request.into_inner();
        check_size(&request)?;
        let (mut response, revision) = self.store.range(&request).await.map_err(to_status)?;
        response.header = Some(header(&self.store, revision));
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let request = request.into_inner();
        check_size(&request)?;
        match self.single(pb::request_op::Request::RequestPut(request)).await? {
            (pb::response_op::Response::ResponsePut(mut r), revision) => {
                r.header = Some(header(&self.store, revision));
                Ok(Response::new(r))
            }
            _ => Err(to_status(StoreError::Internal("put answered with another operation".into()))),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        check_size(&request)?;
        match self.single(pb::request_op::Request::RequestDeleteRange(request)).await? {
            (pb::response_op::Response::ResponseDeleteRange(mut r), revision) => {
                r.header = Some(header(&self.store, revision));
                Ok(Response::new(r))
            }
            _ => Err(to_status(StoreError::Internal("delete answered with another operation".into()))),
        }
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let request = request.into_inner();
        check_size(&request)?;
        let (mut response, revision) = self.store.txn(request).await.map_err(to_status)?;
        fill_headers(&mut response, &header(&self.store, revision));
        Ok(Response::new(response))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let request = request.into_inner();
        let revision = self.store.compact(request.revision, request.physical).await.map_err(to_status)?;
        Ok(Response::new(pb::CompactionResponse { header: Some(header(&self.store, revision)) }))
    }
}
