//! Admin commands. `aibro token create`: Admin.CreateToken; prints the token
//! alone (easy to capture in a shell variable) or `{user, token}`.
//! `aibro spot interrupt|availability`: the local provider's emulated spot market.

use aibro_proto::v1::{CreateTokenRequest, InterruptInstanceRequest, SetSpotAvailabilityRequest};
use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::args::{SpotCommand, TokenCommand};
use crate::output;

pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create { user } => {
            let resp = ctx
                .client
                .admin()
                .create_token(CreateTokenRequest { user })
                .await?
                .into_inner();
            output::emit(
                ctx.json,
                || json!({ "user": resp.user, "token": resp.token }),
                || println!("{}", resp.token),
            );
            Ok(())
        }
    }
}

pub async fn spot(ctx: &Ctx, cmd: SpotCommand) -> Result<()> {
    let mut admin = ctx.client.admin();
    let done = match cmd {
        SpotCommand::Interrupt {
            instance_id,
            notice_ms,
        } => {
            admin
                .interrupt_instance(InterruptInstanceRequest {
                    instance_id: instance_id.clone(),
                    notice_ms,
                })
                .await?;
            json!({ "interrupted": instance_id })
        }
        SpotCommand::Availability {
            machine_type,
            availability,
        } => {
            admin
                .set_spot_availability(SetSpotAvailabilityRequest {
                    machine_type: machine_type.clone(),
                    availability,
                })
                .await?;
            json!({ "machine_type": machine_type, "spot_availability": availability })
        }
    };
    output::emit(ctx.json, || done.clone(), || println!("ok: {done}"));
    Ok(())
}
