//! A cloud instance's agent starts with a one-time bootstrap token (from its
//! boot script) instead of a credential: before it serves, it trades the
//! token for its credential, and, when the scheduler reaches agents over TLS,
//! for its own certificate too; both are kept (0600) in its data directory,
//! so a restart (a stopped instance started again) needs no token.

use std::path::{Path, PathBuf};

use aibro_proto::transport::write_secret;
use aibro_proto::v1::RegisterRequest;
use tonic::transport::ServerTlsConfig;

use super::credential::{Credential, CredentialError};
use super::gateway::CallError;
use super::gateway::{retrying, Gateway};

const CERT_FILE: &str = "tls/agent.pem";
const KEY_FILE: &str = "tls/agent-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the scheduler refused the bootstrap token: {0}")]
    Refused(tonic::Status),
    #[error("the scheduler answered the bootstrap token without a credential")]
    NoCredential,
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("cannot keep the agent's certificate in `{path}`: {source}")]
    Keep {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's kept certificate: {0}")]
    Tls(#[from] aibro_proto::transport::TlsError),
}

impl CallError for BootstrapError {
    fn status(&self) -> Option<&tonic::Status> {
        match self {
            BootstrapError::Refused(status) => Some(status),
            _ => None,
        }
    }
}

/// Trades the token for the credential (and a certificate) when the agent
/// runs as an instance, holds a token and no credential yet.
pub(crate) async fn trade_if_new(
    gateway: &Gateway,
    credential: &Credential,
    instance_id: &str,
    address: &str,
    dir: &Path,
) -> Result<(), BootstrapError> {
    if instance_id.is_empty() || credential.get().is_some() {
        return Ok(());
    }
    let request = RegisterRequest {
        instance_id: instance_id.to_string(),
        address: address.to_string(),
        ..Default::default()
    };
    let answer = retrying("the bootstrap trade", || {
        let mut gateway = gateway.clone();
        let request = request.clone();
        async move {
            gateway
                .register(request)
                .await
                .map_err(BootstrapError::Refused)
        }
    })
    .await?
    .into_inner();
    if answer.credential.is_empty() {
        return Err(BootstrapError::NoCredential);
    }
    if !answer.tls_cert_pem.is_empty() {
        keep(&dir.join(CERT_FILE), &answer.tls_cert_pem)?;
        keep(&dir.join(KEY_FILE), &answer.tls_key_pem)?;
    }
    credential.adopt(answer.credential)?;
    tracing::info!(
        tls = !answer.tls_cert_pem.is_empty(),
        "traded the bootstrap token for this agent's credential"
    );
    Ok(())
}

/// The certificate a bootstrap trade gave this agent, if any.
pub(crate) fn kept_tls(dir: &Path) -> Result<Option<ServerTlsConfig>, BootstrapError> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !cert.exists() {
        return Ok(None);
    }
    Ok(Some(aibro_proto::transport::server_tls(&cert, &key)?))
}

fn keep(path: &Path, pem: &str) -> Result<(), BootstrapError> {
    let keep_err = |source| BootstrapError::Keep {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(keep_err)?;
    }
    write_secret(path, pem).map_err(keep_err)
}
