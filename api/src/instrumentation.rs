//! What the API measures about the requests it serves, and `/metrics`, where a member
//! reports it (with whatever else the binary registers: the store, the etcd API, the
//! process), under kube-apiserver's metric names so that its dashboards and alerts work:
//!
//! * `apiserver_request_total{verb,group,version,resource,subresource,scope,component,code}`
//!   and `apiserver_request_duration_seconds` (same labels but `code`), with kube's verbs
//!   (`GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY`, `DELETE`, `CONNECT`) and
//!   scopes (`resource`, `namespace`, `cluster`). Requests for non-resource paths are
//!   counted as kube counts `/healthz`: empty group, version, resource and scope, the path
//!   as the subresource. A duration runs until the response's headers are ready: for a
//!   watch, until it starts streaming.
//! * `apiserver_longrunning_requests{verb="WATCH",…}` and `apiserver_registered_watchers`:
//!   watches open now.
//! * `apiserver_storage_objects{resource}`: objects stored per resource, counted at most once
//!   a minute (kube-apiserver's `--etcd-count-metric-poll-period`) when scraped.
//!
//! Counting is on every request's path, so it costs a few relaxed atomic additions and
//! nothing else: each resource type carries its own [`ResourceStats`], in which a request's
//! (subresource, verb, scope) and status code are array indexes. The counters of a
//! combination are allocated the first time it is seen; no lock is taken and no label is
//! looked up per request.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::Method;
use keel_prometheus::{Collect, Counter, Encoder, Gauge, Histogram, Kind};

use crate::registry::Registry;
use crate::storage::{Consistency, prefix_end};

/// kube-apiserver's buckets for `apiserver_request_duration_seconds`.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

/// How often `apiserver_storage_objects` is counted again (kube's default poll period).
const OBJECT_COUNT_PERIOD: Duration = Duration::from_secs(60);

const COMPONENT: &str = "apiserver";

/// A request's verb as kube-apiserver's metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Post,
    Put,
    Patch,
    Apply,
    Delete,
    Connect,
}

const VERBS: [&str; 9] = ["GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "APPLY", "DELETE", "CONNECT"];

/// What a request addresses: one object, a namespace's, or the whole cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Resource,
    Namespace,
    Cluster,
}

const SCOPES: [&str; 3] = ["resource", "namespace", "cluster"];

/// The subresources served; a request for any other is refused before it is counted.
const SUBRESOURCES: [&str; 10] =
    ["", "status", "scale", "binding", "eviction", "token", "log", "exec", "attach", "portforward"];

/// Non-resource paths counted, as the `subresource` of their requests.
const NON_RESOURCE_PATHS: [&str; 11] = [
    "/api",
    "/apis",
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/metrics",
    "/openapi/v2",
    "/openapi/v3",
    "/.well-known/openid-configuration",
    "/openid/v1/jwks",
];

/// Every standard HTTP status code, ascending; each has its own counter. A response with
/// any other code (keel sends none) is counted as `other`.
const CODES: [u16; 62] = [
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400,
    401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 421, 422, 423, 424, 425,
    426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// One request of a resource, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub verb: Verb,
    pub scope: Scope,
    subresource: usize,
}

impl Operation {
    /// How kube-apiserver's metrics name a request (its `CanonicalVerb`, `cleanVerb` and
    /// `CleanScope`): a GET of a collection is a LIST, or a WATCH when it watches; a PATCH
    /// with an apply body is an APPLY; exec, attach and port-forward are CONNECT; a create
    /// or anything naming an object is scoped to the resource. `None` for what is not
    /// served (an unknown subresource or method), which is refused uncounted.
    pub fn classify(
        method: &Method,
        named: bool,
        in_namespace: bool,
        watching: bool,
        subresource: Option<&str>,
        content_type: Option<&str>,
    ) -> Option<Operation> {
        let subresource = SUBRESOURCES.iter().position(|s| *s == subresource.unwrap_or(""))?;
        let connect = matches!(SUBRESOURCES[subresource], "exec" | "attach" | "portforward");
        let get = *method == Method::GET || *method == Method::HEAD;
        let verb = if connect && (get || *method == Method::POST) {
            Verb::Connect
        } else if get && watching {
            Verb::Watch
        } else if get && named {
            Verb::Get
        } else if get {
            Verb::List
        } else if *method == Method::POST {
            Verb::Post
        } else if *method == Method::PUT {
            Verb::Put
        } else if *method == Method::PATCH {
            let apply = content_type.is_some_and(|t| t.starts_with("application/apply-patch"));
            if apply { Verb::Apply } else { Verb::Patch }
        } else if *method == Method::DELETE {
            Verb::Delete
        } else {
            return None;
        };
        let scope = if named || verb == Verb::Post {
            Scope::Resource
        } else if in_namespace {
            Scope::Namespace
        } else {
            Scope::Cluster
        };
        Some(Operation { verb, scope, subresource })
    }

