//! `aibro.v1.Jobs`: the caller's jobs, their instances, timeline and live events.

use aibro_proto::v1::{
    jobs_server::Jobs, GetJobRequest, GetTimelineRequest, Job, JobEvent, ListInstancesRequest,
    ListInstancesResponse, ListJobsRequest, ListJobsResponse, Timeline, WatchJobRequest,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::convert;
use crate::control::Control;

pub struct JobsApi {
    pub control: Control,
}

#[tonic::async_trait]
impl Jobs for JobsApi {
    type WatchJobStream = BoxStream<'static, Result<JobEvent, Status>>;

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let user = super::caller(&request)?;
        let job = self
            .control
            .find_job(&user, &request.get_ref().job_id, "")?;
        let view = self.control.job_view(job)?;
        Ok(Response::new(convert::job(&view)))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let user = super::caller(&request)?;
        let r = request.get_ref();
        let (jobs, next_page_token) =
            self.control
                .list_jobs(&user, r.active_only, r.page_size, &r.page_token)?;
        let mut views = Vec::with_capacity(jobs.len());
        for job in jobs {
            views.push(convert::job(&self.control.job_view(job)?));
        }
        Ok(Response::new(ListJobsResponse {
            jobs: views,
            next_page_token,
        }))
    }

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let user = super::caller(&request)?;
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
        let user = super::caller(&request)?;
        let job_id = &request.get_ref().job_id;
        let events = self.control.timeline(&user, job_id)?;
        Ok(Response::new(convert::timeline(job_id, &events)))
    }

    async fn list_instances(
        &self,
        request: Request<ListInstancesRequest>,
    ) -> Result<Response<ListInstancesResponse>, Status> {
        let user = super::caller(&request)?;
        let views = self
            .control
            .list_instances(&user, &request.get_ref().job_id)?;
        let instances = views.iter().map(convert::instance).collect();
        Ok(Response::new(ListInstancesResponse { instances }))
    }
}
