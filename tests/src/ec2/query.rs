//! The EC2 Query API on the wire: form-encoded `Action=...&Version=...`
//! parameters, lists as `Name.1`, `Name.2`..., and [`call`] to send one. moto
//! picks the service by the credential scope of the SigV4 `Authorization`
//! header (without one it answers as S3) and checks no signature, so [`call`]
//! sends a fake header that names `ec2`.

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};

use super::{http, xml};

/// The EC2 API version the SDKs send.
pub const API_VERSION: &str = "2016-11-15";

const FAKE_AUTH: &str = "AWS4-HMAC-SHA256 \
    Credential=testing/20240101/us-east-1/ec2/aws4_request, \
    SignedHeaders=host, Signature=0";

/// The parameters of one call, in order.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// The parameters of a URL query and a form body.
    pub(crate) fn parse(query: Option<&str>, body: &[u8]) -> Self {
        let query = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        let pairs = query.chain(form_urlencoded::parse(body));
        Params(
            pairs
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn action(&self) -> &str {
        self.get("Action").unwrap_or_default()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The members of the list `name` (`name.1`, `name.2`...).
    pub(crate) fn list(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| is_member(k, name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether `name`, or a member of the list `name`, is `value`.
    pub(crate) fn has(&self, name: &str, value: &str) -> bool {
        self.get(name) == Some(value) || self.list(name).contains(&value)
    }
}

fn is_member(key: &str, list: &str) -> bool {
    key.strip_prefix(list)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// An answer to a [`call`].
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The texts at `path` in the body (see [`xml::texts`]).
    pub fn texts(&self, path: &[&str]) -> Result<Vec<String>> {
        xml::texts(&self.body, path)
    }

    /// The EC2 error code of an error answer.
    pub fn error_code(&self) -> Option<String> {
        let codes = self.texts(&["Response", "Errors", "Error", "Code"]).ok()?;
        codes.into_iter().next()
    }
}

/// Calls `action` on the EC2 endpoint at `url` with `params`, as a form POST.
pub async fn call(url: &str, action: &str, params: &[(&str, &str)]) -> Result<Reply> {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", action)
        .append_pair("Version", API_VERSION)
        .extend_pairs(params)
        .finish();
    let request = hyper::Request::post(url)
        .header(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header(AUTHORIZATION, FAKE_AUTH)
        .body(Full::new(Bytes::from(body)))?;
    let (parts, body) = http::send(&http::client(), request).await?;
    let body = String::from_utf8(body.to_vec()).context("a non-UTF-8 answer")?;
    Ok(Reply {
        status: parts.status.as_u16(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_numbered_members() {
        let body = b"Action=StopInstances&InstanceId.1=i-a&InstanceId.2=i-b&InstanceIdX=i-c\
            &InstanceId.=i-d&TagSpecification.1.Tag.1.Key=k";
        let params = Params::parse(Some("Version=2016-11-15"), body);
        assert_eq!(params.action(), "StopInstances");
        assert_eq!(params.get("Version"), Some("2016-11-15"));
        assert_eq!(params.list("InstanceId"), ["i-a", "i-b"]);
        assert!(params.has("InstanceId", "i-b"));
        assert!(!params.has("InstanceId", "i-c"));
        assert!(params.has("TagSpecification.1.Tag.1.Key", "k"));
    }

    #[test]
    fn form_values_are_decoded() {
        let params = Params::parse(None, b"UserData=IyEv%2Bw%3D%3D&Name=a+b");
        assert_eq!(params.get("UserData"), Some("IyEv+w=="));
        assert_eq!(params.get("Name"), Some("a b"));
    }
}
