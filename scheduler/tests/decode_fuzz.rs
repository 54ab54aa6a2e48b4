//! Arbitrary input against the scheduler's request handling, bounded so that
//! it runs in CI (a proptest stand-in for `cargo fuzz`):
//!
//! - every request message the scheduler serves decodes from any bytes
//!   without panicking (prost), and what decodes re-encodes to itself;
//! - the real scheduler, in-process, answers arbitrary well-formed requests
//!   (Deploy, Fit, Complete, UpdateClients, GetJob, Predict, Upload, admin
//!   calls, with good, bad and missing tokens) with OK or an error status
//!   that says something, never `Unknown`/`Internal` and never a panic, and
//!   still serves afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aibro_proto::v1::{
    self as pb, admin_client::AdminClient, artifacts_client::ArtifactsClient,
    inference_client::InferenceClient, jobs_client::JobsClient,
    marketplace_client::MarketplaceClient, training_client::TrainingClient,
};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- Decoding ----

/// Bytes shaped like protobuf: fields with any number and wire type, some
/// holding nested messages, so that decoding gets past the first tag.
fn proto_bytes() -> impl Strategy<Value = Vec<u8>> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let leaf = prop::collection::vec(any::<u8>(), 0..24);
    let nested = leaf.prop_recursive(3, 64, 8, |inner| {
        prop::collection::vec(
            (
                1u64..40,
                prop_oneof![
                    any::<u64>().prop_map(|v| (0u8, v.to_le_bytes().to_vec())),
                    any::<u64>().prop_map(|v| (1, v.to_le_bytes().to_vec())),
                    inner.prop_map(|b| (2, b)),
                    any::<u32>().prop_map(|v| (5, v.to_le_bytes().to_vec())),
                    // groups and reserved wire types
                    (3u8..=7).prop_map(|w| (w, vec![])),
                ],
            ),
            0..8,
        )
        .prop_map(|fields| {
            let mut out = Vec::new();
            for (num, (wire, payload)) in fields {
                varint(num << 3 | u64::from(wire), &mut out);
                match wire {
                    0 => varint(
                        u64::from_le_bytes(payload[..8].try_into().unwrap()),
                        &mut out,
                    ),
                    2 => {
                        varint(payload.len() as u64, &mut out);
                        out.extend(payload);
                    }
                    _ => out.extend(payload),
                }
            }
            out
        })
    });
    prop_oneof![prop::collection::vec(any::<u8>(), 0..256), nested]
}

/// Decodes `bytes` as `M`; a message that decodes re-encodes to one that
/// decodes the same (NaN aside, which is never equal to itself).
fn decode_as<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = M::decode(bytes) {
        let again = M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded message decodes");
        assert!(
            again == m || format!("{m:?}").contains("NaN"),
            "{m:?} / {again:?}"
        );
        assert_eq!(again.encoded_len(), m.encoded_len());
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn every_request_message_decodes_any_bytes_without_panicking(bytes in proto_bytes()) {
        // Inference, Training, Jobs, Artifacts, Marketplace, Admin
        decode_as::<pb::DeployRequest>(&bytes);
        decode_as::<pb::CompleteRequest>(&bytes);
        decode_as::<pb::UpdateClientsRequest>(&bytes);
        decode_as::<pb::ListClientsRequest>(&bytes);
        decode_as::<pb::PredictRequest>(&bytes);
        decode_as::<pb::FitRequest>(&bytes);
        decode_as::<pb::DownloadResultRequest>(&bytes);
        decode_as::<pb::GetJobRequest>(&bytes);
        decode_as::<pb::ListJobsRequest>(&bytes);
        decode_as::<pb::WatchJobRequest>(&bytes);
        decode_as::<pb::GetTimelineRequest>(&bytes);
        decode_as::<pb::ListInstancesRequest>(&bytes);
        decode_as::<pb::Chunk>(&bytes);
        decode_as::<pb::AvailableMachinesRequest>(&bytes);
        decode_as::<pb::CreateTokenRequest>(&bytes);
        decode_as::<pb::InterruptInstanceRequest>(&bytes);
        decode_as::<pb::SetSpotAvailabilityRequest>(&bytes);
        // AgentGateway (agents' side, also served by the scheduler)
        decode_as::<pb::RegisterRequest>(&bytes);
        decode_as::<pb::ReportRequest>(&bytes);
        decode_as::<pb::FetchArtifactRequest>(&bytes);
        decode_as::<pb::ResultChunk>(&bytes);
    }
}

