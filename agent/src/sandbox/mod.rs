//! The sandbox every process running user code starts in (see `launcher`): the
//! [`Level`] this machine can enforce, chosen once at start, and what a process
//! needs from it. `view` turns a process's paths into bubblewrap's arguments,
//! `landlock` restricts paths and scopes with Landlock, `network` gives a
//! namespace its way out (slirp4netns) and its blocked routes, `exec` is the
//! helper (`aibro-agent sandbox-exec`) that finishes the job inside, and `env`
//! builds the allow-listed environment.

pub(crate) mod env;
pub mod exec;
pub(crate) mod landlock;
pub(crate) mod network;
pub(crate) mod view;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub(crate) use network::Network;

/// The sandbox asked for (`--sandbox`): a level, or the strongest available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Requested {
    Auto,
    Full,
    Namespaces,
    Landlock,
    None,
}

/// What user code runs in, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Namespaces (bubblewrap) with Landlock inside.
    Full,
    /// Namespaces (bubblewrap): own filesystem view, uid, pid/ipc/uts/net.
    Namespaces,
    /// Landlock only: paths and signal scoping, in the agent's namespaces.
    Landlock,
    /// Nothing but the allow-listed environment.
    None,
}

impl Level {
    /// Its name as `--sandbox` and `RegisterRequest.sandbox` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Namespaces => "namespaces",
            Level::Landlock => "landlock",
            Level::None => "none",
        }
    }

    /// The levels strongest first.
    pub const ALL: [Level; 4] = [Level::Full, Level::Namespaces, Level::Landlock, Level::None];

    pub(crate) fn uses_bwrap(self) -> bool {
        matches!(self, Level::Full | Level::Namespaces)
    }

    pub(crate) fn uses_landlock(self) -> bool {
        matches!(self, Level::Full | Level::Landlock)
    }
}

/// Why the sandbox cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no sandbox is available on this machine ({0}); install bubblewrap and slirp4netns, or pass --sandbox none to run user code unconfined")]
    NoneAvailable(Missing),
    #[error("--sandbox {level} is not available on this machine: {missing}")]
    Unavailable {
        level: &'static str,
        missing: Missing,
    },
    #[error("cannot run the Python interpreter `{python}` to find its installation: {detail}")]
    Python { python: String, detail: String },
    #[error("cannot find the agent's own executable (the sandbox helper): {0}")]
    Helper(#[source] std::io::Error),
    #[error("sandbox state directory `{path}`: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a level lacks here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("bubblewrap cannot create namespaces: {0}")]
    Bwrap(String),
    #[error("slirp4netns is not installed (user code in a network namespace needs it to reach the network)")]
    Slirp,
    #[error("the kernel has no Landlock")]
    Landlock,
    #[error("the kernel's Landlock (ABI {0}) cannot scope signals (needs ABI 6, Linux 6.12)")]
    LandlockScopes(i32),
}

/// The Python installation every sandboxed process may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PythonInstall {
    /// The interpreter itself (no shim: `sys.executable`).
    pub executable: PathBuf,
    /// `sys.base_prefix`, bound read-only.
    pub prefix: PathBuf,
}

/// What the agent needs to start its sandbox.
#[derive(Debug, Clone)]
pub(crate) struct SandboxConfig<'a> {
    pub requested: Requested,
    /// The `aibro-agent` binary run as the helper; None: this process's.
    pub helper: Option<&'a Path>,
    /// The configured interpreter (a name on PATH, a shim or a path).
    pub python: &'a str,
    /// Where the sandbox keeps its files (the resolv.conf user code sees).
    pub state_dir: &'a Path,
    /// Hosts user code must never reach (the scheduler, this agent), resolved.
    pub blocked_hosts: &'a [&'a str],
    /// The package index is on this host's loopback: builds share its network.
    pub loopback_index: bool,
}

