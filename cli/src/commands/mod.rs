//! One module per command; `dispatch` routes parsed arguments to them. The
//! demo reuses the same functions, so every command has one implementation.

pub mod clients;
pub mod complete;
pub mod demo;
pub mod deploy;
pub mod fit;
pub mod instances;
pub mod jobs;
pub mod local_dry_run;
pub mod machines;
pub mod predict;
pub mod timeline;
pub mod token;

use std::fmt::Display;

use anyhow::Result;

use crate::args::{Cli, Command, JobSelector};
use crate::client::Client;

/// What every command needs: the connected client and the output mode.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

impl Ctx {
    /// Progress and commentary: stdout in text mode, stderr in JSON mode so
    /// that stdout holds only JSON.
    pub fn say(&self, line: impl Display) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// `(job_id, model_name)` request fields of a selector.
pub fn selector_fields(sel: &JobSelector) -> (String, String) {
    (
        sel.job_id.clone().unwrap_or_default(),
        sel.model_name.clone().unwrap_or_default(),
    )
}

/// Runs the command `cli` names.
pub async fn dispatch(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Demo(args) => return demo::run(args, cli.json).await,
        Command::Deploy(args) if args.local => return local_dry_run::run(args, cli.json).await,
        _ => {}
    }
    let client =
        Client::connect(&cli.endpoint, cli.token.as_deref(), cli.tls_ca.as_deref()).await?;
    let ctx = Ctx {
        client,
        json: cli.json,
    };
    match cli.command {
        Command::Deploy(args) => deploy::deploy(&ctx, &args).await.map(drop),
        Command::Fit(args) => fit::fit(&ctx, &args).await,
        Command::Predict(args) => predict::run(&ctx, &args).await,
        Command::Complete(sel) => complete::complete(&ctx, &sel).await.map(drop),
        Command::Clients(cmd) => clients::run(&ctx, cmd).await,
        Command::Jobs(cmd) => jobs::run(&ctx, cmd).await,
        Command::Timeline(args) => timeline::show(&ctx, &args).await,
        Command::Token(cmd) => token::run(&ctx, cmd).await,
        Command::Spot(cmd) => token::spot(&ctx, cmd).await,
        Command::Instances(args) => instances::show(&ctx, args.job_id.as_deref()).await,
        Command::Machines => machines::show(&ctx).await,
        Command::Demo(_) => unreachable!("handled above"),
    }
}
