//! Whether a typed object serializes to exactly a given JSON value, found out without
//! building that value.
//!
//! Every write of a built-in kind passes through its k8s-openapi type: the body is decoded
//! into the type (which checks every field's type) and serialized back, which drops the
//! fields the kind does not have and writes values in their canonical form. Nearly every body
//! already is that form, and building the second tree, then comparing the two and dropping
//! one, was the dearest step of a Pod create. [`serializes_to`] walks the typed object and the
//! body side by side instead; only a body that differs is serialized back.
//!
//! The walk mirrors `serde_json::to_value` (objects, arrays, numbers by their JSON kind,
//! enums as serde_json writes them), so `serializes_to(t, v)` is true exactly when
//! `to_value(t)` would equal `v`. Whatever it does not mirror (128-bit integers, map keys
//! that are not strings) counts as different and takes the full path.

use serde::ser::{self, Serialize};
use serde_json::{Map, Number, Value};

/// True when `serde_json::to_value(typed)` would be equal to `expected`.
pub fn serializes_to<T: Serialize + ?Sized>(typed: &T, expected: &Value) -> bool {
    typed.serialize(Matcher(expected)).is_ok()
}

/// The walk stops at the first difference: the error is the answer, not a failure.
#[derive(Debug)]
pub struct Differs;

impl std::fmt::Display for Differs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the serialized form differs")
    }
}

impl std::error::Error for Differs {}

impl ser::Error for Differs {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Differs
    }
}

type Outcome = Result<(), Differs>;

fn same(equal: bool) -> Outcome {
    if equal { Ok(()) } else { Err(Differs) }
}

fn number(expected: &Value, n: Number) -> Outcome {
    same(matches!(expected, Value::Number(e) if *e == n))
}

/// The one-entry object serde_json writes an enum's data variant as: `{variant: data}`.
fn variant<'a>(expected: &'a Value, name: &str) -> Result<&'a Value, Differs> {
    match expected {
        Value::Object(map) if map.len() == 1 => map.get(name).ok_or(Differs),
        _ => Err(Differs),
    }
}

struct Matcher<'a>(&'a Value);

impl<'a> ser::Serializer for Matcher<'a> {
    type Ok = ();
    type Error = Differs;
    type SerializeSeq = Items<'a>;
    type SerializeTuple = Items<'a>;
    type SerializeTupleStruct = Items<'a>;
    type SerializeTupleVariant = Items<'a>;
    type SerializeMap = Fields<'a>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Fields<'a>;

