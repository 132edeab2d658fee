//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which typed
//! clients send — `kubectl create deployment`, client-go clientsets. The body is the `k8s\0`
//! magic and a `runtime.Unknown` wrapping the object's message; it is decoded to the same JSON
//! a JSON client would have sent, using the field table in [`fields`] for wire numbers and the
//! OpenAPI schemas for JSON names (Go's embedded structs, a nested message on the wire, are
//! inlined as JSON has them). Go's protobuf writes every non-pointer field, zero or not, while
//! its JSON leaves out the zero value of an `omitempty` one; [`fields::KEEPS_ZERO`] says which
//! scalar fields keep theirs, so the JSON is what kube-apiserver would have made of the body.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Value, json};

mod fields;

pub struct F {
    pub tag: u32,
    pub name: &'static str,
    pub kind: K,
    pub message: &'static str,
    pub repeated: bool,
}

pub enum K {
    Bool,
    Bytes,
    Double,
    Int32,
    Int64,
    String,
    Message,
    Map(K2, K2),
}

pub enum K2 {
    String,
    Bytes,
    Message,
}

pub const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, thiserror::Error)]
#[error("protobuf body: {0}")]
pub struct ProtoError(String);

type Result<T> = std::result::Result<T, ProtoError>;

fn err<T>(message: impl Into<String>) -> Result<T> {
    Err(ProtoError(message.into()))
}

fn messages() -> &'static HashMap<&'static str, &'static [F]> {
    static INDEX: OnceLock<HashMap<&'static str, &'static [F]>> = OnceLock::new();
    INDEX.get_or_init(|| fields::MESSAGES.iter().map(|(name, fields)| (*name, *fields)).collect())
}

/// The tags of the scalar fields of each message whose zero value JSON keeps.
fn keeps_zero() -> &'static HashMap<&'static str, &'static [u32]> {
    static INDEX: OnceLock<HashMap<&'static str, &'static [u32]>> = OnceLock::new();
    INDEX.get_or_init(|| fields::KEEPS_ZERO.iter().map(|(name, tags)| (*name, *tags)).collect())
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// JSON property names of each schema definition, keyed by the names with case and
/// underscores removed (how prost's snake_case field names compare to them).
pub type JsonNames = HashMap<String, HashMap<String, String>>;

fn normalize(name: &str) -> String {
    name.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
}

/// Builds [`JsonNames`] from OpenAPI definitions.
pub fn json_names(definitions: &Map<String, Value>) -> JsonNames {
    definitions
        .iter()
        .map(|(name, schema)| {
            let properties = schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| p.keys().map(|k| (normalize(k), k.clone())).collect())
                .unwrap_or_default();
            (name.clone(), properties)
        })
        .collect()
}

fn definition_name(message: &str) -> String {
    let (first, rest) = message.split_once('.').unwrap_or((message, ""));
    format!("io.k8s.{}.{rest}", first.replace('_', "-"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.bytes.get(self.at) else { return err("truncated varint") };
            self.at += 1;
            value |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        err("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else { return err("field runs past the end of the message") };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn length_delimited(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()? as usize;
        self.take(n)
    }

    /// The next field: its number, wire type and raw payload.
    fn field(&mut self) -> Result<(u32, u8, Payload<'a>)> {
        let key = self.varint()?;
        let (tag, wire) = ((key >> 3) as u32, (key & 7) as u8);
        let payload = match wire {
            0 => Payload::Varint(self.varint()?),
            1 => Payload::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| ProtoError("fixed64".into()))?,
            )),
            2 => Payload::Bytes(self.length_delimited()?),
            5 => {
                self.take(4)?;
                Payload::Fixed32
            }
            other => return err(format!("unsupported wire type {other} for field {tag}")),
        };
        Ok((tag, wire, payload))
    }
}

enum Payload<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Skipped: no Kubernetes field uses 32-bit fixed encoding.
    Fixed32,
    Bytes(&'a [u8]),
}

