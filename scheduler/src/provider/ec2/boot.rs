//! An instance's boot script (its EC2 user data), from `boot.sh` with every
//! value put in as a shell literal. `aibro-scheduler ec2 user-data` prints it.

const TEMPLATE: &str = include_str!("boot.sh");

/// What every instance's boot script shares.
#[derive(Debug, Clone, Default)]
pub struct BootCommon {
    /// The scheduler URL instances reach.
    pub scheduler_url: String,
    /// The CA (PEM) the scheduler's certificate chains to; empty for http.
    pub ca_pem: String,
    /// Flags for every agent (workers, python, pip options, sandbox).
    pub agent_args: Vec<String>,
    pub agent_url: String,
    pub agent_sha256: String,
}

/// One instance's boot script.
pub fn script(common: &BootCommon, instance_id: &str, machine_id: &str, token: &str) -> String {
    let agent_args = common
        .agent_args
        .iter()
        .map(|a| unit_word(a))
        .collect::<Vec<_>>()
        .join(" ");
    [
        ("SCHEDULER_URL", common.scheduler_url.as_str()),
        ("INSTANCE_ID", instance_id),
        ("MACHINE_ID", machine_id),
        ("BOOTSTRAP_TOKEN", token),
        ("AGENT_ARGS", &agent_args),
        ("AGENT_URL", &common.agent_url),
        ("AGENT_SHA256", &common.agent_sha256),
        ("CA_PEM", common.ca_pem.trim()),
    ]
    .into_iter()
    .fold(TEMPLATE.to_string(), |script, (name, value)| {
        script.replace(&format!("{{{{{name}}}}}"), &shell_literal(value))
    })
}

/// `value` as one single-quoted shell word.
fn shell_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `value` as one word of a systemd ExecStart line.
fn unit_word(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        return value.to_string();
    }
    format!(
        "\"{}\"",
        value
            .replace('\\', r"\\")
            .replace('"', "\\\"")
            .replace('$', "$$")
            .replace('%', "%%")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_go_in_as_literals() {
        let common = BootCommon {
            scheduler_url: "https://10.0.0.5:7070".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB'x\n-----END CERTIFICATE-----\n".into(),
            agent_args: vec![
                "--workers".into(),
                "2".into(),
                "--pip-index-url".into(),
                "https://x/$HOME y".into(),
            ],
            ..Default::default()
        };
        let s = script(&common, "inst-1", "g4dn.xlarge.od", "boot_abc");
        assert!(!s.contains("{{"), "{s}");
        assert!(s.contains("SCHEDULER_URL='https://10.0.0.5:7070'"));
        assert!(s.contains("BOOTSTRAP_TOKEN='boot_abc'"));
        assert!(s.contains(r"MIIB'\''x"), "a quote in a value ends nothing");
        assert!(
            s.contains(r#"AGENT_ARGS='--workers 2 --pip-index-url "https://x/$$HOME y"'"#),
            "{s}"
        );
        // It is a valid bash script.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.sh");
        std::fs::write(&path, &s).unwrap();
        let checked = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap();
        assert!(checked.success());
    }
}
