//! What this machine has: CPUs, memory, hostname and NVIDIA GPUs (through NVML,
//! loaded at run time, or `nvidia-smi` where NVML cannot be initialised), and the
//! share of the cores each Python worker gets.
//! Detection never fails: anything that cannot be read is reported as zero / empty.

use std::sync::OnceLock;

use aibro_proto::v1::{Gpu, Hardware};
use nvml_wrapper::Nvml;

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

/// Every GPU with its memory in use right now, from NVML, else from `nvidia-smi`;
/// empty without either.
pub(crate) fn gpus() -> Vec<Gpu> {
    if let Some(nvml) = nvml() {
        match nvml_gpus(nvml) {
            Ok(gpus) => return gpus,
            Err(e) => tracing::debug!("NVML cannot list the GPUs ({e}); asking nvidia-smi"),
        }
    }
    nvidia_smi_gpus()
}

/// The GPUs of `gpus` whose index is in `indices`.
pub(crate) fn only(mut gpus: Vec<Gpu>, indices: &[u32]) -> Vec<Gpu> {
    gpus.retain(|g| indices.contains(&g.index));
    gpus
}

/// The cores each of `workers` workers gets: an equal share, at least one.
pub(crate) fn threads_per_worker(workers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / workers.max(1)).max(1)
}

/// NVML, initialised on first use; None where it cannot be (no driver).
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| {
        // Driver installs ship the versioned name; the bare one comes with dev files.
        let nvml = Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
            .init()
            .or_else(|_| Nvml::init());
        match nvml {
            Ok(nvml) => Some(nvml),
            Err(e) => {
                tracing::debug!("NVML is not available ({e}); GPUs come from nvidia-smi");
                None
            }
        }
    })
    .as_ref()
}

/// The GPUs NVML sees; one that cannot be read (e.g. fallen off the bus) is left out.
fn nvml_gpus(nvml: &Nvml) -> Result<Vec<Gpu>, nvml_wrapper::error::NvmlError> {
    let mut gpus = Vec::new();
    for index in 0..nvml.device_count()? {
        let gpu = nvml.device_by_index(index).and_then(|d| {
            let memory = d.memory_info()?;
            Ok(Gpu {
                index,
                name: d.name()?,
                memory_total_bytes: memory.total,
                memory_used_bytes: memory.used,
            })
        });
        match gpu {
            Ok(g) => gpus.push(g),
            Err(e) => tracing::debug!(index, "NVML cannot read this GPU: {e}"),
        }
    }
    Ok(gpus)
}

/// GPUs as reported by `nvidia-smi` right now; empty without it.
fn nvidia_smi_gpus() -> Vec<Gpu> {
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
    fn only_keeps_the_chosen_gpus() {
        let gpu = |index| Gpu {
            index,
            ..Gpu::default()
        };
        let g = only(vec![gpu(0), gpu(1), gpu(2), gpu(3)], &[3, 1, 7]);
        assert_eq!(g.iter().map(|g| g.index).collect::<Vec<_>>(), [1, 3]);
        assert!(only(vec![gpu(0)], &[]).is_empty());
    }

    /// Checks something only on a host with an NVIDIA driver.
    #[test]
    fn nvml_agrees_with_nvidia_smi() {
        let (Some(nvml), smi) = (nvml(), nvidia_smi_gpus()) else {
            return;
        };
        let from_nvml = nvml_gpus(nvml).unwrap();
        assert_eq!(from_nvml.len(), smi.len(), "{from_nvml:?} vs {smi:?}");
        for (a, b) in from_nvml.iter().zip(&smi) {
            assert_eq!((a.index, &a.name), (b.index, &b.name));
            assert!(
                a.memory_total_bytes.abs_diff(b.memory_total_bytes) <= MIB,
                "{a:?} vs {b:?}"
            );
        }
        // Initialised once.
        assert!(std::ptr::eq(nvml, super::nvml().unwrap()));
    }

    #[test]
    fn detect_never_fails() {
        let hw = detect();
        assert!(hw.cpus >= 1);
        assert!(hw.memory_bytes > 0);
    }
}
