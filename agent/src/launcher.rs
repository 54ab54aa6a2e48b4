//! The one place where processes that run anything of a user's repo start: the
//! Python workers, training runs, virtualenv creation and pip installs. A
//! [`ProcessSpec`] says what to run and with what (working dir, environment
//! additions, GPUs, thread counts); [`spawn`] starts it in a process group of its
//! own that dies with the agent, with its output piped back. The sandbox
//! (filesystem view, uid, allow-listed environment, no network) belongs here.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tokio::process::{Child, Command};

/// Lines of a process's output kept to explain how it ended.
const TAIL_LINES: usize = 60;

/// Thread-pool variables of the common numeric libraries.
const THREAD_VARS: [&str; 4] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
];

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
    /// Its working directory; None: the agent's.
    pub cwd: Option<PathBuf>,
    /// Variables added to the agent's environment.
    pub env: Vec<(&'static str, String)>,
    /// The GPUs it may use (`CUDA_VISIBLE_DEVICES`); none: the environment as is.
    pub gpus: Vec<u32>,
    /// Threads its numeric libraries may use (`OMP_NUM_THREADS` and the like);
    /// None: the environment as is.
    pub threads: Option<usize>,
    pub stdin: Input,
    pub pass_fd: Option<PassFd>,
}

impl ProcessSpec {
    /// `program` with nothing else set; stdout and stderr are always piped.
    pub(crate) fn new(program: impl Into<PathBuf>) -> ProcessSpec {
        ProcessSpec {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: vec![("PYTHONUNBUFFERED", "1".into())],
            gpus: Vec::new(),
            threads: None,
            stdin: Input::Null,
            pass_fd: None,
        }
    }

    /// One of the agent's embedded scripts (`python -u script`) in `cwd`;
    /// Python writes no bytecode into the user's repo.
    pub(crate) fn python_script(python: &Path, script: &Path, cwd: &Path) -> ProcessSpec {
        let mut spec = ProcessSpec::new(python);
        spec.args = vec!["-u".into(), script.into()];
        spec.cwd = Some(cwd.to_path_buf());
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
}

/// Starts the process in a process group of its own, with stdout and stderr
/// piped; it is killed when its [`Child`] is dropped and when the thread that
/// spawned it ends, so call it from a long-lived thread (a tokio worker thread,
/// not `spawn_blocking`).
pub(crate) fn spawn(spec: &ProcessSpec) -> std::io::Result<Child> {
    let mut cmd = command(spec);
    let pass = spec.pass_fd;
    // SAFETY: prctl, dup2 and fcntl are async-signal-safe and touch no memory of
    // the parent. A passed fd that already has its number is only made to
    // survive exec; dup2 gives the copy no close-on-exec flag.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(PassFd { fd, as_fd }) = pass {
                let rc = if fd == as_fd {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, as_fd)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The command `spec` describes, before the hooks that run in the child.
fn command(spec: &ProcessSpec) -> Command {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(match spec.stdin {
            Input::Null => Stdio::null(),
            Input::Piped => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    use_gpus(&mut cmd, &spec.gpus);
    if let Some(threads) = spec.threads {
        use_threads(&mut cmd, threads);
    }
    cmd
}

/// Gives the process the GPUs `gpus` (NVML / nvidia-smi indices, which CUDA uses
/// too once told to order devices by PCI bus id). With none, the environment is
/// left as it is.
fn use_gpus(cmd: &mut Command, gpus: &[u32]) {
    if gpus.is_empty() {
        return;
    }
    let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
    cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        .env("CUDA_VISIBLE_DEVICES", list.join(","));
}

/// Gives the process's numeric libraries (OpenMP, OpenBLAS, MKL, numexpr) pools
/// of `threads`, so that processes side by side do not oversubscribe the cores
/// (idle BLAS threads spin). A variable the agent itself was given is kept.
fn use_threads(cmd: &mut Command, threads: usize) {
    for var in THREAD_VARS {
        if std::env::var_os(var).is_none() {
            cmd.env(var, threads.max(1).to_string());
        }
    }
}

/// Kills a process started by [`spawn`], and whatever it started (e.g. processes
/// the user's code forked that hold GPU memory).
pub(crate) fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
    let _ = child.start_kill();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn envs(spec: &ProcessSpec) -> Vec<(String, Option<String>)> {
        command(spec)
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                let v = v.map(|v| v.to_string_lossy().into_owned());
                (k.to_string_lossy().into_owned(), v)
            })
            .collect()
    }

    #[test]
    fn gpus_go_through_cuda_visible_devices() {
        let spec = ProcessSpec::new("true");
        assert_eq!(envs(&spec), [("PYTHONUNBUFFERED".into(), Some("1".into()))]);
        let spec = ProcessSpec {
            gpus: vec![4, 6],
            ..ProcessSpec::new("true")
        };
        let set = envs(&spec);
        assert!(set.contains(&("CUDA_VISIBLE_DEVICES".into(), Some("4,6".into()))));
        assert!(set.contains(&("CUDA_DEVICE_ORDER".into(), Some("PCI_BUS_ID".into()))));
    }

    #[test]
    fn scripts_run_unbuffered_in_their_dir() {
        let spec = ProcessSpec::python_script(
            Path::new("python3"),
            Path::new("/s/worker.py"),
            Path::new("/w"),
        )
        .arg("x");
        let cmd = command(&spec);
        let args: Vec<_> = cmd.as_std().get_args().collect();
        assert_eq!(args, ["-u", "/s/worker.py", "x"]);
        assert_eq!(cmd.as_std().get_current_dir(), Some(Path::new("/w")));
        assert!(envs(&spec).contains(&("PYTHONDONTWRITEBYTECODE".into(), Some("1".into()))));
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
        let spec = ProcessSpec::new("sleep").arg("600");
        let mut child = spawn(&spec).unwrap();
        kill_group(&mut child);
        let status = child.wait().await.unwrap();
        assert!(!status.success());
    }
}
