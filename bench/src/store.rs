//! Durable status transitions per second through the scheduler's store (one
//! sled transaction checked against the status model, a timeline event, and a
//! group-committed flush before each call returns), beside raw sled doing the
//! least the same promise needs: one insert, then a flush, either shared
//! (group commit) or one per write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aibro_scheduler::records::TimelineNote;
use aibro_scheduler::records::{InstanceRecord, JobRecord};
use aibro_scheduler::state::{self, InstanceEvent, JobEvent, JobKind, Role};
use aibro_scheduler::store::{Store, StoreError};

use crate::stats::thousands;

#[derive(clap::Args)]
pub struct StoreArgs {
    /// How long each row runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent writers.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub writers: Vec<usize>,
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let window = Duration::from_secs(args.seconds);
    println!(
        "store: durable status transitions per second ({} s per row)",
        args.seconds
    );
    println!("{:<52} {:>8} {:>12}", "path", "writers", "per s");
    for &w in &args.writers {
        let n = aibro_transitions(w, window).await?;
        println!(
            "{:<52} {:>8} {:>12}",
            "aibro store: transition + event, group commit",
            w,
            thousands(n)
        );
        let n = raw_sled(w, window, Flush::Group).await?;
        println!(
            "{:<52} {:>8} {:>12}",
            "raw sled: insert, group commit",
            w,
            thousands(n)
        );
        let n = raw_sled(w, window, Flush::EachWrite).await?;
        println!(
            "{:<52} {:>8} {:>12}",
            "raw sled: insert, flush per write",
            w,
            thousands(n)
        );
    }
    Ok(())
}

/// Each writer owns a deployed job and moves its cooling instance between
/// EXECUTING and COOLING, one committed, flushed transition per call.
async fn aibro_transitions(writers: usize, window: Duration) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    for w in 0..writers {
        deployed_job(&store, &format!("job-{w}")).await?;
    }
    let count = count_for(writers, window, move |w, i| {
        let store = store.clone();
        async move {
            let event = if i % 2 == 0 {
                InstanceEvent::Idle
            } else {
                InstanceEvent::Busy
            };
            store
                .update(&format!("job-{w}"), move |_, insts| {
                    let cooling = &mut insts[1];
                    cooling.state = state::next_instance(cooling.state, event)?;
                    Ok(vec![])
                })
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        }
    })
    .await?;
    Ok(count as f64 / window.as_secs_f64())
}

/// A job DEPLOYED with its standby and cooling instance EXECUTING.
async fn deployed_job(store: &Store, id: &str) -> Result<(), StoreError> {
    let mut job = JobRecord::queued(
        id.into(),
        "bench",
        JobKind::Inference,
        "sha256:00".into(),
        0,
    );
    job.model_name = id.into();
    job.standby = "local.small.od".into();
    job.cooling = Some("local.large.od".into());
    store.create_job(job).await?;
    let (standby, cooling) = (format!("{id}-s"), format!("{id}-c"));
    store
        .update(id, |job, insts| {
            job.state = state::next_job(job.kind, job.state, JobEvent::InstanceLaunched)?;
            job.state = state::next_job(job.kind, job.state, JobEvent::Loading)?;
            job.state = state::next_job(job.kind, job.state, JobEvent::Serving)?;
            for (iid, role, machine) in [
                (&standby, Role::Standby, "local.small.od"),
                (&cooling, Role::Cooling, "local.large.od"),
            ] {
                let mut inst = InstanceRecord::launching(iid, id, role, machine, 0);
                inst.state = state::next_instance(inst.state, InstanceEvent::Ready)?;
                insts.push(inst);
                job.instances.push(iid.clone());
            }
            Ok(vec![TimelineNote::phase(&standby, "deployed")])
        })
        .await
        .map(drop)
}

#[derive(Clone, Copy, PartialEq)]
enum Flush {
    Group,
    EachWrite,
}

/// Raw sled: each write inserts one key, then waits for a flush that started
/// after it (one flusher shared by all writers), or flushes itself.
async fn raw_sled(writers: usize, window: Duration, flush: Flush) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()?;
    let group = Arc::new(tokio::sync::Mutex::new(()));
    let flushed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = count_for(writers, window, move |w, i| {
        let (db, group, flushed, issued) =
            (db.clone(), group.clone(), flushed.clone(), issued.clone());
        async move {
            use std::sync::atomic::Ordering::SeqCst;
            db.insert(format!("{w}/{i}"), &b"transition"[..])?;
            match flush {
                Flush::EachWrite => {
                    let db = db.clone();
                    tokio::task::spawn_blocking(move || db.flush()).await??;
                }
                Flush::Group => {
                    // Group commit: the writer that gets the lock flushes
                    // for everyone who wrote before the flush began.
                    let mine = issued.fetch_add(1, SeqCst) + 1;
                    let _turn = group.lock().await;
                    if flushed.load(SeqCst) < mine {
                        let upto = issued.load(SeqCst);
                        let db = db.clone();
                        tokio::task::spawn_blocking(move || db.flush()).await??;
                        flushed.store(upto, SeqCst);
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }
    })
    .await?;
    Ok(count as f64 / window.as_secs_f64())
}

/// Runs `op(writer, i)` in `writers` closed loops for `window`; returns how
/// many calls completed.
async fn count_for<F, Fut>(writers: usize, window: Duration, op: F) -> anyhow::Result<u64>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let end = Instant::now() + window;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < end {
                    op(w, i).await?;
                    i += 1;
                }
                Ok::<_, anyhow::Error>(i)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total)
}
