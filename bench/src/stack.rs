//! `aibro-bench stack`: the CPU the scheduler's tower stack adds per request,
//! in-process: a trivial inner service called N times bare, inside the
//! minimal stack (deadlines only) and inside the whole one (request ids and
//! spans, load shedding, authentication with a real token), on this thread's
//! CPU clock. No log subscriber is installed: spans cost what they cost when
//! INFO is filtered out; the access line's formatting comes on top. Beside
//! them, the bare service recording one prediction into the scheduler's
//! metrics (what `Control::predict` does) with `--metrics on` and off.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use aibro_scheduler::api::stack::{HttpService, Stack};
use aibro_scheduler::auth::Auth;
use aibro_scheduler::metrics::{Metrics, Outcome};
use aibro_scheduler::store::Store;
use axum::body::Body;
use axum::http::{Request, Response};
use tower::ServiceExt;

use crate::stats::{print_table, thousands};

#[derive(clap::Args)]
pub struct StackArgs {
    /// Requests per variant.
    #[arg(long, default_value_t = 200_000)]
    requests: u32,
}

pub async fn run(args: StackArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let auth = Auth::open(Store::open(dir.path())?).await?;
    let token = auth.create_token("bench").await?;
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let minimal = Stack {
        trace: false,
        max_concurrent: None,
        auth: None,
        max_deadline: Duration::from_secs(3600),
    };
    let whole = Stack {
        trace: true,
        max_concurrent: Some(1024),
        auth: Some(auth),
        ..minimal.clone()
    };
    let bare = per_request(inner, &token, args.requests).await;
    let rows: Vec<Vec<String>> = [
        ("bare service", bare),
        (
            "minimal stack (deadlines)",
            per_request(minimal.around(inner), &token, args.requests).await,
        ),
        (
            "whole stack",
            per_request(whole.around(inner), &token, args.requests).await,
        ),
        (
            "bare + metrics on (one prediction recorded)",
            per_request(recording(metrics_on(dir.path())?), &token, args.requests).await,
        ),
        (
            "bare + metrics off",
            per_request(recording(Metrics::off()), &token, args.requests).await,
        ),
    ]
    .into_iter()
    .map(|(name, cpu)| {
        vec![
            name.to_string(),
            format!("{:.2}", cpu.as_secs_f64() * 1e6),
            format!("{:.2}", (cpu.saturating_sub(bare)).as_secs_f64() * 1e6),
        ]
    })
    .collect();
    println!(
        "tower stack, {} requests each",
        thousands(f64::from(args.requests))
    );
    print_table(&["variant", "CPU us/request", "added us"], &rows);
    Ok(())
}

/// The scheduler's metrics, on, with their store's timings and an empty census.
fn metrics_on(dir: &std::path::Path) -> anyhow::Result<Metrics> {
    let store = Store::open(&dir.join("metrics"))?;
    Ok(Metrics::new(store.timings(), Box::new(|| None)))
}

/// The bare service, recording each call into `metrics` as `Control::predict`
/// records a prediction.
fn recording(metrics: Metrics) -> impl HttpService {
    let metrics = Arc::new(metrics);
    tower::service_fn(move |_: Request<Body>| {
        if let Some(timer) = metrics.predict_started("bench", "echo") {
            timer.finish(Outcome::Ok);
        }
        async { Ok::<_, Infallible>(Response::new(Body::empty())) }
    })
}

/// This thread's CPU time per call of `service` on a predict request.
async fn per_request(service: impl HttpService, token: &str, n: u32) -> Duration {
    let start = thread_cpu();
    for _ in 0..n {
        let request = Request::post("/v1/owner/client/model/predict")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("a request");
        let _ = service.clone().oneshot(request).await;
    }
    (thread_cpu() - start) / n
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
