//! OIP over HTTP: `GET /v2/health/live`, `/v2/health/ready`, `/v2`,
//! `/v2/models/{name}[/versions/{v}]`, `…/ready`, and `POST …/infer` with
//! JSON `data` or Triton's binary tensor extension (the request header
//! `Inference-Header-Content-Length` splits the body into the JSON header
//! and the inputs' buffers, sized by `parameters.binary_data_size`; outputs
//! asked for with `binary_data` come back the same way). Errors are JSON
//! `{"error", "code"}` as on the AIbro URL.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::tensors::Tensor;
use crate::api::deadline::Deadline;
use crate::api::http::errors::HttpError;
use crate::api::http::predict;
use crate::config::Config;
use crate::control::Control;

/// The header that says how long the JSON part of a binary body is.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

type Parameters = Map<String, Value>;
type Api = Arc<OipApi>;

struct OipApi {
    control: Control,
    max_payload_bytes: usize,
}

/// The `/v2` routes, ready to merge into the HTTP router.
pub(crate) fn routes(control: &Control, config: &Config) -> axum::Router {
    let api = Arc::new(OipApi {
        control: control.clone(),
        max_payload_bytes: config.max_payload_bytes,
    });
    let model = |tail: &str| {
        [
            format!("/v2/models/{{name}}{tail}"),
            format!("/v2/models/{{name}}/versions/{{version}}{tail}"),
        ]
    };
    let mut router = axum::Router::new()
        .route("/v2", only(get(server_metadata)))
        .route("/v2/health/live", only(get(live)))
        .route("/v2/health/ready", only(get(ready)));
    for (tail, method) in [
        ("", only(get(model_metadata))),
        ("/ready", only(get(model_ready))),
        ("/infer", only(post(infer))),
    ] {
        for path in model(tail) {
            router = router.route(&path, method.clone());
        }
    }
    // Other paths get the HTTP router's one answer for unknown paths.
    router.with_state(api)
}

/// The route's method, any other answered with a JSON 405.
fn only(method: MethodRouter<Api>) -> MethodRouter<Api> {
    method.fallback(|| async {
        HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "OIP health and metadata take GET, infer takes POST",
        )
    })
}

/// A JSON answer with `status`.
fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn live() -> Response {
    json_response(StatusCode::OK, &json!({ "live": true }))
}

async fn ready(State(api): State<Api>) -> Response {
    let ready = api.control.accepts_work();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &json!({ "ready": ready }))
}

async fn server_metadata() -> Response {
    let metadata = json!({
        "name": super::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": super::EXTENSIONS,
    });
    json_response(StatusCode::OK, &metadata)
}

/// The caller's client id header, if any.
fn client(headers: &HeaderMap) -> Result<Option<&str>, HttpError> {
    headers
        .get(super::CLIENT_ID_HEADER)
        .map(|v| v.to_str())
        .transpose()
        .map_err(|_| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "bad_client_id",
                "the aibro-client-id header is not text",
            )
        })
}

async fn model_metadata(
    State(api): State<Api>,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let name = &path["name"];
    super::model_ready(&api.control, name, client(&headers)?)?;
    let metadata = json!({
        "name": name,
        "versions": [],
        "platform": super::PLATFORM,
        "inputs": [],
        "outputs": [],
    });
    Ok(json_response(StatusCode::OK, &metadata))
}

async fn model_ready(
    State(api): State<Api>,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let name = &path["name"];
    let ready = super::model_ready(&api.control, name, client(&headers)?)?;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(
        status,
        &json!({ "name": name, "ready": ready }),
    ))
}

#[derive(Deserialize)]
struct InferBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Vec<OutputBody>,
}

#[derive(Deserialize)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

async fn infer(
    State(api): State<Api>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    Path(path): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let name = &path["name"];
    let client = client(&headers)?;
    let body = predict::read_body_by(deadline, body, api.max_payload_bytes).await?;
    let (request, inputs) = parse(&headers, body)?;
    let names: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
    // The stack ends the call at its deadline (504).
    let outputs = super::infer(&api.control, name, client, inputs, &names).await?;
    respond(name, &request, outputs)
}

