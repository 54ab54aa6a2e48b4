//! The outcome of a dry run (`Deploy{dryrun: true}`) and its wire form, the one
//! JSON line `aibro-agent dry-run` prints:
//! `{"ok": bool, "output_b64": "<standard base64>", "content_type": "...", "traceback": "..."}`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The result of a dry run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRunOutcome {
    /// load_model() and run() succeeded.
    pub ok: bool,
    /// What run() returned (JSON, or raw bytes).
    pub output: Vec<u8>,
    /// `application/json` or `application/octet-stream`.
    pub content_type: String,
    /// When not ok: the Python traceback, or what else went wrong.
    pub traceback: String,
}

/// Why a line is not a dry run's result.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the dry run's result is not its JSON line: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the dry run's output_b64 is not standard base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// The JSON line, field for field.
#[derive(Serialize, Deserialize)]
struct Line {
    ok: bool,
    output_b64: String,
    content_type: String,
    traceback: String,
}

impl DryRunOutcome {
    /// A failed dry run with what went wrong.
    pub fn failed(traceback: impl Into<String>) -> DryRunOutcome {
        DryRunOutcome {
            traceback: traceback.into(),
            ..DryRunOutcome::default()
        }
    }

    /// The JSON line (without its newline).
    pub fn to_json_line(&self) -> String {
        let line = Line {
            ok: self.ok,
            output_b64: STANDARD.encode(&self.output),
            content_type: self.content_type.clone(),
            traceback: self.traceback.clone(),
        };
        serde_json::to_string(&line).expect("a dry run's line is JSON")
    }

    /// Reads back what [`DryRunOutcome::to_json_line`] wrote.
    pub fn from_json_line(line: &str) -> Result<DryRunOutcome, ParseError> {
        let line: Line = serde_json::from_str(line)?;
        Ok(DryRunOutcome {
            ok: line.ok,
            output: STANDARD.decode(line.output_b64)?,
            content_type: line.content_type,
            traceback: line.traceback,
        })
    }
}

/// The gRPC form (`DryRunResult`), as the agent answers and Deploy returns it.
impl From<DryRunOutcome> for aibro_proto::v1::DryRunResult {
    fn from(o: DryRunOutcome) -> Self {
        aibro_proto::v1::DryRunResult {
            ok: o.ok,
            output: o.output,
            content_type: o.content_type,
            traceback: o.traceback,
        }
    }
}

impl From<aibro_proto::v1::DryRunResult> for DryRunOutcome {
    fn from(r: aibro_proto::v1::DryRunResult) -> Self {
        DryRunOutcome {
            ok: r.ok,
            output: r.output,
            content_type: r.content_type,
            traceback: r.traceback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_round_trips() {
        let ok = DryRunOutcome {
            ok: true,
            output: b"\x00\xffbytes\n".to_vec(),
            content_type: "application/octet-stream".into(),
            traceback: String::new(),
        };
        let line = ok.to_json_line();
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ok": true,
                "output_b64": "AP9ieXRlcwo=",
                "content_type": "application/octet-stream",
                "traceback": "",
            })
        );
        assert_eq!(DryRunOutcome::from_json_line(&line).unwrap(), ok);
        let failed = DryRunOutcome::failed("run() raised:\nTraceback\n");
        let back = DryRunOutcome::from_json_line(&failed.to_json_line()).unwrap();
        assert_eq!(back, failed);
        assert!(!back.ok);
    }

    #[test]
    fn other_lines_are_refused() {
        assert!(matches!(
            DryRunOutcome::from_json_line("printed by someone"),
            Err(ParseError::Json(_))
        ));
        let bad = r#"{"ok": true, "output_b64": "*", "content_type": "", "traceback": ""}"#;
        assert!(matches!(
            DryRunOutcome::from_json_line(bad),
            Err(ParseError::Base64(_))
        ));
    }
}
