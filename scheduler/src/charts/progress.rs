//! Training progress as a line chart: each metric the user's code reported
//! (loss, accuracy, ...) as one polyline over the epochs, with a legend.
//!
//! The input is the job's events as the proto carries them (`JobEvent`s
//! with phase "progress", `epoch`, `total_epochs` and `metrics`): the CLI has
//! them from `GetTimeline` or `WatchJob`, the console from the store's event
//! records through `api::convert::event`. Other events are ignored.

use std::collections::BTreeMap;

use aibro_proto::v1::JobEvent;

use super::svg::{self, Anchor, Svg};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 40.0;
/// Series drawn at most; hostile code may report thousands of metric names.
const MAX_SERIES: usize = 10;
const NAME_CHARS: usize = 24;
/// About how many value ticks the y axis has.
const TICKS: usize = 6;
/// Larger magnitudes are no metric (and would overflow the value range).
const MAX_VALUE: f64 = 1e100;
const PALETTE: [&str; MAX_SERIES] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// One metric: its value at each epoch (the latest report of that epoch).
type Series = BTreeMap<u32, f64>;

/// The plot's ranges: epochs on x, metric values on y.
struct Frame {
    epochs: f64,
    lo: f64,
    hi: f64,
}

impl Frame {
    fn at(&self, epoch: u32, value: f64) -> (f64, f64) {
        let x = LEFT + (WIDTH - LEFT - RIGHT) * f64::from(epoch) / self.epochs;
        let y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value - self.lo) / (self.hi - self.lo);
        (x, y)
    }
}

/// Draws the training progress reported in `events` as an SVG line chart.
pub fn progress_svg(events: &[JobEvent]) -> String {
    let progress: Vec<&JobEvent> = events.iter().filter(|e| e.phase == "progress").collect();
    let series = series(&progress);
    let mut doc = Svg::new(WIDTH, HEIGHT, "Training progress");
    doc.text((12.0, 20.0), Anchor::Start, "title", &heading(&progress));
    let Some(frame) = frame(&progress, &series) else {
        doc.text(
            (WIDTH / 2.0, HEIGHT / 2.0),
            Anchor::Middle,
            "empty",
            "no progress reported yet",
        );
        return doc.finish();
    };
    axes(&mut doc, &frame);
    for (i, (name, points)) in series.iter().take(MAX_SERIES).enumerate() {
        let points: Vec<(f64, f64)> = points.iter().map(|(e, v)| frame.at(*e, *v)).collect();
        doc.polyline(&points, PALETTE[i], name);
        let y = TOP + 18.0 * i as f64;
        doc.line(
            (WIDTH - RIGHT + 16.0, y),
            (WIDTH - RIGHT + 36.0, y),
            PALETTE[i],
        );
        let shown = svg::truncate(name, NAME_CHARS);
        doc.text_with_title((WIDTH - RIGHT + 42.0, y + 4.0), "legend", &shown, name);
    }
    if series.len() > MAX_SERIES {
        let more = format!("+{} more metrics", series.len() - MAX_SERIES);
        let y = TOP + 18.0 * MAX_SERIES as f64;
        doc.text(
            (WIDTH - RIGHT + 16.0, y + 4.0),
            Anchor::Start,
            "legend",
            &more,
        );
    }
    doc.finish()
}

/// Every metric's values by epoch, metrics in name order; NaN, infinities
/// and values past [`MAX_VALUE`] are left out.
fn series<'a>(progress: &[&'a JobEvent]) -> BTreeMap<&'a str, Series> {
    let mut all: BTreeMap<&str, Series> = BTreeMap::new();
    for e in progress {
        for (name, value) in e.metrics.iter().filter(|(_, v)| v.abs() <= MAX_VALUE) {
            all.entry(name.as_str())
                .or_default()
                .insert(e.epoch, *value);
        }
    }
    all
}

/// "Training progress: epoch 3 of 10".
fn heading(progress: &[&JobEvent]) -> String {
    match progress.last() {
        Some(e) if e.total_epochs > 0 => {
            format!("Training progress: epoch {} of {}", e.epoch, e.total_epochs)
        }
        Some(e) => format!("Training progress: epoch {}", e.epoch),
        None => "Training progress".into(),
    }
}