    fn slot(&self) -> usize {
        self.verb as usize * SCOPES.len() + self.scope as usize
    }
}

/// The index of the non-resource path a GET of `segments` is counted under.
pub fn non_resource_path(segments: &[&str]) -> Option<usize> {
    let path = match segments {
        ["api"] | ["api", _] => "/api",
        ["apis"] | ["apis", _] | ["apis", _, _] => "/apis",
        [first @ ("healthz" | "livez" | "readyz"), ..] => match *first {
            "healthz" => "/healthz",
            "livez" => "/livez",
            _ => "/readyz",
        },
        ["version"] => "/version",
        ["metrics"] => "/metrics",
        ["openapi", "v2"] => "/openapi/v2",
        ["openapi", "v3", ..] => "/openapi/v3",
        [".well-known", "openid-configuration"] => "/.well-known/openid-configuration",
        ["openid", "v1", "jwks"] => "/openid/v1/jwks",
        _ => return None,
    };
    NON_RESOURCE_PATHS.iter().position(|p| *p == path)
}

/// The counters of one kind of request: per status code, and its durations.
#[derive(Debug)]
struct Requests {
    /// One per [`CODES`], then one for any other code.
    codes: Box<[Counter]>,
    durations: Histogram,
}

impl Requests {
    fn new() -> Requests {
        Requests {
            codes: (0..=CODES.len()).map(|_| Counter::default()).collect(),
            durations: Histogram::new(REQUEST_DURATION_BUCKETS),
        }
    }

    fn observe(&self, code: u16, elapsed: Duration) {
        let slot = CODES.binary_search(&code).unwrap_or(CODES.len());
        self.codes[slot].inc();
        self.durations.observe(elapsed);
    }

    /// (code, count) of every code seen.
    fn seen(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.codes.iter().enumerate().filter(|(_, c)| c.get() > 0).map(|(i, c)| {
            let code = CODES.get(i).map_or_else(|| "other".to_string(), |code| code.to_string());
            (code, c.get())
        })
    }
}

type VerbScopes = [OnceLock<Box<Requests>>; VERBS.len() * SCOPES.len()];

/// The request counts of one resource (group, version, plural), kept by the registry for
/// as long as the member runs, across changes of the CRD that serves it.
#[derive(Debug, Default)]
pub struct ResourceStats {
    group: String,
    version: String,
    resource: String,
    kind: String,
    /// Per subresource, per (verb, scope); allocated as first seen.
    requests: [OnceLock<Box<VerbScopes>>; SUBRESOURCES.len()],
    /// Watches open now, per scope.
    watches: [Gauge; SCOPES.len()],
}

impl ResourceStats {
    pub fn new(group: &str, version: &str, resource: &str, kind: &str) -> ResourceStats {
        ResourceStats {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
            kind: kind.into(),
            ..ResourceStats::default()
        }
    }

    pub fn is(&self, group: &str, version: &str, resource: &str) -> bool {
        self.group == group && self.version == version && self.resource == resource
    }

    fn requests(&self, operation: Operation) -> &Requests {
        let by_verb =
            self.requests[operation.subresource].get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        by_verb[operation.slot()].get_or_init(|| Box::new(Requests::new()))
    }

    pub fn observe(&self, operation: Operation, code: u16, elapsed: Duration) {
        self.requests(operation).observe(code, elapsed);
    }

    /// Counts a watch as open until what this returns is dropped.
    pub fn watch_opened(self: &Arc<Self>, scope: Scope) -> OpenWatch {
        self.watches[scope as usize].inc();
        OpenWatch { stats: self.clone(), scope }
    }

    /// Every (subresource, verb, scope) seen, with its counters.
    fn seen(&self) -> impl Iterator<Item = (&'static str, &'static str, &'static str, &Requests)> {
        self.requests.iter().enumerate().filter_map(|(s, v)| v.get().map(|v| (s, v))).flat_map(|(s, by_verb)| {
            by_verb.iter().enumerate().filter_map(move |(slot, requests)| {
                requests.get().map(|r| (SUBRESOURCES[s], VERBS[slot / SCOPES.len()], SCOPES[slot % SCOPES.len()], &**r))
            })
        })
    }

