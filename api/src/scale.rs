//! The `scale` subresource: an `autoscaling/v1` Scale read from and written into the
//! replicas of a Deployment, ReplicaSet, StatefulSet, ReplicationController or custom resource.

use serde_json::{Value, json};

use crate::error::{ApiError, FieldCause, Result};
use crate::object;
use crate::registry::ResourceType;
use crate::selector::LabelSelector;

fn paths(rt: &ResourceType) -> Result<&crate::registry::ScalePaths> {
    rt.scale
        .as_ref()
        .ok_or_else(|| ApiError::NotFound { resource: format!("{}/scale", rt.qualified()), name: String::new() })
}

pub fn scale_of(rt: &ResourceType, object: &Value, revision: i64) -> Result<Value> {
    let paths = paths(rt)?;
    let spec = object.pointer(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0);
    let status = object.pointer(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0);
    let selector = match paths.label_selector.as_ref().and_then(|p| object.pointer(p)) {
        Some(Value::String(s)) => s.clone(),
        Some(selector @ Value::Object(_)) => {
            LabelSelector::from_object(selector).map(|s| s.to_query()).unwrap_or_default()
        }
        _ => String::new(),
    };
    let mut scale = json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object::name(object),
            "uid": object::meta_str(object, "uid"),
            "resourceVersion": revision.to_string(),
            "creationTimestamp": object::meta_str(object, "creationTimestamp"),
        },
        "spec": {"replicas": spec},
        "status": {"replicas": status},
    });
    if rt.namespaced {
        scale["metadata"]["namespace"] = json!(object::namespace(object));
    }
    if !selector.is_empty() {
        scale["status"]["selector"] = json!(selector);
    }
    Ok(scale)
}

/// The object with the replicas a Scale asks for.
pub fn apply_scale(rt: &ResourceType, current: &Value, scale: &Value) -> Result<Value> {
    let paths = paths(rt)?;
    let name = object::name(current);
    let replicas = match scale.pointer("/spec/replicas") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|r| r >= 0) => n.as_i64().unwrap_or(0),
        Some(other) => {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![FieldCause::invalid(
                    "spec.replicas",
                    format!("Invalid value: {other}: must be greater than or equal to 0"),
                )],
            ));
        }
        None => {
            return Err(ApiError::invalid("Scale", "autoscaling", name, vec![FieldCause::required("spec.replicas")]));
        }
    };
    let mut updated = current.clone();
    let mut cursor = &mut updated;
    let parts: Vec<&str> = paths.spec_replicas.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cursor[*part] = json!(replicas);
        } else {
            if !cursor.get(*part).is_some_and(Value::is_object) {
                cursor[*part] = json!({});
            }
            cursor = &mut cursor[*part];
        }
    }
    Ok(updated)
}
