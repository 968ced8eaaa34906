//! Errors over HTTP: Kubernetes' `metav1.Status`, with the reason, code
//! and wording kubectl and the client libraries read (`Error from server
//! (NotFound): pods "x" not found`).

use serde_json::{Value, json};
use tonic::Code;

use crate::error::ApiError;

/// A failed request, as a Status.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The HTTP status code (also the Status' `code`).
    pub code: u16,
    /// Kubernetes' reason: `NotFound`, `Invalid`, ...
    pub reason: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// `details`: name, kind, causes.
    pub details: Option<Value>,
}

impl Failure {
    /// A failure with no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for a URL nothing is served at.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 405: the resource does not take this verb.
    pub fn not_allowed(action: &str, resource: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("{action} is not supported on resources of kind {resource:?}"),
        )
    }

    /// 415: a body of a type the endpoint does not read.
    pub fn unsupported_media(content_type: &str, supported: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}; got {content_type:?}",
                supported.join(", ")
            ),
        )
    }

    /// The Status object.
    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    /// The API's error about an object of kind `kind`.
    pub fn from_api(e: &ApiError, kind: &str) -> Self {
        match e {
            ApiError::NotFound { kind, name } => {
                let name = bare(name);
                Self {
                    code: 404,
                    reason: "NotFound",
                    message: format!("{kind} {name:?} not found"),
                    details: Some(json!({"name": name, "kind": kind})),
                }
            }
            ApiError::AlreadyExists { kind, name } => {
                let name = bare(name);
                Self {
                    code: 409,
                    reason: "AlreadyExists",
                    message: format!("{kind} {name:?} already exists"),
                    details: Some(json!({"name": name, "kind": kind})),
                }
            }
            ApiError::Conflict { kind, name, .. } => {
                let name = bare(name);
                Self {
                    code: 409,
                    reason: "Conflict",
                    message: format!(
                        "Operation cannot be fulfilled on {kind} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
                    ),
                    details: Some(json!({"name": name, "kind": kind})),
                }
            }
            ApiError::Precondition(message) => Self::new(409, "Conflict", message.clone()),
            ApiError::Invalid(message) => invalid(message, kind),
            ApiError::Expired(message) => Self::new(410, "Expired", message.clone()),
            ApiError::Forbidden(message) | ApiError::Denied(message) => {
                Self::new(403, "Forbidden", message.clone())
            }
            ApiError::TooManyRequests { message, cause } => Self {
                code: 429,
                reason: "TooManyRequests",
                message: message.clone(),
                details: Some(
                    json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}),
                ),
            },
            ApiError::Unsupported(message) => Self::bad_request(message.clone()),
            ApiError::Unavailable(message) => Self::new(503, "ServiceUnavailable", message.clone()),
            ApiError::Timeout(message) => Self::new(504, "Timeout", message.clone()),
            ApiError::Internal(_) => Self::new(500, "InternalError", e.to_string()),
        }
    }

    /// A gRPC status from a layer shared with the gRPC door.
    pub fn from_grpc(status: &tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Unauthenticated => Self::new(401, "Unauthorized", message),
            Code::PermissionDenied => Self::new(403, "Forbidden", message),
            Code::NotFound => Self::new(404, "NotFound", message),
            Code::AlreadyExists => Self::new(409, "AlreadyExists", message),
            Code::Aborted => Self::new(409, "Conflict", message),
            Code::InvalidArgument => Self::bad_request(message),
            Code::OutOfRange => Self::new(410, "Expired", message),
            Code::FailedPrecondition => Self::new(403, "Forbidden", message),
            Code::ResourceExhausted => Self::new(429, "TooManyRequests", message),
            Code::Unavailable => Self::new(503, "ServiceUnavailable", message),
            Code::DeadlineExceeded => Self::new(504, "Timeout", message),
            _ => Self::new(500, "InternalError", message),
        }
    }
}

/// `namespace/name` → `name`: Kubernetes' messages name the object alone.
fn bare(name: &str) -> &str {
    name.rsplit_once('/').map_or(name, |(_, n)| n)
}

/// An object that does not validate: 422 with one cause per field, read
/// back from the registry's `Kind "name" is invalid: path: message; ...`.
/// Anything else the registry calls invalid is about the request: 400.
fn invalid(message: &str, kind: &str) -> Failure {
    let Some((head, fields)) = message.split_once(" is invalid: ") else {
        return Failure::bad_request(message);
    };
    let name = head
        .split_once(' ')
        .map_or("", |(_, n)| n.trim_matches('"'))
        .to_string();
    let causes: Vec<Value> = fields
        .split("; ")
        .map(|cause| {
            let (field, text) = cause.split_once(": ").unwrap_or(("", cause));
            json!({"reason": cause_reason(text), "message": text, "field": field})
        })
        .collect();
    Failure {
        code: 422,
        reason: "Invalid",
        message: message.to_string(),
        details: Some(json!({"name": name, "kind": kind, "causes": causes})),
    }
}

/// Kubernetes' cause type for a field error's message.
fn cause_reason(message: &str) -> &'static str {
    const REASONS: &[(&str, &str)] = &[
        ("Required value", "FieldValueRequired"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Forbidden", "FieldValueForbidden"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Not found", "FieldValueNotFound"),
    ];
    REASONS
        .iter()
        .find(|(prefix, _)| message.starts_with(prefix))
        .map_or("FieldValueInvalid", |(_, reason)| reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_kubernetes() {
        let e = ApiError::NotFound {
            kind: "pods".into(),
            name: "default/x".into(),
        };
        let status = Failure::from_api(&e, "Pod").to_json();
        assert_eq!(status["code"], 404);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["message"], "pods \"x\" not found");
        assert_eq!(status["details"]["name"], "x");
    }

    #[test]
    fn invalid_objects_get_one_cause_per_field() {
        let e = ApiError::Invalid(
            "Pod \"web\" is invalid: spec.containers[0].image: Required value; metadata.name: Invalid value: \"A\": must be lower case".into(),
        );
        let status = Failure::from_api(&e, "Pod").to_json();
        assert_eq!(status["code"], 422);
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["details"]["kind"], "Pod");
        assert_eq!(status["details"]["name"], "web");
        let causes = status["details"]["causes"].as_array().unwrap();
        assert_eq!(causes.len(), 2);
        assert_eq!(causes[0]["field"], "spec.containers[0].image");
        assert_eq!(causes[0]["reason"], "FieldValueRequired");
        assert_eq!(causes[1]["reason"], "FieldValueInvalid");
        // A malformed request (not an object) is a bad request.
        let e = ApiError::Invalid("resourceVersion: Invalid value: \"x\"".into());
        assert_eq!(Failure::from_api(&e, "Pod").code, 400);
    }

    #[test]
    fn grpc_codes_from_shared_layers_map_to_http() {
        let f = Failure::from_grpc(&tonic::Status::unauthenticated("who"));
        assert_eq!((f.code, f.reason), (401, "Unauthorized"));
        let f = Failure::from_grpc(&tonic::Status::permission_denied("no"));
        assert_eq!((f.code, f.reason), (403, "Forbidden"));
    }
}
