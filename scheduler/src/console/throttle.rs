//! Sign-in attempts per client IP: at most [`ATTEMPTS`] in a [`WINDOW`];
//! past that, refused until the window ends. Bounded: when [`MAX_CLIENTS`]
//! addresses are tracked, ended windows are forgotten, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(super) const ATTEMPTS: u32 = 5;
pub(super) const WINDOW: Duration = Duration::from_secs(60);
const MAX_CLIENTS: usize = 10_000;

#[derive(Default)]
pub(super) struct Throttle {
    windows: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl Throttle {
    /// Counts an attempt from `ip`: `Err(seconds to wait)` past the limit.
    pub(super) fn attempt(&self, ip: Option<IpAddr>) -> Result<(), u64> {
        let mut windows = self.windows.lock().expect("throttle lock");
        let now = Instant::now();
        if windows.len() >= MAX_CLIENTS && !windows.contains_key(&ip) {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= MAX_CLIENTS {
                let oldest = windows.iter().min_by_key(|(_, w)| w.0).map(|(k, _)| *k);
                oldest.map(|k| windows.remove(&k));
            }
        }
        let (start, count) = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            (*start, *count) = (now, 0);
        }
        if *count >= ATTEMPTS {
            let left = WINDOW.saturating_sub(now.duration_since(*start));
            return Err(left.as_secs().max(1));
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_attempt_in_a_minute_waits() {
        let throttle = Throttle::default();
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        for _ in 0..ATTEMPTS {
            throttle.attempt(a).unwrap();
        }
        let wait = throttle.attempt(a).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        throttle.attempt(b).unwrap();
    }
}
