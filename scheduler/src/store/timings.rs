//! How long the store's sled transactions and its group-commit flushes take,
//! as Prometheus histograms (recorded only once metrics are on).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts};

/// From 10 µs (a small transaction) to 10 s (a disk in trouble).
const BUCKETS: [f64; 16] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0, 10.0,
];

#[derive(Clone)]
pub struct StoreTimings {
    transaction: Histogram,
    flush: Histogram,
    on: Arc<AtomicBool>,
}

fn histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
        .expect("valid metric")
}

impl StoreTimings {
    pub(super) fn new() -> Self {
        StoreTimings {
            transaction: histogram(
                "aibro_store_transaction_duration_seconds",
                "Time of one sled transaction of the store (a status change, a new job), \
                 retries on conflict included, before its flush.",
            ),
            flush: histogram(
                "aibro_store_flush_duration_seconds",
                "Time of one group-commit flush to disk (it makes every change committed \
                 before it durable).",
            ),
            on: Arc::default(),
        }
    }

    /// Starts recording (metrics are on).
    pub fn enable(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    /// When a timed step starts, if timings are recorded.
    pub(super) fn start(&self) -> Option<Instant> {
        self.on.load(Ordering::Relaxed).then(Instant::now)
    }

    pub(super) fn transaction_since(&self, start: Option<Instant>) {
        if let Some(start) = start {
            self.transaction.observe(start.elapsed().as_secs_f64());
        }
    }

    pub(super) fn flush_since(&self, start: Option<Instant>) {
        if let Some(start) = start {
            self.flush.observe(start.elapsed().as_secs_f64());
        }
    }
}

impl Collector for StoreTimings {
    fn desc(&self) -> Vec<&Desc> {
        [self.transaction.desc(), self.flush.desc()].concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        [self.transaction.collect(), self.flush.collect()].concat()
    }
}
