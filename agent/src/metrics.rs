//! The agent's Prometheus metrics, served on `--metrics-listen` (off by
//! default; `<dir>/metrics-addr` then holds the bound address): predictions
//! and their latency by outcome, batch sizes, worker restarts and busy
//! workers, recorded by the worker pools ([`ServingMetrics`]); and read at
//! each scrape, the load the heartbeats carry and the memory of this agent's GPUs.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::link::reporter::Metrics as Load;

/// Where `--metrics-listen` tells the bound address, under the agent's dir.
pub(crate) const ADDR_FILE: &str = "metrics-addr";

/// From 100 µs to a minute.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// What the worker pools record as they serve.
#[derive(Clone)]
pub(crate) struct ServingMetrics {
    predictions: IntCounterVec,
    seconds: HistogramVec,
    batch_sizes: Histogram,
    restarts: IntCounter,
    busy: IntGauge,
}

impl Default for ServingMetrics {
    fn default() -> Self {
        let valid = "valid metric";
        ServingMetrics {
            predictions: IntCounterVec::new(
                Opts::new(
                    "aibro_agent_predictions_total",
                    "Predictions this agent's workers answered, by outcome.",
                ),
                &["outcome"],
            )
            .expect(valid),
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "aibro_agent_prediction_duration_seconds",
                    "Time from a prediction reaching the worker pool to its answer (queueing \
                     included), by outcome.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["outcome"],
            )
            .expect(valid),
            batch_sizes: Histogram::with_opts(
                HistogramOpts::new(
                    "aibro_agent_batch_size",
                    "Requests per call a worker makes: 1 for run(), up to --max-batch-size \
                     for run_batch().",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )
            .expect(valid),
            restarts: IntCounter::new(
                "aibro_agent_worker_restarts_total",
                "Python workers restarted after they died.",
            )
            .expect(valid),
            busy: IntGauge::new(
                "aibro_agent_workers_busy",
                "Python workers inside run() or run_batch() now.",
            )
            .expect(valid),
        }
    }
}

/// Counts a worker as busy while it lives.
pub(crate) struct Busy(IntGauge);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ServingMetrics {
    /// One prediction answered after `elapsed` with `outcome`.
    pub(crate) fn answered(&self, outcome: &str, elapsed: Duration) {
        self.predictions.with_label_values(&[outcome]).inc();
        self.seconds
            .with_label_values(&[outcome])
            .observe(elapsed.as_secs_f64());
    }

    /// A worker takes `size` requests into one call, and is busy until the
    /// returned guard drops.
    pub(crate) fn call(&self, size: usize) -> Busy {
        self.batch_sizes.observe(size as f64);
        self.busy.inc();
        Busy(self.busy.clone())
    }

    pub(crate) fn restarted(&self) {
        self.restarts.inc();
    }
}

impl Collector for ServingMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.predictions.desc(),
            self.seconds.desc(),
            self.batch_sizes.desc(),
            self.restarts.desc(),
            self.busy.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        [
            self.predictions.collect(),
            self.seconds.collect(),
            self.batch_sizes.collect(),
            self.restarts.collect(),
            self.busy.collect(),
        ]
        .concat()
    }
}

/// The load and the GPUs, read at each scrape.
struct Now {
    load: Arc<dyn Load>,
    /// This agent's GPUs (`--gpus`, else all).
    gpus: Vec<u32>,
    shape: Gauges,
}

struct Gauges {
    workers: IntGauge,
    alive: IntGauge,
    queued: IntGauge,
    in_flight: IntGauge,
    gpu_used: IntGaugeVec,
    gpu_total: IntGaugeVec,
}

impl Gauges {
    fn new() -> Gauges {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let per_gpu = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["gpu"]).expect("valid metric")
        };
        Gauges {
            workers: gauge(
                "aibro_agent_workers",
                "Python workers the loaded model should have (0 when none is loaded).",
            ),
            alive: gauge(
                "aibro_agent_workers_alive",
                "Python workers that loaded the model and serve (the rest are restarting).",
            ),
            queued: gauge(
                "aibro_agent_requests_queued",
                "Predictions waiting for a free worker.",
            ),
            in_flight: gauge(
                "aibro_agent_requests_in_flight",
                "Predictions running or waiting for a worker.",
            ),
            gpu_used: per_gpu(
                "aibro_agent_gpu_memory_used_bytes",
                "Memory in use on each of this agent's GPUs (none without GPUs).",
            ),
            gpu_total: per_gpu(
                "aibro_agent_gpu_memory_total_bytes",
                "Memory of each of this agent's GPUs.",
            ),
        }
    }

    fn all(&self) -> [&dyn Collector; 6] {
        [
            &self.workers,
            &self.alive,
            &self.queued,
            &self.in_flight,
            &self.gpu_used,
            &self.gpu_total,
        ]
    }
}

impl Collector for Now {
    fn desc(&self) -> Vec<&Desc> {
        self.shape
            .all()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let g = Gauges::new();
        g.workers.set(self.load.workers().into());
        g.alive.set(self.load.workers_alive().into());
        g.queued.set(self.load.queued().into());
        g.in_flight.set(self.load.in_flight().into());
        for gpu in crate::hardware::only(crate::hardware::gpus(), &self.gpus) {
            let index = gpu.index.to_string();
            let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
            g.gpu_used
                .with_label_values(&[index.as_str()])
                .set(bytes(gpu.memory_used_bytes));
            g.gpu_total
                .with_label_values(&[index.as_str()])
                .set(bytes(gpu.memory_total_bytes));
        }
        g.all().into_iter().flat_map(|c| c.collect()).collect()
    }
}

/// The agent's registry: what the pools record, and the load read at scrape.
fn registry(serving: &ServingMetrics, load: Arc<dyn Load>, gpus: Vec<u32>) -> Registry {
    let registry = Registry::new();
    let now = Now {
        load,
        gpus,
        shape: Gauges::new(),
    };
    registry
        .register(Box::new(serving.clone()))
        .expect("distinct metric names");
    registry
        .register(Box::new(now))
        .expect("distinct metric names");
    registry
}

/// Serves `GET /metrics` on `listener` until `cancel`, in a task of its own.
pub(crate) fn spawn(
    listener: tokio::net::TcpListener,
    serving: ServingMetrics,
    load: Arc<dyn Load>,
    gpus: Vec<u32>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(serve(listener, serving, load, gpus, cancel))
}

async fn serve(
    listener: tokio::net::TcpListener,
    serving: ServingMetrics,
    load: Arc<dyn Load>,
    gpus: Vec<u32>,
    cancel: CancellationToken,
) {
    let registry = Arc::new(registry(&serving, load, gpus));
    let scrape = move || {
        let registry = registry.clone();
        async move {
            // NVML and nvidia-smi block.
            let text = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                TextEncoder::new()
                    .encode(&registry.gather(), &mut out)
                    .map(|()| out)
            })
            .await;
            match text {
                Ok(Ok(text)) => (
                    StatusCode::OK,
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    text,
                )
                    .into_response(),
                _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }
    };
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "this address serves only GET /metrics\n",
            )
        });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("the --metrics-listen server failed: {e}");
    }
}
