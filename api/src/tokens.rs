//! ServiceAccount tokens, as kube-apiserver issues and checks them:
//!
//! * the signing key: one ECDSA P-256 key for the whole cluster, kept in the replicated store
//!   (first writer wins) and cached by each member, so a token issued by one member verifies
//!   on every other;
//! * `serviceaccounts/<name>/token` (TokenRequest): a bound token with audiences, expiry and
//!   optionally a Pod, Secret or Node it lives and dies with;
//! * TokenReview: whether a token is valid now — signature, times, audiences, and that the
//!   account (and bound object, or the legacy token's Secret) still exists with the same uid;
//! * the legacy, non-expiring tokens the tokens controller writes into
//!   `kubernetes.io/service-account-token` Secrets;
//! * OIDC discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`), so a verifier
//!   outside the cluster can check tokens with the public key alone.
//!
//! keel does not yet authenticate its own API requests with these tokens (every client is
//! admin); they are issued, verifiable, and what the node agent will project into pods.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;

use crate::error::{ApiError, FieldCause, Result};
use crate::jwt::{self, Key};
use crate::object;
use crate::registry::{ResourceType, Shape};
use crate::rest::{Api, FieldValidation};
use crate::storage::{Consistency, Precondition, WriteOp, WriteOutcome};

/// Where the signing key (PKCS#8 PEM) lives. Outside `/registry/`: no Kubernetes API reaches
/// it, so no `kubectl delete secret` can invalidate every token at once, and the garbage
/// collector and watches never see it. (`etcdctl get` on the store's client port can.)
pub const SIGNING_KEY_KEY: &str = "/keel/serviceaccount/signing-key";
/// kube-apiserver's usual `--service-account-issuer`.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of the Secret-based tokens (kube's `serviceaccount.LegacyIssuer`).
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
pub const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
pub const ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// kube's validation bounds on `spec.expirationSeconds`.
const MIN_EXPIRATION_SECONDS: i64 = 600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Clock skew allowed on exp/nbf/iat (go-jose's `DefaultLeeway`, which kube uses).
const LEEWAY_SECONDS: i64 = 60;
const GROUP_VERSION: &str = "authentication.k8s.io/v1";

/// Extra keys of the user a bound token authenticates as (kube's `serviceaccount` package).
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// kube-apiserver's flags of the same names.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `--service-account-issuer`: the first signs new tokens, every one is accepted (how
    /// kube rotates an issuer).
    pub issuers: Vec<String>,
    /// `--api-audiences`: the audiences of a token that asks for none, and what a TokenReview
    /// without audiences checks against. Empty: the issuers.
    pub api_audiences: Vec<String>,
    /// `--service-account-jwks-uri`: the `jwks_uri` of the discovery document. Unset:
    /// `<issuer>/openid/v1/jwks`.
    pub jwks_uri: Option<String>,
}

impl Default for TokenSettings {
    fn default() -> TokenSettings {
        TokenSettings { issuers: vec![DEFAULT_ISSUER.into()], api_audiences: Vec::new(), jwks_uri: None }
    }
}

/// Token settings and the signing key, loaded once per member.
#[derive(Default)]
pub struct Tokens {
    settings: TokenSettings,
    key: OnceCell<Arc<Key>>,
}

impl Tokens {
    pub fn new(settings: TokenSettings) -> Tokens {
        Tokens { settings, key: OnceCell::new() }
    }

    pub fn issuer(&self) -> &str {
        self.settings.issuers.first().map(String::as_str).unwrap_or(DEFAULT_ISSUER)
    }

    fn api_audiences(&self) -> Vec<String> {
        if self.settings.api_audiences.is_empty() {
            self.settings.issuers.clone()
        } else {
            self.settings.api_audiences.clone()
        }
    }
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| object::now_rfc3339())
}

/// `system:serviceaccount:<namespace>:<name>`.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Go's `%q` of a string slice, as kube's messages print audiences.
fn quoted(list: &[String]) -> String {
    format!("[{}]", list.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" "))
}

fn key_error(e: jwt::JwtError) -> ApiError {
    ApiError::internal(e.to_string())
}

/// `apiVersion` and `kind` of a request body: filled in when absent, refused when wrong.
fn check_type_meta(body: &mut Value, kind: &str) -> Result<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!("the body must be a JSON object describing a {kind}")));
    }
    match body.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => body["apiVersion"] = json!(GROUP_VERSION),
        Some(GROUP_VERSION) => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({other}) does not match the expected API version ({GROUP_VERSION})"
            )));
        }
    }
    match body.get("kind").and_then(Value::as_str) {
        None | Some("") => body["kind"] = json!(kind),
        Some(k) if k == kind => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({other}) does not match the expected kind ({kind})"
            )));
        }
    }
    Ok(())
}

/// A string list field that may be absent or null (Go sends a nil slice as `null`).
fn string_list(value: Option<&Value>, field: &str) -> Result<Vec<String>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_request(format!("{field} must be a list of strings"))),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a list of strings"))),
    }
}

fn str_field<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A `{name, uid}` reference in the `kubernetes.io` claim.
fn reference(object: &Value) -> Value {
    json!({"name": object::name(object), "uid": object::meta_str(object, "uid")})
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub extra: Map<String, Value>,
    /// The token's audiences that the review asked about.
    pub audiences: Vec<String>,
}

impl Authenticated {
    /// The `user` of a TokenReview's status.
    pub fn user_info(&self) -> Value {
        let mut user = json!({
            "username": username(&self.namespace, &self.name),
            "uid": self.uid,
            "groups": [
                "system:serviceaccounts",
                format!("system:serviceaccounts:{}", self.namespace),
                "system:authenticated",
            ],
        });
        if !self.extra.is_empty() {
            user["extra"] = Value::Object(self.extra.clone());
        }
        user
    }
}

