//! Human-readable names and values: status enums without their proto prefix,
//! timestamps (RFC 3339, UTC), durations, sizes and hardware summaries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aibro_proto::v1::{
    Hardware, InstanceRole, InstanceStatus, InstanceSubstatus, JobKind, JobStatus, JobSubstatus,
};
use prost_types::Timestamp;

/// `JOB_STATUS_QUEUING` → `QUEUING`.
fn strip(name: &'static str, prefix: &str) -> &'static str {
    name.strip_prefix(prefix).unwrap_or(name)
}

pub fn job_status(v: i32) -> &'static str {
    JobStatus::try_from(v).map_or("?", |s| strip(s.as_str_name(), "JOB_STATUS_"))
}

pub fn job_substatus(v: i32) -> &'static str {
    JobSubstatus::try_from(v).map_or("?", |s| strip(s.as_str_name(), "JOB_SUBSTATUS_"))
}

pub fn instance_status(v: i32) -> &'static str {
    InstanceStatus::try_from(v).map_or("?", |s| strip(s.as_str_name(), "INSTANCE_STATUS_"))
}

pub fn instance_substatus(v: i32) -> &'static str {
    InstanceSubstatus::try_from(v).map_or("?", |s| strip(s.as_str_name(), "INSTANCE_SUBSTATUS_"))
}

pub fn role(v: i32) -> &'static str {
    InstanceRole::try_from(v).map_or("?", |s| strip(s.as_str_name(), "INSTANCE_ROLE_"))
}

pub fn kind(v: i32) -> &'static str {
    JobKind::try_from(v).map_or("?", |s| strip(s.as_str_name(), "JOB_KIND_"))
}

/// `QUEUING / GEARING_UP_ENV`.
pub fn job_state(status: i32, substatus: i32) -> String {
    format!("{} / {}", job_status(status), job_substatus(substatus))
}

/// `EXECUTING`, or `CLOSED / STOPPED` when the substatus says more.
pub fn instance_state(status: i32, substatus: i32) -> String {
    match InstanceSubstatus::try_from(substatus) {
        Ok(InstanceSubstatus::None | InstanceSubstatus::Unspecified) => {
            instance_status(status).to_string()
        }
        _ => format!(
            "{} / {}",
            instance_status(status),
            instance_substatus(substatus)
        ),
    }
}

/// Timestamp as a `SystemTime` (None when unset or before the epoch).
pub fn system_time(ts: &Option<Timestamp>) -> Option<SystemTime> {
    let ts = ts.as_ref()?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Milliseconds between two timestamps (`b - a`), clamped at 0.
pub fn millis_between(a: &Timestamp, b: &Timestamp) -> u64 {
    let ms = (b.seconds - a.seconds) * 1000 + i64::from(b.nanos - a.nanos) / 1_000_000;
    ms.max(0) as u64
}

/// RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:03.250Z`; "" when unset.
pub fn rfc3339(ts: &Option<Timestamp>) -> String {
    let Some(ts) = ts else { return String::new() };
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ts.nanos.clamp(0, 999_999_999) / 1_000_000
    )
}

/// Days since 1970-01-01 → (year, month, day); H. Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`; "-" when unset.
pub fn ago(ts: &Option<Timestamp>) -> String {
    let Some(t) = system_time(ts) else {
        return "-".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Seconds with two decimals: `1.25s`.
pub fn secs(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `8 CPU, 31.2 GiB, 1x NVIDIA A10G (22.0 GiB)`; "-" when unknown.
pub fn hardware(hw: &Option<Hardware>) -> String {
    let Some(hw) = hw else { return "-".into() };
    let mut parts = vec![
        format!("{} CPU", hw.cpus),
        bytes(hw.memory_bytes).to_string(),
    ];
    let mut gpus: Vec<(String, u32)> = Vec::new();
    for g in &hw.gpus {
        let label = format!("{} ({})", g.name, bytes(g.memory_total_bytes));
        match gpus.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => gpus.push((label, 1)),
        }
    }
    parts.extend(gpus.into_iter().map(|(l, n)| format!("{n}x {l}")));
    parts.join(", ")
}

/// Live GPU memory in use: "0: 1.2 GiB/16.0 GiB, 1: …"; "-" without GPUs.
pub fn gpu_memory(gpus: &[aibro_proto::v1::Gpu]) -> String {
    if gpus.is_empty() {
        return "-".into();
    }
    gpus.iter()
        .map(|g| {
            format!(
                "{}: {}/{}",
                g.index,
                bytes(g.memory_used_bytes),
                bytes(g.memory_total_bytes)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Standard base64 (for non-UTF-8 outputs in JSON).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Dollars with cents, or finer below a dollar: `$42.66`, `$0.0012`.
pub fn usd(v: f64) -> String {
    if v >= 1.0 {
        format!("${v:.2}")
    } else {
        format!("${v:.4}")
    }
}

/// `12.3s`, `4m05s`, `2h00m`.
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_prefix() {
        assert_eq!(job_status(JobStatus::Deployed as i32), "DEPLOYED");
        assert_eq!(
            job_substatus(JobSubstatus::GearingUpEnv as i32),
            "GEARING_UP_ENV"
        );
        assert_eq!(
            instance_state(
                InstanceStatus::Closed as i32,
                InstanceSubstatus::Stopped as i32
            ),
            "CLOSED / STOPPED"
        );
        assert_eq!(
            instance_state(
                InstanceStatus::Executing as i32,
                InstanceSubstatus::None as i32
            ),
            "EXECUTING"
        );
        assert_eq!(job_status(99), "?");
    }

    #[test]
    fn formats_timestamps() {
        let ts = Some(Timestamp {
            seconds: 1_714_564_803,
            nanos: 250_000_000,
        });
        assert_eq!(rfc3339(&ts), "2024-05-01T12:00:03.250Z");
        assert_eq!(
            rfc3339(&Some(Timestamp {
                seconds: 951_782_400,
                nanos: 0
            })),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(rfc3339(&None), "");
    }

    #[test]
    fn millis_between_handles_nanos() {
        let a = Timestamp {
            seconds: 10,
            nanos: 900_000_000,
        };
        let b = Timestamp {
            seconds: 11,
            nanos: 100_000_000,
        };
        assert_eq!(millis_between(&a, &b), 200);
        assert_eq!(millis_between(&b, &a), 0);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(secs(1250), "1.25s");
    }
}
