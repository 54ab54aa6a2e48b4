//! The one tower stack in front of gRPC and HTTP: request ids made and
//! echoed (or kept), the caller authenticated once, `grpc-timeout` honoured,
//! and load shedding that refuses at once (HTTP 503, gRPC UNAVAILABLE) while
//! the agents' gateway still answers.

use std::time::{Duration, Instant};

use aibro_proto::v1 as pb;
use aibro_proto::v1::JobStatus;
use aibro_tests::{repo, Scheduler};
use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tonic::Code;

/// run() that sleeps as long as asked.
const SLOW: &str = r#"
import time

def load_model():
    return {}

def run(model, data):
    time.sleep(data.get("sleep", 0))
    return {"slept": data.get("sleep", 0)}
"#;

struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    json: serde_json::Value,
}

/// One HTTP/1.1 request on a fresh connection.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (mut sender, conn) = http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body.to_string())))?)
        .await?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok(Reply {
        status,
        headers,
        json,
    })
}

async fn deploy(s: &Scheduler, token: &str, model: &str, dir: &std::path::Path) -> Result<()> {
    let digest = s.upload_dir(token, dir).await?;
    let job = s.deploy(token, model, &digest).await?;
    s.wait_status(token, &job, JobStatus::Deployed).await?;
    Ok(())
}

fn predict_request(model: &str, payload: &str) -> pb::PredictRequest {
    pb::PredictRequest {
        owner: "alice".into(),
        client_id: "public".into(),
        model_name: model.into(),
        payload: payload.as_bytes().to_vec(),
        content_type: "application/json".into(),
    }
}

#[tokio::test]
async fn request_ids_auth_and_grpc_deadlines() -> Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let slow = repo(SLOW);
    deploy(&s, &alice, "slow", slow.path()).await?;

    // HTTP: an id is made when absent, a client's is kept; both echoed.
    let path = "/v1/alice/public/slow/predict";
    let made = http(&s.addr, "POST", path, &[], "{}").await?;
    assert_eq!(made.status, 200, "{}", made.json);
    let id = made.headers["x-request-id"].to_str()?.to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let kept = http(
        &s.addr,
        "POST",
        path,
        &[("x-request-id", "trace-me-42")],
        "{}",
    )
    .await?;
    assert_eq!(kept.headers["x-request-id"], "trace-me-42");
    // Errors carry one too; a bad token does not matter where none is needed.
    let unknown = http(
        &s.addr,
        "GET",
        "/nowhere",
        &[("authorization", "Bearer nope")],
        "",
    )
    .await?;
    assert_eq!(unknown.status, 404);
    assert!(unknown.headers.contains_key("x-request-id"));
    let bad_token = http(
        &s.addr,
        "POST",
        path,
        &[("authorization", "Bearer secret_nope")],
        "{}",
    )
    .await?;
    assert_eq!(bad_token.status, 200, "{}", bad_token.json);

    // gRPC: the same, in metadata.
    let mut inference = s.inference(None).await?;
    let reply = inference.predict(predict_request("slow", "{}")).await?;
    let grpc_id = reply
        .metadata()
        .get("x-request-id")
        .context("no x-request-id")?;
    assert!(uuid::Uuid::parse_str(grpc_id.to_str()?).is_ok());
    let mut given = tonic::Request::new(predict_request("slow", "{}"));
    given
        .metadata_mut()
        .insert("x-request-id", "grpc-trace-7".parse()?);
    let reply = inference.predict(given).await?;
    assert_eq!(
        reply
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("grpc-trace-7")
    );

    authentication(&s, &alice).await?;
    grpc_deadline(&s).await?;

    // The spans carry the ids and, for gRPC, the service and method.
    s.log_with(&[
        "trace-me-42",
        "grpc-trace-7",
        "aibro.v1.Inference",
        "Predict",
    ])
    .await?;
    Ok(())
}

