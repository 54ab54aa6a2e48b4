//! What every process of the EC2 world runs with: static credentials, a
//! region and the metadata client off, so that no AWS SDK ever probes the
//! real instance metadata address; and where the workspace's binaries are.

use std::path::PathBuf;

/// The AWS variables for every process a test starts (the scheduler too).
pub fn aws_env() -> [(&'static str, &'static str); 4] {
    [
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ]
}

/// The folder of the workspace's binaries (`target/debug`): the test
/// executable's own, or the one above it when it runs from `deps/`.
pub(crate) fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let here = exe.parent().expect("exe dir").to_path_buf();
    match here.file_name() {
        Some(name) if name == "deps" => here.parent().unwrap_or(&here).to_path_buf(),
        _ => here,
    }
}