/// Checks a token's times against `now` with kube's leeway; `exp` absent means "never".
pub fn check_times(claims: &Value, now: i64) -> Result<(), String> {
    let time = |field: &str| claims.get(field).and_then(Value::as_i64);
    if let Some(exp) = time("exp")
        && now - LEEWAY_SECONDS > exp
    {
        return Err("service account token has expired".into());
    }
    if let Some(nbf) = time("nbf")
        && now + LEEWAY_SECONDS < nbf
    {
        return Err("service account token is not valid yet".into());
    }
    if let Some(iat) = time("iat")
        && now + LEEWAY_SECONDS < iat
    {
        return Err("service account token is issued in the future".into());
    }
    Ok(())
}

/// The audiences a token was issued for (a string or a list, RFC 7519 §4.1.3).
fn token_audiences(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list.iter().filter_map(|a| a.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

/// The token's audiences that were asked for; none in common is an error, with kube's text.
pub fn check_audiences(token: &[String], requested: &[String]) -> Result<Vec<String>, String> {
    let common: Vec<String> = token.iter().filter(|a| requested.contains(a)).cloned().collect();
    if common.is_empty() {
        return Err(format!(
            "token audiences {} is invalid for the target audiences {}",
            quoted(token),
            quoted(requested)
        ));
    }
    Ok(common)
}

/// `spec.boundObjectRef`, read from the request.
struct BoundRef {
    api_version: String,
    kind: String,
    name: String,
    uid: String,
}

impl Api {
    /// Token settings come from `keel server`'s flags; the default serves tests.
    pub fn with_token_settings(mut self, settings: TokenSettings) -> Api {
        self.tokens = Tokens::new(settings);
        self
    }

    /// The cluster's signing key, read (or created, by the first member to need it) once.
    pub async fn signing_key(&self) -> Result<Arc<Key>> {
        self.tokens.key.get_or_try_init(|| self.load_or_create_key()).await.cloned()
    }

    async fn load_or_create_key(&self) -> Result<Arc<Key>> {
        let parse = |bytes: &[u8]| -> Result<Arc<Key>> {
            let pem = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::internal(format!("the signing key at {SIGNING_KEY_KEY} is not UTF-8 text")))?;
            let key = Key::from_pem(pem)
                .map_err(|e| ApiError::internal(format!("the signing key at {SIGNING_KEY_KEY}: {e}")))?;
            Ok(Arc::new(key))
        };
        let (found, _) = self.storage.get(SIGNING_KEY_KEY, Consistency::Linearizable).await?;
        if let Some(stored) = found {
            return parse(&stored.value);
        }
        let key = Key::generate().map_err(key_error)?;
        let pem = key.to_pem().map_err(key_error)?;
        let op =
            WriteOp::Put { key: SIGNING_KEY_KEY.into(), value: pem.into_bytes(), precondition: Precondition::Absent };
        match self.storage.write(vec![op]).await? {
            WriteOutcome::Applied { revision } => {
                tracing::info!(kid = key.kid(), revision, "created the service account signing key");
                Ok(Arc::new(key))
            }
            // Another member wrote one first: theirs is the cluster's.
            WriteOutcome::Refused { current: Some(stored), .. } => parse(&stored.value),
            WriteOutcome::Refused { current: None, .. } => {
                match self.storage.get(SIGNING_KEY_KEY, Consistency::Linearizable).await?.0 {
                    Some(stored) => parse(&stored.value),
                    None => Err(ApiError::internal("the signing key was neither written nor found; retry")),
                }
            }
        }
    }

    fn core_type(&self, plural: &str) -> Result<Arc<ResourceType>> {
        self.registry
            .find("", "v1", plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served (--runtime-config)")))
    }

    /// `POST serviceaccounts/<name>/token`: a bound token for the account, 201 with the
    /// TokenRequest and its `status.token`.
    #[tracing::instrument(level = "debug", skip(self, request))]
    pub async fn request_token(&self, namespace: &str, name: &str, request: Value) -> Result<Value> {
        let mut request = request;
        check_type_meta(&mut request, "TokenRequest")?;
        let invalid = |causes| ApiError::invalid("TokenRequest", "authentication.k8s.io", name, causes);
        // Name and namespace in the body, if any, must be the URL's.
        let body_name = object::name(&request);
        if !body_name.is_empty() && body_name != name {
            return Err(invalid(vec![FieldCause::invalid(
                "metadata.name",
                format!("Invalid value: {body_name:?}: must match the service account name if specified"),
            )]));
        }
        let body_namespace = object::namespace(&request);
        if !body_namespace.is_empty() && body_namespace != namespace {
            return Err(invalid(vec![FieldCause::invalid(
                "metadata.namespace",
                format!("Invalid value: {body_namespace:?}: must match the service account namespace if specified"),
            )]));
        }
        let spec = request.get("spec").cloned().unwrap_or(Value::Null);
        let mut audiences = string_list(spec.get("audiences"), "spec.audiences")?;
        let expiration = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer number of seconds"))?,
        };
        let bound = match spec.get("boundObjectRef") {
            None | Some(Value::Null) => None,
            Some(r) if r.is_object() => Some(BoundRef {
                api_version: str_field(r, "/apiVersion").to_string(),
                kind: str_field(r, "/kind").to_string(),
                name: str_field(r, "/name").to_string(),
                uid: str_field(r, "/uid").to_string(),
            }),
            Some(_) => return Err(ApiError::bad_request("spec.boundObjectRef must be an object")),
        };

        // As kube: the account first (404), then the request's own checks (422).
        let account = self.get(&*self.core_type("serviceaccounts")?, Some(namespace), name).await?;
        let account_uid = object::meta_str(&account, "uid").to_string();
        if audiences.is_empty() {
            audiences = self.tokens.api_audiences();
        }
        let mut causes = Vec::new();
        if expiration < MIN_EXPIRATION_SECONDS {
            causes.push(FieldCause::invalid(
                "spec.expirationSeconds",
                format!("Invalid value: {expiration}: may not specify a duration less than 10 minutes"),
            ));
        }
        if expiration > MAX_EXPIRATION_SECONDS {
            causes.push(FieldCause::invalid(
                "spec.expirationSeconds",
                format!("Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"),
            ));
        }
        if let Some(b) = &bound {
            if b.kind.is_empty() {
                causes.push(FieldCause::required("spec.boundObjectRef.kind"));
            }
            if b.name.is_empty() {
                causes.push(FieldCause::required("spec.boundObjectRef.name"));
            }
        }
        if !causes.is_empty() {
            return Err(invalid(causes));
        }

        let mut private = json!({"namespace": namespace, "serviceaccount": {"name": name, "uid": account_uid}});
        if let Some(b) = &bound {
            let (object, claim) = self.bound_object(namespace, name, b).await?;
            private[claim] = reference(&object);
            // A pod-bound token also names the pod's node (kube's ServiceAccountTokenPodNodeInfo,
            // on by default in 1.32); a node that cannot be read is named without its uid.
            if claim == "pod" {
                let node_name = str_field(&object, "/spec/nodeName");
                if !node_name.is_empty() {
                    private["node"] = match self.get(&*self.core_type("nodes")?, None, node_name).await {
                        Ok(node) => reference(&node),
                        Err(_) => json!({"name": node_name}),
                    };
                }
            }
        }

        let now = unix_now();
        let claims = json!({
            "iss": self.tokens.issuer(),
            "sub": username(namespace, name),
            "aud": audiences,
            "exp": now + expiration,
            "iat": now,
            "nbf": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": private,
        });
        let token = self.signing_key().await?.sign(&claims).map_err(key_error)?;
        tracing::debug!(account = %username(namespace, name), expiration, "issued a service account token");

        let mut response = request;
        let meta = object::meta_mut(&mut response);
        meta.insert("name".into(), json!(name));
        meta.insert("namespace".into(), json!(namespace));
        meta.insert("creationTimestamp".into(), json!(rfc3339(now)));
        response["spec"]["audiences"] = json!(audiences);
        response["spec"]["expirationSeconds"] = json!(expiration);
        response["status"] = json!({"token": token, "expirationTimestamp": rfc3339(now + expiration)});
        Ok(response)
    }

    /// The object a token is bound to, and the claim that names it. kube's errors: 400 for a
    /// kind a token cannot be bound to, 404 when the object is missing, 409 when its uid is
    /// not the one asked for (it was deleted and created again).
    async fn bound_object(&self, namespace: &str, account: &str, bound: &BoundRef) -> Result<(Value, &'static str)> {
        let group = bound.api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
        let (plural, scope, claim) = match (group, bound.kind.as_str()) {
            ("", "Pod") => ("pods", Some(namespace), "pod"),
            ("", "Secret") => ("secrets", Some(namespace), "secret"),
            ("", "Node") => ("nodes", None, "node"),
            _ => {
                let version = bound.api_version.rsplit('/').next().unwrap_or("");
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {account:?} to object of type {group}/{version}, Kind={}",
                    bound.kind
                )));
            }
        };
        let object = self.get(&*self.core_type(plural)?, scope, &bound.name).await?;
        let uid = object::meta_str(&object, "uid");
        if !bound.uid.is_empty() && bound.uid != uid {
            return Err(ApiError::Conflict {
                resource: plural.into(),
                name: bound.name.clone(),
                message: format!(
                    "Operation cannot be fulfilled on {} {:?}: the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                    bound.kind, bound.name, bound.uid
                ),
            });
        }
        if claim == "pod" {
            let runs_as = str_field(&object, "/spec/serviceAccountName");
            let runs_as = if runs_as.is_empty() { "default" } else { runs_as };
            if runs_as != account {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {account:?} to pod running with different serviceaccount name."
                )));
            }
        }
        Ok((object, claim))
    }

    /// The non-expiring token of a `kubernetes.io/service-account-token` Secret, with kube's
    /// legacy claims; the tokens controller writes it into the Secret's `data.token`.
    pub async fn legacy_token(
        &self,
        namespace: &str,
        account: &str,
        account_uid: &str,
        secret: &str,
    ) -> Result<String> {
        let claims = json!({
            "iss": LEGACY_ISSUER,
            "sub": username(namespace, account),
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret,
            "kubernetes.io/serviceaccount/service-account.name": account,
            "kubernetes.io/serviceaccount/service-account.uid": account_uid,
        });
        self.signing_key().await?.sign(&claims).map_err(key_error)
    }

    /// Whether `token` is valid now for one of `audiences` (empty: the API's audiences).
    /// `Ok(Err(reason))` is a token that does not authenticate; `Err` is a failure to find out
    /// (the store unavailable), which the client should retry rather than take as a "no".
    #[tracing::instrument(level = "debug", skip(self, token))]
    pub async fn authenticate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<std::result::Result<Authenticated, String>> {
        let requested = if audiences.is_empty() { self.tokens.api_audiences() } else { audiences.to_vec() };
        let claims = match jwt::unverified_claims(token) {
            Ok(claims) => claims,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let issuer = str_field(&claims, "/iss").to_string();
        let legacy = issuer == LEGACY_ISSUER;
        if !legacy && !self.tokens.settings.issuers.contains(&issuer) {
            return Ok(Err(format!("the token's issuer {issuer:?} is not this cluster's")));
        }
        if let Err(e) = self.signing_key().await?.verify(token) {
            return Ok(Err(e.to_string()));
        }
        if let Err(reason) = check_times(&claims, unix_now()) {
            return Ok(Err(reason));
        }
        // Legacy tokens carry no audience: they are good for the API's own, as in kube.
        let mut token_audiences = token_audiences(&claims);
        if legacy && token_audiences.is_empty() {
            token_audiences = self.tokens.api_audiences();
        }
        let audiences = match check_audiences(&token_audiences, &requested) {
            Ok(common) => common,
            Err(reason) => return Ok(Err(reason)),
        };
        let checked = if legacy { self.check_legacy(token, &claims).await? } else { self.check_bound(&claims).await? };
        Ok(checked.map(|mut user| {
            user.audiences = audiences;
            user
        }))
    }

    /// Reads an object the token depends on; `None` when it is gone.
    async fn lookup(&self, plural: &str, namespace: Option<&str>, name: &str) -> Result<Option<Value>> {
        match self.get(&*self.core_type(plural)?, namespace, name).await {
            Ok(object) => Ok(Some(object)),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The account must still exist, not be going, and be the same one (uid).
    async fn check_account(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<std::result::Result<Authenticated, String>> {
        let Some(account) = self.lookup("serviceaccounts", Some(namespace), name).await? else {
            return Ok(Err(format!("service account {namespace}/{name} has been deleted")));
        };
        if object::is_terminating(&account) {
            return Ok(Err(format!("service account {namespace}/{name} is being deleted")));
        }
        let current = object::meta_str(&account, "uid");
        if current != uid {
            return Ok(Err(format!("service account UID ({current}) does not match claim ({uid})")));
        }
        Ok(Ok(Authenticated {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            extra: Map::new(),
            audiences: Vec::new(),
        }))
    }

    async fn check_bound(&self, claims: &Value) -> Result<std::result::Result<Authenticated, String>> {
        let Some(private) = claims.get("kubernetes.io").filter(|p| p.is_object()) else {
            return Ok(Err("service account token claims are missing the kubernetes.io claim".into()));
        };
        let namespace = str_field(private, "/namespace");
        let (name, uid) = (str_field(private, "/serviceaccount/name"), str_field(private, "/serviceaccount/uid"));
        if namespace.is_empty() || name.is_empty() {
            return Ok(Err("service account token does not name its namespace and service account".into()));
        }
        let mut user = match self.check_account(namespace, name, uid).await? {
            Ok(user) => user,
            Err(reason) => return Ok(Err(reason)),
        };
        let bound = |kind: &str| {
            private.get(kind).filter(|r| r.is_object()).map(|r| (str_field(r, "/name"), str_field(r, "/uid")))
        };
        if let Some((secret, secret_uid)) = bound("secret") {
            match self.lookup("secrets", Some(namespace), secret).await? {
                None => return Ok(Err(format!("secret {namespace}/{secret} has been deleted"))),
                Some(s) if object::is_terminating(&s) => {
                    return Ok(Err(format!("secret {namespace}/{secret} is being deleted")));
                }
                Some(s) if object::meta_str(&s, "uid") != secret_uid => {
                    return Ok(Err(format!(
                        "secret UID ({}) does not match service account secret ref claim ({secret_uid})",
                        object::meta_str(&s, "uid")
                    )));
                }
                Some(_) => {}
            }
        }
        let pod = bound("pod");
        if let Some((pod_name, pod_uid)) = pod {
            match self.lookup("pods", Some(namespace), pod_name).await? {
                None => return Ok(Err(format!("pod {namespace}/{pod_name} has been deleted"))),
                Some(p) if object::is_terminating(&p) => {
                    return Ok(Err(format!("pod {namespace}/{pod_name} is being deleted")));
                }
                Some(p) if object::meta_str(&p, "uid") != pod_uid => {
                    return Ok(Err(format!(
                        "pod UID ({}) does not match service account pod ref claim ({pod_uid})",
                        object::meta_str(&p, "uid")
                    )));
                }
                Some(_) => {}
            }
            user.extra.insert(EXTRA_POD_NAME.into(), json!([pod_name]));
            user.extra.insert(EXTRA_POD_UID.into(), json!([pod_uid]));
        }
        if let Some((node, node_uid)) = bound("node") {
            // A pod-bound token only names the pod's node; a node-bound one depends on it.
            if pod.is_none() {
                match self.lookup("nodes", None, node).await? {
                    None => return Ok(Err(format!("node {node} has been deleted"))),
                    Some(n) if object::meta_str(&n, "uid") != node_uid => {
                        return Ok(Err(format!(
                            "node UID ({}) does not match service account node ref claim ({node_uid})",
                            object::meta_str(&n, "uid")
                        )));
                    }
                    Some(_) => {}
                }
            }
            user.extra.insert(EXTRA_NODE_NAME.into(), json!([node]));
            if !node_uid.is_empty() {
                user.extra.insert(EXTRA_NODE_UID.into(), json!([node_uid]));
            }
        }
        if let Some(jti) = claims.get("jti").and_then(Value::as_str).filter(|j| !j.is_empty()) {
            user.extra.insert(EXTRA_CREDENTIAL_ID.into(), json!([format!("JTI={jti}")]));
        }
        Ok(Ok(user))
    }

    /// A legacy token is good while its Secret exists and still holds it, and its account
    /// exists with the uid it names.
    async fn check_legacy(&self, token: &str, claims: &Value) -> Result<std::result::Result<Authenticated, String>> {
        let claim = |name: &str| str_field(claims, &format!("/kubernetes.io~1serviceaccount~1{name}"));
        let (namespace, secret_name) = (claim("namespace"), claim("secret.name"));
        let (name, uid) = (claim("service-account.name"), claim("service-account.uid"));
        if namespace.is_empty() || secret_name.is_empty() || name.is_empty() {
            return Ok(Err("legacy service account token does not name its namespace, secret and account".into()));
        }
        let Some(secret) = self.lookup("secrets", Some(namespace), secret_name).await? else {
            return Ok(Err("token has been invalidated".into()));
        };
        if object::is_terminating(&secret) {
            return Ok(Err("token has been invalidated".into()));
        }
        let stored = secret
            .pointer("/data/token")
            .and_then(Value::as_str)
            .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok());
        if stored.as_deref() != Some(token.trim().as_bytes()) {
            return Ok(Err("token does not match secret".into()));
        }
        self.check_account(namespace, name, uid).await
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`: answered, never stored.
    #[tracing::instrument(level = "debug", skip(self, rt, review))]
    pub async fn review_token(
        &self,
        rt: &ResourceType,
        review: Value,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>)> {
        if rt.kind != "TokenReview" {
            return Err(ApiError::MethodNotAllowed { method: "POST".into(), what: rt.qualified() });
        }
        let mut review = review;
        check_type_meta(&mut review, "TokenReview")?;
        let token = str_field(&review, "/spec/token").to_string();
        if token.is_empty() {
            return Err(ApiError::bad_request("token is required for TokenReview in authentication.k8s.io/v1"));
        }
        let mut warnings = Vec::new();
        if let Shape::Typed { roundtrip, .. } = &rt.shape {
            let decoded = roundtrip(&review).map_err(|e| {
                ApiError::bad_request(format!("TokenReview in version \"v1\" cannot be handled as a TokenReview: {e}"))
            })?;
            let mut unknown = Vec::new();
            if let crate::registry::Decoded::Changed(decoded) = &decoded {
                object::unknown_fields(&review, decoded, &mut unknown);
            }
            warnings = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
            if validation == FieldValidation::Strict && !warnings.is_empty() {
                return Err(ApiError::bad_request(format!("strict decoding error: {}", warnings.join(", "))));
            }
            if validation != FieldValidation::Warn {
                warnings.clear();
            }
        }
        let audiences = string_list(review.pointer("/spec/audiences"), "spec.audiences")?;
        let status = match self.authenticate_token(&token, &audiences).await? {
            Ok(user) => json!({"authenticated": true, "user": user.user_info(), "audiences": user.audiences}),
            Err(reason) => {
                tracing::debug!(%reason, "token review: not authenticated");
                json!({"authenticated": false, "user": {}, "error": reason})
            }
        };
        object::meta_mut(&mut review).insert("creationTimestamp".into(), Value::Null);
        review["status"] = status;
        Ok((review, warnings))
    }

    /// The OIDC discovery document (only served for an `https://` issuer, as kube-apiserver
    /// requires of one it publishes).
    pub fn openid_configuration(&self) -> Result<Value> {
        let issuer = self.tokens.issuer();
        if !issuer.starts_with("https://") {
            return Err(ApiError::NoRoute);
        }
        let jwks_uri = self
            .tokens
            .settings
            .jwks_uri
            .clone()
            .unwrap_or_else(|| format!("{}/openid/v1/jwks", issuer.trim_end_matches('/')));
        Ok(json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [jwt::ALGORITHM],
        }))
    }

    /// The public half of the signing key as a JSON Web Key Set.
    pub async fn jwks(&self) -> Result<Value> {
        if !self.tokens.issuer().starts_with("https://") {
            return Err(ApiError::NoRoute);
        }
        Ok(json!({"keys": [self.signing_key().await?.jwk()]}))
    }
}

/// Loads (on a new cluster: creates) the signing key when a member starts, so the cluster has
/// one before the first token is asked for. Retried until the store has a leader.
pub async fn ensure_signing_key(api: Arc<Api>) {
    loop {
        match api.signing_key().await {
            Ok(key) => {
                tracing::debug!(kid = key.kid(), "service account signing key loaded");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "loading the service account signing key; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// `GET /.well-known/openid-configuration` and `/openid/v1/jwks`, with kube-apiserver's
/// content types and caching.
pub async fn discovery_response(api: &Api, jwks: bool) -> Result<Response> {
    let (document, content_type) = if jwks {
        (api.jwks().await?, "application/jwk-set+json")
    } else {
        (api.openid_configuration()?, "application/json")
    };
    let body = serde_json::to_vec(&document).map_err(|e| ApiError::internal(format!("encode: {e}")))?;
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine;
    use futures::future::BoxFuture;

    use super::*;
    use crate::registry::{Registry, RuntimeConfig};
    use crate::rest::{DeleteOptions, WriteOptions};
    use crate::storage::{ChangeFeed, Page, Storage, Stored};

    /// Enough of a store for the API's verbs, in memory: one revision counter, no history,
    /// no watches.
    #[derive(Default)]
    struct Memory {
        state: parking_lot::Mutex<(i64, BTreeMap<String, Stored>)>,
    }

    impl Storage for Memory {
        fn get(&self, key: &str, _: Consistency) -> BoxFuture<'_, Result<(Option<Stored>, i64)>> {
            let state = self.state.lock();
            let found = (state.1.get(key).cloned(), state.0);
            Box::pin(async move { Ok(found) })
        }

        fn list(&self, start: &str, end: &str, _: i64, limit: i64, _: Consistency) -> BoxFuture<'_, Result<Page>> {
            let state = self.state.lock();
            let all: Vec<Stored> = state.1.range(start.to_string()..end.to_string()).map(|(_, v)| v.clone()).collect();
            let take = if limit > 0 { (limit as usize).min(all.len()) } else { all.len() };
            let page = Page { remaining: (all.len() - take) as i64, items: all[..take].to_vec(), revision: state.0 };
            Box::pin(async move { Ok(page) })
        }

        fn write(&self, ops: Vec<WriteOp>) -> BoxFuture<'_, Result<WriteOutcome>> {
            let mut state = self.state.lock();
            for (index, op) in ops.iter().enumerate() {
                let current = state.1.get(op.key()).cloned();
                let precondition = match op {
                    WriteOp::Put { precondition, .. } | WriteOp::Delete { precondition, .. } => precondition,
                };
                let holds = match precondition {
                    Precondition::Absent => current.is_none(),
                    Precondition::Exists => current.is_some(),
                    Precondition::Any => true,
                    Precondition::Revision(r) => current.as_ref().is_some_and(|c| c.mod_revision == *r),
                };
                if !holds {
                    return Box::pin(async move { Ok(WriteOutcome::Refused { index, current }) });
                }
            }
            state.0 += 1;
            let revision = state.0;
            for op in ops {
                match op {
                    WriteOp::Put { key, value, .. } => {
                        let create_revision = state.1.get(&key).map(|c| c.create_revision).unwrap_or(revision);
                        let stored = Stored { key: key.clone(), value, create_revision, mod_revision: revision };
                        state.1.insert(key, stored);
                    }
                    WriteOp::Delete { key, .. } => {
                        state.1.remove(&key);
                    }
                }
            }
            Box::pin(async move { Ok(WriteOutcome::Applied { revision }) })
        }

        fn watch(&self, _: &str, _: &str, _: i64) -> Result<Box<dyn ChangeFeed>> {
            Err(ApiError::internal("no watches in memory"))
        }

        fn local_revision(&self) -> i64 {
            self.state.lock().0
        }

        fn compacted_revision(&self) -> i64 {
            0
        }
    }

    async fn api_over(storage: &Arc<Memory>) -> Api {
        let api = Api::new(storage.clone(), Arc::new(Registry::new(RuntimeConfig::default())));
        api.ensure_system_namespaces().await.unwrap();
        api
    }

    async fn create(api: &Api, plural: &str, namespace: Option<&str>, object: Value) -> Value {
        let rt = api.core_type(plural).unwrap();
        api.create(&rt, namespace, object, &WriteOptions::default()).await.unwrap().0
    }

    async fn delete(api: &Api, plural: &str, namespace: Option<&str>, name: &str) {
        let rt = api.core_type(plural).unwrap();
        api.delete(&rt, namespace, name, &DeleteOptions::default()).await.unwrap();
    }

    async fn review(api: &Api, token: &str, audiences: &[&str]) -> Value {
        let rt = api.registry.find("authentication.k8s.io", "v1", "tokenreviews").unwrap();
        let body = json!({"apiVersion": GROUP_VERSION, "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}});
        api.create(&rt, None, body, &WriteOptions::default()).await.unwrap().0["status"].clone()
    }

    fn claims_of(token: &str) -> Value {
        jwt::unverified_claims(token).unwrap()
    }

    #[tokio::test]
    async fn tokens_are_issued_reviewed_and_die_with_their_account() {
        let storage = Arc::new(Memory::default());
        let api = api_over(&storage).await;
        let account = create(&api, "serviceaccounts", Some("default"), json!({"metadata": {"name": "bot"}})).await;
        let uid = object::meta_str(&account, "uid").to_string();

        let issued = api
            .request_token("default", "bot", json!({"spec": {"audiences": ["x"], "expirationSeconds": 600}}))
            .await
            .unwrap();
        assert_eq!((&issued["kind"], &issued["metadata"]["name"]), (&json!("TokenRequest"), &json!("bot")));
        let token = issued["status"]["token"].as_str().unwrap().to_string();
        let claims = claims_of(&token);
        assert_eq!(claims["sub"], "system:serviceaccount:default:bot");
        assert_eq!(claims["iss"], DEFAULT_ISSUER);
        assert_eq!(claims["aud"], json!(["x"]));
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 600);
        assert_eq!(claims["kubernetes.io"]["serviceaccount"], json!({"name": "bot", "uid": uid}));
        assert_eq!(issued["status"]["expirationTimestamp"], json!(rfc3339(claims["exp"].as_i64().unwrap())));

        let status = review(&api, &token, &["x"]).await;
        assert_eq!(status["authenticated"], true, "{status}");
        assert_eq!(status["user"]["username"], "system:serviceaccount:default:bot");
        assert_eq!(status["user"]["uid"], json!(uid));
        assert_eq!(status["audiences"], json!(["x"]));
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(status["user"]["extra"][EXTRA_CREDENTIAL_ID], json!([format!("JTI={jti}")]));

        // Not for the API's own audience (the issuer), which a review without audiences asks about.
        let status = review(&api, &token, &[]).await;
        assert_eq!(status["authenticated"], false);
        assert!(status["error"].as_str().unwrap().contains("is invalid for the target audiences"), "{status}");

        // Another member over the same store signs and verifies with the same key.
        let other = api_over(&storage).await;
        assert_eq!(other.signing_key().await.unwrap().kid(), api.signing_key().await.unwrap().kid());
        assert_eq!(review(&other, &token, &["x"]).await["authenticated"], true);

        // The account deleted, and created again under the same name: the token is dead.
        delete(&api, "serviceaccounts", Some("default"), "bot").await;
        let status = review(&api, &token, &["x"]).await;
        assert_eq!(status["error"], "service account default/bot has been deleted", "{status}");
        create(&api, "serviceaccounts", Some("default"), json!({"metadata": {"name": "bot"}})).await;
        let status = review(&api, &token, &["x"]).await;
        assert!(status["error"].as_str().unwrap().starts_with("service account UID ("), "{status}");
    }

    #[tokio::test]
    async fn expired_tampered_and_foreign_tokens_are_refused() {
        let storage = Arc::new(Memory::default());
        let api = api_over(&storage).await;
        let account = create(&api, "serviceaccounts", Some("default"), json!({"metadata": {"name": "bot"}})).await;
        let uid = object::meta_str(&account, "uid");
        let key = api.signing_key().await.unwrap();
        let now = unix_now();
        let claims = |exp: i64| {
            json!({
                "iss": DEFAULT_ISSUER, "sub": "system:serviceaccount:default:bot", "aud": [DEFAULT_ISSUER],
                "exp": exp, "iat": now - 7200, "nbf": now - 7200,
                "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "bot", "uid": uid}},
            })
        };
        let good = key.sign(&claims(now + 600)).unwrap();
        assert_eq!(review(&api, &good, &[]).await["authenticated"], true);
        let expired = key.sign(&claims(now - 3600)).unwrap();
        assert_eq!(review(&api, &expired, &[]).await["error"], "service account token has expired");

        let (signed, _) = good.rsplit_once('.').unwrap();
        let (_, other_signature) = expired.rsplit_once('.').unwrap();
        let status = review(&api, &format!("{signed}.{other_signature}"), &[]).await;
        assert_eq!(status["authenticated"], false);
        assert!(status["error"].as_str().unwrap().contains("signature"), "{status}");

        let foreign = Key::generate().unwrap().sign(&claims(now + 600)).unwrap();
        assert!(review(&api, &foreign, &[]).await["error"].as_str().unwrap().contains("signature"));
        let mut elsewhere = claims(now + 600);
        elsewhere["iss"] = json!("https://elsewhere");
        let status = review(&api, &key.sign(&elsewhere).unwrap(), &[]).await;
        assert!(status["error"].as_str().unwrap().contains("is not this cluster's"), "{status}");
        let status = review(&api, "not-a-jwt", &[]).await;
        assert!(status["error"].as_str().unwrap().contains("malformed"), "{status}");

        // A review without a token is a bad request, not an unauthenticated answer.
        let rt = api.registry.find("authentication.k8s.io", "v1", "tokenreviews").unwrap();
        let err = api.create(&rt, None, json!({"spec": {}}), &WriteOptions::default()).await.unwrap_err();
        assert_eq!(err.code(), 400, "{err}");
        let err = api
            .create(&rt, None, json!({"spec": {"token": good, "color": "red"}}), &WriteOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown field \"spec.color\""), "{err}");
        // Nothing was stored.
        assert!(storage.state.lock().1.keys().all(|k| !k.contains("tokenreviews")));
    }

    #[tokio::test]
    async fn bound_tokens_follow_their_object() {
        let storage = Arc::new(Memory::default());
        let api = api_over(&storage).await;
        create(&api, "serviceaccounts", Some("default"), json!({"metadata": {"name": "bot"}})).await;
        let pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "bot", "containers": [{"name": "c", "image": "busybox"}]}});
        let pod = create(&api, "pods", Some("default"), pod).await;
        let pod_uid = object::meta_str(&pod, "uid").to_string();
        let bound = |kind: &str, name: &str, uid: &str| json!({"spec": {"boundObjectRef": {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid}}});

        let issued = api.request_token("default", "bot", bound("Pod", "p", &pod_uid)).await.unwrap();
        let token = issued["status"]["token"].as_str().unwrap();
        assert_eq!(claims_of(token)["kubernetes.io"]["pod"], json!({"name": "p", "uid": pod_uid}));
        assert_eq!(claims_of(token)["aud"], json!([DEFAULT_ISSUER]), "the API's audience by default");
        assert_eq!(claims_of(token)["exp"].as_i64().unwrap() - claims_of(token)["iat"].as_i64().unwrap(), 3600);
        let status = review(&api, token, &[]).await;
        assert_eq!(status["user"]["extra"][EXTRA_POD_NAME], json!(["p"]), "{status}");
        assert_eq!(status["user"]["extra"][EXTRA_POD_UID], json!([pod_uid]));
        delete(&api, "pods", Some("default"), "p").await;
        assert_eq!(review(&api, token, &[]).await["error"], "pod default/p has been deleted");

        // Bad requests, each with kube's status code.
        let code = |r: Result<Value>| r.map(|_| 0).unwrap_or_else(|e| e.code());
        assert_eq!(code(api.request_token("default", "bot", bound("Pod", "p", "")).await), 404);
        let node = create(&api, "nodes", None, json!({"metadata": {"name": "n1"}})).await;
        assert_eq!(code(api.request_token("default", "bot", bound("Node", "n1", "not-its-uid")).await), 409);
        let issued =
            api.request_token("default", "bot", bound("Node", "n1", object::meta_str(&node, "uid"))).await.unwrap();
        let status = review(&api, issued["status"]["token"].as_str().unwrap(), &[]).await;
        assert_eq!(status["user"]["extra"][EXTRA_NODE_NAME], json!(["n1"]), "{status}");
        let err = api
            .request_token(
                "default",
                "bot",
                json!({"spec": {"boundObjectRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}}}),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), 400);
        assert_eq!(
            err.to_string(),
            "cannot bind token for serviceaccount \"bot\" to object of type apps/v1, Kind=Deployment"
        );
        let err = api.request_token("default", "bot", json!({"spec": {"expirationSeconds": 10}})).await.unwrap_err();
        assert_eq!(err.code(), 422);
        assert!(
            err.to_string()
                .contains("spec.expirationSeconds: Invalid value: 10: may not specify a duration less than 10 minutes"),
            "{err}"
        );
        let err = api.request_token("default", "nobody", json!({})).await.unwrap_err();
        assert_eq!((err.code(), err.to_string()), (404, "serviceaccounts \"nobody\" not found".to_string()));
    }

    #[tokio::test]
    async fn legacy_tokens_live_while_their_secret_holds_them() {
        let storage = Arc::new(Memory::default());
        let api = api_over(&storage).await;
        let account = create(&api, "serviceaccounts", Some("default"), json!({"metadata": {"name": "bot"}})).await;
        let uid = object::meta_str(&account, "uid");
        let token = api.legacy_token("default", "bot", uid, "bot-token").await.unwrap();
        let claims = claims_of(&token);
        assert_eq!(claims["iss"], LEGACY_ISSUER);
        assert_eq!(claims["kubernetes.io/serviceaccount/secret.name"], "bot-token");
        assert!(claims.get("exp").is_none());
        // Before the Secret holds it, the token is nothing.
        assert_eq!(review(&api, &token, &[]).await["error"], "token has been invalidated");
        let encoded = base64::engine::general_purpose::STANDARD.encode(&token);
        let secret = json!({"metadata": {"name": "bot-token"}, "type": SECRET_TYPE, "data": {"token": encoded}});
        create(&api, "secrets", Some("default"), secret).await;
        let status = review(&api, &token, &[]).await;
        assert_eq!(status["authenticated"], true, "{status}");
        assert_eq!(status["user"]["username"], "system:serviceaccount:default:bot");
        assert_eq!(status["audiences"], json!([DEFAULT_ISSUER]));
        delete(&api, "secrets", Some("default"), "bot-token").await;
        assert_eq!(review(&api, &token, &[]).await["error"], "token has been invalidated");
    }

    /// `kubectl create token` sends its TokenRequest as protobuf: the spec must survive decoding.
    #[test]
    fn protobuf_token_requests_keep_their_spec() {
        fn field(tag: u32, wire: u8, payload: &[u8], out: &mut Vec<u8>) {
            out.push(((tag << 3) as u8) | wire);
            if wire == 2 {
                out.push(payload.len() as u8);
            }
            out.extend_from_slice(payload);
        }
        let mut spec = Vec::new();
        field(1, 2, b"x", &mut spec);
        field(4, 0, &[0xD8, 0x04], &mut spec); // 600 as a varint
        let mut request = Vec::new();
        field(2, 2, &spec, &mut request);
        let mut type_meta = Vec::new();
        field(1, 2, GROUP_VERSION.as_bytes(), &mut type_meta);
        field(2, 2, b"TokenRequest", &mut type_meta);
        let mut body = crate::proto::MAGIC.to_vec();
        field(1, 2, &type_meta, &mut body);
        field(2, 2, &request, &mut body);
        let registry = Registry::new(RuntimeConfig::default());
        let document = crate::openapi::v2(&registry);
        let names = crate::proto::json_names(document["definitions"].as_object().unwrap());
        let decoded = crate::proto::decode_body(&body, &names).unwrap();
        assert_eq!(decoded["spec"], json!({"audiences": ["x"], "expirationSeconds": 600}), "{decoded}");
    }

    #[tokio::test]
    async fn discovery_publishes_the_key() {
        let storage = Arc::new(Memory::default());
        let api = api_over(&storage).await;
        let config = api.openid_configuration().unwrap();
        assert_eq!(config["issuer"], DEFAULT_ISSUER);
        assert_eq!(config["jwks_uri"], format!("{DEFAULT_ISSUER}/openid/v1/jwks"));
        assert_eq!(config["id_token_signing_alg_values_supported"], json!(["ES256"]));
        let jwks = api.jwks().await.unwrap();
        assert_eq!(jwks["keys"][0]["kid"], api.signing_key().await.unwrap().kid());
        let http = Api::new(storage.clone(), api.registry.clone())
            .with_token_settings(TokenSettings { issuers: vec!["http://plain".into()], ..TokenSettings::default() });
        assert!(matches!(http.openid_configuration(), Err(ApiError::NoRoute)));
    }

    #[test]
    fn times_are_checked_with_leeway() {
        let now = 1_000_000;
        assert!(check_times(&json!({"exp": now + 600, "nbf": now, "iat": now}), now).is_ok());
        assert!(check_times(&json!({"exp": now - 30}), now).is_ok(), "within the leeway");
        assert_eq!(check_times(&json!({"exp": now - 61}), now).unwrap_err(), "service account token has expired");
        assert_eq!(
            check_times(&json!({"nbf": now + 3600}), now).unwrap_err(),
            "service account token is not valid yet"
        );
        assert_eq!(
            check_times(&json!({"iat": now + 3600}), now).unwrap_err(),
            "service account token is issued in the future"
        );
        assert!(check_times(&json!({"sub": "legacy tokens have no exp"}), now).is_ok());
    }

    #[test]
    fn audiences_must_meet() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(check_audiences(&s(&["a", "b"]), &s(&["b", "c"])).unwrap(), s(&["b"]));
        assert_eq!(
            check_audiences(&s(&["a"]), &s(&["x", "y"])).unwrap_err(),
            r#"token audiences ["a"] is invalid for the target audiences ["x" "y"]"#
        );
        assert_eq!(token_audiences(&json!({"aud": "one"})), s(&["one"]));
        assert_eq!(token_audiences(&json!({"aud": ["one", "two"]})), s(&["one", "two"]));
    }

    #[test]
    fn users_are_kubes() {
        let mut extra = Map::new();
        extra.insert(EXTRA_CREDENTIAL_ID.into(), json!(["JTI=1"]));
        let user = Authenticated {
            namespace: "default".into(),
            name: "bot".into(),
            uid: "u1".into(),
            extra,
            audiences: vec!["x".into()],
        };
        assert_eq!(
            user.user_info(),
            json!({
                "username": "system:serviceaccount:default:bot",
                "uid": "u1",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]},
            })
        );
    }
}
