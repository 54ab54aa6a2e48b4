//! The timeline as a Gantt chart: one lane for the job's phases, one per
//! instance (labelled with its role, id and machine), bars coloured by phase
//! or instance status, a time axis from the job's first event, and the job's
//! model name, status, reason and description above.

use aibro_proto::v1::{
    Instance, InstanceRole, InstanceStatus, InstanceSubstatus, Job, JobEvent, JobStatus,
    JobSubstatus, Timeline,
};
use prost_types::Timestamp;

use super::svg::{self, Anchor, Svg};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 280.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 74.0;
const LANE: f64 = 34.0;
const BAR: f64 = 20.0;
const AXIS: f64 = 36.0;
/// Bars never thinner than this, so an instant phase still shows (and has a tooltip).
const MIN_BAR: f64 = 2.0;
const LABEL_CHARS: usize = 40;
const CAPTION_CHARS: usize = 120;
/// Marks that do not start a phase of their own.
const NOT_PHASES: [&str; 2] = ["log", "progress"];

/// One bar: a phase of the job or of an instance, in milliseconds from the
/// job's first event.
#[derive(Debug, Clone, PartialEq)]
struct Bar {
    name: String,
    started_at: Option<Timestamp>,
    start_ms: u64,
    end_ms: u64,
    running: bool,
    colour: &'static str,
}

#[derive(Debug)]
struct Lane {
    label: String,
    detail: String,
    bars: Vec<Bar>,
    /// The instance's latest status (events that only mark a phase carry none).
    status: InstanceStatus,
}

