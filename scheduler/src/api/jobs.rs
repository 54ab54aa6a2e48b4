//! `aibro.v1.Jobs`: the caller's jobs, their instances, timeline and live events.

use aibro_proto::v1::{
    jobs_server::Jobs, GetJobRequest, GetTimelineRequest, Job, JobEvent, ListInstancesRequest,
    ListInstancesResponse, ListJobsRequest, ListJobsResponse, Timeline, WatchJobRequest,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::clock::now_ms;
use crate::control::Control;
use crate::convert;
use crate::error::Error;
use crate::ledger::{self, JobCost};
use crate::store::{InstanceRecord, JobRecord};

pub struct JobsApi {
    pub control: Control,
}

impl JobsApi {
    fn job_view(&self, job: &JobRecord) -> Result<Job, Status> {
        let instances = self
            .control
            .store()
            .instances_of(job)
            .map_err(Error::from)?;
        let cost = self.cost(job, &instances);
        let public_url = &self.control.settings().public_url;
        let seen = |id: &str| self.control.seen(id);
        Ok(convert::job(job, &instances, &cost, seen, public_url))
    }

    fn cost(&self, job: &JobRecord, instances: &[InstanceRecord]) -> JobCost {
        ledger::job_cost(job, instances, self.control.catalog(), now_ms())
    }
}

#[tonic::async_trait]
impl Jobs for JobsApi {
    type WatchJobStream = BoxStream<'static, Result<JobEvent, Status>>;

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let user = super::caller(&self.control, &request)?;
        let job = self
            .control
            .find_job(&user, &request.get_ref().job_id, "")?;
        Ok(Response::new(self.job_view(&job)?))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let user = super::caller(&self.control, &request)?;
        let r = request.get_ref();
        let (jobs, next_page_token) =
            self.control
                .list_jobs(&user, r.active_only, r.page_size, &r.page_token)?;
        let jobs = jobs
            .iter()
            .map(|j| self.job_view(j))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let user = super::caller(&self.control, &request)?;
        let job = self
            .control
            .find_job(&user, &request.get_ref().job_id, "")?;
        let job_id = job.id.clone();
        let stream = self
            .control
            .watch(job.id)
            .map(move |e| e.map(|e| convert::event(&job_id, &e)).map_err(Status::from));
        Ok(Response::new(stream.boxed()))
    }

    async fn get_timeline(
        &self,
        request: Request<GetTimelineRequest>,
    ) -> Result<Response<Timeline>, Status> {
        let user = super::caller(&self.control, &request)?;
        let job = self
            .control
            .find_job(&user, &request.get_ref().job_id, "")?;
        let events = self.control.store().events(&job.id).map_err(Error::from)?;
        Ok(Response::new(convert::timeline(&job.id, &events)))
    }

    async fn list_instances(
        &self,
        request: Request<ListInstancesRequest>,
    ) -> Result<Response<ListInstancesResponse>, Status> {
        let user = super::caller(&self.control, &request)?;
        let job_id = &request.get_ref().job_id;
        let jobs = if job_id.is_empty() {
            self.control.store().jobs_of(&user.0).map_err(Error::from)?
        } else {
            vec![self.control.find_job(&user, job_id, "")?]
        };
        let mut instances = Vec::new();
        for job in &jobs {
            let records = self
                .control
                .store()
                .instances_of(job)
                .map_err(Error::from)?;
            let cost = self.cost(job, &records);
            instances.extend(
                records
                    .iter()
                    .zip(&cost.instances)
                    .map(|(i, c)| convert::instance(i, Some(c), self.control.seen(&i.id))),
            );
        }
        Ok(Response::new(ListInstancesResponse { instances }))
    }
}
