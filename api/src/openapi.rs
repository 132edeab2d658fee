//! OpenAPI documents, built from the k8s-openapi types' schemas and the CRDs' schemas:
//! v3 per group version (kubectl reads it to learn that the server validates fields itself,
//! for `kubectl explain`, and for the merge keys of client-side apply) and v2 for older clients.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::registry::{Registry, ResourceType, Shape};

/// Lists that merge element by element under a strategic merge patch, by the definition and
/// property that hold them: the same lists [`crate::patch`] merges.
const MERGE_LISTS: &[(&str, &str, &str)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "name"),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "name"),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "ip"),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", "topologyKey"),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", "name"),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", "name"),
    ("io.k8s.api.core.v1.Container", "ports", "containerPort"),
    ("io.k8s.api.core.v1.Container", "env", "name"),
    ("io.k8s.api.core.v1.Container", "volumeMounts", "mountPath"),
    ("io.k8s.api.core.v1.Container", "volumeDevices", "devicePath"),
    ("io.k8s.api.core.v1.EphemeralContainer", "ports", "containerPort"),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", "name"),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", "mountPath"),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", "devicePath"),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "port"),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", "type"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", "uid"),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", ""),
];

fn annotate_merge_lists(schemas: &mut Map<String, Value>) {
    for (definition, property, key) in MERGE_LISTS {
        if let Some(prop) = schemas.get_mut(*definition).and_then(|d| d.pointer_mut(&format!("/properties/{property}")))
        {
            prop["x-kubernetes-patch-strategy"] = json!("merge");
            if !key.is_empty() {
                prop["x-kubernetes-patch-merge-key"] = json!(key);
            }
        }
    }
    // Every `status.conditions` merges by type.
    for (name, definition) in schemas.iter_mut() {
        if name.ends_with("Status")
            && let Some(prop) = definition.pointer_mut("/properties/conditions")
        {
            prop["x-kubernetes-patch-strategy"] = json!("merge");
            prop["x-kubernetes-patch-merge-key"] = json!("type");
        }
    }
}

fn gvk(t: &ResourceType) -> Value {
    json!({"group": t.group, "version": t.version, "kind": t.kind})
}

/// The name a custom resource's schema is filed under (`com.example.v1.Widget`).
fn custom_schema_name(t: &ResourceType) -> String {
    let reversed: Vec<&str> = t.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), t.version, t.kind)
}

/// Schemas of `types`, keyed by definition name; each kind's own schema carries its
/// `x-kubernetes-group-version-kind`.
fn schemas(types: &[&ResourceType], settings: SchemaSettings) -> Map<String, Value> {
    let mut generator = SchemaGenerator::new(settings);
    let mut kinds: Vec<(String, Value)> = Vec::new();
    let mut custom: Vec<(String, Value)> = Vec::new();
    for t in types {
        match &t.shape {
            Shape::Typed { schema, .. } => {
                let reference = schema(&mut generator);
                let name = reference
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.rsplit('/').next())
                    .unwrap_or_default()
                    .to_string();
                kinds.push((name, gvk(t)));
            }
            Shape::Custom { schema, .. } => {
                let mut s = schema
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
                s["x-kubernetes-group-version-kind"] = json!([gvk(t)]);
                custom.push((custom_schema_name(t), s));
            }
        }
    }
    // A subresource whose body is a kind of its own is described beside its resource, as in
    // kube's documents: the protobuf decoder takes the body's JSON names from here (without
    // them `spec` would read as an embedded struct and be flattened away).
    if types.iter().any(|t| t.group.is_empty() && t.kind == "ServiceAccount") {
        generator.subschema_for::<k8s_openapi::api::authentication::v1::TokenRequest>();
    }
    let mut definitions = generator.take_definitions(true);
    for (name, gvk) in kinds {
        if let Some(definition) = definitions.get_mut(&name) {
            let list = definition
                .as_object_mut()
                .map(|d| d.entry("x-kubernetes-group-version-kind").or_insert_with(|| json!([])));
            if let Some(Value::Array(list)) = list
                && !list.contains(&gvk)
            {
                list.push(gvk);
            }
        }
    }
    definitions.extend(custom);
    annotate_merge_lists(&mut definitions);
    definitions
}

fn query_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string"}, "type": "string"})
}

