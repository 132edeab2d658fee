//! The HTTP edge of the API: URL grammar, query parameters, content negotiation (JSON, YAML,
//! Table), chunked watch streams, and the one place errors become `Status` responses.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, Result};
use crate::instrumentation::{Observed, Operation, Scope};
use crate::patch::PatchType;
use crate::registry::ResourceType;
use crate::rest::{Api, DeleteOptions, FieldValidation, ListOptions, WatchOptions, WriteOptions};
use crate::selector::{FieldSelector, LabelSelector};
use crate::{discovery, openapi, openapi_proto, table};

/// kube-apiserver's limit on request bodies.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// REST on every path, and the gRPC object API on its service path (HTTP/2).
pub fn router(api: Arc<Api>) -> axum::Router {
    axum::Router::new()
        .route_service("/keel.objects.v1.Objects/{*method}", crate::grpc::service(api.clone()))
        .fallback(handle)
        .with_state(api)
}

/// Serves the API on `listener` until `shutdown` resolves; open watches are then cut.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(router(api), listener, shutdown).await
}

/// [`serve`] for an API [`router`] that the caller has composed: with more services on the
/// same port (the node agents' streams), with layers (the gRPC metrics).
pub async fn serve_router(
    app: axum::Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(async move { server.await });
    shutdown.await;
    let _ = stop_tx.send(true);
    // Watches never finish on their own: give requests a moment, then stop.
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Ok(()),
    }
}

/// A request's query parameters; a repeated key's last value wins (`all` gives every one).
pub(crate) struct Query(pub(crate) Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        Query(form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect())
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// How the client wants the answer.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    Json { pretty: bool },
    Yaml,
}

struct Negotiated {
    format: Format,
    table: bool,
    include_object: &'static str,
}

fn negotiate(headers: &HeaderMap, query: &Query) -> Result<Negotiated> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let table = accept.split(',').any(|a| a.contains("as=Table") && a.contains("g=meta.k8s.io"));
    let wants = |t: &str| accept.split(',').any(|a| a.trim().starts_with(t));
    let format = if wants("application/json") || wants("*/*") || accept.trim().is_empty() {
        Format::Json { pretty: query.flag("pretty") }
    } else if wants("application/yaml") {
        Format::Yaml
    } else if wants("application/vnd.kubernetes.protobuf") && !wants("application/json") {
        return Err(ApiError::NotAcceptable);
    } else {
        Format::Json { pretty: query.flag("pretty") }
    };
    let include_object = match query.get("includeObject") {
        Some("None") => "None",
        Some("Object") => "Object",
        _ => "Metadata",
    };
    Ok(Negotiated { format, table, include_object })
}

fn encode(format: Format, value: &Value) -> (Vec<u8>, &'static str) {
    match format {
        Format::Json { pretty: true } => (serde_json::to_vec_pretty(value).unwrap_or_default(), "application/json"),
        Format::Json { pretty: false } => (serde_json::to_vec(value).unwrap_or_default(), "application/json"),
        Format::Yaml => (serde_yaml::to_string(value).unwrap_or_default().into_bytes(), "application/yaml"),
    }
}

fn respond(code: StatusCode, format: Format, value: &Value, warnings: &[String]) -> Response {
    let (body, content_type) = encode(format, value);
    let mut response = (code, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for warning in warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "'"));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn error_response(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = respond(status, Format::Json { pretty: false }, &error.status(), &[]);
    if let Some(seconds) = error.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn ok_json(value: Value) -> Response {
    respond(StatusCode::OK, Format::Json { pretty: false }, &value, &[])
}

fn parse_body(headers: &HeaderMap, body: &Bytes, patch: bool) -> Result<(Value, Option<PatchType>)> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    let patch_type = if patch {
        Some(PatchType::from_content_type(content_type).ok_or_else(|| ApiError::UnsupportedMediaType {
            accepted: "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml".into(),
        })?)
    } else {
        None
    };
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let yaml = media.ends_with("yaml");
    let value: Value = if media == "application/vnd.kubernetes.protobuf" && !patch {
        crate::proto::decode_body(body, proto_names()).map_err(|e| ApiError::bad_request(e.to_string()))?
    } else if yaml {
        serde_yaml::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))?
    } else if patch || media == "application/json" || media.is_empty() {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    } else {
        return Err(ApiError::UnsupportedMediaType {
            accepted: "application/json, application/yaml, application/vnd.kubernetes.protobuf".into(),
        });
    };
    Ok((value, patch_type))
}

