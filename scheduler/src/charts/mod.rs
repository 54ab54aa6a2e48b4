//! Charts drawn on the server as self-contained SVG: the job timeline as a
//! Gantt chart ([`timeline_svg`], also behind `aibro timeline --svg`) and
//! training progress per epoch ([`progress_svg`]). Pure functions of the
//! proto messages; every text in them is XML-escaped by one function.

mod progress;
mod svg;
mod timeline;

pub use progress::progress_svg;
pub use timeline::timeline_svg;
