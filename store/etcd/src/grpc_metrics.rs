//! The gRPC server metrics etcd exports through go-grpc-prometheus, for every gRPC method a
//! member serves (the etcd API on the client port; keel's object API and the node agents'
//! streams on the API port): `grpc_server_started_total` when a call arrives and
//! `grpc_server_handled_total` with its status code when it ends, labelled by `grpc_type`,
//! `grpc_service`, `grpc_method` and (handled only) `grpc_code`, so etcd's dashboards of
//! request rates and errors read keel.
//!
//! Counted by a tower layer around the whole server: the method is found from the request
//! path in a fixed table (no allocation, no lock), and the code from the `grpc-status` of a
//! trailers-only answer (how errors of unary calls come back) or of the trailers at the end
//! of the body. A call whose body is dropped before its trailers (a watch the client closed)
//! ends as `Canceled`, as in go-grpc-prometheus. Calls to methods keel does not serve (the
//! Auth service) are not counted.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use keel_prometheus::{Collect, Counter, Encoder, Kind};
use tonic::codegen::http;

/// (path, service, method, type) of every method served.
const METHODS: &[(&str, &str, &str, &str)] = &[
    ("/etcdserverpb.KV/Range", "etcdserverpb.KV", "Range", "unary"),
    ("/etcdserverpb.KV/Put", "etcdserverpb.KV", "Put", "unary"),
    ("/etcdserverpb.KV/DeleteRange", "etcdserverpb.KV", "DeleteRange", "unary"),
    ("/etcdserverpb.KV/Txn", "etcdserverpb.KV", "Txn", "unary"),
    ("/etcdserverpb.KV/Compact", "etcdserverpb.KV", "Compact", "unary"),
    ("/etcdserverpb.Watch/Watch", "etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("/etcdserverpb.Lease/LeaseGrant", "etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("/etcdserverpb.Lease/LeaseRevoke", "etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("/etcdserverpb.Lease/LeaseKeepAlive", "etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("/etcdserverpb.Lease/LeaseTimeToLive", "etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("/etcdserverpb.Lease/LeaseLeases", "etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("/etcdserverpb.Cluster/MemberAdd", "etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("/etcdserverpb.Cluster/MemberRemove", "etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("/etcdserverpb.Cluster/MemberUpdate", "etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("/etcdserverpb.Cluster/MemberList", "etcdserverpb.Cluster", "MemberList", "unary"),
    ("/etcdserverpb.Cluster/MemberPromote", "etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("/etcdserverpb.Maintenance/Alarm", "etcdserverpb.Maintenance", "Alarm", "unary"),
    ("/etcdserverpb.Maintenance/Status", "etcdserverpb.Maintenance", "Status", "unary"),
    ("/etcdserverpb.Maintenance/Defragment", "etcdserverpb.Maintenance", "Defragment", "unary"),
    ("/etcdserverpb.Maintenance/Hash", "etcdserverpb.Maintenance", "Hash", "unary"),
    ("/etcdserverpb.Maintenance/HashKV", "etcdserverpb.Maintenance", "HashKV", "unary"),
    ("/etcdserverpb.Maintenance/Snapshot", "etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("/etcdserverpb.Maintenance/MoveLeader", "etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("/keel.objects.v1.Objects/Get", "keel.objects.v1.Objects", "Get", "unary"),
    ("/keel.objects.v1.Objects/List", "keel.objects.v1.Objects", "List", "unary"),
    ("/keel.objects.v1.Objects/Watch", "keel.objects.v1.Objects", "Watch", "server_stream"),
    ("/keel.objects.v1.Objects/Create", "keel.objects.v1.Objects", "Create", "unary"),
    ("/keel.objects.v1.Objects/Update", "keel.objects.v1.Objects", "Update", "unary"),
    ("/keel.objects.v1.Objects/Patch", "keel.objects.v1.Objects", "Patch", "unary"),
    ("/keel.objects.v1.Objects/Delete", "keel.objects.v1.Objects", "Delete", "unary"),
    ("/keel.objects.v1.Objects/ApplyAtomic", "keel.objects.v1.Objects", "ApplyAtomic", "unary"),
    ("/keel.node.v1.NodeAgent/Session", "keel.node.v1.NodeAgent", "Session", "bidi_stream"),
];

/// gRPC status codes by number, spelled as Go's `codes.Code` prints them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// The counts, one per method and (method, code).
#[derive(Debug)]
pub struct GrpcMetrics {
    started: Box<[Counter]>,
    handled: Box<[Counter]>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            started: (0..METHODS.len()).map(|_| Counter::default()).collect(),
            handled: (0..METHODS.len() * CODES.len()).map(|_| Counter::default()).collect(),
        }
    }
}

impl GrpcMetrics {
    /// A tower layer that counts every call through the server it wraps.
    pub fn layer(self: &Arc<Self>) -> GrpcMetricsLayer {
        GrpcMetricsLayer(self.clone())
    }

    fn handled(&self, method: usize, code: usize) -> &Counter {
        &self.handled[method * CODES.len() + code]
    }

    /// Calls of `method` (e.g. `Range`) that ended with `code` (e.g. `OK`).
    #[cfg(test)]
    fn handled_count(&self, method: &str, code: &str) -> Option<u64> {
        let method = METHODS.iter().position(|m| m.2 == method)?;
        let code = CODES.iter().position(|c| *c == code)?;
        Some(self.handled(method, code).get())
    }
}

impl Collect for GrpcMetrics {
    fn collect(&self, encoder: &mut Encoder) {
        let mut started =
            encoder.family("grpc_server_started_total", "Total number of RPCs started on the server.", Kind::Counter);
        for (i, (_, service, method, kind)) in METHODS.iter().enumerate() {
            started.sample(
                &[("grpc_type", kind), ("grpc_service", service), ("grpc_method", method)],
                self.started[i].get(),
            );
        }
        let mut handled = encoder.family(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            Kind::Counter,
        );
        for (i, (_, service, method, kind)) in METHODS.iter().enumerate() {
            for (c, code) in CODES.iter().enumerate() {
                let count = self.handled(i, c).get();
                // Codes never seen are left out; the OK series is always there to rate.
                if count > 0 || c == 0 {
                    handled.sample(
                        &[("grpc_type", kind), ("grpc_service", service), ("grpc_method", method), ("grpc_code", code)],
                        count,
                    );
                }
            }
        }
    }
}

fn method_of(path: &str) -> Option<usize> {
    METHODS.iter().position(|m| m.0 == path)
}

/// The code a `grpc-status` value names; a value that is not one is `Unknown`, as gRPC reads it.
fn code_of(status: &http::HeaderValue) -> usize {
    status.to_str().ok().and_then(|s| s.parse::<usize>().ok()).filter(|c| *c < CODES.len()).unwrap_or(UNKNOWN)
}

#[derive(Clone)]
pub struct GrpcMetricsLayer(Arc<GrpcMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, metrics: self.0.clone() }
    }
}

/// A service whose calls are counted.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Counted<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Unpin,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = method_of(request.uri().path()).map(|method| {
            self.metrics.started[method].inc();
            Call { metrics: Some(self.metrics.clone()), method }
        });
        CountedFuture { inner: self.inner.call(request), call }
    }
}

