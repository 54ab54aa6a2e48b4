//! The one place where processes that run anything of a user's repo start: the
//! Python workers, training runs, virtualenv creation and pip installs. A
//! [`ProcessSpec`] says what to run and with what (working dir, what it reads
//! and writes, its network, environment additions, GPUs, thread counts);
//! [`spawn`] starts it in the agent's [`Sandbox`] (see `sandbox`), in a process
//! group of its own that dies with the agent, with an allow-listed environment
//! and its output piped back. A process whose sandbox cannot be set up does not
//! start: [`SpawnError`] says why.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::sandbox::exec::ExecArgs;
use crate::sandbox::network::{self, NetworkError};
use crate::sandbox::view::{self, Namespaces, View};
use crate::sandbox::{env, Level, Network, Sandbox};

/// Lines of a process's output kept to explain how it ended.
const TAIL_LINES: usize = 60;

/// Thread-pool variables of the common numeric libraries.
const THREAD_VARS: [&str; 4] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

/// Where bwrap writes the sandbox's pid, in bwrap.
const INFO_FD: RawFd = 5;
/// Where the helper reads the agent's go (the network is attached).
const SYNC_FD: RawFd = 6;
/// The write end slirp4netns watches to exit with the sandbox.
const EXIT_FD: RawFd = 7;
/// Where the helper tells the agent that bwrap has set the namespaces up
/// (slirp4netns attaching while bwrap configures the loopback upsets bwrap).
const READY_FD: RawFd = 8;
/// How long bwrap may take to create the namespaces.
const BWRAP_INFO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the process reads on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// Nothing (`/dev/null`).
    Null,
    /// A pipe from the agent (the worker protocol).
    Piped,
}

/// An open fd of the agent handed to the process under another number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassFd {
    /// The agent's fd (it may be close-on-exec).
    pub fd: RawFd,
    /// Its number in the process, left open across exec.
    pub as_fd: RawFd,
}

/// How to start one process.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Its working directory; None: its HOME.
    pub cwd: Option<PathBuf>,
    /// Its HOME: a writable directory of its own (created when missing).
    pub home: PathBuf,
    /// What it may read besides the system and the Python installation.
    pub readable: Vec<PathBuf>,
    /// What it may write besides HOME (and a private /tmp).
    pub writable: Vec<PathBuf>,
    pub network: Network,
    /// Variables set for it (besides the allow-listed ones of the agent).
    pub env: Vec<(&'static str, String)>,
    /// The GPUs it may use (`CUDA_VISIBLE_DEVICES`); none: the environment as is.
    pub gpus: Vec<u32>,
    /// Threads its numeric libraries may use (`OMP_NUM_THREADS` and the like);
    /// None: the environment as is.
    pub threads: Option<usize>,
    pub stdin: Input,
    pub pass_fd: Option<PassFd>,
}

