//! Training: one run of the repo's train() with its progress streamed as reports
//! ([`trainer`]), and returning what it wrote to the scheduler ([`results`]).

pub(crate) mod results;
pub(crate) mod trainer;