    fn watched(&self, scope: Scope) -> bool {
        let slot = Operation { verb: Verb::Watch, scope, subresource: 0 }.slot();
        self.requests[0].get().is_some_and(|by_verb| by_verb[slot].get().is_some())
    }
}

/// A watch being served; counted as open while this lives.
pub struct OpenWatch {
    stats: Arc<ResourceStats>,
    scope: Scope,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.stats.watches[self.scope as usize].dec();
    }
}

/// What a request turned out to be, once routed, for counting when it is answered.
#[derive(Default)]
pub enum Observed {
    /// Not counted: a path that is not served, or a request refused before it was routed.
    #[default]
    Nothing,
    NonResource(usize),
    Resource(Arc<ResourceStats>, Operation),
}

impl Observed {
    pub fn record(&self, instrumentation: &Instrumentation, code: u16, started: Instant) {
        match self {
            Observed::Nothing => {}
            Observed::NonResource(path) => instrumentation.non_resource[*path].observe(code, started.elapsed()),
            Observed::Resource(stats, operation) => stats.observe(*operation, code, started.elapsed()),
        }
    }
}

/// The API's own measurements and the other collectors `/metrics` reports.
pub struct Instrumentation {
    non_resource: Box<[Requests]>,
    collectors: Vec<Arc<dyn Collect>>,
    object_counts: tokio::sync::Mutex<Option<ObjectCounts>>,
}

/// Objects per resource, and when they were counted.
struct ObjectCounts {
    at: Instant,
    counts: Vec<(String, u64)>,
}

impl Default for Instrumentation {
    fn default() -> Self {
        Instrumentation {
            non_resource: NON_RESOURCE_PATHS.iter().map(|_| Requests::new()).collect(),
            collectors: Vec::new(),
            object_counts: tokio::sync::Mutex::new(None),
        }
    }
}

impl crate::rest::Api {
    /// Reports `collectors` on `/metrics` too (the store, the etcd API: what the binary runs
    /// beside the API).
    pub fn with_collectors(mut self, collectors: Vec<Arc<dyn Collect>>) -> Self {
        self.instrumentation.collectors = collectors;
        self
    }

    /// The text `/metrics` answers with.
    pub async fn exposition(&self) -> String {
        let objects = self.object_counts().await;
        let mut encoder = Encoder::new();
        write_requests(&mut encoder, &self.registry, &self.instrumentation);
        let mut family = encoder.family(
            "apiserver_storage_objects",
            "Number of stored objects at the time of last check split by kind.",
            Kind::Gauge,
        );
        for (resource, count) in &objects {
            family.sample(&[("resource", resource)], *count);
        }
        for collector in &self.instrumentation.collectors {
            collector.collect(&mut encoder);
        }
        keel_prometheus::process::Process.collect(&mut encoder);
        encoder.finish()
    }

    /// Objects stored per resource (`deployments.apps`, `pods`), counted again when the last
    /// count is older than [`OBJECT_COUNT_PERIOD`]. Counting walks the keys (not the values)
    /// of each resource in this member's replica.
    async fn object_counts(&self) -> Vec<(String, u64)> {
        let mut cached = self.instrumentation.object_counts.lock().await;
        if let Some(last) = &*cached
            && last.at.elapsed() < OBJECT_COUNT_PERIOD
        {
            return last.counts.clone();
        }
        let mut counts: Vec<(String, u64)> = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        for rt in self.registry.all().iter() {
            // Versions of one resource share their storage; computed kinds have none.
            if rt.read_only || rt.create_only || prefixes.contains(&rt.storage_prefix) {
                continue;
            }
            prefixes.push(rt.storage_prefix.clone());
            let prefix = &rt.storage_prefix;
            match self.storage.list(prefix, &prefix_end(prefix), 0, 1, Consistency::Local).await {
                Ok(page) => counts.push((rt.qualified(), page.items.len() as u64 + page.remaining.max(0) as u64)),
                Err(e) => tracing::debug!(resource = %rt.qualified(), error = %e, "cannot count stored objects"),
            }
        }
        counts.sort();
        *cached = Some(ObjectCounts { at: Instant::now(), counts: counts.clone() });
        counts
    }
}

