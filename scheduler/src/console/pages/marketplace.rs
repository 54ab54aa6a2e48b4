//! `GET /console/marketplace`: the machine types on offer (AvailableMachines)
//! with their prices, capacity and availability; the pool's agents with
//! their GPUs (a pool's joined agents are its types' capacity).

use std::sync::Arc;

use axum::extract::State;
use maud::{html, Markup};

use super::super::form::Signed;
use super::super::layout;
use super::super::Console;
use crate::provider::pool::PoolAgent;

pub(in crate::console) async fn page(
    State(console): State<Arc<Console>>,
    Signed(session): Signed,
) -> Markup {
    let offers = console.control.machine_offers();
    let agents = console.control.pool_agents();
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
        (pool_agents(&agents))
    };
    layout::page("Marketplace", Some(&session), body)
}

fn pool_agents(agents: &[PoolAgent]) -> Markup {
    html! {
        h2 { "Pool agents" }
        @if agents.is_empty() { p #no-pool-agents { "No pool agent has joined." } }
        @else {
            table #pool-agents {
                thead { tr {
                    th { "Agent" } th { "Machine type" } th { "State" } th { "Host" }
                    th { "GPUs" } th { "Last heard" }
                } }
                tbody { @for a in agents {
                    tr data-agent-id=(a.agent_id) {
                        td { (a.agent_id) } td { (a.machine_type) } td .state { (a.state) }
                        td { (a.hardware.hostname) }
                        td .gpus {
                            @if a.hardware.gpus.is_empty() { "none" }
                            @for g in &a.hardware.gpus {
                                span .gpu { (g.index) ": " (g.name) " (" (g.memory_total_bytes >> 20) " MiB)" } " "
                            }
                        }
                        td { (a.seen_ago.as_secs()) " s ago" }
                    }
                } }
            }
        }
    }
}