/// The sandbox chosen at start, shared by every process the agent starts.
#[derive(Debug)]
pub(crate) struct Sandbox {
    pub level: Level,
    pub python: PythonInstall,
    /// The agent's executable, run as `sandbox-exec` (levels but `none`).
    pub helper: PathBuf,
    /// The IPv4 addresses user code gets a prohibit route to (metadata included).
    pub blocked: Vec<Ipv4Addr>,
    /// Builds run in the host's network (the index is on its loopback).
    pub loopback_index: bool,
    /// The resolv.conf bound into network namespaces (slirp4netns's DNS).
    pub resolv_conf: PathBuf,
}

impl Sandbox {
    /// Chooses the level (failing closed when the one asked for is not
    /// available) and finds the interpreter's installation.
    pub(crate) fn new(config: &SandboxConfig<'_>) -> Result<Sandbox, SandboxError> {
        let level = choose(config.requested, &probe())?;
        let helper = match config.helper {
            Some(path) => path.to_path_buf(),
            None => std::env::current_exe().map_err(SandboxError::Helper)?,
        };
        Sandbox::at_level(level, helper, config)
    }

    /// The sandbox at `level`, without checking that the machine can enforce it.
    pub(crate) fn at_level(
        level: Level,
        helper: PathBuf,
        config: &SandboxConfig<'_>,
    ) -> Result<Sandbox, SandboxError> {
        let python = python_install(config.python)?;
        let resolv_conf =
            network::write_resolv_conf(config.state_dir).map_err(|source| SandboxError::Dir {
                path: config.state_dir.to_path_buf(),
                source,
            })?;
        Ok(Sandbox {
            level,
            python,
            helper,
            blocked: network::blocked_addresses(config.blocked_hosts),
            loopback_index: config.loopback_index,
            resolv_conf,
        })
    }

    /// Logs the level once, loudly when user code runs unconfined.
    pub(crate) fn announce(&self) {
        if self.level == Level::None {
            tracing::warn!("SANDBOX OFF (--sandbox none): user code runs as the agent's user, sees every file it can read, and reaches every network it can");
        } else {
            tracing::info!(sandbox = self.level.name(), blocked = ?self.blocked, "user code runs sandboxed");
        }
    }
}

/// What this machine offers, as found by [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    /// Ok when bubblewrap and slirp4netns work.
    pub namespaces: Result<(), Missing>,
    /// The kernel's Landlock ABI (0: none).
    pub landlock_abi: i32,
}

/// Finds what this machine can enforce.
pub(crate) fn probe() -> Offer {
    Offer {
        namespaces: network::slirp_installed().and_then(|()| bwrap_works()),
        landlock_abi: landlock::abi(),
    }
}

/// The level `requested` gives on a machine offering `offer`.
pub(crate) fn choose(requested: Requested, offer: &Offer) -> Result<Level, SandboxError> {
    let check = |level: Level| -> Result<Level, Missing> {
        if level.uses_bwrap() {
            offer.namespaces.clone()?;
        }
        match level {
            Level::Full if offer.landlock_abi < 1 => Err(Missing::Landlock),
            Level::Landlock if offer.landlock_abi < 1 => Err(Missing::Landlock),
            Level::Landlock if offer.landlock_abi < 6 => {
                Err(Missing::LandlockScopes(offer.landlock_abi))
            }
            _ => Ok(level),
        }
    };
    let explicit = |level: Level| {
        check(level).map_err(|missing| SandboxError::Unavailable {
            level: level.name(),
            missing,
        })
    };
    match requested {
        Requested::Full => explicit(Level::Full),
        Requested::Namespaces => explicit(Level::Namespaces),
        Requested::Landlock => explicit(Level::Landlock),
        Requested::None => Ok(Level::None),
        Requested::Auto => {
            let mut first = None;
            for level in [Level::Full, Level::Namespaces, Level::Landlock] {
                match check(level) {
                    Ok(level) => return Ok(level),
                    Err(missing) => first = first.or(Some(missing)),
                }
            }
            Err(SandboxError::NoneAvailable(
                first.expect("three levels tried"),
            ))
        }
    }
}

