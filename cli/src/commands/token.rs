//! `aibro token create`: Admin.CreateToken; prints the token alone (easy to
//! capture in a shell variable) or `{user, token}`.

use aibro_proto::v1::CreateTokenRequest;
use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::args::TokenCommand;
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
