//! ServiceAccount tokens through the real `kubectl` against a three-member cluster of
//! `keel server` processes: a token issued by one follower (`kubectl create token`) is
//! reviewed through the other (`kubectl create -f tokenreview.yaml`), so both sign and verify
//! with the one key the cluster keeps in its store; the legacy token controller fills in a
//! token Secret on the leader; the OIDC discovery documents name the key; deleting the
//! account kills its tokens and its token Secret; bad requests get kube's Status errors.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::eventually;
use support::kubectl::Kubectl;
use support::processes::Cluster;

const ISSUER: &str = "https://keel.example";

/// The header and claims of a JWT, undecoded signature aside.
fn decode_jwt(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token:?}");
    let part = |p: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("JSON part")
    };
    (part(parts[0]), part(parts[1]))
}

/// POSTs a TokenReview with `kubectl create -f` and returns its status. kubectl validates it
/// itself, against the protobuf OpenAPI v2 document: a review kind has no PATCH operation for
/// it to learn that the server validates fields.
fn review(k: &Kubectl, token: &str, audiences: &[&str]) -> Value {
    let manifest = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    });
    let path = k.write("review.json", &manifest.to_string());
    let out = k.ok(&["create", "-f", &path, "-o", "json"]);
    let answered: Value = serde_json::from_str(&out).expect("TokenReview JSON");
    assert_eq!(answered["kind"], "TokenReview", "{answered}");
    answered["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_issues_and_reviews_service_account_tokens() {
    support::init_logging();
    let cluster = Cluster::start(3, &[&format!("--service-account-issuer={ISSUER}")]).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let work = cluster.dir().join("kubectl");
    let (dir_a, dir_b) = (work.join("a"), work.join("b"));
    std::fs::create_dir_all(&dir_a).expect("work dir");
    std::fs::create_dir_all(&dir_b).expect("work dir");
    let a = Kubectl::new(&dir_a, &cluster.members[followers[0]].api);
    let b = Kubectl::new(&dir_b, &cluster.members[followers[1]].api);
    eventually(Duration::from_secs(20), "the default namespace", || async {
        a.run(&["get", "namespace", "default"]).status.success().then_some(())
    })
    .await;

    // Discovery lists the subresource and the review kind as kube-apiserver does.
    let resources = a.ok(&["api-resources", "--api-group=authentication.k8s.io", "-o", "wide"]);
    assert!(
        resources.lines().any(|l| l.starts_with("tokenreviews") && l.split_whitespace().any(|w| w == "create")),
        "{resources}"
    );
    let core = a.ok(&["get", "--raw", "/api/v1"]);
    let core: Value = serde_json::from_str(&core).expect("APIResourceList");
    let token_sub =
        core["resources"].as_array().expect("resources").iter().find(|r| r["name"] == "serviceaccounts/token");
    assert_eq!(
        token_sub.map(|r| (r["group"].clone(), r["kind"].clone(), r["verbs"].clone())),
        Some((json!("authentication.k8s.io"), json!("TokenRequest"), json!(["create"])))
    );

    // A bound token from one follower.
    a.ok(&["create", "serviceaccount", "bot"]);
    let account: Value = serde_json::from_str(&a.ok(&["get", "serviceaccount", "bot", "-o", "json"])).expect("SA");
    let uid = account["metadata"]["uid"].as_str().expect("uid").to_string();
    let token = a.ok(&["create", "token", "bot", "--audience=x", "--duration=10m"]).trim().to_string();
    let (header, claims) = decode_jwt(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:default:bot");
    assert_eq!(claims["aud"], json!(["x"]));
    let (iat, exp) = (claims["iat"].as_i64().expect("iat"), claims["exp"].as_i64().expect("exp"));
    assert_eq!(exp - iat, 600);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((now - iat).abs() < 120, "issued now: iat {iat}, now {now}");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"], json!({"name": "bot", "uid": uid}));

    // Reviewed through the other follower: same key, read from the store.
    let status = review(&b, &token, &["x"]);
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(status["user"]["username"], "system:serviceaccount:default:bot");
    assert_eq!(status["user"]["uid"], json!(uid));
    assert_eq!(
        status["user"]["groups"],
        json!(["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"])
    );
    assert_eq!(status["audiences"], json!(["x"]));
    // Asked about another audience (by default the API's own, the issuer): no.
    let status = review(&b, &token, &[]);
    assert_eq!(status["authenticated"], false, "{status}");
    assert!(status["error"].as_str().unwrap_or("").contains("invalid for the target audiences"), "{status}");
    // TokenReviews are answered, never stored.
    let listed = b.fails(&["get", "tokenreviews"]);
    assert!(listed.contains("MethodNotAllowed") || listed.contains("not supported"), "{listed}");

    // OIDC discovery, the same on every member; the token's kid is the published key's.
    let config: Value =
        serde_json::from_str(&a.ok(&["get", "--raw", "/.well-known/openid-configuration"])).expect("discovery");
    assert_eq!(config["issuer"], ISSUER);
    assert_eq!(config["jwks_uri"], format!("{ISSUER}/openid/v1/jwks"));
    assert_eq!(config["id_token_signing_alg_values_supported"], json!(["ES256"]));
    let jwks_a: Value = serde_json::from_str(&a.ok(&["get", "--raw", "/openid/v1/jwks"])).expect("jwks");
    let jwks_b: Value = serde_json::from_str(&b.ok(&["get", "--raw", "/openid/v1/jwks"])).expect("jwks");
    assert_eq!(jwks_a, jwks_b);
    assert_eq!(jwks_a["keys"][0]["kid"], header["kid"]);
    assert_eq!((&jwks_a["keys"][0]["kty"], &jwks_a["keys"][0]["crv"]), (&json!("EC"), &json!("P-256")));

    // A legacy token Secret, filled in by the controller on the leader.
    let secret = a.write(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bot-token\n  annotations:\n    kubernetes.io/service-account.name: bot\ntype: kubernetes.io/service-account-token\n",
    );
    a.ok(&["apply", "-f", &secret]);
    let legacy = eventually(Duration::from_secs(30), "the token secret filled in", || async {
        let out = a.ok(&["get", "secret", "bot-token", "-o", "json"]);
        let secret: Value = serde_json::from_str(&out).ok()?;
        let token = secret["data"]["token"].as_str()?;
        let token = String::from_utf8(STANDARD.decode(token).ok()?).ok()?;
        Some((token, secret))
    })
    .await;
    let (legacy, secret) = legacy;
    assert_eq!(secret["data"]["namespace"], json!(STANDARD.encode("default")));
    assert_eq!(secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"], json!(uid));
    let (_, legacy_claims) = decode_jwt(&legacy);
    assert_eq!(legacy_claims["iss"], "kubernetes/serviceaccount");
    assert_eq!(legacy_claims["kubernetes.io/serviceaccount/secret.name"], "bot-token");
    assert!(legacy_claims.get("exp").is_none(), "legacy tokens do not expire");
    let status = review(&b, &legacy, &[]);
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(status["user"]["username"], "system:serviceaccount:default:bot");

    // A token bound to a pod names it, and dies with it.
    let pod = a.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: worker\nspec:\n  serviceAccountName: bot\n  containers:\n  - name: c\n    image: busybox:1.36\n",
    );
    a.ok(&["apply", "-f", &pod]);
    let pod_uid = a.ok(&["get", "pod", "worker", "-o", "jsonpath={.metadata.uid}"]);
    let bound =
        a.ok(&["create", "token", "bot", "--bound-object-kind=Pod", "--bound-object-name=worker"]).trim().to_string();
    let (_, bound_claims) = decode_jwt(&bound);
    assert_eq!(bound_claims["kubernetes.io"]["pod"], json!({"name": "worker", "uid": pod_uid}));
    let status = review(&b, &bound, &[ISSUER]);
    assert_eq!(status["user"]["extra"]["authentication.kubernetes.io/pod-name"], json!(["worker"]), "{status}");
    assert_eq!(status["user"]["extra"]["authentication.kubernetes.io/pod-uid"], json!([pod_uid]), "{status}");
    a.ok(&["delete", "pod", "worker", "--wait=false"]);
    eventually(Duration::from_secs(30), "the pod-bound token dead with its pod", || async {
        let status = review(&b, &bound, &[ISSUER]);
        (status["authenticated"] == false).then_some(())
    })
    .await;

    // Bad requests get kube's Status errors.
    let short = a.fails(&["create", "token", "bot", "--duration=10s"]);
    assert!(short.contains("may not specify a duration less than 10 minutes"), "{short}");
    let missing = a.fails(&["create", "token", "nobody"]);
    assert!(missing.contains(r#"serviceaccounts "nobody" not found"#), "{missing}");
    let ghost = a.fails(&["create", "token", "bot", "--bound-object-kind=Pod", "--bound-object-name=ghost"]);
    assert!(ghost.contains(r#"pods "ghost" not found"#), "{ghost}");
    let request = a.write(
        "request.json",
        r#"{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"boundObjectRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}}"#,
    );
    let kind = a.fails(&["create", "--raw", "/api/v1/namespaces/default/serviceaccounts/bot/token", "-f", &request]);
    assert!(kind.contains("cannot bind token for serviceaccount"), "{kind}");
    assert!(kind.contains("Kind=Deployment"), "{kind}");

    // The account goes: its tokens stop authenticating, its token Secret is deleted.
    a.ok(&["delete", "serviceaccount", "bot"]);
    let status = review(&b, &token, &["x"]);
    assert_eq!(status["authenticated"], false, "{status}");
    assert_eq!(status["error"], "service account default/bot has been deleted", "{status}");
    eventually(Duration::from_secs(30), "the token secret deleted with its account", || async {
        let out = a.run(&["get", "secret", "bot-token"]);
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")).then_some(())
    })
    .await;
    let status = review(&b, &legacy, &[]);
    assert_eq!(status["authenticated"], false, "{status}");
}
