//! `aibro jobs list|get|watch`: job listings, one job with its instances, and
//! the live event stream of a job.

use aibro_proto::v1::{GetJobRequest, Job, JobEvent, ListJobsRequest};
use anyhow::Result;
use serde_json::Value;

use super::instances::{self, or_dash};
use super::Ctx;
use crate::args::JobsCommand;
use crate::display;
use crate::json;
use crate::output::{self, Table};

/// The largest page the scheduler hands out.
const MAX_PAGE_SIZE: u32 = 1000;

pub async fn run(ctx: &Ctx, cmd: JobsCommand) -> Result<()> {
    match cmd {
        JobsCommand::List { active } => list(ctx, active).await,
        JobsCommand::Get(arg) => {
            let job = get(ctx, &arg.job_id).await?;
            show(ctx, &job);
            Ok(())
        }
        JobsCommand::Watch(arg) => watch(ctx, &arg.job_id).await,
    }
}

/// Jobs.GetJob.
pub async fn get(ctx: &Ctx, job_id: &str) -> Result<Job> {
    Ok(ctx
        .client
        .jobs()
        .get_job(GetJobRequest {
            job_id: job_id.to_string(),
        })
        .await?
        .into_inner())
}

/// Every job of the caller, through as many ListJobs pages as it takes.
async fn all_jobs(ctx: &Ctx, active_only: bool) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = ctx
            .client
            .jobs()
            .list_jobs(ListJobsRequest {
                active_only,
                page_size: MAX_PAGE_SIZE,
                page_token,
            })
            .await?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        page_token = page.next_page_token;
    }
}

async fn list(ctx: &Ctx, active_only: bool) -> Result<()> {
    let jobs = all_jobs(ctx, active_only).await?;
    output::emit(
        ctx.json,
        || Value::Array(jobs.iter().map(json::job).collect()),
        || {
            if jobs.is_empty() {
                println!("no jobs");
                return;
            }
            let mut t = Table::new([
                "JOB",
                "KIND",
                "MODEL",
                "STATUS",
                "MACHINES",
                "INSTANCES",
                "CREATED",
            ]);
            for j in &jobs {
                t.row(vec![
                    j.job_id.clone(),
                    display::kind(j.kind).to_string(),
                    or_dash(&j.model_name),
                    display::job_state(j.status, j.substatus),
                    machines(j),
                    j.instances.len().to_string(),
                    display::ago(&j.created_at),
                ]);
            }
            t.print();
        },
    );
    Ok(())
}

/// `standby local.small.od + cooling local.large.od`, or the training list.
fn machines(j: &Job) -> String {
    if !j.standby_machine.is_empty() {
        let mut s = format!("standby {}", j.standby_machine);
        if !j.cooling_machine.is_empty() {
            s.push_str(&format!(" + cooling {}", j.cooling_machine));
        }
        s
    } else if !j.machine_ids.is_empty() {
        j.machine_ids.join(" → ")
    } else {
        "-".into()
    }
}

/// "$0.4210 so far; $0.9800 with local.large.od always on (saves 57%)".
fn cost_line(job: &Job) -> String {
    let mut line = format!("{} so far", display::usd(job.cost_usd));
    if !job.cooling_machine.is_empty() && job.always_on_cost_usd > 0.0 {
        let saved = 100.0 * (1.0 - job.cost_usd / job.always_on_cost_usd);
        line.push_str(&format!(
            "; {} with {} always on (saves {saved:.0}%)",
            display::usd(job.always_on_cost_usd),
            job.cooling_machine
        ));
    }
    line
}

/// What the job's user code may reach.
fn network(job: &Job) -> &'static str {
    if job.isolate_network {
        "isolated (no outbound network)"
    } else {
        "outbound allowed (never this host, the scheduler, agents or cloud metadata)"
    }
}

