//! The programs of a played machine's "OS": its user data under bash, and the
//! fake systemctl (tests/fixtures/ec2/systemctl) for its units. Each runs with
//! `AIBRO_ROOT` (the machine's disk), `AIBRO_SERVICE_CMD` (the fake
//! systemctl), `AIBRO_LISTEN=127.0.0.1:0`, `AIBRO_IMDS_ENDPOINT` where the test
//! gives one, the workspace's `target/debug` first on `PATH`, and [`aws_env`].

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Result;
use tokio::process::{Child, Command};

use super::env::{aws_env, bin_dir};
use super::processes::pid_files;

/// One played machine's root and metadata endpoint.
pub(crate) struct Guest {
    pub(crate) root: PathBuf,
    pub(crate) imds: Option<String>,
}

impl Guest {
    /// Starts the user data (cloud-init keeps it in
    /// `/var/lib/cloud/instance/user-data.txt`) in its own process group, its
    /// output appended to `var/log/user-data.log`.
    pub(crate) fn run_user_data(&self, script: &[u8]) -> Result<Child> {
        let dir = self.root.join("var/lib/cloud/instance");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("user-data.txt");
        std::fs::write(&path, script)?;
        let log = self.log("user-data.log")?;
        Ok(self
            .command("bash")
            .arg(&path)
            .process_group(0)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    }

    /// Starts every enabled unit, as systemd does at boot.
    pub(crate) async fn start_units(&self) {
        let wants = self.root.join("etc/systemd/system/multi-user.target.wants");
        let mut units: Vec<String> = std::fs::read_dir(wants)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        units.sort();
        for unit in units {
            self.systemctl(&["start", &unit]).await;
        }
    }

    /// Stops every unit that has a pid file, as systemd does at shutdown.
    pub(crate) async fn stop_units(&self) {
        for (unit, _) in pid_files(&self.root) {
            self.systemctl(&["stop", &unit]).await;
        }
    }

    /// Appends a line of the harness's own to the user-data log.
    pub(crate) fn note(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut log) = self.log("user-data.log") {
            let _ = writeln!(log, "[ec2 world] {line}");
        }
    }

    async fn systemctl(&self, args: &[&str]) {
        let run = async {
            let log = self.log("systemctl.log")?;
            let status = self
                .command(systemctl())
                .args(args)
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .status()
                .await?;
            anyhow::ensure!(status.success(), "exited with {status}");
            Ok(())
        };
        if let Err(e) = run.await {
            self.note(&format!("systemctl {}: {e:#}", args.join(" ")));
        }
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("AIBRO_ROOT", &self.root)
            .env("AIBRO_SERVICE_CMD", systemctl())
            .env("AIBRO_LISTEN", "127.0.0.1:0")
            .env("PATH", search_path())
            .envs(aws_env())
            .stdin(Stdio::null());
        match &self.imds {
            Some(url) => command.env("AIBRO_IMDS_ENDPOINT", url),
            // Never the real metadata address: a port where nothing listens.
            None => command.env("AIBRO_IMDS_ENDPOINT", "http://127.0.0.1:9"),
        };
        command
    }

    fn log(&self, name: &str) -> std::io::Result<std::fs::File> {
        let dir = self.root.join("var/log");
        std::fs::create_dir_all(&dir)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
    }
}

/// The fake systemctl.
fn systemctl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ec2/systemctl")
}

/// `target/debug`, then this process's `PATH`.
fn search_path() -> std::ffi::OsString {
    let mut dirs = vec![bin_dir()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("PATH entries without ':'")
}
