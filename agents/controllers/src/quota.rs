//! ResourceQuota status: `status.hard` mirrors `spec.hard` and `status.used` counts what the
//! namespace uses (see `keel_api::quota`), recomputed every period so that `kubectl describe
//! quota` tells the truth; the admission plugin refuses what would go over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keel_api::error::Result;
use keel_runtime::{Client, Informer, ObjectKey};

pub struct QuotaController {
    client: Client,
    quotas: Arc<Informer<ResourceQuota>>,
    period: Duration,
}

impl QuotaController {
    pub fn new(client: Client, period: Duration) -> Arc<Self> {
        Arc::new(QuotaController { quotas: Informer::new(client.clone()), client, period })
    }

    pub async fn run(self: Arc<Self>) {
        let _quotas = keel_runtime::AbortOnDrop::spawn(self.quotas.clone().run());
        self.quotas.wait_synced().await;
        loop {
            for quota in self.quotas.list() {
                let key = ObjectKey::of(quota.as_ref());
                if let Err(e) = self.sync(&quota).await {
                    tracing::debug!(quota = %key, error = %e, "quota usage not written; retrying next period");
                }
            }
            tokio::time::sleep(self.period).await;
        }
    }

    async fn sync(&self, quota: &ResourceQuota) -> Result<()> {
        let key = ObjectKey::of(quota);
        let hard = quota.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
        let names: Vec<String> = hard.keys().cloned().collect();
        let types = self.client.api.registry.all();
        let scopes = serde_json::to_value(quota)
            .map(|q| keel_api::quota::Scopes::of(&q))
            .map_err(|e| keel_api::error::ApiError::internal(format!("quota {key} as JSON: {e}")))?;
        let used = keel_api::quota::usage(&self.client.api.storage, &types, &key.namespace, &names, &scopes).await?;
        let used: BTreeMap<String, Quantity> =
            used.iter().map(|(k, v)| (k.clone(), Quantity(keel_api::quota::format(k, *v)))).collect();
        let status = ResourceQuotaStatus { hard: Some(hard), used: Some(used) };
        if quota.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let updated = ResourceQuota { status: Some(status), ..quota.clone() };
        self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        Ok(())
    }
}
