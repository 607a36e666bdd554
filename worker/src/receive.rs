//! The receive loop: up to `--receivers` long polls in flight, each handing what it got to
//! the pipeline.
//!
//! Only as many as the queue keeps busy: one poll always runs, and the others only while
//! the queue has a backlog — while the last receive came back full (10 messages, SQS's
//! maximum). A receive that is not full means the queue held fewer messages than one poll
//! takes, so a second poll in flight would only split them: more calls (each one billed,
//! and each one CPU: on the benchmark in README.md, 4 polls on a queue kept ≤ 10 deep took
//! 2.2 messages a call and 1 poll 6.3, 0.5 CPU s per million records less). On a backlog
//! every receive is full and all the polls run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::queue::{Queue, Received, BATCH};

pub enum Event {
    Messages(Vec<Received>),
    /// A receive came back empty: the queue had nothing visible for the whole wait.
    Empty,
}

/// Whether the queue has a backlog (the last receive was full), shared by the loops.
#[derive(Default)]
struct Backlog {
    full: AtomicBool,
    changed: Notify,
}

impl Backlog {
    fn set(&self, full: bool) {
        if self.full.swap(full, Ordering::Relaxed) != full && full {
            self.changed.notify_waiters();
        }
    }
}

/// Starts `count` receive loops (the first always polling, the others while there is a
/// backlog); they stop when `stop` turns true, and the channel closes once all of them
/// have stopped.
pub fn spawn(
    count: u16,
    queue: &Queue,
    wait_seconds: i32,
    visibility: i32,
    tx: mpsc::Sender<Event>,
    stop: &watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let backlog = Arc::new(Backlog::default());
    for n in 0..count {
        let poll =
            Poll { queue: queue.clone(), wait: wait_seconds, visibility, backlog: backlog.clone(), always: n == 0 };
        set.spawn(receive_loop(poll, tx.clone(), stop.clone()));
    }
    set
}

struct Poll {
    queue: Queue,
    wait: i32,
    visibility: i32,
    backlog: Arc<Backlog>,
    /// This loop polls whether or not there is a backlog.
    always: bool,
}

async fn receive_loop(poll: Poll, tx: mpsc::Sender<Event>, mut stop: watch::Receiver<bool>) {
    const MAX_BACKOFF: Duration = Duration::from_secs(20);
    let mut backoff = common::Backoff::exact(Duration::from_millis(250), MAX_BACKOFF);
    loop {
        if !poll.always {
            // Registered before the flag is read, so that a backlog starting in between
            // is not missed.
            let backlog = poll.backlog.changed.notified();
            if !poll.backlog.full.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = backlog => {}
                }
            }
        }
        // Dropping a poll on stop is safe: anything it had taken reappears after its
        // visibility timeout.
        let result = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = poll.queue.receive(poll.wait, poll.visibility) => r,
        };
        if let Ok(messages) = &result {
            poll.backlog.set(messages.len() >= BATCH);
        }
        let event = match result {
            Ok(messages) if messages.is_empty() => Event::Empty,
            Ok(messages) => Event::Messages(messages),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "receive failed");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        backoff.reset();
        // Blocks while the pipeline applies back-pressure; the pipeline drains the channel
        // before it exits, so nothing received here is dropped.
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
