//! The pipeline: owns the buffer and the messages it holds, and decides when to flush,
//! delete, renew visibility, drain and stop.
//!
//! A message is in exactly one of these places until it is deleted:
//! the receive channel → `held` (+ the buffer, or an errors/ PUT in flight) → a batch
//! being stored → being deleted → deleted. Its visibility is renewed as long as it is in
//! `held`, and it is deleted only after every object of its batch is stored (its records'
//! hour objects and the errors/ object of its lines set aside): a crash at any point leaves
//! it in the queue, to be delivered again (at-least-once). The delete uses the receipt
//! handle of the latest delivery (SQS ignores a delete with an older one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use record::{decode_checked, Encoding};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::buffer::{Batch, Buffer, SetAside};
use crate::config::Config;
use crate::metrics::Counters;
use crate::queue::{Queue, Received};
use crate::receive::{self, Event};
use crate::upload::Store;

/// How often the pipeline looks at its clocks (flush age, visibility, stats, shutdown).
const TICK: Duration = Duration::from_millis(100);

struct Held {
    receipt: String,
    visible_until: Instant,
    /// A visibility renewal is in flight.
    renewing: bool,
}

enum Outcome {
    /// A batch was stored (its messages are to be deleted) or not (they will be redelivered).
    Batch { messages: Vec<String>, bytes: usize, stored: bool },
    /// The messages of a stored batch were deleted (or their delete failed and they will be
    /// redelivered: counted in `undeleted`).
    Deleted { messages: Vec<String> },
    /// A malformed message was archived under errors/ (or not: it will be redelivered,
    /// and after the queue's maxReceiveCount it goes to the dead-letter queue).
    Malformed { id: String, stored: bool },
    /// A visibility renewal sent at `sent` came back; `failed` could not be renewed.
    Renewed { ids: Vec<String>, failed: Vec<String>, sent: Instant },
}

pub struct Pipeline {
    cfg: Config,
    queue: Queue,
    store: Store,
    counters: Arc<Counters>,
    held: HashMap<String, Held>,
    buffer: Buffer,
    /// Record bytes in batches being stored.
    storing_bytes: usize,
    tasks: JoinSet<Outcome>,
}

/// How the pipeline ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything received was stored and deleted (or handed back).
    Clean,
    /// The shutdown deadline passed with work in flight: it will be redelivered.
    Timeout,
}

impl Pipeline {
    pub fn new(cfg: Config, queue: Queue, store: Store, counters: Arc<Counters>) -> Pipeline {
        Pipeline {
            cfg,
            queue,
            store,
            counters,
            held: HashMap::new(),
            buffer: Buffer::default(),
            storing_bytes: 0,
            tasks: JoinSet::new(),
        }
    }