// ---- The real scheduler, in-process ----

/// Who a call is made as.
#[derive(Debug, Clone)]
enum Caller {
    Admin,
    Alice,
    Bob,
    Anonymous,
    /// An `authorization` header that is not a known token.
    Garbage(String),
}

#[derive(Debug, Clone)]
enum Call {
    Deploy(pb::DeployRequest),
    Complete(pb::CompleteRequest),
    UpdateClients(pb::UpdateClientsRequest),
    ListClients(pb::ListClientsRequest),
    Predict(pb::PredictRequest),
    Fit(pb::FitRequest),
    DownloadResult(pb::DownloadResultRequest),
    GetJob(pb::GetJobRequest),
    ListJobs(pb::ListJobsRequest),
    WatchJob(pb::WatchJobRequest),
    GetTimeline(pb::GetTimelineRequest),
    ListInstances(pb::ListInstancesRequest),
    /// Arbitrary bytes, in chunks.
    Upload(Vec<Vec<u8>>),
    /// A repo packed with pack_dir: (file name, contents).
    UploadRepo(Vec<(String, Vec<u8>)>),
    AvailableMachines,
    CreateToken(pb::CreateTokenRequest),
    InterruptInstance(pb::InterruptInstanceRequest),
    SetSpotAvailability(pb::SetSpotAvailabilityRequest),
}

/// What the setup made, for requests to refer to.
struct Known {
    predict_digest: String,
    train_digest: String,
    plain_digest: String,
    job_ids: Vec<String>,
}

fn text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9_.-]{1,12}",
        "[a-zA-Z0-9_.-]{60,70}",
        ".{0,40}",
        Just(" ".into()),
        Just("../../etc/passwd".into()),
        Just("a\u{0}b".into()),
    ]
}

fn pick(known: Vec<String>) -> impl Strategy<Value = String> + Clone {
    prop_oneof![3 => prop::sample::select(known), 1 => text()]
}

