//! Played machines: each instance launched through the proxy boots on this
//! host, its disk at `<world>/<ec2-id>`. The first boot, after the pending
//! delay, runs the user data; a stop stops the units and keeps the disk but
//! not `run/`; a start boots the enabled units again, not the user data; a
//! terminate removes the disk. A machine's calls play out in order, one task each.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::guest::Guest;
use super::processes::{kill_group, pid_files};

/// What a test sees of a played machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayedMachine {
    /// The machine's disk: `AIBRO_ROOT` of its processes.
    pub root: PathBuf,
    /// Booted and not stopped or terminated since.
    pub running: bool,
    /// Boots so far: the first ran the user data.
    pub boots: u32,
}

/// The metadata endpoint of an instance, by its id.
pub(crate) type ImdsUrl = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

enum Op {
    Boot { generation: u64, at: Instant },
    Halt { terminate: bool },
}

struct Record {
    seen: PlayedMachine,
    /// Bumped by each start, stop and terminate: a boot of an older one is off.
    generation: u64,
    user_data: Option<Vec<u8>>,
    /// The process group of the user data while it runs.
    user_data_group: Option<i32>,
    ops: mpsc::UnboundedSender<Op>,
}

pub(crate) struct Played {
    dir: PathBuf,
    imds: Mutex<Option<ImdsUrl>>,
    records: Mutex<HashMap<String, Record>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Played {
    /// Machines with their disks in `dir`.
    pub(crate) fn new(dir: PathBuf) -> Self {
        Played {
            dir,
            imds: Mutex::new(None),
            records: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    pub(crate) fn set_imds(&self, url_of: ImdsUrl) {
        *self.imds.lock().unwrap() = Some(url_of);
    }

    pub(crate) fn machine(&self, id: &str) -> Option<PlayedMachine> {
        self.records.lock().unwrap().get(id).map(|r| r.seen.clone())
    }

    /// RunInstances launched `id`: it boots after `pending`.
    pub(crate) fn launched(
        self: &Arc<Self>,
        id: &str,
        user_data: Option<Vec<u8>>,
        pending: Duration,
    ) {
        let (ops, queue) = mpsc::unbounded_channel();
        let at = Instant::now() + pending;
        let _ = ops.send(Op::Boot { generation: 0, at });
        let record = Record {
            seen: PlayedMachine {
                root: self.dir.join(id),
                running: false,
                boots: 0,
            },
            generation: 0,
            user_data,
            user_data_group: None,
            ops,
        };
        self.records.lock().unwrap().insert(id.to_string(), record);
        self.spawn(self.clone().work(id.to_string(), queue));
    }

    /// StartInstances started `id`: it boots again after `pending`.
    pub(crate) fn started(&self, id: &str, pending: Duration) {
        let at = Instant::now() + pending;
        self.queue(id, |generation| Op::Boot { generation, at });
    }

    pub(crate) fn stopped(&self, id: &str) {
        self.queue(id, |_| Op::Halt { terminate: false });
    }

    pub(crate) fn terminated(&self, id: &str) {
        self.queue(id, |_| Op::Halt { terminate: true });
    }

    /// Kills every process of every machine, and stops all work.
    pub(crate) fn shutdown(&self) {
        self.tasks.lock().unwrap().abort_all();
        for record in self.records.lock().unwrap().values() {
            if let Some(group) = record.user_data_group {
                kill_group(group);
            }
            for (_, pid) in pid_files(&record.seen.root) {
                kill_group(pid);
            }
        }
    }

    /// Marks `id` down, begins its next generation and queues `op` of it.
    fn queue(&self, id: &str, op: impl FnOnce(u64) -> Op) {
        let mut records = self.records.lock().unwrap();
        if let Some(record) = records.get_mut(id) {
            record.generation += 1;
            record.seen.running = false;
            let _ = record.ops.send(op(record.generation));
        }
    }

    async fn work(self: Arc<Self>, id: String, mut queue: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = queue.recv().await {
            match op {
                Op::Boot { generation, at } => {
                    tokio::time::sleep_until(at).await;
                    self.boot(&id, generation).await;
                }
                Op::Halt { terminate } => self.halt(&id, terminate).await,
            }
        }
    }

    async fn boot(self: &Arc<Self>, id: &str, generation: u64) {
        let first_user_data = {
            let mut records = self.records.lock().unwrap();
            let Some(record) = records.get_mut(id).filter(|r| r.generation == generation) else {
                return;
            };
            record.seen.running = true;
            record.seen.boots += 1;
            (record.seen.boots == 1).then(|| record.user_data.clone())
        };
        let guest = self.guest(id);
        match first_user_data {
            None => guest.start_units().await,
            Some(None) => {}
            Some(Some(script)) => match guest.run_user_data(&script) {
                Ok(child) => self.watch_user_data(id, guest, child),
                Err(e) => guest.note(&format!("the user data did not start: {e:#}")),
            },
        }
    }

    /// Keeps the user data's process group (a halt kills it) until it exits.
    fn watch_user_data(self: &Arc<Self>, id: &str, guest: Guest, mut child: tokio::process::Child) {
        let group = child.id().map(|pid| pid as i32);
        self.set_user_data_group(id, group);
        let (played, id) = (self.clone(), id.to_string());
        self.spawn(async move {
            match child.wait().await {
                Ok(status) => guest.note(&format!("the user data exited: {status}")),
                Err(e) => guest.note(&format!("the user data was lost: {e}")),
            }
            played.set_user_data_group(&id, None);
        });
    }

    async fn halt(&self, id: &str, terminate: bool) {
        if let Some(group) = self.set_user_data_group(id, None) {
            kill_group(group);
        }
        let guest = self.guest(id);
        guest.stop_units().await;
        let _ = std::fs::remove_dir_all(guest.root.join("run"));
        if terminate {
            let _ = std::fs::remove_dir_all(&guest.root);
        }
    }

    /// Sets the user data's process group; the one it replaces.
    fn set_user_data_group(&self, id: &str, group: Option<i32>) -> Option<i32> {
        let mut records = self.records.lock().unwrap();
        let record = records.get_mut(id)?;
        std::mem::replace(&mut record.user_data_group, group)
    }

    fn guest(&self, id: &str) -> Guest {
        let imds = self.imds.lock().unwrap().clone();
        Guest {
            root: self.dir.join(id),
            imds: imds.and_then(|url_of| url_of(id)),
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}
