//! The scheduler's error type and its one conversion to `tonic::Status`.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
    /// A status passed through from an agent.
    #[error("{}", .0.message())]
    Agent(Status),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Internal(_) => Code::Internal,
            Error::Agent(s) => s.code(),
            Error::Auth(AuthError::Missing | AuthError::Invalid) => Code::Unauthenticated,
            Error::Auth(AuthError::NotAdmin) => Code::PermissionDenied,
            Error::Auth(AuthError::Store(_)) => Code::Internal,
            Error::Store(s) => match s {
                StoreError::JobNotFound(_) => Code::NotFound,
                StoreError::DuplicateName(..) => Code::AlreadyExists,
                StoreError::State(_) => Code::FailedPrecondition,
                StoreError::Stale(_) => Code::Aborted,
                StoreError::Invalid(_) => Code::InvalidArgument,
                StoreError::Refused(_) => Code::FailedPrecondition,
                StoreError::Sled(_) | StoreError::Corrupt(_) => Code::Internal,
            },
        };
        Status::new(code, e.to_string())
    }
}
