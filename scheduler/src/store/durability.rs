//! Group commit: writers commit to sled, then wait here until a `db.flush()`
//! that started after their commit has finished. One flusher task runs the
//! flushes (sled 0.34's concurrent `flush_async` can hang, upstream #1308).

use tokio::sync::{mpsc, oneshot};

use super::timings::StoreTimings;

/// Why a change could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum FlushError {
    #[error("the store is closed")]
    Closed,
    #[error("flushing to disk failed: {0}")]
    Failed(String),
}

type Waiter = oneshot::Sender<Result<(), FlushError>>;

#[derive(Clone)]
pub(crate) struct GroupCommit {
    tx: mpsc::UnboundedSender<Waiter>,
    flusher: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl GroupCommit {
    /// Starts the flusher, which times each flush; it ends when every
    /// `GroupCommit` clone is dropped.
    pub(crate) fn start(db: sled::Db, timings: StoreTimings) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let flusher = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(w) = rx.try_recv() {
                    batch.push(w);
                }
                let db = db.clone();
                let started = timings.start();
                let result = tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(|e| FlushError::Failed(e.to_string()))
                    .and_then(|r| r.map(drop).map_err(|e| FlushError::Failed(e.to_string())));
                timings.flush_since(started);
                for w in batch {
                    let _ = w.send(result.clone());
                }
            }
        });
        Self {
            tx,
            flusher: std::sync::Arc::new(std::sync::Mutex::new(Some(flusher))),
        }
    }

    /// Waits for the flusher to end, which it does once every other clone is gone.
    pub(crate) async fn close(self) {
        let handle = self.flusher.lock().expect("flusher lock").take();
        drop(self);
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Returns once everything committed before this call is on disk.
    pub(crate) async fn durable(&self) -> Result<(), FlushError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| FlushError::Closed)?;
        rx.await.map_err(|_| FlushError::Closed)?
    }
}