/// Prints one job with its instances.
pub fn show(ctx: &Ctx, job: &Job) {
    output::emit(
        ctx.json,
        || json::job(job),
        || {
            let field = |k: &str, v: &str| println!("{k:<13}{v}");
            field("job", &job.job_id);
            let dry = if job.dryrun { ", dry run" } else { "" };
            let kind = display::kind(job.kind);
            field(
                "model",
                &format!("{} ({kind}{dry})", or_dash(&job.model_name)),
            );
            field("owner", &job.owner);
            field("status", &display::job_state(job.status, job.substatus));
            if !job.reason.is_empty() {
                field("reason", "");
                for line in job.reason.lines() {
                    println!("  {line}");
                }
            }
            field("machines", &machines(job));
            field("network", network(job));
            if !job.standby_machine.is_empty() {
                let clients = if job.client_ids.is_empty() {
                    "public".to_string()
                } else {
                    job.client_ids.join(", ")
                };
                field("clients", &clients);
                field("cool-down", &format!("{}s", job.cool_down_period_s));
                if let Some(b) = &job.batching {
                    field(
                        "batching",
                        &format!(
                            "up to {} per run_batch call, {} ms wait (used when predict.py defines run_batch)",
                            b.max_batch_size,
                            b.max_wait_ms.unwrap_or(0)
                        ),
                    );
                }
            }
            if !job.predict_address.is_empty() {
                field("predict", &job.predict_address);
            }
            if !job.description.is_empty() {
                field("description", &job.description);
            }
            field("artifacts", &or_dash(&job.artifact_digest));
            field("cost", &cost_line(job));
            field(
                "created",
                &format!(
                    "{} ({})",
                    display::rfc3339(&job.created_at),
                    display::ago(&job.created_at)
                ),
            );
            field(
                "updated",
                &format!(
                    "{} ({})",
                    display::rfc3339(&job.updated_at),
                    display::ago(&job.updated_at)
                ),
            );
            if job.instances.is_empty() {
                field("instances", "none");
            } else {
                println!("instances:");
                for line in instances::table(&job.instances, false).render().lines() {
                    println!("  {line}");
                }
            }
        },
    );
}

/// Prints every event of the job (history first) until the stream ends.
/// Waits until the job has ended and every instance has settled (its last event).
pub async fn wait_settled(ctx: &Ctx, job_id: &str) -> Result<()> {
    let mut stream = ctx.client.watch(job_id).await?;
    while let Some(event) = stream.message().await? {
        if event.last {
            break;
        }
    }
    Ok(())
}

async fn watch(ctx: &Ctx, job_id: &str) -> Result<()> {
    let mut stream = ctx.client.watch(job_id).await?;
    while let Some(event) = stream.message().await? {
        if ctx.json {
            output::print_json_line(&json::event(&event));
        } else {
            println!("{}", event_line(&event));
        }
    }
    Ok(())
}

/// `#3  2024-05-01T12:00:03.250Z  QUEUING / CONNECTING_SERVER  instance i-1 LAUNCHING  [phase] message`.
pub fn event_line(e: &JobEvent) -> String {
    let mut line = format!("#{:<3}", e.seq);
    if e.at.is_some() {
        line.push(' ');
        line.push_str(&display::rfc3339(&e.at));
    }
    line.push_str("  ");
    line.push_str(&display::job_state(e.status, e.substatus));
    if !e.instance_id.is_empty() {
        line.push_str(&format!("  instance {}", e.instance_id));
        if e.instance_status != 0 {
            line.push(' ');
            line.push_str(&display::instance_state(
                e.instance_status,
                e.instance_substatus,
            ));
        }
    }
    if !e.phase.is_empty() {
        line.push_str(&format!("  [{}]", e.phase));
    }
    if !e.message.is_empty() {
        let mut lines = e.message.lines();
        line.push_str("  ");
        line.push_str(lines.next().unwrap_or_default());
        for more in lines {
            line.push_str("\n      ");
            line.push_str(more);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_line_shows_instance_and_indents_multiline_messages() {
        let e = JobEvent {
            seq: 4,
            status: 1,
            substatus: 2,
            instance_id: "i-1".into(),
            instance_status: 1,
            instance_substatus: 1,
            phase: "instance launched".into(),
            message: "a\nb".into(),
            ..Default::default()
        };
        assert_eq!(
            event_line(&e),
            "#4    QUEUING / CONNECTING_SERVER  instance i-1 LAUNCHING  [instance launched]  a\n      b"
        );
    }
}

#[cfg(test)]
mod mock_tests {
    use super::*;
    use crate::mock;

    #[tokio::test]
    async fn the_listing_follows_every_page() {
        let (mock, ctx) = mock::connected(2, false).await;
        let jobs = all_jobs(&ctx, false).await.unwrap();
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(ids, ["j-0", "j-1", "j-2", "j-3", "j-4"]);
        assert_eq!(mock.seen.lock().unwrap().list_tokens, ["", "2", "4"]);
    }
}
