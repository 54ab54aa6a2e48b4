//! `aibro-agent dry-run`, the built binary: the one JSON line it prints for a repo
//! that works (examples/echo) and for one that fails, with the user's prints kept
//! off stdout, and its exit status.

use std::path::Path;
use std::process::{Command, Output};

use aibro_repo::DryRunOutcome;

/// Packs `repo` with aibro-repo and dry-runs it with the agent binary.
fn dry_run(repo: &Path, tmp: &Path) -> Output {
    let archive = tmp.join("repo.tar.gz");
    aibro_repo::archive::pack_dir(repo, std::fs::File::create(&archive).unwrap()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_aibro-agent"))
        .arg("dry-run")
        .arg("--archive")
        .arg(&archive)
        .arg("--work-dir")
        .arg(tmp.join("work"))
        .args(["--python", "python3"])
        .output()
        .unwrap()
}

/// The one line on stdout, as JSON and as an outcome.
fn printed(out: &Output) -> (serde_json::Value, DryRunOutcome) {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout:?}");
    let json = serde_json::from_str(lines[0]).unwrap();
    (json, DryRunOutcome::from_json_line(lines[0]).unwrap())
}

#[test]
fn dry_runs_the_echo_example() {
    let tmp = tempfile::tempdir().unwrap();
    let echo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/echo");
    let (json, outcome) = printed(&dry_run(&echo, tmp.path()));
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["content_type", "ok", "output_b64", "traceback"]);
    assert!(outcome.ok, "{}", outcome.traceback);
    assert_eq!(outcome.content_type, "application/json");
    assert_eq!(outcome.traceback, "");
    let output: serde_json::Value = serde_json::from_slice(&outcome.output).unwrap();
    assert_eq!(
        output,
        serde_json::json!({
            "echo": {"text": "hello aibro", "n": 1},
            "model": {"name": "echo", "version": 1},
        })
    );
}

#[test]
fn a_failed_dry_run_is_a_result_too() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("src");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("predict.py"),
        "import sys\nprint('printed at import')\n\
         def load_model():\n    print('printed in load_model')\n    return None\n\
         def run(model, data):\n    print('printed in run'); sys.stdout.flush()\n    return 1 / 0\n",
    )
    .unwrap();
    let out = dry_run(&repo, tmp.path());
    let (_, outcome) = printed(&out);
    assert!(!outcome.ok);
    assert!(
        outcome.traceback.starts_with("run() raised:")
            && outcome.traceback.contains("ZeroDivisionError"),
        "{}",
        outcome.traceback
    );
    // The user's prints are logged on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("printed in run"), "{stderr}");
}

#[test]
fn bad_flags_exit_non_zero_without_a_result() {
    let out = Command::new(env!("CARGO_BIN_EXE_aibro-agent"))
        .args(["dry-run", "--archive", "/nonexistent.tar.gz"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
