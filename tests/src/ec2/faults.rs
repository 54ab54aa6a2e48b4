//! Faults the proxy injects: a rule matches an action, and parameters if it
//! names any (a list by any member), and answers an EC2 error in moto's place,
//! a number of times or for ever.

use super::errors::Ec2Error;
use super::query::Params;

/// Answer `error` to calls of an action.
#[derive(Debug, Clone)]
pub struct FaultRule {
    action: String,
    params: Vec<(String, String)>,
    error: Ec2Error,
    /// None: for ever.
    times: Option<u32>,
}

impl FaultRule {
    /// Answers every call of `action` with `error`, for ever unless
    /// [`FaultRule::times`] says otherwise.
    pub fn new(action: &str, error: Ec2Error) -> Self {
        FaultRule {
            action: action.to_string(),
            params: Vec::new(),
            error,
            times: None,
        }
    }

    /// Only calls whose `param` is `value`; a list (`InstanceId` for
    /// `InstanceId.N`) matches when any member is.
    pub fn when(mut self, param: &str, value: &str) -> Self {
        self.params.push((param.to_string(), value.to_string()));
        self
    }

    /// Only the next `n` matching calls.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, params: &Params) -> bool {
        params.action() == self.action && self.params.iter().all(|(k, v)| params.has(k, v))
    }
}

/// The rules in force, first added first.
#[derive(Debug, Default)]
pub(crate) struct Faults(Vec<FaultRule>);

impl Faults {
    pub(crate) fn add(&mut self, rule: FaultRule) {
        self.0.push(rule);
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The error of the first rule the call matches, spending one of its times.
    pub(crate) fn take(&mut self, params: &Params) -> Option<Ec2Error> {
        let at = self.0.iter().position(|rule| rule.matches(params))?;
        let rule = &mut self.0[at];
        let error = rule.error.clone();
        match &mut rule.times {
            Some(1) => {
                self.0.remove(at);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: &str) -> Params {
        Params::parse(None, body.as_bytes())
    }

    #[test]
    fn a_rule_matches_its_action_and_params() {
        let mut faults = Faults::default();
        let capacity = Ec2Error::insufficient_instance_capacity();
        faults.add(FaultRule::new("RunInstances", capacity.clone()).when("InstanceType", "big"));
        assert_eq!(
            faults.take(&call("Action=RunInstances&InstanceType=small")),
            None
        );
        assert_eq!(
            faults.take(&call("Action=StopInstances&InstanceType=big")),
            None
        );
        let big = call("Action=RunInstances&InstanceType=big");
        assert_eq!(faults.take(&big), Some(capacity.clone()));
        assert_eq!(faults.take(&big), Some(capacity), "for ever");
    }

    #[test]
    fn a_list_matches_by_any_member_and_times_run_out() {
        let mut faults = Faults::default();
        let error = Ec2Error::unsupported_operation("no");
        faults.add(
            FaultRule::new("StopInstances", error.clone())
                .when("InstanceId", "i-2")
                .times(2),
        );
        let stop = call("Action=StopInstances&InstanceId.1=i-1&InstanceId.2=i-2");
        assert_eq!(
            faults.take(&call("Action=StopInstances&InstanceId.1=i-1")),
            None
        );
        assert_eq!(faults.take(&stop), Some(error.clone()));
        assert_eq!(faults.take(&stop), Some(error));
        assert_eq!(faults.take(&stop), None);
    }
}
