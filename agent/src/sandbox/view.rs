//! What a sandboxed process sees of the filesystem: a [`View`] lists the paths it
//! may read and write (the system's, the Python installation, the job's), and
//! [`bwrap_args`] renders it as bubblewrap's arguments: an empty root, then each
//! path bound at its own place (read-only or read-write), a private /tmp, a
//! fresh /proc, a minimal /dev (plus the NVIDIA device nodes when the process
//! has GPUs), and its own user, pid, ipc, uts and network namespaces. The same
//! view, as Landlock rules, is what `exec` restricts to.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::network::Network;
use super::Sandbox;

/// System directories user code reads (symlinks, on merged-/usr systems, are
/// recreated as symlinks).
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// The files of /etc Python, its extensions and TLS need; never shadow,
/// gshadow, sudoers or ssh keys.
const ETC_FILES: [&str; 20] = [
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/pki",
    "/etc/alternatives",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/mime.types",
    // What pip and Python read of the system they run on.
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/lsb-release",
    "/etc/pip.conf",
];

/// The device nodes every process may use.
pub(crate) const DEV_FILES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// The uid and gid user code runs as inside its user namespace.
pub(crate) const SANDBOX_UID: u32 = 1000;

/// The paths one process sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// Bound read-only (the system's, the interpreter's, the job's inputs).
    pub read_only: Vec<PathBuf>,
    /// Bound read-write (the job's working and output directories, HOME).
    pub writable: Vec<PathBuf>,
    /// Device nodes bound read-write (GPUs).
    pub devices: Vec<PathBuf>,
}

impl View {
    /// The view of a process reading `readable`, writing `writable`, using the
    /// GPU device nodes when `gpus`.
    pub(crate) fn new(
        sandbox: &Sandbox,
        readable: &[PathBuf],
        writable: &[PathBuf],
        gpus: bool,
    ) -> View {
        let mut read_only: Vec<PathBuf> = SYSTEM_DIRS
            .iter()
            .chain(ETC_FILES.iter())
            .map(PathBuf::from)
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
        read_only.push(sandbox.python.prefix.clone());
        read_only.extend(readable.iter().cloned());
        View {
            read_only,
            writable: writable.to_vec(),
            devices: if gpus { nvidia_devices() } else { Vec::new() },
        }
    }
}

/// `/dev/nvidia*` (and `/dev/nvidia-caps`) where they exist.
fn nvidia_devices() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// What bwrap needs besides the view.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Namespaces<'a> {
    pub network: Network,
    /// The namespace shares the host's network (builds with a loopback index).
    pub host_network: bool,
    /// Where bwrap writes the sandbox's pid (JSON), when slirp4netns attaches.
    pub info_fd: Option<i32>,
    pub cwd: &'a Path,
    pub resolv_conf: &'a Path,
}

/// bubblewrap's arguments for `view`, up to (not including) `--`.
pub(crate) fn bwrap_args(view: &View, ns: &Namespaces<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--unshare-user",
        // Root of its user namespace (the helper adds routes, then becomes
        // SANDBOX_UID in a nested one).
        "--uid",
        "0",
        "--gid",
        "0",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "aibro",
        "--die-with-parent",
        "--new-session",
        "--cap-add",
        "CAP_NET_ADMIN",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/dev/shm",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if !ns.host_network {
        args.push("--unshare-net".into());
    }
    for (path, how) in binds(view) {
        args.push(how.into());
        if how == "--symlink" {
            let target = std::fs::read_link(path).unwrap_or_default();
            args.extend([target.into_os_string(), path.into()]);
        } else {
            args.extend([path.into(), path.into()]);
        }
    }
    if ns.network != Network::Isolated && !ns.host_network {
        let conf = ns.resolv_conf.as_os_str();
        args.extend(["--ro-bind".into(), conf.into(), "/etc/resolv.conf".into()]);
    } else if Path::new("/etc/resolv.conf").exists() {
        args.extend(["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"].map(OsString::from));
    }
    if let Some(fd) = ns.info_fd {
        args.extend(["--info-fd".into(), fd.to_string().into()]);
    }
    args.extend(["--chdir".into(), ns.cwd.as_os_str().into()]);
    args
}

/// Every bind of `view` with bwrap's option, parents before what they hold.
fn binds(view: &View) -> Vec<(&Path, &'static str)> {
    let symlink_or = |p: &Path, how| {
        if p.is_symlink() && SYSTEM_DIRS.iter().any(|d| Path::new(d) == p) {
            "--symlink"
        } else {
            how
        }
    };
    let mut all: Vec<(&Path, &'static str)> = view
        .read_only
        .iter()
        .map(|p| (p.as_path(), symlink_or(p, "--ro-bind")))
        .chain(view.writable.iter().map(|p| (p.as_path(), "--bind")))
        .chain(view.devices.iter().map(|p| (p.as_path(), "--dev-bind")))
        .collect();
    all.sort_by_key(|(p, _)| p.components().count());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_each_path_in_place_parents_first_and_hides_secrets() {
        let sandbox = crate::sandbox::tests::default_sandbox();
        let view = View::new(
            &sandbox,
            &["/j/envs/abc".into(), "/j/repo".into()],
            &["/j".into(), "/j/out".into()],
            false,
        );
        let ns = Namespaces {
            network: Network::Isolated,
            host_network: false,
            info_fd: None,
            cwd: Path::new("/j/out"),
            resolv_conf: Path::new("/x/resolv.conf"),
        };
        let args: Vec<String> = bwrap_args(&view, &ns)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let text = args.join(" ");
        assert!(text.contains("--bind /j /j"), "{text}");
        assert!(text.find("--bind /j /j") < text.find("--ro-bind /j/envs/abc /j/envs/abc"));
        assert!(text.contains("--ro-bind /j/repo /j/repo"), "{text}");
        assert!(text.contains("--unshare-net"), "{text}");
        assert!(text.contains("--chdir /j/out"), "{text}");
        let prefix = sandbox.python.prefix.display().to_string();
        assert!(
            text.contains(&format!("--ro-bind {prefix} {prefix}")),
            "{text}"
        );
        for secret in [
            "/etc/shadow",
            "/etc/gshadow",
            "/etc/sudoers",
            "/root ",
            "/home",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(!text.contains("--dev-bind"), "{text}");
    }
}
