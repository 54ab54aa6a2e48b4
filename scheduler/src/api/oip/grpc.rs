//! `inference.GRPCInferenceService`: OIP over gRPC. Inputs come as typed
//! `contents` or `raw_input_contents`; outputs go back as
//! `raw_output_contents` (what tritonclient reads). The client id is the
//! `aibro-client-id` metadata.

use aibro_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use aibro_proto::inference::model_infer_request::InferInputTensor;
use aibro_proto::inference::model_infer_response::InferOutputTensor;
use aibro_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use tonic::{Request, Response, Status};

use super::tensors::Tensor;
use crate::control::Control;
use crate::error::{Error, Result};

pub(crate) struct OipGrpc {
    control: Control,
}

/// The service, taking messages up to `max_request_bytes`.
pub(crate) fn server(
    control: &Control,
    max_request_bytes: usize,
) -> GrpcInferenceServiceServer<OipGrpc> {
    GrpcInferenceServiceServer::new(OipGrpc {
        control: control.clone(),
    })
    .max_decoding_message_size(max_request_bytes)
    .max_encoding_message_size(usize::MAX)
}

/// The caller's `aibro-client-id` metadata, if any.
fn client<T>(request: &Request<T>) -> Result<Option<&str>, Status> {
    request
        .metadata()
        .get(super::CLIENT_ID_HEADER)
        .map(|v| v.to_str())
        .transpose()
        .map_err(|_| Status::invalid_argument("the aibro-client-id metadata is not text"))
}

/// The input tensors, from `raw_input_contents` (one per input, in order)
/// or each input's `contents`.
fn inputs(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> Result<Vec<Tensor>> {
    if raw.is_empty() {
        return inputs
            .into_iter()
            .map(|i| {
                Tensor::contents(
                    &i.name,
                    &i.datatype,
                    i.shape,
                    i.contents.unwrap_or_default(),
                )
            })
            .collect();
    }
    if raw.len() != inputs.len() || inputs.iter().any(|i| i.contents.is_some()) {
        return Err(Error::InvalidArgument(format!(
            "{} raw_input_contents for {} inputs: with raw contents, give one per input and \
             no input contents",
            raw.len(),
            inputs.len()
        )));
    }
    inputs
        .into_iter()
        .zip(raw)
        .map(|(i, data)| Tensor::raw(&i.name, &i.datatype, i.shape, data))
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for OipGrpc {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.control.accepts_work();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let ready = super::model_ready(&self.control, &request.get_ref().name, client(&request)?)?;
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: super::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: super::EXTENSIONS.map(String::from).to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let name = &request.get_ref().name;
        super::model_ready(&self.control, name, client(&request)?)?;
        Ok(Response::new(ModelMetadataResponse {
            name: name.clone(),
            versions: Vec::new(),
            platform: super::PLATFORM.into(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let client = client(&request)?.map(str::to_string);
        let r = request.into_inner();
        let inputs = inputs(r.inputs, r.raw_input_contents)?;
        let names: Vec<String> = r.outputs.into_iter().map(|o| o.name).collect();
        let outputs = super::infer(
            &self.control,
            &r.model_name,
            client.as_deref(),
            inputs,
            &names,
        )
        .await?;
        let described = outputs
            .iter()
            .map(|t| InferOutputTensor {
                name: t.name.clone(),
                datatype: t.datatype.name(),
                shape: t.shape.clone(),
                ..InferOutputTensor::default()
            })
            .collect();
        Ok(Response::new(ModelInferResponse {
            model_name: r.model_name,
            model_version: r.model_version,
            id: r.id,
            outputs: described,
            raw_output_contents: outputs.into_iter().map(|t| t.data).collect(),
            ..ModelInferResponse::default()
        }))
    }
}