/// JSON names of the built-in kinds' fields, for decoding protobuf bodies.
fn proto_names() -> &'static crate::proto::JsonNames {
    static NAMES: std::sync::OnceLock<crate::proto::JsonNames> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let registry = crate::registry::Registry::new(crate::registry::RuntimeConfig::default());
        let document = openapi::v2(&registry);
        crate::proto::json_names(document["definitions"].as_object().unwrap_or(&serde_json::Map::new()))
    })
}

/// A request for objects of one resource.
struct Target {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    watch_path: bool,
}

impl Target {
    /// Whether the request watches, as kube-apiserver decides: a collection with `?watch=true`,
    /// or anything under the deprecated `/watch/` paths (an object's among them). An object's
    /// GET ignores `watch`.
    fn watches(&self, query: &Query) -> bool {
        self.watch_path || (self.name.is_none() && query.flag("watch"))
    }
}

fn resolve(api: &Api, segments: &[&str]) -> Result<Option<Target>> {
    let (group, version, mut rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Ok(None),
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let mut watch_path = false;
    if rest[0] == "watch" {
        watch_path = true;
        rest = &rest[1..];
    }
    let registry = &api.registry;
    let (namespace, plural, name, subresource) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if registry.find(group, version, plural).is_some_and(|t| t.namespaced) =>
        {
            (Some(ns.to_string()), *plural, tail.first(), tail.get(1))
        }
        [plural, tail @ ..] => (None, *plural, tail.first(), tail.get(1)),
        [] => return Ok(None),
    };
    let rt = registry.find(group, version, plural).ok_or(ApiError::NoRoute)?;
    if rest.len() > if namespace.is_some() { 5 } else { 3 } {
        return Err(ApiError::NoRoute);
    }
    if rt.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::NoRoute);
    }
    Ok(Some(Target {
        rt,
        namespace,
        name: name.map(|n| n.to_string()),
        subresource: subresource.map(|s| s.to_string()),
        watch_path,
    }))
}

async fn handle(State(api): State<Arc<Api>>, request: Request) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let span = tracing::info_span!("request", %method, %path);
    let _entered = span.enter();
    drop(_entered);
    let mut observed = Observed::Nothing;
    // As kube-apiserver's panic recovery: a bug hit by one request answers it with a 500
    // Status and an error in the log, rather than dropping the client's connection.
    let routed =
        std::panic::AssertUnwindSafe(tracing::Instrument::instrument(route(api.clone(), request, &mut observed), span))
            .catch_unwind()
            .await;
    let response = match routed {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::debug!(%method, %path, code = error.code(), %error, "request failed");
            error_response(&error)
        }
        Err(panic) => {
            let cause = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%method, %path, %cause, "request handler panicked");
            error_response(&ApiError::internal(format!("the server failed while handling {method} {path}")))
        }
    };
    observed.record(&api.instrumentation, response.status().as_u16(), started);
    response
}

