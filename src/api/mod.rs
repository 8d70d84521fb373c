//! The gRPC API of lbd: one module per service, request validation helpers, and the one mapping
//! from errors to gRPC statuses. The desired state itself is owned by
//! [`crate::controller::Controller`].

pub(crate) mod apply;
pub mod authority;
pub(crate) mod backends;
pub mod check;
pub(crate) mod explain;
pub(crate) mod firewall;
pub mod listen;
pub(crate) mod ratelimit;
pub(crate) mod stats;
pub(crate) mod trace;
pub(crate) mod vips;

use tonic::{Code, Status};

use crate::controller::{ChangeError, ControlError};
use crate::reconcile::ReconcileError;
use xdplb_model::state::StateError;
use xdplb_proto::convert::FieldError;

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("data plane: {0}")]
    Reconcile(#[from] ReconcileError),
    #[error("saving the state: {0}")]
    Persist(#[from] crate::persist::PersistError),
    /// A group commit's shared error, or a commit that stopped before answering.
    #[error(transparent)]
    Control(ControlError),
}

impl From<FieldError> for ApiError {
    fn from(FieldError { field, message }: FieldError) -> Self {
        ApiError::InvalidArgument { field, message }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::State(e) => state_code(e),
            ApiError::Reconcile(e) => reconcile_code(e),
            ApiError::Persist(_) => Code::Unavailable,
            ApiError::Control(e) => control_code(e),
        };
        Status::new(code, e.to_string())
    }
}

fn state_code(e: &StateError) -> Code {
    match e {
        StateError::InvalidArgument { .. } => Code::InvalidArgument,
        StateError::NotFound(_) => Code::NotFound,
        StateError::AlreadyExists(_) => Code::AlreadyExists,
        StateError::Unsupported(_) => Code::Unimplemented,
        StateError::FailedPrecondition(_) => Code::FailedPrecondition,
    }
}

fn reconcile_code(e: &ReconcileError) -> Code {
    match e {
        ReconcileError::NoFreeId(_) => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// The code of a controller error, also when it is shared by a group of changes.
fn control_code(e: &ControlError) -> Code {
    match e {
        ControlError::State(e) => state_code(e),
        ControlError::Reconcile(e) => reconcile_code(e),
        ControlError::Persist(_) => Code::Unavailable,
        ControlError::Group(e) => control_code(e),
        ControlError::Abandoned(_) => Code::Aborted,
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::State(e) => ApiError::State(e),
            ControlError::Reconcile(e) => ApiError::Reconcile(e),
            ControlError::Persist(e) => ApiError::Persist(e),
            e => ApiError::Control(e),
        }
    }
}

impl<E: Into<ApiError>> From<ChangeError<E>> for ApiError {
    fn from(e: ChangeError<E>) -> Self {
        match e {
            ChangeError::Refused(e) => e.into(),
            ChangeError::Control(e) => e.into(),
        }
    }
}

impl<E: Into<ApiError>> From<ChangeError<E>> for Status {
    fn from(e: ChangeError<E>) -> Self {
        ApiError::from(e).into()
    }
}

/// An `InvalidArgument` naming `field`.
pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument {
        field: field.into(),
        message: message.into(),
    }
}
