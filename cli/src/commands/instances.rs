//! `aibro instances [--job-id J]`: Jobs.ListInstances as a table; the table
//! printer is shared with `jobs get`.

use aibro_proto::v1::{Instance, ListInstancesRequest};
use anyhow::Result;
use serde_json::Value;

use super::Ctx;
use crate::display;
use crate::json;
use crate::output::{self, Table};

pub async fn show(ctx: &Ctx, job_id: Option<&str>) -> Result<()> {
    let instances = ctx
        .client
        .jobs()
        .list_instances(ListInstancesRequest {
            job_id: job_id.unwrap_or_default().to_string(),
        })
        .await?
        .into_inner()
        .instances;
    output::emit(
        ctx.json,
        || Value::Array(instances.iter().map(json::instance).collect()),
        || {
            if instances.is_empty() {
                println!("no instances");
            } else {
                table(&instances, job_id.is_none()).print();
            }
        },
    );
    Ok(())
}

/// Instances as a table (with a JOB column when they may span jobs).
pub fn table(instances: &[Instance], with_job: bool) -> Table {
    let mut header = vec!["INSTANCE"];
    if with_job {
        header.push("JOB");
    }
    header.extend([
        "ROLE",
        "MACHINE",
        "STATUS",
        "HARDWARE",
        "GPU MEMORY",
        "AGENT",
        "SANDBOX",
        "WORKERS",
        "RUNNING",
        "COST",
        "UPDATED",
        "NOTE",
    ]);
    let mut t = Table::new(header);
    for i in instances {
        let mut row = vec![i.instance_id.clone()];
        if with_job {
            row.push(i.job_id.clone());
        }
        row.extend([
            display::role(i.role).to_string(),
            i.machine_id.clone(),
            display::instance_state(i.status, i.substatus),
            display::hardware(&i.hardware),
            display::gpu_memory(&i.gpus),
            or_dash(&i.agent_address),
            or_dash(&i.sandbox),
            load(i),
            display::duration_ms(i.running_ms),
            display::usd(i.cost_usd),
            display::ago(&i.updated_at),
            note(i),
        ]);
        t.row(row);
    }
    t
}

/// "2/2 (1 busy, 0 queued)": Python workers alive of those the job should
/// have, requests in flight and waiting, from the last heartbeat.
fn load(i: &Instance) -> String {
    if i.last_heartbeat_at.is_none() {
        return "-".into();
    }
    format!(
        "{}/{} ({} busy, {} queued)",
        i.workers_alive, i.workers, i.in_flight, i.queued
    )
}

/// What replaced what, and why an instance ended when its job did not ask.
fn note(i: &Instance) -> String {
    let mut parts = Vec::new();
    if !i.replaces.is_empty() {
        parts.push(format!("replaces {}", i.replaces));
    }
    if !i.reason.is_empty() {
        parts.push(i.reason.clone());
    }
    or_dash(&parts.join("; "))
}

pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}
