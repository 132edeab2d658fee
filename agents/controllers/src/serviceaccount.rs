//! The tokens controller, kube-controller-manager's legacy half of it: a Secret of type
//! `kubernetes.io/service-account-token` annotated `kubernetes.io/service-account.name` gets
//! a non-expiring token for that account in `data.token`, the namespace in `data.namespace`
//! and the account's uid in the `kubernetes.io/service-account.uid` annotation. A token
//! Secret whose account does not exist (or is not the one its uid annotation names: the
//! account was deleted and created again) is deleted, so the token dies with its account.
//! The token is signed by keel-api's signer ([`keel_api::tokens`]), so TokenReview accepts
//! it for as long as the Secret holds it.
//!
//! No `ca.crt` is written: keel's API is plain HTTP for now.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use keel_api::error::{ApiError, Result};
use keel_api::rest::DeleteOptions;
use keel_api::tokens::{ACCOUNT_NAME_ANNOTATION, ACCOUNT_UID_ANNOTATION, SECRET_TYPE};
use keel_runtime::{Action, Client, Informer, ObjectKey, WorkQueue};

/// Token Secrets by `<namespace>/<account>`.
pub const SECRET_BY_ACCOUNT: &str = "service-account";

pub struct TokensController {
    client: Client,
    accounts: Arc<Informer<ServiceAccount>>,
    secrets: Arc<Informer<Secret>>,
    queue: Arc<WorkQueue<ObjectKey>>,
}

fn is_token_secret(secret: &Secret) -> bool {
    secret.type_.as_deref() == Some(SECRET_TYPE)
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> &'a str {
    secret.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str).unwrap_or("")
}

fn account_key(namespace: &str, account: &str) -> String {
    format!("{namespace}/{account}")
}

impl TokensController {
    pub fn new(client: Client) -> Arc<Self> {
        let accounts = Informer::<ServiceAccount>::new(client.clone());
        let secrets = Informer::<Secret>::new(client.clone());
        secrets.add_index(SECRET_BY_ACCOUNT, |secret| {
            let account = annotation(secret, ACCOUNT_NAME_ANNOTATION);
            if !is_token_secret(secret) || account.is_empty() {
                return Vec::new();
            }
            vec![account_key(secret.metadata.namespace.as_deref().unwrap_or(""), account)]
        });
        let this = Arc::new(TokensController { client, accounts, secrets, queue: WorkQueue::new() });
        let queue = this.queue.clone();
        this.secrets.on_change(move |_, new| {
            if let Some(secret) = new.filter(|s| is_token_secret(s)) {
                queue.add(ObjectKey::of(secret.as_ref()));
            }
        });
        // An account created, recreated or deleted changes what its token Secrets should be.
        let weak = Arc::downgrade(&this);
        this.accounts.on_change(move |old, new| {
            let Some(this) = weak.upgrade() else { return };
            for account in [old, new].into_iter().flatten() {
                let key = account_key(
                    account.metadata.namespace.as_deref().unwrap_or(""),
                    account.metadata.name.as_deref().unwrap_or(""),
                );
                for secret in this.secrets.by_index(SECRET_BY_ACCOUNT, &key) {
                    this.queue.add(ObjectKey::of(secret.as_ref()));
                }
            }
        });
        this
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        let _accounts = keel_runtime::AbortOnDrop::spawn(self.accounts.clone().run());
        let _secrets = keel_runtime::AbortOnDrop::spawn(self.secrets.clone().run());
        self.accounts.wait_synced().await;
        self.secrets.wait_synced().await;
        let this = self.clone();
        keel_runtime::run_workers(self.queue.clone(), workers, "ServiceAccountTokens", move |key| {
            let this = this.clone();
            async move { this.reconcile(key).await }
        })
        .await;
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action> {
        let Some(secret) = self.secrets.get(&key) else { return Ok(Action::Done) };
        if !is_token_secret(&secret) || secret.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let account_name = annotation(&secret, ACCOUNT_NAME_ANNOTATION);
        if account_name.is_empty() {
            return Ok(Action::Done);
        }
        let wanted_uid = annotation(&secret, ACCOUNT_UID_ANNOTATION);
        let Some(account) = self.account(&key.namespace, account_name, wanted_uid).await? else {
            // The account is gone (or is another one now): so is its token, as in kube.
            let options = DeleteOptions { precondition_uid: secret.metadata.uid.clone(), ..DeleteOptions::default() };
            if self.client.delete::<Secret>(Some(&key.namespace), &key.name, &options).await? {
                tracing::info!(secret = %key, account = account_name, "deleted a token secret whose service account does not exist");
            }
            return Ok(Action::Done);
        };
        let account_uid = account.metadata.uid.clone().unwrap_or_default();
        let data = secret.data.as_ref();
        let has_token = data.and_then(|d| d.get("token")).is_some_and(|t| !t.0.is_empty());
        let has_namespace = data.and_then(|d| d.get("namespace")).is_some_and(|n| n.0 == key.namespace.as_bytes());
        if has_token && has_namespace && wanted_uid == account_uid {
            return Ok(Action::Done);
        }
        // The cached Secret's resourceVersion is the write's precondition: a newer version
        // conflicts, and its own change event brings it back here.
        let mut updated = (*secret).clone();
        let data = updated.data.get_or_insert_with(Default::default);
        if !has_token {
            let token = self.client.api.legacy_token(&key.namespace, account_name, &account_uid, &key.name).await?;
            data.insert("token".into(), ByteString(token.into_bytes()));
        }
        data.insert("namespace".into(), ByteString(key.namespace.clone().into_bytes()));
        let annotations = updated.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(ACCOUNT_NAME_ANNOTATION.into(), account_name.to_string());
        annotations.insert(ACCOUNT_UID_ANNOTATION.into(), account_uid);
        self.client.replace(Some(&key.namespace), &key.name, &updated).await?;
        tracing::debug!(secret = %key, account = account_name, "filled in a service account token secret");
        Ok(Action::Done)
    }

    /// The account a Secret names, if it exists with the uid the Secret expects (any, when
    /// it names none). A miss in the cache is checked against the API before it costs the
    /// Secret its life: an account created a moment ago may not have reached the cache yet.
    async fn account(&self, namespace: &str, name: &str, uid: &str) -> Result<Option<ServiceAccount>> {
        let matches = |a: &ServiceAccount| uid.is_empty() || a.metadata.uid.as_deref() == Some(uid);
        if let Some(cached) = self.accounts.get(&ObjectKey::new(namespace, name))
            && matches(&cached)
        {
            return Ok(Some((*cached).clone()));
        }
        match self.client.get::<ServiceAccount>(Some(namespace), name).await {
            Ok(account) if matches(&account) => Ok(Some(account)),
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
