//! WatchJob: the job's history from the store, then its live events,
//! in sequence order with gaps filled from the store, until the job's last
//! event (ended and settled) or shutdown. [`Control::watch_all_jobs`]: every
//! job as it changes, from the same hub (the console's live pages).

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Error, Result};
use crate::records::{EventRecord, JobRecord};

use super::Control;

impl Control {
    /// Every job as committed from now on (who may see which is the caller's
    /// to filter); a receiver that falls behind gets `Lagged`.
    pub fn watch_all_jobs(&self) -> broadcast::Receiver<Arc<JobRecord>> {
        self.store().subscribe_all()
    }

    pub fn watch(&self, job_id: String) -> ReceiverStream<Result<EventRecord>> {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        // Subscribe before reading history so nothing falls in between.
        let mut live = self.store().subscribe(&job_id);
        self.parts.tasks.spawn(async move {
            this.stream_events(&job_id, &mut live, &tx).await;
            this.store().unsubscribe(&job_id, live);
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
                    _ = self.parts.cancel.cancelled() => {
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::super::testing::{cancel, control, job};
    use crate::records::{EventRecord, InstanceRecord, JobRecord, TimelineNote};

    #[tokio::test]
    async fn a_watcher_gets_each_event_once_in_order_even_when_published_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let control = control(dir.path()).await;
        control
            .store()
            .create_job(job("job-w", "alice"))
            .await
            .unwrap();
        let mut watch = control.watch("job-w".into());
        let next_seq = |e: Option<crate::error::Result<EventRecord>>| e.unwrap().unwrap().seq;
        assert_eq!(next_seq(watch.next().await), 1);

        let mark = |phase: &'static str| {
            move |_: &mut JobRecord, _: &mut Vec<InstanceRecord>| {
                Ok(vec![TimelineNote::phase("", phase)])
            }
        };
        // In order, through the one apply path.
        control.store().update("job-w", mark("a")).await.unwrap();
        assert_eq!(next_seq(watch.next().await), 2);
        // Two commits published in reverse order: the gap is filled from the
        // store, and the late event is not sent again.
        let c3 = control.store().update("job-w", mark("b")).await.unwrap();
        let c4 = control.store().update("job-w", mark("c")).await.unwrap();
        control.store().hub().publish("job-w", &c4.events);
        control.store().hub().publish("job-w", &c3.events);
        assert_eq!(next_seq(watch.next().await), 3);
        assert_eq!(next_seq(watch.next().await), 4);
        control.store().update("job-w", mark("d")).await.unwrap();
        assert_eq!(next_seq(watch.next().await), 5);
        // The job ends and settles: its last event ends the stream.
        cancel(&control, "job-w").await;
        let last = control.store().events_from("job-w", 6).unwrap();
        control.store().hub().publish("job-w", &last);
        let e = watch.next().await.unwrap().unwrap();
        assert_eq!((e.seq, e.last), (6, true));
        assert!(watch.next().await.is_none());
    }
}
