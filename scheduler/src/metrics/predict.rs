//! Predictions, counted once whatever protocol brought them (they all pass
//! `Control::predict`): how many per model and outcome, how long they took,
//! and how many are in flight. The model label is `owner/model`, never the
//! client id, and only for models that exist (a name nobody deployed is
//! `unknown`, so callers cannot grow the label set).

use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use tonic::Code;

/// The model label of a prediction for a model that does not exist.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Latency buckets, in seconds: from 100 µs (a scheduler hop) to a minute
/// (a slow model).
const BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// How a prediction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The input could not be decoded (JSON) or was refused as invalid.
    BadInput,
    /// The user's `run()` raised.
    UserError,
    /// The client id may not call the model.
    Forbidden,
    /// No such model.
    NotFound,
    TooLarge,
    /// No instance could take it (not deployed yet, waking, lost, overloaded).
    Unavailable,
    /// The caller's deadline passed (or the caller went away) first.
    Deadline,
    Internal,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::BadInput,
        Outcome::UserError,
        Outcome::Forbidden,
        Outcome::NotFound,
        Outcome::TooLarge,
        Outcome::Unavailable,
        Outcome::Deadline,
        Outcome::Internal,
    ];

    /// The outcome of a prediction that failed with `code`.
    pub fn of_code(code: Code) -> Outcome {
        match code {
            Code::Ok => Outcome::Ok,
            Code::InvalidArgument => Outcome::BadInput,
            // The agent's code for an exception raised by run().
            Code::Unknown => Outcome::UserError,
            Code::PermissionDenied => Outcome::Forbidden,
            Code::NotFound => Outcome::NotFound,
            Code::ResourceExhausted => Outcome::TooLarge,
            Code::Unavailable | Code::FailedPrecondition => Outcome::Unavailable,
            Code::DeadlineExceeded | Code::Cancelled => Outcome::Deadline,
            _ => Outcome::Internal,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadInput => "bad_input",
            Outcome::UserError => "user_error",
            Outcome::Forbidden => "forbidden",
            Outcome::NotFound => "not_found",
            Outcome::TooLarge => "too_large",
            Outcome::Unavailable => "unavailable",
            Outcome::Deadline => "deadline",
            Outcome::Internal => "internal",
        }
    }
}

#[derive(Clone)]
pub(crate) struct PredictMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    in_flight: IntGauge,
}

impl PredictMetrics {
    pub(crate) fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "aibro_predict_requests_total",
                "Predictions that reached the control plane (any protocol), by model \
                 (owner/model) and outcome.",
            ),
            &["model", "outcome"],
        )
        .expect("valid metric");
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "aibro_predict_duration_seconds",
                "Time from a prediction reaching the control plane to its answer, by model \
                 and outcome.",
            )
            .buckets(BUCKETS.to_vec()),
            &["model", "outcome"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "aibro_predict_requests_in_flight",
            "Predictions the scheduler is handling now (routed to an agent, or being answered).",
        )
        .expect("valid metric");
        PredictMetrics {
            requests,
            seconds,
            in_flight,
        }
    }

    /// Removes every series of `owner`/`model` (those it has).
    pub(crate) fn forget(&self, owner: &str, model: &str) {
        let model = format!("{owner}/{model}");
        for outcome in Outcome::ALL {
            let labels = [model.as_str(), outcome.label()];
            // Err only says there was no such series.
            let _ = self.requests.remove_label_values(&labels);
            let _ = self.seconds.remove_label_values(&labels);
        }
    }

    pub(crate) fn start<'a>(&self, owner: &'a str, model: &'a str) -> PredictTimer<'a> {
        self.in_flight.inc();
        PredictTimer {
            metrics: self.clone(),
            started: Instant::now(),
            owner,
            model,
            done: false,
        }
    }
}

impl Collector for PredictMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.requests.desc(),
            self.seconds.desc(),
            self.in_flight.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        [
            self.requests.collect(),
            self.seconds.collect(),
            self.in_flight.collect(),
        ]
        .concat()
    }
}

/// One prediction of `owner`/`model` being timed. Dropped before
/// [`PredictTimer::finish`] (its caller's deadline passed, or the caller
/// went away), it counts as [`Outcome::Deadline`].
pub struct PredictTimer<'a> {
    metrics: PredictMetrics,
    started: Instant,
    owner: &'a str,
    model: &'a str,
    done: bool,
}

impl PredictTimer<'_> {
    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.metrics.in_flight.dec();
        // A model nobody deployed gets no label of its own.
        let model = match outcome {
            Outcome::NotFound => UNKNOWN_MODEL.to_string(),
            _ => format!("{}/{}", self.owner, self.model),
        };
        let labels = [model.as_str(), outcome.label()];
        self.metrics.requests.with_label_values(&labels).inc();
        self.metrics
            .seconds
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for PredictTimer<'_> {
    fn drop(&mut self) {
        self.record(Outcome::Deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &PredictMetrics, model: &str, outcome: &str) -> u64 {
        m.requests.with_label_values(&[model, outcome]).get()
    }

    #[test]
    fn an_ended_model_leaves_no_series() {
        let m = PredictMetrics::new();
        m.start("alice", "echo").finish(Outcome::Ok);
        m.start("alice", "echo").finish(Outcome::UserError);
        m.start("alice", "other").finish(Outcome::Ok);
        m.forget("alice", "echo");
        let models: Vec<String> = m.requests.collect()[0]
            .get_metric()
            .iter()
            .map(|s| s.get_label()[0].value().to_string())
            .collect();
        assert_eq!(models, ["alice/other"]);
    }

    #[test]
    fn each_prediction_is_counted_once_with_its_outcome() {
        let m = PredictMetrics::new();
        m.start("alice", "echo").finish(Outcome::Ok);
        m.start("alice", "echo")
            .finish(Outcome::of_code(Code::Unknown));
        m.start("alice", "random-name").finish(Outcome::NotFound);
        let abandoned = m.start("alice", "echo");
        assert_eq!(m.in_flight.get(), 1);
        drop(abandoned);
        assert_eq!(count(&m, "alice/echo", "ok"), 1);
        assert_eq!(count(&m, "alice/echo", "user_error"), 1);
        assert_eq!(count(&m, "alice/echo", "deadline"), 1);
        assert_eq!(count(&m, UNKNOWN_MODEL, "not_found"), 1);
        assert_eq!(m.in_flight.get(), 0);
        let h = m.seconds.with_label_values(&["alice/echo", "ok"]);
        assert_eq!(h.get_sample_count(), 1);
    }
}
