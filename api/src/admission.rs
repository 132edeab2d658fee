//! The admission chain: mutating plugins in order, then validation of the object, then
//! validating plugins. Plugins are in-process; later ones (quota, limits, pod security, node
//! restriction) join the chain here.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::error::{ApiError, Result};
use crate::registry::ResourceType;
use crate::storage::{Consistency, SharedStorage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

pub struct Attributes<'a> {
    pub operation: Operation,
    pub resource: &'a ResourceType,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub subresource: Option<&'a str>,
    /// The object as stored, for updates and deletes.
    pub old: Option<&'a Value>,
    /// Namespaces created in the same atomic write as this object.
    pub batch: &'a [String],
}

pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    fn mutate(&self, _attributes: &Attributes<'_>, _object: &mut Value) -> Result<()> {
        Ok(())
    }

    fn validate<'a>(&'a self, _attributes: &'a Attributes<'a>, _object: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

pub struct Chain {
    plugins: Vec<Box<dyn Plugin>>,
}

impl Chain {
    /// The default chain: NamespaceLifecycle, ServiceAccount, defaulting.
    pub fn standard(storage: SharedStorage) -> Chain {
        Chain {
            plugins: vec![
                Box::new(NamespaceLifecycle { storage: storage.clone() }),
                Box::new(ServiceAccount { storage }),
                Box::new(Defaulting),
            ],
        }
    }

    pub fn mutate(&self, attributes: &Attributes<'_>, object: &mut Value) -> Result<()> {
        for plugin in &self.plugins {
            plugin.mutate(attributes, object)?;
        }
        Ok(())
    }

    pub async fn validate(&self, attributes: &Attributes<'_>, object: &Value) -> Result<()> {
        for plugin in &self.plugins {
            plugin.validate(attributes, object).await?;
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }
}

/// Namespaces that always exist and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// New objects only in namespaces that exist and are not terminating; the system namespaces
/// cannot be deleted.
pub struct NamespaceLifecycle {
    storage: SharedStorage,
}

fn namespace_key(name: &str) -> String {
    format!("/registry/core/namespaces/{name}")
}

impl Plugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn validate<'a>(&'a self, a: &'a Attributes<'a>, _object: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if a.resource.group.is_empty() && a.resource.kind == "Namespace" && a.operation == Operation::Delete {
                if SYSTEM_NAMESPACES.contains(&a.name) {
                    return Err(ApiError::Forbidden {
                        resource: "namespaces".into(),
                        name: a.name.into(),
                        message: format!("namespaces \"{}\" is forbidden: this namespace may not be deleted", a.name),
                    });
                }
                return Ok(());
            }
            let (Some(namespace), Operation::Create) = (a.namespace, a.operation) else {
                return Ok(());
            };
            if !a.resource.namespaced {
                return Ok(());
            }
            if a.batch.iter().any(|n| n == namespace) {
                return Ok(());
            }
            // A namespace just created elsewhere may not have reached this member yet.
            let (mut found, _) = self.storage.get(&namespace_key(namespace), Consistency::Local).await?;
            if found.is_none() {
                found = self.storage.get(&namespace_key(namespace), Consistency::Linearizable).await?.0;
            }
            let Some(found) = found else {
                return Err(ApiError::NotFound { resource: "namespaces".into(), name: namespace.into() });
            };
            let ns: Value = serde_json::from_slice(&found.value)
                .map_err(|e| ApiError::internal(format!("namespace {namespace} is not JSON: {e}")))?;
            if crate::object::is_terminating(&ns) {
                return Err(ApiError::Forbidden {
                    resource: a.resource.plural.clone(),
                    name: a.name.into(),
                    message: format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        a.resource.plural, a.name
                    ),
                });
            }
            Ok(())
        })
    }
}

/// Pods run as a service account: `default` unless they name one, and it must exist.
pub struct ServiceAccount {
    storage: SharedStorage,
}

fn is_pod(a: &Attributes<'_>) -> bool {
    a.resource.group.is_empty() && a.resource.kind == "Pod" && a.subresource.is_none()
}

impl Plugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    fn mutate(&self, a: &Attributes<'_>, object: &mut Value) -> Result<()> {
        if !is_pod(a) || a.operation != Operation::Create {
            return Ok(());
        }
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            let account = spec.get("serviceAccountName").and_then(Value::as_str).unwrap_or("").to_string();
            let account = if account.is_empty() {
                spec.get("serviceAccount").and_then(Value::as_str).unwrap_or("default").to_string()
            } else {
                account
            };
            spec.insert("serviceAccountName".into(), json!(account));
            spec.insert("serviceAccount".into(), json!(account));
        }
        Ok(())
    }

    fn validate<'a>(&'a self, a: &'a Attributes<'a>, object: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if !is_pod(a) || a.operation != Operation::Create {
                return Ok(());
            }
            let namespace = a.namespace.unwrap_or("default");
            let account = object.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
            // A namespace created in the same atomic write brings its default account along.
            if account == "default" && a.batch.iter().any(|n| n == namespace) {
                return Ok(());
            }
            let key = format!("/registry/core/serviceaccounts/{namespace}/{account}");
            let (mut found, _) = self.storage.get(&key, Consistency::Local).await?;
            if found.is_none() {
                found = self.storage.get(&key, Consistency::Linearizable).await?.0;
            }
            if found.is_none() {
                return Err(ApiError::Forbidden {
                    resource: "pods".into(),
                    name: a.name.into(),
                    message: format!(
                        "pods \"{}\" is forbidden: error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found",
                        a.name
                    ),
                });
            }
            Ok(())
        })
    }
}

/// Defaults as kube-apiserver sets them ([`crate::defaults`]).
pub struct Defaulting;

impl Plugin for Defaulting {
    fn name(&self) -> &'static str {
        "Defaulting"
    }

    fn mutate(&self, a: &Attributes<'_>, object: &mut Value) -> Result<()> {
        if a.operation != Operation::Delete {
            crate::defaults::apply(&a.resource.kind, &a.resource.group, object);
        }
        Ok(())
    }
}