    fn serialize_bool(self, v: bool) -> Outcome {
        same(self.0.as_bool() == Some(v))
    }
    fn serialize_i8(self, v: i8) -> Outcome {
        number(self.0, v.into())
    }
    fn serialize_i16(self, v: i16) -> Outcome {
        number(self.0, v.into())
    }
    fn serialize_i32(self, v: i32) -> Outcome {
        number(self.0, v.into())
    }
    fn serialize_i64(self, v: i64) -> Outcome {
        number(self.0, v.into())
    }
    fn serialize_u8(self, v: u8) -> Outcome {
        number(self.0, v.into())
    }
    fn serialize_u16(self, v: u16) -> Outcome {
        number(self.0, v.into())
    }
    fn serialize_u32(self, v: u32) -> Outcome {
        number(self.0, v.into())
    }
    fn serialize_u64(self, v: u64) -> Outcome {
        number(self.0, v.into())
    }
    fn serialize_f32(self, v: f32) -> Outcome {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Outcome {
        // As to_value: a non-finite float is null.
        match Number::from_f64(v) {
            Some(n) => number(self.0, n),
            None => same(self.0.is_null()),
        }
    }
    fn serialize_char(self, v: char) -> Outcome {
        same(self.0.as_str() == Some(v.encode_utf8(&mut [0; 4])))
    }
    fn serialize_str(self, v: &str) -> Outcome {
        same(self.0.as_str() == Some(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Outcome {
        // to_value writes bytes as an array of numbers.
        match self.0 {
            Value::Array(items) if items.len() == v.len() => {
                items.iter().zip(v).try_for_each(|(item, byte)| number(item, (*byte).into()))
            }
            _ => Err(Differs),
        }
    }
    fn serialize_none(self) -> Outcome {
        same(self.0.is_null())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Outcome {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Outcome {
        same(self.0.is_null())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Outcome {
        same(self.0.is_null())
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Outcome {
        same(self.0.as_str() == Some(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Outcome {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant_name: &'static str,
        value: &T,
    ) -> Outcome {
        value.serialize(Matcher(variant(self.0, variant_name)?))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Items<'a>, Differs> {
        Items::of(self.0)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Items<'a>, Differs> {
        Items::of(self.0)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Items<'a>, Differs> {
        Items::of(self.0)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant_name: &'static str,
        _len: usize,
    ) -> Result<Items<'a>, Differs> {
        Items::of(variant(self.0, variant_name)?)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Fields<'a>, Differs> {
        Fields::of(self.0)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Fields<'a>, Differs> {
        Fields::of(self.0)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant_name: &'static str,
        _len: usize,
    ) -> Result<Fields<'a>, Differs> {
        Fields::of(variant(self.0, variant_name)?)
    }
}

/// An array's elements, matched in order; none may be left over.
struct Items<'a> {
    expected: std::slice::Iter<'a, Value>,
}

impl<'a> Items<'a> {
    fn of(expected: &'a Value) -> Result<Items<'a>, Differs> {
        match expected {
            Value::Array(items) => Ok(Items { expected: items.iter() }),
            _ => Err(Differs),
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
        value.serialize(Matcher(self.expected.next().ok_or(Differs)?))
    }

    fn finish(self) -> Outcome {
        same(self.expected.len() == 0)
    }
}

/// The four sequence traits differ only in their method's name.
macro_rules! items_match_elements {
    ($($trait:ident::$method:ident),*) => {$(
        impl ser::$trait for Items<'_> {
            type Ok = ();
            type Error = Differs;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
                self.element(value)
            }
            fn end(self) -> Outcome {
                self.finish()
            }
        }
    )*};
}

items_match_elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// An object's fields, each looked up by name; every field of the expected object must be
/// written once. Map keys are captured into one reused buffer. Fields are counted, not
/// remembered: a Serialize impl that wrote one field twice would pass for two fields. None of
/// the k8s-openapi types does, and a map cannot.
struct Fields<'a> {
    expected: &'a Map<String, Value>,
    matched: usize,
    key: String,
}

impl<'a> Fields<'a> {
    fn of(expected: &'a Value) -> Result<Fields<'a>, Differs> {
        match expected {
            Value::Object(map) => Ok(Fields { expected: map, matched: 0, key: String::new() }),
            _ => Err(Differs),
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Outcome {
        value.serialize(Matcher(self.expected.get(key).ok_or(Differs)?))?;
        self.matched += 1;
        Ok(())
    }

    fn finish(self) -> Outcome {
        same(self.matched == self.expected.len())
    }
}

impl ser::SerializeMap for Fields<'_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Outcome {
        self.key.clear();
        key.serialize(KeyCapture(&mut self.key))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Outcome {
        let key = std::mem::take(&mut self.key);
        let matched = self.field(&key, value);
        self.key = key;
        matched
    }
    fn end(self) -> Outcome {
        self.finish()
    }
}

/// A struct and a struct variant's fields are matched alike.
macro_rules! fields_match_struct {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Fields<'_> {
            type Ok = ();
            type Error = Differs;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Outcome {
                self.field(key, value)
            }
            fn end(self) -> Outcome {
                self.finish()
            }
        }
    )*};
}

fields_match_struct!(SerializeStruct, SerializeStructVariant);

/// Takes a map key that is a string; any other key counts as a difference.
struct KeyCapture<'a>(&'a mut String);

impl ser::Serializer for KeyCapture<'_> {
    type Ok = ();
    type Error = Differs;
    type SerializeSeq = ser::Impossible<(), Differs>;
    type SerializeTuple = ser::Impossible<(), Differs>;
    type SerializeTupleStruct = ser::Impossible<(), Differs>;
    type SerializeTupleVariant = ser::Impossible<(), Differs>;
    type SerializeMap = ser::Impossible<(), Differs>;
    type SerializeStruct = ser::Impossible<(), Differs>;
    type SerializeStructVariant = ser::Impossible<(), Differs>;

    fn serialize_str(self, v: &str) -> Outcome {
        self.0.push_str(v);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Outcome {
        value.serialize(self)
    }
    fn serialize_bool(self, _v: bool) -> Outcome {
        Err(Differs)
    }
    fn serialize_i8(self, _v: i8) -> Outcome {
        Err(Differs)
    }
    fn serialize_i16(self, _v: i16) -> Outcome {
        Err(Differs)
    }
    fn serialize_i32(self, _v: i32) -> Outcome {
        Err(Differs)
    }
    fn serialize_i64(self, _v: i64) -> Outcome {
        Err(Differs)
    }
    fn serialize_u8(self, _v: u8) -> Outcome {
        Err(Differs)
    }
    fn serialize_u16(self, _v: u16) -> Outcome {
        Err(Differs)
    }
    fn serialize_u32(self, _v: u32) -> Outcome {
        Err(Differs)
    }
    fn serialize_u64(self, _v: u64) -> Outcome {
        Err(Differs)
    }
    fn serialize_f32(self, _v: f32) -> Outcome {
        Err(Differs)
    }
    fn serialize_f64(self, _v: f64) -> Outcome {
        Err(Differs)
    }
    fn serialize_char(self, _v: char) -> Outcome {
        Err(Differs)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Outcome {
        Err(Differs)
    }
    fn serialize_none(self) -> Outcome {
        Err(Differs)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Outcome {
        Err(Differs)
    }
    fn serialize_unit(self) -> Outcome {
        Err(Differs)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Outcome {
        Err(Differs)
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, _variant: &'static str) -> Outcome {
        Err(Differs)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Outcome {
        Err(Differs)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Differs> {
        Err(Differs)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Differs> {
        Err(Differs)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeTupleStruct, Differs> {
        Err(Differs)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Differs> {
        Err(Differs)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Differs> {
        Err(Differs)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct, Differs> {
        Err(Differs)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Differs> {
        Err(Differs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
    use serde::de::DeserializeOwned;
    use serde_json::json;

    /// The property that matters: the walk agrees with building the value and comparing.
    fn agrees<K: Serialize + DeserializeOwned>(body: Value) -> bool {
        let typed: K = serde_json::from_value(body.clone()).expect("decodes");
        let built = serde_json::to_value(&typed).expect("serializes");
        let walked = serializes_to(&typed, &body);
        assert_eq!(walked, built == body, "walk and to_value disagree on {body}");
        walked
    }

    #[test]
    fn canonical_bodies_match() {
        assert!(agrees::<Pod>(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "d", "labels": {"app": "web"}, "generation": 1,
                "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"containers": [{"name": "c", "image": "x:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m"}},
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 5}}],
                "terminationGracePeriodSeconds": 30},
            "status": {"phase": "Pending"}
        })));
        assert!(agrees::<ConfigMap>(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}})
        ));
        assert!(agrees::<Secret>(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}, "data": {"k": "dmFsdWU="}})
        ));
        assert!(agrees::<Service>(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 8081}]}})));
    }

    #[test]
    fn bodies_the_type_would_change_do_not() {
        // A field the kind does not have.
        assert!(!agrees::<Pod>(json!({"metadata": {"name": "a"}, "spec": {"containers": [], "bogus": 1}})));
        // A null, which the type drops.
        assert!(!agrees::<Pod>(json!({"metadata": {"name": "a", "labels": null}})));
        // A timestamp not in Kubernetes' form.
        assert!(!agrees::<Pod>(json!({"metadata": {"name": "a", "creationTimestamp": "2026-01-02T03:04:05+00:00"}})));
    }

    #[test]
    fn arrays_and_objects_must_match_in_length() {
        let typed = json!({"a": [1, 2], "b": {"c": true}});
        assert!(serializes_to(&typed, &json!({"a": [1, 2], "b": {"c": true}})));
        assert!(!serializes_to(&typed, &json!({"a": [1, 2, 3], "b": {"c": true}})));
        assert!(!serializes_to(&typed, &json!({"a": [1], "b": {"c": true}})));
        assert!(!serializes_to(&typed, &json!({"a": [1, 2], "b": {"c": true, "d": 1}})));
        assert!(!serializes_to(&typed, &json!({"a": [1, 2]})));
        assert!(!serializes_to(&typed, &json!([1])));
        assert!(!serializes_to(&json!(-1), &json!(-1.0)));
        assert!(serializes_to(&json!(-1), &json!(-1)));
    }
}
