//! moto's server (`moto_server`, from PyPI's `moto[server]`) on a free
//! loopback port, in its own process group, killed on drop.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;

use super::{env::aws_env, http};

const INSTALL: &str = "run scripts/test-tools.sh (it installs moto[server])";

pub struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    /// Starts moto, logging to `log`, and waits until it answers.
    pub async fn start(log: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let out = std::fs::File::create(log)?;
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(aws_env())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn();
        let child = match spawned {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("moto_server is not on PATH: {INSTALL}")
            }
            other => other.context("start moto_server")?,
        };
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        moto.wait_ready(log).await?;
        Ok(moto)
    }

    /// Where moto answers (calls here are not counted by the proxy).
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + crate::STARTUP_DEADLINE;
        let client = http::client();
        let probe = format!("{}/moto-api/", self.url);
        loop {
            let request = hyper::Request::get(&probe).body(Full::new(Bytes::new()))?;
            if let Ok((parts, _)) = http::send(&client, request).await {
                if parts.status.is_success() {
                    return Ok(());
                }
            }
            let log = || std::fs::read_to_string(log).unwrap_or_default();
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "moto_server exited with {status} ({INSTALL}?); log:\n{}",
                    log()
                );
            }
            if Instant::now() > deadline {
                bail!("moto_server did not answer at {probe}; log:\n{}", log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        super::processes::kill_group(self.child.id() as i32);
        let _ = self.child.wait();
    }
}
