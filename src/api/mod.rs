//! The gRPC API of lbd: one module per service, request validation helpers, and the one mapping
//! from errors to gRPC statuses. The desired state itself is owned by
//! [`crate::controller::Controller`].

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

use tonic::Status;

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
}

impl From<FieldError> for ApiError {
    fn from(FieldError { field, message }: FieldError) -> Self {
        ApiError::InvalidArgument { field, message }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            ApiError::State(StateError::InvalidArgument { .. }) => {
                Status::invalid_argument(e.to_string())
            }
            ApiError::State(StateError::NotFound(m)) => Status::not_found(m),
            ApiError::State(StateError::AlreadyExists(m)) => Status::already_exists(m),
            ApiError::State(StateError::Unsupported(m)) => Status::unimplemented(m),
            ApiError::State(StateError::FailedPrecondition(m)) => Status::failed_precondition(m),
            ApiError::Reconcile(ReconcileError::NoFreeId(_)) => {
                Status::resource_exhausted(e.to_string())
            }
            ApiError::Reconcile(_) => Status::internal(e.to_string()),
            ApiError::Persist(_) => Status::unavailable(e.to_string()),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::State(e) => ApiError::State(e),
            ControlError::Reconcile(e) => ApiError::Reconcile(e),
            ControlError::Persist(e) => ApiError::Persist(e),
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
