//! `aibro.v1.Admin`, for the admin only: access tokens, and the emulated spot
//! market (interrupt an instance now, set a type's spot availability).

use std::time::Duration;

use aibro_proto::v1::{
    admin_server::Admin, CreateTokenRequest, CreateTokenResponse, InterruptInstanceRequest,
    InterruptInstanceResponse, SetSpotAvailabilityRequest, SetSpotAvailabilityResponse,
};
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

impl AdminApi {
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = super::caller(request)?;
        if caller.is_admin() {
            Ok(())
        } else {
            Err(Error::from(AuthError::NotAdmin).into())
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    #[tracing::instrument(skip_all)]
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        self.admin(&request)?;
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

    #[tracing::instrument(skip_all, fields(instance_id = %request.get_ref().instance_id))]
    async fn interrupt_instance(
        &self,
        request: Request<InterruptInstanceRequest>,
    ) -> Result<Response<InterruptInstanceResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let notice = (r.notice_ms > 0).then(|| Duration::from_millis(r.notice_ms.into()));
        self.control.interrupt(&r.instance_id, notice)?;
        Ok(Response::new(InterruptInstanceResponse {}))
    }

    async fn set_spot_availability(
        &self,
        request: Request<SetSpotAvailabilityRequest>,
    ) -> Result<Response<SetSpotAvailabilityResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        self.control
            .set_spot_availability(&r.machine_type, r.availability)?;
        Ok(Response::new(SetSpotAvailabilityResponse {}))
    }
}
