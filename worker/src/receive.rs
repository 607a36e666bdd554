//! The receive loop: several long polls in flight, each handing what it got to the pipeline.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::queue::{Queue, Received};

pub enum Event {
    Messages(Vec<Received>),
    /// A receive came back empty: the queue had nothing visible for the whole wait.
    Empty,
}

/// Starts `count` receive loops; they stop when `stop` turns true, and the channel
/// closes once all of them have stopped.
pub fn spawn(
    count: u16,
    queue: &Queue,
    wait_seconds: i32,
    visibility: i32,
    tx: mpsc::Sender<Event>,
    stop: &watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for _ in 0..count {
        set.spawn(receive_loop(queue.clone(), wait_seconds, visibility, tx.clone(), stop.clone()));
    }
    set
}

async fn receive_loop(
    queue: Queue,
    wait: i32,
    visibility: i32,
    tx: mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    const MAX_BACKOFF: Duration = Duration::from_secs(20);
    let mut backoff = common::Backoff::exact(Duration::from_millis(250), MAX_BACKOFF);
    loop {
        // Dropping a poll on stop is safe: anything it had taken reappears after its
        // visibility timeout.
        let result = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = queue.receive(wait, visibility) => r,
        };
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
