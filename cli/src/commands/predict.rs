//! `aibro predict`: one Predict call (authorised by client id, no token) and
//! its output: pretty JSON, raw bytes, or `{output, content_type, instance_id, role}`.

use std::io::Write;
use std::path::Path;

use aibro_proto::v1::{PredictRequest, PredictResponse};
use anyhow::{Context, Result};

use super::Ctx;
use crate::args::PredictArgs;
use crate::json;
use crate::output;

pub const JSON: &str = "application/json";

pub async fn run(ctx: &Ctx, args: &PredictArgs) -> Result<()> {
    let resp = call(ctx, args).await?;
    show(ctx, &resp)
}

/// Builds the request from the arguments and sends it.
pub async fn call(ctx: &Ctx, args: &PredictArgs) -> Result<PredictResponse> {
    let req = request(args)?;
    Ok(ctx.client.predictor().predict(req).await?.into_inner())
}

fn request(args: &PredictArgs) -> Result<PredictRequest> {
    let (payload, guessed) = match (&args.data, &args.data_file) {
        (Some(data), _) => (data.clone().into_bytes(), JSON),
        (None, Some(path)) => (
            std::fs::read(path).with_context(|| format!("--data-file {}", path.display()))?,
            guess_content_type(path),
        ),
        (None, None) => anyhow::bail!("give --data or --data-file"),
    };
    let content_type = args.content_type.as_deref().unwrap_or(guessed).to_string();
    if json::is_json_type(&content_type) {
        serde_json::from_slice::<serde_json::Value>(&payload).with_context(|| {
            format!("the payload is not valid JSON (content type {content_type}); pass --content-type for other data")
        })?;
    }
    Ok(PredictRequest {
        owner: args.owner.clone(),
        client_id: args.client_id.clone(),
        model_name: args.model_name.clone(),
        payload,
        content_type,
    })
}

/// Content type from a file extension (JSON when unknown text, bytes otherwise).
fn guess_content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => JSON,
        "txt" => "text/plain",
        "csv" => "text/csv",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// Prints a prediction.
pub fn show(ctx: &Ctx, resp: &PredictResponse) -> Result<()> {
    if ctx.json {
        output::print_json(&json::prediction(resp));
        Ok(())
    } else {
        print_payload(&resp.output, &resp.content_type)
    }
}

/// A payload on stdout: pretty JSON when it is JSON, raw bytes otherwise.
pub fn print_payload(data: &[u8], content_type: &str) -> Result<()> {
    if json::is_json_type(content_type) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            output::print_json(&v);
            return Ok(());
        }
    }
    let mut out = std::io::stdout().lock();
    out.write_all(data)?;
    if std::str::from_utf8(data).is_ok_and(|s| !s.is_empty() && !s.ends_with('\n')) {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn args(data: Option<&str>, content_type: Option<&str>) -> PredictArgs {
        PredictArgs {
            owner: "u".into(),
            model_name: "m".into(),
            client_id: "public".into(),
            data: data.map(str::to_string),
            data_file: None,
            content_type: content_type.map(str::to_string),
        }
    }

    #[test]
    fn inline_data_defaults_to_json_and_is_checked() {
        let req = request(&args(Some(r#"{"x": 1}"#), None)).unwrap();
        assert_eq!(req.content_type, JSON);
        assert_eq!(req.client_id, "public");
        assert!(request(&args(Some("{oops"), None)).is_err());
        let raw = request(&args(Some("{oops"), Some("text/plain"))).unwrap();
        assert_eq!(raw.payload, b"{oops");
    }

    #[test]
    fn guesses_from_extension() {
        assert_eq!(guess_content_type(Path::new("a.JSON")), JSON);
        assert_eq!(guess_content_type(Path::new("a.png")), "image/png");
        assert_eq!(
            guess_content_type(Path::new("a")),
            "application/octet-stream"
        );
    }
}

#[cfg(test)]
mod mock_tests {
    use super::*;
    use crate::mock;

    #[tokio::test]
    async fn predict_sends_no_token() {
        let (mock, ctx) = mock::connected(2, true).await;
        let resp = call(&ctx, &super::tests::args(Some(r#"{"x": 1}"#), None))
            .await
            .unwrap();
        assert_eq!(resp.output, br#"{"x": 1}"#);
        let seen = mock.seen.lock().unwrap();
        assert_eq!(seen.auth, [None]);
        let req = seen.predict.as_ref().unwrap();
        assert_eq!((req.owner.as_str(), req.model_name.as_str()), ("u", "m"));
    }
}
