//! The HTTP predict URL on the scheduler's gRPC port: HTTP/1.1 keep-alive
//! and HTTP/2 (prior knowledge) clients, every error as JSON with its status,
//! h2 and HTTP/1.1 over TLS by ALPN, a truncated body, CORS only when configured, gRPC
//! still served beside it, and a client id that never reaches the log.

use std::time::{Duration, Instant};

use aibro_proto::v1::JobStatus;
use aibro_tests::{deploy_request, example, repo, tls_connect, Scheduler};
use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client id distinctive enough to grep the log for.
const CLIENT: &str = "c-zq81x-never-logged";

/// run() that raises or sleeps on request; load_model() takes a while, so
/// that a request right after the deploy finds no instance serving yet.
const MODES: &str = r#"
import time

def load_model():
    time.sleep(3)
    return {}

def run(model, data):
    if data.get("raise"):
        raise ValueError("boom from run")
    time.sleep(data.get("sleep", 0))
    return {"ok": data}
"#;

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error reply: its status, JSON `code`, and a part of its message.
    fn assert_error(&self, status: u16, code: &str, text: &str) {
        let json = self.json();
        assert_eq!(
            (self.status, json["code"].as_str()),
            (status, Some(code)),
            "{json}"
        );
        let message = json["error"].as_str().unwrap_or_default();
        assert!(message.contains(text), "{message}");
        assert_eq!(self.headers["content-type"], "application/json");
    }
}

