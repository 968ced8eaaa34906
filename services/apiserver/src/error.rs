//! API errors and the gRPC status each one becomes.

use tonic::{Code, Status};

/// What the API refuses or fails at. Every variant maps to one gRPC code
/// (see [`From<ApiError> for Status`](#impl-From<ApiError>-for-Status)).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request or object is malformed: INVALID_ARGUMENT.
    #[error("{0}")]
    Invalid(String),
    /// The object (or its namespace) does not exist: NOT_FOUND.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind name, lower-case plural as Kubernetes says it (`pods`).
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
    },
    /// Create of an existing object: ALREADY_EXISTS.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Kind name (`pods`).
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
    },
    /// A write based on an old resourceVersion: ABORTED.
    #[error(
        "the object has been modified: {kind} {name:?} is at resourceVersion {current}, the request was based on {requested}; read it again and retry"
    )]
    Conflict {
        /// Kind name (`pods`).
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
        /// The version the client sent.
        requested: String,
        /// The object's current version.
        current: i64,
    },
    /// A precondition (uid) did not hold: ABORTED.
    #[error("{0}")]
    Precondition(String),
    /// The requested resourceVersion or continue token is no longer kept:
    /// OUT_OF_RANGE. The client must list again.
    #[error("{0}")]
    Expired(String),
    /// The state forbids the operation (terminating namespace, protected
    /// object): FAILED_PRECONDITION.
    #[error("{0}")]
    Forbidden(String),
    /// An admission policy refuses the object (Pod Security):
    /// PERMISSION_DENIED, as Kubernetes' 403.
    #[error("{0}")]
    Denied(String),
    /// A budget forbids the operation now, though it may allow it later
    /// (an eviction a disruption budget refuses): RESOURCE_EXHAUSTED, as
    /// Kubernetes' 429 TooManyRequests.
    #[error("{message} ({cause})")]
    TooManyRequests {
        /// What was refused, in Kubernetes' words.
        message: String,
        /// Why: Kubernetes' `DisruptionBudget` cause.
        cause: String,
    },
    /// A feature the server does not offer: UNIMPLEMENTED.
    #[error("{0}")]
    Unsupported(String),
    /// The server is shutting down or a dependency is unreachable:
    /// UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
    /// The request, or a call it made, ran out of time:
    /// DEADLINE_EXCEEDED (HTTP 504 Timeout).
    #[error("{0}")]
    Timeout(String),
    /// A bug or a corrupt store: INTERNAL.
    #[error("internal error: {0}")]
    Internal(String),
}

/// API results.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::Conflict { .. } | ApiError::Precondition(_) => Code::Aborted,
            ApiError::Expired(_) => Code::OutOfRange,
            ApiError::Forbidden(_) => Code::FailedPrecondition,
            ApiError::Denied(_) => Code::PermissionDenied,
            ApiError::TooManyRequests { .. } => Code::ResourceExhausted,
            ApiError::Unsupported(_) => Code::Unimplemented,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::Timeout(_) => Code::DeadlineExceeded,
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<skiff_store::Error> for ApiError {
    /// Store errors that reach here unhandled are the store's failures;
    /// the registry maps the expected ones (not found, conflict) itself.
    fn from(e: skiff_store::Error) -> Self {
        use skiff_store::Error as S;
        match e {
            S::Compacted { .. } => ApiError::Expired(format!(
                "{e}: the requested resourceVersion is too old; list again and watch from the list's resourceVersion"
            )),
            S::FutureRevision { .. } => {
                ApiError::Invalid(format!("{e}: resourceVersion is ahead of the server"))
            }
            S::Etcd(_) if e.is_timeout() => ApiError::Timeout(format!(
                "the API server could not reach its store in time ({}s): {e}; is etcd up, and does it have a leader?",
                skiff_store::etcd::REQUEST_TIMEOUT.as_secs()
            )),
            S::Closed | S::Etcd(_) => {
                ApiError::Unavailable(format!("the API server could not reach its store: {e}"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}