fn operation(t: &ResourceType, action: &str, schema_ref: &str, extra: &[Value]) -> Value {
    let mut parameters = vec![
        query_parameter("pretty", "If 'true', then the output is pretty printed."),
        query_parameter("dryRun", "When present, indicates that modifications should not be persisted."),
    ];
    parameters.extend(extra.iter().cloned());
    json!({
        "operationId": format!("{action}{}", t.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(t),
        "parameters": parameters,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
    })
}

fn paths(types: &[&ResourceType], schema_ref: impl Fn(&ResourceType) -> String) -> Map<String, Value> {
    let mut paths = Map::new();
    let field_validation = query_parameter(
        "fieldValidation",
        "How to handle unknown or duplicate fields in the body: Ignore, Warn or Strict.",
    );
    let field_manager = query_parameter("fieldManager", "The name of the actor making the change.");
    for t in types {
        let root =
            if t.group.is_empty() { format!("/api/{}", t.version) } else { format!("/apis/{}/{}", t.group, t.version) };
        let collection = if t.namespaced {
            format!("{root}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{root}/{}", t.plural)
        };
        let r = schema_ref(t);
        if t.read_only {
            paths.insert(collection.clone(), json!({"get": operation(t, "list", &r, &[])}));
            paths.insert(format!("{collection}/{{name}}"), json!({"get": operation(t, "get", &r, &[])}));
            continue;
        }
        if t.create_only {
            let post = operation(t, "post", &r, &[field_validation.clone(), field_manager.clone()]);
            paths.insert(collection, json!({"post": post}));
            continue;
        }
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(t, "list", &r, &[]),
                "post": operation(t, "post", &r, &[field_validation.clone(), field_manager.clone()]),
                "delete": operation(t, "deletecollection", &r, &[]),
            }),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(t, "get", &r, &[]),
                "put": operation(t, "put", &r, &[field_validation.clone(), field_manager.clone()]),
                "patch": operation(t, "patch", &r, &[field_validation.clone(), field_manager.clone(), query_parameter("force", "Force is going to \"force\" Apply requests.")]),
                "delete": operation(t, "delete", &r, &[]),
            }),
        );
    }
    paths
}

fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn by_group_version(registry: &Registry) -> BTreeMap<(String, String), Vec<std::sync::Arc<ResourceType>>> {
    let mut out: BTreeMap<(String, String), Vec<_>> = BTreeMap::new();
    for t in registry.all().iter() {
        out.entry((t.group.clone(), t.version.clone())).or_default().push(t.clone());
    }
    out
}

fn fingerprint(types: &[std::sync::Arc<ResourceType>]) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for t in types {
        t.plural.hash(&mut hasher);
        if let Shape::Custom { schema, .. } = &t.shape {
            schema.as_ref().map(|s| s.to_string()).hash(&mut hasher);
        }
    }
    format!("{:016X}", hasher.finish())
}

/// `/openapi/v3`: where each group version's document is.
pub fn v3_root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for ((group, version), types) in by_group_version(registry) {
        let path = group_version_path(&group, &version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", fingerprint(&types))}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/group/version>`.
pub fn v3_group_version(registry: &Registry, path: &str) -> Option<Value> {
    let ((_, _), types) =
        by_group_version(registry).into_iter().find(|((g, v), _)| group_version_path(g, v) == path)?;
    let types: Vec<&ResourceType> = types.iter().map(|t| t.as_ref()).collect();
    let schemas = schemas(&types, SchemaSettings::openapi3());
    let find_ref = |t: &ResourceType| {
        let name = schemas
            .iter()
            .find(|(_, s)| {
                s.get("x-kubernetes-group-version-kind").and_then(Value::as_array).is_some_and(|l| l.contains(&gvk(t)))
            })
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        format!("#/components/schemas/{name}")
    };
    let paths = paths(&types, find_ref);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `/openapi/v2`: every definition, for clients that still read Swagger 2.0.
pub fn v2(registry: &Registry) -> Value {
    let all = registry.all();
    let types: Vec<&ResourceType> = all.iter().map(|t| t.as_ref()).collect();
    let settings = SchemaSettings::draft07().with(|s| {
        s.definitions_path = "/definitions".into();
        s.meta_schema = None;
    });
    let definitions = schemas(&types, settings);
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": {},
        "definitions": definitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RuntimeConfig;

    #[test]
    fn v3_documents_say_patch_takes_field_validation() {
        let registry = Registry::new(RuntimeConfig::default());
        let root = v3_root(&registry);
        assert!(
            root["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let doc = v3_group_version(&registry, "apis/apps/v1").unwrap();
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(deployment["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        let containers = &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert!(v2(&registry)["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
    }
}
