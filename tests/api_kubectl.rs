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
