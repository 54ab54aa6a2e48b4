//! TLS material for a scheduler and its agents over a real network:
//! `aibro-scheduler tls init` makes a CA and the scheduler's certificate,
//! `aibro-scheduler tls agent` issues an agent's, both signed by that CA. A
//! CA certificate (`CA:TRUE`, as `openssl req -x509` makes by default) used as
//! the scheduler's own is refused at start: every client would reject it
//! (`CaUsedAsEndEntity`).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} exists already; pick another --dir or remove it")]
    Exists(PathBuf),
    #[error("{path}: not a PEM certificate this scheduler can read ({source})")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "{0} is a CA certificate (CA:TRUE); clients refuse it as the scheduler's own \
         (CaUsedAsEndEntity). Make a CA and a server certificate signed by it with \
         `aibro-scheduler tls init --dir DIR --host HOST` and pass \
         --tls-cert DIR/scheduler.pem --tls-key DIR/scheduler-key.pem --tls-ca DIR/ca.pem"
    )]
    CaAsServer(PathBuf),
    #[error("cannot make the certificate: {0}")]
    Make(#[from] rcgen::Error),
}

/// The files `init` and `issue` write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes `dir/ca.pem` (+ its key) and `dir/scheduler.pem` (+ its key) for
/// the names and addresses in `hosts`; keys are written 0600.
pub fn init(dir: &Path, hosts: &[String]) -> Result<(Issued, Issued), TlsError> {
    create_dir(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, "aibro CA");
    let ca = params.self_signed(&ca_key)?;
    let ca_files = write_pair(dir, CA_CERT, CA_KEY, &ca, &ca_key)?;
    let issuer = Issuer { ca, key: ca_key };
    let (cert, key) = leaf("scheduler", hosts, &issuer)?;
    let server = write_pair(dir, "scheduler.pem", "scheduler-key.pem", &cert, &key)?;
    Ok((ca_files, server))
}

/// Issues `dir/agent-<name>.pem` (+ its key) for `hosts`, signed by the CA
/// that `init` made in `dir`.
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<Issued, TlsError> {
    let issuer = Issuer::load(&dir.join(CA_CERT), &dir.join(CA_KEY))?;
    let (cert, key) = leaf(&format!("agent-{name}"), hosts, &issuer)?;
    let stem = format!("agent-{name}");
    write_pair(
        dir,
        &format!("{stem}.pem"),
        &format!("{stem}-key.pem"),
        &cert,
        &key,
    )
}

/// The CA, loaded to issue agents' certificates (a cloud instance's agent
/// gets its own at its bootstrap).
pub struct Issuer {
    ca: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issuer(CA key held)")
    }
}

impl Issuer {
    pub fn load(ca_cert: &Path, ca_key: &Path) -> Result<Issuer, TlsError> {
        let ca_pem = read(ca_cert)?;
        let key = KeyPair::from_pem(&read(ca_key)?)?;
        let params = CertificateParams::from_ca_cert_pem(&ca_pem).map_err(|source| {
            TlsError::Unreadable {
                path: ca_cert.to_path_buf(),
                source,
            }
        })?;
        // The same subject and key: what it signs verifies against the CA's PEM.
        let ca = params.self_signed(&key)?;
        Ok(Issuer { ca, key })
    }

    /// A certificate for `hosts` and its key, as PEM.
    pub fn issue_pem(&self, name: &str, hosts: &[String]) -> Result<(String, String), TlsError> {
        let (cert, key) = leaf(name, hosts, self)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Refuses a certificate that is a CA as the scheduler's server certificate.
pub fn check_server_cert(path: &Path) -> Result<(), TlsError> {
    let pem = read(path)?;
    let params =
        CertificateParams::from_ca_cert_pem(&pem).map_err(|source| TlsError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
    match params.is_ca {
        IsCa::Ca(_) => Err(TlsError::CaAsServer(path.to_path_buf())),
        IsCa::NoCa | IsCa::ExplicitNoCa => Ok(()),
    }
}

/// A leaf certificate named `name` for `hosts` (server and client use).
fn leaf(name: &str, hosts: &[String], issuer: &Issuer) -> Result<(Certificate, KeyPair), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer.ca, &issuer.key)?;
    Ok((cert, key))
}

fn write_pair(
    dir: &Path,
    cert_name: &str,
    key_name: &str,
    cert: &Certificate,
    key: &KeyPair,
) -> Result<Issued, TlsError> {
    let issued = Issued {
        cert: dir.join(cert_name),
        key: dir.join(key_name),
    };
    write_new(&issued.cert, &cert.pem(), 0o644)?;
    write_new(&issued.key, &key.serialize_pem(), 0o600)?;
    Ok(issued)
}

/// Writes a file that must not exist yet, with `mode`.
fn write_new(path: &Path, content: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => TlsError::Exists(path.to_path_buf()),
            _ => io(e),
        })?;
    file.write_all(content.as_bytes()).map_err(io)
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["127.0.0.1".into(), "localhost".into()]
    }

    #[test]
    fn init_makes_a_ca_and_a_server_certificate_the_check_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, server) = init(dir.path(), &hosts()).unwrap();
        check_server_cert(&server.cert).unwrap();
        assert!(matches!(
            check_server_cert(&ca.cert),
            Err(TlsError::CaAsServer(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        for key in [&ca.key, &server.key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        assert!(matches!(
            init(dir.path(), &hosts()),
            Err(TlsError::Exists(_))
        ));
    }

    #[test]
    fn agents_get_certificates_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &hosts()).unwrap();
        let agent = issue(dir.path(), "gpu-1", &["10.0.0.7".into()]).unwrap();
        assert_eq!(agent.cert, dir.path().join("agent-gpu-1.pem"));
        check_server_cert(&agent.cert).unwrap();
        assert!(matches!(
            issue(tempfile::tempdir().unwrap().path(), "x", &hosts()),
            Err(TlsError::Io { .. })
        ));
    }
}
