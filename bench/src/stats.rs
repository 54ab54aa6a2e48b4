//! Latency samples → percentiles and throughput, and the number formatting
//! shared by the tables.

use std::time::Duration;

/// The spread of some samples.
pub struct Dist {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// How many samples.
    pub n: usize,
}

/// Percentiles of `samples`; `None` when there are none.
pub fn dist(mut samples: Vec<Duration>) -> Option<Dist> {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Some(Dist {
        max: *samples.last()?,
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        n: samples.len(),
    })
}

pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub per_s: f64,
}

/// Percentiles of at least one sample, and how many there were per second of `wall`.
pub fn stats(samples: Vec<Duration>, wall: Duration) -> Stats {
    let d = dist(samples).expect("at least one sample");
    Stats {
        p50: d.p50,
        p99: d.p99,
        max: d.max,
        per_s: d.n as f64 / wall.as_secs_f64(),
    }
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Microseconds, rounded.
pub fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// `12,345`.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A Markdown table, its columns padded to their widest cell; every row
/// has as many cells as `header`.
pub fn print_table<R: AsRef<[String]>>(header: &[&str], rows: &[R]) {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let all = || rows.iter().map(AsRef::as_ref).chain([header.as_slice()]);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| all().map(|row| row[c].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |row: &[String]| {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(&header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    rows.iter().for_each(|row| line(row.as_ref()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_grouping() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let d = dist((1..=100).map(Duration::from_millis).collect()).unwrap();
        assert_eq!(d.p95, Duration::from_millis(95));
        let st = stats(samples, Duration::from_secs(2));
        assert_eq!(st.p50, Duration::from_millis(51));
        assert_eq!(st.p99, Duration::from_millis(99));
        assert_eq!(st.max, Duration::from_millis(100));
        assert_eq!(st.per_s, 50.0);
        assert!(dist(Vec::new()).is_none());
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
