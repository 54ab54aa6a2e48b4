//! EC2's spot rules that moto skips. RunInstances takes a one-time request
//! that terminates on interruption, or a persistent one that stops or
//! hibernates; and only an instance of a persistent request can be stopped.

use super::errors::Ec2Error;
use super::query::Params;

const MARKET: &str = "InstanceMarketOptions.MarketType";
const REQUEST_TYPE: &str = "InstanceMarketOptions.SpotOptions.SpotInstanceType";
const INTERRUPTION: &str = "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior";

/// The spot request behind an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpotTerms {
    persistent: bool,
    interruption: Interruption,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    Terminate,
    Stop,
    Hibernate,
}

/// The spot terms a RunInstances asks for (None: on-demand), or EC2's
/// refusal of the combination.
pub(crate) fn launch_terms(params: &Params) -> Result<Option<SpotTerms>, Ec2Error> {
    if params.get(MARKET) != Some("spot") {
        return Ok(None);
    }
    let request = params.get(REQUEST_TYPE).unwrap_or("one-time");
    let persistent = match request {
        "one-time" => false,
        "persistent" => true,
        other => return Err(invalid_value(REQUEST_TYPE, other)),
    };
    let behavior = params.get(INTERRUPTION).unwrap_or("terminate");
    let interruption = match behavior {
        "terminate" => Interruption::Terminate,
        "stop" => Interruption::Stop,
        "hibernate" => Interruption::Hibernate,
        other => return Err(invalid_value(INTERRUPTION, other)),
    };
    if persistent == (interruption == Interruption::Terminate) {
        let message = if persistent {
            "Persistent Spot Instance requests are only supported when the instance \
             interruption behavior is either hibernate or stop."
                .to_string()
        } else {
            format!(
                "The request with type '{request}' is not supported when \
                 instanceInterruptionBehavior is set to '{behavior}'."
            )
        };
        return Err(Ec2Error::new("InvalidParameterCombination", 400, &message));
    }
    Ok(Some(SpotTerms {
        persistent,
        interruption,
    }))
}

/// EC2's refusal to stop `id`, launched on `terms` (None: not a spot instance).
pub(crate) fn stop_refusal(id: &str, terms: Option<&SpotTerms>) -> Option<Ec2Error> {
    let terms = terms.filter(|t| !t.persistent)?;
    debug_assert_eq!(terms.interruption, Interruption::Terminate);
    Some(Ec2Error::unsupported_operation(&format!(
        "You can't stop the Spot Instance '{id}' because it is associated with a one-time \
         Spot Instance request. You can only stop Spot Instances associated with persistent \
         Spot Instance requests."
    )))
}

fn invalid_value(param: &str, value: &str) -> Ec2Error {
    let message = format!("Value ({value}) for parameter {param} is invalid.");
    Ec2Error::new("InvalidParameterValue", 400, &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(options: &str) -> Result<Option<SpotTerms>, Ec2Error> {
        let body = format!("Action=RunInstances{options}");
        launch_terms(&Params::parse(None, body.as_bytes()))
    }

    const SPOT: &str = "&InstanceMarketOptions.MarketType=spot";
    const PERSISTENT: &str = "&InstanceMarketOptions.SpotOptions.SpotInstanceType=persistent";
    const STOP: &str = "&InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior=stop";

    fn code(result: Result<Option<SpotTerms>, Ec2Error>) -> String {
        result.expect_err("refused").code
    }

    #[test]
    fn ec2s_combinations() {
        assert_eq!(terms(""), Ok(None));
        let one_time = terms(SPOT).unwrap().expect("spot");
        assert!(!one_time.persistent);
        let persistent = terms(&format!("{SPOT}{PERSISTENT}{STOP}"))
            .unwrap()
            .unwrap();
        assert_eq!(persistent.interruption, Interruption::Stop);
        assert_eq!(
            code(terms(&format!("{SPOT}{STOP}"))),
            "InvalidParameterCombination"
        );
        assert_eq!(
            code(terms(&format!("{SPOT}{PERSISTENT}"))),
            "InvalidParameterCombination"
        );
        assert_eq!(
            code(terms(&format!("{SPOT}{STOP}x"))),
            "InvalidParameterValue"
        );
    }

    #[test]
    fn only_persistent_spot_stops() {
        let one_time = terms(SPOT).unwrap().unwrap();
        let refusal = stop_refusal("i-1", Some(&one_time)).expect("refused");
        assert_eq!(
            (refusal.code.as_str(), refusal.status),
            ("UnsupportedOperation", 400)
        );
        assert!(refusal.message.contains("'i-1'"));
        let persistent = terms(&format!("{SPOT}{PERSISTENT}{STOP}"))
            .unwrap()
            .unwrap();
        assert_eq!(stop_refusal("i-1", Some(&persistent)), None);
        assert_eq!(stop_refusal("i-1", None), None);
    }
}
