//! Real processes at every level this machine enforces, each trying what user
//! code must not do (and what it must still do). A level that did nothing fails
//! these tests: the same probe at `none` shows that each secret was there to take.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::launcher::{self, ProcessSpec};
use crate::sandbox::tests::{sandbox_at, supported_levels};
use crate::sandbox::{Level, Network, Sandbox};

/// Set in the agent's environment; must never reach user code.
const SECRET_VAR: &str = "AIBRO_JOIN_TOKEN";
/// A "scheduler" address the sandbox blocks (never a real host).
const SCHEDULER: &str = "10.203.0.7";

/// Each probe prints `name=outcome`; outcomes are "ok" or the errno's name.
const PROBE: &str = r#"
import errno, os, socket, sys, tempfile
def attempt(name, f):
    try:
        f(); out = "ok"
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e))
    except Exception as e:
        out = type(e).__name__
    print(f"{name}={out}", flush=True)
def connect(host, port):
    s = socket.socket(); s.settimeout(3); s.connect((host, port)); s.close()
def write(path):
    with open(path, "w") as f: f.write("x")
secret, outside, repo, out, port, agent = sys.argv[1:7]
attempt("read_secret", lambda: open(secret).read())
attempt("read_shadow", lambda: open("/etc/shadow").read())
attempt("write_outside", lambda: write(outside))
attempt("read_repo", lambda: open(os.path.join(repo, "model.txt")).read())
attempt("write_output", lambda: write(os.path.join(out, "result.txt")))
attempt("write_tmp", lambda: write(os.path.join(tempfile.gettempdir(), "t")))
attempt("signal_agent", lambda: os.kill(int(agent), 0))
attempt("host_loopback", lambda: connect("127.0.0.1", int(port)))
attempt("metadata", lambda: connect("169.254.169.254", 80))
attempt("scheduler", lambda: connect(sys.argv[7], 7070))
print("secret_env=" + ("present" if os.environ.get(sys.argv[8]) else "absent"))
print(f"uid={os.getuid()}")
"#;

/// Runs the probe at `sandbox` with `network`; its outcomes by name, and
/// `wrote_outside` when the file it tried to write outside its view exists.
async fn probe(sandbox: &Arc<Sandbox>, network: Network) -> HashMap<String, String> {
    static SET: std::sync::Once = std::sync::Once::new();
    // SAFETY (edition 2021: safe): set once, before any probe reads it.
    SET.call_once(|| std::env::set_var(SECRET_VAR, "join-secret"));
    let tmp = tempfile::tempdir().unwrap();
    let (repo, out) = (tmp.path().join("repo"), tmp.path().join("output"));
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(repo.join("model.txt"), "weights").unwrap();
    let secret = tmp.path().join("admin-token");
    std::fs::write(&secret, "admin").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut spec = ProcessSpec::new(&sandbox.python.executable, tmp.path().join("home"))
        .args(["-c", PROBE])
        .arg(&secret)
        .arg(tmp.path().join("outside.txt"))
        .arg(&repo)
        .arg(&out)
        .args([port.to_string(), std::process::id().to_string()])
        .args([SCHEDULER, SECRET_VAR]);
    spec.readable.push(repo.clone());
    spec.writable.push(out.clone());
    spec.network = network;
    let child = launcher::spawn(sandbox, &spec).await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut outcomes: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Inside bwrap the write may land in the private /tmp: only the host's
    // file counts.
    let wrote = tmp.path().join("outside.txt").exists();
    outcomes.insert("wrote_outside".into(), wrote.to_string());
    outcomes
}

fn sandbox(level: Level) -> Arc<Sandbox> {
    sandbox_at(level, &[SCHEDULER])
}

#[tokio::test]
async fn every_level_keeps_secrets_and_lets_honest_code_work() {
    let none = probe(&sandbox(Level::None), Network::Outbound).await;
    // What the sandbox must take away was there to take.
    assert_eq!(none["read_secret"], "ok", "{none:?}");
    assert_eq!(none["signal_agent"], "ok", "{none:?}");
    assert_eq!(none["wrote_outside"], "true", "{none:?}");
    // The allow-listed environment holds at every level.
    assert_eq!(none["secret_env"], "absent", "{none:?}");
    for level in supported_levels().into_iter().filter(|l| *l != Level::None) {
        let p = probe(&sandbox(level), Network::Outbound).await;
        let at = format!("at {}: {p:?}", level.name());
        assert_ne!(p["read_secret"], "ok", "{at}");
        assert_ne!(p["read_shadow"], "ok", "{at}");
        assert_eq!(p["wrote_outside"], "false", "{at}");
        assert_ne!(p["signal_agent"], "ok", "{at}");
        assert_eq!(p["secret_env"], "absent", "{at}");
        for honest in ["read_repo", "write_output", "write_tmp"] {
            assert_eq!(p[honest], "ok", "{honest} {at}");
        }
    }
}

#[tokio::test]
async fn namespaces_hide_the_hosts_loopback_and_block_the_scheduler_and_metadata() {
    let levels = supported_levels();
    for level in levels.into_iter().filter(|l| l.uses_bwrap()) {
        let sandbox = sandbox(level);
        let p = probe(&sandbox, Network::Outbound).await;
        let at = format!("at {}: {p:?}", level.name());
        assert_eq!(p["uid"], "1000", "{at}");
        // 127.0.0.1 is the namespace's own: nothing listens there.
        assert_eq!(p["host_loopback"], "ECONNREFUSED", "{at}");
        // Prohibit routes: refused at once, not timed out.
        assert_eq!(p["metadata"], "EACCES", "{at}");
        assert_eq!(p["scheduler"], "EACCES", "{at}");
        let p = probe(&sandbox, Network::Isolated).await;
        let at = format!("isolated at {}: {p:?}", level.name());
        assert_eq!(p["metadata"], "ENETUNREACH", "{at}");
        assert_eq!(p["scheduler"], "ENETUNREACH", "{at}");
        assert_eq!(p["host_loopback"], "ECONNREFUSED", "{at}");
    }
}

#[tokio::test]
async fn a_sandbox_that_cannot_be_set_up_starts_nothing() {
    // (Landlock grants nothing for a missing path; the process just runs.)
    for level in supported_levels().into_iter().filter(|l| l.uses_bwrap()) {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        let mut spec = ProcessSpec::new("touch", tmp.path().join("home")).arg(&marker);
        spec.writable.push(tmp.path().to_path_buf());
        // A path the view cannot bind: bwrap (or Landlock's rule) fails.
        spec.readable
            .push(Path::new("/nonexistent/aibro").to_path_buf());
        match launcher::spawn(&sandbox(level), &spec).await {
            // The namespaces never came up: bwrap's reason.
            Err(e) => assert!(e.to_string().contains("bubblewrap"), "{e}"),
            Ok(child) => {
                let out = child.wait_with_output().await.unwrap();
                let said = String::from_utf8_lossy(&out.stderr);
                assert!(!out.status.success(), "at {}: {said}", level.name());
                assert!(said.contains("bwrap"), "{said}");
            }
        }
        assert!(!marker.exists(), "at {}", level.name());
    }
}
