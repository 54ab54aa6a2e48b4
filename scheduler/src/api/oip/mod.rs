//! The Open Inference Protocol v2 (KServe v2, as Triton speaks it): REST
//! ([`rest`]) and gRPC `inference.GRPCInferenceService` ([`grpc`]), thin
//! adapters over the control plane's Predict that share this module's calls
//! and the one tensor conversion ([`tensors`]).
//!
//! An OIP model name is `{owner}~{model_name}`: OIP names go in URL paths and
//! have no `/`, and neither owners nor model names may hold a `~` (both are
//! letters, digits, `-`, `_`, `.`). The caller's client id travels in the
//! header (or gRPC metadata) [`CLIENT_ID_HEADER`], `public` when absent, with
//! Predict's rules; a model the client may not call is not found. Model
//! versions are not kept: any version names the deployed model.

pub(crate) mod grpc;
pub(crate) mod rest;
pub(crate) mod tensors;

use crate::auth::PUBLIC_CLIENT;
use crate::control::Control;
use crate::error::{Error, Result};
use tensors::Tensor;

/// The header (gRPC metadata key) holding the caller's client id.
pub(crate) const CLIENT_ID_HEADER: &str = "aibro-client-id";
/// Between the owner and the model name in an OIP model name.
const SEPARATOR: char = '~';
/// What `GET /v2` and ServerMetadata answer.
const SERVER_NAME: &str = "aibro";
const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];
/// The platform model metadata reports.
const PLATFORM: &str = "aibro_python";

/// `(owner, model_name)` of an OIP model name.
fn split_name(name: &str) -> Result<(&str, &str)> {
    name.split_once(SEPARATOR)
        .filter(|(owner, model)| !owner.is_empty() && !model.is_empty())
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no model `{name}`: OIP model names are `{{owner}}{SEPARATOR}{{model_name}}`"
            ))
        })
}

/// The client id a request names, `public` when none.
fn client_id(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or(PUBLIC_CLIENT)
}

/// Whether the model `name` is ready for `client`; not found when the client
/// may not call it.
pub(crate) fn model_ready(control: &Control, name: &str, client: Option<&str>) -> Result<bool> {
    let (owner, model) = split_name(name)?;
    control.model_ready(owner, client_id(client), model)
}

/// One inference: `inputs` to the model `name`, the `outputs` named (all
/// when empty) back.
pub(crate) async fn infer(
    control: &Control,
    name: &str,
    client: Option<&str>,
    inputs: Vec<Tensor>,
    outputs: &[String],
) -> Result<Vec<Tensor>> {
    let (owner, model) = split_name(name)?;
    let payload = tensors::encode_request(inputs, outputs);
    let routed = control
        .predict(
            owner,
            client_id(client),
            model,
            payload,
            tensors::CONTENT_TYPE.to_string(),
        )
        .await?;
    if routed.content_type != tensors::CONTENT_TYPE {
        return Err(Error::Internal(format!(
            "the model answered `{}`, not tensors",
            routed.content_type
        )));
    }
    tensors::decode_reply(&routed.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_split_at_the_separator() {
        assert_eq!(split_name("alice~echo").unwrap(), ("alice", "echo"));
        assert_eq!(
            split_name("a.b~m.v2~x").unwrap(),
            ("a.b", "m.v2~x"),
            "the first ~ splits; the model part then fails as a name"
        );
        for bad in ["echo", "~echo", "alice~", ""] {
            assert!(matches!(split_name(bad), Err(Error::NotFound(_))), "{bad}");
        }
        assert_eq!(client_id(None), "public");
        assert_eq!(client_id(Some("")), "public");
        assert_eq!(client_id(Some("c1")), "c1");
    }
}
