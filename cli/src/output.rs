//! Text output: aligned tables, proportional bars, and JSON printing.

use serde_json::Value;

/// A table of left-aligned text columns separated by two spaces.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<'a>(headers: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            headers: headers.into_iter().map(str::to_string).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered table, one line per row, with a trailing newline.
    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(cols) {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < cols {
                    line.extend(std::iter::repeat_n(' ', widths[i] - width(cell)));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// A bar of `█` placed on a `width`-column axis spanning `total` units:
/// blank up to `start`, then at least one block for `len`.
pub fn bar(start: u64, len: u64, total: u64, width: usize) -> String {
    let total = total.max(1) as f64;
    let scale = |v: u64| ((v as f64 / total) * width as f64).round() as usize;
    let lead = scale(start).min(width.saturating_sub(1));
    let blocks = scale(len).clamp(1, width - lead);
    format!("{}{}", " ".repeat(lead), "█".repeat(blocks))
}

/// Pretty-prints a JSON value to stdout.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Prints a JSON value on one line (for streams of events).
pub fn print_json_line(value: &Value) {
    println!("{value}");
}

/// Prints `value` as JSON when `json` is set, otherwise runs `text`.
pub fn emit(json: bool, value: impl FnOnce() -> Value, text: impl FnOnce()) {
    if json {
        print_json(&value());
    } else {
        text();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        t.row(vec!["é".into(), "22".into()]);
        assert_eq!(t.render(), "A    LONGER\nxyz  1\né    22\n");
    }

    #[test]
    fn bars_are_proportional_and_never_empty() {
        assert_eq!(bar(0, 50, 100, 10), "█████");
        assert_eq!(bar(50, 50, 100, 10), "     █████");
        assert_eq!(bar(0, 0, 100, 10), "█");
        assert_eq!(bar(100, 0, 100, 10), "         █");
        assert_eq!(bar(0, 0, 0, 4), "█");
    }
}
