//! The environment of a process running user code: built from an allow-list of
//! the agent's variables (locale, time zone, thread counts, CUDA/NVIDIA
//! settings, PATH) plus what the launcher sets; never inherited wholesale, so
//! the agent's secrets (join token, cloud credentials) never reach user code.

use std::ffi::OsString;

/// Variables passed through from the agent's environment, by exact name.
const PASSED: [&str; 12] = [
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

/// The system's own binaries, after the interpreter's directory.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The agent's variables a user process may see.
pub(crate) fn passed_through(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            PASSED.contains(&k.as_ref()) || PASSED_PREFIXES.iter().any(|p| k.starts_with(p))
        })
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
            ("AIBRO_JOIN_TOKEN", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("NVIDIA_DRIVER_CAPABILITIES", "all"),
            ("OMP_NUM_THREADS", "4"),
            ("PATH", "/root/.pyenv/shims:/usr/bin"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let names: Vec<_> = passed_through(vars)
            .into_iter()
            .map(|(k, _)| k.into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "LANG",
                "LC_ALL",
                "NVIDIA_DRIVER_CAPABILITIES",
                "OMP_NUM_THREADS"
            ]
        );
        let path = path_for(std::path::Path::new("/e/venv/bin/python"));
        assert!(path
            .to_string_lossy()
            .starts_with("/e/venv/bin:/usr/local/bin"));
    }
}
