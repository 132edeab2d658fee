//! The gRPC object API (`keel.objects.v1.Objects`), served beside REST on the API port: the
//! same verbs over the same registry and admission, plus `ApplyAtomic`, a multi-object write
//! that lands at one revision or not at all.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::objects::objects_server::{Objects, ObjectsServer};
use keel_proto::objects::{
    ApplyRequest, ApplyResponse, DeleteRequest, GetRequest, ListRequest, ListResponse, Object, PatchRequest, Target,
    WatchEvent, WatchRequest, WriteRequest,
};
use serde_json::Value;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::error::ApiError;
use crate::patch::PatchType;
use crate::registry::ResourceType;
use crate::rest::{Api, DeleteOptions, FieldValidation, ListOptions, WatchOptions, WriteOptions};
use crate::selector::{FieldSelector, LabelSelector};

pub fn service(api: Arc<Api>) -> ObjectsServer<ObjectService> {
    ObjectsServer::new(ObjectService { api }).max_decoding_message_size(crate::server::MAX_BODY_BYTES)
}

pub struct ObjectService {
    api: Arc<Api>,
}

/// A Kubernetes error as a gRPC status; the details carry the `Status` object as JSON.
pub fn status(error: ApiError) -> Status {
    let code = match error.code() {
        400 | 413 | 415 | 422 => Code::InvalidArgument,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 | 406 => Code::Unimplemented,
        409 if matches!(error, ApiError::AlreadyExists { .. }) => Code::AlreadyExists,
        409 => Code::Aborted,
        410 => Code::OutOfRange,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    Status::with_details(code, error.to_string(), error.status().to_string().into())
}

fn parse_json(bytes: &[u8]) -> Result<Value, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("the object is not valid JSON: {e}")))
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl ObjectService {
    fn resolve(&self, target: Option<&Target>) -> Result<(Arc<ResourceType>, Option<String>, String), Status> {
        let target = target.ok_or_else(|| Status::invalid_argument("target is required"))?;
        let (group, version) = target.api_version.split_once('/').unwrap_or(("", target.api_version.as_str()));
        let rt = if !target.resource.is_empty() {
            self.api.registry.find(group, version, &target.resource)
        } else {
            self.api.registry.find_kind(group, version, &target.kind)
        }
        .ok_or_else(|| {
            Status::not_found(format!(
                "no resource {:?}/{:?} in {:?}",
                target.kind, target.resource, target.api_version
            ))
        })?;
        let namespace = rt
            .namespaced
            .then(|| if target.namespace.is_empty() { "default".to_string() } else { target.namespace.clone() });
        Ok((rt, namespace, target.name.clone()))
    }

    fn object_type(&self, object: &Value) -> Result<(Arc<ResourceType>, Option<String>), Status> {
        let rt = self.api.type_of(object).map_err(status)?;
        let namespace = rt.namespaced.then(|| match crate::object::namespace(object) {
            "" => "default".to_string(),
            ns => ns.to_string(),
        });
        Ok((rt, namespace))
    }

    fn write_options(dry_run: bool, field_manager: &str, force: bool) -> WriteOptions {
        WriteOptions {
            dry_run,
            field_validation: FieldValidation::Strict,
            field_manager: (!field_manager.is_empty()).then(|| field_manager.to_string()),
            force,
            applying: false,
        }
    }
}

