//! `aibro timeline J`: where a job's time went, as a table with start offset
//! and duration per phase plus a proportional bar (a text Gantt chart); with
//! `--svg FILE`, the console's SVG Gantt chart written to FILE.

use std::path::Path;
use std::time::SystemTime;

use aibro_proto::v1::{GetTimelineRequest, Phase, Timeline};
use aibro_scheduler::charts;
use anyhow::{Context, Result};
use prost_types::Timestamp;

use super::{jobs, Ctx};
use crate::args::TimelineArgs;
use crate::display;
use crate::json;
use crate::output::{self, Table};

/// Width of the bar chart in columns.
const BAR_WIDTH: usize = 40;

/// One phase placed on the job's time axis.
#[derive(Debug, PartialEq)]
pub struct Placed {
    pub offset_ms: u64,
    pub duration_ms: u64,
    pub running: bool,
}

pub async fn show(ctx: &Ctx, args: &TimelineArgs) -> Result<()> {
    let timeline = ctx
        .client
        .jobs()
        .get_timeline(GetTimelineRequest {
            job_id: args.job_id.clone(),
        })
        .await?
        .into_inner();
    match &args.svg {
        Some(path) => write_svg(ctx, &timeline, path).await,
        None => print_table(ctx, &timeline),
    }
}

/// Draws the chart (with the job's name, status and instances) and writes
/// it to `path`; says where.
async fn write_svg(ctx: &Ctx, timeline: &Timeline, path: &Path) -> Result<()> {
    let job = jobs::get(ctx, &timeline.job_id).await?;
    let svg = charts::timeline_svg(&job, timeline, now());
    std::fs::write(path, svg)
        .with_context(|| format!("cannot write the timeline SVG to {}", path.display()))?;
    output::emit(
        ctx.json,
        || serde_json::json!({"job_id": timeline.job_id, "svg": path.display().to_string()}),
        || {
            println!(
                "timeline of {} drawn to {}",
                timeline.job_id,
                path.display()
            )
        },
    );
    Ok(())
}

fn print_table(ctx: &Ctx, timeline: &Timeline) -> Result<()> {
    let placed = place(timeline, now());
    output::emit(
        ctx.json,
        || {
            let phases = timeline
                .phases
                .iter()
                .zip(&placed)
                .map(|(p, x)| json::phase(p, x.offset_ms, x.duration_ms))
                .collect();
            json::timeline(timeline, phases)
        },
        || print!("{}", render(&timeline.phases, &placed)),
    );
    Ok(())
}

fn now() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

/// Places every phase relative to the earliest start (or the first event).
pub fn place(t: &Timeline, now: Timestamp) -> Vec<Placed> {
    let origin = t
        .phases
        .iter()
        .filter_map(|p| p.started_at)
        .chain(t.events.iter().filter_map(|e| e.at))
        .min_by_key(|ts| (ts.seconds, ts.nanos));
    t.phases
        .iter()
        .map(|p| {
            let (Some(origin), Some(start)) = (origin, p.started_at) else {
                return Placed {
                    offset_ms: 0,
                    duration_ms: p.duration_ms,
                    running: p.ended_at.is_none(),
                };
            };
            let offset_ms = display::millis_between(&origin, &start);
            let (duration_ms, running) = match (&p.ended_at, p.duration_ms) {
                (Some(_), d) if d > 0 => (d, false),
                (Some(end), _) => (display::millis_between(&start, end), false),
                (None, _) => (display::millis_between(&start, &now), true),
            };
            Placed {
                offset_ms,
                duration_ms,
                running,
            }
        })
        .collect()
}

/// The table with its bar column, and a total line.
pub fn render(phases: &[Phase], placed: &[Placed]) -> String {
    if phases.is_empty() {
        return "no phases recorded\n".into();
    }
    let total = placed
        .iter()
        .map(|p| p.offset_ms + p.duration_ms)
        .max()
        .unwrap_or(0);
    let with_instance = phases.iter().any(|p| !p.instance_id.is_empty());
    let mut t = if with_instance {
        Table::new(["PHASE", "INSTANCE", "START", "DURATION", ""])
    } else {
        Table::new(["PHASE", "START", "DURATION", ""])
    };
    for (p, x) in phases.iter().zip(placed) {
        let mut row = vec![p.name.clone()];
        if with_instance {
            row.push(if p.instance_id.is_empty() {
                "-".into()
            } else {
                p.instance_id.clone()
            });
        }
        let running = if x.running { " (running)" } else { "" };
        row.extend([
            display::secs(x.offset_ms),
            format!("+{}{running}", display::secs(x.duration_ms)),
            output::bar(x.offset_ms, x.duration_ms, total, BAR_WIDTH),
        ]);
        t.row(row);
    }
    format!("{}total {}\n", t.render(), display::secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: 1000 + ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })
    }

    fn phase(name: &str, start: i64, end: Option<i64>) -> Phase {
        Phase {
            name: name.into(),
            started_at: ts(start),
            ended_at: end.and_then(ts),
            duration_ms: end.map_or(0, |e| (e - start) as u64),
            instance_id: String::new(),
        }
    }

    #[test]
    fn places_phases_from_the_earliest_start() {
        let t = Timeline {
            job_id: "j".into(),
            phases: vec![
                phase("REQUESTING_SERVER", 0, Some(50)),
                phase("GEARING_UP_ENV", 50, Some(1050)),
                phase("SERVING", 1050, None),
            ],
            events: vec![],
        };
        let placed = place(&t, ts(2050).unwrap());
        assert_eq!(
            placed,
            vec![
                Placed {
                    offset_ms: 0,
                    duration_ms: 50,
                    running: false
                },
                Placed {
                    offset_ms: 50,
                    duration_ms: 1000,
                    running: false
                },
                Placed {
                    offset_ms: 1050,
                    duration_ms: 1000,
                    running: true
                },
            ]
        );
        let text = render(&t.phases, &placed);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].trim_end(), "PHASE              START  DURATION");
        assert!(
            lines[1].starts_with("REQUESTING_SERVER  0.00s  +0.05s"),
            "{text}"
        );
        assert!(lines[1].ends_with(" █"), "{text}");
        assert!(lines[3].contains("+1.00s (running)"), "{text}");
        assert_eq!(lines[4], "total 2.05s");
        // The longest phase spans about half of the 40-column axis.
        assert_eq!(lines[2].matches('█').count(), 20);
    }

    #[test]
    fn empty_timeline() {
        assert_eq!(render(&[], &[]), "no phases recorded\n");
    }
}