/// Draws `job`'s `timeline` (`Jobs.GetJob` and `Jobs.GetTimeline`) as an SVG
/// Gantt chart. Phases still running are drawn up to `now`; the function
/// does no I/O (the caller passes the clock).
pub fn timeline_svg(job: &Job, timeline: &Timeline, now: Timestamp) -> String {
    let Some(origin) = origin(timeline) else {
        return empty(job);
    };
    let mut lanes = vec![job_lane(timeline, &origin, &now)];
    lanes.extend(instance_lanes(&timeline.events, &origin, &now));
    for lane in &mut lanes[1..] {
        label(lane, &job.instances);
    }
    let end_ms = lanes
        .iter()
        .flat_map(|l| &l.bars)
        .map(|b| b.end_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let height = TOP + LANE * lanes.len() as f64 + AXIS;
    let mut doc = Svg::new(WIDTH, height, &format!("Timeline of job {}", job.job_id));
    heading(&mut doc, job);
    axis(&mut doc, end_ms, lanes.len());
    for (i, lane) in lanes.iter().enumerate() {
        draw_lane(&mut doc, lane, TOP + LANE * i as f64, end_ms);
    }
    doc.finish()
}

/// The chart of a job with nothing recorded yet.
fn empty(job: &Job) -> String {
    let mut doc = Svg::new(
        WIDTH,
        TOP + LANE,
        &format!("Timeline of job {}", job.job_id),
    );
    heading(&mut doc, job);
    let at = (WIDTH / 2.0, TOP + LANE / 2.0);
    doc.text(at, Anchor::Middle, "empty", "no phases yet");
    doc.finish()
}

/// The earliest phase start or event: the axis' zero.
fn origin(t: &Timeline) -> Option<Timestamp> {
    t.phases
        .iter()
        .filter_map(|p| p.started_at)
        .chain(t.events.iter().filter_map(|e| e.at))
        .min_by_key(|ts| (ts.seconds, ts.nanos))
}

/// Milliseconds from `from` to `to`; 0 when `to` is earlier.
fn millis(from: &Timestamp, to: &Timestamp) -> u64 {
    let ms = (i128::from(to.seconds) - i128::from(from.seconds)) * 1000
        + (i128::from(to.nanos) - i128::from(from.nanos)) / 1_000_000;
    u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
}

/// The job's own phases (one per substatus), the last one running to `now`
/// until it is closed.
fn job_lane(t: &Timeline, origin: &Timestamp, now: &Timestamp) -> Lane {
    let bars = t
        .phases
        .iter()
        .map(|p| {
            let start = p.started_at.unwrap_or(*origin);
            Bar {
                name: p.name.clone(),
                started_at: p.started_at,
                start_ms: millis(origin, &start),
                end_ms: millis(origin, p.ended_at.as_ref().unwrap_or(now)),
                running: p.ended_at.is_none(),
                colour: phase_colour(&p.name),
            }
        })
        .collect();
    Lane {
        label: "job".into(),
        detail: String::new(),
        bars,
        status: InstanceStatus::Unspecified,
    }
}

/// One lane per instance, in the order they appear: a bar per phase mark or
/// status change, each lasting until the instance's next one.
fn instance_lanes(events: &[JobEvent], origin: &Timestamp, now: &Timestamp) -> Vec<Lane> {
    // Labelled with the instance's id until `label` adds its role and machine.
    let mut lanes: Vec<Lane> = Vec::new();
    for e in events.iter().filter(|e| !e.instance_id.is_empty()) {
        if NOT_PHASES.contains(&e.phase.as_str()) {
            continue;
        }
        let at = millis(origin, e.at.as_ref().unwrap_or(origin));
        let i = match lanes.iter().position(|l| l.label == e.instance_id) {
            Some(i) => i,
            None => {
                lanes.push(new_lane(&e.instance_id));
                lanes.len() - 1
            }
        };
        let lane = &mut lanes[i];
        if e.phase == "instance requested" {
            lane.detail.clone_from(&e.message);
        }
        step(lane, e, at);
    }
    let end = millis(origin, now);
    for lane in &mut lanes {
        if let Some(last) = lane.bars.last_mut().filter(|b| b.running) {
            last.end_ms = end.max(last.start_ms);
        }
    }
    lanes
}

fn new_lane(instance_id: &str) -> Lane {
    Lane {
        label: instance_id.to_string(),
        detail: String::new(),
        bars: Vec::new(),
        status: InstanceStatus::Unspecified,
    }
}

/// Labels an instance's lane with its role and machine (and what it
/// replaced), when the job lists it; else the lane keeps the machine its
/// "instance requested" mark named.
fn label(lane: &mut Lane, instances: &[Instance]) {
    let Some(i) = instances.iter().find(|i| i.instance_id == lane.label) else {
        return;
    };
    let role = InstanceRole::try_from(i.role).unwrap_or_default();
    let role = short(role.as_str_name());
    lane.detail = match i.replaces.as_str() {
        "" => format!("{role} · {}", i.machine_id),
        old => format!("{role} · {}, replaces {old}", i.machine_id),
    };
}

/// Applies one event to an instance's lane: it closes the running bar and,
/// unless the instance is now closed, opens the next.
fn step(lane: &mut Lane, e: &JobEvent, at: u64) {
    let status = match InstanceStatus::try_from(e.instance_status).unwrap_or_default() {
        InstanceStatus::Unspecified => lane.status,
        status => status,
    };
    lane.status = status;
    let name = instance_phase_name(e, status);
    if let Some(last) = lane.bars.last_mut().filter(|b| b.running) {
        if e.phase.is_empty() && last.name == name {
            return;
        }
        last.end_ms = at;
        last.running = false;
        // A status that a mark replaces at once is no phase of its own.
        if last.start_ms == at {
            lane.bars.pop();
        }
    }
    if status != InstanceStatus::Closed {
        lane.bars.push(Bar {
            name,
            started_at: e.at,
            start_ms: at,
            end_ms: at,
            running: true,
            colour: mark_colour(&e.phase).unwrap_or(instance_colour(status)),
        });
    }
}

/// The mark the event carries, else the instance's status (and substatus).
fn instance_phase_name(e: &JobEvent, status: InstanceStatus) -> String {
    if !e.phase.is_empty() {
        return e.phase.clone();
    }
    let sub = InstanceSubstatus::try_from(e.instance_substatus).unwrap_or_default();
    match sub {
        InstanceSubstatus::Unspecified | InstanceSubstatus::None => short(status.as_str_name()),
        _ => format!(
            "{} / {}",
            short(status.as_str_name()),
            short(sub.as_str_name())
        ),
    }
}

/// `INSTANCE_STATUS_COOLING` → `COOLING`, `INSTANCE_ROLE_STANDBY` → `STANDBY`.
fn short(name: &str) -> String {
    [
        "JOB_STATUS_",
        "JOB_SUBSTATUS_",
        "INSTANCE_STATUS_",
        "INSTANCE_SUBSTATUS_",
        "INSTANCE_ROLE_",
    ]
    .iter()
    .find_map(|p| name.strip_prefix(p))
    .unwrap_or(name)
    .to_string()
}

fn phase_colour(name: &str) -> &'static str {
    match name {
        "REQUESTING_SERVER" | "CONNECTING_SERVER" => "#f2b134",
        "GEARING_UP_ENV" | "DEPLOYING_MODEL" | "SENDING_MODEL_AND_DATA" => "#4a90d9",
        "DEPLOYED_MODEL" | "TRAINING" => "#3bab5a",
        "RETURNING" => "#2bb3a8",
        "CANCELED" => "#d9534f",
        _ => "#9e9e9e",
    }
}

/// The colour of the job phase an instance's mark belongs to, if any.
fn mark_colour(mark: &str) -> Option<&'static str> {
    let phase = match mark {
        "instance requested" | "agent connected" => "REQUESTING_SERVER",
        "gearing up env" | "env geared up" | "env reused" => "GEARING_UP_ENV",
        "model loaded" | "ready to train" | "training" => "DEPLOYED_MODEL",
        "returning" => "RETURNING",
        _ => return None,
    };
    Some(phase_colour(phase))
}