fn write_requests(encoder: &mut Encoder, registry: &Registry, instrumentation: &Instrumentation) {
    let resources = registry.request_stats();
    let non_resource = || {
        NON_RESOURCE_PATHS
            .iter()
            .zip(instrumentation.non_resource.iter())
            .filter(|(_, r)| r.codes.iter().any(|c| c.get() > 0))
    };
    let mut family = encoder.family(
        "apiserver_request_total",
        "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
        Kind::Counter,
    );
    for stats in &resources {
        for (subresource, verb, scope, requests) in stats.seen() {
            for (code, count) in requests.seen() {
                family.sample(&request_labels(verb, Some(stats), subresource, scope, Some(code.as_str())), count);
            }
        }
    }
    for (path, requests) in non_resource() {
        for (code, count) in requests.seen() {
            family.sample(&non_resource_labels(path, Some(code.as_str())), count);
        }
    }
    let mut family = encoder.family(
        "apiserver_request_duration_seconds",
        "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
        Kind::Histogram,
    );
    for stats in &resources {
        for (subresource, verb, scope, requests) in stats.seen() {
            family.histogram(&request_labels(verb, Some(stats), subresource, scope, None), &requests.durations);
        }
    }
    for (path, requests) in non_resource() {
        family.histogram(&non_resource_labels(path, None), &requests.durations);
    }
    let mut family = encoder.family(
        "apiserver_longrunning_requests",
        "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.",
        Kind::Gauge,
    );
    for stats in &resources {
        for scope in [Scope::Resource, Scope::Namespace, Scope::Cluster] {
            if stats.watched(scope) {
                family.sample(
                    &request_labels("WATCH", Some(stats), "", SCOPES[scope as usize], None),
                    stats.watches[scope as usize].get(),
                );
            }
        }
    }
    let mut family = encoder.family(
        "apiserver_registered_watchers",
        "Number of currently registered watchers for a given resources",
        Kind::Gauge,
    );
    for stats in &resources {
        if [Scope::Resource, Scope::Namespace, Scope::Cluster].into_iter().any(|s| stats.watched(s)) {
            let open: i64 = stats.watches.iter().map(Gauge::get).sum();
            family.sample(
                &[("group", stats.group.as_str()), ("version", stats.version.as_str()), ("kind", stats.kind.as_str())],
                open,
            );
        }
    }
}

/// A non-resource path is counted as kube counts `/healthz`: a GET with the path as its
/// subresource.
fn non_resource_labels<'a>(path: &'a str, code: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    request_labels("GET", None, path, "", code)
}

