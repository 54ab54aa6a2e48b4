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

impl Error {
    /// The gRPC code the error is reported with.
    pub fn code(&self) -> Code {
        match self {
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
            Error::Auth(
                AuthError::Missing
                | AuthError::Invalid
                | AuthError::NoCredential
                | AuthError::BadCredential
                | AuthError::Bootstrap(_),
            ) => Code::Unauthenticated,
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
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), bounded(e.to_string()))
    }
}

/// gRPC carries the message in a header, which clients cap (16 KiB): a long
/// one keeps its start and its end (a traceback's last lines say the most).
const MAX_MESSAGE: usize = 4096;

fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let floor = |mut i: usize| {
        while !message.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    // Room for the marker in between.
    let head = floor(MAX_MESSAGE / 4);
    let tail = message.len() - (MAX_MESSAGE * 3 / 4 - 64);
    let tail = (tail..message.len())
        .find(|&i| message.is_char_boundary(i))
        .unwrap_or(message.len());
    let cut = message.len() - head - (message.len() - tail);
    format!(
        "{} […{cut} bytes cut…] {}",
        &message[..head],
        &message[tail..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_keep_their_start_and_end() {
        let long = format!("start {} end", "é".repeat(10_000));
        let status = Status::from(Error::InvalidArgument(long));
        let m = status.message();
        assert!(m.len() <= MAX_MESSAGE, "{}", m.len());
        assert!(m.starts_with("start ") && m.ends_with(" end"), "{m}");
        assert!(m.contains("bytes cut"));
        let short = Status::from(Error::NotFound("job x not found".into()));
        assert_eq!(short.message(), "job x not found");
    }
}
