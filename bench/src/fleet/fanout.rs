//! WatchJob fan-out: many watchers on one training job, and how long one
//! change of that job takes to reach every one of them.

use std::time::{Duration, Instant};

use aibro_proto::v1 as pb;
use anyhow::{bail, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::agents::agent_id;
use super::clients;
use super::seed::Seeded;
use super::FleetArgs;
use crate::stats::{dist, Dist};

pub struct Fanout {
    /// Until every watcher has replayed the job's history.
    pub subscribed: Duration,
    /// Per change: until the last watcher has it.
    pub rounds: Option<Dist>,
    /// Per change and watcher: until that watcher has it.
    pub each: Option<Dist>,
    /// Per change: its durable commit (until Report returns).
    pub commit: Option<Dist>,
    /// Timeline events the watchers replayed first.
    pub history: u64,
}

/// Opens `watchers` WatchJob streams (one connection each) on the watched
/// training job; once every one has replayed the history, its trainer's
/// agent reports progress (one durable timeline event per report), one
/// change at a time, and each change is timed until every watcher has it.
pub async fn fanout(
    args: &FleetArgs,
    seeded: &Seeded,
    endpoint: &str,
    join_token: &str,
) -> Result<Fanout> {
    let w = &seeded.watched;
    let token = &seeded.tokens[w.user];
    let history = clients::jobs(endpoint, token)?
        .get_timeline(pb::GetTimelineRequest {
            job_id: w.job_id.clone(),
        })
        .await?
        .into_inner()
        .events
        .iter()
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let t = Instant::now();
    // Dropping the set at return closes every stream.
    let mut watchers = JoinSet::new();
    for _ in 0..args.watchers {
        let mut client = clients::jobs(endpoint, token)?;
        let (tx, job_id) = (tx.clone(), w.job_id.clone());
        watchers.spawn(async move {
            let mut stream = client
                .watch_job(pb::WatchJobRequest { job_id })
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                let _ = tx.send((e.seq, Instant::now()));
            }
            anyhow::Ok(())
        });
    }
    wait_for(history, args.watchers, &mut rx).await?;
    let subscribed = t.elapsed();

    let mut reporter = clients::gateway(endpoint, join_token)?;
    let (mut rounds, mut each, mut commit) = (vec![], vec![], vec![]);
    for r in 1..=args.fanout_rounds as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let progress = pb::Progress {
            job_id: w.job_id.clone(),
            seq: w.progress_seq + r,
            epoch: 3 + r as u32,
            total_epochs: 20 + args.fanout_rounds as u32,
            metrics: [("loss".to_string(), 0.1 / r as f64)].into(),
            log_line: String::new(),
            stream: String::new(),
        };
        let request = pb::ReportRequest {
            instance_id: w.instance_id.clone(),
            agent_id: agent_id(w.agent),
            body: Some(pb::report_request::Body::Progress(progress)),
        };
        let t0 = Instant::now();
        reporter.report(request).await?;
        commit.push(t0.elapsed());
        let got = wait_for(history + r, args.watchers, &mut rx).await?;
        let lat: Vec<Duration> = got
            .iter()
            .map(|at| at.saturating_duration_since(t0))
            .collect();
        rounds.push(*lat.iter().max().expect("watchers"));
        each.extend(lat);
    }
    if watchers.try_join_next().is_some() {
        bail!("a watcher ended early");
    }
    Ok(Fanout {
        subscribed,
        rounds: dist(rounds),
        each: dist(each),
        commit: dist(commit),
        history,
    })
}

/// Every watcher's receipt time of event `seq` (others are skipped).
async fn wait_for(
    seq: u64,
    watchers: usize,
    rx: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
) -> Result<Vec<Instant>> {
    let mut got = Vec::with_capacity(watchers);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < watchers {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((s, at))) if s == seq => got.push(at),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("{} of {watchers} watchers got event {seq}", got.len()),
        }
    }
    Ok(got)
}
