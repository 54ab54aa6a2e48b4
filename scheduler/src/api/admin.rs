//! `aibro.v1.Admin`: access tokens, for the admin only.

use aibro_proto::v1::{admin_server::Admin, CreateTokenRequest, CreateTokenResponse};
use tonic::{Request, Response, Status};

use crate::auth::AuthError;
use crate::control::Control;
use crate::error::Error;

pub struct AdminApi {
    pub control: Control,
}

fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[tonic::async_trait]
impl Admin for AdminApi {
    #[tracing::instrument(skip_all)]
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = super::caller(&self.control, &request)?;
        if !caller.is_admin() {
            return Err(Error::from(AuthError::NotAdmin).into());
        }
        let user = request.into_inner().user;
        if !valid_user(&user) {
            return Err(Error::InvalidArgument(format!(
                "user `{user}` is invalid: use 1 to 64 letters, digits, `-`, `_` or `.`"
            ))
            .into());
        }
        let token = self
            .control
            .auth()
            .create_token(&user)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(CreateTokenResponse { user, token }))
    }
}
