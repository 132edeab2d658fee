//! The gRPC object API beside REST, and `keel apply --atomic`: many objects at one revision,
//! or none of them.

mod support;

use std::process::Command;
use std::time::Duration;

use keel_proto::objects::objects_client::ObjectsClient;
use keel_proto::objects::{
    ApplyRequest, DeleteRequest, GetRequest, ListRequest, PatchRequest, Target, WatchRequest, WriteRequest,
};
use serde_json::{Value, json};
use support::eventually;
use support::processes::{Cluster, keel_binary};
use tonic::Code;

fn target(api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Target> {
    Some(Target {
        api_version: api_version.into(),
        kind: kind.into(),
        resource: String::new(),
        namespace: namespace.into(),
        name: name.into(),
    })
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_verbs_and_atomic_apply() {
    support::init_logging();
    let cluster = Cluster::start(3, &[]).await;
    let api = cluster.members[1].api.clone();
    let mut client = eventually(Duration::from_secs(20), "the object API", || async {
        let mut c = ObjectsClient::connect(format!("http://{api}")).await.ok()?;
        c.get(GetRequest { target: target("v1", "Namespace", "", "default") }).await.ok()?;
        Some(c)
    })
    .await;

    // Create, get, conflicting create, update, patch, list, watch, delete.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one", "namespace": "default", "labels": {"g": "1"}}, "data": {"a": "1"}});
    let created =
        parse(&client.create(WriteRequest { json: bytes(&cm), ..Default::default() }).await.unwrap().into_inner().json);
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let watch_from = rv.clone();
    let got = parse(
        &client
            .get(GetRequest { target: target("v1", "ConfigMap", "default", "one") })
            .await
            .unwrap()
            .into_inner()
            .json,
    );
    assert_eq!(got["data"]["a"], "1");
    let again = client.create(WriteRequest { json: bytes(&cm), ..Default::default() }).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let status: Value = serde_json::from_slice(again.details()).expect("Status in details");
    assert_eq!(status["reason"], "AlreadyExists");
    let mut stale = got.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    assert_eq!(
        client.update(WriteRequest { json: bytes(&stale), ..Default::default() }).await.unwrap_err().code(),
        Code::Aborted
    );
    let mut fresh = got.clone();
    fresh["data"]["a"] = json!("2");
    client.update(WriteRequest { json: bytes(&fresh), ..Default::default() }).await.unwrap();
    client
        .patch(PatchRequest {
            target: target("v1", "ConfigMap", "default", "one"),
            patch_type: "merge".into(),
            patch: bytes(&json!({"data": {"b": "3"}})),
            ..Default::default()
        })
        .await
        .unwrap();
    let list = client
        .list(ListRequest {
            target: target("v1", "ConfigMap", "default", ""),
            label_selector: "g=1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.items.len(), 1);
    assert_eq!(parse(&list.items[0])["data"], json!({"a": "2", "b": "3"}));
    let mut events = client
        .watch(WatchRequest {
            target: target("v1", "ConfigMap", "default", "one"),
            resource_version: watch_from,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, "MODIFIED");
    assert_eq!(parse(&first.object)["data"]["a"], "2");
    client
        .delete(DeleteRequest { target: target("v1", "ConfigMap", "default", "one"), ..Default::default() })
        .await
        .unwrap();
    let missing = client.get(GetRequest { target: target("v1", "ConfigMap", "default", "one") }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let invalid = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad"}});
    assert_eq!(
        client.create(WriteRequest { json: bytes(&invalid), ..Default::default() }).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        client.create(WriteRequest { json: b"{not json".to_vec(), ..Default::default() }).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // keel apply --atomic: a namespace and what lives in it, at one revision.
    let dir = cluster.dir().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: shop}\ndata: {a: \"1\"}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: web, namespace: shop}\nstringData: {token: t0p}\n",
    )
    .unwrap();
    let output = Command::new(keel_binary())
        .args(["apply", "--atomic", "-f"])
        .arg(&dir)
        .args(["--server", &api])
        .output()
        .unwrap();
    assert!(output.status.success(), "keel apply: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("3 objects applied atomically"), "{stdout}");
    let revisions: Vec<String> = [
        ("v1", "Namespace", ""),
        ("v1", "ConfigMap", "shop"),
        ("v1", "Secret", "shop"),
        ("v1", "ServiceAccount", "shop"),
    ]
    .iter()
    .map(|(v, k, ns)| {
        let name = match *k {
            "Namespace" => "shop",
            "ConfigMap" => "cfg",
            "Secret" => "web",
            _ => "default",
        };
        (v, k, ns, name)
    })
    .map(|(v, k, ns, name)| {
        let mut c = client.clone();
        let t = target(v, k, ns, name);
        async move {
            parse(&c.get(GetRequest { target: t }).await.unwrap().into_inner().json)["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string()
        }
    })
    .collect::<futures::stream::FuturesOrdered<_>>()
    .collect::<Vec<_>>()
    .await;
    assert!(revisions.iter().all(|r| *r == revisions[0]), "one revision for all: {revisions:?}");

    // A batch with one invalid object writes nothing at all.
    let good = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "good", "namespace": "shop"}});
    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"}, "data": {"a": "changed"}});
    let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name", "namespace": "shop"}});
    let refused = client
        .apply_atomic(ApplyRequest { objects: vec![bytes(&good), bytes(&changed), bytes(&bad)], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        client.get(GetRequest { target: target("v1", "ConfigMap", "shop", "good") }).await.unwrap_err().code(),
        Code::NotFound
    );
    let cfg = parse(
        &client.get(GetRequest { target: target("v1", "ConfigMap", "shop", "cfg") }).await.unwrap().into_inner().json,
    );
    assert_eq!(cfg["data"]["a"], "1");
    // The same batch without the bad object lands whole, at one new revision.
    let applied = client
        .apply_atomic(ApplyRequest { objects: vec![bytes(&good), bytes(&changed)], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let rvs: Vec<String> =
        applied.objects.iter().map(|o| parse(o)["metadata"]["resourceVersion"].as_str().unwrap().to_string()).collect();
    assert_eq!(rvs, vec![applied.revision.to_string(), applied.revision.to_string()]);
    // A bad file is a CLI error with a non-zero exit.
    std::fs::write(dir.join("broken.yaml"), "kind: [unclosed").unwrap();
    let output = Command::new(keel_binary())
        .args(["apply", "--atomic", "-f"])
        .arg(dir.join("broken.yaml"))
        .args(["--server", &api])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not valid YAML"));

    // The object API's calls are counted on the member's /metrics as the etcd API's are.
    let metrics = support::prometheus::scrape(&api);
    let handled = |method: &str, code: &str| {
        metrics.count(
            "grpc_server_handled_total",
            &[("grpc_service", "keel.objects.v1.Objects"), ("grpc_method", method), ("grpc_code", code)],
        )
    };
    assert!(handled("Create", "OK") >= 1.0);
    assert_eq!(handled("Create", "AlreadyExists"), 1.0);
    assert!(handled("Get", "NotFound") >= 2.0);
    assert!(handled("ApplyAtomic", "OK") >= 1.0);
    let watches = &[("grpc_service", "keel.objects.v1.Objects"), ("grpc_method", "Watch")];
    assert!(metrics.count("grpc_server_started_total", watches) >= 1.0);
}

use futures::StreamExt;
