//! CPU time and memory of processes and process trees, read from Linux `/proc`.
//!
//! [`process_cpu`] is one process's `utime + stime`; [`tree_cpu`] sums `utime + stime` (fields 14 and 15 of `/proc/PID/stat`)
//! of a root process and of every live descendant, found by building the
//! ppid tree from one scan of `/proc/*/stat`. `cutime`/`cstime` are left out:
//! they would count reaped children twice at best, and only once they are
//! reaped. So the CPU of a descendant that exits between two readings is lost
//! to the difference; long-lived servers (the ones benched here) lose nothing.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

/// One process from `/proc/PID/stat`: its parent and its CPU ticks.
struct Proc {
    ppid: u32,
    ticks: u64,
}

/// Parses `/proc/PID/stat`; the command name may hold spaces and parentheses,
/// so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<Proc> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let num = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Proc {
        ppid: u32::try_from(num(4)?).ok()?,
        ticks: num(14)? + num(15)?,
    })
}

/// `/proc/PID/stat` of a live process.
fn read_stat(pid: u32) -> Option<Proc> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every live process, by pid. Processes that vanish mid-scan are skipped.
fn table() -> HashMap<u32, Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| {
        let pid = e.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
        Some((pid, read_stat(pid)?))
    })
    .collect()
}

/// `root` and its live descendants, `root` first (empty if `root` is gone).
fn subtree(table: &HashMap<u32, Proc>, root: u32) -> Vec<u32> {
    if !table.contains_key(&root) {
        return Vec::new();
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, p) in table {
        if pid != root {
            children.entry(p.ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        out.extend(children.get(&out[i]).into_iter().flatten());
        i += 1;
    }
    out
}

/// Pids of `root` and its live descendants, `root` first; empty if `root` is gone.
pub fn tree(root: u32) -> Vec<u32> {
    subtree(&table(), root)
}

/// User + system CPU time of `root` and its live descendants (see the module docs).
pub fn tree_cpu(root: u32) -> Duration {
    let table = table();
    let ticks: u64 = subtree(&table, root)
        .iter()
        .map(|pid| table[pid].ticks)
        .sum();
    ticks_to_duration(ticks)
}

/// User + system CPU time of `pid` alone; `None` when it is gone.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    read_stat(pid).map(|p| ticks_to_duration(p.ticks))
}

/// The whole host's CPU time since boot, over all cores: busy (user, nice,
/// system, irq, softirq, steal) and in all (busy + idle + iowait).
pub fn host_cpu() -> Option<(Duration, Duration)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    let all = busy + at(3) + at(4);
    Some((ticks_to_duration(busy), ticks_to_duration(all)))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100);
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// Resident set size of `pid` (`VmRSS` in `/proc/PID/status`); 0 when the
/// process is gone or has no user memory (a kernel thread, a zombie).
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// Peak resident set size of `pid` since it started (`VmHWM`); 0 as [`rss_bytes`].
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM")
}

/// A `kB` line of `/proc/PID/status`, in bytes; 0 when it is not there.
fn status_bytes(pid: u32, key: &str) -> u64 {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let p = parse_stat("42 (a b) c)) S 7 1 1 0 -1 0 0 0 0 0 250 30 9 9 20 0 1 0 5").unwrap();
        assert_eq!((p.ppid, p.ticks), (7, 280));
    }

    /// A spinning grandchild (sh → background subshell) shows up in our tree
    /// and its CPU in ours, beyond our own process's CPU.
    #[test]
    fn counts_live_descendants() {
        let me = std::process::id();
        let mut child = Command::new("sh")
            .args(["-c", "while :; do :; done & wait"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (spun, size) = loop {
            let own = process_cpu(me).expect("we are alive");
            let size = tree(me).len();
            let spun = tree_cpu(me).saturating_sub(own);
            if spun >= Duration::from_millis(300) || Instant::now() > deadline {
                break (spun, size);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (rss, peak) = (rss_bytes(me), peak_rss_bytes(me));
        // SAFETY: kills the process group made for the spinner above.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        child.wait().unwrap();
        assert!(
            size >= 3,
            "our tree of {size} processes lacks the grandchild"
        );
        assert!(
            spun >= Duration::from_millis(300),
            "descendants spun only {spun:?}"
        );
        assert!(rss > 0 && peak >= rss, "rss {rss}, peak {peak}");
        assert_eq!(rss_bytes(u32::MAX), 0);
        let (busy, all) = host_cpu().expect("/proc/stat");
        assert!(busy > Duration::ZERO && all >= busy, "{busy:?} of {all:?}");
        assert_eq!(process_cpu(u32::MAX), None);
    }
}
