//! Environment options: how the Python environment of a repo is built (the pip
//! index, extra indexes, find-links). Flags of the agent and the scheduler, each
//! with an `AIBRO_PIP_*` environment fallback.

/// pip options used while gearing up environments.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct PipOptions {
    /// pip `--index-url`.
    #[arg(long, env = "AIBRO_PIP_INDEX_URL")]
    pub pip_index_url: Option<String>,
    /// pip `--extra-index-url` (repeatable; comma-separated in the env var).
    #[arg(long, env = "AIBRO_PIP_EXTRA_INDEX_URL", value_delimiter = ',')]
    pub pip_extra_index_url: Vec<String>,
    /// pip `--find-links` (repeatable; comma-separated in the env var).
    #[arg(long, env = "AIBRO_PIP_FIND_LINKS", value_delimiter = ',')]
    pub pip_find_links: Vec<String>,
    /// pip `--no-index`.
    #[arg(long, env = "AIBRO_PIP_NO_INDEX")]
    pub pip_no_index: bool,
}

impl PipOptions {
    /// The options as `pip install` arguments.
    pub fn install_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(url) = &self.pip_index_url {
            args.extend(["--index-url".to_string(), url.clone()]);
        }
        for url in &self.pip_extra_index_url {
            args.extend(["--extra-index-url".to_string(), url.clone()]);
        }
        for dir in &self.pip_find_links {
            args.extend(["--find-links".to_string(), dir.clone()]);
        }
        if self.pip_no_index {
            args.push("--no-index".to_string());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_args_keep_pips_spelling_and_order() {
        assert!(PipOptions::default().install_args().is_empty());
        let pip = PipOptions {
            pip_index_url: Some("https://i".into()),
            pip_extra_index_url: vec!["https://a".into(), "https://b".into()],
            pip_find_links: vec!["/w".into()],
            pip_no_index: true,
        };
        assert_eq!(
            pip.install_args(),
            [
                "--index-url",
                "https://i",
                "--extra-index-url",
                "https://a",
                "--extra-index-url",
                "https://b",
                "--find-links",
                "/w",
                "--no-index"
            ]
        );
    }
}
