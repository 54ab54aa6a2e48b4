//! The EC2 world a test points the scheduler at: moto behind the fault proxy,
//! the played machines, and a temp dir for their disks and moto's log.
//! Dropping it kills every process it started, played units included, and
//! removes the dir.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use super::moto::Moto;
use super::played::Played;
use super::proxy::FaultProxy;
use super::query::call;
use super::states::InstanceState;
use crate::imds::ImdsStandIn;

pub struct Ec2World {
    // Dropped in this order: the proxy kills the played machines first.
    proxy: FaultProxy,
    moto: Moto,
    ami: String,
    dir: tempfile::TempDir,
    imds: StandIns,
}

/// One metadata service per played machine, made at its first boot.
#[derive(Clone, Default)]
struct StandIns(Arc<Mutex<HashMap<String, Arc<ImdsStandIn>>>>);

impl StandIns {
    fn of(&self, ec2_id: &str) -> Arc<ImdsStandIn> {
        let mut all = self.0.lock().expect("stand-ins lock");
        all.entry(ec2_id.to_string())
            .or_insert_with(|| Arc::new(ImdsStandIn::serve(ec2_id)))
            .clone()
    }
}

impl Ec2World {
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let moto = Moto::start(&dir.path().join("moto.log")).await?;
        let ami = amazon_linux_ami(moto.url()).await?;
        let played = Arc::new(Played::new(dir.path().to_path_buf()));
        let proxy = FaultProxy::start(moto.url(), played).await?;
        let imds = StandIns::default();
        let serving = imds.clone();
        proxy.set_imds(move |ec2_id| Some(serving.of(ec2_id).url()));
        Ok(Ec2World {
            proxy,
            moto,
            ami,
            dir,
            imds,
        })
    }

    /// The metadata service of a played machine (one each, never the real
    /// address): tests set spot notices on it.
    pub fn imds(&self, ec2_id: &str) -> Arc<ImdsStandIn> {
        self.imds.of(ec2_id)
    }

    /// The proxy's URL, for `--ec2-endpoint`.
    pub fn endpoint(&self) -> &str {
        self.proxy.url()
    }

    /// moto itself: calls here are neither counted nor faulted.
    pub fn moto_url(&self) -> &str {
        self.moto.url()
    }

    /// An Amazon Linux 2 image moto has, for RunInstances.
    pub fn ami(&self) -> &str {
        &self.ami
    }

    pub fn proxy(&self) -> &FaultProxy {
        &self.proxy
    }

    /// Every played machine's logs (boot script, units), for a failure's message.
    pub fn logs(&self) -> String {
        let Ok(machines) = std::fs::read_dir(self.dir.path()) else {
            return String::new();
        };
        let mut out = String::new();
        for machine in machines.flatten() {
            let Ok(logs) = std::fs::read_dir(machine.path().join("var/log")) else {
                continue;
            };
            for log in logs.flatten() {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                out.push_str(&format!("== {}\n{text}\n", log.path().display()));
            }
        }
        out
    }

    /// Where the machines' disks (`<dir>/<ec2-id>`) and moto's log lie.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The state moto gives the instance (no transitional state: those are
    /// the proxy's).
    pub async fn instance_state(&self, ec2_id: &str) -> Result<InstanceState> {
        let reply = call(
            self.moto_url(),
            "DescribeInstances",
            &[("InstanceId.1", ec2_id)],
        )
        .await?;
        if reply.status != 200 {
            bail!("moto: DescribeInstances {ec2_id}: {}", reply.body);
        }
        let names = reply.texts(&["instancesSet", "item", "instanceState", "name"])?;
        let name = names
            .first()
            .with_context(|| format!("moto has no {ec2_id}"))?;
        InstanceState::from_name(name).with_context(|| format!("moto's state {name}"))
    }

    /// The instances moto has with tag `key` = `value`, and their states.
    pub async fn instances_tagged(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<(String, InstanceState)>> {
        let filter = format!("tag:{key}");
        let params = [
            ("Filter.1.Name", filter.as_str()),
            ("Filter.1.Value.1", value),
        ];
        let reply = call(self.moto_url(), "DescribeInstances", &params).await?;
        if reply.status != 200 {
            bail!(
                "moto: DescribeInstances tagged {key}={value}: {}",
                reply.body
            );
        }
        let ids = reply.texts(&["instancesSet", "item", "instanceId"])?;
        let names = reply.texts(&["instancesSet", "item", "instanceState", "name"])?;
        ids.into_iter()
            .zip(names)
            .map(|(id, name)| {
                let state = InstanceState::from_name(&name).context("moto's state")?;
                Ok((id, state))
            })
            .collect()
    }
}

/// The newest Amazon Linux 2 image among those moto ships.
async fn amazon_linux_ami(moto: &str) -> Result<String> {
    let params = [
        ("Owner.1", "amazon"),
        ("Filter.1.Name", "name"),
        ("Filter.1.Value.1", "amzn2-ami-hvm-*-x86_64-gp2"),
    ];
    let reply = call(moto, "DescribeImages", &params).await?;
    let names = reply.texts(&["imagesSet", "item", "name"])?;
    let ids = reply.texts(&["imagesSet", "item", "imageId"])?;
    let newest = names.into_iter().zip(ids).max();
    newest
        .map(|(_, id)| id)
        .with_context(|| format!("moto has no Amazon Linux 2 image: {}", reply.body))
}
