//! ServiceAccount tokens for projected `serviceAccountToken` volume sources, asked of the
//! member over the node's stream (the member checks the pod is this node's and issues a token
//! bound to it) and kept as kubelet's token manager keeps them: until 80% of their lifetime has
//! passed, or 24 hours, whichever comes first. The atomic writer then swaps the new token in.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use keel_proto::node::agent_message::Message as ToMember;
use keel_proto::node::{AgentMessage, TokenRequest, TokenResponse};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// kubelet's floor and default for `expirationSeconds`.
const MIN_EXPIRATION: i64 = 600;
const DEFAULT_EXPIRATION: i64 = 3600;
/// Longest wait for the member's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One projected source's token: which audience, for how long.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenSpec {
    pub audience: String,
    pub expiration_seconds: i64,
}

/// The tokens a pod's volumes need, by source.
pub type PodTokens = BTreeMap<TokenSpec, String>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    pod_uid: String,
    spec: TokenSpec,
}

struct Held {
    token: String,
    refresh_at: Instant,
}

#[derive(Default)]
pub struct TokenManager {
    next_id: AtomicU64,
    /// The node's stream while it is up.
    out: Mutex<Option<mpsc::Sender<AgentMessage>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<TokenResponse>>>,
    held: Mutex<HashMap<Key, Held>>,
}

/// The token specs of every projected serviceAccountToken source of `pod`.
pub fn specs_of(pod: &Pod) -> Vec<TokenSpec> {
    let mut out = Vec::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(token) = &source.service_account_token {
                out.push(TokenSpec {
                    audience: token.audience.clone().unwrap_or_default(),
                    expiration_seconds: token.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION),
                });
            }
        }
    }
    out
}

impl TokenManager {
    /// The node's stream is up: requests go down `out`.
    pub(crate) fn connected(&self, out: mpsc::Sender<AgentMessage>) {
        *self.out.lock() = Some(out);
    }

    /// The node's stream went down: requests in flight fail (and are asked again later).
    pub(crate) fn disconnected(&self) {
        *self.out.lock() = None;
        self.pending.lock().clear();
    }

    pub(crate) fn answer(&self, response: TokenResponse) {
        if let Some(waiter) = self.pending.lock().remove(&response.id) {
            let _ = waiter.send(response);
        }
    }

    /// Forgets a gone pod's tokens.
    pub fn forget(&self, pod_uid: &str) {
        self.held.lock().retain(|k, _| k.pod_uid != pod_uid);
    }

    /// Every token `pod`'s volumes need, fresh enough; an error says why one is missing.
    pub async fn for_pod(&self, pod: &Pod) -> Result<PodTokens, String> {
        let mut out = PodTokens::new();
        for spec in specs_of(pod) {
            if out.contains_key(&spec) {
                continue;
            }
            let token = self.token(pod, &spec).await?;
            out.insert(spec, token);
        }
        Ok(out)
    }