/// Why a process did not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("cannot start `{program}`: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create its HOME `{path}`: {source}")]
    Home {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox (bubblewrap) could not be set up: {0}")]
    Bwrap(String),
    #[error("the sandbox's network could not be set up: {0}")]
    Network(#[from] NetworkError),
}

impl ProcessSpec {
    /// `program` with nothing else set, HOME `home`, outbound network; stdout
    /// and stderr are always piped.
    pub(crate) fn new(program: impl Into<PathBuf>, home: impl Into<PathBuf>) -> ProcessSpec {
        ProcessSpec {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            home: home.into(),
            readable: Vec::new(),
            writable: Vec::new(),
            network: Network::Outbound,
            env: vec![("PYTHONUNBUFFERED", "1".into())],
            gpus: Vec::new(),
            threads: None,
            stdin: Input::Null,
            pass_fd: None,
        }
    }

    /// One of the agent's embedded scripts (`python -u script`) in `cwd`, which
    /// it may write; Python writes no bytecode into the user's repo.
    pub(crate) fn python_script(
        python: &Path,
        script: &Path,
        cwd: &Path,
        home: &Path,
    ) -> ProcessSpec {
        let mut spec = ProcessSpec::new(python, home);
        spec.args = vec!["-u".into(), script.into()];
        spec.cwd = Some(cwd.to_path_buf());
        spec.readable.push(script.to_path_buf());
        spec.writable.push(cwd.to_path_buf());
        spec.env.push(("PYTHONDONTWRITEBYTECODE", "1".into()));
        spec
    }

    pub(crate) fn arg(mut self, arg: impl Into<OsString>) -> ProcessSpec {
        self.args.push(arg.into());
        self
    }

    pub(crate) fn args<A: Into<OsString>>(
        mut self,
        args: impl IntoIterator<Item = A>,
    ) -> ProcessSpec {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn cwd(&self) -> &Path {
        self.cwd.as_deref().unwrap_or(&self.home)
    }
}

/// The host pid of each bwrap sandbox's first process (its pid namespace's
/// init), by bwrap's pid: killing it ends every process of the sandbox before
/// bwrap exits, so that waiting for bwrap waits for all of them.
static SANDBOX_INITS: Mutex<BTreeMap<u32, u32>> = Mutex::new(BTreeMap::new());

/// The fds between the agent, bwrap and the helper: the agent's ends, and the
/// child's, passed to bwrap.
struct NetFds {
    info: std::io::PipeReader,
    ready: std::io::PipeReader,
    sync: std::io::PipeWriter,
    exit: OwnedFd,
    child_ends: [OwnedFd; 4],
}

impl NetFds {
    fn new() -> std::io::Result<NetFds> {
        let (info, info_w) = std::io::pipe()?;
        let (ready, ready_w) = std::io::pipe()?;
        let (sync_r, sync) = std::io::pipe()?;
        let (exit_r, exit_w) = std::io::pipe()?;
        Ok(NetFds {
            info,
            ready,
            sync,
            exit: exit_r.into(),
            child_ends: [info_w.into(), ready_w.into(), sync_r.into(), exit_w.into()],
        })
    }

    fn passed(&self) -> [PassFd; 4] {
        let [info, ready, sync, exit] = &self.child_ends;
        let numbered = [
            (info, INFO_FD),
            (ready, READY_FD),
            (sync, SYNC_FD),
            (exit, EXIT_FD),
        ];
        numbered.map(|(fd, as_fd)| PassFd {
            fd: fd.as_raw_fd(),
            as_fd,
        })
    }
}

/// Starts the process in the sandbox, in a process group of its own, with
/// stdout and stderr piped; it is killed when its [`Child`] is dropped and when
/// the thread that spawned it ends, so call it from a long-lived thread (a tokio
/// worker thread, not `spawn_blocking`).
pub(crate) async fn spawn(sandbox: &Sandbox, spec: &ProcessSpec) -> Result<Child, SpawnError> {
    std::fs::create_dir_all(&spec.home).map_err(|source| SpawnError::Home {
        path: spec.home.clone(),
        source,
    })?;
    let io_err = |source| SpawnError::Io {
        program: spec.program.display().to_string(),
        source,
    };
    let fds = sandbox
        .level
        .uses_bwrap()
        .then(NetFds::new)
        .transpose()
        .map_err(io_err)?;
    let mut cmd = command(sandbox, spec, fds.is_some());
    let mut pass: Vec<PassFd> = spec.pass_fd.into_iter().collect();
    pass.extend(fds.iter().flat_map(NetFds::passed));
    pass_fds(&mut cmd, pass);
    let mut child = cmd.spawn().map_err(io_err)?;
    if let Some(fds) = fds {
        if let Err(e) = start_sandbox(&mut child, fds, needs_slirp(sandbox, spec)).await {
            kill_group(&mut child);
            let _ = child.wait().await;
            return Err(e);
        }
    }
    Ok(child)
}

/// The process gets a namespace that slirp4netns gives a way out.
fn needs_slirp(sandbox: &Sandbox, spec: &ProcessSpec) -> bool {
    sandbox.level.uses_bwrap() && spec.network != Network::Isolated && !host_network(sandbox, spec)
}

/// Builds with a package index on the host's loopback share its network.
fn host_network(sandbox: &Sandbox, spec: &ProcessSpec) -> bool {
    spec.network == Network::Build && sandbox.loopback_index
}

/// Waits for bwrap's namespaces, records its init, attaches slirp4netns to them
/// (`slirp`) and lets the helper go on.
async fn start_sandbox(child: &mut Child, net: NetFds, slirp: bool) -> Result<(), SpawnError> {
    let NetFds {
        info,
        ready,
        mut sync,
        exit,
        child_ends,
    } = net;
    drop(child_ends);
    let Some(pid) = sandbox_pid(info).await else {
        return Err(bwrap_failed(child).await);
    };
    if let Some(bwrap) = child.id() {
        SANDBOX_INITS.lock().expect("sandboxes").insert(bwrap, pid);
    }
    if !helper_ready(ready).await {
        return Err(bwrap_failed(child).await);
    }
    if slirp {
        network::start_slirp(pid, exit).await?;
    }
    sync.write_all(b"1")
        .map_err(|e| SpawnError::Bwrap(format!("the sandbox ended early: {e}")))
}

/// What bwrap said when it failed to set the sandbox up.
async fn bwrap_failed(child: &mut Child) -> SpawnError {
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said).await;
    }
    SpawnError::Bwrap(said.trim().to_string())
}

