//! Headless Chromium for the browser tests, driven through WebDriver
//! (`chromedriver` on a free loopback port, the `fantoccini` client). The
//! browser runs with a throwaway profile and every background service off,
//! so it sends nothing off this machine. Screenshots go to
//! `target/test-artifacts/screenshots/<test>-<name>.png`. Dropping a
//! [`Browser`] kills chromedriver and the Chromium it started.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fantoccini::{Client, ClientBuilder};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::STARTUP_DEADLINE;

/// What to say when a tool is missing.
const INSTALL: &str = "run scripts/test-tools.sh (apt: chromium chromium-driver)";
/// The viewport every screenshot has.
pub const WINDOW: (u32, u32) = (1280, 900);
/// Chromium without a sandbox (tests run as root), GPU or shared memory
/// limits, and with every service that would call home turned off.
const CHROMIUM_FLAGS: [&str; 12] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
];

/// A headless Chromium session for one test.
pub struct Browser {
    pub client: Client,
    test: String,
    driver: Driver,
}

/// The chromedriver process (and the Chromium it starts) with its scratch
/// folder: the profile and chromedriver's log.
struct Driver {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Browser {
    /// Starts chromedriver, waits until it is ready and opens a session.
    /// `test` names the screenshots. Fails, saying what to install, when
    /// Chromium or chromedriver is missing.
    pub async fn start(test: &str) -> Result<Browser> {
        let chromium = tool("chromium", std::env::var_os("PATH"))?;
        let driver = Driver::start()?;
        driver.wait_ready().await?;
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities(&chromium, &driver.dir.path().join("profile")))
            .connect(&driver.url)
            .await
            .with_context(|| format!("open a Chromium session; {}", driver.log()))?;
        Ok(Browser {
            client,
            test: test.to_string(),
            driver,
        })
    }

    /// Saves what the window shows as `<test>-<name>.png` under
    /// `target/test-artifacts/screenshots/`, and returns its path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self
            .client
            .screenshot()
            .await
            .with_context(|| format!("take a screenshot; {}", self.driver.log()))?;
        let dir = artifacts_dir().join("screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{name}.png", self.test));
        std::fs::write(&path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Whether a JavaScript dialog (alert, confirm, prompt) is open.
    pub async fn dialog_open(&self) -> Result<bool> {
        match self.client.get_alert_text().await {
            Ok(_) => Ok(true),
            Err(e) if e.is_no_such_alert() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the session (Chromium quits); Drop kills whatever is left.
    pub async fn close(self) -> Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }
}

impl Driver {
    fn start() -> Result<Driver> {
        let chromedriver = tool("chromedriver", std::env::var_os("PATH"))?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Drop kills chromedriver and Chromium together.
            .process_group(0)
            .spawn()
            .context("start chromedriver")?;
        Ok(Driver {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Polls chromedriver's `/status` until it says ready, within a deadline.
    async fn wait_ready(&self) -> Result<()> {
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        let uri: hyper::Uri = format!("{}/status", self.url).parse()?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(resp) = http.get(uri.clone()).await {
                let body = resp.into_body().collect().await?.to_bytes();
                let status: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if status["value"]["ready"] == true {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver not ready at {}; {}", self.url, self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "chromedriver log (last lines, newest first):\n{}",
            tail.join("\n")
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) on the process group this Driver created.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Chromium's options: our binary, flags and a throwaway profile.
fn capabilities(chromium: &Path, profile: &Path) -> fantoccini::wd::Capabilities {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
    args.push(format!("--window-size={},{}", WINDOW.0, WINDOW.1));
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = fantoccini::wd::Capabilities::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium, "args": args }),
    );
    caps
}

/// `name` in a folder of `path` (`PATH`), or an error that says what to install.
fn tool(name: &str, path: Option<std::ffi::OsString>) -> Result<PathBuf> {
    path.iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: {INSTALL}"))
}

/// A loopback port free right now (chromedriver binds it next).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `target/test-artifacts`: beside the test binaries' profile folder
/// (`target/debug/deps/<test>` → `target/`).
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let target = exe.ancestors().nth(3).expect("target dir");
    target.join("test-artifacts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_browser_fails_saying_what_to_install() {
        let empty = tempfile::tempdir().unwrap();
        let err = tool("chromium", Some(empty.path().into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "chromium not found: run scripts/test-tools.sh (apt: chromium chromium-driver)"
        );
        assert!(tool("chromedriver", None).is_err());
    }
}
