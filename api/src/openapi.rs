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
    // k8s-openapi gives every kind a `metadata` of its own, so its schemas list it as
    // required; kube's documents never do (a TokenReview is sent without one), and kubectl's
    // client-side validation would refuse such objects.
    for definition in definitions.values_mut() {
        if let Some(required) = definition.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|field| field != "metadata");
            if required.is_empty()
                && let Some(object) = definition.as_object_mut()
            {
                object.remove("required");
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
    let mut definitions = schemas(&types, settings);
    let names: std::collections::HashSet<String> = definitions.keys().cloned().collect();
    for definition in definitions.values_mut() {
        plain_refs(definition);
        parseable_by_kubectl(definition, &names);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": {},
        "definitions": definitions,
    })
}

/// Writes a reference with a description of its own (`{"allOf": [{"$ref": …}], "description":
/// …}`, the only way JSON Schema keeps both) as Swagger 2.0 documents it, `$ref` beside the
/// description, which is how kube's v2 document has it and what kube-openapi's model parser (in
/// kubectl) follows; under `allOf` it would take the field for an arbitrary value.
fn plain_refs(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        if let Some(items) = schema.as_array_mut() {
            items.iter_mut().for_each(plain_refs);
        }
        return;
    };
    let single_ref = match object.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
        Some([only]) if only.as_object().is_some_and(|o| o.len() == 1) => only.get("$ref").cloned(),
        _ => None,
    };
    if let Some(reference) = single_ref
        && !object.contains_key("type")
        && !object.contains_key("properties")
    {
        object.remove("allOf");
        object.insert("$ref".into(), reference);
    }
    object.values_mut().for_each(plain_refs);
}

/// Loosens what kube-openapi's model parser (kubectl's, for this document) would refuse — and
/// one refusal fails the whole document, so validation of everything with it. Custom
/// resources' schemas may hold any of it: a list of types, an array without one item schema, a
/// reference outside the definitions or beside a type. Such a schema is left untyped (any value
/// passes), as kube publishes what Swagger 2.0 cannot say.
fn parseable_by_kubectl(schema: &mut Value, definitions: &std::collections::HashSet<String>) {
    let Some(object) = schema.as_object_mut() else { return };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let known = reference.strip_prefix("#/definitions/").is_some_and(|name| definitions.contains(name));
        if !known || object.contains_key("type") || object.contains_key("properties") {
            object.remove("$ref");
            object.remove("type");
            object.remove("properties");
        }
        return;
    }
    let typed: Option<String> = match object.get("type") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => {
            object.remove("type");
            None
        }
        None => None,
    };
    match typed.as_deref() {
        None | Some("object") => {
            if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
                for property in properties.values_mut() {
                    parseable_by_kubectl(property, definitions);
                }
            } else if let Some(sub @ Value::Object(_)) = object.get_mut("additionalProperties") {
                parseable_by_kubectl(sub, definitions);
            }
        }
        Some("array") => match object.get_mut("items") {
            Some(item @ Value::Object(_)) => parseable_by_kubectl(item, definitions),
            _ => {
                object.remove("type");
                object.remove("items");
            }
        },
        Some("string" | "number" | "integer" | "boolean") => {}
        Some(_) => {
            object.remove("type");
        }
    }
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

    /// What kube-openapi's model parser (kubectl's, for the protobuf v2 document) refuses:
    /// any of it fails the whole document, and kubectl's validation with it.
    fn parser_refusals(definitions: &Map<String, Value>, schema: &Value, path: &str, out: &mut Vec<String>) {
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let known = reference.strip_prefix("#/definitions/").is_some_and(|name| definitions.contains_key(name));
            if !known || !types.is_empty() || schema.get("properties").is_some() {
                out.push(format!("{path}: reference {reference}"));
            }
            return;
        }
        if schema.get("allOf").and_then(Value::as_array).is_some_and(|all| all.len() == 1) {
            out.push(format!("{path}: a lone allOf reads as an arbitrary value"));
        }
        match types.as_slice() {
            [] | ["object"] => {
                if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                    for (name, property) in properties {
                        parser_refusals(definitions, property, &format!("{path}.{name}"), out);
                    }
                } else if let Some(sub @ Value::Object(_)) = schema.get("additionalProperties") {
                    parser_refusals(definitions, sub, &format!("{path}[*]"), out);
                }
            }
            ["array"] => match schema.get("items") {
                Some(item @ Value::Object(_)) => parser_refusals(definitions, item, &format!("{path}[]"), out),
                _ => out.push(format!("{path}: an array needs exactly one item schema")),
            },
            ["string" | "number" | "integer" | "boolean"] => {}
            other => out.push(format!("{path}: type {other:?}")),
        }
    }

    #[test]
    fn custom_schemas_kubectl_cannot_parse_are_loosened() {
        let names: std::collections::HashSet<String> = ["known".to_string()].into();
        let mut schema = json!({"type": "object", "properties": {
            "either": {"type": ["string", "integer"]},
            "tuple": {"type": "array", "items": [{"type": "string"}]},
            "bare": {"type": "array"},
            "elsewhere": {"$ref": "#/components/schemas/x"},
            "typed": {"$ref": "#/definitions/known", "type": "object"},
            "fine": {"$ref": "#/definitions/known", "description": "kept"},
            "odd": {"type": "null"},
            "nested": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": ["a", "b"]}}},
        }});
        parseable_by_kubectl(&mut schema, &names);
        let definitions: Map<String, Value> =
            [("known".to_string(), json!({"type": "object"})), ("custom".to_string(), schema.clone())]
                .into_iter()
                .collect();
        let mut refusals = Vec::new();
        parser_refusals(&definitions, &schema, "custom", &mut refusals);
        assert!(refusals.is_empty(), "{refusals:#?}");
        assert_eq!(schema["properties"]["fine"]["$ref"], "#/definitions/known");
        assert_eq!(schema["properties"]["either"], json!({}));
        assert_eq!(schema["properties"]["tuple"], json!({}));
        assert_eq!(schema["properties"]["nested"]["items"]["additionalProperties"], json!({}));
    }

    #[test]
    fn v2_definitions_parse_as_kubectl_parses_them() {
        let registry = Registry::new(RuntimeConfig::default());
        let document = v2(&registry);
        let definitions = document["definitions"].as_object().unwrap();
        let mut refusals = Vec::new();
        for (name, schema) in definitions {
            parser_refusals(definitions, schema, name, &mut refusals);
        }
        assert!(refusals.is_empty(), "{refusals:#?}");
        let metadata = &definitions["io.k8s.api.core.v1.ConfigMap"]["properties"]["metadata"];
        assert_eq!(metadata["$ref"], "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "{metadata}");
        assert!(metadata["description"].is_string());
        let review = &definitions["io.k8s.api.authentication.v1.TokenReview"];
        assert_eq!(review["required"], json!(["spec"]), "no kind requires its metadata, as in kube");
    }
}
