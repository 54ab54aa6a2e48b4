//! A call's deadline: what the client asks for, bounded by the server's
//! `--request-timeout-s`. gRPC clients ask with `grpc-timeout` (the gRPC
//! wire format, e.g. `200m`), HTTP clients with `Request-Timeout: <seconds>`.
//! The stack reads it once and leaves it in the request's extensions as
//! [`Deadline`] for the handlers.

use std::time::Duration;

use axum::http::HeaderMap;
use tokio::time::Instant;

/// The header an HTTP client sets its deadline with, in (fractional) seconds.
pub(crate) const REQUEST_TIMEOUT: &str = "request-timeout";
/// gRPC's: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// When the call must have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(pub Instant);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadTimeout {
    #[error("header Request-Timeout takes a number of seconds, e.g. `Request-Timeout: 2.5`")]
    Http,
    #[error("header grpc-timeout takes up to 8 digits and a unit (H, M, S, m, u, n), e.g. `200m`")]
    Grpc,
}

/// How long the call may run: its own timeout header (`grpc-timeout` when
/// `grpc`, else `Request-Timeout`), at most `max`.
pub(crate) fn requested(
    headers: &HeaderMap,
    grpc: bool,
    max: Duration,
) -> Result<Duration, BadTimeout> {
    let (name, parse, bad): (_, fn(&str) -> Option<Duration>, _) = if grpc {
        (GRPC_TIMEOUT, grpc_timeout, BadTimeout::Grpc)
    } else {
        (REQUEST_TIMEOUT, seconds, BadTimeout::Http)
    };
    let Some(value) = headers.get(name) else {
        return Ok(max);
    };
    let asked = value.to_str().ok().and_then(parse).ok_or(bad)?;
    Ok(asked.min(max))
}

/// `Request-Timeout`: non-negative seconds; a huge number means no limit of its own.
fn seconds(value: &str) -> Option<Duration> {
    let s = value.trim().parse::<f64>().ok().filter(|s| *s >= 0.0)?;
    Some(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
}

/// `grpc-timeout`, as the gRPC over HTTP/2 spec writes it.
fn grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn grpc_timeouts_in_every_unit_bounded_by_the_server() {
        let cases = [
            ("200m", Duration::from_millis(200)),
            ("3S", Duration::from_secs(3)),
            ("1M", MAX),
            ("2H", MAX),
            ("1500u", Duration::from_micros(1500)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ];
        for (value, want) in cases {
            assert_eq!(requested(&with(GRPC_TIMEOUT, value), true, MAX), Ok(want));
        }
        for bad in ["", "m", "200", "123456789m", "-1S", "1.5S", "10x"] {
            let headers = with(GRPC_TIMEOUT, bad);
            assert_eq!(
                requested(&headers, true, MAX),
                Err(BadTimeout::Grpc),
                "{bad}"
            );
        }
    }

    #[test]
    fn request_timeout_in_seconds_bounded_by_the_server() {
        let h = |v| with(REQUEST_TIMEOUT, v);
        assert_eq!(
            requested(&h("0.25"), false, MAX),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(requested(&h("1e30"), false, MAX), Ok(MAX));
        assert_eq!(requested(&HeaderMap::new(), false, MAX), Ok(MAX));
        for bad in ["soon", "-1", "NaN"] {
            assert_eq!(requested(&h(bad), false, MAX), Err(BadTimeout::Http));
        }
        // Each protocol reads only its own header.
        assert_eq!(requested(&h("0.25"), true, MAX), Ok(MAX));
    }
}