fn url(owner: &str, client: &str, model: &str) -> String {
    format!("/v1/{owner}/{client}/{model}/predict")
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut r = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

async fn read(response: hyper::Response<hyper::body::Incoming>) -> Result<Reply> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// One HTTP/1.1 connection (kept alive between requests).
async fn http1_client(addr: &str) -> Result<http1::SendRequest<Full<Bytes>>> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (sender, conn) = http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    client: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Reply> {
    client.ready().await?;
    read(client.send_request(request).await?).await
}

/// One request on a fresh HTTP/1.1 connection.
async fn once(addr: &str, request: Request<Full<Bytes>>) -> Result<Reply> {
    send(&mut http1_client(addr).await?, request).await
}

/// Deploys `dir` as `model` for `client_ids`; returns the job id.
async fn deploy(s: &Scheduler, token: &str, model: &str, dir: &std::path::Path) -> Result<String> {
    let digest = s.upload_dir(token, dir).await?;
    let mut r = deploy_request(model, &digest);
    r.client_ids = vec![CLIENT.into()];
    s.deploy_with(token, r).await
}

#[tokio::test]
async fn predict_over_http1_and_http2_with_json_errors() -> Result<()> {
    let s = Scheduler::start_with(&["--max-payload-bytes", "4096"]).await?;
    let alice = s.user("alice").await?;
    let echo = deploy(&s, &alice, "echo", &example("echo")).await?;
    let modes_repo = repo(MODES);
    let modes = deploy(&s, &alice, "modes", modes_repo.path()).await?;
    // No instance serves `modes` yet: 503 with Retry-After.
    let early = once(
        &s.addr,
        request("POST", &url("alice", CLIENT, "modes"), &[], "{}"),
    )
    .await?;
    early.assert_error(503, "unavailable", "not serving yet");
    assert_eq!(early.headers["retry-after"], "1");
    s.wait_status(&alice, &echo, JobStatus::Deployed).await?;
    s.wait_status(&alice, &modes, JobStatus::Deployed).await?;

    // Several predicts on one kept-alive HTTP/1.1 connection: JSON by
    // default (no content type) and when named; other types as bytes.
    let mut c = http1_client(&s.addr).await?;
    let path = url("alice", CLIENT, "echo");
    for i in 0..3 {
        let r = send(
            &mut c,
            request("POST", &path, &[], &format!(r#"{{"i": {i}}}"#)),
        )
        .await?;
        assert_eq!(
            (r.status, &r.headers["content-type"]),
            (200, &"application/json".parse()?)
        );
        assert_eq!(r.json()["echo"]["i"], i);
    }
    let json = [("content-type", "application/json")];
    let r = send(&mut c, request("POST", &path, &json, r#"{"a": [1, 2]}"#)).await?;
    assert_eq!(r.json()["echo"]["a"], serde_json::json!([1, 2]));
    let text = [("content-type", "text/plain")];
    let r = send(&mut c, request("POST", &path, &text, "not json")).await?;
    assert_eq!(r.json()["echo"], "not json");

    // HTTP/2 with prior knowledge, on the same port.
    let io = TokioIo::new(TcpStream::connect(&s.addr).await?);
    let (mut h2, conn) = http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    let r = read(
        h2.send_request(request("POST", &path, &json, r#"{"h2": true}"#))
            .await?,
    )
    .await?;
    assert_eq!(
        (r.status, r.json()["echo"]["h2"].as_bool()),
        (200, Some(true))
    );

    // gRPC Predict still answers on the same port.
    let grpc = s.predict("alice", CLIENT, "echo", r#"{"g": 1}"#).await?;
    assert!(String::from_utf8_lossy(&grpc.output).contains("\"g\""));

    client_errors(&s).await?;
    model_errors(&s).await?;

    // The client id, a credential, is not in the log; the redacted path is.
    let log = s.log_with(&["/v1/alice/***/echo/predict"]).await?;
    assert!(!log.contains(CLIENT), "the client id was logged:\n{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
    Ok(())
}

/// Requests the scheduler refuses before any model runs.
async fn client_errors(s: &Scheduler) -> Result<()> {
    let path = url("alice", CLIENT, "echo");
    once(
        &s.addr,
        request("POST", &url("alice", "intruder", "echo"), &[], "{}"),
    )
    .await?
    .assert_error(403, "client_not_allowed", "may not call");
    once(
        &s.addr,
        request("POST", &url("alice", CLIENT, "nope"), &[], "{}"),
    )
    .await?
    .assert_error(404, "model_not_found", "no deployed model");
    once(&s.addr, request("POST", "/v2/anything", &[], "{}"))
        .await?
        .assert_error(404, "unknown_path", "predict at POST");
    let get = once(&s.addr, request("GET", &path, &[], "")).await?;
    get.assert_error(405, "method_not_allowed", "POST");
    assert_eq!(get.headers["allow"], "POST");
    once(&s.addr, request("POST", &path, &[], &"x".repeat(5000)))
        .await?
        .assert_error(413, "payload_too_large", "--max-payload-bytes");
    once(
        &s.addr,
        request("POST", &path, &[("request-timeout", "soon")], "{}"),
    )
    .await?
    .assert_error(400, "bad_request_timeout", "seconds");
    truncated_bodies(s, &path).await
}

/// A body shorter than its Content-Length: 400 once the client gives up
/// (closes its side) or the request's deadline passes, never a hang.
async fn truncated_bodies(s: &Scheduler, path: &str) -> Result<()> {
    for close in [true, false] {
        let mut stream = TcpStream::connect(&s.addr).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nrequest-timeout: 0.3\r\n\r\n{{\"a\":"
        );
        stream.write_all(head.as_bytes()).await?;
        if close {
            stream.shutdown().await?;
        }
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .context("the scheduler hung on a truncated body")??;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("incomplete_body"), "{answer}");
    }
    Ok(())
}

/// Errors of the model itself: bad input, a raising run(), a slow one.
async fn model_errors(s: &Scheduler) -> Result<()> {
    let modes = url("alice", CLIENT, "modes");
    once(&s.addr, request("POST", &modes, &[], "{not json"))
        .await?
        .assert_error(400, "invalid_input", "JSON");
    once(&s.addr, request("POST", &modes, &[], r#"{"raise": true}"#))
        .await?
        .assert_error(500, "run_raised", "ValueError: boom from run");
    let started = Instant::now();
    let slow = request(
        "POST",
        &modes,
        &[("request-timeout", "0.2")],
        r#"{"sleep": 3}"#,
    );
    once(&s.addr, slow)
        .await?
        .assert_error(504, "deadline_exceeded", "Request-Timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn http2_and_http1_over_tls_by_alpn() -> Result<()> {
    let (s, certified, _certs) = aibro_tests::self_signed_scheduler(&[]).await?;
    let path = format!("https://{}{}", s.addr, url("tess", "public", "echo"));

    let tls = tls_connect(&s.addr, &certified, &[b"h2", b"http/1.1"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    read(h2.send_request(request("POST", &path, &[], "{}")).await?)
        .await?
        .assert_error(404, "model_not_found", "echo");

    // An HTTP/1.1-only client (a load balancer, curl --http1.1).
    let tls = tls_connect(&s.addr, &certified, &[b"http/1.1"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let path = url("tess", "public", "echo");
    read(h1.send_request(request("POST", &path, &[], "{}")).await?)
        .await?
        .assert_error(404, "model_not_found", "echo");
    // gRPC over the same TLS port still works.
    let grpc = s.predict("tess", "public", "echo", "{}").await.unwrap_err();
    assert_eq!(grpc.code(), tonic::Code::NotFound, "{grpc:?}");
    Ok(())
}

/// A CORS preflight for the predict URL from `origin`.
fn preflight(origin: &str) -> Request<Full<Bytes>> {
    request(
        "OPTIONS",
        &url("alice", "public", "echo"),
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        "",
    )
}

#[tokio::test]
async fn cors_is_answered_only_when_configured() -> Result<()> {
    let plain = Scheduler::start().await?;
    let r = once(&plain.addr, preflight("https://app.example")).await?;
    assert_eq!(r.status, 405);
    assert!(!r.headers.contains_key("access-control-allow-origin"));

    let s = Scheduler::start_with(&["--http-cors-origin", "https://app.example"]).await?;
    let r = once(&s.addr, preflight("https://app.example")).await?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = r.headers["access-control-allow-methods"].to_str()?;
    assert!(methods.contains("POST"), "{methods}");
    // A page may call the Open Inference Protocol with its headers, and read
    // the request id and binary header length back.
    let r = once(
        &s.addr,
        request(
            "OPTIONS",
            "/v2/models/alice~echo/infer",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "aibro-client-id,inference-header-content-length,request-timeout",
                ),
            ],
            "",
        ),
    )
    .await?;
    assert_eq!(r.status, 200);
    let allowed = r.headers["access-control-allow-headers"].to_str()?;
    for header in [
        "aibro-client-id",
        "inference-header-content-length",
        "x-request-id",
    ] {
        assert!(allowed.contains(header), "{header} not in {allowed}");
    }
    let other = once(&s.addr, preflight("https://evil.example")).await?;
    assert!(!other.headers.contains_key("access-control-allow-origin"));
    // A plain request from the page gets the header too (here: no such model).
    let r = once(
        &s.addr,
        request(
            "POST",
            &url("alice", "public", "echo"),
            &[("origin", "https://app.example")],
            "{}",
        ),
    )
    .await?;
    r.assert_error(404, "model_not_found", "echo");
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = r.headers["access-control-expose-headers"].to_str()?;
    assert!(exposed.contains("x-request-id"), "{exposed}");
    Ok(())
}