    /// Runs until `signal` turns true (SIGTERM/SIGINT) or, with `--drain`, until the queue
    /// is empty; then flushes and waits for the last batches, at most `--shutdown-seconds`.
    pub async fn run(mut self, mut signal: watch::Receiver<bool>) -> Exit {
        let (tx, mut rx) = mpsc::channel(self.cfg.receivers as usize);
        let (stop_tx, stop_rx) = watch::channel(false);
        let _receivers = receive::spawn(
            self.cfg.receivers,
            &self.queue,
            self.cfg.wait_seconds,
            self.cfg.visibility_timeout,
            tx,
            &stop_rx,
        );
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stats_every = Duration::from_secs(self.cfg.stats_seconds.max(1));
        let mut last_stats = Instant::now();
        let mut last_renewal = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut receivers_done = false;
        // Drain mode: a receive came back empty and no message has arrived since.
        let mut saw_empty = false;

        loop {
            let room = self.buffer.bytes() + self.storing_bytes < self.cfg.max_held_bytes();
            tokio::select! {
                event = rx.recv(), if !receivers_done && (room || deadline.is_some()) => match event {
                    None => receivers_done = true,
                    Some(Event::Empty) => saw_empty = true,
                    Some(Event::Messages(messages)) => {
                        saw_empty = false;
                        for m in messages {
                            self.accept(m);
                        }
                    }
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(outcome) => self.settle(outcome),
                    Err(e) => tracing::error!(error = %e, "a task failed"),
                },
                _ = signal.wait_for(|s| *s), if deadline.is_none() => {
                    tracing::info!("stop requested: flushing");
                    deadline = Some(self.stop(&stop_tx));
                },
                _ = tick.tick() => {}
            }

            let now = Instant::now();
            let stopping = deadline.is_some();
            if self.buffer.due(now, self.cfg.flush_bytes, self.cfg.flush_age())
                || (stopping && receivers_done)
                || (self.cfg.drain && saw_empty)
            {
                self.flush();
            }
            if now.duration_since(last_renewal) >= TICK * 5 {
                last_renewal = now;
                self.renew_visibility(now);
            }
            if now.duration_since(last_stats) >= stats_every {
                last_stats = now;
                self.counters.log("stats");
            }
            let idle = self.buffer.is_empty() && self.tasks.is_empty();
            if let Some(deadline) = deadline {
                if receivers_done && idle {
                    return Exit::Clean;
                }
                if now >= deadline {
                    tracing::error!(
                        held = self.held.len(),
                        "shutdown deadline passed: exiting; unfinished messages will be redelivered"
                    );
                    return Exit::Timeout;
                }
            } else if self.cfg.drain && saw_empty && idle && self.held.is_empty() {
                match self.queue.is_empty().await {
                    Ok(true) => {
                        tracing::info!("queue is empty: drained");
                        deadline = Some(self.stop(&stop_tx));
                    }
                    Ok(false) => saw_empty = false, // in flight elsewhere or delayed: keep polling
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the queue depth");
                        saw_empty = false;
                    }
                }
            }
        }
    }

    fn stop(&self, stop_tx: &watch::Sender<bool>) -> Instant {
        let _ = stop_tx.send(true);
        Instant::now() + Duration::from_secs(self.cfg.shutdown_seconds)
    }

    /// Takes in one received message: its records go to the buffer, or, when it cannot be
    /// read, its raw body goes to errors/.
    fn accept(&mut self, m: Received) {
        let visible_until = m.received_at + self.cfg.visibility();
        if let Some(h) = self.held.get_mut(&m.id) {
            // Delivered again while we hold it (a renewal came too late): its records are
            // already buffered; only the newest receipt handle can delete it.
            h.receipt = m.receipt;
            h.visible_until = visible_until;
            Counters::inc(&self.counters.redelivered);
            return;
        }
        Counters::inc(&self.counters.messages);
        self.held.insert(m.id.clone(), Held { receipt: m.receipt.clone(), visible_until, renewing: false });
        let decoded = Encoding::from_attribute(m.encoding.as_deref()).and_then(|enc| decode_checked(&m.body, enc));
        match decoded {
            // Each line on its own: the good ones to their hours, the bad ones set aside.
            Ok(mut d) => {
                let set_aside = SetAside {
                    message_id: m.id.clone(),
                    encoding: m.encoding.clone(),
                    receive_count: m.receive_count,
                    lines: std::mem::take(&mut d.rejected),
                };
                self.buffer.add(d, set_aside, Instant::now());
            }
            Err(reason) => {
                let store = self.store.clone();
                self.tasks.spawn(async move {
                    let stored = store.write_malformed(&m, &reason.to_string()).await;
                    Outcome::Malformed { id: m.id, stored }
                });
            }
        }
    }

    /// Turns the buffer into a batch: its objects are stored, then (in [`Self::settle`])
    /// its messages deleted.
    fn flush(&mut self) {
        let Some(Batch { parts, set_aside, messages, records, bytes }) = self.buffer.take() else {
            return;
        };
        tracing::debug!(
            records,
            bytes,
            messages = messages.len(),
            objects = parts.len(),
            errors_objects = set_aside.len(),
            "flushing"
        );
        self.storing_bytes += bytes;
        let store = self.store.clone();
        self.tasks.spawn(async move {
            let stored = store.write_batch(parts, set_aside).await;
            Outcome::Batch { messages, bytes, stored }
        });
    }

    fn settle(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Batch { messages, bytes, stored: true } => {
                self.storing_bytes -= bytes;
                // The receipts of the latest deliveries: a message delivered again while its
                // batch was being stored can only be deleted with the new one.
                let receipts: Vec<(String, String)> = messages
                    .iter()
                    .filter_map(|id| self.held.get(id).map(|h| (id.clone(), h.receipt.clone())))
                    .collect();
                let queue = self.queue.clone();
                self.tasks.spawn(async move {
                    queue.delete(&receipts).await;
                    Outcome::Deleted { messages }
                });
            }
            Outcome::Batch { messages, bytes, stored: false } => {
                self.storing_bytes -= bytes;
                tracing::error!(messages = messages.len(), "batch not stored: its messages will be redelivered");
                for id in messages {
                    self.held.remove(&id);
                }
            }
            Outcome::Deleted { messages } => {
                for id in messages {
                    self.held.remove(&id);
                }
            }
            Outcome::Malformed { id, stored: true } => self.buffer.add_message(id, Instant::now()),
            Outcome::Malformed { id, stored: false } => {
                // Let it come back; once it has failed maxReceiveCount times, SQS moves it
                // to the dead-letter queue.
                self.held.remove(&id);
            }
            Outcome::Renewed { ids, failed, sent } => {
                let until = sent + self.cfg.visibility();
                for id in ids {
                    if let Some(h) = self.held.get_mut(&id) {
                        h.renewing = false;
                        if !failed.contains(&id) {
                            h.visible_until = until;
                        }
                    }
                }
            }
        }
    }

    /// Renews the visibility of every held message past half of its timeout.
    fn renew_visibility(&mut self, now: Instant) {
        let margin = self.cfg.visibility() / 2;
        let due: Vec<(String, String)> = self
            .held
            .iter_mut()
            .filter(|(_, h)| !h.renewing && h.visible_until <= now + margin)
            .map(|(id, h)| {
                h.renewing = true;
                (id.clone(), h.receipt.clone())
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let (queue, visibility) = (self.queue.clone(), self.cfg.visibility_timeout);
        self.tasks.spawn(async move {
            let failed = queue.extend(&due, visibility).await;
            Outcome::Renewed { ids: due.into_iter().map(|(id, _)| id).collect(), failed, sent: now }
        });
    }
}
