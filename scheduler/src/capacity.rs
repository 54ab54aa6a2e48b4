//! Live capacity per machine type: which instances hold a machine of each type
//! now, against the catalog's `capacity`. A stopped instance holds none.
//! Waiters are woken when a machine is released.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

/// No machine of the type could be had by the deadline.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("no `{0}` machine was free in time")]
pub struct NoneFree(pub String);

/// The instance holds no machine to hand over.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("instance {0} holds no machine")]
pub struct NotHeld(pub String);

#[derive(Default)]
pub struct Capacity {
    /// instance id → machine type, for every instance holding a machine.
    holders: Mutex<HashMap<String, String>>,
    freed: Notify,
}

impl Capacity {
    fn try_take(&self, machine_type: &str, capacity: u32, instance_id: &str) -> bool {
        let mut holders = self.holders.lock().expect("capacity lock");
        if holders.contains_key(instance_id) {
            return true;
        }
        let used = holders.values().filter(|t| *t == machine_type).count();
        if used < capacity as usize {
            holders.insert(instance_id.to_string(), machine_type.to_string());
            true
        } else {
            false
        }
    }

    /// Takes a machine of the type for `instance_id`, waiting until `deadline`
    /// for one to be released (or added: `capacity` is asked again each time).
    pub async fn acquire(
        &self,
        machine_type: &str,
        capacity: impl Fn() -> u32,
        instance_id: &str,
        deadline: Instant,
    ) -> Result<(), NoneFree> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(machine_type, capacity(), instance_id) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(NoneFree(machine_type.to_string()));
            }
        }
    }

    /// Counts an instance that already holds a machine (recovery at start).
    pub fn hold(&self, machine_type: &str, instance_id: &str) {
        self.holders
            .lock()
            .expect("capacity lock")
            .insert(instance_id.to_string(), machine_type.to_string());
    }

    /// Gives the instance's machine back, if it held one.
    pub fn release(&self, instance_id: &str) {
        if self
            .holders
            .lock()
            .expect("capacity lock")
            .remove(instance_id)
            .is_some()
        {
            self.freed.notify_waiters();
        }
    }

    /// Hands `from`'s machine over to `to` (a replacement taking the place of
    /// an instance that goes away).
    pub fn transfer(&self, from: &str, to: &str) -> Result<(), NotHeld> {
        let mut holders = self.holders.lock().expect("capacity lock");
        let machine_type = holders
            .remove(from)
            .ok_or_else(|| NotHeld(from.to_string()))?;
        holders.insert(to.to_string(), machine_type);
        Ok(())
    }

    /// Machines were added (a pool agent joined): waiters look again.
    pub fn added(&self) {
        self.freed.notify_waiters();
    }

    pub fn used(&self, machine_type: &str) -> u32 {
        let holders = self.holders.lock().expect("capacity lock");
        holders.values().filter(|t| *t == machine_type).count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_release_until_the_deadline() {
        let cap = std::sync::Arc::new(Capacity::default());
        let soon = || Instant::now() + Duration::from_secs(5);
        assert!(cap.acquire("t", || 1, "a", soon()).await.is_ok());
        assert!(
            cap.acquire("t", || 1, "a", soon()).await.is_ok(),
            "a holder asking again keeps its machine"
        );
        assert_eq!(
            cap.acquire("t", || 1, "b", soon()).await,
            Err(NoneFree("t".into()))
        );
        let waiter = {
            let cap = cap.clone();
            tokio::spawn(async move {
                cap.acquire("t", || 1, "c", Instant::now() + Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        cap.release("a");
        cap.release("a");
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(cap.used("t"), 1);
        assert!(
            cap.transfer("c", "d").is_ok(),
            "a replacement takes c's machine"
        );
        assert_eq!(cap.transfer("c", "e"), Err(NotHeld("c".into())));
        assert!(cap.acquire("t", || 1, "e", Instant::now()).await.is_err());
        cap.release("d");
        assert_eq!(cap.used("t"), 0);
    }
}
