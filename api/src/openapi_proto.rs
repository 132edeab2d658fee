//! `/openapi/v2` as gnostic's protobuf `openapi.v2.Document`, the form kubectl asks for
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, nothing else) when it
//! validates on the client what it cannot leave to the server — the items of a `kind: List`
//! among them. kubectl decodes the document with kube-openapi's model parser, which reads the
//! definitions only; so the document carries `swagger`, `info`, an empty `paths` and every
//! definition, with each schema keyword gnostic's `Schema` message has. Values that gnostic
//! keeps as YAML (defaults, enums, examples, vendor extensions) are written as JSON text, which
//! YAML parsers read as flow style.

use serde_json::{Map, Value};

/// The media type kube-apiserver answers with. kubectl asks for the older spelling with `@`,
/// which Go's MIME parser refuses in a response.
pub const MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether `accept` prefers the protobuf document to JSON: the higher quality wins, then the
/// one named first.
pub fn wanted(accept: &str) -> bool {
    let mut best: Option<(f32, bool)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let quality =
            parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.trim().parse::<f32>().ok()).unwrap_or(1.0);
        let protobuf = if media.starts_with("application/com.github.proto-openapi.spec.v2") {
            true
        } else if matches!(media, "application/json" | "application/*" | "*/*") {
            false
        } else {
            continue;
        };
        if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, protobuf));
        }
    }
    best.is_some_and(|(_, protobuf)| protobuf)
}

/// Encodes a Swagger 2.0 document (as [`crate::openapi::v2`] builds it).
pub fn encode(document: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    if let Some(swagger) = document.get("swagger").and_then(Value::as_str) {
        string(&mut out, 1, swagger);
    }
    if let Some(info) = document.get("info").and_then(Value::as_object) {
        message(&mut out, 2, |m| {
            for (field, key) in [(1, "title"), (2, "version"), (3, "description")] {
                if let Some(s) = info.get(key).and_then(Value::as_str) {
                    string(m, field, s);
                }
            }
        });
    }
    // Paths are not served in this document (see `openapi::v2`); the message is still there, as
    // Swagger requires the object.
    message(&mut out, 8, |_| {});
    if let Some(definitions) = document.get("definitions").and_then(Value::as_object) {
        message(&mut out, 9, |m| named_schemas(m, definitions));
    }
    out
}

/// `repeated NamedSchema additional_properties = 1` of Definitions and Properties.
fn named_schemas(out: &mut Vec<u8>, schemas: &Map<String, Value>) {
    for (name, schema) in schemas {
        message(out, 1, |m| {
            string(m, 1, name);
            message(m, 2, |m| schema_fields(m, schema));
        });
    }
}

fn schema_fields(out: &mut Vec<u8>, schema: &Value) {
    let Some(s) = schema.as_object() else { return };
    let text = |key: &str| s.get(key).and_then(Value::as_str);
    let number = |key: &str| s.get(key).and_then(Value::as_f64);
    let integer = |key: &str| s.get(key).and_then(Value::as_i64);
    let flag = |key: &str| s.get(key).and_then(Value::as_bool).unwrap_or(false);
    for (field, key) in [(1, "$ref"), (2, "format"), (3, "title"), (4, "description")] {
        if let Some(v) = text(key) {
            string(out, field, v);
        }
    }
    if let Some(v) = s.get("default") {
        any(out, 5, v);
    }
    for (field, key) in [(6, "multipleOf"), (7, "maximum"), (9, "minimum")] {
        if let Some(v) = number(key) {
            double(out, field, v);
        }
    }
    for (field, key) in [(8, "exclusiveMaximum"), (10, "exclusiveMinimum"), (16, "uniqueItems")] {
        if flag(key) {
            varint_field(out, field, 1);
        }
    }
    for (field, key) in [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
        (17, "maxProperties"),
        (18, "minProperties"),
    ] {
        if let Some(v) = integer(key) {
            varint_field(out, field, v as u64);
        }
    }
    if let Some(v) = text("pattern") {
        string(out, 13, v);
    }
    for required in s.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(name) = required.as_str() {
            string(out, 19, name);
        }
    }
    for value in s.get("enum").and_then(Value::as_array).into_iter().flatten() {
        any(out, 20, value);
    }
    match s.get("additionalProperties") {
        // A oneof member is written even when it holds its type's zero value.
        Some(Value::Bool(b)) => message(out, 21, |m| varint_field(m, 2, u64::from(*b))),
        Some(sub @ Value::Object(_)) => message(out, 21, |m| message(m, 1, |m| schema_fields(m, sub))),
        _ => {}
    }
    match s.get("type") {
        Some(Value::String(t)) => message(out, 22, |m| string(m, 1, t)),
        Some(Value::Array(types)) => message(out, 22, |m| {
            for t in types.iter().filter_map(Value::as_str) {
                string(m, 1, t);
            }
        }),
        _ => {}
    }
    match s.get("items") {
        Some(sub @ Value::Object(_)) => message(out, 23, |m| message(m, 1, |m| schema_fields(m, sub))),
        Some(Value::Array(subs)) => message(out, 23, |m| {
            for sub in subs {
                message(m, 1, |m| schema_fields(m, sub));
            }
        }),
        _ => {}
    }
    for sub in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        message(out, 24, |m| schema_fields(m, sub));
    }
    if let Some(properties) = s.get("properties").and_then(Value::as_object) {
        message(out, 25, |m| named_schemas(m, properties));
    }
    if let Some(v) = text("discriminator") {
        string(out, 26, v);
    }
    if flag("readOnly") {
        varint_field(out, 27, 1);
    }
    if let Some(v) = s.get("example") {
        any(out, 30, v);
    }
    for (name, value) in s.iter().filter(|(k, _)| k.starts_with("x-")) {
        message(out, 31, |m| {
            string(m, 1, name);
            any(m, 2, value);
        });
    }
}

