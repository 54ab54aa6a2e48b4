//! The gRPC contract of aibro-rs (`aibro.v1`) and the Open Inference
//! Protocol v2 (`inference`): generated messages, clients and servers, plus
//! the encoded descriptor set for gRPC reflection.

#![deny(clippy::too_many_lines)]
#![allow(clippy::large_enum_variant, clippy::doc_overindented_list_items)]

/// Package `aibro.v1`.
// Generated: tonic routes every RPC of a service in one `call`.
#[allow(clippy::too_many_lines)]
pub mod v1 {
    tonic::include_proto!("aibro.v1");
}

/// Package `inference`: the Open Inference Protocol v2 (KServe v2), as
/// published in `kserve/open-inference-protocol`.
#[allow(clippy::too_many_lines)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// Encoded `FileDescriptorSet` of every `aibro.v1` and `inference` file, for
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("aibro_descriptor");

/// Transport glue shared by the scheduler, the agent and the CLI: accepted
/// connections, optional TLS (rustls) from PEM files, comparing secrets.
pub mod transport {
    use std::path::Path;
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_stream::{wrappers::TcpListenerStream, Stream, StreamExt};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

    /// A TLS file that could not be read.
    #[derive(Debug)]
    pub struct TlsError(pub String);

    impl std::fmt::Display for TlsError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for TlsError {}

    fn read(what: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path)
            .map_err(|e| TlsError(format!("cannot read the {what} `{}`: {e}", path.display())))
    }

    /// A server's TLS from its certificate chain and key (PEM).
    pub fn server_tls(cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsError> {
        let identity = Identity::from_pem(read("TLS certificate", cert)?, read("TLS key", key)?);
        Ok(ServerTlsConfig::new().identity(identity))
    }

    /// A client's TLS that trusts the CA certificate(s) in `ca` (PEM).
    pub fn client_tls(ca: &Path) -> Result<ClientTlsConfig, TlsError> {
        let ca = Certificate::from_pem(read("TLS CA certificate", ca)?);
        Ok(ClientTlsConfig::new().ca_certificate(ca))
    }

    /// An endpoint for `url` (http:// or https://), with `tls` applied to
    /// https URLs; lazily connecting, TCP_NODELAY.
    pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad URL `{url}`: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        match tls {
            Some(tls) if url.starts_with("https://") => endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS for `{url}`: {e}")),
            _ => Ok(endpoint),
        }
    }

    /// Writes a secret to `path` readable only by this user (mode 0600),
    /// atomically: a reader sees the whole file or none (written beside it,
    /// synced, then renamed).
    pub fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Compares two secrets without leaking where they differ.
    pub fn constant_time_eq(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The URL of a peer at `host:port`: https when TLS is configured.
    pub fn url(address: &str, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{address}")
    }

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
