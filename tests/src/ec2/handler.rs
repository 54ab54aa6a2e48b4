//! What the proxy does to one EC2 call: counts it by action; answers it
//! itself when a fault rule matches, when EC2's spot rules refuse it, or for
//! spot prices; else forwards it to moto, and after a successful answer
//! records what the call changed (spot terms, transitions, played machines)
//! and shows instances in their transitional states.

use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use axum::http::{request, response, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http_body_util::Full;

use super::errors::Ec2Error;
use super::proxy::Shared;
use super::query::Params;
use super::states::InstanceState;
use super::{http, prices, spot, xml};

const MAX_BODY: usize = 16 << 20;

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    match serve(&shared, request).await {
        Ok(response) => response,
        Err(e) => (StatusCode::BAD_GATEWAY, format!("ec2 proxy: {e:#}")).into_response(),
    }
}

async fn serve(shared: &Shared, request: Request) -> Result<Response> {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, MAX_BODY).await?;
    let params = Params::parse(parts.uri.query(), &body);
    if let Some(answer) = intercept(shared, &params) {
        return Ok(answer);
    }
    let (mut head, mut answer) = forward(shared, parts, body).await?;
    if head.status.is_success() {
        answer = observe(shared, &params, answer)?;
    }
    for name in [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION] {
        head.headers.remove(name);
    }
    Ok(Response::from_parts(head, Body::from(answer)))
}

/// Counts the call, and answers it in moto's place where it should.
fn intercept(shared: &Shared, params: &Params) -> Option<Response> {
    let mut state = shared.state.lock().unwrap();
    *state.counts.entry(params.action().to_string()).or_default() += 1;
    let refusal = state.faults.take(params).or_else(|| match params.action() {
        "RunInstances" => spot::launch_terms(params).err().or(user_data(params).err()),
        "StopInstances" => params
            .list("InstanceId")
            .into_iter()
            .find_map(|id| spot::stop_refusal(id, state.spot.get(id))),
        _ => None,
    });
    if let Some(error) = refusal {
        let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
        return Some(xml_response(status, error.xml(&request_id())));
    }
    (params.action() == "DescribeSpotPriceHistory")
        .then(|| xml_response(StatusCode::OK, prices::history_xml(&state.prices, params)))
}

async fn forward(
    shared: &Shared,
    parts: request::Parts,
    body: Bytes,
) -> Result<(response::Parts, Bytes)> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = hyper::Request::builder()
        .method(parts.method)
        .uri(format!("{}{path}", shared.moto));
    for (name, value) in &parts.headers {
        if name != HOST && name != CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    http::send(&shared.client, request.body(Full::new(body))?).await
}

/// Records what a call moto carried out changed; the answer to give.
fn observe(shared: &Shared, params: &Params, answer: Bytes) -> Result<Bytes> {
    let text = std::str::from_utf8(&answer).context("moto's answer is not UTF-8")?;
    match params.action() {
        "RunInstances" => launched(shared, params, text)?,
        "StartInstances" => changed(shared, text, InstanceState::Pending)?,
        "StopInstances" => changed(shared, text, InstanceState::Stopping)?,
        "TerminateInstances" => changed(shared, text, InstanceState::ShuttingDown)?,
        "DescribeInstances" | "DescribeInstanceStatus" => {
            let state = shared.state.lock().unwrap();
            let shown = xml::rewrite_states(text, |id, moto| state.transitions.shown(id, moto))?;
            return Ok(shown.into());
        }
        _ => {}
    }
    Ok(answer)
}

fn launched(shared: &Shared, params: &Params, answer: &str) -> Result<()> {
    let ids = instance_ids(answer)?;
    let terms = spot::launch_terms(params).ok().flatten();
    let script = user_data(params).ok().flatten();
    let pending = {
        let mut state = shared.state.lock().unwrap();
        let delays = state.delays;
        for id in &ids {
            state.transitions.begin(id, InstanceState::Pending, &delays);
            if let Some(terms) = terms {
                state.spot.insert(id.clone(), terms);
            }
        }
        delays.pending
    };
    for id in &ids {
        shared.played.launched(id, script.clone(), pending);
    }
    Ok(())
}

/// A start, stop or terminate of the answer's instances began `transition`.
fn changed(shared: &Shared, answer: &str, transition: InstanceState) -> Result<()> {
    let ids = instance_ids(answer)?;
    let delays = {
        let mut state = shared.state.lock().unwrap();
        let delays = state.delays;
        for id in &ids {
            state.transitions.begin(id, transition, &delays);
        }
        delays
    };
    for id in &ids {
        match transition {
            InstanceState::Pending => shared.played.started(id, delays.pending),
            InstanceState::Stopping => shared.played.stopped(id),
            _ => shared.played.terminated(id),
        }
    }
    Ok(())
}

fn instance_ids(answer: &str) -> Result<Vec<String>> {
    xml::texts(answer, &["instancesSet", "item", "instanceId"])
}

/// The decoded `UserData` of a RunInstances, or EC2's refusal of it.
fn user_data(params: &Params) -> Result<Option<Vec<u8>>, Ec2Error> {
    let Some(encoded) = params.get("UserData") else {
        return Ok(None);
    };
    let encoded: String = encoded.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map(Some)
        .map_err(|_| {
            Ec2Error::new(
                "InvalidParameterValue",
                400,
                "Invalid BASE64 encoding of user data.",
            )
        })
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, "text/xml;charset=UTF-8")], body).into_response()
}

fn request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