fn selectors(label: &str, field: &str, rt: &ResourceType) -> Result<(LabelSelector, FieldSelector), Status> {
    Ok((
        LabelSelector::parse(label).map_err(Status::invalid_argument)?,
        FieldSelector::parse(field, &rt.kind).map_err(Status::invalid_argument)?,
    ))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Objects for ObjectService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Object>, Status> {
        let (rt, ns, name) = self.resolve(request.get_ref().target.as_ref())?;
        let object = self.api.get(&rt, ns.as_deref(), &name).await.map_err(status)?;
        Ok(Response::new(Object { json: to_bytes(&object) }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let r = request.into_inner();
        let (rt, ns, _) = self.resolve(r.target.as_ref())?;
        let (label_selector, field_selector) = selectors(&r.label_selector, &r.field_selector, &rt)?;
        let options = ListOptions {
            label_selector,
            field_selector,
            limit: r.limit,
            continue_token: (!r.continue_token.is_empty()).then_some(r.continue_token),
            resource_version: (!r.resource_version.is_empty()).then_some(r.resource_version),
            resource_version_match: None,
        };
        let listed = self.api.list(&rt, ns.as_deref(), &options).await.map_err(status)?;
        Ok(Response::new(ListResponse {
            items: listed.items.iter().map(to_bytes).collect(),
            resource_version: listed.revision.to_string(),
            continue_token: listed.continue_token.unwrap_or_default(),
        }))
    }

    type WatchStream = EventStream;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        let (rt, ns, name) = self.resolve(r.target.as_ref())?;
        let field = if name.is_empty() { r.field_selector.clone() } else { format!("metadata.name={name}") };
        let (label_selector, field_selector) = selectors(&r.label_selector, &field, &rt)?;
        let options = WatchOptions {
            list: ListOptions {
                label_selector,
                field_selector,
                resource_version: (!r.resource_version.is_empty()).then_some(r.resource_version),
                ..Default::default()
            },
            allow_bookmarks: r.allow_bookmarks,
            send_initial_events: None,
            timeout: None,
        };
        let events = self.api.watch(rt, ns, options).await.map_err(status)?;
        let stream = ReceiverStream::new(events)
            .map(|event| Ok(WatchEvent { r#type: event.kind().to_string(), object: event.object_bytes() }));
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn create(&self, request: Request<WriteRequest>) -> Result<Response<Object>, Status> {
        let r = request.into_inner();
        let object = parse_json(&r.json)?;
        let (rt, ns) = self.object_type(&object)?;
        let options = Self::write_options(r.dry_run, &r.field_manager, false);
        let (created, _) = self.api.create(&rt, ns.as_deref(), object, &options).await.map_err(status)?;
        Ok(Response::new(Object { json: to_bytes(&created) }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn update(&self, request: Request<WriteRequest>) -> Result<Response<Object>, Status> {
        let r = request.into_inner();
        let object = parse_json(&r.json)?;
        let (rt, ns) = self.object_type(&object)?;
        let name = crate::object::name(&object).to_string();
        let options = Self::write_options(r.dry_run, &r.field_manager, false);
        let (updated, _) = self.api.update(&rt, ns.as_deref(), &name, None, object, &options).await.map_err(status)?;
        Ok(Response::new(Object { json: to_bytes(&updated) }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn patch(&self, request: Request<PatchRequest>) -> Result<Response<Object>, Status> {
        let r = request.into_inner();
        let (rt, ns, name) = self.resolve(r.target.as_ref())?;
        let patch_type = match r.patch_type.as_str() {
            "json" => PatchType::Json,
            "merge" => PatchType::Merge,
            "strategic" => PatchType::StrategicMerge,
            "apply" => PatchType::Apply,
            other => {
                return Err(Status::invalid_argument(format!(
                    "patch_type {other:?}: expected json, merge, strategic or apply"
                )));
            }
        };
        let patch = parse_json(&r.patch)?;
        let options = Self::write_options(r.dry_run, &r.field_manager, r.force);
        let (patched, _, _) =
            self.api.patch(&rt, ns.as_deref(), &name, None, patch_type, patch, &options).await.map_err(status)?;
        Ok(Response::new(Object { json: to_bytes(&patched) }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<Object>, Status> {
        let r = request.into_inner();
        let (rt, ns, name) = self.resolve(r.target.as_ref())?;
        let options = DeleteOptions {
            grace_period_seconds: r.grace_period_seconds,
            propagation_policy: (!r.propagation_policy.is_empty()).then_some(r.propagation_policy),
            ..Default::default()
        };
        let (object, _) = self.api.delete(&rt, ns.as_deref(), &name, &options).await.map_err(status)?;
        Ok(Response::new(Object { json: to_bytes(&object) }))
    }

    #[tracing::instrument(level = "info", skip_all, fields(objects = request.get_ref().objects.len()))]
    async fn apply_atomic(&self, request: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let r = request.into_inner();
        let objects = r.objects.iter().map(|o| parse_json(o)).collect::<Result<Vec<_>, _>>()?;
        let options = Self::write_options(r.dry_run, &r.field_manager, false);
        let (objects, revision) = self.api.apply_atomic(objects, &options).await.map_err(status)?;
        Ok(Response::new(ApplyResponse { objects: objects.iter().map(to_bytes).collect(), revision }))
    }
}
