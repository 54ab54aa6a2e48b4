//! The processes of played machines, seen through /proc: the units a
//! machine's pid files name, and every process whose `AIBRO_ROOT` lies in a
//! folder (how a test proves that none leaked). Zombies count as gone: this
//! host's init may never reap them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Pids of live processes whose `AIBRO_ROOT` lies under `dir`.
pub fn live_processes(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| alive(pid) && root_of(pid).is_some_and(|root| root.starts_with(dir)))
        .collect()
}

/// The units with a pid file in `root/run`, and their pids.
pub(crate) fn pid_files(root: &Path) -> Vec<(String, i32)> {
    let Ok(entries) = std::fs::read_dir(root.join("run")) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".pid")?.to_string();
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((name, pid))
        })
        .collect()
}

/// SIGKILL to the process group `pgid`.
pub(crate) fn kill_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

fn root_of(pid: i32) -> Option<std::path::PathBuf> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"AIBRO_ROOT="))
        .map(|root| Path::new(OsStr::from_bytes(root)).to_path_buf())
}
