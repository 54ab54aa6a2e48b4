//! User-facing gRPC services: thin adapters that authenticate, unpack the
//! request, call the control plane and convert the answer. No business logic.

pub mod admin;
pub mod artifacts;
pub mod inference;
pub mod jobs;
pub mod marketplace;
pub mod training;

use tonic::{Request, Status};

use crate::auth::User;
use crate::control::Control;

/// The caller of `request`, from its bearer token.
pub(crate) fn caller<T>(control: &Control, request: &Request<T>) -> Result<User, Status> {
    Ok(control
        .auth()
        .authenticate(request.metadata())
        .map_err(crate::error::Error::from)?)
}
