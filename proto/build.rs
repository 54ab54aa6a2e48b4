//! Compiles `aibro/v1/*.proto` and the Open Inference Protocol's
//! `oip/open_inference_grpc.proto` (package `inference`) with protox (no
//! system protoc) and writes the descriptor set that the scheduler and agent
//! serve through gRPC reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "aibro/v1/common.proto",
        "aibro/v1/artifacts.proto",
        "aibro/v1/inference.proto",
        "aibro/v1/training.proto",
        "aibro/v1/jobs.proto",
        "aibro/v1/marketplace.proto",
        "aibro/v1/admin.proto",
        "aibro/v1/agent.proto",
        "oip/open_inference_grpc.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("aibro_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
