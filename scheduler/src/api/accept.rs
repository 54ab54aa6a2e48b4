//! TLS on the scheduler's port by our own acceptor: tonic's offers only ALPN
//! `h2`, which HTTP/1.1 clients (curl --http1.1, load balancers) cannot
//! speak. This one offers `h2` and `http/1.1`; the server tells them apart by
//! the connection's preface. Users present no client certificate (agents
//! prove themselves with their credentials). Handshakes run side by side, at
//! most [`HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`].

use std::future::ready;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::{Stream, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
pub(crate) use tokio_rustls::TlsAcceptor;

const HANDSHAKES: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor for the certificate chain `cert` and its `key` (PEM).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the TLS certificate `{}`", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the TLS key `{}`", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not make a server identity")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `tcp`'s connections after their TLS handshake; failed ones are dropped.
pub(crate) fn handshaken(
    tcp: impl Stream<Item = std::io::Result<TcpStream>>,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    tcp.filter_map(|conn| ready(conn.ok()))
        .map(move |conn| {
            let handshake = acceptor.accept(conn);
            async move { tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await }
        })
        .buffer_unordered(HANDSHAKES)
        .filter_map(|handshake| {
            ready(match handshake {
                Ok(Ok(tls)) => Some(Ok(tls)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => None,
            })
        })
}
