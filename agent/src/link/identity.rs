//! Who this agent is: a stable agent id kept in `<dir>/agent-id`, the machine type
//! it offers, and the instance it runs as now. That instance is fixed by
//! `--instance-id`; a pool agent (no `--instance-id`) starts idle (empty) and the
//! scheduler's Assign changes it, which the reporter follows by registering again.

use std::path::Path;

use tokio::sync::watch;

/// The file under the data directory that keeps the agent id.
const AGENT_ID_FILE: &str = "agent-id";

#[derive(Debug, thiserror::Error)]
pub(crate) enum AssignError {
    #[error("this agent was started as instance `{0}`; only pool agents (started with --machine-id and no --instance-id) can be assigned")]
    NotPool(String),
}

pub(crate) struct Identity {
    pub agent_id: String,
    pub machine_id: String,
    /// Started without an instance id: Assign may change the instance.
    pool: bool,
    instance: watch::Sender<String>,
}

impl Identity {
    /// An agent running as `instance_id`, or an idle pool agent when it is empty.
    pub(crate) fn new(agent_id: String, machine_id: String, instance_id: String) -> Identity {
        Identity {
            agent_id,
            machine_id,
            pool: instance_id.is_empty(),
            instance: watch::Sender::new(instance_id),
        }
    }

    /// The instance this agent runs as now; empty while a pool agent is idle.
    pub(crate) fn instance(&self) -> String {
        self.instance.borrow().clone()
    }

    /// Follows the instance: it changes when the agent is assigned.
    pub(crate) fn subscribe(&self) -> watch::Receiver<String> {
        self.instance.subscribe()
    }

    /// Runs as `instance_id` from now on (empty: back to the idle pool). Returns
    /// whether it changed; assigning the current instance changes nothing.
    pub(crate) fn assign(&self, instance_id: String) -> Result<bool, AssignError> {
        if !self.pool {
            return Err(AssignError::NotPool(self.instance()));
        }
        let changed = self.instance.send_if_modified(|current| {
            if *current == instance_id {
                return false;
            }
            *current = instance_id;
            true
        });
        if changed {
            tracing::info!(instance_id = %self.instance(), "assigned");
        }
        Ok(changed)
    }
}

/// The agent id kept in `dir`: read back, or created on first start as
/// `agent-<uuid v7>` (written atomically, so a crash leaves no torn id).
pub(crate) fn agent_id(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(AGENT_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("agent-{}", uuid::Uuid::now_v7());
    let tmp = dir.join(format!(".{AGENT_ID_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, &id)?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_is_created_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let id = agent_id(tmp.path()).unwrap();
        assert!(id.starts_with("agent-"), "{id}");
        assert_eq!(agent_id(tmp.path()).unwrap(), id);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(AGENT_ID_FILE)).unwrap(),
            id
        );
        // Nothing but the id is left behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        // An id written by hand (with a newline) is kept as is.
        std::fs::write(tmp.path().join(AGENT_ID_FILE), "agent-by-hand\n").unwrap();
        assert_eq!(agent_id(tmp.path()).unwrap(), "agent-by-hand");
    }

    #[test]
    fn pool_agents_follow_assign() {
        let id = Identity::new("a".into(), "gpu.large".into(), String::new());
        let mut rx = id.subscribe();
        assert_eq!(id.instance(), "");
        assert!(id.assign("inst-7".into()).unwrap());
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), "inst-7");
        // The same instance again changes nothing.
        assert!(!id.assign("inst-7".into()).unwrap());
        assert!(!rx.has_changed().unwrap());
        assert!(id.assign(String::new()).unwrap());
        assert_eq!(*rx.borrow_and_update(), "");
    }

    #[test]
    fn instance_agents_refuse_assign() {
        let id = Identity::new("a".into(), String::new(), "inst-1".into());
        let e = id.assign("inst-2".into()).unwrap_err();
        assert!(e.to_string().contains("inst-1"), "{e}");
        assert!(id.assign(String::new()).is_err());
        assert_eq!(id.instance(), "inst-1");
    }
}