/// Serves one request; `observed` learns what it was as soon as that is known, so that it is
/// counted whichever way it ends.
async fn route(api: Arc<Api>, request: Request, observed: &mut Observed) -> Result<Response> {
    let (parts, body) = request.into_parts();
    let query = Query::parse(parts.uri.query());
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let method = parts.method.clone();
    let get = method == Method::GET;
    if get && let Some(path) = crate::instrumentation::non_resource_path(&segments) {
        *observed = Observed::NonResource(path);
    }
    match segments.as_slice() {
        ["healthz" | "livez", ..] if get => return Ok((StatusCode::OK, "ok").into_response()),
        ["readyz", check @ ..] if get => {
            // `?verbose` alone asks for it, as in kube.
            let verbose = query.get("verbose").is_some_and(|v| v != "false" && v != "0");
            return readyz(&api, check, verbose).await;
        }
        ["version"] if get => return Ok(ok_json(discovery::version())),
        // Like /version and /healthz: served to anyone who can reach the API port.
        ["metrics"] if get => {
            let text = api.exposition().await;
            return Ok(([(header::CONTENT_TYPE, keel_prometheus::CONTENT_TYPE)], text).into_response());
        }
        ["api"] if get => {
            if discovery::wants_aggregated(&accept) {
                return Ok(aggregated(discovery::aggregated(&api.registry, true)));
            }
            return Ok(ok_json(discovery::api_versions()));
        }
        ["apis"] if get => {
            if discovery::wants_aggregated(&accept) {
                return Ok(aggregated(discovery::aggregated(&api.registry, false)));
            }
            return Ok(ok_json(discovery::group_list(&api.registry)));
        }
        ["api", version] if get => {
            return discovery::resource_list(&api.registry, "", version).map(ok_json).ok_or(ApiError::NoRoute);
        }
        ["apis", group] if get => return discovery::group(&api.registry, group).map(ok_json).ok_or(ApiError::NoRoute),
        ["apis", group, version] if get => {
            return discovery::resource_list(&api.registry, group, version).map(ok_json).ok_or(ApiError::NoRoute);
        }
        [".well-known", "openid-configuration"] if get => return crate::tokens::discovery_response(&api, false).await,
        ["openid", "v1", "jwks"] if get => return crate::tokens::discovery_response(&api, true).await,
        ["openapi", "v2"] if get => {
            let document = openapi::v2(&api.registry);
            if openapi_proto::wanted(&accept) {
                let body = openapi_proto::encode(&document);
                return Ok(([(header::CONTENT_TYPE, openapi_proto::MEDIA_TYPE)], body).into_response());
            }
            return Ok(ok_json(document));
        }
        ["openapi", "v3"] if get => return Ok(ok_json(openapi::v3_root(&api.registry))),
        ["openapi", "v3", rest @ ..] if get => {
            return openapi::v3_group_version(&api.registry, &rest.join("/")).map(ok_json).ok_or(ApiError::NoRoute);
        }
        _ => {}
    }
    let target = resolve(&api, &segments)?.ok_or(ApiError::NoRoute)?;
    let watching = target.watches(&query);
    let operation = Operation::classify(
        &method,
        target.name.is_some(),
        target.namespace.is_some(),
        watching,
        target.subresource.as_deref(),
        parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
    );
    if let Some(operation) = operation {
        *observed = Observed::Resource(target.rt.stats.clone(), operation);
    }
    if let (Some(sub @ ("log" | "exec" | "attach" | "portforward")), Some(namespace), Some(name)) =
        (target.subresource.as_deref(), target.namespace.as_deref(), target.name.as_deref())
        && target.rt.kind == "Pod"
        && target.rt.group.is_empty()
    {
        return crate::podstream::serve(api.clone(), parts, body, namespace, name, sub).await;
    }
    let body =
        axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| ApiError::TooLarge { limit: MAX_BODY_BYTES })?;
    resource(api, target, method, parts.headers, query, body).await
}

fn aggregated(document: Value) -> Response {
    let mut response = ok_json(document);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE));
    response
}

fn list_options(query: &Query, rt: &ResourceType) -> Result<ListOptions> {
    Ok(ListOptions {
        label_selector: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
        field_selector: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), &rt.kind)
            .map_err(ApiError::bad_request)?,
        limit: match query.get("limit") {
            Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("limit {l:?} is not an integer")))?,
            None => 0,
        },
        continue_token: query.get("continue").filter(|c| !c.is_empty()).map(String::from),
        resource_version: query.get("resourceVersion").map(String::from),
        resource_version_match: query.get("resourceVersionMatch").filter(|m| !m.is_empty()).map(String::from),
    })
}

/// The field manager of a write that names none: what precedes the first `/` of the client's
/// User-Agent, printable characters only, at most 128 bytes (kube's `prefixFromUserAgent`).
fn manager_from_user_agent(headers: &HeaderMap) -> Option<String> {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok())?;
    let mut manager = String::new();
    for c in agent.split('/').next().unwrap_or("").chars().filter(|c| !c.is_control()) {
        if manager.len() + c.len_utf8() > 128 {
            break;
        }
        manager.push(c);
    }
    (!manager.is_empty()).then_some(manager)
}

/// Options of a write; a write that names no field manager is recorded under its client's
/// User-Agent, except an apply, which must name one.
fn write_options_for(query: &Query, headers: &HeaderMap, applying: bool) -> Result<WriteOptions> {
    let mut options = write_options(query)?;
    if options.field_manager.as_deref().is_none_or(str::is_empty) && !applying {
        options.field_manager = manager_from_user_agent(headers);
    }
    Ok(options)
}