/// The ranges to draw, or `None` when no value was reported.
fn frame(progress: &[&JobEvent], series: &BTreeMap<&str, Series>) -> Option<Frame> {
    let values = || {
        series
            .values()
            .take(MAX_SERIES)
            .flat_map(|s| s.values().copied())
    };
    let lo = values().reduce(f64::min)?.min(0.0);
    let hi = values().reduce(f64::max)?;
    let epochs = progress
        .iter()
        .map(|e| e.epoch.max(e.total_epochs))
        .max()
        .unwrap_or(0)
        .max(1);
    let hi = if hi > lo { hi } else { lo + 1.0 };
    // Up to the next round value, so the highest point sits under a tick.
    let hi = match svg::ticks(lo, hi, TICKS).as_slice() {
        [.., a, b] if *b < hi => b + (b - a),
        _ => hi,
    };
    Some(Frame {
        epochs: f64::from(epochs),
        lo,
        hi,
    })
}

/// Epochs along the bottom, values up the left, a faint grid.
fn axes(doc: &mut Svg, f: &Frame) {
    let (left, bottom, right) = (LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT);
    doc.line((left, bottom), (right, bottom), "#444444");
    doc.line((left, TOP), (left, bottom), "#444444");
    for epoch in svg::ticks(0.0, f.epochs, 10)
        .into_iter()
        .filter(|v| v.fract() == 0.0)
    {
        let (x, _) = f.at(epoch as u32, f.lo);
        doc.text(
            (x, bottom + 16.0),
            Anchor::Middle,
            "tick",
            &format!("{epoch:.0}"),
        );
    }
    doc.text(
        ((left + right) / 2.0, HEIGHT - 6.0),
        Anchor::Middle,
        "axis",
        "epoch",
    );
    for value in svg::ticks(f.lo, f.hi, TICKS) {
        let (_, y) = f.at(0, value);
        doc.line((left, y), (right, y), "#e0e0e0");
        doc.text((left - 6.0, y + 4.0), Anchor::End, "tick", &number(value));
    }
}

/// A tick value in a few significant digits: `0.25`, `1.5e4`.
fn number(v: f64) -> String {
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) {
        format!("{}", (v * 1e4).round() / 1e4)
    } else {
        format!("{v:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::svg::parsed::parse;
    use super::*;

    fn progress(epoch: u32, metrics: &[(&str, f64)]) -> JobEvent {
        JobEvent {
            phase: "progress".into(),
            epoch,
            total_epochs: 5,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_metric_is_a_line_with_a_legend_entry() {
        let events = vec![
            JobEvent {
                phase: "log".into(),
                message: "hello".into(),
                ..Default::default()
            },
            progress(
                1,
                &[("loss", 1.5), ("accuracy", 0.4), ("<b>odd</b>", f64::NAN)],
            ),
            progress(2, &[("loss", 0.9), ("accuracy", 0.7), ("<b>odd</b>", 3.0)]),
            progress(3, &[("loss", 0.5), ("accuracy", 0.8)]),
        ];
        let svg = progress_svg(&events);
        let parsed = parse(&svg);
        assert_eq!(parsed.polylines, 3, "{svg}");
        for name in ["loss", "accuracy", "<b>odd</b>"] {
            assert!(
                parsed.texts.iter().any(|t| t == name),
                "{name}: {:?}",
                parsed.texts
            );
        }
        assert!(!svg.contains("<b>"));
        assert!(parsed
            .texts
            .iter()
            .any(|t| t == "Training progress: epoch 3 of 5"));
        assert!(svg.contains("points=\""), "{svg}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn series_beyond_the_cap_are_counted_not_drawn() {
        let names: Vec<String> = (0..25).map(|i| format!("m{i:02}")).collect();
        let metrics: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 1.0)).collect();
        let parsed = parse(&progress_svg(&[progress(1, &metrics)]));
        assert_eq!(parsed.polylines, MAX_SERIES);
        assert!(parsed.texts.iter().any(|t| t == "+15 more metrics"));
    }

    #[test]
    fn extreme_values_leave_every_coordinate_finite() {
        let events = [
            progress(1, &[("loss", f64::MAX), ("acc", -1e99)]),
            progress(2, &[("loss", f64::INFINITY), ("acc", 1e99)]),
        ];
        let svg = progress_svg(&events);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(parse(&svg).polylines, 1);
    }

    #[test]
    fn no_progress_yet() {
        let parsed = parse(&progress_svg(&[]));
        assert!(parsed.texts.iter().any(|t| t == "no progress reported yet"));
        assert_eq!(parsed.polylines, 0);
    }
}
