//! `aibro`: command-line client of aibro-rs. Parses arguments, runs the
//! command, and turns errors into `error: <message> (<CODE>)` with exit 1.

#![deny(clippy::too_many_lines)]

mod args;
mod client;
mod commands;
mod display;
mod json;
#[cfg(test)]
mod mock;
mod output;
mod upload;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `error: context: message (CODE)`; a gRPC status shows its message and code,
/// other errors their whole cause chain.
fn error_line(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    let mut code = None;
    for cause in e.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            let message = status.message();
            parts.push(if message.is_empty() {
                status.code().description().to_string()
            } else {
                message.to_string()
            });
            code = Some(status.code());
            break;
        }
        let text = cause.to_string();
        // Transport errors repeat their source's text; show it once.
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    let mut line = format!("error: {}", parts.join(": "));
    if let Some(code) = code {
        line.push_str(&format!(" ({})", code_name(code)));
    }
    line
}

/// `NotFound` → `NOT_FOUND` (the gRPC spelling).
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn status_errors_show_message_and_code() {
        let e = anyhow::Error::from(tonic::Status::not_found("unknown job j-1"));
        assert_eq!(error_line(&e), "error: unknown job j-1 (NOT_FOUND)");
        let e = Err::<(), _>(tonic::Status::permission_denied("not yours"))
            .context("completing")
            .unwrap_err();
        assert_eq!(
            error_line(&e),
            "error: completing: not yours (PERMISSION_DENIED)"
        );
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn other_errors_show_their_chain() {
        let e = Err::<(), _>(std::io::Error::other("boom"))
            .context("reading x")
            .unwrap_err();
        assert_eq!(error_line(&e), "error: reading x: boom");
    }
}
