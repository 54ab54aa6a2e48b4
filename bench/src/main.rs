//! `aibro-bench`: the benchmarks of the README's Performance section, each a
//! subcommand that prints a table. They start the real scheduler (local
//! provider) from the same target dir; nothing here is timed in tests.
//!
//! `cargo build --release --workspace && ./target/release/aibro-bench all`

#![deny(clippy::too_many_lines)]

mod batch;
mod console;
mod control;
mod cpu;
mod ec2;
mod fleet;
mod oip;
mod predict;
mod ray;
mod stack;
mod stats;
mod store;
mod wrk;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Predict latency and throughput: via the scheduler (gRPC and HTTP), direct to the agent, and Ray Serve.
    Predict(predict::PredictArgs),
    /// Dynamic batching on vs off, a numpy model at concurrency 1 and 64.
    Batch(batch::BatchArgs),
    /// The console's jobs page with 20,000 jobs (first page), and what 100 open live consoles cost.
    Console(console::ConsoleArgs),
    /// Cold deploy with its per-phase breakdown, cooling wake-up, Fit cold vs warm.
    Control(control::ControlArgs),
    /// 2,000 simulated agents heartbeating, 20,000 jobs: CPU, memory, ListJobs, WatchJob fan-out, restart.
    Fleet(fleet::FleetArgs),
    /// Durable status transitions per second through the store.
    Store(store::StoreArgs),
    /// CPU per request that the scheduler's tower stack adds, in-process.
    Stack(stack::StackArgs),
    /// N concurrent deploys on EC2 types against moto with played boots:
    /// deploy times, EC2 calls per instance, scheduler CPU (needs moto_server;
    /// not part of `all`).
    Ec2(ec2::Ec2Args),
    /// Every benchmark with its defaults, one after the other.
    All,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Predict(args) => predict::run(args).await,
        Bench::Batch(args) => batch::run(args).await,
        Bench::Control(args) => control::run(args).await,
        Bench::Console(args) => console::run(args).await,
        Bench::Fleet(args) => fleet::run(args).await,
        Bench::Store(args) => store::run(args).await,
        Bench::Stack(args) => stack::run(args).await,
        Bench::Ec2(args) => ec2::run(args).await,
        Bench::All => {
            predict::run(defaults()).await?;
            println!();
            batch::run(defaults()).await?;
            println!();
            control::run(defaults()).await?;
            println!();
            fleet::run(defaults()).await?;
            println!();
            store::run(defaults()).await
        }
    }
}

/// A benchmark's arguments with every default.
fn defaults<A: clap::Args + clap::FromArgMatches>() -> A {
    let cmd = A::augment_args(clap::Command::new("bench").no_binary_name(true));
    A::from_arg_matches(&cmd.get_matches_from(std::iter::empty::<&str>()))
        .expect("every argument has a default")
}
