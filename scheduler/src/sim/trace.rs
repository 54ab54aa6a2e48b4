//! Request traces: one request per line, as seconds since the deploy
//! (decimals allowed), in any order; `end <seconds>` sets when the day ends
//! (default: the last request); `#` starts a comment.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub requests: Vec<Duration>,
    pub end: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("trace line {line}: {message}")]
pub struct TraceError {
    line: usize,
    message: String,
}

fn seconds(text: &str, line: usize) -> Result<Duration, TraceError> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| TraceError {
            line,
            message: format!("`{text}` is not a number of seconds"),
        })
}

impl Trace {
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut requests = Vec::new();
        let mut end = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.strip_prefix("end") {
                Some(rest) => end = Some(seconds(rest.trim(), i + 1)?),
                None => requests.push(seconds(line, i + 1)?),
            }
        }
        requests.sort();
        let last = requests.last().copied().unwrap_or_default();
        Ok(Trace {
            end: end.unwrap_or(last).max(last),
            requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_comments_and_end() {
        let t = Trace::parse("# a day\n60\n0.5  # first\n\nend 120\n").unwrap();
        assert_eq!(
            t.requests,
            [Duration::from_millis(500), Duration::from_secs(60)]
        );
        assert_eq!(t.end, Duration::from_secs(120));
        assert!(Trace::parse("abc")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(Trace::parse("-3").is_err());
    }
}
