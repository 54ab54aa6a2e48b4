//! `aibro.v1.Marketplace`: the catalog with live capacity.

use aibro_proto::v1::{
    marketplace_server::Marketplace, AvailableMachinesRequest, AvailableMachinesResponse, Machine,
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
        super::caller(&self.control, &request)?;
        let control = &self.control;
        let machines = control
            .catalog()
            .types()
            .map(|t| {
                let capacity = control.live_capacity(t);
                Machine {
                    machine_id: t.name.clone(),
                    gpu_type: t.gpu_type.clone(),
                    gpu_count: t.gpu_count,
                    vcpus: t.vcpus,
                    memory_gib: t.memory_gib,
                    spot_price_per_hour: t.spot_price,
                    on_demand_price_per_hour: t.on_demand_price,
                    capacity,
                    available: capacity.saturating_sub(control.capacity().used(&t.name)),
                    spot_availability: control.spot_availability(t),
                    provider: t.provider.clone(),
                }
            })
            .collect();
        Ok(Response::new(AvailableMachinesResponse { machines }))
    }
}
