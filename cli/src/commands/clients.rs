//! `aibro clients list|add|remove|public`: the client ids allowed to call a
//! model's Predict (ListClients / UpdateClients).

use aibro_proto::v1::{ClientsResponse, ListClientsRequest, UpdateClientsRequest};
use anyhow::Result;
use serde_json::json;

use super::{selector_fields, Ctx};
use crate::args::{ClientsCommand, JobSelector};
use crate::output;

pub async fn run(ctx: &Ctx, cmd: ClientsCommand) -> Result<()> {
    let resp = match cmd {
        ClientsCommand::List(sel) => {
            let (job_id, model_name) = selector_fields(&sel);
            ctx.client
                .inference()
                .list_clients(ListClientsRequest { job_id, model_name })
                .await?
        }
        ClientsCommand::Add(change) => {
            update(ctx, &change.job, change.client_ids, vec![], false).await?
        }
        ClientsCommand::Remove(change) => {
            update(ctx, &change.job, vec![], change.client_ids, false).await?
        }
        ClientsCommand::Public(sel) => update(ctx, &sel, vec![], vec![], true).await?,
    }
    .into_inner();
    show(ctx, &resp);
    Ok(())
}

async fn update(
    ctx: &Ctx,
    sel: &JobSelector,
    add: Vec<String>,
    remove: Vec<String>,
    be_public: bool,
) -> Result<tonic::Response<ClientsResponse>> {
    let (job_id, model_name) = selector_fields(sel);
    Ok(ctx
        .client
        .inference()
        .update_clients(UpdateClientsRequest {
            job_id,
            model_name,
            add,
            remove,
            be_public,
        })
        .await?)
}

fn show(ctx: &Ctx, resp: &ClientsResponse) {
    output::emit(
        ctx.json,
        || {
            json!({
                "job_id": resp.job_id,
                "client_ids": resp.client_ids,
                "public": resp.client_ids.is_empty(),
            })
        },
        || {
            if resp.client_ids.is_empty() {
                println!("job {}: public (client id `public`)", resp.job_id);
            } else {
                println!(
                    "job {}: {} client id(s)",
                    resp.job_id,
                    resp.client_ids.len()
                );
                for c in &resp.client_ids {
                    println!("  {c}");
                }
            }
        },
    );
}
