//! Bad input to the Kubernetes API gets a clear `Status` with the right code, and nothing is
//! written: malformed JSON and YAML, wrong kinds and versions, invalid names, bodies over
//! 3 MiB, unknown fields under strict validation, unknown patch types.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::eventually;
use support::processes::Cluster;

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    async fn send(&self, method: Method, path: &str, content_type: &str, body: impl Into<Bytes>) -> (u16, Value) {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(Full::new(body.into()))
            .unwrap();
        let response = self.client.request(request).await.expect("request");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> u16 {
        self.send(Method::GET, path, "application/json", Bytes::new()).await.0
    }
}

/// Asserts a failure `Status` with this code and reason, whose message mentions `needle`.
fn assert_status(response: &(u16, Value), code: u16, reason: &str, needle: &str) {
    let (status, body) = response;
    assert_eq!(*status, code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.contains(needle), "message {message:?} should mention {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_status_errors_and_write_nothing() {
    support::init_logging();
    let cluster = Cluster::start(1, &[]).await;
    let http = Http {
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        base: format!("http://{}", cluster.members[0].api),
    };
    eventually(Duration::from_secs(20), "the default namespace", || async {
        (http.get("/api/v1/namespaces/default").await == 200).then_some(())
    })
    .await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let json_ct = "application/json";

    assert_status(&http.send(Method::POST, cms, json_ct, "{\"kind\": ").await, 400, "BadRequest", "not valid JSON");
    assert_status(
        &http.send(Method::POST, cms, "application/yaml", "kind: [unclosed").await,
        400,
        "BadRequest",
        "not valid YAML",
    );
    assert_status(&http.send(Method::POST, cms, json_ct, "[1, 2]").await, 400, "BadRequest", "JSON object");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong-kind"}});
    assert_status(
        &http.send(Method::POST, cms, json_ct, secret.to_string()).await,
        400,
        "BadRequest",
        "does not match the expected kind",
    );
    let wrong_version = json!({"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "wrong-version"}});
    assert_status(
        &http.send(Method::POST, cms, json_ct, wrong_version.to_string()).await,
        400,
        "BadRequest",
        "API version",
    );
    let bad_name = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_Valid"}});
    let response = http.send(Method::POST, cms, json_ct, bad_name.to_string()).await;
    assert_status(&response, 422, "Invalid", "metadata.name");
    assert_eq!(response.1["details"]["causes"][0]["field"], "metadata.name");
    let bad_label =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad-label", "labels": {"a": "b c"}}});
    assert_status(
        &http.send(Method::POST, cms, json_ct, bad_label.to_string()).await,
        422,
        "Invalid",
        "metadata.labels",
    );
    let wrong_type =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "wrong-type"}, "data": {"a": 1}});
    assert_status(
        &http.send(Method::POST, cms, json_ct, wrong_type.to_string()).await,
        400,
        "BadRequest",
        "cannot be handled",
    );
    let unknown =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unknown-field"}, "bogus": true});
    assert_status(
        &http.send(Method::POST, &format!("{cms}?fieldValidation=Strict"), json_ct, unknown.to_string()).await,
        400,
        "BadRequest",
        "unknown field \"bogus\"",
    );
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "too-big"}, "data": {"x": "x".repeat(3 * 1024 * 1024 + 1)}});
    assert_status(
        &http.send(Method::POST, cms, json_ct, big.to_string()).await,
        413,
        "RequestEntityTooLarge",
        "larger",
    );
    assert_status(
        &http.send(Method::POST, cms, "text/plain", "hello").await,
        415,
        "UnsupportedMediaType",
        "unknown format",
    );
    assert_status(
        &http.send(Method::POST, cms, "application/vnd.kubernetes.protobuf", "not protobuf").await,
        400,
        "BadRequest",
        "protobuf",
    );
    let wrong_namespace =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "elsewhere", "namespace": "kube-system"}});
    assert_status(
        &http.send(Method::POST, cms, json_ct, wrong_namespace.to_string()).await,
        400,
        "BadRequest",
        "namespace",
    );
    let missing_ns = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nowhere"}});
    assert_status(
        &http.send(Method::POST, "/api/v1/namespaces/no-such-ns/configmaps", json_ct, missing_ns.to_string()).await,
        404,
        "NotFound",
        "no-such-ns",
    );

    // Defaulting runs before validation. A value of the wrong type on defaulting's way is
    // refused by validation: it once panicked the handler (a string spec; the client saw the
    // connection drop) or was replaced by defaults (a number where an object belongs).
    let pods = "/api/v1/namespaces/default/pods";
    let string_spec =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "string-spec"}, "spec": "not an object"});
    assert_status(
        &http.send(Method::POST, pods, json_ct, string_spec.to_string()).await,
        400,
        "BadRequest",
        "cannot be handled as a Pod",
    );
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let numeric_rolling_update = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "numeric-rolling-update"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "strategy": {"rollingUpdate": 3},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}});
    assert_status(
        &http.send(Method::POST, deployments, json_ct, numeric_rolling_update.to_string()).await,
        400,
        "BadRequest",
        "cannot be handled as a Deployment",
    );

    // Nothing of the above was written.
    let (_, list) = http.send(Method::GET, cms, json_ct, Bytes::new()).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    for kind in [pods, deployments] {
        let (_, list) = http.send(Method::GET, kind, json_ct, Bytes::new()).await;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    }

    // Conflicts, missing objects, unknown patch types, unknown resources and bad queries.
    let good = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "good"}, "data": {"a": "1"}});
    assert_eq!(http.send(Method::POST, cms, json_ct, good.to_string()).await.0, 201);
    assert_status(
        &http.send(Method::POST, cms, json_ct, good.to_string()).await,
        409,
        "AlreadyExists",
        "already exists",
    );
    let stale = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "good", "resourceVersion": "1"}, "data": {"a": "2"}});
    assert_status(
        &http.send(Method::PUT, &format!("{cms}/good"), json_ct, stale.to_string()).await,
        409,
        "Conflict",
        "modified",
    );
    assert_status(
        &http.send(Method::GET, &format!("{cms}/missing"), json_ct, Bytes::new()).await,
        404,
        "NotFound",
        "missing",
    );
    assert_status(
        &http.send(Method::PATCH, &format!("{cms}/good"), "application/xml", "<a/>").await,
        415,
        "UnsupportedMediaType",
        "",
    );
    assert_status(
        &http
            .send(
                Method::PATCH,
                &format!("{cms}/good"),
                "application/json-patch+json",
                "[{\"op\": \"remove\", \"path\": \"/nope\"}]",
            )
            .await,
        422,
        "Invalid",
        "could not be applied",
    );
    assert_eq!(http.get("/api/v1/namespaces/default/widgets").await, 404);
    assert_status(
        &http.send(Method::GET, &format!("{cms}?labelSelector=a%20b%20c"), json_ct, Bytes::new()).await,
        400,
        "BadRequest",
        "",
    );
    assert_status(
        &http.send(Method::GET, &format!("{cms}?continue=garbage"), json_ct, Bytes::new()).await,
        400,
        "BadRequest",
        "continue",
    );
    let (_, kept) = http.send(Method::GET, &format!("{cms}/good"), json_ct, Bytes::new()).await;
    assert_eq!(kept["data"]["a"], "1");
}
