//! `GET /console/marketplace`: the machine types on offer (AvailableMachines)
//! with their prices, capacity and availability; a pool's joined agents
//! are its types' capacity.

use std::sync::Arc;

use axum::extract::State;
use maud::{html, Markup};

use super::super::form::Signed;
use super::super::layout;
use super::super::Console;

pub(in crate::console) async fn page(
    State(console): State<Arc<Console>>,
    Signed(session): Signed,
) -> Markup {
    let offers = console.control.machine_offers();
    let body = html! {
        table #machines {
            thead { tr {
                th { "Machine type" } th { "Provider" } th { "GPUs" } th { "vCPUs" } th { "Memory" }
                th { "Spot $/h" } th { "On-demand $/h" } th { "Capacity" } th { "Available" }
                th { "Spot availability" }
            } }
            tbody { @for o in &offers {
                @let t = &o.kind;
                tr data-machine=(t.name) {
                    td { (t.name) } td { (t.provider) }
                    td { (t.gpu_count) " × " (t.gpu_type) } td { (t.vcpus) } td { (t.memory_gib) " GiB" }
                    td .spot-price { (layout::usd(t.spot_price)) }
                    td .on-demand-price { (layout::usd(t.on_demand_price)) }
                    td .capacity { (o.capacity) } td .available { (o.available) }
                    td .spot-availability { (format!("{:.0}%", o.spot_availability * 100.0)) }
                }
            } }
        }
    };
    layout::page("Marketplace", Some(&session), body)
}
