//! What console handlers take from a request: the signed-in [`Signed`]
//! session (pages redirect to sign-in without one), a [`Posted`] form whose
//! CSRF token matched (401 without a session, 403 with a wrong token), the
//! query string's fields, and the client's IP address. A browser's POST
//! from another site is refused before any of that ([`same_origin`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::session::{self, Session};
use super::Console;
use crate::api::http::HttpError;

/// The most bytes a console form may post.
const MAX_FORM_BYTES: usize = 64 << 10;
pub(super) const SIGN_IN: &str = "/console/signin";

/// A request's fields, from a query string or a form body.
pub(super) type Fields = HashMap<String, String>;

pub(super) fn fields(encoded: &[u8]) -> Fields {
    form_urlencoded::parse(encoded).into_owned().collect()
}

/// The session of a signed-in caller.
pub(super) struct Signed(pub(super) Session);

impl FromRequestParts<Arc<Console>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let session = parts
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::session_id)
            .and_then(|id| console.sessions.find(id));
        match session {
            Some(session) => Ok(Signed(session)),
            None if parts.method == Method::GET => Err(Redirect::to(SIGN_IN).into_response()),
            None => Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "sign in first at /console/signin",
            )
            .into_response()),
        }
    }
}

/// A posted form of a signed-in session whose CSRF token matched.
pub(super) struct Posted {
    pub(super) session: Session,
    pub(super) fields: Fields,
}

impl FromRequest<Arc<Console>> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, console: &Arc<Console>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        same_origin(&parts.headers, &parts.uri).map_err(IntoResponse::into_response)?;
        let Signed(session) = Signed::from_request_parts(&mut parts, console).await?;
        let fields = form_fields(body)
            .await
            .map_err(IntoResponse::into_response)?;
        if !session.csrf_ok(fields.get("csrf").map(String::as_str)) {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "the form's CSRF token is missing or wrong: reload the page and try again",
            )
            .into_response());
        }
        Ok(Posted { session, fields })
    }
}

/// Refuses a browser's request sent by a page of another site: its
/// `Sec-Fetch-Site` says so, or its `Origin` is not this host. (A sign-in
/// from another site would sign the victim in as the attacker.) Clients
/// that send neither header (curl, scripts) are not browsers led astray.
pub(super) fn same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), HttpError> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    // HTTP/1.1 names the host in `Host`, HTTP/2 in the URI's authority.
    let host = text(HOST.as_str()).or_else(|| uri.authority().map(|a| a.as_str()));
    let cross_site = text("sec-fetch-site").is_some_and(|site| site == "cross-site");
    let foreign_origin = text(ORIGIN.as_str()).is_some_and(|origin| {
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        authority.is_none() || authority != host
    });
    if cross_site || foreign_origin {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "the console takes forms from its own pages only",
        ));
    }
    Ok(())
}

/// The fields of a form body of at most [`MAX_FORM_BYTES`].
pub(super) async fn form_fields(body: Body) -> Result<Fields, HttpError> {
    let bytes = to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a console form is at most {MAX_FORM_BYTES} bytes"),
        )
    })?;
    Ok(fields(&bytes))
}

/// The peer's address as the server accepted it (plain TCP or TLS).
pub(super) fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    })?;
    tcp.remote_addr().map(|a| a.ip())
}
