//! EC2's error answers: a code and a message with an HTTP status, 400 for the
//! caller's errors and 5xx for EC2's own (SDKs retry those), in EC2's XML.

use quick_xml::escape::escape;

/// An error EC2 answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Error {
    pub code: String,
    pub message: String,
    pub status: u16,
}

impl Ec2Error {
    pub fn new(code: &str, status: u16, message: &str) -> Self {
        Ec2Error {
            code: code.to_string(),
            message: message.to_string(),
            status,
        }
    }

    /// No capacity for the type in the zone: a server error on the wire (500).
    pub fn insufficient_instance_capacity() -> Self {
        Self::new(
            "InsufficientInstanceCapacity",
            500,
            "We currently do not have sufficient capacity in the Availability Zone you \
             requested. Our system will be working on provisioning additional capacity.",
        )
    }

    pub fn vcpu_limit_exceeded() -> Self {
        Self::new(
            "VcpuLimitExceeded",
            400,
            "You have requested more vCPU capacity than your current vCPU limit allows for \
             the instance bucket that the specified instance type belongs to.",
        )
    }

    pub fn spot_max_price_too_low() -> Self {
        Self::new(
            "SpotMaxPriceTooLow",
            400,
            "Your Spot request price is lower than the minimum required Spot request \
             fulfillment price.",
        )
    }

    pub fn max_spot_instance_count_exceeded() -> Self {
        Self::new(
            "MaxSpotInstanceCountExceeded",
            400,
            "Max spot instance count exceeded",
        )
    }

    /// Throttling: EC2 answers 503.
    pub fn request_limit_exceeded() -> Self {
        Self::new("RequestLimitExceeded", 503, "Request limit exceeded.")
    }

    pub fn unsupported_operation(message: &str) -> Self {
        Self::new("UnsupportedOperation", 400, message)
    }

    /// The body EC2 answers with.
    pub fn xml(&self, request_id: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
             <Code>{}</Code><Message>{}</Message></Error></Errors>\
             <RequestID>{}</RequestID></Response>",
            escape(self.code.as_str()),
            escape(self.message.as_str()),
            escape(request_id)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::xml::texts;

    #[test]
    fn client_errors_are_400_and_capacity_500() {
        let statuses: Vec<(String, u16)> = [
            Ec2Error::insufficient_instance_capacity(),
            Ec2Error::vcpu_limit_exceeded(),
            Ec2Error::spot_max_price_too_low(),
            Ec2Error::max_spot_instance_count_exceeded(),
            Ec2Error::unsupported_operation("no"),
            Ec2Error::request_limit_exceeded(),
        ]
        .into_iter()
        .map(|e| (e.code, e.status))
        .collect();
        let expected = [
            ("InsufficientInstanceCapacity", 500),
            ("VcpuLimitExceeded", 400),
            ("SpotMaxPriceTooLow", 400),
            ("MaxSpotInstanceCountExceeded", 400),
            ("UnsupportedOperation", 400),
            ("RequestLimitExceeded", 503),
        ];
        assert!(statuses.iter().map(|(c, s)| (c.as_str(), *s)).eq(expected));
    }

    #[test]
    fn the_body_is_ec2s_error_shape() {
        let xml = Ec2Error::unsupported_operation("can't <stop> 'i-1'").xml("r-1");
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>"));
        let at = |path: &[&str]| texts(&xml, path).unwrap();
        assert_eq!(
            at(&["Response", "Errors", "Error", "Code"]),
            ["UnsupportedOperation"]
        );
        assert_eq!(at(&["Error", "Message"]), ["can't <stop> 'i-1'"]);
        assert_eq!(at(&["Response", "RequestID"]), ["r-1"]);
    }
}
