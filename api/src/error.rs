//! Every failure of a request becomes a Kubernetes `Status` here, in one place, with the code
//! and reason clients switch on (kubectl prints `message`; client libraries read `reason`).

use serde_json::{Value, json};

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// One field that failed validation, as `Status.details.causes[]` carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, `FieldValueDuplicate`…
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl FieldCause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> FieldCause {
        FieldCause { reason: "FieldValueInvalid", field: field.into(), message: message.into() }
    }

    pub fn required(field: impl Into<String>) -> FieldCause {
        FieldCause { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String },
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    #[error("{message}")]
    Conflict { resource: String, name: String, message: String },
    /// 422 with one cause per offending field.
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join(", "))]
    Invalid { kind: String, group: String, name: String, causes: Vec<FieldCause> },
    #[error("{message}")]
    Forbidden { resource: String, name: String, message: String },
    #[error("method {method} is not supported for {what}")]
    MethodNotAllowed { method: String, what: String },
    #[error("the resourceVersion for the provided {what} is too old (compacted at {compacted})")]
    Gone { what: String, compacted: i64 },
    #[error("the request entity is larger than the {limit} bytes allowed")]
    TooLarge { limit: usize },
    #[error("the body of the request was in an unknown format - accepted media types include: {accepted}")]
    UnsupportedMediaType { accepted: String },
    #[error("only the following media types are accepted: application/json, application/yaml")]
    NotAcceptable,
    /// 429: refused for now, to be retried (an eviction its disruption budget does not allow
    /// yet). `causes` become `Status.details.causes`; a `retry_after_seconds` above 0 is
    /// also sent as the `Retry-After` header, as kube-apiserver does.
    #[error("{message}")]
    TooManyRequests { message: String, causes: Vec<FieldCause>, retry_after_seconds: u32 },
    #[error("{message}")]
    Timeout { message: String },
    #[error("{message}")]
    Unavailable { message: String },
    #[error("{message}")]
    Internal { message: String },
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::Internal { message: message.into() }
    }

    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<FieldCause>) -> ApiError {
        ApiError::Invalid { kind: kind.into(), group: group.into(), name: name.into(), causes }
    }

    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest { .. } => 400,
            ApiError::Forbidden { .. } => 403,
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::NotAcceptable => 406,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Gone { .. } => 410,
            ApiError::TooLarge { .. } => 413,
            ApiError::UnsupportedMediaType { .. } => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::Internal { .. } => 500,
            ApiError::Unavailable { .. } => 503,
            ApiError::Timeout { .. } => 504,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "BadRequest",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ApiError::Gone { .. } => "Expired",
            ApiError::TooLarge { .. } => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::NotAcceptable => "NotAcceptable",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::Timeout { .. } => "Timeout",
            ApiError::Unavailable { .. } => "ServiceUnavailable",
            ApiError::Internal { .. } => "InternalError",
        }
    }

    /// Seconds the client is asked to wait before retrying, if any.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::TooManyRequests { retry_after_seconds, .. } if *retry_after_seconds > 0 => {
                Some(*retry_after_seconds)
            }
            _ => None,
        }
    }

    /// The `Status` object sent as the body (or inside a watch ERROR event).
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name, .. }
            | ApiError::Forbidden { resource, name, .. } => Some(json!({"name": name, "kind": resource})),
            ApiError::Invalid { kind, group, name, causes } => Some(json!({
                "name": name,
                "group": group,
                "kind": kind,
                "causes": causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect::<Vec<_>>(),
            })),
            ApiError::TooManyRequests { causes, retry_after_seconds, .. } => {
                // A cause names a field only when there is one (StatusCause's `field` is omitempty).
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|c| {
                        let mut cause = json!({"reason": c.reason, "message": c.message});
                        if !c.field.is_empty() {
                            cause["field"] = json!(c.field);
                        }
                        cause
                    })
                    .collect();
                let mut details = json!({"causes": causes});
                if *retry_after_seconds > 0 {
                    details["retryAfterSeconds"] = json!(retry_after_seconds);
                }
                Some(details)
            }
            _ => None,
        };
        if let Some(mut details) = details {
            if let Some(map) = details.as_object_mut() {
                map.retain(|_, v| v.as_str() != Some(""));
            }
            status["details"] = details;
        }
        status
    }
}

impl From<keel_store::StoreError> for ApiError {
    fn from(error: keel_store::StoreError) -> ApiError {
        use keel_store::StoreError as S;
        match error {
            S::Compacted { compact_revision } => ApiError::Gone { what: "request".into(), compacted: compact_revision },
            S::FutureRevision => {
                ApiError::Timeout { message: "Too large resource version: the store has not reached it yet".into() }
            }
            S::Timeout => ApiError::Timeout { message: "the store did not answer in time".into() },
            // The write may or may not have been applied: like a timeout, the client must look.
            S::LeaderChanged => ApiError::Timeout {
                message:
                    "the store's leader changed while the request was in flight; it may or may not have been applied"
                        .into(),
            },
            S::Unavailable(message) => ApiError::Unavailable { message },
            S::NoLeader | S::Stopped => ApiError::Unavailable { message: format!("the store is unavailable: {error}") },
            S::InvalidArgument(message) => ApiError::BadRequest { message },
            other => ApiError::Internal { message: format!("store: {other}") },
        }
    }
}
