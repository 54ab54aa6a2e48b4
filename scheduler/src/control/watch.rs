//! WatchJob: the job's history from the store, then live events from the hub,
//! in sequence order with gaps filled from the store, until the job's last
//! event (ended and settled) or shutdown.

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Error, Result};
use crate::store::EventRecord;

use super::Control;

impl Control {
    pub fn watch(&self, job_id: String) -> ReceiverStream<Result<EventRecord>> {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        // Subscribe before reading history so nothing falls in between.
        let mut live = self.hub().subscribe(&job_id);
        self.inner.tasks.spawn(async move {
            this.stream_events(&job_id, &mut live, &tx).await;
            this.hub().unsubscribe(&job_id, live);
        });
        ReceiverStream::new(rx)
    }

    /// Sends the job's events to `tx`, history first, until its last event,
    /// the watcher leaving, or shutdown. A live event that is the next one
    /// due goes out as received (it is committed before it is published);
    /// anything else (a gap, events published out of order, a lagging
    /// receiver) is filled from the store, reading only what is due.
    async fn stream_events(
        &self,
        job_id: &str,
        live: &mut broadcast::Receiver<EventRecord>,
        tx: &mpsc::Sender<Result<EventRecord>>,
    ) {
        let mut next_seq = 1u64;
        let mut closed = false;
        loop {
            let events = match self.store().events_from(job_id, next_seq) {
                Ok(events) => events,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            for e in events {
                next_seq = e.seq + 1;
                let last = e.last;
                if tx.send(Ok(e)).await.is_err() || last {
                    return;
                }
            }
            if closed {
                return;
            }
            // Wait for an event past what was sent.
            loop {
                tokio::select! {
                    _ = self.inner.cancel.cancelled() => {
                        let _ = tx.send(Err(Error::Unavailable("the scheduler is shutting down".into()))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    received = live.recv() => match received {
                        Ok(e) if e.seq < next_seq => continue,
                        Ok(e) if e.seq == next_seq => {
                            next_seq += 1;
                            let last = e.last;
                            if tx.send(Ok(e)).await.is_err() || last {
                                return;
                            }
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            closed = true;
                            break;
                        }
                    },
                }
            }
        }
    }
}