fn instance_colour(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Launching => "#f2b134",
        InstanceStatus::Executing => "#3bab5a",
        InstanceStatus::Cooling => "#4a90d9",
        InstanceStatus::Closing => "#e8833a",
        InstanceStatus::Closed | InstanceStatus::Unspecified => "#9e9e9e",
    }
}

/// The model name and job id, the job's status with why it was canceled
/// (the reason's last line: a traceback's exception), and its description.
fn heading(doc: &mut Svg, job: &Job) {
    let title = format!("{} · {}", job.model_name, job.job_id);
    doc.text(
        (12.0, 20.0),
        Anchor::Start,
        "title",
        &svg::truncate(&title, CAPTION_CHARS),
    );
    let status = JobStatus::try_from(job.status).unwrap_or_default();
    let sub = JobSubstatus::try_from(job.substatus).unwrap_or_default();
    let mut caption = format!(
        "{} / {}",
        short(status.as_str_name()),
        short(sub.as_str_name())
    );
    if let Some(why) = job.reason.lines().rev().find(|l| !l.trim().is_empty()) {
        caption = format!("{caption}: {}", why.trim());
    }
    let shown = svg::truncate(&caption, CAPTION_CHARS);
    let full = if job.reason.is_empty() {
        &caption
    } else {
        &job.reason
    };
    doc.text_with_title((12.0, 38.0), "caption", &shown, full);
    if !job.description.is_empty() {
        let shown = svg::truncate(&job.description, CAPTION_CHARS);
        doc.text_with_title((12.0, 56.0), "description", &shown, &job.description);
    }
}

fn x_of(ms: u64, end_ms: u64) -> f64 {
    LEFT + (WIDTH - LEFT - RIGHT) * ms as f64 / end_ms as f64
}

/// The time axis under the lanes, with a faint grid line per tick.
fn axis(doc: &mut Svg, end_ms: u64, lanes: usize) {
    let bottom = TOP + LANE * lanes as f64;
    doc.line((LEFT, bottom), (WIDTH - RIGHT, bottom), "#444444");
    for tick in svg::ticks(0.0, end_ms as f64, 8) {
        let x = x_of(tick as u64, end_ms);
        doc.line((x, TOP - 4.0), (x, bottom + 4.0), "#e0e0e0");
        doc.text(
            (x, bottom + 18.0),
            Anchor::Middle,
            "tick",
            &svg::duration(tick),
        );
    }
}

/// A lane's label (and machine) at the left, its bars on the axis.
fn draw_lane(doc: &mut Svg, lane: &Lane, top: f64, end_ms: u64) {
    let label = svg::truncate(&lane.label, LABEL_CHARS);
    if lane.detail.is_empty() {
        doc.text(
            (12.0, top + LANE / 2.0 + 4.0),
            Anchor::Start,
            "lane",
            &label,
        );
    } else {
        doc.text((12.0, top + 14.0), Anchor::Start, "lane", &label);
        let detail = svg::truncate(&lane.detail, LABEL_CHARS);
        doc.text_with_title((12.0, top + 28.0), "machine", &detail, &lane.detail);
    }
    let y = top + (LANE - BAR) / 2.0;
    for bar in &lane.bars {
        let x = x_of(bar.start_ms, end_ms);
        let w = (x_of(bar.end_ms, end_ms) - x).max(MIN_BAR);
        doc.rect((x, y), (w, BAR), bar.colour, &tooltip(bar));
    }
}