    async fn token(&self, pod: &Pod, spec: &TokenSpec) -> Result<String, String> {
        if spec.expiration_seconds < MIN_EXPIRATION {
            return Err(format!("serviceAccountToken expirationSeconds must be at least {MIN_EXPIRATION}"));
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = Key { pod_uid: uid.clone(), spec: spec.clone() };
        if let Some(held) = self.held.lock().get(&key)
            && Instant::now() < held.refresh_at
        {
            return Ok(held.token.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).filter(|a| !a.is_empty());
        let request = TokenRequest {
            id,
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: uid,
            service_account: account.unwrap_or_else(|| "default".into()),
            audiences: if spec.audience.is_empty() { Vec::new() } else { vec![spec.audience.clone()] },
            expiration_seconds: spec.expiration_seconds,
        };
        let out = self.out.lock().clone().ok_or("the node has no stream to a member to ask for a token")?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let asked = Instant::now();
        if out.send(AgentMessage { message: Some(ToMember::TokenRequest(request)) }).await.is_err() {
            self.pending.lock().remove(&id);
            return Err("the node's stream went down".into());
        }
        let response = match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return Err("the node's stream went down before the token came".into()),
            Err(_) => {
                self.pending.lock().remove(&id);
                return Err("the member did not answer the token request in time".into());
            }
        };
        if !response.error.is_empty() {
            return Err(format!("requesting a service account token: {}", response.error));
        }
        // The token's own lifetime, as issued (the API may shorten it), from its expiry.
        let lifetime = response
            .expiration
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|expiry| expiry.as_second() - jiff::Timestamp::now().as_second())
            .filter(|s| *s > 0)
            .map_or(Duration::from_secs(spec.expiration_seconds as u64), |s| Duration::from_secs(s as u64));
        let refresh_after = (lifetime.mul_f64(0.8)).min(Duration::from_secs(24 * 3600));
        self.held.lock().insert(key, Held { token: response.token.clone(), refresh_at: asked + refresh_after });
        Ok(response.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {
                "serviceAccountName": "robot",
                "containers": [{"name": "c"}],
                "volumes": [{"name": "api", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token"}},
                    {"serviceAccountToken": {"path": "vault", "audience": "vault", "expirationSeconds": 7200}}
                ]}}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn specs_default_as_kubelet_does() {
        let specs = specs_of(&pod());
        assert_eq!(
            specs,
            vec![
                TokenSpec { audience: String::new(), expiration_seconds: 3600 },
                TokenSpec { audience: "vault".into(), expiration_seconds: 7200 },
            ]
        );
    }

    #[tokio::test]
    async fn tokens_are_asked_once_and_kept() {
        let manager = std::sync::Arc::new(TokenManager::default());
        let (tx, mut rx) = mpsc::channel(8);
        manager.connected(tx);
        let member = {
            let manager = manager.clone();
            tokio::spawn(async move {
                let mut asked = Vec::new();
                while let Some(AgentMessage { message: Some(ToMember::TokenRequest(r)) }) = rx.recv().await {
                    asked.push((r.service_account.clone(), r.audiences.clone(), r.expiration_seconds));
                    let expiration =
                        (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(r.expiration_seconds)).to_string();
                    manager.answer(TokenResponse {
                        id: r.id,
                        token: format!("token-{}", r.id),
                        expiration,
                        error: String::new(),
                    });
                    if asked.len() == 2 {
                        return asked;
                    }
                }
                asked
            })
        };
        let first = manager.for_pod(&pod()).await.unwrap();
        assert_eq!(first.len(), 2);
        let again = manager.for_pod(&pod()).await.unwrap();
        assert_eq!(first, again, "held tokens are reused");
        let asked = member.await.unwrap();
        assert_eq!(asked[0], ("robot".to_string(), Vec::<String>::new(), 3600));
        assert_eq!(asked[1], ("robot".to_string(), vec!["vault".to_string()], 7200));
        manager.disconnected();
        manager.forget("u1");
        assert!(manager.for_pod(&pod()).await.unwrap_err().contains("no stream"));
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_and_short_lifetimes_are_refused() {
        let manager = std::sync::Arc::new(TokenManager::default());
        let (tx, mut rx) = mpsc::channel(8);
        manager.connected(tx);
        let m = manager.clone();
        tokio::spawn(async move {
            while let Some(AgentMessage { message: Some(ToMember::TokenRequest(r)) }) = rx.recv().await {
                m.answer(TokenResponse {
                    id: r.id,
                    error: "pod ns/p is not bound to node n".into(),
                    ..Default::default()
                });
            }
        });
        let err = manager.for_pod(&pod()).await.unwrap_err();
        assert!(err.contains("not bound to node"), "{err}");
        let mut short = pod();
        let volumes = short.spec.as_mut().unwrap().volumes.as_mut().unwrap();
        volumes[0].projected.as_mut().unwrap().sources.as_mut().unwrap()[0]
            .service_account_token
            .as_mut()
            .unwrap()
            .expiration_seconds = Some(60);
        assert!(manager.for_pod(&short).await.unwrap_err().contains("at least 600"));
    }
}
