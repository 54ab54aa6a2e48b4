//! Wall-clock milliseconds that follow tokio's clock: real time normally,
//! virtual time where tokio's clock is paused (timer tests, the simulator), so
//! timelines and the cost ledger agree with the timers that drive them.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

static EPOCH: OnceLock<(u64, Instant)> = OnceLock::new();

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    let (wall, at) = EPOCH.get_or_init(|| (system_ms(), Instant::now()));
    wall + Instant::now().saturating_duration_since(*at).as_millis() as u64
}
