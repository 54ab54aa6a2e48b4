//! An emulated spot market, for providers without a real one (local): whether
//! a spot request is fulfilled (the catalog's `spot_availability`, or an
//! override, changeable at run time) and interruptions of running spot
//! machines, at random (a rate per machine-hour) or when an admin asks, each
//! announced with a notice period. The scheduler hears of them through the
//! [`Notices`] channel and replaces the machine before the notice ends.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Interruption, ProviderError};
use crate::catalog::MachineType;

/// Where providers announce interruptions.
pub type Notices = mpsc::UnboundedSender<Interruption>;

/// How often the random interruptions are drawn.
const DRAW_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct SpotSettings {
    /// Replaces every type's catalog `spot_availability` when set.
    pub availability: Option<f64>,
    /// Random interruptions per running spot machine and hour.
    pub interruptions_per_hour: f64,
    /// Notice given before an interrupted machine is reclaimed.
    pub notice: Duration,
}

pub struct SpotMarket {
    settings: SpotSettings,
    /// Per machine type, set at run time (admin).
    overrides: Mutex<HashMap<String, f64>>,
    /// Spot machines running now, by instance id.
    running: Mutex<HashSet<String>>,
    notices: Notices,
}

impl SpotMarket {
    pub fn new(settings: SpotSettings, notices: Notices) -> Self {
        SpotMarket {
            settings,
            overrides: Mutex::default(),
            running: Mutex::default(),
            notices,
        }
    }

    /// The probability that a spot request for `kind` is fulfilled now.
    pub fn availability(&self, kind: &MachineType) -> f64 {
        let overrides = self.overrides.lock().expect("spot lock");
        overrides
            .get(&kind.name)
            .copied()
            .or(self.settings.availability)
            .unwrap_or(kind.spot_availability)
    }

    pub fn set_availability(&self, machine_type: &str, availability: f64) {
        self.overrides
            .lock()
            .expect("spot lock")
            .insert(machine_type.to_string(), availability.clamp(0.0, 1.0));
    }

    /// One spot request: fulfilled with the type's availability.
    pub fn fulfilled(&self, kind: &MachineType) -> bool {
        rand::random::<f64>() < self.availability(kind)
    }

    /// A spot machine started running (it may be interrupted from now on).
    pub fn running(&self, instance_id: &str) {
        self.running
            .lock()
            .expect("spot lock")
            .insert(instance_id.to_string());
    }

    /// A spot machine stopped or ended.
    pub fn gone(&self, instance_id: &str) {
        self.running.lock().expect("spot lock").remove(instance_id);
    }

    /// Interrupts a running spot machine: the notice goes out now (`None`: the
    /// default notice period).
    pub fn interrupt(
        &self,
        instance_id: &str,
        notice: Option<Duration>,
    ) -> Result<(), ProviderError> {
        if !self.running.lock().expect("spot lock").remove(instance_id) {
            return Err(ProviderError::NotSpot(instance_id.to_string()));
        }
        let notice = notice.unwrap_or(self.settings.notice);
        tracing::warn!(instance_id, ?notice, "spot interruption");
        let _ = self.notices.send(Interruption {
            instance_id: instance_id.to_string(),
            notice,
        });
        Ok(())
    }

    /// Draws random interruptions until `cancel` (a no-op at rate 0).
    pub async fn run(&self, cancel: CancellationToken) {
        let rate = self.settings.interruptions_per_hour;
        if rate <= 0.0 {
            return;
        }
        // The chance that one machine is interrupted within one draw period.
        let p = 1.0 - (-rate * DRAW_EVERY.as_secs_f64() / 3600.0).exp();
        let mut tick = tokio::time::interval(DRAW_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let hit: Vec<String> = self
                .running
                .lock()
                .expect("spot lock")
                .iter()
                .filter(|_| rand::random::<f64>() < p)
                .cloned()
                .collect();
            for id in hit {
                let _ = self.interrupt(&id, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn market_with(
        availability: Option<f64>,
        interruptions_per_hour: f64,
    ) -> (SpotMarket, mpsc::UnboundedReceiver<Interruption>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let settings = SpotSettings {
            availability,
            interruptions_per_hour,
            notice: Duration::from_secs(120),
        };
        (SpotMarket::new(settings, tx), rx)
    }

    fn market(availability: Option<f64>) -> (SpotMarket, mpsc::UnboundedReceiver<Interruption>) {
        market_with(availability, 0.0)
    }

    #[tokio::test(start_paused = true)]
    async fn random_interruptions_hit_running_spot_machines_with_the_default_notice() {
        // About one interruption per machine-second: within a minute, surely.
        let (m, mut rx) = market_with(None, 3600.0);
        let m = std::sync::Arc::new(m);
        m.running("i1");
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let (m, cancel) = (m.clone(), cancel.clone());
            async move { m.run(cancel).await }
        });
        let notice = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("interrupted within a minute")
            .unwrap();
        assert_eq!(notice.instance_id, "i1");
        assert_eq!(notice.notice, Duration::from_secs(120));
        cancel.cancel();
        run.await.unwrap();
        assert!(rx.try_recv().is_err(), "once only");
    }

    #[test]
    fn availability_comes_from_the_catalog_then_the_flag_then_the_admin() {
        let kind = Catalog::shipped().resolve("local.small").unwrap().kind;
        let (m, _) = market(None);
        assert_eq!(m.availability(&kind), kind.spot_availability);
        let (m, _) = market(Some(0.0));
        assert!(!(0..100).any(|_| m.fulfilled(&kind)));
        m.set_availability("local.small", 1.0);
        assert!((0..100).all(|_| m.fulfilled(&kind)));
    }

    #[test]
    fn only_running_spot_machines_are_interrupted_once() {
        let (m, mut rx) = market(None);
        assert!(matches!(
            m.interrupt("i1", None),
            Err(ProviderError::NotSpot(_))
        ));
        m.running("i1");
        m.interrupt("i1", Some(Duration::from_secs(5))).unwrap();
        let n = rx.try_recv().unwrap();
        assert_eq!(
            (n.instance_id.as_str(), n.notice),
            ("i1", Duration::from_secs(5))
        );
        assert!(
            m.interrupt("i1", None).is_err(),
            "an interrupted machine is gone"
        );
        m.running("i2");
        m.gone("i2");
        assert!(m.interrupt("i2", None).is_err());
    }
}