fn strategies(k: &Known) -> impl Strategy<Value = (Caller, Call)> {
    let digests = vec![
        k.predict_digest.clone(),
        k.train_digest.clone(),
        k.plain_digest.clone(),
        String::new(),
        format!("sha256:{}", "0".repeat(64)),
        format!("sha256:{}", "g".repeat(64)),
        "sha256:".into(),
        "sha256:../../db".into(),
    ];
    let digest = pick(digests);
    let machines = pick(
        [
            "local.small.od",
            "local.large.od",
            "local.small",
            "g4dn.4xlarge.od",
            "p3.nope.od",
            ".od",
            "",
        ]
        .map(String::from)
        .to_vec(),
    );
    // Mostly valid, so that deploys and fits get past the machine checks.
    let standby = prop_oneof![
        3 => Just("local.small.od".to_string()),
        1 => machines.clone(),
    ];
    let cooling = prop_oneof![
        3 => Just(String::new()),
        1 => machines.clone(),
    ];
    let names = prop_oneof![
        2 => pick(["m1", "m2", "t1", "bad name!"].map(String::from).to_vec()),
        1 => "[a-z][a-z0-9_.-]{0,8}",
    ];
    let mut jobs = k.job_ids.clone();
    jobs.extend(["job-nope".to_string(), String::new()]);
    let job = pick(jobs);
    let clients = prop::collection::vec(pick(["a", "b", "", " "].map(String::from).to_vec()), 0..4);
    let seconds = prop_oneof![Just(0u32), 1u32..5, any::<u32>()];
    let bytes = prop::collection::vec(any::<u8>(), 0..300);

    let deploy = (
        names.clone(),
        prop::option::weighted(0.9, (standby.clone(), cooling)),
        digest.clone(),
        any::<bool>(),
        seconds.clone(),
        clients.clone(),
        text(),
        seconds.clone(),
        prop::option::of((
            prop_oneof![0u32..20, any::<u32>()],
            prop::option::of(seconds.clone()),
        )),
    )
        .prop_map(
            |(model_name, mc, artifact_digest, dryrun, cool, client_ids, description, wait, b)| {
                Call::Deploy(pb::DeployRequest {
                    model_name,
                    machine_config: mc
                        .map(|(standby, cooling)| pb::MachineConfig { standby, cooling }),
                    artifact_digest,
                    dryrun,
                    cool_down_period_s: cool,
                    client_ids,
                    description,
                    wait_request_s: wait,
                    batching: b.map(|(max_batch_size, max_wait_ms)| pb::Batching {
                        max_batch_size,
                        max_wait_ms,
                    }),
                    isolate_network: cool % 2 == 1,
                })
            },
        );
    let fit = (
        digest.clone(),
        prop::collection::vec(prop_oneof![3 => standby, 1 => machines], 0..3),
        seconds.clone(),
        seconds.clone(),
        text(),
        prop::collection::hash_map(
            pick(
                ["epochs", "lr", "_x", "1a", "a-b"]
                    .map(String::from)
                    .to_vec(),
            ),
            text(),
            0..3,
        ),
    )
        .prop_map(
            |(artifact_digest, machine_ids, cool, wait, description, args)| {
                Call::Fit(pb::FitRequest {
                    artifact_digest,
                    machine_ids,
                    cool_down_period_s: cool,
                    wait_request_s: wait,
                    description,
                    args,
                    isolate_network: cool % 2 == 1,
                })
            },
        );
    let complete = (job.clone(), names.clone()).prop_map(|(job_id, model_name)| {
        Call::Complete(pb::CompleteRequest { job_id, model_name })
    });
    let update = (
        job.clone(),
        names.clone(),
        clients.clone(),
        clients,
        any::<bool>(),
    )
        .prop_map(|(job_id, model_name, add, remove, be_public)| {
            Call::UpdateClients(pb::UpdateClientsRequest {
                job_id,
                model_name,
                add,
                remove,
                be_public,
            })
        });
    let list_clients = (job.clone(), names.clone()).prop_map(|(job_id, model_name)| {
        Call::ListClients(pb::ListClientsRequest { job_id, model_name })
    });
    let predict = (
        pick(["alice", "bob", "admin"].map(String::from).to_vec()),
        pick(["public", "a"].map(String::from).to_vec()),
        names,
        bytes.clone(),
        pick(
            ["application/json", "text/plain"]
                .map(String::from)
                .to_vec(),
        ),
    )
        .prop_map(|(owner, client_id, model_name, payload, content_type)| {
            Call::Predict(pb::PredictRequest {
                owner,
                client_id,
                model_name,
                payload,
                content_type,
            })
        });
    let by_job = job.clone().prop_flat_map(|job_id| {
        prop_oneof![
            Just(Call::DownloadResult(pb::DownloadResultRequest {
                job_id: job_id.clone()
            })),
            Just(Call::GetJob(pb::GetJobRequest {
                job_id: job_id.clone()
            })),
            Just(Call::WatchJob(pb::WatchJobRequest {
                job_id: job_id.clone()
            })),
            Just(Call::GetTimeline(pb::GetTimelineRequest {
                job_id: job_id.clone()
            })),
            Just(Call::ListInstances(pb::ListInstancesRequest { job_id })),
        ]
    });
    let upload = prop::collection::vec(bytes, 0..4).prop_map(Call::Upload);
    let upload_repo = prop::collection::vec(
        (
            prop_oneof![
                Just("predict.py".to_string()),
                Just("train.py".to_string()),
                "[a-z]{1,8}(\\.py|\\.txt)?"
            ],
            prop::collection::vec(any::<u8>(), 0..200),
        ),
        0..5,
    )
    .prop_map(Call::UploadRepo);
    let admin = prop_oneof![
        text().prop_map(|user| Call::CreateToken(pb::CreateTokenRequest { user })),
        (text(), any::<u32>()).prop_map(|(instance_id, notice_ms)| {
            Call::InterruptInstance(pb::InterruptInstanceRequest {
                instance_id,
                notice_ms,
            })
        }),
        (
            pick(
                ["local.small", "local.large", "local.small.od"]
                    .map(String::from)
                    .to_vec()
            ),
            prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(-1.0),
                0.0..=1.0
            ],
        )
            .prop_map(|(machine_type, availability)| {
                Call::SetSpotAvailability(pb::SetSpotAvailabilityRequest {
                    machine_type,
                    availability,
                })
            }),
        Just(Call::AvailableMachines),
        (
            any::<bool>(),
            any::<u32>(),
            prop_oneof![Just(String::new()), text()]
        )
            .prop_map(|(active_only, page_size, page_token)| {
                Call::ListJobs(pb::ListJobsRequest {
                    active_only,
                    page_size,
                    page_token,
                })
            }),
    ];
    // Valid ones, which create jobs (whose launch then fails) or dry-run.
    let valid_deploy = (
        "[a-z][a-z0-9_.-]{0,8}",
        prop_oneof![Just(String::new()), Just("local.large.od".to_string())],
        any::<bool>(),
        seconds.clone(),
        prop::collection::btree_set("[a-z0-9]{1,6}", 0..3),
        text(),
        seconds.clone(),
    )
        .prop_map({
            let digest = k.predict_digest.clone();
            move |(model_name, cooling, dryrun, cool, clients, description, wait)| {
                Call::Deploy(pb::DeployRequest {
                    model_name,
                    machine_config: Some(pb::MachineConfig {
                        standby: "local.small.od".into(),
                        cooling,
                    }),
                    artifact_digest: digest.clone(),
                    dryrun,
                    cool_down_period_s: cool,
                    client_ids: clients.into_iter().collect(),
                    description,
                    wait_request_s: wait,
                    batching: None,
                    isolate_network: cool % 2 == 1,
                })
            }
        });
    let valid_fit = (
        seconds.clone(),
        seconds.clone(),
        text(),
        prop::collection::hash_map("[a-z_][a-z0-9_]{0,6}", text(), 0..3),
    )
        .prop_map({
            let digest = k.train_digest.clone();
            move |(cool, wait, description, args)| {
                Call::Fit(pb::FitRequest {
                    artifact_digest: digest.clone(),
                    machine_ids: vec!["local.small.od".into()],
                    cool_down_period_s: cool,
                    wait_request_s: wait,
                    description,
                    args,
                    isolate_network: cool % 2 == 1,
                })
            }
        });
    let call = prop_oneof![
        3 => deploy,
        2 => valid_deploy,
        2 => fit,
        1 => valid_fit,
        1 => complete,
        1 => update,
        1 => list_clients,
        2 => predict,
        2 => by_job,
        1 => upload,
        1 => upload_repo,
        1 => admin,
    ];
    let caller = prop_oneof![
        6 => Just(Caller::Alice),
        1 => Just(Caller::Admin),
        1 => Just(Caller::Bob),
        1 => Just(Caller::Anonymous),
        1 => "(secret_)?[ -~]{0,30}".prop_map(Caller::Garbage),
    ];
    (caller, call)
}

