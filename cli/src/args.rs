//! Command-line arguments (clap derive). Plain structs, so the demo can build
//! the same argument values the commands receive and call the same code.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

/// aibro: deploy model repos as prediction APIs on aibro-rs and manage their jobs.
#[derive(Debug, Parser)]
#[command(name = "aibro", version, about)]
pub struct Cli {
    /// Scheduler endpoint.
    #[arg(
        long,
        global = true,
        env = "AIBRO_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    pub endpoint: String,

    /// Access token (`secret_…`), sent as `authorization: Bearer <token>` (not on Predict).
    #[arg(long, global = true, env = "AIBRO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// CA certificate (PEM) to verify an https endpoint with.
    #[arg(long, global = true, env = "AIBRO_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Print data as JSON instead of text (progress, if any, goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload a model repo and deploy it as a prediction API; follow it until DEPLOYED.
    Deploy(DeployArgs),
    /// Upload a training repo and run train(); follow it live, then fetch the outputs.
    Fit(FitArgs),
    /// Send one request to a deployed model and print its output.
    Predict(PredictArgs),
    /// Shut down a job's instances and stop serving (the job ends COMPLETED).
    Complete(JobSelector),
    /// Manage the client ids allowed to call a model's Predict.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// List, inspect and watch jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Show where a job's time went: phases as a table and a bar chart, or
    /// as an SVG Gantt chart (--svg FILE).
    Timeline(TimelineArgs),
    /// Access tokens (admin only).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The emulated spot market of the local provider (admin only).
    #[command(subcommand)]
    Spot(SpotCommand),
    /// List instances (of one job, or of all your jobs).
    Instances(InstancesArgs),
    /// List the machine catalog with prices and live availability.
    Machines,
    /// One-command demo: in-process scheduler, deploy examples/echo, predict, complete.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct FitArgs {
    /// Training repo (train.py with train(output_dir, **args)): a directory or a .tar.gz.
    #[arg(long)]
    pub artifacts: PathBuf,
    /// Machine ids to try in order (repeat); the next is tried when one cannot be had.
    #[arg(long = "machine-id", required = true)]
    pub machine_ids: Vec<String>,
    /// Seconds to hold the instance after the job for a next Fit on the same machine id.
    #[arg(long)]
    pub cool_down: Option<u32>,
    /// Seconds to wait for each machine id before trying the next (default 30).
    #[arg(long)]
    pub wait_request: Option<u32>,
    /// Keyword argument for train(), `key=value` (repeat).
    #[arg(long = "arg")]
    pub args: Vec<String>,
    /// Free text shown with the job.
    #[arg(long)]
    pub description: Option<String>,
    /// User code gets no outbound network (it never reaches this host's
    /// loopback, the scheduler, agents or the cloud metadata address anyway).
    #[arg(long = "isolate-network")]
    pub isolate_network: bool,
    /// Download the trained outputs and unpack them into this directory.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// Model name, unique among your active jobs.
    #[arg(long)]
    pub model_name: String,
    /// Standby machine id (on-demand, e.g. `local.small.od`); never turns off.
    #[arg(long)]
    pub standby: String,
    /// Optional cooling machine id (on-demand); serves first, stops when idle.
    #[arg(long)]
    pub cooling: Option<String>,
    /// Model repo: a directory (packed to tar.gz) or an existing .tar.gz file.
    #[arg(long)]
    pub artifacts: PathBuf,
    /// Seconds without requests before the cooling instance stops (default 600).
    #[arg(long = "cool-down")]
    pub cool_down: Option<u32>,
    /// Client id allowed to call Predict (repeatable); none means public.
    #[arg(long = "client-id")]
    pub client_ids: Vec<String>,
    /// Free-text description of the job.
    #[arg(long)]
    pub description: Option<String>,
    /// Seconds to wait for an instance request to be fulfilled (default 30).
    #[arg(long = "wait-request")]
    pub wait_request: Option<u32>,
    /// Most requests per run_batch(model, items) call, when predict.py defines
    /// run_batch (default 16; 1 turns batching off).
    #[arg(long = "max-batch-size")]
    pub max_batch_size: Option<u32>,
    /// Milliseconds a batch waits for more requests after its first (default 2).
    #[arg(long = "max-batch-wait-ms")]
    pub max_batch_wait_ms: Option<u32>,
    /// Only validate the repo: load_model() and one run() on data/, on a
    /// short-lived instance of the standby type (in the same sandbox as
    /// serving; it shows in `aibro instances` and is charged); nothing stays.
    #[arg(long)]
    pub dryrun: bool,
    /// With --dryrun: run the repo on this machine instead (needs `aibro-agent`
    /// beside `aibro` or on PATH, and Python); no scheduler is asked.
    #[arg(long, requires = "dryrun")]
    pub local: bool,
    /// User code gets no outbound network (it never reaches this host's
    /// loopback, the scheduler, agents or the cloud metadata address anyway).
    #[arg(long = "isolate-network")]
    pub isolate_network: bool,
}

