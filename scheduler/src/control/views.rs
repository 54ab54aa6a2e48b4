//! What users see of their jobs, built in one place for every adapter: a job
//! with its instances, what each costs and what its agent last reported, the
//! address to send predictions to, and the job's timeline.

use crate::auth::User;
use crate::clock::now_ms;
use crate::error::Result;
use crate::ledger::{self, InstanceCost, JobCost};
use crate::records::{EventRecord, InstanceRecord, JobRecord};
use crate::state::JobKind;

use super::links::LastHeard;
use super::Control;

/// An instance as users see it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub record: InstanceRecord,
    pub cost: Option<InstanceCost>,
    /// What its agent last reported, while the instance is live.
    pub heard: Option<LastHeard>,
}

/// A job as users see it.
#[derive(Debug, Clone)]
pub struct JobView {
    pub job: JobRecord,
    pub instances: Vec<InstanceView>,
    pub cost: JobCost,
    /// Where predictions go (inference jobs; empty for training).
    pub predict_address: String,
}

impl Control {
    /// The job with its instances, their costs and loads.
    pub fn job_view(&self, job: JobRecord) -> Result<JobView> {
        let records = self.store().instances_of(&job)?;
        let cost = ledger::job_cost(&job, &records, self.catalog(), now_ms());
        let instances = self.instance_views(records, &cost);
        Ok(JobView {
            predict_address: self.predict_address(&job),
            job,
            instances,
            cost,
        })
    }

    /// The instances of the caller's job `job_id`, or of all their jobs.
    pub fn list_instances(&self, user: &User, job_id: &str) -> Result<Vec<InstanceView>> {
        let jobs = if job_id.is_empty() {
            self.store().jobs_of(&user.0)?
        } else {
            vec![self.find_job(user, job_id, "")?]
        };
        let mut views = Vec::new();
        for job in jobs {
            views.extend(self.job_view(job)?.instances);
        }
        Ok(views)
    }

    /// The timeline events of the caller's job `job_id`.
    pub fn timeline(&self, user: &User, job_id: &str) -> Result<Vec<EventRecord>> {
        let job = self.find_job(user, job_id, "")?;
        self.events_of(&job)
    }

    /// The timeline events of `job` (found for its caller already).
    pub fn events_of(&self, job: &JobRecord) -> Result<Vec<EventRecord>> {
        Ok(self.store().events(&job.id)?)
    }

    /// The REST-style address of the original AIbro, on the scheduler's endpoint.
    pub fn predict_address(&self, job: &JobRecord) -> String {
        if job.kind != JobKind::Inference {
            return String::new();
        }
        let client = job.client_ids.first().map_or("public", String::as_str);
        format!(
            "{}/v1/{}/{client}/{}/predict",
            self.settings().public_url,
            job.owner,
            job.model_name
        )
    }

    fn instance_views(&self, records: Vec<InstanceRecord>, cost: &JobCost) -> Vec<InstanceView> {
        records
            .into_iter()
            .map(|record| InstanceView {
                cost: cost
                    .instances
                    .iter()
                    .find(|c| c.instance_id == record.id)
                    .cloned(),
                heard: self
                    .links()
                    .last_heard(&record.id)
                    .filter(|_| !record.state.is_closed()),
                record,
            })
            .collect()
    }
}

/// A machine type on offer, with what can be had of it now.
#[derive(Debug, Clone)]
pub struct MachineOffer {
    pub kind: crate::catalog::MachineType,
    /// Machines of the type that exist (a pool's joined agents).
    pub capacity: u32,
    /// Those not running an instance now.
    pub available: u32,
    /// The probability a spot request is fulfilled now.
    pub spot_availability: f64,
}

impl Control {
    /// The pool's agents (none without a pool provider).
    pub fn pool_agents(&self) -> Vec<crate::provider::pool::PoolAgent> {
        self.machines().pool().map_or_else(Vec::new, |p| p.agents())
    }

    /// The catalog's machine types with their live capacity.
    pub fn machine_offers(&self) -> Vec<MachineOffer> {
        let machines = self.machines();
        self.catalog()
            .types()
            .map(|kind| {
                let capacity = machines.live_capacity(&kind);
                MachineOffer {
                    available: capacity.saturating_sub(machines.capacity().used(&kind.name)),
                    spot_availability: machines.spot_availability(&kind),
                    capacity,
                    kind,
                }
            })
            .collect()
    }
}

/// A curl command that calls the predict URL `address` with a JSON body (what
/// `aibro deploy` prints and the console shows), the address shell-quoted.
pub fn curl_line(address: &str) -> String {
    let quoted = shlex::try_quote(address).map_or_else(|_| address.into(), |q| q.into_owned());
    format!("curl -X POST {quoted} -H 'content-type: application/json' -d '{{\"text\": \"hi\"}}'")
}