struct Scheduler {
    channel: Channel,
    admin: String,
    alice: String,
    bob: String,
}

impl Scheduler {
    fn request<T>(&self, caller: &Caller, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let header = match caller {
            Caller::Admin => Some(format!("Bearer {}", self.admin)),
            Caller::Alice => Some(format!("Bearer {}", self.alice)),
            Caller::Bob => Some(format!("Bearer {}", self.bob)),
            Caller::Anonymous => None,
            Caller::Garbage(g) => Some(format!("Bearer {g}")),
        };
        if let Some(h) = header.and_then(|h| h.trim_end().parse().ok()) {
            r.metadata_mut().insert("authorization", h);
        }
        r
    }

    /// Makes the call; Ok(()) for an OK answer, else its status.
    async fn call(&self, caller: &Caller, call: Call) -> Result<(), Status> {
        let ch = self.channel.clone();
        let inference = || InferenceClient::new(ch.clone());
        let jobs = || JobsClient::new(ch.clone());
        let training = || TrainingClient::new(ch.clone());
        match call {
            Call::Deploy(m) => inference().deploy(self.request(caller, m)).await.map(drop),
            Call::Complete(m) => inference()
                .complete(self.request(caller, m))
                .await
                .map(drop),
            Call::UpdateClients(m) => inference()
                .update_clients(self.request(caller, m))
                .await
                .map(drop),
            Call::ListClients(m) => inference()
                .list_clients(self.request(caller, m))
                .await
                .map(drop),
            // Authorised by client id: the caller's token does not matter.
            Call::Predict(m) => inference().predict(self.request(caller, m)).await.map(drop),
            Call::Fit(m) => training().fit(self.request(caller, m)).await.map(drop),
            Call::DownloadResult(m) => {
                let mut s = training()
                    .download_result(self.request(caller, m))
                    .await?
                    .into_inner();
                first_message(&mut s).await
            }
            Call::GetJob(m) => jobs().get_job(self.request(caller, m)).await.map(drop),
            Call::ListJobs(m) => jobs().list_jobs(self.request(caller, m)).await.map(drop),
            Call::WatchJob(m) => {
                let mut s = jobs()
                    .watch_job(self.request(caller, m))
                    .await?
                    .into_inner();
                first_message(&mut s).await
            }
            Call::GetTimeline(m) => jobs().get_timeline(self.request(caller, m)).await.map(drop),
            Call::ListInstances(m) => jobs()
                .list_instances(self.request(caller, m))
                .await
                .map(drop),
            Call::Upload(chunks) => {
                let chunks = chunks.into_iter().map(|data| pb::Chunk { data });
                ArtifactsClient::new(ch.clone())
                    .upload(self.request(caller, futures::stream::iter(chunks)))
                    .await
                    .map(drop)
            }
            Call::UploadRepo(files) => {
                let packed = pack(&files);
                let chunks = packed.chunks(1000).map(|c| pb::Chunk { data: c.to_vec() });
                let chunks: Vec<_> = chunks.collect();
                ArtifactsClient::new(ch.clone())
                    .upload(self.request(caller, futures::stream::iter(chunks)))
                    .await
                    .map(drop)
            }
            Call::AvailableMachines => MarketplaceClient::new(ch.clone())
                .available_machines(self.request(caller, pb::AvailableMachinesRequest {}))
                .await
                .map(drop),
            Call::CreateToken(m) => AdminClient::new(ch.clone())
                .create_token(self.request(caller, m))
                .await
                .map(drop),
            Call::InterruptInstance(m) => AdminClient::new(ch.clone())
                .interrupt_instance(self.request(caller, m))
                .await
                .map(drop),
            Call::SetSpotAvailability(m) => AdminClient::new(ch.clone())
                .set_spot_availability(self.request(caller, m))
                .await
                .map(drop),
        }
    }
}

