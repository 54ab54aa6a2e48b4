//! Predict: the router's answer, and on the (cold) error path a message that
//! says why the model could not be called; whether a model (or the scheduler)
//! is ready to be called. Every protocol's predictions pass here, where they
//! are counted and timed.

use crate::error::{Error, Result};
use crate::metrics::Outcome;
use crate::router::{RouteError, Routed};

use super::Control;

impl Control {
    pub async fn predict(
        &self,
        owner: &str,
        client_id: &str,
        model_name: &str,
        payload: Vec<u8>,
        content_type: String,
    ) -> Result<Routed> {
        let timer = self.metrics().predict_started(owner, model_name);
        let routed = self
            .routed_prediction(owner, client_id, model_name, payload, content_type)
            .await;
        if let Some(timer) = timer {
            timer.finish(match &routed {
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::of_code(e.code()),
            });
        }
        routed
    }

    async fn routed_prediction(
        &self,
        owner: &str,
        client_id: &str,
        model_name: &str,
        payload: Vec<u8>,
        content_type: String,
    ) -> Result<Routed> {
        let routed = self
            .router()
            .predict(owner, client_id, model_name, payload, content_type)
            .await;
        routed.map_err(|e| match e {
            RouteError::ClientDenied => Error::PermissionDenied(format!(
                "client id `{client_id}` may not call `{owner}/{model_name}`"
            )),
            RouteError::NoRoute | RouteError::NoBackend => self.why_not_serving(owner, model_name),
            RouteError::Agent(status) => Error::Agent(status),
        })
    }

    /// Whether `client_id`'s calls to the model would find an instance now.
    /// A model the client may not call is not found, as a missing one.
    pub fn model_ready(&self, owner: &str, client_id: &str, model_name: &str) -> Result<bool> {
        self.router()
            .ready(owner, client_id, model_name)
            .map_err(|_| {
                Error::NotFound(format!(
                    "no model `{model_name}` of `{owner}` for this client id"
                ))
            })
    }

    /// Whether the scheduler takes work: false once it began shutting down.
    pub fn accepts_work(&self) -> bool {
        !self.parts.cancel.is_cancelled()
    }

    fn why_not_serving(&self, owner: &str, model_name: &str) -> Error {
        match self.store().job_by_name(owner, model_name) {
            // Predict callers are not the owner: the job id stays out of the message.
            Ok(Some(job)) if job.state.status == crate::state::JobStatus::Deployed => {
                Error::Unavailable(format!(
                "model `{owner}/{model_name}` has no reachable instance right now; retry shortly"
            ))
            }
            Ok(Some(job)) => Error::Unavailable(format!(
                "model `{owner}/{model_name}` is not serving yet ({}); retry once it is DEPLOYED",
                job.state.substatus.name()
            )),
            _ => Error::NotFound(format!(
                "no deployed model `{model_name}` for owner `{owner}`"
            )),
        }
    }
}
