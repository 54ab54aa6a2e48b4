//! The scheduler's Prometheus metrics: one registry, owned by the control
//! plane, in Prometheus' text format (`GET /metrics`). Predictions are
//! counted where every protocol passes ([`predict`]); jobs, instances, costs
//! and agents are read from the control plane's state at scrape time
//! ([`census`]); the store times its own transactions and flushes.
//! Built with `--metrics off`, nothing is recorded and there is nothing to scrape.

pub mod census;
pub mod predict;

use prometheus::{Encoder, Registry, TextEncoder};

pub use census::{Census, CensusSource};
pub use predict::{Outcome, PredictTimer};

use crate::store::StoreTimings;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric of the scheduler, or none (`--metrics off`).
pub struct Metrics {
    on: Option<On>,
}

struct On {
    registry: Registry,
    predict: predict::PredictMetrics,
}

impl Metrics {
    /// Metrics that record nothing and have nothing to show.
    pub fn off() -> Metrics {
        Metrics { on: None }
    }

    /// The registry with the prediction metrics, the store's timings and the
    /// census read from `source` at each scrape.
    pub fn new(store: &StoreTimings, source: CensusSource) -> Metrics {
        let registry = Registry::new();
        let predict = predict::PredictMetrics::new();
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(predict.clone()),
            Box::new(store.clone()),
            Box::new(census::CensusCollector::new(source)),
        ];
        for collector in collectors {
            registry
                .register(collector)
                .expect("the scheduler's metrics have distinct names");
        }
        store.enable();
        Metrics {
            on: Some(On { registry, predict }),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Starts timing one prediction of `owner`/`model` (nothing when off).
    pub fn predict_started<'a>(&self, owner: &'a str, model: &'a str) -> Option<PredictTimer<'a>> {
        self.on.as_ref().map(|on| on.predict.start(owner, model))
    }

    /// Drops `owner`/`model`'s prediction series once its job has ended, so
    /// that a long-lived scheduler does not keep every model it ever served.
    pub fn model_ended(&self, owner: &str, model: &str) {
        if let Some(on) = &self.on {
            on.predict.forget(owner, model);
        }
    }

    /// Every metric in the text format; None when metrics are off.
    pub fn scrape(&self) -> Option<String> {
        let on = self.on.as_ref()?;
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&on.registry.gather(), &mut out)
            .expect("the text format encodes into memory");
        Some(String::from_utf8(out).expect("the text format is UTF-8"))
    }
}
