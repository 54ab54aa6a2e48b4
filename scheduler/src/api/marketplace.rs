//! `aibro.v1.Marketplace`: the catalog with live capacity.

use aibro_proto::v1::{
    marketplace_server::Marketplace, AvailableMachinesRequest, AvailableMachinesResponse,
};
use tonic::{Request, Response, Status};

use crate::control::Control;

pub struct MarketplaceApi {
    pub control: Control,
}

#[tonic::async_trait]
impl Marketplace for MarketplaceApi {
    async fn available_machines(
        &self,
        request: Request<AvailableMachinesRequest>,
    ) -> Result<Response<AvailableMachinesResponse>, Status> {
        super::caller(&request)?;
        let offers = self.control.machine_offers();
        let machines = offers.iter().map(super::convert::machine).collect();
        Ok(Response::new(AvailableMachinesResponse { machines }))
    }
}