/// Bubblewrap creates a user, pid and network namespace here.
fn bwrap_works() -> Result<(), Missing> {
    let out = std::process::Command::new("bwrap")
        .args(["--unshare-user", "--unshare-pid", "--unshare-net"])
        .args(["--ro-bind", "/", "/", "--", "/bin/true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Missing::Bwrap(format!("cannot run bwrap: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(Missing::Bwrap(format!("{} ({said})", out.status)))
}

/// Asks the interpreter where it is installed.
fn python_install(python: &str) -> Result<PythonInstall, SandboxError> {
    let fail = |detail: String| SandboxError::Python {
        python: python.to_string(),
        detail,
    };
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.base_prefix)",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().collect::<Vec<_>>().as_slice() {
        [exe, prefix] if !exe.is_empty() && !prefix.is_empty() => Ok(PythonInstall {
            executable: PathBuf::from(exe),
            prefix: PathBuf::from(prefix),
        }),
        _ => Err(fail(format!("unexpected answer {text:?}"))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, OnceLock};

    /// The agent binary (the helper), built beside the test binary.
    fn helper() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("aibro-agent");
        assert!(
            bin.exists(),
            "{} is missing: the sandbox tests run the agent binary as their helper; `cargo build -p aibro-agent --bins` (cargo test builds it)",
            bin.display()
        );
        bin
    }

    /// A sandbox at `level` for tests, blocking `blocked` too.
    pub(crate) fn sandbox_at(level: Level, blocked: &[&str]) -> Arc<Sandbox> {
        static STATE: OnceLock<tempfile::TempDir> = OnceLock::new();
        let state = STATE.get_or_init(|| tempfile::tempdir().unwrap());
        let config = SandboxConfig {
            requested: Requested::Auto,
            helper: None,
            python: "python3",
            state_dir: state.path(),
            blocked_hosts: blocked,
            loopback_index: false,
        };
        Arc::new(Sandbox::at_level(level, helper(), &config).unwrap())
    }

    /// The machine's default sandbox (what `--sandbox auto` gives).
    pub(crate) fn default_sandbox() -> Arc<Sandbox> {
        static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
        SANDBOX
            .get_or_init(|| {
                let level = choose(Requested::Auto, &probe()).unwrap_or(Level::None);
                sandbox_at(level, &[])
            })
            .clone()
    }

    /// The levels this machine enforces.
    pub(crate) fn supported_levels() -> Vec<Level> {
        let offer = probe();
        Level::ALL
            .into_iter()
            .filter(|l| {
                let requested = match l {
                    Level::Full => Requested::Full,
                    Level::Namespaces => Requested::Namespaces,
                    Level::Landlock => Requested::Landlock,
                    Level::None => Requested::None,
                };
                choose(requested, &offer).is_ok()
            })
            .collect()
    }

    #[test]
    fn auto_takes_the_strongest_and_explicit_levels_fail_closed() {
        let all = Offer {
            namespaces: Ok(()),
            landlock_abi: 7,
        };
        assert_eq!(choose(Requested::Auto, &all).unwrap(), Level::Full);
        let no_ns = Offer {
            namespaces: Err(Missing::Slirp),
            landlock_abi: 7,
        };
        assert_eq!(choose(Requested::Auto, &no_ns).unwrap(), Level::Landlock);
        let e = choose(Requested::Namespaces, &no_ns).unwrap_err();
        assert!(e.to_string().contains("slirp4netns"), "{e}");
        let no_ll = Offer {
            namespaces: Ok(()),
            landlock_abi: 0,
        };
        assert_eq!(choose(Requested::Auto, &no_ll).unwrap(), Level::Namespaces);
        assert!(choose(Requested::Full, &no_ll).is_err());
        let old = Offer {
            namespaces: Err(Missing::Bwrap("no userns".into())),
            landlock_abi: 3,
        };
        let e = choose(Requested::Auto, &old).unwrap_err();
        assert!(matches!(e, SandboxError::NoneAvailable(_)), "{e}");
        assert!(e.to_string().contains("--sandbox none"), "{e}");
        assert_eq!(choose(Requested::None, &old).unwrap(), Level::None);
    }
}
