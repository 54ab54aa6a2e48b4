//! Crash points, for the crash-recovery tests: with `AIBRO_CRASH_AT=<name>`
//! in its environment the scheduler aborts at once (no destructors, no
//! flush: as `kill -9` would) when it reaches the point of that name. Each
//! point sits between two steps whose order matters for recovery (a commit
//! and the side effect that follows it). Without the variable a point costs
//! one load of a cached value.

use std::sync::OnceLock;

/// The environment variable that names the point to crash at.
pub const CRASH_AT: &str = "AIBRO_CRASH_AT";

/// Every crash point, for tests that walk them all.
pub const POINTS: [&str; 10] = [
    "deploy.created",
    "fit.created",
    "launch.provisioned",
    "launch.recorded",
    "report.applied",
    "close.marked",
    "close.provider_done",
    "wake.marked",
    "complete.recorded",
    "train.returned",
];

fn armed() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var(CRASH_AT).ok()).as_deref()
}

/// Aborts the process if `name` is the armed crash point.
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unknown crash point {name}");
    if armed() == Some(name) {
        eprintln!("crash point `{name}` reached: aborting");
        std::process::abort();
    }
}
