//! `aibro machines`: the Marketplace catalog with prices and live availability.

use aibro_proto::v1::AvailableMachinesRequest;
use anyhow::Result;
use serde_json::Value;

use super::Ctx;
use crate::json;
use crate::output::{self, Table};

pub async fn show(ctx: &Ctx) -> Result<()> {
    let machines = ctx
        .client
        .marketplace()
        .available_machines(AvailableMachinesRequest {})
        .await?
        .into_inner()
        .machines;
    output::emit(
        ctx.json,
        || Value::Array(machines.iter().map(json::machine).collect()),
        || {
            let mut t = Table::new([
                "MACHINE",
                "GPU",
                "VCPU",
                "MEMORY",
                "SPOT $/H",
                "OD $/H",
                "AVAILABLE",
                "SPOT %",
                "PROVIDER",
            ]);
            for m in &machines {
                let gpu = if m.gpu_count == 0 {
                    "-".to_string()
                } else {
                    format!("{}x {}", m.gpu_count, m.gpu_type)
                };
                t.row(vec![
                    m.machine_id.clone(),
                    gpu,
                    m.vcpus.to_string(),
                    format!("{:.1} GiB", m.memory_gib),
                    format!("{:.4}", m.spot_price_per_hour),
                    format!("{:.4}", m.on_demand_price_per_hour),
                    available(m),
                    format!("{:.0}%", m.spot_availability * 100.0),
                    m.provider.clone(),
                ]);
            }
            t.print();
        },
    );
    Ok(())
}

/// "3/8"; a cloud's types have no count of ours: the cloud decides.
fn available(m: &aibro_proto::v1::Machine) -> String {
    if m.capacity == u32::MAX {
        "cloud".to_string()
    } else {
        format!("{}/{}", m.available, m.capacity)
    }
}
