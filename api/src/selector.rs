//! Label selectors (`app=web,tier in (a,b),!canary`) and field selectors
//! (`spec.nodeName=n1,status.phase!=Running`), parsed from query strings or from a
//! `LabelSelector` object, and matched against objects.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// All requirements must hold; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn check_key(key: &str) -> Result<String, String> {
    crate::object::qualified_name(key).map_err(|e| format!("invalid label key {key:?}: {e}"))?;
    Ok(key.to_string())
}

fn check_value(value: &str) -> Result<String, String> {
    crate::object::label_value(value).map_err(|e| format!("invalid label value: {e}"))?;
    Ok(value.to_string())
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized set of values, found {rest:?}"))?;
    inner.split(',').map(|v| check_value(v.trim())).collect()
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        for part in split_top_level(input) {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("unable to parse requirement: empty term in {input:?}"));
            }
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(check_key(key.trim())?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(check_key(key.trim())?, check_value(value.trim())?)
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(check_key(key.trim())?, check_value(value.trim())?)
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(check_key(key.trim())?, check_value(value.trim())?)
            } else if let Some((key, value)) = part.split_once('>') {
                let n = value.trim().parse().map_err(|_| format!("{value:?} is not an integer"))?;
                Requirement::GreaterThan(check_key(key.trim())?, n)
            } else if let Some((key, value)) = part.split_once('<') {
                let n = value.trim().parse().map_err(|_| format!("{value:?} is not an integer"))?;
                Requirement::LessThan(check_key(key.trim())?, n)
            } else if let Some(index) = part.find(" notin ").or_else(|| part.find(" notin(")) {
                Requirement::NotIn(check_key(part[..index].trim())?, parse_set(&part[index + 6..])?)
            } else if let Some(index) = part.find(" in ").or_else(|| part.find(" in(")) {
                Requirement::In(check_key(part[..index].trim())?, parse_set(&part[index + 3..])?)
            } else {
                Requirement::Exists(check_key(part)?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// From a `metav1.LabelSelector` (`matchLabels` and `matchExpressions`).
    pub fn from_object(selector: &Value) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                requirements.push(Requirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
        }
        if let Some(expressions) = selector.get("matchExpressions").and_then(Value::as_array) {
            for e in expressions {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                requirements.push(match e.get("operator").and_then(Value::as_str) {
                    Some("In") => Requirement::In(key, values),
                    Some("NotIn") => Requirement::NotIn(key, values),
                    Some("Exists") => Requirement::Exists(key),
                    Some("DoesNotExist") => Requirement::DoesNotExist(key),
                    other => return Err(format!("{other:?} is not a valid label selector operator")),
                });
            }
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
            Requirement::GreaterThan(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
            Requirement::LessThan(k, n) => get(k).and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
        })
    }

    /// The `a=b,c in (d)` form, as `scale.status.selector` carries it.
    pub fn to_query(&self) -> String {
        self.requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
                Requirement::GreaterThan(k, n) => format!("{k}>{n}"),
                Requirement::LessThan(k, n) => format!("{k}<{n}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A field selector: equality and inequality on a fixed set of fields per kind.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

/// The fields each kind can be selected by, beyond `metadata.name` and `metadata.namespace`,
/// with the JSON pointer each reads.
fn kind_fields(kind: &str) -> &'static [(&'static str, &'static str)] {
    match kind {
        "Pod" => &[
            ("spec.nodeName", "/spec/nodeName"),
            ("spec.restartPolicy", "/spec/restartPolicy"),
            ("spec.schedulerName", "/spec/schedulerName"),
            ("spec.serviceAccountName", "/spec/serviceAccountName"),
            ("spec.hostNetwork", "/spec/hostNetwork"),
            ("status.phase", "/status/phase"),
            ("status.podIP", "/status/podIP"),
            ("status.nominatedNodeName", "/status/nominatedNodeName"),
        ],
        "Event" => &[
            ("involvedObject.kind", "/involvedObject/kind"),
            ("involvedObject.namespace", "/involvedObject/namespace"),
            ("involvedObject.name", "/involvedObject/name"),
            ("involvedObject.uid", "/involvedObject/uid"),
            ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
            ("involvedObject.resourceVersion", "/involvedObject/resourceVersion"),
            ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
            ("reason", "/reason"),
            ("reportingComponent", "/reportingComponent"),
            ("source", "/source/component"),
            ("type", "/type"),
            ("regarding.kind", "/regarding/kind"),
            ("regarding.name", "/regarding/name"),
            ("regarding.namespace", "/regarding/namespace"),
        ],
        "Secret" => &[("type", "/type")],
        "Namespace" => &[("status.phase", "/status/phase")],
        "Node" => &[("spec.unschedulable", "/spec/unschedulable")],
        "ReplicaSet" | "ReplicationController" => &[("status.replicas", "/status/replicas")],
        "Job" => &[("status.successful", "/status/succeeded")],
        "CertificateSigningRequest" => &[("spec.signerName", "/spec/signerName")],
        _ => &[],
    }
}

fn field_pointer(kind: &str, field: &str) -> Option<&'static str> {
    match field {
        "metadata.name" => Some("/metadata/name"),
        "metadata.namespace" => Some("/metadata/namespace"),
        _ => kind_fields(kind).iter().find(|(f, _)| *f == field).map(|(_, p)| *p),
    }
}

impl FieldSelector {
    pub fn parse(input: &str, kind: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{input}'; can't understand '{part}'"));
            };
            let field = field.trim();
            if field_pointer(kind, field).is_none() {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether every term reads `metadata.name` or `metadata.namespace` only.
    pub fn only_metadata(&self) -> bool {
        self.terms.iter().all(|(f, _, _)| f == "metadata.name" || f == "metadata.namespace")
    }

    /// A `metadata.name=x` term, which lets a list read one key instead of a range.
    pub fn exact_name(&self) -> Option<&str> {
        self.terms.iter().find(|(f, eq, _)| f == "metadata.name" && *eq).map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, kind: &str, object: &Value) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let actual = field_pointer(kind, field).and_then(|p| object.pointer(p));
            let actual = match actual {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let labels = json!({"app": "web", "tier": "front", "n": "5"});
        let labels = labels.as_object();
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier=back", false),
            ("tier in (front,back)", true),
            ("tier notin (front)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("n>4", true),
            ("n<4", false),
            ("app in (web), tier", true),
        ];
        for (selector, expected) in cases {
            let parsed = LabelSelector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(parsed.matches(labels), expected, "{selector}");
        }
        assert!(LabelSelector::parse("a=b c").is_err());
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse(",").is_err());
    }

    #[test]
    fn label_selector_objects() {
        let s = LabelSelector::from_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
        }))
        .unwrap();
        assert!(s.matches(json!({"app": "web", "tier": "a"}).as_object()));
        assert!(!s.matches(json!({"app": "web"}).as_object()));
        assert_eq!(s.to_query(), "app=web,tier in (a,b)");
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Pending", "Pod").unwrap();
        assert!(s.matches("Pod", &pod));
        let s = FieldSelector::parse("spec.nodeName=", "Pod").unwrap();
        assert!(!s.matches("Pod", &pod));
        assert!(FieldSelector::parse("spec.bogus=1", "Pod").is_err());
        assert!(FieldSelector::parse("spec.nodeName=n1", "ConfigMap").is_err());
        let s = FieldSelector::parse("metadata.name=p", "ConfigMap").unwrap();
        assert_eq!(s.exact_name(), Some("p"));
    }
}