/// gnostic's `Any`: the value as YAML text (`string yaml = 2`).
fn any(out: &mut Vec<u8>, field: u32, value: &Value) {
    message(out, field, |m| string(m, 2, &value.to_string()));
}

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from(field << 3 | wire_type));
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, VARINT);
    varint(out, v);
}

fn double(out: &mut Vec<u8>, field: u32, v: f64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    key(out, field, LENGTH_DELIMITED);
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A nested message, written in place: its body goes after a length slot, which is then filled
/// in (moving the body only when the length needs more than one byte).
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LENGTH_DELIMITED);
    let start = out.len();
    body(out);
    let len = out.len() - start;
    let mut prefix = Vec::with_capacity(10);
    varint(&mut prefix, len as u64);
    out.splice(start..start, prefix);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A minimal reader of the wire format, to check what [`encode`] wrote.
    fn fields(mut bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        fn read_varint(bytes: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = bytes[0];
                *bytes = &bytes[1..];
                v |= u64::from(b & 0x7F) << shift;
                if b & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let k = read_varint(&mut bytes);
            let (field, wire) = ((k >> 3) as u32, k & 7);
            let body = match wire {
                0 => read_varint(&mut bytes).to_le_bytes().to_vec(),
                1 => {
                    let (b, rest) = bytes.split_at(8);
                    bytes = rest;
                    b.to_vec()
                }
                2 => {
                    let len = read_varint(&mut bytes) as usize;
                    let (b, rest) = bytes.split_at(len);
                    bytes = rest;
                    b.to_vec()
                }
                other => panic!("wire type {other}"),
            };
            out.push((field, body));
        }
        out
    }

    fn field(bytes: &[u8], number: u32) -> Vec<Vec<u8>> {
        fields(bytes).into_iter().filter(|(f, _)| *f == number).map(|(_, b)| b).collect()
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn definitions_carry_types_properties_refs_and_extensions() {
        let long = "d".repeat(300);
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "definitions": {
                "io.k8s.api.core.v1.ConfigMap": {
                    "description": long,
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "data": {"type": "object", "additionalProperties": {"type": "string"}},
                        "immutable": {"type": "boolean"},
                        "metadata": {"$ref": "#/definitions/meta", "description": "Standard metadata."},
                        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 300},
                    },
                    "x-kubernetes-group-version-kind": [{"group": "", "kind": "ConfigMap", "version": "v1"}],
                },
                "meta": {"type": "object", "additionalProperties": false, "minimum": 1.5},
            }
        });
        let bytes = encode(&doc);
        assert_eq!(text(&field(&bytes, 1)[0]), "2.0");
        let info = &field(&bytes, 2)[0];
        assert_eq!(text(&field(info, 1)[0]), "Kubernetes");
        assert_eq!(field(&bytes, 8), vec![Vec::<u8>::new()]);
        let definitions = field(&field(&bytes, 9)[0], 1);
        assert_eq!(definitions.len(), 2);
        let config_map = &definitions[0];
        assert_eq!(text(&field(config_map, 1)[0]), "io.k8s.api.core.v1.ConfigMap");
        let schema = &field(config_map, 2)[0];
        assert_eq!(text(&field(schema, 4)[0]), long, "a description over 127 bytes keeps its length");
        assert_eq!(text(&field(&field(schema, 22)[0], 1)[0]), "object");
        assert_eq!(text(&field(schema, 19)[0]), "metadata");
        let extension = &field(schema, 31)[0];
        assert_eq!(text(&field(extension, 1)[0]), "x-kubernetes-group-version-kind");
        let yaml = text(&field(&field(extension, 2)[0], 2)[0]);
        assert_eq!(serde_json::from_str::<Value>(&yaml).unwrap()[0]["kind"], "ConfigMap");
        let properties = field(&field(schema, 25)[0], 1);
        let names: Vec<String> = properties.iter().map(|p| text(&field(p, 1)[0])).collect();
        assert_eq!(names, ["data", "immutable", "metadata", "tags"]);
        let data = &field(&properties[0], 2)[0];
        let additional = &field(&field(&field(data, 21)[0], 1)[0], 22)[0];
        assert_eq!(text(&field(additional, 1)[0]), "string");
        let metadata = &field(&properties[2], 2)[0];
        assert_eq!(text(&field(metadata, 1)[0]), "#/definitions/meta");
        let tags = &field(&properties[3], 2)[0];
        assert_eq!(u64::from_le_bytes(field(tags, 14)[0][..].try_into().unwrap()), 300);
        let item = &field(&field(tags, 23)[0], 1)[0];
        assert_eq!(text(&field(&field(item, 22)[0], 1)[0]), "string");
        let meta = &field(&definitions[1], 2)[0];
        assert_eq!(field(&field(meta, 21)[0], 2), vec![0u64.to_le_bytes().to_vec()], "false is written in a oneof");
        assert_eq!(f64::from_le_bytes(field(meta, 9)[0][..].try_into().unwrap()), 1.5);
    }

    #[test]
    fn kubectl_accept_header_selects_protobuf() {
        assert!(wanted(MEDIA_TYPE));
        assert!(wanted("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"));
        assert!(wanted("application/com.github.proto-openapi.spec.v2@v1.0+protobuf, application/json"));
        assert!(!wanted("application/com.github.proto-openapi.spec.v2.v1.0+protobuf; q=0.5, application/json"));
        assert!(!wanted("application/json"));
        assert!(!wanted("application/json, application/com.github.proto-openapi.spec.v2@v1.0+protobuf"));
        assert!(!wanted(""));
    }
}
