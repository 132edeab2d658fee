//! A real Kubernetes client library against keel: a kube-rs reflector (list, watch, cache)
//! on one member survives that member's death and a 410 Gone after compaction, and ends with
//! a cache identical to what the server holds.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use keel_proto::etcdserverpb as pb;
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Config};
use support::eventually;
use support::processes::Cluster;

fn client(api_addr: &str) -> Client {
    let mut config = Config::new(format!("http://{api_addr}").parse().expect("api url"));
    config.default_namespace = "default".into();
    config.read_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).expect("kube client")
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"test": "reflector"}},
        "data": {"value": value},
    }))
    .expect("configmap")
}

/// name -> (resourceVersion, data.value), as the server lists it.
async fn server_state(api: &Api<ConfigMap>) -> Option<BTreeMap<String, (String, String)>> {
    let list = api.list(&ListParams::default().labels("test=reflector")).await.ok()?;
    Some(
        list.items
            .into_iter()
            .map(|cm| {
                let value = cm.data.as_ref().and_then(|d| d.get("value").cloned()).unwrap_or_default();
                (cm.metadata.name.unwrap_or_default(), (cm.metadata.resource_version.unwrap_or_default(), value))
            })
            .collect(),
    )
}

fn cache_state(store: &reflector::Store<ConfigMap>) -> BTreeMap<String, (String, String)> {
    store
        .state()
        .iter()
        .filter(|cm| cm.metadata.labels.as_ref().and_then(|l| l.get("test")).map(String::as_str) == Some("reflector"))
        .map(|cm| {
            let value = cm.data.as_ref().and_then(|d| d.get("value").cloned()).unwrap_or_default();
            (
                cm.metadata.name.clone().unwrap_or_default(),
                (cm.metadata.resource_version.clone().unwrap_or_default(), value),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_reflector_survives_member_loss_and_410() {
    support::init_logging();
    let mut cluster = Cluster::start(3, &[]).await;
    let watched = 0;
    let writer_member = 1;
    let watched_api: Api<ConfigMap> = Api::default_namespaced(client(&cluster.members[watched].api));
    let writer_api: Api<ConfigMap> = Api::default_namespaced(client(&cluster.members[writer_member].api));
    eventually(Duration::from_secs(20), "the default namespace", || async {
        writer_api.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;

    let (store, writer) = reflector::store::<ConfigMap>();
    let stream =
        reflector(writer, watcher(watched_api.clone(), watcher::Config::default())).default_backoff().touched_objects();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errors_seen = errors.clone();
    let reflector_task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if item.is_err() {
                errors_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });

    for i in 0..20 {
        writer_api.create(&PostParams::default(), &config_map(&format!("cm-{i}"), "v1")).await.expect("create");
    }
    eventually(Duration::from_secs(20), "the cache to hold the first 20", || async {
        let server = server_state(&writer_api).await?;
        (server.len() == 20 && cache_state(&store) == server).then_some(())
    })
    .await;

    let last_seen = cache_state(&store).values().map(|(rv, _)| rv.parse::<i64>().unwrap_or(0)).max().expect("cache");

    // The watched member dies; changes go on elsewhere and history is compacted past them,
    // so the reflector's resume comes back 410 Gone and it must list again.
    cluster.members[watched].kill();
    cluster.wait_for_leader().await;
    for i in 0..5 {
        let mut cm = writer_api.get(&format!("cm-{i}")).await.expect("get");
        cm.data = Some([("value".to_string(), "v2".to_string())].into());
        writer_api.replace(&format!("cm-{i}"), &PostParams::default(), &cm).await.expect("replace");
    }
    for i in 5..10 {
        writer_api.delete(&format!("cm-{i}"), &DeleteParams::default()).await.expect("delete");
    }
    for i in 20..25 {
        writer_api.create(&PostParams::default(), &config_map(&format!("cm-{i}"), "v1")).await.expect("create");
    }
    let etcd = cluster.members[writer_member].etcd();
    let revision = etcd.status().await.expect("status").header.expect("header").revision;
    etcd.kv.clone().compact(pb::CompactionRequest { revision, physical: true }).await.expect("compact");
    cluster.wait_applied(revision).await;

    cluster.members[watched].start();
    eventually(Duration::from_secs(60), "the cache to match the server after the restart", || async {
        let server = server_state(&writer_api).await?;
        (server.len() == 20 && cache_state(&store) == server).then_some(())
    })
    .await;
    // Resuming from where the reflector was before the outage is refused with 410 Gone, so
    // its cache can only have come from a fresh list.
    let resumed = watched_api.watch(&WatchParams::default(), &last_seen.to_string()).await.expect("watch request");
    futures::pin_mut!(resumed);
    match resumed.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410, "{e:?}"),
        Some(Err(kube::Error::Api(e))) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("a watch from revision {last_seen} should be refused with 410, got {other:?}"),
    }
    let final_state = cache_state(&store);
    assert_eq!(final_state.get("cm-0").map(|v| v.1.as_str()), Some("v2"));
    assert!(!final_state.contains_key("cm-5"));
    assert!(final_state.contains_key("cm-24"));
    // A watch resumes on another member from the last resourceVersion seen on this one:
    // revisions are the store's, the same on every member.
    let resume_from = cache_state(&store).values().map(|(rv, _)| rv.parse::<i64>().unwrap_or(0)).max().expect("cache");
    watched_api
        .create(&PostParams::default(), &config_map("cm-after", "v1"))
        .await
        .expect("create on the watched member");
    let elsewhere = writer_api.watch(&WatchParams::default(), &resume_from.to_string()).await.expect("watch elsewhere");
    futures::pin_mut!(elsewhere);
    let mut seen_after = false;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(10), elsewhere.next()).await {
        if let Ok(WatchEvent::Added(cm)) = event
            && cm.metadata.name.as_deref() == Some("cm-after")
        {
            seen_after = true;
            break;
        }
    }
    assert!(seen_after, "a watch resumed on another member from {resume_from} should see the next create");

    // The outage reached the reflector as errors it recovered from.
    assert!(errors.load(std::sync::atomic::Ordering::Relaxed) > 0);
    reflector_task.abort();
}
