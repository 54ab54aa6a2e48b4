//! `aibro complete (--model-name N | --job-id J)`: Inference.Complete.

use aibro_proto::v1::CompleteRequest;
use anyhow::Result;
use serde_json::json;

use super::{jobs, selector_fields, Ctx};
use crate::args::JobSelector;
use crate::output;

/// Completes the selected job and waits until its instances are shut down;
/// returns its id.
pub async fn complete(ctx: &Ctx, sel: &JobSelector) -> Result<String> {
    let (job_id, model_name) = selector_fields(sel);
    let resp = ctx
        .client
        .inference()
        .complete(CompleteRequest { job_id, model_name })
        .await?
        .into_inner();
    jobs::wait_settled(ctx, &resp.job_id).await?;
    output::emit(
        ctx.json,
        || json!({ "job_id": resp.job_id, "status": "COMPLETED" }),
        || println!("completed job {}", resp.job_id),
    );
    Ok(resp.job_id)
}