fn write_options(query: &Query) -> Result<WriteOptions> {
    let dry_run = match query.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}: only All is allowed")));
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation: FieldValidation::parse(query.get("fieldValidation"))?,
        field_manager: query.get("fieldManager").map(String::from),
        force: query.flag("force"),
        applying: false,
    })
}

async fn resource(
    api: Arc<Api>,
    target: Target,
    method: Method,
    headers: HeaderMap,
    query: Query,
    body: Bytes,
) -> Result<Response> {
    let negotiated = negotiate(&headers, &query)?;
    let rt = target.rt.clone();
    let ns = target.namespace.as_deref();
    let sub = target.subresource.as_deref();
    if let Some(sub) = sub {
        let allowed = match sub {
            "status" => rt.has_status,
            "scale" => rt.scale.is_some(),
            "binding" | "eviction" | "log" | "exec" | "attach" | "portforward" => {
                rt.kind == "Pod" && rt.group.is_empty()
            }
            "token" => rt.kind == "ServiceAccount" && rt.group.is_empty(),
            _ => false,
        };
        if !allowed {
            return Err(ApiError::NotFound {
                resource: format!("{}/{sub}", rt.qualified()),
                name: target.name.clone().unwrap_or_default(),
            });
        }
    }
    // A review kind is answered on create and has nothing to get, list, watch or change.
    if rt.create_only && !(method == Method::POST && target.name.is_none()) {
        return Err(ApiError::MethodNotAllowed { method: method.to_string(), what: rt.qualified() });
    }
    // Metrics are computed on each read: nothing to write or watch.
    let watching = target.watches(&query);
    if rt.read_only && (method != Method::GET || watching) {
        let verb = if method == Method::GET { "watch".to_string() } else { method.to_string() };
        return Err(ApiError::MethodNotAllowed { method: verb, what: rt.qualified() });
    }
    let format = negotiated.format;
    let wants_table = negotiated.table;
    let one = |value: Value, code: StatusCode, warnings: &[String]| {
        if wants_table && code == StatusCode::OK && sub.is_none() {
            let t = table::table(
                &rt,
                std::slice::from_ref(&value),
                json!({"resourceVersion": value.pointer("/metadata/resourceVersion")}),
                negotiated.include_object,
            );
            return respond(code, format, &t, warnings);
        }
        respond(code, format, &value, warnings)
    };
    match (method, target.name.as_deref()) {
        (Method::GET, None) => {
            if watching {
                return watch(api, target, &query, negotiated).await;
            }
            let options = list_options(&query, &rt)?;
            if !wants_table && format == (Format::Json { pretty: false }) {
                // The common case, served from the stored bytes.
                let listed = api.list_raw(&rt, ns, &options).await?;
                let mut body = format!(
                    "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{},\"items\":[",
                    Value::from(rt.list_kind()),
                    Value::from(rt.api_version()),
                    listed.list_meta()
                )
                .into_bytes();
                for (i, item) in listed.items.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(item);
                }
                body.extend_from_slice(b"]}");
                let mut response = (StatusCode::OK, body).into_response();
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(response);
            }
            let listed = api.list(&rt, ns, &options).await?;
            let meta = listed.list_meta();
            if wants_table {
                return Ok(respond(
                    StatusCode::OK,
                    format,
                    &table::table(&rt, &listed.items, meta, negotiated.include_object),
                    &[],
                ));
            }
            let list = json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": meta, "items": listed.items});
            Ok(respond(StatusCode::OK, format, &list, &[]))
        }
        (Method::GET, Some(name)) => {
            if watching {
                if sub.is_some() {
                    return Err(ApiError::NoRoute);
                }
                return watch(api, target, &query, negotiated).await;
            }
            let object = api.get(&rt, ns, name).await?;
            if sub == Some("scale") {
                let revision = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                return Ok(one(crate::scale::scale_of(&rt, &object, revision)?, StatusCode::OK, &[]));
            }
            Ok(one(object, StatusCode::OK, &[]))
        }
        (Method::POST, None) => {
            let (object, _) = parse_body(&headers, &body, false)?;
            let options = write_options_for(&query, &headers, false)?;
            let (created, warnings) = api.create(&rt, ns, object, &options).await?;
            Ok(respond(StatusCode::CREATED, format, &created, &warnings))
        }
        (Method::POST, Some(name)) if sub == Some("binding") => {
            let (binding, _) = parse_body(&headers, &body, false)?;
            let status = api.bind(&rt, ns, name, &binding).await?;
            Ok(respond(StatusCode::CREATED, format, &status, &[]))
        }
        (Method::POST, Some(name)) if sub == Some("token") => {
            let (request, _) = parse_body(&headers, &body, false)?;
            let issued = api.request_token(ns.ok_or(ApiError::NoRoute)?, name, request).await?;
            Ok(respond(StatusCode::CREATED, format, &issued, &[]))
        }
        (Method::POST, Some(name)) if sub == Some("eviction") => {
            let (eviction, _) = parse_body(&headers, &body, false)?;
            let status = api.evict(&rt, ns, name, &eviction, write_options(&query)?.dry_run).await?;
            // A Status answer carries its own code (201, or 500 for a pod under two budgets).
            let code = status
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::CREATED);
            Ok(respond(code, format, &status, &[]))
        }
        (Method::PUT, Some(name)) => {
            let (object, _) = parse_body(&headers, &body, false)?;
            let options = write_options_for(&query, &headers, false)?;
            let (updated, warnings) = api.update(&rt, ns, name, sub, object, &options).await?;
            Ok(respond(StatusCode::OK, format, &updated, &warnings))
        }
        (Method::PATCH, Some(name)) => {
            let (patch, patch_type) = parse_body(&headers, &body, true)?;
            let patch_type = patch_type.ok_or_else(|| ApiError::internal("patch without a type"))?;
            let options = write_options_for(&query, &headers, matches!(patch_type, PatchType::Apply))?;
            let (patched, warnings, created) = api.patch(&rt, ns, name, sub, patch_type, patch, &options).await?;
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(respond(code, format, &patched, &warnings))
        }
        (Method::DELETE, Some(name)) if sub.is_none() => {
            let options = delete_options(&headers, &body, &query)?;
            let (object, gone) = api.delete(&rt, ns, name, &options).await?;
            let code = if gone { StatusCode::OK } else { StatusCode::ACCEPTED };
            Ok(respond(code, format, &object, &[]))
        }
        (Method::DELETE, None) => {
            let options = delete_options(&headers, &body, &query)?;
            let listed = api.delete_collection(&rt, ns, &list_options(&query, &rt)?, &options).await?;
            let list = json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": listed.list_meta(), "items": listed.items});
            Ok(respond(StatusCode::OK, format, &list, &[]))
        }
        (method, _) => Err(ApiError::MethodNotAllowed { method: method.to_string(), what: rt.qualified() }),
    }
}

