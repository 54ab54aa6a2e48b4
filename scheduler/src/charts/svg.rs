//! The drawing primitives both charts share: an SVG document built as text,
//! where every attribute is a number or one of our own constants and every
//! text (user's or store's) goes through [`escape`], the one escaping function.

use std::borrow::Cow;
use std::fmt::Write;

/// Font for every label; SVGs are self-contained, so no web fonts.
const FONT: &str = "font-family=\"system-ui, sans-serif\" font-size=\"12\"";

/// XML-escapes `text` (`<`, `>`, `&`, `'`, `"`) for element content.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(text)
}

/// Cuts `text` to at most `max` characters, with an ellipsis when cut.
pub(crate) fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((at, _)) => Cow::Owned(format!("{}…", &text[..at])),
        None => Cow::Borrowed(text),
    }
}

/// How a text is anchored at its x.
#[derive(Clone, Copy)]
pub(crate) enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn name(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// An SVG document under construction. Colours are `&'static str` constants
/// of the charts, never data.
pub(crate) struct Svg {
    out: String,
}

impl Svg {
    /// Opens a `width` x `height` document with a white background and a
    /// `<title>` for screen readers.
    pub(crate) fn new(width: f64, height: f64, title: &str) -> Svg {
        let mut out = String::with_capacity(4096);
        let _ = write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" {FONT}>\
             <title>{}</title>\
             <rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"#ffffff\"/>",
            escape(title)
        );
        Svg { out }
    }

    /// A filled rectangle; `tooltip` becomes its `<title>` child.
    pub(crate) fn rect(
        &mut self,
        at: (f64, f64),
        size: (f64, f64),
        fill: &'static str,
        tooltip: &str,
    ) {
        let ((x, y), (w, h)) = (at, size);
        let _ = write!(
            self.out,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" \
             rx=\"2\" fill=\"{fill}\"><title>{}</title></rect>",
            escape(tooltip)
        );
    }

    /// A one-pixel line.
    pub(crate) fn line(&mut self, from: (f64, f64), to: (f64, f64), stroke: &'static str) {
        let _ = write!(
            self.out,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{stroke}\" stroke-width=\"1\"/>",
            from.0, from.1, to.0, to.1
        );
    }

    /// A text label; `class` is one of the charts' own names.
    pub(crate) fn text(&mut self, at: (f64, f64), anchor: Anchor, class: &'static str, text: &str) {
        let _ = write!(
            self.out,
            "<text class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{}\" fill=\"#222222\">{}</text>",
            at.0,
            at.1,
            anchor.name(),
            escape(text)
        );
    }

    /// A text label with a tooltip, for labels cut short.
    pub(crate) fn text_with_title(
        &mut self,
        at: (f64, f64),
        class: &'static str,
        text: &str,
        tooltip: &str,
    ) {
        let _ = write!(
            self.out,
            "<text class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" fill=\"#222222\"><title>{}</title>{}</text>",
            at.0,
            at.1,
            escape(tooltip),
            escape(text)
        );
    }

    /// An open line through `points`, with a dot on each; `tooltip` names the series.
    pub(crate) fn polyline(&mut self, points: &[(f64, f64)], stroke: &'static str, tooltip: &str) {
        let mut path = String::new();
        for (x, y) in points {
            let _ = write!(path, "{x:.1},{y:.1} ");
        }
        let _ = write!(
            self.out,
            "<g class=\"series\"><title>{}</title><polyline points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"2\"/>",
            escape(tooltip),
            path.trim_end()
        );
        for (x, y) in points {
            let _ = write!(
                self.out,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{stroke}\"/>"
            );
        }
        self.out.push_str("</g>");
    }

    /// Closes the document.
    pub(crate) fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

/// Evenly spaced round values (1, 2 or 5 times a power of ten) covering
/// `lo..=hi`, at most about `count` of them.
pub(crate) fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil();
    (0..)
        .map(|i| (first + f64::from(i)) * step)
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

/// A duration for an axis label: `850ms`, `12s`, `2m30s`, `1h05m`.
pub(crate) fn duration(ms: f64) -> String {
    let ms = ms.max(0.0).round() as u64;
    match ms {
        0..=999 if !ms.is_multiple_of(1000) => format!("{ms}ms"),
        0..=59_999 if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        0..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => match (ms / 60_000, (ms % 60_000) / 1000) {
            (m, 0) => format!("{m}m"),
            (m, s) => format!("{m}m{s:02}s"),
        },
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// What the charts' tests read back from an SVG: it must parse as XML.
#[cfg(test)]
pub(crate) mod parsed {
    use quick_xml::events::Event;
    use quick_xml::Reader;

    #[derive(Debug, Default)]
    pub(crate) struct Parsed {
        /// Every text node (unescaped), `<title>`s included.
        pub texts: Vec<String>,
        /// The `x` and `width` of every bar.
        pub bars: Vec<(f64, f64)>,
        pub polylines: usize,
        pub width: f64,
    }

    fn attr(e: &quick_xml::events::BytesStart, name: &str) -> Option<f64> {
        let a = e.try_get_attribute(name).expect("well-formed attribute")?;
        Some(
            a.unescape_value()
                .expect("attribute")
                .parse()
                .expect("a number"),
        )
    }

    /// Parses `svg`, panicking on anything that is not well-formed XML.
    pub(crate) fn parse(svg: &str) -> Parsed {
        let mut reader = Reader::from_str(svg);
        reader.config_mut().check_end_names = true;
        let mut out = Parsed::default();
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => return out,
                Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                    b"svg" => out.width = attr(&e, "width").expect("width"),
                    b"rect" if attr(&e, "rx").is_some() => out
                        .bars
                        .push((attr(&e, "x").unwrap(), attr(&e, "width").unwrap())),
                    b"polyline" => out.polylines += 1,
                    b"script" | b"foreignObject" | b"image" | b"use" => {
                        panic!("unexpected element in {svg}")
                    }
                    _ => {}
                },
                Event::Text(t) => out.texts.push(t.unescape().expect("text").into_owned()),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.0, 0.9, 4), [0.0, 0.5]);
        assert_eq!(ticks(0.0, 70_000.0, 6), [0.0, 2e4, 4e4, 6e4]);
        assert_eq!(ticks(-3.0, 4.0, 4), [-2.0, 0.0, 2.0, 4.0]);
        assert_eq!(ticks(0.0, 0.0, 5), [0.0]);
        assert_eq!(ticks(0.0, f64::NAN, 5), [0.0]);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850.0), "850ms");
        assert_eq!(duration(0.0), "0s");
        assert_eq!(duration(12_000.0), "12s");
        assert_eq!(duration(1_500.0), "1.5s");
        assert_eq!(duration(150_000.0), "2m30s");
        assert_eq!(duration(120_000.0), "2m");
        assert_eq!(duration(3_900_000.0), "1h05m");
    }

    #[test]
    fn escaping_and_truncation() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&apos;x&apos;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