/// The layer authenticates; handlers refuse a missing or bad token as before.
async fn authentication(s: &Scheduler, alice: &str) -> Result<()> {
    let list = || pb::ListJobsRequest::default();
    s.jobs(Some(alice)).await?.list_jobs(list()).await?;
    for (token, says) in [
        (None, "missing access token"),
        (Some("secret_nope"), "invalid access token"),
        (Some("not-even-a-secret"), "invalid access token"),
    ] {
        let e = s.jobs(token).await?.list_jobs(list()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    Ok(())
}

/// `grpc-timeout: 200m` on a call that would take 3 s: DEADLINE_EXCEEDED
/// from the server soon after 200 ms (sent by hand: tonic's client would end
/// the call itself, as CANCELLED); a malformed one is INVALID_ARGUMENT.
async fn grpc_deadline(s: &Scheduler) -> Result<()> {
    let started = Instant::now();
    let (status, message) = raw_grpc_predict(&s.addr, "200m", r#"{"sleep": 3}"#).await?;
    let took = started.elapsed();
    assert_eq!(status, "4", "DEADLINE_EXCEEDED expected: {message}");
    assert!(message.contains("grpc-timeout"), "{message}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let (status, message) = raw_grpc_predict(&s.addr, "soon", "{}").await?;
    assert_eq!(status, "3", "INVALID_ARGUMENT expected: {message}");
    assert!(message.contains("grpc-timeout"), "{message}");
    Ok(())
}

/// A gRPC Predict of `payload` on model `slow` with `grpc-timeout: timeout`,
/// over plain HTTP/2: the grpc-status and grpc-message of its trailers-only answer.
async fn raw_grpc_predict(addr: &str, timeout: &str, payload: &str) -> Result<(String, String)> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (mut h2, conn) = http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    let message = prost::Message::encode_to_vec(&predict_request("slow", payload));
    let mut frame = vec![0u8];
    frame.extend(u32::try_from(message.len())?.to_be_bytes());
    frame.extend(message);
    let request = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/aibro.v1.Inference/Predict"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Full::new(Bytes::from(frame)))?;
    let response = h2.send_request(request).await?;
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
            .unwrap_or_default()
    };
    Ok((header("grpc-status"), header("grpc-message")))
}

#[tokio::test]
async fn past_the_limit_requests_are_refused_at_once() -> Result<()> {
    let s = Scheduler::start_with(&["--max-concurrent-requests", "1"]).await?;
    let alice = s.user("alice").await?;
    let slow = repo(SLOW);
    deploy(&s, &alice, "slow", slow.path()).await?;

    let blocker = hold_the_only_place(&s).await?;
    // HTTP: 503 overloaded with Retry-After, at once.
    let started = Instant::now();
    let r = http(&s.addr, "POST", "/v1/alice/public/slow/predict", &[], "{}").await?;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (503, Some("overloaded")),
        "{}",
        r.json
    );
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.json["error"]
        .as_str()
        .unwrap_or_default()
        .contains("--max-concurrent-requests"));
    // gRPC: UNAVAILABLE.
    let e = s
        .predict("alice", "public", "slow", "{}")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The agents' gateway is not shed: a call gets its own answer.
    let mut gateway = pb::agent_gateway_client::AgentGatewayClient::with_interceptor(
        s.channel().await?,
        aibro_tests::Bearer(Some("Bearer agent_not-a-credential".parse()?)),
    );
    let e = gateway
        .report(pb::ReportRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // Once the slow call answers, its place is free again.
    let done = blocker.await??;
    assert_eq!(done.status, 200, "{}", done.json);
    let r = http(&s.addr, "POST", "/v1/alice/public/slow/predict", &[], "{}").await?;
    assert_eq!(r.status, 200, "{}", r.json);
    Ok(())
}

/// Starts a 3 s predict and returns once it holds the only place: a probe
/// (a request for no path, which answers at once) is then shed. A probe that
/// took the place as the predict arrived made the predict shed instead: it
/// is sent again.
async fn hold_the_only_place(s: &Scheduler) -> Result<tokio::task::JoinHandle<Result<Reply>>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let start = || {
        let addr = s.addr.clone();
        tokio::spawn(async move {
            http(
                &addr,
                "POST",
                "/v1/alice/public/slow/predict",
                &[],
                r#"{"sleep": 3}"#,
            )
            .await
        })
    };
    let mut blocker = start();
    while Instant::now() < deadline {
        if blocker.is_finished() {
            let r = blocker.await??;
            assert_eq!(r.status, 503, "{}", r.json);
            blocker = start();
        }
        if http(&s.addr, "GET", "/probe", &[], "").await?.status == 503 {
            return Ok(blocker);
        }
    }
    bail!("the slow predict never held the place")
}