fn delete_options(headers: &HeaderMap, body: &Bytes, query: &Query) -> Result<DeleteOptions> {
    let parsed = if body.is_empty() { None } else { Some(parse_body(headers, body, false)?.0) };
    let mut options = DeleteOptions::from_body(parsed.as_ref());
    if let Some(grace) = query.get("gracePeriodSeconds") {
        options.grace_period_seconds = Some(
            grace
                .parse()
                .map_err(|_| ApiError::bad_request(format!("gracePeriodSeconds {grace:?} is not an integer")))?,
        );
    }
    if let Some(policy) = query.get("propagationPolicy") {
        options.propagation_policy = Some(policy.to_string());
    }
    if query.get("dryRun") == Some("All") {
        options.dry_run = true;
    }
    Ok(options)
}

/// `/readyz` as kube-apiserver answers it: `ok`, or 500 naming the check that failed (the
/// store: a member whose linearizable read cannot complete can serve nothing but stale reads,
/// so a load balancer should send its clients elsewhere); `?verbose` lists every check, and
/// `/readyz/<check>` asks for one. A member whose store has stopped exits, so liveness
/// (`/livez`, `/healthz`) is the process answering.
async fn readyz(api: &Api, only: &[&str], verbose: bool) -> Result<Response> {
    const CHECKS: [&str; 2] = ["ping", "etcd"];
    let names: Vec<&str> = match only {
        [] => CHECKS.to_vec(),
        [name] => CHECKS.into_iter().filter(|check| check == name).collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        return Err(ApiError::NoRoute);
    }
    // Only the checks asked for run: the store's is a read round through the leader.
    let mut selected = Vec::with_capacity(names.len());
    for name in names {
        let outcome = if name == "etcd" { api.storage.ready().await } else { Ok(()) };
        selected.push((name, outcome));
    }
    let passed = selected.iter().all(|(_, outcome)| outcome.is_ok());
    if passed && !verbose {
        return Ok((StatusCode::OK, "ok").into_response());
    }
    let mut body = String::new();
    for (check, outcome) in &selected {
        match outcome {
            Ok(()) => body.push_str(&format!("[+]{check} ok\n")),
            Err(reason) => body.push_str(&format!("[-]{check} failed: {reason}\n")),
        }
    }
    body.push_str(if passed { "readyz check passed\n" } else { "readyz check failed\n" });
    let code = if passed { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
    Ok((code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

async fn watch(api: Arc<Api>, target: Target, query: &Query, negotiated: Negotiated) -> Result<Response> {
    let rt = target.rt.clone();
    let mut list = list_options(query, &rt)?;
    // An object's watch (the deprecated `/watch/…/{name}` path) is its collection's watch by
    // name; a field selector of its own must select that same name, as in kube.
    if let Some(name) = &target.name {
        if list.field_selector.is_empty() {
            list.field_selector =
                FieldSelector::parse(&format!("metadata.name={name}"), &rt.kind).map_err(ApiError::bad_request)?;
        } else if list.field_selector.exact_name() != Some(name.as_str()) {
            return Err(ApiError::bad_request("fieldSelector metadata.name doesn't match requested name"));
        }
    }
    let options = WatchOptions {
        list,
        allow_bookmarks: query.flag("allowWatchBookmarks"),
        send_initial_events: query.get("sendInitialEvents").map(|v| v == "true"),
        timeout: match query.get("timeoutSeconds") {
            Some(t) => Some(Duration::from_secs(
                t.parse().map_err(|_| ApiError::bad_request(format!("timeoutSeconds {t:?} is not an integer")))?,
            )),
            None => None,
        },
    };
    let events = api.watch(rt.clone(), target.namespace.clone(), options).await?;
    let (table_mode, include_object) = (negotiated.table, negotiated.include_object);
    let pretty = matches!(negotiated.format, Format::Json { pretty: true });
    let scope = match (&target.name, &target.namespace) {
        (Some(_), _) => Scope::Resource,
        (None, Some(_)) => Scope::Namespace,
        (None, None) => Scope::Cluster,
    };
    let open = rt.stats.watch_opened(scope);
    let stream = ReceiverStream::new(events).map(move |event| {
        // The watch counts as open for as long as its stream is being sent.
        let _open = &open;
        let line = if table_mode || pretty {
            let mut event = event.into_value();
            let kind = event.get("type").and_then(Value::as_str).unwrap_or("").to_string();
            if table_mode
                && matches!(kind.as_str(), "ADDED" | "MODIFIED" | "DELETED")
                && let Some(object) = event.get("object").cloned()
            {
                let meta = json!({"resourceVersion": object.pointer("/metadata/resourceVersion")});
                event["object"] = table::table(&rt, &[object], meta, include_object);
            }
            let mut line =
                if pretty { serde_json::to_vec_pretty(&event) } else { serde_json::to_vec(&event) }.unwrap_or_default();
            line.push(b'\n');
            line
        } else {
            event.to_line()
        };
        Ok::<_, Infallible>(Bytes::from(line))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_without_a_field_manager_are_named_after_the_user_agent() {
        let headers = |agent: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::USER_AGENT, agent.parse().unwrap());
            h
        };
        let named = |agent: &str| manager_from_user_agent(&headers(agent));
        assert_eq!(named("kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07").as_deref(), Some("kubectl"));
        assert_eq!(named("curl/8.5.0").as_deref(), Some("curl"));
        assert_eq!(named(&"x".repeat(300)).map(|m| m.len()), Some(128));
        assert_eq!(named("/leading-slash"), None);
        assert_eq!(manager_from_user_agent(&HeaderMap::new()), None);
        let query = Query(Vec::new());
        let options = write_options_for(&query, &headers("curl/8"), false).unwrap();
        assert_eq!(options.field_manager.as_deref(), Some("curl"));
        let applying = write_options_for(&query, &headers("curl/8"), true).unwrap();
        assert_eq!(applying.field_manager, None, "an apply must name its manager");
    }
}