fn bad(code: &'static str, message: String) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, code, message)
}

/// The request's JSON and its input tensors, from JSON `data` or the binary
/// buffers after the JSON header.
fn parse(headers: &HeaderMap, body: Vec<u8>) -> Result<(InferBody, Vec<Tensor>), HttpError> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                bad(
                    "binary_size_mismatch",
                    format!(
                        "Inference-Header-Content-Length must be a byte count within the \
                         {}-byte body",
                        body.len()
                    ),
                )
            })?,
    };
    let (json, mut binary) = body.split_at(json_len);
    let request: InferBody = serde_json::from_slice(json).map_err(|e| {
        bad(
            "bad_json",
            format!("the inference request is not valid: {e}"),
        )
    })?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let tensor = match binary_size(&input.name, &input.parameters)? {
            Some(size) => {
                let (data, rest) = binary.split_at_checked(size).ok_or_else(|| {
                    binary_mismatch(format!("input `{}` declares {size} bytes", input.name))
                })?;
                binary = rest;
                Tensor::raw(
                    &input.name,
                    &input.datatype,
                    input.shape.clone(),
                    data.to_vec(),
                )?
            }
            None => {
                let data = input.data.as_ref().ok_or_else(|| {
                    bad(
                        "invalid_input",
                        format!(
                            "input `{}` has neither data nor binary_data_size",
                            input.name
                        ),
                    )
                })?;
                Tensor::json(&input.name, &input.datatype, input.shape.clone(), data)?
            }
        };
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(binary_mismatch(format!(
            "{} bytes after the JSON header are not claimed by any input",
            binary.len()
        )));
    }
    Ok((request, inputs))
}

fn binary_mismatch(what: String) -> HttpError {
    bad(
        "binary_size_mismatch",
        format!("the binary tensor data does not add up: {what}"),
    )
}

fn binary_size(name: &str, parameters: &Parameters) -> Result<Option<usize>, HttpError> {
    parameters
        .get("binary_data_size")
        .map(|v| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    bad(
                        "invalid_input",
                        format!("input `{name}`: binary_data_size must be a byte count"),
                    )
                })
        })
        .transpose()
}

/// Whether the output `name` goes back as binary data: its own
/// `binary_data` parameter, else the request's `binary_data_output`.
fn wants_binary(request: &InferBody, name: &str) -> bool {
    let flag = |p: &Parameters, key: &str| p.get(key).and_then(Value::as_bool);
    request
        .outputs
        .iter()
        .find(|o| o.name == name)
        .and_then(|o| flag(&o.parameters, "binary_data"))
        .or_else(|| flag(&request.parameters, "binary_data_output"))
        .unwrap_or(false)
}

/// The inference response: JSON, with the binary outputs' buffers after it
/// (`Inference-Header-Content-Length` then says where they begin).
fn respond(name: &str, request: &InferBody, outputs: Vec<Tensor>) -> Result<Response, HttpError> {
    let mut described = Vec::with_capacity(outputs.len());
    let mut buffers = Vec::new();
    for t in outputs {
        let mut out = json!({ "name": t.name, "datatype": t.datatype.name(), "shape": t.shape });
        if wants_binary(request, &t.name) {
            out["parameters"] = json!({ "binary_data_size": t.data.len() });
            buffers.push(t.data);
        } else {
            out["data"] = t.to_json()?;
        }
        described.push(out);
    }
    let mut header = json!({ "model_name": name, "outputs": described });
    if let Some(id) = &request.id {
        header["id"] = json!(id);
    }
    if buffers.is_empty() {
        return Ok(json_response(StatusCode::OK, &header));
    }
    let header = header.to_string();
    let length = HeaderValue::from(header.len());
    let mut body = header.into_bytes();
    buffers.iter().for_each(|b| body.extend(b));
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (axum::http::HeaderName::from_static(HEADER_LENGTH), length),
        ],
        body,
    )
        .into_response())
}
