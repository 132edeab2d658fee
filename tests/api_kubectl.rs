//! The real `kubectl` (v1.32, as installed on the machine) against a follower of a
//! three-member cluster of `keel server` processes, with the leader killed in the middle.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::eventually;
use support::kubectl::Kubectl;
use support::processes::Cluster;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: busybox:1.36
        env: [{name: MODE, value: blue}]
      - name: sidecar
        image: busybox:1.36
"#;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}, scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              replicas: {type: integer}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

fn kubectl_available() -> bool {
    Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_a_follower_while_the_leader_dies() {
    support::init_logging();
    assert!(kubectl_available(), "kubectl must be installed (the CI installs it)");
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let k = Kubectl::new(&work, &cluster.members[follower].api.clone());

    // The system namespaces appear once the cluster has a leader.
    eventually(Duration::from_secs(20), "the default namespace", || async {
        k.run(&["get", "namespace", "default"]).status.success().then_some(())
    })
    .await;

    // Discovery.
    let resources = k.ok(&["api-resources"]);
    for expected in ["pods", "deployments", "customresourcedefinitions", "horizontalpodautoscalers", "leases", "events"]
    {
        assert!(resources.contains(expected), "api-resources lacks {expected}:\n{resources}");
    }
    let versions = k.ok(&["api-versions"]);
    for expected in ["v1", "apps/v1", "batch/v1", "autoscaling/v2", "rbac.authorization.k8s.io/v1"] {
        assert!(versions.lines().any(|l| l == expected), "api-versions lacks {expected}:\n{versions}");
    }

    // Create, then apply twice with a change in between: a three-way merge that removes a
    // container and changes another.
    let manifest = k.write("web.yaml", DEPLOYMENT);
    assert!(k.ok(&["create", "-f", &manifest]).contains("deployment.apps/web created"));
    k.fails(&["create", "-f", &manifest]);
    k.ok(&["apply", "-f", &manifest]);
    let changed = DEPLOYMENT
        .replace("replicas: 2", "replicas: 3")
        .replace("value: blue", "value: green")
        .replace("      - name: sidecar\n        image: busybox:1.36\n", "");
    k.write("web.yaml", &changed);
    assert!(k.ok(&["apply", "-f", &manifest]).contains("configured"));
    let spec = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].name} {.spec.template.spec.containers[0].env[0].value}"]);
    assert_eq!(spec, "3 app green");
    assert!(k.ok(&["apply", "-f", &manifest]).contains("unchanged"));

    // A `kind: List` is validated by kubectl itself, against the protobuf OpenAPI v2 document:
    // good items apply, an unknown field in one stops the whole file before anything is sent.
    let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: listed-a}, data: {x: \"1\"}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: listed-b}, data: {x: \"2\"}}\n";
    let list_path = k.write("list.yaml", list);
    let applied = k.ok(&["apply", "-f", &list_path]);
    assert!(
        applied.contains("configmap/listed-a created") && applied.contains("configmap/listed-b created"),
        "{applied}"
    );
    k.write("list.yaml", &list.replace("listed-b}, data:", "listed-c}, dta:"));
    let refused = k.fails(&["apply", "-f", &list_path]);
    assert!(refused.contains(r#"unknown field "dta""#), "{refused}");
    k.fails(&["get", "cm", "listed-c"]);

    // Server-side apply, twice, the second dropping a key this manager owned.
    let cm = k.write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, labels: {tier: back}}\ndata: {a: \"1\", b: \"2\"}\n");
    k.ok(&["apply", "--server-side", "-f", &cm]);
    k.write("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, labels: {tier: back}}\ndata: {a: \"1\", c: \"3\"}\n");
    k.ok(&["apply", "--server-side", "-f", &cm]);
    assert_eq!(k.ok(&["get", "cm", "settings", "-o", "jsonpath={.data}"]), r#"{"a":"1","c":"3"}"#);
    // A field another manager then changes is theirs: applying it again conflicts, unless
    // forced, which takes it back.
    k.ok(&["patch", "cm", "settings", "--field-manager=ops-hand", "-p", r#"{"data":{"a":"9"}}"#]);
    let managers = k.ok(&[
        "get",
        "cm",
        "settings",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert_eq!(managers, "kubectl ops-hand", "{managers}");
    let conflict = k.fails(&["apply", "--server-side", "-f", &cm]);
    assert!(conflict.contains("conflict with \"ops-hand\"") && conflict.contains(".data.a"), "{conflict}");
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", &cm]);
    assert_eq!(k.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.a}"]), "1");

    // Generators send protobuf bodies.
    k.ok(&["create", "configmap", "plain", "--from-literal=x=1"]);
    k.ok(&["create", "secret", "generic", "creds", "--from-literal=password=s3cret"]);
    k.ok(&["create", "namespace", "team-a"]);
    k.ok(&["create", "deployment", "api", "--image=busybox:1.36", "--replicas=0", "-n", "team-a"]);
    assert_eq!(k.ok(&["get", "deploy", "api", "-n", "team-a", "-o", "jsonpath={.spec.replicas}"]), "0");

    // Every output form.
    let wide = k.ok(&["get", "deploy", "-o", "wide"]);
    assert!(wide.contains("CONTAINERS") && wide.contains("busybox:1.36") && wide.contains("app=web"), "{wide}");
    let yaml = k.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(yaml.contains("kind: Deployment") && yaml.contains("resourceVersion:"), "{yaml}");
    let json: serde_json::Value = serde_json::from_str(&k.ok(&["get", "cm", "-o", "json"])).expect("list JSON");
    assert_eq!(json["kind"], "List");
    assert_eq!(k.ok(&["get", "cm", "settings", "-o", "name"]).trim(), "configmap/settings");
    let all = k.ok(&["get", "deploy", "-A"]);
    assert!(all.contains("team-a") && all.contains("web"), "{all}");
    assert!(k.ok(&["get", "cm", "--show-labels"]).contains("tier=back"));
    assert_eq!(k.ok(&["get", "cm", "-l", "tier=back", "-o", "name"]).trim(), "configmap/settings");
    assert_eq!(k.ok(&["get", "cm", "--field-selector", "metadata.name=plain", "-o", "name"]).trim(), "configmap/plain");
    assert!(k.fails(&["get", "pods", "--field-selector", "spec.bogus=1"]).contains("field label not supported"));

    // The `kubernetes` Service holds the range's first address, and its endpoints are the
    // members' API addresses.
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP} {.spec.ports[0].port} {.metadata.labels.component}"
        ]),
        "10.96.0.1 443 apiserver"
    );
    let endpoint_ips = || {
        let mut ips: Vec<String> = k
            .ok(&["get", "endpoints", "kubernetes", "-o", "jsonpath={.subsets[*].addresses[*].ip}"])
            .split_whitespace()
            .map(String::from)
            .collect();
        ips.sort();
        ips
    };
    let member_ip = |i: usize| cluster.members[i].api.rsplit_once(':').expect("ip:port").0.to_string();
    let mut all_ips: Vec<String> = (0..3).map(member_ip).collect();
    all_ips.sort();
    eventually(Duration::from_secs(20), "every member among the kubernetes endpoints", || async {
        (endpoint_ips() == all_ips).then_some(())
    })
    .await;
    // The slices are written after the Endpoints, in the same pass or the next.
    eventually(Duration::from_secs(10), "a slice address for every member", || async {
        let slices = k.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ]);
        (slices.split_whitespace().count() == 3).then_some(())
    })
    .await;

    // The leader dies; the follower keeps serving once a new leader is elected.
    let dead_ip = member_ip(leader);
    cluster.members[leader].kill();
    cluster.wait_for_leader().await;
    // The new leader drops the dead member from the endpoints, and never lists fewer than the
    // survivors on the way (it has heard from no follower right after its election).
    let survivors: Vec<String> = all_ips.iter().filter(|ip| **ip != dead_ip).cloned().collect();
    eventually(Duration::from_secs(30), "the dead member out of the kubernetes endpoints", || async {
        let ips = endpoint_ips();
        assert!(survivors.iter().all(|ip| ips.contains(ip)), "a live member left the endpoints: {ips:?}");
        (ips == survivors).then_some(())
    })
    .await;

    // A watch sees a change made after it started.
    let mut watch = k
        .command(&["get", "cm", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kubectl get -w");
    let watch_stdout = watch.stdout.take().expect("watch stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(watch_stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<String>| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("watch never printed {needle}; saw {seen:?}"));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return;
        }
    };
    // The initial state arrives first as ADDED events; then a new object.
    wait_for("configmap/settings", &mut seen);
    k.ok(&["create", "configmap", "watched", "--from-literal=y=2"]);
    wait_for("configmap/watched", &mut seen);
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen.iter().any(|l| l.contains("configmap/watched")), "watch saw {seen:?}");

    // describe, explain, label, annotate, the three patch types, scale, edit.
    let described = k.ok(&["describe", "deploy", "web"]);
    assert!(described.contains("Replicas:") && described.contains("busybox:1.36"), "{described}");
    assert!(k.ok(&["explain", "deployment.spec.replicas"]).contains("Number of desired pods"));
    k.ok(&["label", "deploy", "web", "env=prod"]);
    k.ok(&["annotate", "deploy", "web", "owner=team-a"]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"busybox:1.37"}]}}}}"#,
    ]);
    k.ok(&["patch", "deploy", "web", "--type", "merge", "-p", r#"{"metadata":{"labels":{"patched":"merge"}}}"#]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ]);
    k.ok(&["scale", "deploy", "web", "--replicas=5"]);
    let mut edit = k.command(&["edit", "deploy", "web"]);
    edit.env("KUBE_EDITOR", "sed -i s/replicas:\\ 5/replicas:\\ 6/");
    let edited = edit.output().expect("kubectl edit");
    assert!(edited.status.success(), "edit: {}", String::from_utf8_lossy(&edited.stderr));
    let state = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.labels.env} {.metadata.labels.patched} {.metadata.annotations.owner} {.spec.template.spec.containers[0].image} {.metadata.generation}"]);
    assert_eq!(state, "6 prod merge team-a busybox:1.37 6");

    // wait --for, CRDs and their custom resources, with schema validation and scale.
    let crd = k.write("crd.yaml", CRD);
    k.ok(&["apply", "-f", &crd]);
    k.ok(&["wait", "--for", "condition=established", "crd/widgets.example.com", "--timeout=20s"]);
    let widget = k.write(
        "widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3, replicas: 1}\n",
    );
    eventually(Duration::from_secs(10), "widgets to be served", || async {
        k.run(&["apply", "-f", &widget]).status.success().then_some(())
    })
    .await;
    let table = k.ok(&["get", "wd"]);
    assert!(table.contains("SIZE") && table.contains("w1"), "{table}");
    k.ok(&["scale", "widget", "w1", "--replicas=3"]);
    assert_eq!(k.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.replicas}"]), "3");
    let bad = k.write("bad.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0}\n");
    assert!(k.fails(&["apply", "-f", &bad]).contains("spec.size"));
    // The other served version is the same object under its own apiVersion (kube's `None`
    // conversion), and a write through it is stored as the storage version.
    let beta = k.json(&["get", "widgets.v1beta1.example.com", "w1"]);
    assert_eq!(
        (beta["apiVersion"].as_str(), beta["spec"]["size"].as_i64()),
        (Some("example.com/v1beta1"), Some(3)),
        "{beta}"
    );
    k.ok(&["label", "widgets.v1beta1.example.com", "w1", "tier=beta"]);
    let stored = k.json(&["get", "widgets.v1.example.com", "w1"]);
    assert_eq!(
        (stored["apiVersion"].as_str(), stored["metadata"]["labels"]["tier"].as_str()),
        (Some("example.com/v1"), Some("beta")),
        "{stored}"
    );

    // Events: one object, served as core/v1 and as events.k8s.io/v1 with kube's field names.
    let event = k.write(
        "event.yaml",
        "apiVersion: v1\nkind: Event\nmetadata: {name: w1.note}\ninvolvedObject: {kind: Widget, name: w1, apiVersion: example.com/v1}\nreason: Checked\nmessage: widget looked at\ntype: Normal\nsource: {component: tester}\n",
    );
    k.ok(&["create", "-f", &event]);
    let new_style = k.json(&["get", "events.v1.events.k8s.io", "w1.note"]);
    assert_eq!(new_style["regarding"]["name"], "w1", "{new_style}");
    assert_eq!(new_style["note"], "widget looked at", "{new_style}");
    assert_eq!(new_style["deprecatedSource"]["component"], "tester", "{new_style}");
    let listed = k.ok(&["get", "events.v1.events.k8s.io", "--field-selector", "reason=Checked"]);
    assert!(listed.contains("widget/w1") && listed.contains("widget looked at"), "{listed}");

    // Deletion: --wait for a plain object; a namespaced object vanishing satisfies wait --for=delete.
    k.ok(&["delete", "cm", "plain", "--wait"]);
    k.fails(&["get", "cm", "plain"]);
    k.ok(&["delete", "widget", "w1", "--cascade=background", "--wait"]);
    k.ok(&["wait", "--for=delete", "widget/w1", "--timeout=10s"]);
    k.ok(&["delete", "deploy", "web", "--cascade=background"]);
    k.fails(&["get", "deploy", "web"]);

    // Cascading deletion through ownerReferences, in all three modes (the garbage
    // collector runs on the new leader).
    let owned = |owner: &str, uid: &str, name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: {owner}, uid: {uid}}}]\n"
        )
    };
    for (mode, survives) in [("foreground", false), ("orphan", true), ("background", false)] {
        let owner = format!("owner-{mode}");
        k.ok(&["create", "configmap", &owner]);
        let uid = k.ok(&["get", "cm", &owner, "-o", "jsonpath={.metadata.uid}"]);
        let dependent = format!("dependent-{mode}");
        let file = k.write(&format!("{dependent}.yaml"), &owned(&owner, &uid, &dependent));
        k.ok(&["create", "-f", &file]);
        k.ok(&["delete", "cm", &owner, &format!("--cascade={mode}"), "--wait", "--timeout=30s"]);
        k.fails(&["get", "cm", &owner]);
        if survives {
            // Released: no owner left, and no empty list either (kube-apiserver omits it).
            assert_eq!(k.ok(&["get", "cm", &dependent, "-o", "jsonpath={.metadata.ownerReferences}"]), "");
        } else {
            k.ok(&["wait", "--for=delete", &format!("cm/{dependent}"), "--timeout=30s"]);
        }
    }
    // A namespace's deletion empties it, then removes it.
    k.ok(&["delete", "namespace", "team-a", "--wait", "--timeout=30s"]);
    k.fails(&["get", "namespace", "team-a"]);
    k.fails(&["get", "deploy", "api", "-n", "team-a"]);

    // Errors are Status objects kubectl prints.
    assert!(k.fails(&["get", "deploy", "missing"]).contains("not found"));
    let invalid = k.write("invalid.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n");
    assert!(k.fails(&["create", "-f", &invalid]).contains("metadata.name"));
    let unknown = k.write("unknown.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\nbogus: 1\n");
    assert!(k.fails(&["create", "-f", &unknown, "--validate=strict"]).contains("bogus"));
    k.fails(&["get", "cm", "extra"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_cluster_ips_and_node_ports_that_no_two_share() {
    support::init_logging();
    let cluster =
        Cluster::start(3, &["--service-cluster-ip-range", "10.99.0.0/24", "--service-node-port-range", "31000-31099"])
            .await;
    let leader = cluster.wait_for_leader().await;
    let work = cluster.dir().join("services");
    std::fs::create_dir_all(&work).expect("work dir");
    // Two clients on two different members.
    let k = Kubectl::new(&work, &cluster.members[leader].api.clone());
    let other = Kubectl::new(&work, &cluster.members[(leader + 1) % 3].api.clone());
    eventually(Duration::from_secs(20), "the default namespace", || async {
        k.run(&["get", "namespace", "default"]).status.success().then_some(())
    })
    .await;

    k.ok(&["create", "service", "nodeport", "web", "--tcp=80:8080"]);
    let web = k.json(&["get", "service", "web"]);
    let ip = web["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    assert!(ip.starts_with("10.99.0.") && ip != "10.99.0.1", "an address of the range, not the first: {web}");
    assert_eq!(web["spec"]["clusterIPs"], serde_json::json!([ip]), "{web}");
    let node_port = web["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0);
    assert!((31000..=31099).contains(&node_port), "{web}");
    let table = k.ok(&["get", "service", "web"]);
    assert!(table.contains(&ip) && table.contains(&format!("80:{node_port}/TCP")), "{table}");

    // Re-applying a manifest without the allocated fields keeps them.
    let manifest = k.write(
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    k.ok(&["apply", "-f", &manifest]);
    k.ok(&["apply", "-f", &manifest]);
    let again = k.json(&["get", "service", "web"]);
    assert_eq!(
        (again["spec"]["clusterIP"].as_str(), again["spec"]["ports"][0]["nodePort"].as_i64()),
        (Some(ip.as_str()), Some(node_port)),
        "{again}"
    );

    // A given address or port is held by one Service at a time, whichever member is asked.
    k.ok(&["create", "service", "clusterip", "dns", "--clusterip=10.99.0.10", "--tcp=53:53"]);
    let taken = other.fails(&["create", "service", "clusterip", "dns2", "--clusterip=10.99.0.10", "--tcp=53:53"]);
    assert!(taken.contains("provided IP is already allocated"), "{taken}");
    let outside = other.fails(&["create", "service", "clusterip", "far", "--clusterip=10.1.2.3", "--tcp=53:53"]);
    assert!(outside.contains("not in the valid range"), "{outside}");
    let port_taken =
        other.fails(&["create", "service", "nodeport", "web2", "--tcp=80:8080", &format!("--node-port={node_port}")]);
    assert!(port_taken.contains("provided port is already allocated"), "{port_taken}");
    k.fails(&["get", "service", "dns2"]);
    k.fails(&["get", "service", "web2"]);
    // The address cannot change; deleting the Service gives it back.
    let moved = k.fails(&[
        "patch",
        "service",
        "dns",
        "-p",
        r#"{"spec":{"clusterIP":"10.99.0.11","clusterIPs":["10.99.0.11"]}}"#,
    ]);
    assert!(moved.contains("may not change once set"), "{moved}");
    k.ok(&["delete", "service", "dns"]);
    other.ok(&["create", "service", "clusterip", "dns2", "--clusterip=10.99.0.10", "--tcp=53:53"]);
    // Back to ClusterIP: the node port is given back and another Service can take it.
    k.ok(&["patch", "service", "web", "-p", r#"{"spec":{"type":"ClusterIP"}}"#]);
    assert_eq!(k.ok(&["get", "service", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"]), "");
    other.ok(&["create", "service", "nodeport", "web2", "--tcp=80:8080", &format!("--node-port={node_port}")]);
    // Headless and ExternalName Services hold nothing.
    k.ok(&["create", "service", "clusterip", "headless", "--clusterip=None"]);
    assert_eq!(k.ok(&["get", "service", "headless", "-o", "jsonpath={.spec.clusterIP}"]), "None");
    k.ok(&["create", "service", "externalname", "outside", "--external-name=example.com"]);
    assert_eq!(k.ok(&["get", "service", "outside", "-o", "jsonpath={.spec.clusterIP}"]), "");
}

/// `/metrics` of `member` through the real `kubectl get --raw`, parsed and checked.
fn scrape(k: &Kubectl) -> support::prometheus::Exposition {
    let text = k.ok(&["get", "--raw", "/metrics"]);
    support::prometheus::parse(&text).unwrap_or_else(|e| panic!("/metrics is not a valid exposition: {e}\n{text}"))
}

#[test]
fn the_exposition_reader_refuses_what_prometheus_would() {
    use support::prometheus::parse;
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"z\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n";
    let parsed = parse(good).unwrap();
    assert_eq!(parsed.sum("a_total", &[("y", "q\"z")]), Some(3.0));
    assert_eq!(parsed.sum("h_count", &[]), Some(2.0));
    for (bad, why) in [
        ("a_total 3\n", "no TYPE"),
        ("# TYPE a counter\na{x=\"1} 3\n", "unterminated label"),
        ("# TYPE a counter\na{x=1} 3\n", "unquoted label"),
        ("# TYPE a counter\na three\n", "bad value"),
        ("# TYPE a counter\na 3\n# TYPE a counter\n", "second TYPE"),
        ("# TYPE a counter\n# TYPE b gauge\na 1\nb 1\na 2\n", "samples apart"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n", "not cumulative"),
        ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", "+Inf is not the count"),
    ] {
        assert!(parse(bad).is_err(), "{why}: {bad:?} was accepted");
    }
}

/// The leader and every running member's metrics, once exactly one running member reports
/// `etcd_server_is_leader 1`, it is the member all agree leads, and all report a leader.
async fn agreed_leader(
    cluster: &Cluster,
    ks: &[Kubectl],
) -> Option<(usize, Vec<(usize, support::prometheus::Exposition)>)> {
    let leader = cluster.wait_for_leader().await;
    let expositions: Vec<_> =
        (0..cluster.members.len()).filter(|i| cluster.members[*i].is_running()).map(|i| (i, scrape(&ks[i]))).collect();
    let leading: Vec<usize> =
        expositions.iter().filter(|(_, e)| e.count("etcd_server_is_leader", &[]) == 1.0).map(|(i, _)| *i).collect();
    let all_know = expositions.iter().all(|(_, e)| e.count("etcd_server_has_leader", &[]) == 1.0);
    (leading == vec![leader] && all_know).then_some((leader, expositions))
}

/// Families an operator's kube-apiserver and etcd dashboards read, and their types.
const FAMILIES: &[(&str, &str)] = &[
    ("apiserver_request_total", "counter"),
    ("apiserver_request_duration_seconds", "histogram"),
    ("apiserver_longrunning_requests", "gauge"),
    ("apiserver_registered_watchers", "gauge"),
    ("apiserver_storage_objects", "gauge"),
    ("etcd_server_has_leader", "gauge"),
    ("etcd_server_is_leader", "gauge"),
    ("etcd_server_leader_changes_seen_total", "counter"),
    ("etcd_server_proposals_committed_total", "gauge"),
    ("etcd_server_proposals_applied_total", "gauge"),
    ("etcd_server_proposals_failed_total", "counter"),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_debugging_mvcc_keys_total", "gauge"),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
    ("keel_store_mirrored_keys", "gauge"),
    ("grpc_server_started_total", "counter"),
    ("grpc_server_handled_total", "counter"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_start_time_seconds", "gauge"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_each_member_serves() {
    support::init_logging();
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    // A kubectl for each member.
    let ks: Vec<Kubectl> = cluster
        .members
        .iter()
        .map(|m| {
            let dir = cluster.dir().join("metrics").join(&m.name);
            std::fs::create_dir_all(&dir).expect("kubectl dir");
            Kubectl::new(&dir, &m.api)
        })
        .collect();
    let k = &ks[follower];
    eventually(Duration::from_secs(20), "the default namespace", || async {
        k.run(&["get", "namespace", "default"]).status.success().then_some(())
    })
    .await;
    k.ok(&["create", "namespace", "metrics"]);

    let before = scrape(k);
    for (family, kind) in FAMILIES {
        assert_eq!(before.types.get(*family).map(String::as_str), Some(*kind), "# TYPE of {family}");
    }
    let requests = |e: &support::prometheus::Exposition, verb: &str, scope: &str, code: &str| {
        e.count(
            "apiserver_request_total",
            &[
                ("verb", verb),
                ("group", ""),
                ("version", "v1"),
                ("resource", "configmaps"),
                ("subresource", ""),
                ("scope", scope),
                ("code", code),
            ],
        )
    };

    // Requests of known outcomes, through the follower.
    const CREATED: usize = 5;
    for i in 0..CREATED {
        k.ok(&["create", "configmap", &format!("cm-{i}"), "-n", "metrics", "--from-literal=a=b"]);
    }
    k.fails(&["create", "configmap", "cm-0", "-n", "metrics"]);
    k.ok(&["get", "configmap", "cm-0", "-n", "metrics"]);
    k.fails(&["get", "configmap", "absent", "-n", "metrics"]);
    k.ok(&["get", "configmaps", "-n", "metrics"]);
    // The store's client port of the same member, through the etcd API.
    let etcd = cluster.members[follower].etcd();
    const PUTS: usize = 4;
    let mut revision = 0;
    for i in 0..PUTS {
        revision = etcd.put(&format!("metrics-test/{i}"), "v").await.expect("put");
    }

    let after = scrape(k);
    assert_eq!(
        requests(&after, "POST", "resource", "201") - requests(&before, "POST", "resource", "201"),
        CREATED as f64
    );
    assert_eq!(requests(&after, "POST", "resource", "409") - requests(&before, "POST", "resource", "409"), 1.0);
    assert_eq!(requests(&after, "GET", "resource", "200") - requests(&before, "GET", "resource", "200"), 1.0);
    assert_eq!(requests(&after, "GET", "resource", "404") - requests(&before, "GET", "resource", "404"), 1.0);
    assert_eq!(requests(&after, "LIST", "namespace", "200") - requests(&before, "LIST", "namespace", "200"), 1.0);

    // An object's GET ignores `watch=true` and counts as a GET, as in kube; the deprecated
    // `/watch/` path of an object watches it alone and counts as a WATCH of one resource.
    let before_named = scrape(k);
    let object: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/namespaces/metrics/configmaps/cm-0?watch=true"]))
            .expect("an object");
    assert_eq!(object["metadata"]["name"], "cm-0", "{object}");
    let events = k.ok(&["get", "--raw", "/api/v1/watch/namespaces/metrics/configmaps/cm-0?timeoutSeconds=1"]);
    let events: Vec<serde_json::Value> =
        events.lines().map(|l| serde_json::from_str(l).expect("a watch event")).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("cm-0"))
    );
    let refused = k.fails(&[
        "get",
        "--raw",
        "/api/v1/watch/namespaces/metrics/configmaps/cm-0?fieldSelector=metadata.name%3Dcm-1",
    ]);
    assert!(refused.contains("BadRequest") || refused.contains("doesn't match requested name"), "{refused}");
    let after_named = scrape(k);
    let named =
        |verb, code| requests(&after_named, verb, "resource", code) - requests(&before_named, verb, "resource", code);
    assert_eq!(named("GET", "200"), 1.0);
    assert_eq!(named("WATCH", "200"), 1.0);
    assert_eq!(named("WATCH", "400"), 1.0);
    let creates_timed = |e: &support::prometheus::Exposition| {
        e.count("apiserver_request_duration_seconds_count", &[("verb", "POST"), ("resource", "configmaps")])
    };
    assert_eq!(creates_timed(&after) - creates_timed(&before), CREATED as f64 + 1.0, "every create is timed");
    // The scrape before this one.
    let scrapes = |e: &support::prometheus::Exposition| {
        e.count("apiserver_request_total", &[("verb", "GET"), ("subresource", "/metrics"), ("code", "200")])
    };
    assert_eq!(scrapes(&after) - scrapes(&before), 1.0);
    let puts = |e: &support::prometheus::Exposition| {
        e.count("grpc_server_handled_total", &[("grpc_method", "Put"), ("grpc_code", "OK")])
    };
    assert_eq!(puts(&after) - puts(&before), PUTS as f64);
    assert_eq!(
        after.count("grpc_server_started_total", &[("grpc_method", "Put")])
            - before.count("grpc_server_started_total", &[("grpc_method", "Put")]),
        PUTS as f64
    );
    // The store: it applied the puts, synced its log, holds keys and the admission mirror.
    assert!(after.count("etcd_server_proposals_applied_total", &[]) >= revision as f64, "applied up to {revision}");
    assert!(after.count("etcd_server_proposals_committed_total", &[]) >= revision as f64);
    assert!(after.count("etcd_disk_wal_fsync_duration_seconds_count", &[]) > 0.0);
    assert!(after.count("etcd_debugging_mvcc_keys_total", &[]) >= (CREATED + PUTS) as f64);
    assert!(after.count("keel_store_mirrored_keys", &[]) > 0.0);
    assert!(after.count("etcd_mvcc_db_total_size_in_bytes", &[]) > 0.0);
    assert!(after.count("process_resident_memory_bytes", &[]) > 1_000_000.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    let started = after.count("process_start_time_seconds", &[]);
    assert!(now - started >= 0.0 && now - started < 600.0, "started at {started}, now {now}");

    // An open watch is counted while it lasts.
    let watching = || {
        scrape(k).count(
            "apiserver_longrunning_requests",
            &[("verb", "WATCH"), ("resource", "configmaps"), ("scope", "namespace")],
        )
    };
    let mut watch = k
        .command(&["get", "configmaps", "-n", "metrics", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kubectl get --watch");
    eventually(Duration::from_secs(20), "the watch to be counted", || async { (watching() == 1.0).then_some(()) })
        .await;
    let _ = watch.kill();
    let _ = watch.wait();
    // The server learns that a watcher went away when it next writes to it, so changes are
    // made for it to send.
    let mut pokes = 0;
    eventually(Duration::from_secs(20), "the closed watch to be uncounted", || {
        pokes += 1;
        k.ok(&["annotate", "configmap", "cm-1", "-n", "metrics", &format!("poke={pokes}"), "--overwrite"]);
        async { (watching() == 0.0).then_some(()) }
    })
    .await;

    // Prometheus' own request: plain HTTP, the text format's content type.
    let (status, content_type, body) = support::prometheus::scrape_http(&cluster.members[follower].api);
    assert!(status.contains(" 200 "), "{status}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    support::prometheus::parse(&body).unwrap_or_else(|e| panic!("{e}"));

    // Every member reports the store; exactly one of them leads. A member scraped for the
    // first time counts the objects it stores then.
    let stored: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/configmaps"])).expect("a ConfigMapList");
    let configmaps = stored["items"].as_array().map_or(0, Vec::len);
    let listed_at: i64 = stored["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse().ok()).expect("list rv");
    cluster.wait_applied(listed_at).await;
    let unscraped = (0..3).find(|i| *i != follower).expect("another member");
    assert_eq!(
        scrape(&ks[unscraped]).sum("apiserver_storage_objects", &[("resource", "configmaps")]),
        Some(configmaps as f64),
        "configmaps stored"
    );
    assert!(configmaps >= CREATED);
    // Exactly one member says it leads, the one all agree leads (asked again should an
    // election on the loaded machine move leadership in between).
    let (leader, expositions) =
        eventually(Duration::from_secs(20), "one member reporting that it leads", || agreed_leader(&cluster, &ks))
            .await;
    for (i, e) in &expositions {
        assert!(e.count("etcd_server_leader_changes_seen_total", &[]) >= 1.0, "member {i} saw the first election");
    }

    // A new leader is seen as a leader change.
    let observer = (0..3).find(|i| *i != leader).expect("a member that does not lead");
    let changes_before = scrape(&ks[observer]).count("etcd_server_leader_changes_seen_total", &[]);
    cluster.members[leader].kill();
    let (new_leader, _) =
        eventually(Duration::from_secs(20), "a new leader reported", || agreed_leader(&cluster, &ks)).await;
    assert_ne!(new_leader, leader);
    let changes_after = scrape(&ks[observer]).count("etcd_server_leader_changes_seen_total", &[]);
    assert!(changes_after > changes_before, "leader changes seen: {changes_before} then {changes_after}");
}
