//! The EC2 calls the provider makes, on the official AWS SDK: one function per
//! action, EC2's refusals turned into [`CloudError`]s that say what they mean.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataOptionsRequest,
    InstanceStateName, InstanceType, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions,
    Tag, TagSpecification, VolumeType,
};
use aws_sdk_ec2::Client;

use super::settings::Ec2Settings;

pub(super) const TAG_SCHEDULER: &str = "aibro:scheduler";
pub(super) const TAG_INSTANCE: &str = "aibro:instance";
pub(super) const TAG_JOB: &str = "aibro:job";
pub(super) const TAG_ROLE: &str = "aibro:role";

/// EC2 refused a call (or could not be reached).
#[derive(Debug, Clone, thiserror::Error)]
#[error("EC2 {action} failed: {code}: {message}{}", hint(code))]
pub struct CloudError {
    pub action: &'static str,
    /// EC2's error code (`InsufficientInstanceCapacity`, ...); `Unreachable`
    /// when no answer came.
    pub code: String,
    pub message: String,
}

/// What a refusal means, for the user reading it.
fn hint(code: &str) -> &'static str {
    match code {
        "InsufficientInstanceCapacity" => " (EC2 has no capacity of this type now)",
        "SpotMaxPriceTooLow" => " (the spot price is above the maximum price)",
        "MaxSpotInstanceCountExceeded" => " (the account's spot instance limit is reached)",
        "VcpuLimitExceeded" => " (the account's vCPU quota for this type is reached)",
        "UnsupportedOperation" => " (EC2 does not allow this for the instance)",
        _ => "",
    }
}

impl CloudError {
    fn new<E: ProvideErrorMetadata + std::error::Error>(action: &'static str, e: E) -> Self {
        CloudError {
            action,
            code: e.code().unwrap_or("Unreachable").to_string(),
            message: e
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string()),
        }
    }

    /// No machine of the type can be had now (another type or market may).
    pub fn is_capacity(&self) -> bool {
        matches!(
            self.code.as_str(),
            "InsufficientInstanceCapacity"
                | "SpotMaxPriceTooLow"
                | "MaxSpotInstanceCountExceeded"
                | "VcpuLimitExceeded"
                | "InstanceLimitExceeded"
        )
    }

    /// A spot request was refused: on-demand may still be had.
    pub fn is_spot_refusal(&self) -> bool {
        matches!(
            self.code.as_str(),
            "InsufficientInstanceCapacity" | "SpotMaxPriceTooLow" | "MaxSpotInstanceCountExceeded"
        )
    }

    fn is_not_found(&self) -> bool {
        self.code == "InvalidInstanceID.NotFound"
    }
}

/// An instance as EC2 describes it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Described {
    pub ec2_id: String,
    /// The aibro instance id (its tag).
    pub instance_id: String,
    pub state: InstanceStateName,
    /// A persistent spot request to cancel before terminating.
    pub spot_request: Option<String>,
}

/// What one RunInstances call asks for.
pub(super) struct Launch<'a> {
    pub instance_id: &'a str,
    pub instance_type: &'a str,
    pub spot: bool,
    pub user_data: String,
    pub tags: Vec<(&'static str, String)>,
}

#[derive(Clone)]
pub(super) struct Ec2Api {
    client: Client,
}

impl Ec2Api {
    pub fn new(client: Client) -> Self {
        Ec2Api { client }
    }

    /// The AMI's root device name (EBS root volume mapping), checking that it exists.
    pub async fn root_device(&self, ami: &str) -> Result<String, CloudError> {
        let out = self
            .client
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .map_err(|e| CloudError::new("DescribeImages", e.into_service_error()))?;
        let image = out.images().first().ok_or_else(|| CloudError {
            action: "DescribeImages",
            code: "InvalidAMIID.NotFound".into(),
            message: format!("AMI {ami} does not exist in this region"),
        })?;
        Ok(image.root_device_name().unwrap_or("/dev/xvda").to_string())
    }

