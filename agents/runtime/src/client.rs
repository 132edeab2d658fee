//! A typed client over the in-process API. Every call goes through the same verbs a REST
//! client reaches (admission, validation, preconditions), so a controller cannot write
//! anything a user could not.

use std::sync::Arc;

use keel_api::error::{ApiError, Result};
use keel_api::patch::PatchType;
use keel_api::registry::ResourceType;
use keel_api::rest::{Api, DeleteOptions, ListOptions, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    pub api: Arc<Api>,
    /// The field manager and event source of this client's writes.
    pub manager: &'static str,
}

impl Client {
    pub fn new(api: Arc<Api>, manager: &'static str) -> Client {
        Client { api, manager }
    }

    /// The served resource type of `K`; an error when its group is switched off.
    pub fn resource<K: k8s_openapi::Resource>(&self) -> Result<Arc<ResourceType>> {
        self.api.registry.find(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT).ok_or_else(|| {
            ApiError::bad_request(format!("{}/{} {} is not served", K::GROUP, K::VERSION, K::URL_PATH_SEGMENT))
        })
    }

    fn write_options(&self) -> WriteOptions {
        WriteOptions { field_manager: Some(self.manager.to_string()), ..WriteOptions::default() }
    }

    pub async fn get<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<K> {
        let rt = self.resource::<K>()?;
        from_value(self.api.get(&rt, namespace, name).await?)
    }

    /// Every object of `K` (in `namespace`, or everywhere), typed, and the list's revision.
    pub async fn list<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<(Vec<K>, i64)> {
        let rt = self.resource::<K>()?;
        let listed = self.api.list_raw(&rt, namespace, options).await?;
        let mut items = Vec::with_capacity(listed.items.len());
        for raw in &listed.items {
            items.push(
                serde_json::from_slice(raw)
                    .map_err(|e| ApiError::internal(format!("stored {} does not decode: {e}", rt.kind)))?,
            );
        }
        Ok((items, listed.revision))
    }

    pub async fn create<K>(&self, namespace: Option<&str>, object: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let rt = self.resource::<K>()?;
        let (created, _) = self.api.create(&rt, namespace, to_value(object)?, &self.write_options()).await?;
        from_value(created)
    }

    /// A full replace; its `metadata.resourceVersion` is the precondition.
    pub async fn replace<K>(&self, namespace: Option<&str>, name: &str, object: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let rt = self.resource::<K>()?;
        let (updated, _) =
            self.api.update(&rt, namespace, name, None, to_value(object)?, &self.write_options()).await?;
        from_value(updated)
    }

    /// Replaces the status subresource; `metadata.resourceVersion` is the precondition.
    pub async fn replace_status<K>(&self, namespace: Option<&str>, name: &str, object: &K) -> Result<K>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let rt = self.resource::<K>()?;
        let (updated, _) =
            self.api.update(&rt, namespace, name, Some("status"), to_value(object)?, &self.write_options()).await?;
        from_value(updated)
    }

    pub async fn patch<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        patch_type: PatchType,
        patch: Value,
    ) -> Result<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let rt = self.resource::<K>()?;
        let (patched, _, _) =
            self.api.patch(&rt, namespace, name, subresource, patch_type, patch, &self.write_options()).await?;
        from_value(patched)
    }

    /// Deletes; `Ok(false)` when the object was already gone.
    pub async fn delete<K: k8s_openapi::Resource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<bool> {
        let rt = self.resource::<K>()?;
        match self.api.delete(&rt, namespace, name, options).await {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Binds a pod to a node through `pods/binding`.
    pub async fn bind(&self, namespace: &str, pod: &str, node: &str) -> Result<()> {
        let rt = self.resource::<k8s_openapi::api::core::v1::Pod>()?;
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        self.api.bind(&rt, Some(namespace), pod, &binding).await.map(|_| ())
    }
}

pub fn to_value<T: Serialize>(object: &T) -> Result<Value> {
    serde_json::to_value(object).map_err(|e| ApiError::internal(format!("encode: {e}")))
}

pub fn from_value<K: DeserializeOwned>(value: Value) -> Result<K> {
    serde_json::from_value(value).map_err(|e| ApiError::internal(format!("decode: {e}")))
}
