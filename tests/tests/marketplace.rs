//! The marketplace lists the catalog with live capacity: the numbers change
//! as instances are taken and released.

use aibro_proto::v1::JobStatus;
use aibro_tests::{example, Scheduler};

async fn available(s: &Scheduler, token: &str, machine: &str) -> anyhow::Result<u32> {
    let m = s.machine(token, machine).await?;
    assert!(m.on_demand_price_per_hour > m.spot_price_per_hour, "{m:?}");
    Ok(m.available)
}

#[tokio::test]
async fn available_machines_follow_instances_taken_and_released() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("lena").await?;
    let before = available(&s, &token, "local.small").await?;
    assert_eq!(before, 8, "the shipped capacity");
    let aws = s.machine(&token, "g4dn.12xlarge").await?;
    assert_eq!(
        (aws.provider.as_str(), aws.capacity, aws.available),
        ("ec2", 0, 0),
        "listed with prices, but its provider does not run here"
    );

    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job_id = s.deploy(&token, "m", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    assert_eq!(available(&s, &token, "local.small").await?, before - 1);

    s.complete(&token, &job_id).await?;
    assert_eq!(available(&s, &token, "local.small").await?, before);
    Ok(())
}
