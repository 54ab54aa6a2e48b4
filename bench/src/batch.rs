//! Dynamic batching: `examples/matmul` (a numpy model whose per-call cost is
//! one pass over its weights) deployed twice on one scheduler, with batching
//! on and off, driven through the scheduler at each concurrency.

use std::time::Duration;

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{example, Scheduler};

use crate::predict::{header, print, via_scheduler};
use crate::stats::thousands;

#[derive(clap::Args)]
pub struct BatchArgs {
    /// How long each row runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub concurrency: Vec<usize>,
    /// Most requests per run_batch call.
    #[arg(long, default_value_t = 32)]
    pub max_batch_size: u32,
    /// Milliseconds a batch waits for more after its first.
    #[arg(long, default_value_t = 2)]
    pub max_wait_ms: u32,
}

pub async fn run(args: BatchArgs) -> anyhow::Result<()> {
    let s = Scheduler::start_with(&["--agent-workers", "2"]).await?;
    let token = s.user("bench").await?;
    let digest = s.upload_dir(&token, &example("matmul")).await?;
    println!(
        "dynamic batching, examples/matmul (numpy, 4096x4096 weights; requirements.txt: numpy), \
         2 workers, {} s per row",
        args.seconds
    );
    println!("(the first deploy builds a virtualenv with numpy from PyPI)");
    let configs = [
        (
            args.max_batch_size,
            "matmul-batched",
            "run_batch, batching on",
        ),
        (1, "matmul-unbatched", "run, batching off"),
    ];
    for (size, name, _) in configs {
        let mut request = aibro_tests::deploy_request(name, &digest);
        request.batching = Some(pb::Batching {
            max_batch_size: size,
            max_wait_ms: Some(args.max_wait_ms),
        });
        let job = s.deploy_with(&token, request).await?;
        s.wait_status(&token, &job, JobStatus::Deployed).await?;
    }
    println!(
        "batching on: max batch size {}, max wait {} ms",
        args.max_batch_size, args.max_wait_ms
    );
    let window = Duration::from_secs(args.seconds);
    header();
    let mut per_s = Vec::new();
    for &c in &args.concurrency {
        for (_, name, path) in configs {
            let payload = br#"{"x": [0.5, -1.0, 2.0, 0.25]}"#;
            let row = via_scheduler(&s, path, name, payload, c, window).await?;
            print(&row);
            per_s.push((c, row.per_s));
        }
    }
    for pair in per_s.chunks(2) {
        let [(c, on), (_, off)] = pair else { continue };
        println!(
            "conc {c:>3}: batching on {} req/s vs off {} req/s: {:.1}x",
            thousands(*on),
            thousands(*off),
            on / off
        );
    }
    Ok(())
}
