//! `aibro.v1.AgentGateway`: the agent-facing service. Every call carries the
//! agent's own credential (the join token only a pool agent's first Register)
//! and may speak only for what that credential is bound to; registrations,
//! phase reports and heartbeats go to the control plane, artifacts are
//! streamed from the blob store.

use std::time::Duration;

use aibro_proto::v1::{
    agent_gateway_server::AgentGateway, report_request::Body, ArtifactRef, Chunk,
    FetchArtifactRequest, RegisterRequest, RegisterResponse, ReportRequest, ReportResponse,
    ResultChunk,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::AgentCaller;
use crate::control::{AgentClaim, AgentReport, Control, Registration, SpotNotice};
use crate::error::Error;

pub struct GatewayApi {
    pub control: Control,
    pub heartbeat_interval: Duration,
    pub max_result_bytes: u64,
}

impl GatewayApi {
    /// The calling agent: the join token or a valid credential.
    fn caller<T>(&self, request: &Request<T>) -> Result<AgentCaller, Status> {
        Ok(self
            .control
            .auth()
            .agent_caller(request.metadata())
            .map_err(Error::from)?)
    }

    /// The calling agent, if it may make `claim`.
    fn check<T>(&self, request: &Request<T>, claim: AgentClaim<'_>) -> Result<AgentCaller, Status> {
        let caller = self.caller(request)?;
        self.control.authorize_agent(&caller, claim)?;
        Ok(caller)
    }
}

#[tonic::async_trait]
impl AgentGateway for GatewayApi {
    type FetchArtifactStream = BoxStream<'static, Result<Chunk, Status>>;

    #[tracing::instrument(skip_all, fields(instance_id = %request.get_ref().instance_id))]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let r = request.get_ref();
        let claim = AgentClaim::Register {
            instance_id: &r.instance_id,
            agent_id: &r.agent_id,
        };
        let caller = self.check(&request, claim)?;
        let r = request.into_inner();
        let registration = Registration {
            hardware: r.hardware.unwrap_or_default().into(),
            instance_id: r.instance_id,
            agent_id: r.agent_id,
            machine_id: r.machine_id,
            address: r.address,
            sandbox: r.sandbox,
        };
        let issued = self.control.register(&caller, registration).await?;
        let (tls_cert_pem, tls_key_pem) = issued
            .tls
            .map(|t| (t.cert_pem, t.key_pem))
            .unwrap_or_default();
        Ok(Response::new(RegisterResponse {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u32,
            credential: issued.credential.unwrap_or_default(),
            tls_cert_pem,
            tls_key_pem,
        }))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let r = request.get_ref();
        let claim = AgentClaim::Report {
            instance_id: &r.instance_id,
            agent_id: &r.agent_id,
        };
        self.check(&request, claim)?;
        let r = request.into_inner();
        match r.body {
            Some(Body::Phase(phase)) => {
                let report = AgentReport::try_from(phase)?;
                self.control.report(&r.instance_id, report).await?
            }
            Some(Body::Heartbeat(h)) => {
                self.control
                    .heartbeat(&r.instance_id, &r.agent_id, h.into())?
            }
            Some(Body::Progress(p)) => {
                self.control
                    .training_update(&r.instance_id, p.into())
                    .await?
            }
            Some(Body::SpotNotice(n)) => {
                let notice = SpotNotice::try_from(n).map_err(Error::InvalidArgument)?;
                self.control.spot_notice(&r.instance_id, notice)?
            }
            None => return Err(Status::invalid_argument("report has no body")),
        }
        Ok(Response::new(ReportResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn upload_result(
        &self,
        request: Request<Streaming<ResultChunk>>,
    ) -> Result<Response<ArtifactRef>, Status> {
        let caller = self.caller(&request)?;
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the result upload was empty"))?;
        let job_id = first.job_id.clone();
        self.control
            .authorize_agent(&caller, AgentClaim::Result(&job_id))?;
        let owner = self.control.returning_job_owner(&job_id)?;
        let rest = chunks.map(move |c| match c {
            Ok(c) if c.job_id == job_id => Ok(c.data),
            Ok(c) => Err(Status::invalid_argument(format!(
                "chunk for job {} in the upload of {job_id}",
                c.job_id
            ))),
            Err(e) => Err(e),
        });
        let data = futures::stream::iter([Ok(first.data)]).chain(rest);
        let record = self
            .control
            .upload(&owner, Box::pin(data), self.max_result_bytes)
            .await?;
        Ok(Response::new(ArtifactRef {
            digest: record.digest,
            size: record.size,
        }))
    }

    async fn fetch_artifact(
        &self,
        request: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        self.check(&request, AgentClaim::Artifact(&request.get_ref().digest))?;
        let digest = &request.get_ref().digest;
        let path = self
            .control
            .existing_blob(digest)
            .ok_or_else(|| Status::not_found(format!("artifact {digest} not found")))?;
        Ok(Response::new(super::file_chunks(path, "artifact").await?))
    }
}
