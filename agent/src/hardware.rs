//! What this machine has: CPUs, memory, hostname and NVIDIA GPUs (through
//! `nvidia-smi` when it is installed). Detection never fails: anything that cannot
//! be read is reported as zero / empty.

use aibro_proto::v1::{Gpu, Hardware};

const MIB: u64 = 1 << 20;

/// Detects the hardware of this machine.
pub fn detect() -> Hardware {
    Hardware {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo(&s))
            .unwrap_or(0),
        gpus: gpus(),
        hostname: hostname(),
    }
}

/// GPUs as reported by `nvidia-smi` right now; empty without it.
pub(crate) fn gpus() -> Vec<Gpu> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total,memory.used",
            "--format=csv,noheader,nounits",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal:  16314564 kB` → bytes.
fn parse_meminfo(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Parses `index, name, memory.total, memory.used` lines (MiB, no units); lines that
/// do not parse are skipped.
fn parse_nvidia_smi(csv: &str) -> Vec<Gpu> {
    csv.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() < 4 {
                return None;
            }
            let mib = |s: &str| s.parse::<f64>().ok().map(|v| (v * MIB as f64) as u64);
            Some(Gpu {
                index: f[0].parse().ok()?,
                // A name could hold commas; everything between index and the numbers.
                name: f[1..f.len() - 2].join(","),
                memory_total_bytes: mib(f[f.len() - 2])?,
                memory_used_bytes: mib(f[f.len() - 1]).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nvidia_smi_csv() {
        let csv = "0, NVIDIA H100 80GB HBM3, 81559, 0\n1, Tesla T4, 15360, 1024\n\n";
        let g = parse_nvidia_smi(csv);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].index, 0);
        assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g[0].memory_total_bytes, 81559 * MIB);
        assert_eq!(g[1].name, "Tesla T4");
        assert_eq!(g[1].memory_used_bytes, 1024 * MIB);
    }

    #[test]
    fn skips_bad_lines() {
        let g = parse_nvidia_smi("garbage\nx, y, z, w\n0, A, [N/A], 1\n");
        assert!(g.is_empty(), "{g:?}");
    }

    #[test]
    fn parses_meminfo() {
        let s = "MemTotal:       16314564 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_meminfo(s), Some(16314564 * 1024));
    }

    #[test]
    fn detect_never_fails() {
        let hw = detect();
        assert!(hw.cpus >= 1);
        assert!(hw.memory_bytes > 0);
    }
}
