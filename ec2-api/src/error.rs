//! EC2 errors: the code tools branch on, a message, and the HTTP status.

use axum::http::StatusCode;
use corral_store::StoreError;

/// One EC2 error, rendered as
/// `<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

pub type Result<T, E = Ec2Error> = std::result::Result<T, E>;

impl Ec2Error {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Ec2Error {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// A client error (400) with `code`.
    pub fn client(code: impl Into<String>, message: impl Into<String>) -> Self {
        Ec2Error::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn auth_failure(message: impl Into<String>) -> Self {
        Ec2Error::new(StatusCode::UNAUTHORIZED, "AuthFailure", message)
    }

    pub fn unauthorized_operation(message: impl Into<String>) -> Self {
        Ec2Error::new(StatusCode::FORBIDDEN, "UnauthorizedOperation", message)
    }

    pub fn dry_run() -> Self {
        Ec2Error::new(
            StatusCode::PRECONDITION_FAILED,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
    }

    pub fn invalid_value(message: impl Into<String>) -> Self {
        Ec2Error::client("InvalidParameterValue", message)
    }

    pub fn invalid_combination(message: impl Into<String>) -> Self {
        Ec2Error::client("InvalidParameterCombination", message)
    }

    pub fn missing(param: &str) -> Self {
        Ec2Error::client(
            "MissingParameter",
            format!("The request must contain the parameter {param}"),
        )
    }

    pub fn invalid_action(action: &str) -> Self {
        Ec2Error::client(
            "InvalidAction",
            format!("The action {action} is not valid for this web service."),
        )
    }

    /// `<Kind>.NotFound` for ids that do not exist (in the caller's project).
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Ec2Error::client(code, message)
    }

    pub fn incorrect_state(message: impl Into<String>) -> Self {
        Ec2Error::client("IncorrectInstanceState", message)
    }

    pub fn idempotent_mismatch() -> Self {
        Ec2Error::client(
            "IdempotentParameterMismatch",
            "The client token you have provided is associated with a resource that was created with different parameters.",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Ec2Error::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Ec2Error::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message)
    }
}

impl From<StoreError> for Ec2Error {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Unavailable(_) | StoreError::NoSpace(_) => {
                Ec2Error::unavailable("The service is unavailable. Please try again shortly.")
            }
            StoreError::Conflict { .. } => Ec2Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "RequestLimitExceeded",
                "The resource was modified concurrently; retry the request.",
            ),
            StoreError::TooLarge { limit, .. } => Ec2Error::new(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValue",
                format!(
                    "The request makes an object larger than the {limit} bytes the store keeps."
                ),
            ),
            StoreError::AlreadyExists { .. } => Ec2Error::new(
                StatusCode::CONFLICT,
                "IncorrectState",
                "The resource was created concurrently; retry the request.",
            ),
            _ => {
                tracing::error!(error = %e, "store error in the EC2 API");
                Ec2Error::internal("An internal error has occurred.")
            }
        }
    }
}
