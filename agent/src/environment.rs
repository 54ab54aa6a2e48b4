//! Getting a model repo ready to run: fetching its artifact from the scheduler and
//! unpacking it ([`fetch`]), gearing up its Python environment ([`venv`]), and the
//! local dry run of a repo archive ([`dry_run`]).

pub(crate) mod dry_run;
pub(crate) mod fetch;
pub(crate) mod venv;
