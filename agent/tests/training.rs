//! Training against the fake scheduler: Train, Progress reports, UploadResult,
//! environment reuse, reconnects and upload failures.

mod common;

use common::*;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use aibro_proto::v1::{AgentPhase, AgentPredictRequest, JobKind, StopRequest};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_the_example_and_uploads_its_outputs() {
    let mut h = Harness::start().await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/train-linear");
    let digest = h.add_dir_artifact(&example);
    let mut c = h.client().await;

    // Train needs a prepared training job.
    let e = c.train(train_req("fit-1", &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    c.prepare(prepare_req("fit-1", &digest, JobKind::Training))
        .await
        .unwrap();
    // No requirements: nothing cached, but gearing up is still a phase.
    h.expect_phases(
        "fit-1",
        &[
            (AgentPhase::GearingUpEnv, false),
            (AgentPhase::ModelLoading, false),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    // A repeated Prepare re-reports SERVING only.
    c.prepare(prepare_req("fit-1", &digest, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases("fit-1", &[(AgentPhase::Serving, false)])
        .await;
    // A training job serves no Predict.
    let e = c
        .predict(AgentPredictRequest {
            job_id: "fit-1".into(),
            payload: b"{}".to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    c.train(train_req("fit-1", &[("epochs", "5"), ("lr", "0.05")]))
        .await
        .unwrap();
    let items = h.until_trained("fit-1").await;
    assert_eq!(
        phases(&items),
        [
            AgentPhase::Training,
            AgentPhase::Returning,
            AgentPhase::Returned
        ],
        "{items:#?}"
    );
    // All progress comes between TRAINING and RETURNING.
    assert!(matches!(&items[0], Item::Phase(p) if p.phase() == AgentPhase::Training));
    let returning = items
        .iter()
        .position(|i| matches!(i, Item::Phase(p) if p.phase() == AgentPhase::Returning))
        .unwrap();
    assert!(items[1..returning]
        .iter()
        .all(|i| matches!(i, Item::Progress(_))));
    let prog = progress(&items);
    let seqs: Vec<u64> = prog.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=prog.len() as u64).collect::<Vec<_>>());
    let epochs: Vec<_> = prog.iter().filter(|p| p.epoch > 0).collect();
    assert_eq!(
        epochs
            .iter()
            .map(|p| (p.epoch, p.total_epochs))
            .collect::<Vec<_>>(),
        (1..=5).map(|e| (e, 5)).collect::<Vec<_>>()
    );
    let losses: Vec<f64> = epochs.iter().map(|p| p.metrics["loss"]).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[4] < losses[0], "{losses:?}");
    let logs: Vec<&str> = prog
        .iter()
        .filter(|p| p.stream == "stdout")
        .map(|p| p.log_line.as_str())
        .collect();
    assert_eq!(logs.len(), 5, "{logs:?}");
    for (i, line) in logs.iter().enumerate() {
        assert!(
            line.starts_with(&format!("epoch {}/5 loss=", i + 1)),
            "{line}"
        );
    }
    assert!(prog.iter().all(|p| p.stream != "stderr"), "{prog:?}");

    // The upload: what train() wrote, under the reported address.
    let returned = last_phase(&items).clone();
    let uploads = h.uploads();
    assert_eq!(uploads.len(), 1);
    let up = &uploads[0];
    assert_eq!(up.job_id, "fit-1");
    assert_eq!(up.auth, format!("Bearer {CREDENTIAL}"));
    assert!(up.chunks >= 1);
    assert_eq!(
        returned.result_digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&up.bytes)))
    );
    assert_eq!(returned.result_size, up.bytes.len() as u64);
    let files = unpack_result(&up.bytes);
    let written = read_tree(&h.dir.join("jobs/fit-1/output"));
    assert_eq!(files, written);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        [Path::new("metrics.csv"), Path::new("model.json")]
    );
    let model: serde_json::Value = serde_json::from_slice(&files[Path::new("model.json")]).unwrap();
    assert!(model["w"].is_f64() && model["b"].is_f64(), "{model}");
    let csv = String::from_utf8(files[Path::new("metrics.csv")].clone()).unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");

    // A repeated Train re-sends the outcome; it does not train again.
    c.train(train_req("fit-1", &[])).await.unwrap();
    let again = h.next_phase().await;
    assert_eq!(again, returned);
    assert_eq!(h.uploads().len(), 1);

    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_jobs_reuse_the_environment() {
    let mut h = Harness::start().await;
    // An options-only requirements file: a virtualenv is built, pip installs nothing.
    let reqs = ("requirements.txt", "--no-index\n");
    let first = h.add_artifact(&[
        (
            "train.py",
            "import sys\ndef train(output_dir, tag='?'):\n    \
             open(output_dir + '/env.txt', 'w').write(sys.prefix + '\\n' + tag)\n",
        ),
        reqs,
    ]);
    let mut c = h.client().await;
    let items = h
        .prepare_then_train(
            &mut c,
            "a",
            &first,
            &[
                (AgentPhase::GearingUpEnv, false),
                (AgentPhase::ModelLoading, false),
                (AgentPhase::Serving, false),
            ],
            &[("tag", "A")],
        )
        .await;
    assert_eq!(
        phases(&items),
        [
            AgentPhase::Training,
            AgentPhase::Returning,
            AgentPhase::Returned
        ],
        "{items:#?}"
    );
    let files = unpack_result(&h.uploads()[0].bytes);
    let env = String::from_utf8(files[Path::new("env.txt")].clone()).unwrap();
    let (prefix, tag) = env.split_once('\n').unwrap();
    assert!(
        Path::new(prefix).starts_with(h.dir.join("envs")),
        "trained outside the job's venv: {prefix}"
    );
    assert_eq!(tag, "A");

    // The instance is reused for another job: the environment stays.
    c.stop(StopRequest { terminate: false }).await.unwrap();
    assert!(h.dir.join("envs").is_dir());

    // A second job with the same requirements: no gearing up; train() raises.
    let second = h.add_artifact(&[
        (
            "train.py",
            "import aibro\ndef train(output_dir, **args):\n    \
             aibro.report(epoch=1, total_epochs=3, loss=1.5)\n    \
             print('about to fail')\n    \
             raise ValueError('diverged at lr=' + args['lr'])\n",
        ),
        reqs,
    ]);
    let items = h
        .prepare_then_train(
            &mut c,
            "b",
            &second,
            &[
                (AgentPhase::ModelLoading, true),
                (AgentPhase::Serving, false),
            ],
            &[("lr", "9")],
        )
        .await;
    assert_eq!(
        phases(&items),
        [AgentPhase::Training, AgentPhase::Failed],
        "{items:#?}"
    );
    let failed = last_phase(&items);
    assert!(failed.traceback.contains("Traceback"), "{failed:?}");
    assert!(
        failed.traceback.contains("ValueError: diverged at lr=9"),
        "{failed:?}"
    );
    assert!(failed.traceback.contains("train.py"), "{failed:?}");
    assert!(failed.message.contains("ValueError"), "{failed:?}");
    // Lines and reports come through different pipes: the order between the two
    // kinds is the order the agent read them in, so either may come first.
    let prog = progress(&items);
    assert_eq!(prog.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2]);
    let report = prog.iter().find(|p| p.epoch > 0).unwrap();
    assert_eq!((report.epoch, report.total_epochs), (1, 3));
    assert_eq!(report.metrics["loss"], 1.5);
    let line = prog.iter().find(|p| !p.stream.is_empty()).unwrap();
    assert_eq!(
        (line.stream.as_str(), line.log_line.as_str()),
        ("stdout", "about to fail")
    );
    assert_eq!(h.uploads().len(), 1);

    // Stop ends a running training process.
    let third = h.add_artifact(&[
        (
            "train.py",
            // It holds a lock on a file in its repo while it lives (its pid is
            // its sandbox's, meaningless here).
            "import fcntl, time\ndef train(output_dir):\n    \
             lock = open('held', 'w')\n    fcntl.flock(lock, fcntl.LOCK_EX)\n    \
             print('locked')\n    time.sleep(600)\n",
        ),
        reqs,
    ]);
    c.prepare(prepare_req("c", &third, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases(
        "c",
        &[
            (AgentPhase::ModelLoading, true),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    c.train(train_req("c", &[])).await.unwrap();
    h.expect_phases("c", &[(AgentPhase::Training, false)]).await;
    loop {
        if let Event::Progress(p) = h.next_event().await {
            assert_eq!(p.log_line, "locked");
            break;
        }
    }
    // Opened before Stop removes the job's files.
    let held = std::fs::File::open(h.dir.join("jobs/c/repo/held")).unwrap();
    c.stop(StopRequest { terminate: true }).await.unwrap();
    // SAFETY: flock on an open fd.
    let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "the training process survived Stop");
    assert!(!h.dir.join("jobs").exists());
    assert!(h.dir.join("envs").is_dir());
    let e = c.train(train_req("c", &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_reconnects_and_upload_failures() {
    let mut h = Harness::start().await;
    assert!(matches!(h.next_event().await, Event::Registered(..)));
    let digest = h.add_artifact(&[(
        "train.py",
        "import os, aibro\ndef train(output_dir, n='30'):\n    \
         for e in range(1, int(n) + 1):\n        \
         print('line', e)\n        aibro.report(epoch=e, total_epochs=int(n), step=e)\n    \
         os.makedirs(output_dir + '/ckpt')\n    \
         with open(output_dir + '/ckpt/weights.bin', 'wb') as f:\n        \
         f.write(os.urandom(2_500_000))\n",
    )]);
    let mut c = h.client().await;
    c.prepare(prepare_req("big", &digest, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases(
        "big",
        &[
            (AgentPhase::GearingUpEnv, false),
            (AgentPhase::ModelLoading, false),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    // The scheduler "restarts": reports fail until the agent registers again, and
    // are then sent again, each once, in order.
    h.registered.store(false, Ordering::SeqCst);
    c.train(train_req("big", &[])).await.unwrap();
    let items = h.until_trained("big").await;
    assert_eq!(
        phases(&items),
        [
            AgentPhase::Training,
            AgentPhase::Returning,
            AgentPhase::Returned
        ],
        "{items:#?}"
    );
    let prog = progress(&items);
    assert_eq!(prog.len(), 60);
    let seqs: Vec<u64> = prog.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    let epochs: Vec<u32> = prog
        .iter()
        .filter(|p| p.epoch > 0)
        .map(|p| p.epoch)
        .collect();
    assert_eq!(epochs, (1..=30).collect::<Vec<_>>());
    let lines: Vec<&str> = prog
        .iter()
        .filter(|p| p.stream == "stdout")
        .map(|p| p.log_line.as_str())
        .collect();
    let want: Vec<String> = (1..=30).map(|e| format!("line {e}")).collect();
    assert_eq!(lines, want);
    let up = h.uploads().pop().unwrap();
    assert!(up.chunks >= 3, "{} chunks", up.chunks);
    let returned = last_phase(&items);
    assert_eq!(
        returned.result_digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&up.bytes)))
    );
    let files = unpack_result(&up.bytes);
    assert_eq!(files, read_tree(&h.dir.join("jobs/big/output")));
    assert_eq!(files[Path::new("ckpt/weights.bin")].len(), 2_500_000);

    // An upload the scheduler refuses fails the job with its reason.
    h.fail_uploads.store(true, Ordering::SeqCst);
    let items = h
        .prepare_then_train(
            &mut c,
            "refused",
            &digest,
            &[
                (AgentPhase::GearingUpEnv, false),
                (AgentPhase::ModelLoading, false),
                (AgentPhase::Serving, false),
            ],
            &[("n", "1")],
        )
        .await;
    assert_eq!(
        phases(&items),
        [
            AgentPhase::Training,
            AgentPhase::Returning,
            AgentPhase::Failed
        ],
        "{items:#?}"
    );
    let failed = last_phase(&items);
    assert!(
        failed.traceback.contains("result store is full"),
        "{failed:?}"
    );

    h.stop_agent().await;
}