/// The helper runs (bwrap has set the namespaces up); false when it ended first.
async fn helper_ready(mut ready: std::io::PipeReader) -> bool {
    let read = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8; 1];
        matches!(ready.read(&mut byte), Ok(1))
    });
    matches!(
        tokio::time::timeout(BWRAP_INFO_TIMEOUT, read).await,
        Ok(Ok(true))
    )
}

/// The pid bwrap reports on its info fd; None when it ended first.
async fn sandbox_pid(mut info: std::io::PipeReader) -> Option<u32> {
    let read = tokio::task::spawn_blocking(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = info.read(&mut buf).ok().filter(|n| *n > 0)?;
            text.extend_from_slice(&buf[..n]);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
                return v["child-pid"].as_u64().and_then(|p| u32::try_from(p).ok());
            }
        }
    });
    tokio::time::timeout(BWRAP_INFO_TIMEOUT, read)
        .await
        .ok()?
        .ok()?
}

/// Makes each passed fd survive exec under its number. Sources are first moved
/// above every target, so that no dup2 closes a source still to be passed.
fn pass_fds(cmd: &mut Command, pass: Vec<PassFd>) {
    // SAFETY: prctl, fcntl and dup2 are async-signal-safe and touch no memory of
    // the parent; `pass` was allocated before the fork. dup2 gives the copy no
    // close-on-exec flag.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut moved = [0; 8];
            for (i, p) in pass.iter().enumerate() {
                moved[i] = libc::fcntl(p.fd, libc::F_DUPFD_CLOEXEC, 1000);
                if moved[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, p) in pass.iter().enumerate() {
                if libc::dup2(moved[i], p.as_fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The command `spec` describes at the sandbox's level, before the hooks that
/// run in the child.
fn command(sandbox: &Sandbox, spec: &ProcessSpec, bwrap_fds: bool) -> Command {
    let (program, args) = confined(sandbox, spec, bwrap_fds);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(match spec.stdin {
            Input::Null => Stdio::null(),
            Input::Piped => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(spec.cwd())
        .process_group(0)
        .kill_on_drop(true)
        .env_clear()
        .envs(environment(sandbox, spec));
    cmd
}

/// The program the agent runs for `spec` and its arguments: the user's command
/// itself (`none`), through the helper (`landlock`), or through bwrap and the
/// helper (`namespaces`, `full`).
fn confined(sandbox: &Sandbox, spec: &ProcessSpec, bwrap_fds: bool) -> (PathBuf, Vec<OsString>) {
    let mut command = vec![spec.program.clone().into_os_string()];
    command.extend(spec.args.iter().cloned());
    if sandbox.level == Level::None {
        let program = command.remove(0);
        return (program.into(), command);
    }
    let mut writable = spec.writable.clone();
    writable.push(spec.home.clone());
    let mut readable = spec.readable.clone();
    readable.push(sandbox.helper.clone());
    readable.extend(env::files_named(spec.network == Network::Build));
    readable.extend(virtualenv(&spec.program));
    let view = View::new(sandbox, &readable, &writable, !spec.gpus.is_empty());
    let helper = helper_args(sandbox, spec, &view, command);
    if sandbox.level == Level::Landlock {
        return (sandbox.helper.clone(), helper.to_args());
    }
    let ns = Namespaces {
        network: spec.network,
        host_network: host_network(sandbox, spec),
        info_fd: bwrap_fds.then_some(INFO_FD),
        cwd: spec.cwd(),
        resolv_conf: &sandbox.resolv_conf,
    };
    let mut args = view::bwrap_args(&view, &ns);
    args.push("--".into());
    args.push(sandbox.helper.clone().into_os_string());
    args.extend(helper.to_args());
    ("bwrap".into(), args)
}

/// What the helper does for `spec` at the sandbox's level.
fn helper_args(
    sandbox: &Sandbox,
    spec: &ProcessSpec,
    view: &View,
    command: Vec<OsString>,
) -> ExecArgs {
    let namespaces = sandbox.level != Level::Landlock;
    let mut ro = view.read_only.clone();
    ro.extend(["/proc", "/etc/resolv.conf"].map(PathBuf::from));
    let mut rw = view.writable.clone();
    rw.extend(view.devices.iter().cloned());
    rw.extend(view::DEV_FILES.map(PathBuf::from));
    if namespaces {
        // Private to the sandbox there.
        rw.extend(["/tmp", "/dev/shm", "/dev/pts"].map(PathBuf::from));
    }
    let blocked = if namespaces && !host_network(sandbox, spec) {
        network::blocked_for(spec.network, &sandbox.blocked)
    } else {
        Vec::new()
    };
    ExecArgs {
        ready_fd: namespaces.then_some(READY_FD),
        sync_fd: namespaces.then_some(SYNC_FD),
        block: blocked,
        uid: namespaces.then_some(view::SANDBOX_UID),
        landlock: sandbox.level.uses_landlock(),
        ro,
        rw,
        restrict_tcp: !namespaces,
        tcp_connect: if namespaces {
            Vec::new()
        } else {
            landlock_tcp_ports(spec.network)
        },
        command,
    }
}

/// The TCP ports a process without a network namespace may connect to: HTTPS
/// only (model hubs, the package index), so neither the host's loopback
/// services, the scheduler, agents nor the metadata address (plain HTTP)
/// are reached; none when its job's network is isolated.
fn landlock_tcp_ports(network: Network) -> Vec<u16> {
    const HTTPS: u16 = 443;
    match network {
        Network::Isolated => Vec::new(),
        Network::Build | Network::Outbound => vec![HTTPS],
    }
}

/// The process's whole environment: the agent's allow-listed variables, then
/// what the launcher sets.
fn environment(sandbox: &Sandbox, spec: &ProcessSpec) -> Vec<(OsString, OsString)> {
    let build = spec.network == Network::Build;
    let mut vars = env::passed_through(std::env::vars_os(), build);
    let mut set = |k: &str, v: OsString| vars.push((k.into(), v));
    set("PATH", env::path_for(&spec.program));
    set("HOME", spec.home.clone().into());
    if sandbox.level == Level::Landlock {
        // The host's /tmp is not the process's own.
        set("TMPDIR", spec.home.clone().into());
    }
    if let Some(venv) = virtualenv(&spec.program) {
        set("VIRTUAL_ENV", venv.into());
    }
    for (k, v) in &spec.env {
        set(k, v.into());
    }
    if !spec.gpus.is_empty() {
        let list: Vec<String> = spec.gpus.iter().map(u32::to_string).collect();
        set("CUDA_DEVICE_ORDER", "PCI_BUS_ID".into());
        set("CUDA_VISIBLE_DEVICES", list.join(",").into());
    }
    if let Some(threads) = spec.threads {
        for var in THREAD_VARS {
            if std::env::var_os(var).is_none() {
                set(var, threads.max(1).to_string().into());
            }
        }
    }
    vars
}

/// The virtualenv `program` runs in (`<venv>/bin/python`), if any.
fn virtualenv(program: &Path) -> Option<PathBuf> {
    let venv = program.parent()?.parent()?;
    venv.join("pyvenv.cfg")
        .is_file()
        .then(|| venv.to_path_buf())
}

/// Kills a process started by [`spawn`], and whatever it started (e.g. processes
/// the user's code forked that hold GPU memory). A sandbox's processes have
/// all exited once bwrap has: waiting for the [`Child`] waits for them.
pub(crate) fn kill_group(child: &mut Child) {
    let Some(pid) = child.id() else {
        return;
    };
    let init = SANDBOX_INITS.lock().expect("sandboxes").remove(&pid);
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        match init {
            // Its pid namespace ends with it; bwrap then exits.
            Some(init) => libc::kill(init as i32, libc::SIGKILL),
            None => libc::kill(-(pid as i32), libc::SIGKILL),
        };
    }
    if init.is_none() {
        let _ = child.start_kill();
    }
}

/// The last lines a process wrote, to explain how it ended.
#[derive(Debug, Default)]
pub(crate) struct OutputTail(Mutex<VecDeque<String>>);

impl OutputTail {
    pub(crate) fn push(&self, line: String) {
        let mut lines = self.0.lock().expect("output tail");
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The lines kept, joined.
    pub(crate) fn text(&self) -> String {
        let lines = self.0.lock().expect("output tail");
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Break-out attempts by real processes at every level (large: a file of its own).
#[cfg(test)]
mod escape_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::tests::{default_sandbox, sandbox_at};

    fn envs(spec: &ProcessSpec) -> Vec<(String, String)> {
        environment(&sandbox_at(Level::None, &[]), spec)
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect()
    }

    #[test]
    fn gpus_go_through_cuda_visible_devices() {
        let spec = ProcessSpec::new("true", "/h");
        let set = envs(&spec);
        assert!(set.contains(&("PYTHONUNBUFFERED".into(), "1".into())));
        assert!(set.contains(&("HOME".into(), "/h".into())));
        assert!(!set.iter().any(|(k, _)| k == "CUDA_DEVICE_ORDER"));
        let spec = ProcessSpec {
            gpus: vec![4, 6],
            ..ProcessSpec::new("true", "/h")
        };
        let set = envs(&spec);
        assert!(set.contains(&("CUDA_VISIBLE_DEVICES".into(), "4,6".into())));
        assert!(set.contains(&("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into())));
    }

    #[test]
    fn scripts_run_unbuffered_in_their_dir() {
        let spec = ProcessSpec::python_script(
            Path::new("python3"),
            Path::new("/s/worker.py"),
            Path::new("/w"),
            Path::new("/h"),
        )
        .arg("x");
        let cmd = command(&sandbox_at(Level::None, &[]), &spec, false);
        let args: Vec<_> = cmd.as_std().get_args().collect();
        assert_eq!(args, ["-u", "/s/worker.py", "x"]);
        assert_eq!(cmd.as_std().get_current_dir(), Some(Path::new("/w")));
        assert!(envs(&spec).contains(&("PYTHONDONTWRITEBYTECODE".into(), "1".into())));
        assert_eq!(spec.writable, [PathBuf::from("/w")]);
        assert_eq!(spec.readable, [PathBuf::from("/s/worker.py")]);
    }

    #[test]
    fn output_tail_keeps_the_last_lines() {
        let tail = OutputTail::default();
        for i in 0..100 {
            tail.push(format!("line {i}"));
        }
        let text = tail.text();
        assert!(
            text.starts_with("line 40\n") && text.ends_with("line 99"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_killed_group_is_gone() {
        let home = tempfile::tempdir().unwrap();
        let spec = ProcessSpec::new("sleep", home.path()).arg("600");
        let mut child = spawn(&default_sandbox(), &spec).await.unwrap();
        kill_group(&mut child);
        let status = child.wait().await.unwrap();
        assert!(!status.success());
    }
}