/// Phase name, start (offset and UTC time) and duration.
fn tooltip(bar: &Bar) -> String {
    let at = bar
        .started_at
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    let running = if bar.running { " (running)" } else { "" };
    format!(
        "{}\nstart +{}{at}\nduration {}{running}",
        bar.name,
        svg::duration(bar.start_ms as f64),
        svg::duration((bar.end_ms - bar.start_ms) as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::super::svg::parsed::parse;
    use super::*;
    use aibro_proto::v1::Phase;

    const HOSTILE: &str = "<script>alert(1)</script> & \"quotes\" 'too'";

    fn ts(ms: i64) -> Timestamp {
        Timestamp {
            seconds: 1_000 + ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }
    }

    fn phase(name: &str, start: i64, end: Option<i64>) -> Phase {
        Phase {
            name: name.into(),
            started_at: Some(ts(start)),
            ended_at: end.map(ts),
            duration_ms: end.map_or(0, |e| (e - start) as u64),
            instance_id: String::new(),
        }
    }

    fn event(
        at: i64,
        instance: &str,
        status: InstanceStatus,
        mark: &str,
        message: &str,
    ) -> JobEvent {
        JobEvent {
            at: Some(ts(at)),
            instance_id: instance.into(),
            instance_status: status as i32,
            phase: mark.into(),
            message: message.into(),
            status: JobStatus::Canceled as i32,
            substatus: JobSubstatus::Canceled as i32,
            ..Default::default()
        }
    }

    fn timeline() -> Timeline {
        Timeline {
            job_id: "j1".into(),
            phases: vec![
                phase("REQUESTING_SERVER", 0, Some(500)),
                phase("GEARING_UP_ENV", 500, Some(4_000)),
                phase(HOSTILE, 4_000, None),
            ],
            events: vec![
                event(0, "", InstanceStatus::Unspecified, "job created", ""),
                event(
                    100,
                    "i1",
                    InstanceStatus::Launching,
                    "instance requested",
                    HOSTILE,
                ),
                event(600, "i1", InstanceStatus::Executing, "gearing up env", ""),
                event(
                    700,
                    "i1",
                    InstanceStatus::Executing,
                    "log",
                    "a printed line",
                ),
                event(4_000, "i1", InstanceStatus::Executing, "model loaded", ""),
                event(
                    5_900,
                    "i2",
                    InstanceStatus::Unspecified,
                    "instance requested",
                    HOSTILE,
                ),
                event(6_000, "i2", InstanceStatus::Cooling, "", ""),
                event(9_000, "i2", InstanceStatus::Closed, "", ""),
                event(9_500, "", InstanceStatus::Unspecified, "", HOSTILE),
            ],
        }
    }

    fn job() -> Job {
        Job {
            job_id: "j1".into(),
            model_name: "echo".into(),
            status: JobStatus::Canceled as i32,
            substatus: JobSubstatus::Canceled as i32,
            reason: format!("Traceback:\n  File x\nValueError: {HOSTILE}\n"),
            description: HOSTILE.into(),
            instances: vec![Instance {
                instance_id: "i1".into(),
                role: InstanceRole::Standby as i32,
                machine_id: "local.small.od".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn user_text_is_escaped_and_the_svg_parses() {
        let svg = timeline_svg(&job(), &timeline(), ts(10_000));
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;"));
        let parsed = parse(&svg);
        // The phase's name (in its tooltip), i2's machine (its "instance
        // requested" message), the reason and the description.
        let hostile = parsed.texts.iter().filter(|t| t.contains(HOSTILE)).count();
        assert!(hostile >= 6, "{:?}", parsed.texts);
        let caption = format!("CANCELED / CANCELED: ValueError: {HOSTILE}");
        assert!(parsed.texts.contains(&caption), "{:?}", parsed.texts);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("viewBox=\"0 0 960 "));
    }

    #[test]
    fn lanes_hold_bars_in_time_order_within_the_axis() {
        let svg = timeline_svg(&job(), &timeline(), ts(10_000));
        let parsed = parse(&svg);
        for lane in ["job", "i1", "STANDBY · local.small.od", "i2"] {
            assert!(
                parsed.texts.iter().any(|t| t == lane),
                "{lane}: {:?}",
                parsed.texts
            );
        }
        // 3 job phases; i1's 3 (LAUNCHING gives way to its mark at once, the
        // log line starts none); i2's 2 (closed after).
        assert_eq!(parsed.bars.len(), 8, "{svg}");
        let (job, instances) = parsed.bars.split_at(3);
        for lane in [job, &instances[..3]] {
            assert!(lane.windows(2).all(|w| w[0].0 < w[1].0), "{lane:?}");
        }
        for (x, w) in &parsed.bars {
            assert!(*x >= LEFT && x + w <= WIDTH - RIGHT + 0.1, "{x} {w}");
        }
        // The running job phase reaches `now`, the end of the axis.
        let (x, w) = job[2];
        assert!((x + w - (WIDTH - RIGHT)).abs() < 0.2, "{x} {w}");
        assert!(parsed.texts.iter().any(|t| t.contains("(running)")));
        assert!(
            parsed.texts.iter().any(|t| t == "10s"),
            "{:?}",
            parsed.texts
        );
    }

    #[test]
    fn timestamps_far_apart_do_not_overflow() {
        let mut t = timeline();
        t.phases[0].started_at = Some(Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        });
        let far = Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        };
        // Degenerate (every later event clamps to the same far end), but drawn.
        let svg = timeline_svg(&job(), &t, far);
        assert!(!parse(&svg).bars.is_empty(), "{svg}");
    }

    #[test]
    fn an_empty_timeline_says_so() {
        let empty = Timeline {
            job_id: "j1".into(),
            ..Default::default()
        };
        let svg = timeline_svg(&job(), &empty, ts(0));
        let parsed = parse(&svg);
        assert!(parsed.texts.iter().any(|t| t == "no phases yet"), "{svg}");
        assert!(parsed.bars.is_empty());
    }
}
