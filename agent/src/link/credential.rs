//! The agent's credential: the secret the scheduler issued to this agent. A
//! local agent gets it in a file (`--credential-file`, deleted once read); a
//! pool agent trades the join token for one at its first Register and keeps it
//! in `<dir>/credential` (mode 0600) across restarts. It goes out on every call
//! to the scheduler, and every call to the agent's own service must carry it.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use aibro_proto::transport::{constant_time_eq, write_secret};

/// The file under the data directory that keeps a pool agent's credential.
const CREDENTIAL_FILE: &str = "credential";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the credential file `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the credential file `{0}` is empty")]
    Empty(PathBuf),
    #[error("cannot keep the credential in `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) struct Credential {
    value: RwLock<Option<String>>,
    /// Where an issued credential is kept.
    stored: PathBuf,
}

fn read(path: &Path) -> Result<String, CredentialError> {
    let value = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value = value.trim();
    if value.is_empty() {
        return Err(CredentialError::Empty(path.to_path_buf()));
    }
    Ok(value.to_string())
}

impl Credential {
    /// The credential handed over in `file` (which is then deleted), else the
    /// one kept in `dir`, else none yet (a pool agent that has not joined).
    pub(crate) fn load(file: Option<&Path>, dir: &Path) -> Result<Credential, CredentialError> {
        let stored = dir.join(CREDENTIAL_FILE);
        let value = match file {
            Some(file) => {
                let value = read(file)?;
                if let Err(e) = std::fs::remove_file(file) {
                    tracing::warn!(file = %file.display(), "cannot delete the credential file: {e}");
                }
                Some(value)
            }
            None if stored.exists() => Some(read(&stored)?),
            None => None,
        };
        Ok(Credential {
            value: RwLock::new(value),
            stored,
        })
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.value.read().expect("credential lock").clone()
    }

    /// Takes the credential the scheduler issued, then keeps it in the data
    /// directory (mode 0600, written atomically: once there, it is in use).
    pub(crate) fn adopt(&self, issued: String) -> Result<(), CredentialError> {
        *self.value.write().expect("credential lock") = Some(issued.clone());
        write_secret(&self.stored, &issued).map_err(|source| CredentialError::Write {
            path: self.stored.clone(),
            source,
        })
    }

    /// Whether `authorization` metadata carries this agent's credential.
    fn admits(&self, authorization: Option<&str>) -> bool {
        let presented = authorization.and_then(|v| v.strip_prefix("Bearer "));
        let value = self.value.read().expect("credential lock");
        matches!((presented, value.as_deref()), (Some(p), Some(v)) if constant_time_eq(p.trim(), v))
    }
}

/// Refuses calls to the agent's service that do not carry its credential.
#[derive(Clone)]
pub(crate) struct Check(pub std::sync::Arc<Credential>);

impl tonic::service::Interceptor for Check {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.0.admits(authorization) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "this agent takes calls only from its scheduler, with its credential",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_handed_over_file_is_read_once_and_an_issued_one_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let handed = tmp.path().join("handed");
        std::fs::write(&handed, "agent_abc\n").unwrap();
        let c = Credential::load(Some(&handed), tmp.path()).unwrap();
        assert_eq!(c.get().as_deref(), Some("agent_abc"));
        assert!(!handed.exists(), "deleted once read");
        assert!(c.admits(Some("Bearer agent_abc")));
        assert!(!c.admits(Some("Bearer agent_abd")));
        assert!(!c.admits(Some("agent_abc")));
        assert!(!c.admits(None));

        let pool = Credential::load(None, tmp.path()).unwrap();
        assert_eq!(pool.get(), None);
        assert!(
            !pool.admits(Some("Bearer ")),
            "none yet: nothing is admitted"
        );
        pool.adopt("agent_new".into()).unwrap();
        let kept = tmp.path().join(CREDENTIAL_FILE);
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Credential::load(None, tmp.path()).unwrap();
        assert_eq!(again.get().as_deref(), Some("agent_new"));
    }
}
