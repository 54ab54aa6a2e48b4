//! A plain HTTP/1 client for the world: the proxy's calls to moto and the
//! tests' calls to either.

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client as Legacy};
use hyper_util::rt::TokioExecutor;

pub(crate) type Client = Legacy<HttpConnector, Full<Bytes>>;

/// A client on the current runtime (its pooled connections live there).
pub(crate) fn client() -> Client {
    Legacy::builder(TokioExecutor::new()).build_http()
}

/// Sends `request` and reads the whole answer.
pub(crate) async fn send(
    client: &Client,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::http::response::Parts, Bytes)> {
    let uri = request.uri().clone();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("call {uri}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.context("read the answer")?.to_bytes();
    Ok((parts, body))
}
