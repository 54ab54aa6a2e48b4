//! aibro-rs model repo: what a model repo is and how it travels. [`archive`] packs
//! a repo directory into a tar.gz, scans an upload without extracting it and
//! unpacks it safely, within [`archive::Limits`]; [`Manifest`] says what a valid
//! archive holds; [`PipOptions`] are the options its Python environment is built
//! with; [`DryRunOutcome`] is the result of a dry run and its one-line JSON form.
//! Pure data and file handling: nothing here starts a process. Shared by the CLI
//! (packing), the scheduler (upload checks) and the agent (unpacking, gear-up).
#![deny(clippy::too_many_lines)]

pub mod archive;
mod dry_run;
mod environment;
pub mod manifest;

pub use dry_run::{DryRunOutcome, ParseError};
pub use environment::PipOptions;
pub use manifest::Manifest;