/// A call not yet counted as handled; dropped uncounted, it ends as `Canceled`.
struct Call {
    metrics: Option<Arc<GrpcMetrics>>,
    method: usize,
}

impl Call {
    fn end(&mut self, code: usize) {
        if let Some(metrics) = self.metrics.take() {
            metrics.handled(self.method, code).inc();
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.end(CANCELED);
    }
}

pub struct CountedFuture<F> {
    inner: F,
    call: Option<Call>,
}

impl<F, B, E> std::future::Future for CountedFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>> + Unpin,
{
    type Output = Result<http::Response<CountedBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                if let Some(mut call) = self.call.take() {
                    call.end(UNKNOWN);
                }
                return Poll::Ready(Err(e));
            }
            Poll::Ready(Ok(response)) => response,
        };
        let mut call = self.call.take();
        // A trailers-only answer (an error) carries its status in the headers.
        if let Some(status) = response.headers().get("grpc-status")
            && let Some(mut c) = call.take()
        {
            c.end(code_of(status));
        }
        Poll::Ready(Ok(response.map(|inner| CountedBody { inner, call })))
    }
}

/// A response body that counts its call when the trailers with its status go by.
pub struct CountedBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame.trailers_ref().and_then(|t| t.get("grpc-status"))
                    && let Some(mut call) = self.call.take()
                {
                    call.end(code_of(status));
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                if let Some(mut call) = self.call.take() {
                    call.end(UNKNOWN);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;

    fn trailers(code: &str) -> http::HeaderMap {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        t
    }

    /// A server answering every call with `respond(path)`.
    fn server(
        metrics: &Arc<GrpcMetrics>,
        respond: fn(&str) -> http::Response<http_body_util::StreamBody<BodyStream>>,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<CountedBody<http_body_util::StreamBody<BodyStream>>>,
        Error = Infallible,
    > {
        let service = tower::service_fn(move |r: http::Request<()>| {
            std::future::ready(Ok::<_, Infallible>(respond(r.uri().path())))
        });
        tower::Layer::layer(&metrics.layer(), service)
    }

    type BodyStream = futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<bytes::Bytes>, Infallible>>>;

    fn body(frames: Vec<http_body::Frame<bytes::Bytes>>) -> http_body_util::StreamBody<BodyStream> {
        http_body_util::StreamBody::new(futures::stream::iter(frames.into_iter().map(Ok).collect::<Vec<_>>()))
    }

    async fn call(
        service: &mut (
                 impl tower::Service<
            http::Request<()>,
            Response = http::Response<CountedBody<http_body_util::StreamBody<BodyStream>>>,
            Error = Infallible,
        > + Send
             ),
        path: &str,
        read_body: bool,
    ) {
        use tower::ServiceExt;
        let request = http::Request::builder().uri(path).body(()).unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        if read_body {
            response.into_body().collect().await.unwrap();
        }
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_the_status_they_end_with() {
        let metrics = Arc::new(GrpcMetrics::default());
        let mut service = server(&metrics, |path| match path {
            // A unary success: data, then trailers with OK.
            "/etcdserverpb.KV/Range" => http::Response::new(body(vec![
                http_body::Frame::data(bytes::Bytes::from_static(b"x")),
                http_body::Frame::trailers(trailers("0")),
            ])),
            // A trailers-only error.
            "/etcdserverpb.KV/Put" => {
                let mut r = http::Response::new(body(vec![]));
                r.headers_mut().insert("grpc-status", "3".parse().unwrap());
                r
            }
            // A stream that would go on.
            _ => http::Response::new(body(vec![http_body::Frame::data(bytes::Bytes::from_static(b"event"))])),
        });
        call(&mut service, "/etcdserverpb.KV/Range", true).await;
        call(&mut service, "/etcdserverpb.KV/Range", true).await;
        call(&mut service, "/etcdserverpb.KV/Put", true).await;
        // A watch whose body the client drops before any trailers.
        call(&mut service, "/etcdserverpb.Watch/Watch", false).await;
        // Not an etcd method: not counted at all.
        call(&mut service, "/etcdserverpb.Auth/Authenticate", true).await;

        assert_eq!(metrics.handled_count("Range", "OK"), Some(2));
        assert_eq!(metrics.handled_count("Put", "InvalidArgument"), Some(1));
        assert_eq!(metrics.handled_count("Put", "OK"), Some(0));
        assert_eq!(metrics.handled_count("Watch", "Canceled"), Some(1));
        let mut encoder = Encoder::new();
        metrics.collect(&mut encoder);
        let text = encoder.finish();
        assert!(
            text.contains("grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"etcdserverpb.KV\",grpc_method=\"Range\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\",grpc_code=\"InvalidArgument\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("grpc_server_handled_total{grpc_type=\"bidi_stream\",grpc_service=\"etcdserverpb.Watch\",grpc_method=\"Watch\",grpc_code=\"Canceled\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("Authenticate"), "{text}");
        assert!(!text.contains("grpc_code=\"Aborted\""), "codes never seen are left out:\n{text}");
    }

    #[test]
    fn statuses_are_read_as_grpc_reads_them() {
        assert_eq!(code_of(&"0".parse().unwrap()), 0);
        assert_eq!(code_of(&"14".parse().unwrap()), 14);
        assert_eq!(code_of(&"17".parse().unwrap()), UNKNOWN);
        assert_eq!(code_of(&"ok".parse().unwrap()), UNKNOWN);
        assert_eq!(method_of("/etcdserverpb.Maintenance/HashKV"), Some(20));
        assert_eq!(METHODS[20].2, "HashKV");
        assert_eq!(method_of("/etcdserverpb.KV/Rangex"), None);
    }
}