#[derive(Debug, Clone, Args)]
#[group(skip)]
#[command(group(ArgGroup::new("payload").required(true).args(["data", "data_file"])))]
pub struct PredictArgs {
    /// User that owns the deployed model.
    #[arg(long)]
    pub owner: String,
    /// Model name.
    #[arg(long)]
    pub model_name: String,
    /// Client id (`public` for public APIs).
    #[arg(long, default_value = "public")]
    pub client_id: String,
    /// Request payload, inline (JSON by default).
    #[arg(long)]
    pub data: Option<String>,
    /// Request payload, read from a file.
    #[arg(long)]
    pub data_file: Option<PathBuf>,
    /// Content type of the payload (default: application/json, or guessed from
    /// the --data-file extension).
    #[arg(long)]
    pub content_type: Option<String>,
}

/// Selects a job by model name or by id (one of them).
#[derive(Debug, Clone, Default, Args)]
#[group(id = "job", required = true, multiple = false)]
pub struct JobSelector {
    /// Model name of one of your active jobs.
    #[arg(long)]
    pub model_name: Option<String>,
    /// Job id.
    #[arg(long)]
    pub job_id: Option<String>,
}

impl JobSelector {
    pub fn by_id(job_id: impl Into<String>) -> Self {
        Self {
            model_name: None,
            job_id: Some(job_id.into()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Print the client ids allowed to call Predict (empty: public).
    List(JobSelector),
    /// Allow more client ids.
    Add(ClientsChange),
    /// Remove client ids (unknown ids are ignored).
    Remove(ClientsChange),
    /// Make the API public (clears every client id).
    Public(JobSelector),
}

#[derive(Debug, Clone, Args)]
pub struct ClientsChange {
    #[command(flatten)]
    pub job: JobSelector,
    /// Client ids.
    #[arg(required = true, num_args = 1..)]
    pub client_ids: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List your jobs.
    List {
        /// Only active jobs (not CANCELED or COMPLETED).
        #[arg(long)]
        active: bool,
    },
    /// Show one job with its instances.
    Get(JobIdArg),
    /// Print every event of a job (history first) until its stream ends.
    Watch(JobIdArg),
}

#[derive(Debug, Clone, Args)]
pub struct TimelineArgs {
    /// Job id.
    pub job_id: String,
    /// Write the timeline as an SVG Gantt chart (one lane per instance) to
    /// FILE instead of printing the table.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct JobIdArg {
    /// Job id.
    pub job_id: String,
}

#[derive(Debug, Subcommand)]
pub enum SpotCommand {
    /// Interrupt a running spot instance now, as the spot market would: the
    /// scheduler replaces it before the notice ends.
    Interrupt {
        /// Instance id (see `aibro instances`).
        instance_id: String,
        /// Milliseconds of notice before the machine is reclaimed (default:
        /// the scheduler's --spot-notice-ms).
        #[arg(long, default_value_t = 0)]
        notice_ms: u32,
    },
    /// Set the probability that a spot request for a machine type is fulfilled.
    Availability {
        /// Machine type, without `.od` (e.g. `local.small`).
        machine_type: String,
        /// 0.0 (never) to 1.0 (always).
        availability: f64,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an access token for a user (creating the user if new).
    Create {
        /// User name.
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct InstancesArgs {
    /// Only the instances of this job.
    #[arg(long)]
    pub job_id: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Scheduler data dir (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary data dir after the demo (its path is printed).
    #[arg(long)]
    pub keep: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn deploy_parses_repeated_client_ids() {
        let cli = Cli::try_parse_from([
            "aibro",
            "deploy",
            "--model-name",
            "m",
            "--standby",
            "local.small.od",
            "--artifacts",
            "repo",
            "--client-id",
            "a",
            "--client-id",
            "b",
        ])
        .unwrap();
        match cli.command {
            Command::Deploy(d) => assert_eq!(d.client_ids, ["a", "b"]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn predict_requires_exactly_one_payload() {
        let base = ["aibro", "predict", "--owner", "u", "--model-name", "m"];
        assert!(Cli::try_parse_from(base).is_err());
        let both = [&base[..], &["--data", "{}", "--data-file", "x"]].concat();
        assert!(Cli::try_parse_from(both).is_err());
        let one = [&base[..], &["--data", "{}"]].concat();
        assert!(Cli::try_parse_from(one).is_ok());
    }

    #[test]
    fn job_selector_is_required_and_exclusive() {
        assert!(Cli::try_parse_from(["aibro", "complete"]).is_err());
        assert!(Cli::try_parse_from(["aibro", "complete", "--job-id", "j"]).is_ok());
        assert!(
            Cli::try_parse_from(["aibro", "complete", "--job-id", "j", "--model-name", "m"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["aibro", "clients", "add", "--job-id", "j"]).is_err());
        assert!(
            Cli::try_parse_from(["aibro", "clients", "add", "--job-id", "j", "c1", "c2"]).is_ok()
        );
    }
}
