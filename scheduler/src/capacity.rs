//! Live capacity per machine type: how many instances of each type hold a
//! machine now, against the catalog's `capacity`. Waiters are woken when one
//! is released.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
pub struct Capacity {
    used: Mutex<HashMap<String, u32>>,
    freed: Notify,
}

impl Capacity {
    fn try_take(&self, machine_type: &str, capacity: u32) -> bool {
        let mut used = self.used.lock().expect("capacity lock");
        let n = used.entry(machine_type.to_string()).or_default();
        if *n < capacity {
            *n += 1;
            true
        } else {
            false
        }
    }

    /// Takes one machine of the type, waiting until `deadline` for one to be
    /// released. False if none could be had in time.
    pub async fn acquire(&self, machine_type: &str, capacity: u32, deadline: Instant) -> bool {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(machine_type, capacity) {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }

    /// Counts an instance that already holds a machine (recovery at start).
    pub fn hold(&self, machine_type: &str) {
        *self
            .used
            .lock()
            .expect("capacity lock")
            .entry(machine_type.to_string())
            .or_default() += 1;
    }

    pub fn release(&self, machine_type: &str) {
        if let Some(n) = self
            .used
            .lock()
            .expect("capacity lock")
            .get_mut(machine_type)
        {
            *n = n.saturating_sub(1);
        }
        self.freed.notify_waiters();
    }

    pub fn used(&self, machine_type: &str) -> u32 {
        self.used
            .lock()
            .expect("capacity lock")
            .get(machine_type)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_release_until_the_deadline() {
        let cap = std::sync::Arc::new(Capacity::default());
        let soon = Instant::now() + Duration::from_secs(5);
        assert!(cap.acquire("t", 1, soon).await);
        assert!(
            !cap.acquire("t", 1, Instant::now() + Duration::from_secs(5))
                .await
        );
        let waiter = {
            let cap = cap.clone();
            tokio::spawn(async move {
                cap.acquire("t", 1, Instant::now() + Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        cap.release("t");
        assert!(waiter.await.unwrap());
        assert_eq!(cap.used("t"), 1);
    }
}
