//! The EC2 provider's flags (`--ec2-*`); what they set up is the provider's
//! (`provider::ec2`).

/// `--ec2-*` flags. The provider runs when `--ec2-ami` is given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Ec2Config {
    /// EC2: the AMI instances boot (a Deep Learning AMI with `aibro-agent`;
    /// see the README). Giving it runs the EC2 provider (catalog types with
    /// provider = "ec2").
    #[arg(long, env = "AIBRO_EC2_AMI")]
    pub ec2_ami: Option<String>,
    /// EC2: the region (default: AWS's chain: AWS_REGION, the profile).
    #[arg(long, env = "AIBRO_EC2_REGION")]
    pub ec2_region: Option<String>,
    /// EC2: an EC2-compatible endpoint URL instead of AWS's own.
    #[arg(long, env = "AIBRO_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,
    /// EC2: the subnet instances launch in (default: the default VPC's).
    #[arg(long, env = "AIBRO_EC2_SUBNET")]
    pub ec2_subnet: Option<String>,
    /// EC2: a security group id for instances (repeat). Let the scheduler
    /// reach the agents' port (7071) and the agents reach the scheduler.
    #[arg(
        long = "ec2-security-group",
        env = "AIBRO_EC2_SECURITY_GROUPS",
        value_delimiter = ','
    )]
    pub ec2_security_groups: Vec<String>,
    /// EC2: the key pair for SSH into instances (default: none).
    #[arg(long, env = "AIBRO_EC2_KEY_NAME")]
    pub ec2_key_name: Option<String>,
    /// EC2: the IAM instance profile (name or ARN) instances run with.
    #[arg(long, env = "AIBRO_EC2_INSTANCE_PROFILE")]
    pub ec2_instance_profile: Option<String>,
    /// EC2: root volume size in GiB (gp3; kept while an instance is stopped).
    #[arg(long, env = "AIBRO_EC2_ROOT_VOLUME_GIB", default_value_t = 100)]
    pub ec2_root_volume_gib: i32,
    /// EC2: the scheduler URL instances reach (default: --public-url).
    #[arg(long, env = "AIBRO_EC2_SCHEDULER_URL")]
    pub ec2_scheduler_url: Option<String>,
    /// EC2: where the boot script downloads `aibro-agent` when the AMI lacks it
    /// (with --ec2-agent-sha256).
    #[arg(long, env = "AIBRO_EC2_AGENT_URL", requires = "ec2_agent_sha256")]
    pub ec2_agent_url: Option<String>,
    /// EC2: the sha256 the downloaded agent must have.
    #[arg(long, env = "AIBRO_EC2_AGENT_SHA256")]
    pub ec2_agent_sha256: Option<String>,
    /// EC2: milliseconds between DescribeInstances calls while a state change
    /// is awaited (one call for all instances).
    #[arg(long, env = "AIBRO_EC2_POLL_MS", default_value_t = 5000)]
    pub ec2_poll_ms: u64,
    /// EC2: seconds between spot price quotes (DescribeSpotPriceHistory).
    #[arg(long, env = "AIBRO_EC2_SPOT_PRICE_S", default_value_t = 300)]
    pub ec2_spot_price_s: u64,
    /// EC2: seconds spot of a type is taken as unavailable after EC2 refused it.
    #[arg(long, env = "AIBRO_EC2_SPOT_RETRY_S", default_value_t = 300)]
    pub ec2_spot_retry_s: u64,
    /// EC2: seconds an instance's one-time bootstrap token stays valid.
    #[arg(long, env = "AIBRO_EC2_BOOTSTRAP_TTL_S", default_value_t = 1800)]
    pub ec2_bootstrap_ttl_s: u64,
}