/// The labels of kube's request families; only the counter carries `code`.
fn request_labels<'a>(
    verb: &'a str,
    resource: Option<&'a ResourceStats>,
    subresource: &'a str,
    scope: &'a str,
    code: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let (group, version, plural) =
        resource.map_or(("", "", ""), |r| (r.group.as_str(), r.version.as_str(), r.resource.as_str()));
    let mut labels = vec![
        ("verb", verb),
        ("group", group),
        ("version", version),
        ("resource", plural),
        ("subresource", subresource),
        ("scope", scope),
        ("component", COMPONENT),
    ];
    labels.extend(code.map(|code| ("code", code)));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, named: bool, in_namespace: bool, watching: bool, sub: Option<&str>) -> Option<(Verb, Scope)> {
        Operation::classify(&method, named, in_namespace, watching, sub, None).map(|o| (o.verb, o.scope))
    }

    #[test]
    fn requests_are_named_as_kube_apiserver_names_them() {
        use Scope::*;
        use Verb::*;
        // (method, names an object, in a namespace, watching, subresource) -> (verb, scope).
        type Case = (Method, bool, bool, bool, Option<&'static str>, Option<(Verb, Scope)>);
        let table: &[Case] = &[
            (Method::GET, true, true, false, None, Some((Get, Resource))),
            (Method::GET, false, true, false, None, Some((List, Namespace))),
            (Method::GET, false, false, false, None, Some((List, Cluster))),
            (Method::GET, false, true, true, None, Some((Watch, Namespace))),
            (Method::GET, false, false, true, None, Some((Watch, Cluster))),
            (Method::GET, true, true, true, None, Some((Watch, Resource))),
            // A create is scoped to the resource even without a name.
            (Method::POST, false, true, false, None, Some((Post, Resource))),
            (Method::POST, false, false, false, None, Some((Post, Resource))),
            (Method::PUT, true, true, false, Some("status"), Some((Put, Resource))),
            (Method::PATCH, true, false, false, Some("scale"), Some((Patch, Resource))),
            (Method::DELETE, true, true, false, None, Some((Delete, Resource))),
            // deletecollection.
            (Method::DELETE, false, true, false, None, Some((Delete, Namespace))),
            (Method::GET, true, true, false, Some("log"), Some((Get, Resource))),
            (Method::GET, true, true, false, Some("exec"), Some((Connect, Resource))),
            (Method::POST, true, true, false, Some("portforward"), Some((Connect, Resource))),
            (Method::POST, true, true, false, Some("eviction"), Some((Post, Resource))),
            (Method::GET, true, true, false, Some("nonsense"), None),
            (Method::OPTIONS, true, true, false, None, None),
        ];
        for (method, named, in_namespace, watching, sub, expected) in table {
            assert_eq!(
                op(method.clone(), *named, *in_namespace, *watching, *sub),
                *expected,
                "{method} named={named} namespace={in_namespace} watch={watching} sub={sub:?}"
            );
        }
        let apply = Operation::classify(&Method::PATCH, true, true, false, None, Some("application/apply-patch+yaml"));
        assert_eq!(apply.map(|o| o.verb), Some(Apply));
        let merge = Operation::classify(&Method::PATCH, true, true, false, None, Some("application/merge-patch+json"));
        assert_eq!(merge.map(|o| o.verb), Some(Patch));
    }

    #[test]
    fn non_resource_paths_are_grouped() {
        let path = |p: &str| {
            let segments: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            non_resource_path(&segments).map(|i| NON_RESOURCE_PATHS[i])
        };
        assert_eq!(path("/healthz"), Some("/healthz"));
        assert_eq!(path("/readyz/etcd"), Some("/readyz"));
        assert_eq!(path("/api/v1"), Some("/api"));
        assert_eq!(path("/apis/apps/v1"), Some("/apis"));
        assert_eq!(path("/openapi/v3/apis/apps/v1"), Some("/openapi/v3"));
        assert_eq!(path("/metrics"), Some("/metrics"));
        assert_eq!(path("/api/v1/pods"), None, "a resource, counted as one");
        assert_eq!(path("/nowhere"), None);
    }

    #[test]
    fn every_code_has_a_counter_and_codes_ascend() {
        assert!(CODES.windows(2).all(|w| w[0] < w[1]));
        let requests = Requests::new();
        for code in [200, 201, 404, 409, 422, 429, 504, 599] {
            requests.observe(code, Duration::from_millis(3));
        }
        let seen: Vec<(String, u64)> = requests.seen().collect();
        let names: Vec<&str> = seen.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["200", "201", "404", "409", "422", "429", "504", "other"]);
        assert_eq!(requests.durations.count(), 8);
    }

    #[test]
    fn counts_are_written_with_kube_apiserver_labels() {
        let registry = Registry::new(crate::registry::RuntimeConfig::default());
        let configmaps = registry.find("", "v1", "configmaps").unwrap();
        let create = Operation::classify(&Method::POST, false, true, false, None, None).unwrap();
        for _ in 0..3 {
            configmaps.stats.observe(create, 201, Duration::from_millis(2));
        }
        configmaps.stats.observe(create, 409, Duration::from_millis(1));
        let watch = Operation::classify(&Method::GET, false, false, true, None, None).unwrap();
        configmaps.stats.observe(watch, 200, Duration::from_millis(1));
        let open = configmaps.stats.watch_opened(Scope::Cluster);
        let instrumentation = Instrumentation::default();
        instrumentation.non_resource[non_resource_path(&["healthz"]).unwrap()].observe(200, Duration::from_millis(1));

        let mut encoder = Encoder::new();
        write_requests(&mut encoder, &registry, &instrumentation);
        let text = encoder.finish();
        let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        assert_eq!(
            line("apiserver_request_total{verb=\"POST\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"resource\",component=\"apiserver\",code=\"201\"}").as_deref().and_then(|l| l.rsplit(' ').next()),
            Some("3"),
            "{text}"
        );
        assert!(text.contains("code=\"409\"} 1\n"), "{text}");
        assert!(
            text.contains("apiserver_request_duration_seconds_count{verb=\"POST\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"resource\",component=\"apiserver\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("apiserver_request_total{verb=\"GET\",group=\"\",version=\"\",resource=\"\",subresource=\"/healthz\",scope=\"\",component=\"apiserver\",code=\"200\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("apiserver_longrunning_requests{verb=\"WATCH\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\",scope=\"cluster\",component=\"apiserver\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("apiserver_registered_watchers{group=\"\",version=\"v1\",kind=\"ConfigMap\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("resource=\"pods\""), "resources never asked for are left out:\n{text}");
        drop(open);
        let mut encoder = Encoder::new();
        write_requests(&mut encoder, &registry, &instrumentation);
        assert!(encoder.finish().contains("kind=\"ConfigMap\"} 0\n"), "a closed watch is no longer counted");
    }
}
