//! The OIP rows of `aibro-bench predict`: `POST /v2/models/bench~identity/infer`
//! of a [4] FP32 tensor (JSON `data`) beside the plain predict URL of the same
//! model with the same values as JSON, both driven by wrk through the
//! scheduler. The model (bench/peers/identity) has run() only, so both rows
//! call the same user code without numpy and differ only by protocol. The
//! issue's target: OIP infer within 20% of plain HTTP predict.

use std::time::Duration;

use aibro_proto::v1::JobStatus;
use aibro_tests::Scheduler;

use crate::predict::{find, repo_root, via_http, Post, Row};

pub(crate) const PLAIN: &str = "aibro HTTP predict, identity [4]";
pub(crate) const OIP: &str = "aibro OIP infer, identity [4] FP32";

const PLAIN_POST: Post = Post {
    url_path: "/v1/bench/public/identity/predict",
    body: r#"{"x": [1.0, 2.0, 3.0, 4.0]}"#,
    expect: r#""y":[1.0,2.0,3.0,4.0]"#,
};

const OIP_POST: Post = Post {
    url_path: "/v2/models/bench~identity/infer",
    body: r#"{"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}"#,
    expect: r#""name":"y""#,
};

/// Deploys the identity model as `bench` on `s` and measures both rows at
/// each concurrency; `suffix` ends the rows' names.
pub(crate) async fn rows(
    s: &Scheduler,
    token: &str,
    concurrency: &[usize],
    window: Duration,
    suffix: &str,
) -> anyhow::Result<Vec<Row>> {
    let digest = s
        .upload_dir(token, &repo_root().join("bench/peers/identity"))
        .await?;
    let job_id = s.deploy(token, "identity", &digest).await?;
    s.wait_status(token, &job_id, JobStatus::Deployed).await?;
    let (plain, oip) = (format!("{PLAIN}{suffix}"), format!("{OIP}{suffix}"));
    let mut rows = Vec::new();
    for &c in concurrency {
        rows.push(via_http(s, &plain, &PLAIN_POST, c, window).await?);
        rows.push(via_http(s, &oip, &OIP_POST, c, window).await?);
    }
    Ok(rows)
}

/// Each OIP row against the plain row of the same concurrency and threads.
pub(crate) fn summary(rows: &[Row]) {
    println!("\nOIP infer vs plain HTTP predict of the same model (target: within 20%):");
    for r in rows.iter().filter(|r| r.path.starts_with(OIP)) {
        let Some(p) = find(rows, &r.path.replacen(OIP, PLAIN, 1), r.concurrency) else {
            continue;
        };
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "  {:<40} conc {:>3}: req/s x{:.2}, p50 x{:.2}, p99 x{:.2}, CPU/req x{:.2}",
            r.path,
            r.concurrency,
            r.per_s / p.per_s,
            ratio(r.p50, p.p50),
            ratio(r.p99, p.p99),
            ratio(r.cpu_per_req, p.cpu_per_req),
        );
    }
}
