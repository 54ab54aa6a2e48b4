//! The environment of a process running user code: built from an allow-list of
//! the agent's variables (locale, time zone, thread counts, CUDA/NVIDIA
//! settings, PATH) plus what the launcher sets; never inherited wholesale, so
//! the agent's secrets (join token, cloud credentials) never reach user code.

use std::ffi::OsString;

/// Variables passed through from the agent's environment, by exact name.
const PASSED: [&str; 13] = [
    // The catalog machine type the instance runs on, for code that adapts to it.
    "AIBRO_MACHINE_ID",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "PYTHONUNBUFFERED",
    "SOURCE_DATE_EPOCH",
];

/// Variables passed through by prefix.
const PASSED_PREFIXES: [&str; 2] = ["LC_", "NVIDIA_"];

/// Where TLS finds its CA certificates (public ones, often a proxy's):
/// passed through, and the files they name are in the view.
const CA_VARS: [&str; 4] = [
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];

/// pip's own settings (`PIP_INDEX_URL`, `PIP_CERT`, `PIP_FIND_LINKS`, …), for
/// environment builds only: an index URL may hold credentials.
const PIP_PREFIX: &str = "PIP_";

/// The system's own binaries, after the interpreter's directory.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The agent's variables a user process may see; pip's settings too when
/// it builds an environment.
pub(crate) fn passed_through(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    build: bool,
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            PASSED.contains(&k.as_ref())
                || CA_VARS.contains(&k.as_ref())
                || PASSED_PREFIXES.iter().any(|p| k.starts_with(p))
                || (build && k.starts_with(PIP_PREFIX))
        })
        .collect()
}

/// Files and directories of the agent's environment a user process reads:
/// the CA certificates, and for a build pip's local `PIP_FIND_LINKS` and
/// `PIP_CERT`.
pub(crate) fn files_named(build: bool) -> Vec<std::path::PathBuf> {
    let mut names: Vec<&str> = CA_VARS.to_vec();
    if build {
        names.extend(["PIP_CERT", "PIP_FIND_LINKS"]);
    }
    names
        .into_iter()
        .filter_map(std::env::var_os)
        .flat_map(|v| {
            let v = v.to_string_lossy().into_owned();
            v.split([' ', ':'])
                .filter(|p| p.starts_with('/'))
                .map(std::path::PathBuf::from)
                .collect::<Vec<_>>()
        })
        .filter(|p| p.exists())
        .collect()
}

/// PATH for a process running `program`: its directory first (a virtualenv's
/// bin), then the system's.
pub(crate) fn path_for(program: &std::path::Path) -> OsString {
    match program.parent().filter(|d| d.is_absolute()) {
        Some(dir) => format!("{}:{SYSTEM_PATH}", dir.display()).into(),
        None => SYSTEM_PATH.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_listed_variables_pass() {
        let vars = [
            ("AIBRO_IMDS_ENDPOINT", "http://169.254.169.254"),
            ("AIBRO_JOIN_TOKEN", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("NVIDIA_DRIVER_CAPABILITIES", "all"),
            ("OMP_NUM_THREADS", "4"),
            ("PATH", "/root/.pyenv/shims:/usr/bin"),
            ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
            ("PIP_INDEX_URL", "https://user:secret@index.example/simple"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let names = |build| -> Vec<String> {
            passed_through(vars.clone(), build)
                .into_iter()
                .map(|(k, _)| k.into_string().unwrap())
                .collect()
        };
        let serving = [
            "LANG",
            "LC_ALL",
            "NVIDIA_DRIVER_CAPABILITIES",
            "OMP_NUM_THREADS",
            "SSL_CERT_FILE",
        ];
        assert_eq!(names(false), serving);
        assert_eq!(names(true)[..5], serving);
        assert_eq!(
            names(true)[5..],
            ["PIP_INDEX_URL"],
            "pip's settings in builds only"
        );
        let path = path_for(std::path::Path::new("/e/venv/bin/python"));
        assert!(path
            .to_string_lossy()
            .starts_with("/e/venv/bin:/usr/local/bin"));
    }
}
