//! What the EC2 provider's flags ([`Ec2Config`]) set: the launch settings,
//! the SDK client (credentials, region and profile from AWS's standard
//! chain), and the shipped on-demand price tables per region.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

pub use crate::config::Ec2Config;

const PRICE_TABLES: &str = include_str!("../../../ec2-prices.toml");

/// What every launch uses.
#[derive(Debug, Clone)]
pub struct Ec2Settings {
    pub ami: String,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub key_name: Option<String>,
    pub instance_profile: Option<String>,
    pub root_volume_gib: i32,
    pub poll: Duration,
    pub spot_price_every: Duration,
    pub spot_retry: Duration,
    pub bootstrap_ttl: Duration,
}

impl Ec2Config {
    /// The settings, when the provider is asked for.
    pub fn settings(&self) -> Option<Ec2Settings> {
        Some(Ec2Settings {
            ami: self.ec2_ami.clone()?,
            subnet: self.ec2_subnet.clone(),
            security_groups: self.ec2_security_groups.clone(),
            key_name: self.ec2_key_name.clone(),
            instance_profile: self.ec2_instance_profile.clone(),
            root_volume_gib: self.ec2_root_volume_gib,
            poll: Duration::from_millis(self.ec2_poll_ms.max(50)),
            spot_price_every: Duration::from_secs(self.ec2_spot_price_s.max(1)),
            spot_retry: Duration::from_secs(self.ec2_spot_retry_s),
            bootstrap_ttl: Duration::from_secs(self.ec2_bootstrap_ttl_s.max(60)),
        })
    }

    /// The SDK client: AWS's standard chain for credentials, region and
    /// profile, the flags over it; TLS on rustls with ring.
    async fn client(&self) -> (aws_sdk_ec2::Client, Option<String>) {
        use aws_smithy_http_client::tls;
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https);
        if let Some(region) = &self.ec2_region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.ec2_endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        let region = config.region().map(|r| r.to_string());
        (aws_sdk_ec2::Client::new(&config), region)
    }
}

/// The EC2 API as the flags and AWS's chain configure it, and the region's
/// on-demand prices.
pub struct Ec2Cloud {
    pub client: aws_sdk_ec2::Client,
    /// None: no shipped table for the region (the user's --catalog prices it).
    pub prices: Option<PriceTable>,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudSetupError {
    #[error("EC2: no region; give --ec2-region or set AWS_REGION (or a profile's region)")]
    NoRegion,
    #[error(
        "EC2: no shipped on-demand prices for region {region} (shipped: {shipped}); give \
         --catalog with the `provider = \"ec2\"` types you use, priced for {region}"
    )]
    Unpriced { region: String, shipped: String },
}

impl Ec2Config {
    /// Connects to EC2 when the provider is asked for (`--ec2-ami`).
    pub async fn connect(&self, user_catalog: bool) -> Result<Option<Ec2Cloud>, CloudSetupError> {
        if self.ec2_ami.is_none() {
            return Ok(None);
        }
        let (client, region) = self.client().await;
        let region = region.ok_or(CloudSetupError::NoRegion)?;
        let prices = price_table(&region);
        match &prices {
            Some(t) => tracing::info!(
                region,
                source = t.source,
                as_of = t.as_of,
                "EC2 on-demand prices"
            ),
            None if user_catalog => tracing::warn!(
                region,
                "no shipped EC2 prices for the region: the --catalog must price the types used"
            ),
            None => {
                return Err(CloudSetupError::Unpriced {
                    region,
                    shipped: priced_regions().join(", "),
                })
            }
        }
        Ok(Some(Ec2Cloud { client, prices }))
    }
}

#[derive(Deserialize)]
struct PriceTables {
    region: Vec<PriceTable>,
}

/// One region's on-demand list prices, with where they come from.
#[derive(Debug, Clone, Deserialize)]
pub struct PriceTable {
    pub name: String,
    pub source: String,
    pub as_of: String,
    pub on_demand: HashMap<String, f64>,
}

/// The shipped on-demand price table of `region`, if there is one.
pub fn price_table(region: &str) -> Option<PriceTable> {
    shipped_tables().into_iter().find(|t| t.name == region)
}

/// The regions with a shipped price table.
pub fn priced_regions() -> Vec<String> {
    shipped_tables().into_iter().map(|t| t.name).collect()
}

fn shipped_tables() -> Vec<PriceTable> {
    let tables: PriceTables = toml::from_str(PRICE_TABLES).expect("ec2-prices.toml parses");
    tables.region
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_ec2_type_has_a_price_in_every_table() {
        let catalog = crate::catalog::Catalog::shipped();
        let ec2: Vec<_> = catalog.types().filter(|t| t.provider == "ec2").collect();
        for family in ["g4dn.", "g5.", "p3.", "c5."] {
            assert!(ec2.iter().any(|t| t.name.starts_with(family)), "{family}");
        }
        for region in priced_regions() {
            let table = price_table(&region).unwrap();
            assert!(table.source.starts_with("https://") && !table.as_of.is_empty());
            let unpriced: Vec<_> = (ec2.iter())
                .filter(|t| !table.on_demand.contains_key(&t.name))
                .map(|t| &t.name)
                .collect();
            assert!(unpriced.is_empty(), "{region}: {unpriced:?}");
        }
        assert!(price_table("mars-north-1").is_none());
    }
}
