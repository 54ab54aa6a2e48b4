//! EC2's instance states and the time EC2 spends in the transitional ones.
//! moto changes state at once, so the proxy shows an instance `pending`,
//! `stopping` or `shutting-down` for a while after the call that began it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// An EC2 instance state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

const ALL: [InstanceState; 6] = [
    InstanceState::Pending,
    InstanceState::Running,
    InstanceState::ShuttingDown,
    InstanceState::Terminated,
    InstanceState::Stopping,
    InstanceState::Stopped,
];

impl InstanceState {
    /// EC2's code for the state (the low byte of `instanceState/code`).
    pub fn code(self) -> u16 {
        match self {
            Self::Pending => 0,
            Self::Running => 16,
            Self::ShuttingDown => 32,
            Self::Terminated => 48,
            Self::Stopping => 64,
            Self::Stopped => 80,
        }
    }

    /// EC2's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter().find(|s| s.name() == name)
    }

    /// Where a transitional state ends; a settled state ends in itself.
    fn settled(self) -> Self {
        match self {
            Self::Pending => Self::Running,
            Self::ShuttingDown => Self::Terminated,
            Self::Stopping => Self::Stopped,
            other => other,
        }
    }
}

/// How long instances stay in each transitional state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    pub pending: Duration,
    pub stopping: Duration,
    pub shutting_down: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        let short = Duration::from_millis(300);
        Delays {
            pending: short,
            stopping: short,
            shutting_down: short,
        }
    }
}

impl Delays {
    fn of(&self, state: InstanceState) -> Duration {
        match state {
            InstanceState::Pending => self.pending,
            InstanceState::Stopping => self.stopping,
            InstanceState::ShuttingDown => self.shutting_down,
            _ => Duration::ZERO,
        }
    }
}

/// Per instance, the transitional state it shows until a deadline.
#[derive(Debug, Default)]
pub(crate) struct Transitions(HashMap<String, (InstanceState, Instant)>);

impl Transitions {
    /// `id` shows `state` for its delay, replacing any earlier transition.
    pub(crate) fn begin(&mut self, id: &str, state: InstanceState, delays: &Delays) {
        let until = Instant::now() + delays.of(state);
        self.0.insert(id.to_string(), (state, until));
    }

    /// What `id` shows while moto says `actual`: its transitional state while
    /// that lasts and moto is where it ends, else `actual`.
    pub(crate) fn shown(&self, id: &str, actual: InstanceState) -> InstanceState {
        match self.0.get(id) {
            Some(&(state, until)) if Instant::now() < until && state.settled() == actual => state,
            _ => actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_are_ec2s() {
        for state in ALL {
            assert_eq!(InstanceState::from_name(state.name()), Some(state));
        }
        let codes: Vec<u16> = ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 16, 32, 48, 64, 80]);
        assert_eq!(InstanceState::from_name("rebooting"), None);
    }

    #[test]
    fn a_transition_shows_until_its_delay_ends() {
        let delays = Delays {
            pending: Duration::from_secs(60),
            stopping: Duration::ZERO,
            ..Delays::default()
        };
        let mut transitions = Transitions::default();
        transitions.begin("i-1", InstanceState::Pending, &delays);
        assert_eq!(
            transitions.shown("i-1", InstanceState::Running),
            InstanceState::Pending
        );
        // moto went elsewhere (stopped by someone else): moto is right.
        assert_eq!(
            transitions.shown("i-1", InstanceState::Stopped),
            InstanceState::Stopped
        );
        assert_eq!(
            transitions.shown("i-2", InstanceState::Running),
            InstanceState::Running
        );
        transitions.begin("i-1", InstanceState::Stopping, &delays);
        assert_eq!(
            transitions.shown("i-1", InstanceState::Stopped),
            InstanceState::Stopped
        );
    }
}