    /// One RunInstances: everything set in the same call, tags included;
    /// the instance id is the idempotency token.
    pub async fn run(
        &self,
        s: &Ec2Settings,
        root_device: &str,
        launch: Launch<'_>,
    ) -> Result<Described, CloudError> {
        let instance_id = launch.instance_id.to_string();
        let tags = launch
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(v).build());
        let tagged = |kind| {
            TagSpecification::builder()
                .resource_type(kind)
                .set_tags(Some(tags.clone().collect()))
                .build()
        };
        let mut call = self
            .client
            .run_instances()
            .client_token(launch.instance_id)
            .image_id(&s.ami)
            .instance_type(InstanceType::from(launch.instance_type))
            .min_count(1)
            .max_count(1)
            .user_data(launch.user_data)
            .block_device_mappings(root_volume(root_device, s.root_volume_gib))
            .metadata_options(imds_v2_only())
            .tag_specifications(tagged(ResourceType::Instance))
            .tag_specifications(tagged(ResourceType::Volume))
            .set_subnet_id(s.subnet.clone())
            .set_key_name(s.key_name.clone())
            .set_security_group_ids(Some(s.security_groups.clone()).filter(|g| !g.is_empty()));
        if let Some(profile) = &s.instance_profile {
            call = call.iam_instance_profile(instance_profile(profile));
        }
        if launch.spot {
            call = call.instance_market_options(persistent_spot());
        }
        let out = call
            .send()
            .await
            .map_err(|e| CloudError::new("RunInstances", e.into_service_error()))?;
        let instance = out.instances().first().ok_or_else(|| CloudError {
            action: "RunInstances",
            code: "EmptyAnswer".into(),
            message: "EC2 answered without an instance".into(),
        })?;
        Ok(Described {
            ec2_id: instance.instance_id().unwrap_or_default().to_string(),
            instance_id,
            state: InstanceStateName::Pending,
            spot_request: instance.spot_instance_request_id().map(str::to_string),
        })
    }

    pub async fn stop(&self, ec2_id: &str) -> Result<(), CloudError> {
        let sent = self
            .client
            .stop_instances()
            .instance_ids(ec2_id)
            .send()
            .await;
        gone_is_done(
            sent.map(drop)
                .map_err(|e| CloudError::new("StopInstances", e.into_service_error())),
        )
    }

    pub async fn start(&self, ec2_id: &str) -> Result<(), CloudError> {
        self.client
            .start_instances()
            .instance_ids(ec2_id)
            .send()
            .await
            .map(drop)
            .map_err(|e| CloudError::new("StartInstances", e.into_service_error()))
    }

    pub async fn terminate(&self, ec2_id: &str) -> Result<(), CloudError> {
        let sent = self
            .client
            .terminate_instances()
            .instance_ids(ec2_id)
            .send()
            .await;
        gone_is_done(
            sent.map(drop)
                .map_err(|e| CloudError::new("TerminateInstances", e.into_service_error())),
        )
    }

    /// Cancels a persistent spot request, so that EC2 does not launch its
    /// instance again once terminated.
    pub async fn cancel_spot_request(&self, request_id: &str) -> Result<(), CloudError> {
        self.client
            .cancel_spot_instance_requests()
            .spot_instance_request_ids(request_id)
            .send()
            .await
            .map(drop)
            .map_err(|e| CloudError::new("CancelSpotInstanceRequests", e.into_service_error()))
    }

    /// Every instance tagged with this scheduler's id that is not terminated,
    /// in as few DescribeInstances pages as EC2 allows.
    pub async fn describe_ours(&self, scheduler_id: &str) -> Result<Vec<Described>, CloudError> {
        let mut pages = self
            .client
            .describe_instances()
            .filters(filter(&format!("tag:{TAG_SCHEDULER}"), [scheduler_id]))
            .filters(filter(
                "instance-state-name",
                ["pending", "running", "stopping", "stopped", "shutting-down"],
            ))
            .max_results(1000)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| CloudError::new("DescribeInstances", e.into_service_error()))?;
            let instances = page.reservations().iter().flat_map(|r| r.instances());
            found.extend(instances.filter_map(described));
        }
        Ok(found)
    }

    /// The current spot price (USD per hour, Linux) of each type, the lowest
    /// over the region's availability zones.
    pub async fn spot_prices(&self, types: &[String]) -> Result<Vec<(String, f64)>, CloudError> {
        let out = self
            .client
            .describe_spot_price_history()
            .set_instance_types(Some(
                types
                    .iter()
                    .map(|t| InstanceType::from(t.as_str()))
                    .collect(),
            ))
            .product_descriptions("Linux/UNIX")
            .start_time(aws_sdk_ec2::primitives::DateTime::from(
                std::time::SystemTime::now(),
            ))
            .send()
            .await
            .map_err(|e| CloudError::new("DescribeSpotPriceHistory", e.into_service_error()))?;
        let mut lowest: std::collections::BTreeMap<String, f64> = Default::default();
        for quote in out.spot_price_history() {
            let (Some(kind), Some(price)) = (quote.instance_type(), quote.spot_price()) else {
                continue;
            };
            let Ok(price) = price.parse::<f64>() else {
                continue;
            };
            let entry = lowest.entry(kind.as_str().to_string()).or_insert(price);
            *entry = entry.min(price);
        }
        Ok(lowest.into_iter().collect())
    }
}

/// An instance that is gone already has been stopped or terminated.
fn gone_is_done(r: Result<(), CloudError>) -> Result<(), CloudError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

fn described(i: &aws_sdk_ec2::types::Instance) -> Option<Described> {
    let tag = |key: &str| {
        i.tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    Some(Described {
        ec2_id: i.instance_id()?.to_string(),
        instance_id: tag(TAG_INSTANCE)?,
        state: i.state()?.name()?.clone(),
        spot_request: i.spot_instance_request_id().map(str::to_string),
    })
}

fn filter<const N: usize>(name: &str, values: [&str; N]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

/// The root volume: gp3, removed with the instance, kept across stops (the
/// virtualenv and the unpacked repo live on it).
fn root_volume(device: &str, gib: i32) -> BlockDeviceMapping {
    BlockDeviceMapping::builder()
        .device_name(device)
        .ebs(
            EbsBlockDevice::builder()
                .volume_size(gib)
                .volume_type(VolumeType::Gp3)
                .delete_on_termination(true)
                .build(),
        )
        .build()
}

/// IMDSv2 only, one hop: nothing behind a NAT or a namespace on the instance
/// (user code's sandbox) can reach the metadata service.
fn imds_v2_only() -> InstanceMetadataOptionsRequest {
    InstanceMetadataOptionsRequest::builder()
        .http_tokens(HttpTokensState::Required)
        .http_put_response_hop_limit(1)
        .build()
}

fn instance_profile(profile: &str) -> IamInstanceProfileSpecification {
    let spec = IamInstanceProfileSpecification::builder();
    if profile.starts_with("arn:") {
        spec.arn(profile).build()
    } else {
        spec.name(profile).build()
    }
}

/// A persistent spot request that stops (not terminates) on interruption:
/// the only kind of spot instance EC2 lets one stop and start again.
fn persistent_spot() -> InstanceMarketOptionsRequest {
    InstanceMarketOptionsRequest::builder()
        .market_type(MarketType::Spot)
        .spot_options(
            SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::Persistent)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Stop)
                .build(),
        )
        .build()
}