/// The first message of a server stream (or its error); a stream that is
/// still open and quiet after a moment (a live job's events) is fine.
async fn first_message<T>(s: &mut tonic::Streaming<T>) -> Result<(), Status> {
    match tokio::time::timeout(Duration::from_millis(500), s.message()).await {
        Ok(r) => r.map(drop),
        Err(_) => Ok(()),
    }
}

/// A tar.gz of `files` (later duplicates of a name win), as the CLI packs it.
fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let mut out = Vec::new();
    aibro_repo::archive::pack_dir(dir.path(), &mut out).unwrap();
    out
}

async fn wait_for(path: &Path) -> String {
    for _ in 0..400 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s.trim().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

/// Setup as a user would: tokens, three uploaded repos, a deploy and a fit.
async fn setup(channel: Channel, admin: String) -> (Scheduler, Known) {
    let mut s = Scheduler {
        channel,
        admin,
        alice: String::new(),
        bob: String::new(),
    };
    for user in ["alice", "bob"] {
        let token = AdminClient::new(s.channel.clone())
            .create_token(s.request(&Caller::Admin, pb::CreateTokenRequest { user: user.into() }))
            .await
            .unwrap()
            .into_inner()
            .token;
        match user {
            "alice" => s.alice = token,
            _ => s.bob = token,
        }
    }
    let upload = |files: Vec<(String, Vec<u8>)>| {
        let s = &s;
        async move {
            let chunks = vec![pb::Chunk { data: pack(&files) }];
            ArtifactsClient::new(s.channel.clone())
                .upload(s.request(&Caller::Alice, futures::stream::iter(chunks)))
                .await
                .unwrap()
                .into_inner()
                .digest
        }
    };
    let predict_digest = upload(vec![(
        "predict.py".into(),
        b"def load_model():\n    pass\n\ndef run(m, x):\n    return x\n".to_vec(),
    )])
    .await;
    let train_digest = upload(vec![(
        "train.py".into(),
        b"def train(output_dir):\n    pass\n".to_vec(),
    )])
    .await;
    let plain_digest = upload(vec![("README.txt".into(), b"hi".to_vec())]).await;
    let deployed = InferenceClient::new(s.channel.clone())
        .deploy(s.request(
            &Caller::Alice,
            pb::DeployRequest {
                model_name: "m1".into(),
                machine_config: Some(pb::MachineConfig {
                    standby: "local.small.od".into(),
                    cooling: String::new(),
                }),
                artifact_digest: predict_digest.clone(),
                wait_request_s: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let fitted = TrainingClient::new(s.channel.clone())
        .fit(s.request(
            &Caller::Alice,
            pb::FitRequest {
                artifact_digest: train_digest.clone(),
                machine_ids: vec!["local.small.od".into()],
                wait_request_s: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let known = Known {
        predict_digest,
        train_digest,
        plain_digest,
        job_ids: vec![deployed, fitted],
    };
    (s, known)
}

/// Set by any panic in this process: a handler or background task that
/// panics fails the test even when the client saw a plausible status.
static PANICKED: AtomicBool = AtomicBool::new(false);
const FUZZ_THREAD: &str = "fuzz-requests";
/// The runtime's workers and blocking threads, where the scheduler runs.
const RUNTIME_THREAD: &str = "fuzz-scheduler";

#[test]
fn arbitrary_requests_get_ok_or_a_clear_error() {
    // Debug builds make deep futures: more stack than a test thread's 2 MiB.
    std::thread::Builder::new()
        .name(FUZZ_THREAD.into())
        .stack_size(16 << 20)
        .spawn(fuzz_requests)
        .unwrap()
        .join()
        .unwrap();
}

fn fuzz_requests() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // This test's threads and the runtime's, not the other test's.
        let name = std::thread::current().name().map(String::from);
        if matches!(name.as_deref(), Some(FUZZ_THREAD | RUNTIME_THREAD)) {
            PANICKED.store(true, Ordering::SeqCst);
        }
        previous(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(8 << 20)
        .thread_name(RUNTIME_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut settings = aibro_scheduler::Config::new(data_dir.clone());
    // Nothing outside this process is started: launches and dry runs fail
    // at once (the job is then canceled with the reason).
    settings.agent_bin = Some(PathBuf::from("/nonexistent/aibro-agent"));
    settings.python = "/nonexistent/python3".into();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (server, scheduler, known) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(aibro_scheduler::run(settings, listener, async {
            let _ = stopped.await;
        }));
        wait_for(&data_dir.join("listen-addr")).await;
        let admin = wait_for(&data_dir.join("admin-token")).await;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (scheduler, known) = Box::pin(setup(channel, admin)).await;
        (server, scheduler, known)
    });
    let scheduler = Arc::new(scheduler);

    let mut runner = TestRunner::new(config(128));
    let outcome = runner.run(&strategies(&known), |(caller, call)| {
        let what = format!("{call:?} as {caller:?}");
        let answer = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                Box::pin(scheduler.call(&caller, call)),
            )
            .await
        });
        let answer =
            answer.map_err(|_| TestCaseError::fail(format!("{what}: no answer in 20 s")))?;
        if let Err(status) = answer {
            prop_assert!(
                !matches!(status.code(), Code::Unknown | Code::Internal),
                "{}: {:?}",
                what,
                status
            );
            prop_assert!(
                !status.message().trim().is_empty(),
                "{}: {:?} has no message",
                what,
                status
            );
        }
        prop_assert!(
            !PANICKED.load(Ordering::SeqCst),
            "{}: something panicked",
            what
        );
        Ok(())
    });

    // Still serving: health, and the admin's job list.
    rt.block_on(async {
        let health = tonic_health::pb::health_client::HealthClient::new(scheduler.channel.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check after the fuzzing")
            .into_inner();
        assert_eq!(
            health.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        JobsClient::new(scheduler.channel.clone())
            .list_jobs(scheduler.request(&Caller::Admin, pb::ListJobsRequest::default()))
            .await
            .expect("ListJobs after the fuzzing");
    });
    drop(scheduler);
    let _ = stop.send(());
    let ended = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), server).await });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    ended
        .expect("the scheduler stops within 30 s")
        .expect("the scheduler task")
        .expect("the scheduler ran without error");
    assert!(!PANICKED.load(Ordering::SeqCst), "something panicked");
}
