//! The gRPC contract of aibro-rs (`aibro.v1`): generated messages, clients and
//! servers, plus the encoded descriptor set for gRPC reflection.

#![allow(clippy::large_enum_variant, clippy::doc_overindented_list_items)]

/// Package `aibro.v1`.
pub mod v1 {
    tonic::include_proto!("aibro.v1");
}

/// Encoded `FileDescriptorSet` of every `aibro.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aibro_descriptor");

/// Transport glue shared by the scheduler and the agent.
pub mod transport {
    use tokio::net::{TcpListener, TcpStream};
    use tokio_stream::{wrappers::TcpListenerStream, Stream, StreamExt};

    /// Accepted connections with TCP_NODELAY set: tonic applies its own
    /// `tcp_nodelay` only to listeners it binds itself, and small gRPC
    /// messages would otherwise wait on delayed ACKs (~40 ms).
    pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
        TcpListenerStream::new(listener).map(|conn| {
            if let Ok(stream) = &conn {
                let _ = stream.set_nodelay(true);
            }
            conn
        })
    }
}
