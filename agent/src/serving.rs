//! Serving Predict: a persistent Python worker running the repo's predict.py
//! ([`worker`]), and the pool of them that serves one job's requests, in batches
//! where the repo can take them ([`worker_pool`]).

pub(crate) mod worker;
pub(crate) mod worker_pool;