/// The `apiVersion`, `kind` and object bytes of an enveloped body.
pub fn unwrap_envelope(body: &[u8]) -> Result<(String, String, &[u8])> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return err("the body does not start with the Kubernetes protobuf magic number");
    };
    let mut reader = Reader { bytes: rest, at: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while !reader.done() {
        match reader.field()? {
            (1, _, Payload::Bytes(type_meta)) => {
                let mut tm = Reader { bytes: type_meta, at: 0 };
                while !tm.done() {
                    match tm.field()? {
                        (1, _, Payload::Bytes(b)) => api_version = String::from_utf8_lossy(b).into_owned(),
                        (2, _, Payload::Bytes(b)) => kind = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, _, Payload::Bytes(b)) => raw = b,
            (4, _, Payload::Bytes(b)) if !b.is_empty() && b != b"application/vnd.kubernetes.protobuf" => {
                return err(format!("unsupported content type {:?} inside the envelope", String::from_utf8_lossy(b)));
            }
            _ => {}
        }
    }
    Ok((api_version, kind, raw))
}

/// The protobuf message that carries `kind` of `api_version`.
pub fn message_for(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let options = ["DeleteOptions", "CreateOptions", "UpdateOptions", "PatchOptions"];
    let package = if options.contains(&kind) {
        "apimachinery.pkg.apis.meta".to_string()
    } else if group == "apiextensions.k8s.io" {
        "apiextensions_apiserver.pkg.apis.apiextensions".to_string()
    } else if group == "apiregistration.k8s.io" {
        "kube_aggregator.pkg.apis.apiregistration".to_string()
    } else {
        let short = if group.is_empty() { "core" } else { group.split('.').next().unwrap_or(group) };
        let short = match short {
            "rbac"
            | "networking"
            | "scheduling"
            | "storage"
            | "coordination"
            | "discovery"
            | "events"
            | "node"
            | "certificates"
            | "admissionregistration"
            | "authentication"
            | "authorization"
            | "flowcontrol"
            | "resource"
            | "storagemigration"
            | "apiserverinternal" => short,
            other => other,
        };
        format!("api.{short}")
    };
    let version = if options.contains(&kind) { "v1" } else { version };
    let message = format!("{package}.{version}.{kind}");
    messages().contains_key(message.as_str()).then_some(message)
}

fn timestamp(seconds: i64, nanos: i64, micro: bool) -> Value {
    match jiff::Timestamp::new(seconds, nanos as i32) {
        // Go's zero time, which JSON writes as null.
        _ if seconds == 0 && nanos == 0 => Value::Null,
        Ok(t) if micro => json!(t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
        Ok(t) => json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        Err(_) => Value::Null,
    }
}

fn scalar(kind: &K, payload: &Payload<'_>) -> Result<Value> {
    Ok(match (kind, payload) {
        (K::Bool, Payload::Varint(v)) => json!(*v != 0),
        (K::Int32, Payload::Varint(v)) => json!(*v as i64 as i32),
        (K::Int64, Payload::Varint(v)) => json!(*v as i64),
        (K::Double, Payload::Fixed64(v)) => json!(f64::from_bits(*v)),
        (K::String, Payload::Bytes(b)) => json!(String::from_utf8_lossy(b)),
        (K::Bytes, Payload::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        _ => return err("a field's wire type does not match its declared type"),
    })
}

/// Packed repeated numbers arrive as one length-delimited run.
fn packed(kind: &K, bytes: &[u8]) -> Result<Vec<Value>> {
    let mut reader = Reader { bytes, at: 0 };
    let mut out = Vec::new();
    while !reader.done() {
        let payload = match kind {
            K::Double => Payload::Fixed64(u64::from_le_bytes(
                reader.take(8)?.try_into().map_err(|_| ProtoError("double".into()))?,
            )),
            _ => Payload::Varint(reader.varint()?),
        };
        out.push(scalar(kind, &payload)?);
    }
    Ok(out)
}

fn raw_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(bytes)))
}

/// Decodes one message of type `message` to the JSON Kubernetes writes for it.
pub fn to_json(message: &str, bytes: &[u8], names: &JsonNames) -> Result<Value> {
    // Types whose JSON form is not an object of their fields.
    match message {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (mut seconds, mut nanos) = (0i64, 0i64);
            let mut reader = Reader { bytes, at: 0 };
            while !reader.done() {
                match reader.field()? {
                    (1, _, Payload::Varint(v)) => seconds = v as i64,
                    (2, _, Payload::Varint(v)) => nanos = v as i64,
                    _ => {}
                }
            }
            return Ok(timestamp(seconds, nanos, message.ends_with("MicroTime")));
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let (mut kind, mut int, mut string) = (0u64, 0i64, String::new());
            let mut reader = Reader { bytes, at: 0 };
            while !reader.done() {
                match reader.field()? {
                    (1, _, Payload::Varint(v)) => kind = v,
                    (2, _, Payload::Varint(v)) => int = v as i64 as i32 as i64,
                    (3, _, Payload::Bytes(b)) => string = String::from_utf8_lossy(b).into_owned(),
                    _ => {}
                }
            }
            return Ok(if kind == 1 { json!(string) } else { json!(int) });
        }
        "apimachinery.pkg.api.resource.Quantity" | "apimachinery.pkg.apis.meta.v1.Duration" => {
            let mut reader = Reader { bytes, at: 0 };
            while !reader.done() {
                match reader.field()? {
                    (1, _, Payload::Bytes(b)) => return Ok(json!(String::from_utf8_lossy(b))),
                    (1, _, Payload::Varint(ns)) => return Ok(json!(format!("{}s", ns as i64 as f64 / 1e9))),
                    _ => {}
                }
            }
            return Ok(json!(""));
        }
        "apimachinery.pkg.runtime.RawExtension"
        | "apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => {
            let mut reader = Reader { bytes, at: 0 };
            while !reader.done() {
                if let (1, _, Payload::Bytes(b)) = reader.field()? {
                    return Ok(raw_json(b));
                }
            }
            return Ok(Value::Null);
        }
        _ => {}
    }
    let Some(fields) = messages().get(message) else {
        return err(format!("unknown message {message}"));
    };
    let json_names = names.get(&definition_name(message));
    let keeps_zero = keeps_zero().get(message).copied().unwrap_or_default();
    let mut out = Map::new();
    let mut reader = Reader { bytes, at: 0 };
    while !reader.done() {
        let (tag, _, payload) = reader.field()?;
        let Some(field) = fields.iter().find(|f| f.tag == tag) else { continue };
        let json_name = json_names.and_then(|n| n.get(&normalize(field.name))).cloned();
        let value = match (&field.kind, &payload) {
            (K::Message, Payload::Bytes(b)) => to_json(field.message, b, names)?,
            (K::Map(_, value_kind), Payload::Bytes(b)) => {
                let mut entry = Reader { bytes: b, at: 0 };
                let (mut key, mut value) = (String::new(), Value::Null);
                while !entry.done() {
                    match entry.field()? {
                        (1, _, Payload::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
                        (2, _, Payload::Bytes(v)) => {
                            value = match value_kind {
                                K2::String => json!(String::from_utf8_lossy(v)),
                                K2::Bytes => json!(base64::engine::general_purpose::STANDARD.encode(v)),
                                K2::Message => to_json(field.message, v, names)?,
                            }
                        }
                        _ => {}
                    }
                }
                if value.is_null() {
                    value = match value_kind {
                        K2::String | K2::Bytes => json!(""),
                        K2::Message => json!({}),
                    };
                }
                let name = json_name.clone().unwrap_or_else(|| camel(field.name));
                let map = out.entry(name).or_insert_with(|| json!({}));
                if let Some(map) = map.as_object_mut() {
                    map.insert(key, value);
                }
                continue;
            }
            (kind, Payload::Bytes(b)) if field.repeated && !matches!(kind, K::String | K::Bytes) => {
                let name = json_name.clone().unwrap_or_else(|| camel(field.name));
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.extend(packed(kind, b)?);
                }
                continue;
            }
            (kind, payload) => scalar(kind, payload)?,
        };
        // Go writes every non-pointer field on the wire, but JSON leaves out a zero time and
        // the zero value of an `omitempty` scalar; a pointer keeps it (a PVC's
        // storageClassName: "" asks for no class, spec.replicas: 0 for no pods).
        let omitted = match field.kind {
            _ if field.repeated => false,
            K::Message | K::Map(..) => value.as_str() == Some(""),
            _ => is_zero(&value) && !keeps_zero.contains(&tag),
        };
        if value.is_null() || omitted {
            continue;
        }
        match json_name {
            Some(name) if field.repeated => {
                if let Some(list) = out.entry(name).or_insert_with(|| json!([])).as_array_mut() {
                    list.push(value);
                }
            }
            Some(name) => {
                out.insert(name, value);
            }
            // A Go embedded struct: its fields sit in the parent's JSON.
            None if matches!(field.kind, K::Message) && value.is_object() && !field.repeated => {
                if let Value::Object(inner) = value {
                    out.extend(inner);
                }
            }
            None if field.repeated => {
                if let Some(list) = out.entry(camel(field.name)).or_insert_with(|| json!([])).as_array_mut() {
                    list.push(value);
                }
            }
            None => {
                out.insert(camel(field.name), value);
            }
        }
    }
    Ok(Value::Object(out))
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes an enveloped protobuf body to the JSON object it carries (with its type meta).
pub fn decode_body(body: &[u8], names: &JsonNames) -> Result<Value> {
    let (api_version, kind, raw) = unwrap_envelope(body)?;
    let Some(message) = message_for(&api_version, &kind) else {
        return err(format!("no protobuf message is known for {kind} in {api_version}"));
    };
    let mut object = to_json(&message, raw, names)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    /// A message built field by field.
    #[derive(Default)]
    struct Pb(Vec<u8>);

    impl Pb {
        fn varint(mut self, tag: u32, value: u64) -> Self {
            varint(u64::from(tag) << 3, &mut self.0);
            varint(value, &mut self.0);
            self
        }

        fn string(mut self, tag: u32, value: &str) -> Self {
            bytes_field(tag, value.as_bytes(), &mut self.0);
            self
        }

        fn message(mut self, tag: u32, value: Pb) -> Self {
            bytes_field(tag, &value.0, &mut self.0);
            self
        }

        fn label(self, tag: u32, key: &str, value: &str) -> Self {
            self.message(tag, Pb::default().string(1, key).string(2, value))
        }
    }

    fn envelope(api_version: &str, kind: &str, object: Pb) -> Vec<u8> {
        let type_meta = Pb::default().string(1, api_version).string(2, kind);
        let mut body = MAGIC.to_vec();
        body.extend(Pb::default().message(1, type_meta).message(2, object).0);
        body
    }

    /// ObjectMeta as Go writes it: every non-pointer field, the zero ones too.
    fn object_meta(name: &str) -> Pb {
        let mut meta = Pb::default().string(1, name);
        for tag in 2..=6 {
            meta = meta.string(tag, ""); // generateName, namespace, selfLink, uid, resourceVersion
        }
        // generation, creationTimestamp (a zero time is an empty message), labels
        meta.varint(7, 0).message(8, Pb::default()).label(11, "app", "web")
    }

    fn names() -> JsonNames {
        let registry = crate::registry::Registry::new(crate::registry::RuntimeConfig::default());
        let doc = crate::openapi::v2(&registry);
        json_names(doc["definitions"].as_object().unwrap())
    }

    #[test]
    fn a_configmap_decodes_as_kubectl_sent_it() {
        let mut meta = Vec::new();
        bytes_field(1, b"cfg", &mut meta);
        let mut label = Vec::new();
        bytes_field(1, b"app", &mut label);
        bytes_field(2, b"web", &mut label);
        bytes_field(11, &label, &mut meta);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        let mut entry = Vec::new();
        bytes_field(1, b"key", &mut entry);
        bytes_field(2, b"value", &mut entry);
        bytes_field(2, &entry, &mut cm);
        let mut type_meta = Vec::new();
        bytes_field(1, b"v1", &mut type_meta);
        bytes_field(2, b"ConfigMap", &mut type_meta);
        let mut unknown = Vec::new();
        bytes_field(1, &type_meta, &mut unknown);
        bytes_field(2, &cm, &mut unknown);
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&unknown);
        let object = decode_body(&body, &names()).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "web"}}, "data": {"key": "value"}})
        );
    }

    #[test]
    fn embedded_structs_are_inlined_and_names_keep_their_case() {
        // ConfigMapEnvSource{localObjectReference{name}} is {"name": ...} in JSON.
        let mut reference = Vec::new();
        bytes_field(1, b"cm", &mut reference);
        let mut source = Vec::new();
        bytes_field(1, &reference, &mut source);
        let value = to_json("api.core.v1.ConfigMapEnvSource", &source, &names()).unwrap();
        assert_eq!(value, json!({"name": "cm"}));
        // PodSpec.hostIPC (tag 13) keeps its capitals.
        let mut spec = Vec::new();
        varint(13 << 3, &mut spec);
        varint(1, &mut spec);
        let value = to_json("api.core.v1.PodSpec", &spec, &names()).unwrap();
        assert_eq!(value, json!({"hostIPC": true}));
    }

    #[test]
    fn zero_values_are_kept_only_where_go_json_keeps_them() {
        // What kubectl create deployment --replicas=0 sends: Go's protobuf writes every
        // non-pointer field (stdin: false, generation: 0, ...) and the pointers that are set.
        let container = Pb::default()
            .string(1, "web")
            .string(2, "nginx")
            .message(8, Pb::default()) // resources
            .string(13, "") // terminationMessagePath
            .string(14, "") // imagePullPolicy
            .varint(16, 0) // stdin
            .varint(17, 0) // stdinOnce
            .varint(18, 0); // tty
        let pod_spec = Pb::default()
            .message(2, container)
            .string(3, "") // restartPolicy
            .string(6, "") // dnsPolicy
            .varint(11, 0) // hostNetwork
            .varint(21, 0); // automountServiceAccountToken, a *bool
        let template = Pb::default().message(1, object_meta("")).message(2, pod_spec);
        let selector = Pb::default().label(1, "app", "web");
        let spec = Pb::default()
            .varint(1, 0) // replicas, an *int32
            .message(2, selector)
            .message(3, template)
            .message(4, Pb::default()) // strategy
            .varint(5, 0) // minReadySeconds
            .varint(7, 0); // paused
        let body = envelope("apps/v1", "Deployment", Pb::default().message(1, object_meta("web")).message(2, spec));
        let object = decode_body(&body, &names()).unwrap();
        assert_eq!(
            object,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{"name": "web", "image": "nginx", "resources": {}}],
                            "automountServiceAccountToken": false,
                        },
                    },
                    "strategy": {},
                },
            })
        );
    }

    #[test]
    fn an_empty_storage_class_is_kept_on_a_claim_and_dropped_on_a_volume() {
        // PersistentVolumeClaimSpec.storageClassName is a *string ("" asks for no class);
        // PersistentVolumeSpec.storageClassName is a string with omitempty.
        let claim = Pb::default().message(1, object_meta("data")).message(2, Pb::default().string(5, ""));
        let object = decode_body(&envelope("v1", "PersistentVolumeClaim", claim), &names()).unwrap();
        assert_eq!(object["spec"], json!({"storageClassName": ""}));
        let volume = Pb::default().message(1, object_meta("pv")).message(2, Pb::default().string(6, ""));
        let object = decode_body(&envelope("v1", "PersistentVolume", volume), &names()).unwrap();
        assert_eq!(object["spec"], json!({}));
    }

    #[test]
    fn fields_without_omitempty_keep_their_zero() {
        // ServicePort.port is an int32 without omitempty; targetPort, an IntOrString struct,
        // is never left out; name, protocol and nodePort are omitempty.
        let port = Pb::default()
            .string(1, "")
            .string(2, "")
            .varint(3, 0)
            .message(4, Pb::default().varint(1, 0).varint(2, 0).string(3, ""))
            .varint(5, 0);
        let value = to_json("api.core.v1.ServicePort", &port.0, &names()).unwrap();
        assert_eq!(value, json!({"port": 0, "targetPort": 0}));
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(decode_body(b"not protobuf", &names()).is_err());
        assert!(decode_body(b"k8s\0\x0a\xff", &names()).is_err());
        assert_eq!(message_for("apps/v1", "Deployment").as_deref(), Some("api.apps.v1.Deployment"));
        assert_eq!(message_for("v1", "Pod").as_deref(), Some("api.core.v1.Pod"));
        assert!(message_for("example.com/v1", "Widget").is_none());
    }
}
