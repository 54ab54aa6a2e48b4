//! `aibro-agent sandbox-exec`: the helper that finishes confining a process from
//! the inside, then execs the user's command. In a bubblewrap namespace (where
//! it starts as root of its user namespace) it waits until the agent has given
//! the namespace its network, adds the blocked routes, and becomes
//! [`SANDBOX_UID`](super::view::SANDBOX_UID) in a nested user namespace; at
//! every level it drops all capabilities and sets no_new_privs; with Landlock it
//! restricts itself to the view's paths and scopes signals. Any step failing
//! stops it before the user's command runs (exit status [`FAILED`], the reason on
//! stderr).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use super::landlock::{self, LandlockError};
use super::network::{self, NetworkError};

/// The helper's exit status when it could not set the sandbox up.
pub const FAILED: i32 = 125;
/// The prefix of the helper's error line.
pub(crate) const ERROR_PREFIX: &str = "aibro sandbox:";

/// The flags of `aibro-agent sandbox-exec` (internal: the launcher writes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ExecArgs {
    /// Write one byte to this fd (the namespaces are set up) first.
    #[arg(long)]
    pub ready_fd: Option<i32>,
    /// Read one byte from this fd (the agent's go: the network is attached) first.
    #[arg(long)]
    pub sync_fd: Option<i32>,
    /// Add a prohibit route to this address.
    #[arg(long)]
    pub block: Vec<Ipv4Addr>,
    /// Become this uid and gid in a nested user namespace.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Apply Landlock with the --ro and --rw paths.
    #[arg(long)]
    pub landlock: bool,
    #[arg(long)]
    pub ro: Vec<PathBuf>,
    #[arg(long)]
    pub rw: Vec<PathBuf>,
    /// With --landlock: TCP connections only to these ports (without
    /// network namespaces there is no other way to keep user code from the
    /// host's loopback, the scheduler, agents and the metadata address).
    #[arg(long)]
    pub restrict_tcp: bool,
    #[arg(long)]
    pub tcp_connect: Vec<u16>,
    /// The command to exec.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<OsString>,
}

impl ExecArgs {
    /// The helper's command line after the program: `sandbox-exec FLAGS -- COMMAND`.
    pub(crate) fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["sandbox-exec".into()];
        if let Some(fd) = self.ready_fd {
            args.extend(["--ready-fd".into(), fd.to_string().into()]);
        }
        if let Some(fd) = self.sync_fd {
            args.extend(["--sync-fd".into(), fd.to_string().into()]);
        }
        for addr in &self.block {
            args.extend(["--block".into(), addr.to_string().into()]);
        }
        if let Some(uid) = self.uid {
            args.extend(["--uid".into(), uid.to_string().into()]);
        }
        if self.landlock {
            args.push("--landlock".into());
        }
        for (flag, paths) in [("--ro", &self.ro), ("--rw", &self.rw)] {
            for p in paths {
                args.extend([flag.into(), p.clone().into_os_string()]);
            }
        }
        if self.restrict_tcp {
            args.push("--restrict-tcp".into());
        }
        for port in &self.tcp_connect {
            args.extend(["--tcp-connect".into(), port.to_string().into()]);
        }
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        args
    }
}

/// Why the helper did not exec the user's command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    #[error("the agent could not give the sandbox its network")]
    NoNetwork,
    #[error(transparent)]
    Route(#[from] NetworkError),
    #[error("cannot enter a user namespace as uid {uid}: {source}")]
    UserNamespace {
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot drop capabilities: {0}")]
    Capabilities(#[source] std::io::Error),
    #[error(transparent)]
    Landlock(#[from] LandlockError),
    #[error("cannot run `{program}`: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Confines this process as `args` says and execs its command; returns only on
/// failure, with the exit status to use.
pub fn run(args: ExecArgs) -> i32 {
    let err = match confine(&args) {
        Ok(()) => {
            let (program, rest) = args.command.split_first().expect("required");
            let source = std::process::Command::new(program).args(rest).exec();
            ExecError::Exec {
                program: program.to_string_lossy().into_owned(),
                source,
            }
        }
        Err(e) => e,
    };
    eprintln!("{ERROR_PREFIX} {err}");
    FAILED
}

fn confine(args: &ExecArgs) -> Result<(), ExecError> {
    if let Some(fd) = args.ready_fd {
        // SAFETY: the launcher passed this fd for the helper alone.
        let mut ready = unsafe { std::fs::File::from_raw_fd(fd) };
        ready.write_all(b"1").map_err(|_| ExecError::NoNetwork)?;
    }
    if let Some(fd) = args.sync_fd {
        // SAFETY: the launcher passed this fd for the helper alone.
        let mut sync = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut byte = [0u8; 1];
        if !matches!(sync.read(&mut byte), Ok(1)) {
            return Err(ExecError::NoNetwork);
        }
    }
    network::block(&args.block)?;
    if let Some(uid) = args.uid {
        become_uid(uid).map_err(|source| ExecError::UserNamespace { uid, source })?;
    }
    drop_capabilities().map_err(ExecError::Capabilities)?;
    if args.landlock {
        let tcp = args.restrict_tcp.then_some(args.tcp_connect.as_slice());
        landlock::restrict(&args.ro, &args.rw, tcp)?;
    }
    Ok(())
}

/// Enters a new user namespace where this process (root of the parent one) is
/// `uid`/`uid`, with no capabilities left after the switch.
fn become_uid(uid: u32) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let outer_uid = ids();
    // SAFETY: plain syscalls on this (single-threaded) process.
    check(unsafe { libc::unshare(libc::CLONE_NEWUSER) })?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {} 1", outer_uid.0))?;
    std::fs::write("/proc/self/gid_map", format!("{uid} {} 1", outer_uid.1))?;
    // SAFETY: as above.
    unsafe {
        check(libc::setresgid(uid, uid, uid))?;
        check(libc::setresuid(uid, uid, uid))?;
    }
    Ok(())
}

/// (uid, gid) of this process.
fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Empties the bounding, ambient, effective, permitted and inheritable sets
/// and sets no_new_privs.
fn drop_capabilities() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl and capset with valid arguments; errors are checked.
    unsafe {
        for cap in 0..64 {
            // EINVAL past the last capability, EPERM without CAP_SETPCAP (then
            // the set holds nothing this process could use).
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        c: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        SandboxExec(ExecArgs),
    }

    #[test]
    fn the_helpers_flags_round_trip() {
        let args = ExecArgs {
            ready_fd: Some(8),
            sync_fd: Some(6),
            block: vec![Ipv4Addr::new(169, 254, 169, 254)],
            uid: Some(1000),
            landlock: true,
            ro: vec!["/usr".into()],
            rw: vec!["/w".into()],
            restrict_tcp: true,
            tcp_connect: vec![443],
            command: vec!["python".into(), "-u".into(), "--x".into()],
        };
        let line = std::iter::once(OsString::from("agent")).chain(args.to_args());
        let Sub::SandboxExec(parsed) = Cli::parse_from(line).c;
        assert_eq!(parsed, args);
    }
}
