//! The gRPC contract of aibro-rs (`aibro.v1`): generated messages, clients and
//! servers, plus the encoded descriptor set for gRPC reflection.

#![allow(clippy::large_enum_variant, clippy::doc_overindented_list_items)]

/// Package `aibro.v1`.
pub mod v1 {
    tonic::include_proto!("aibro.v1");
}

/// Encoded `FileDescriptorSet` of every `aibro.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aibro_descriptor");
