//! A bounded in-memory buffer in front of a slow or failing destination.
//!
//! The indexer keeps one per destination (SQS, InfluxDB): MQTT messages keep flowing in
//! while a destination is down, up to the buffer's capacity. When it is full the oldest
//! records are dropped — never silently: every drop is counted (`dropped`) and logged
//! as an error (at most once a second, with the running total).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::stats::Counter;

/// What happened to the records that went through one destination.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records the destination accepted.
    pub delivered: Counter,
    /// Requests made (SQS batches, InfluxDB writes).
    pub requests: Counter,
    /// Messages sent (SQS only).
    pub messages: Counter,
    /// Failed attempts that will be retried.
    pub retries: Counter,
    /// Records the destination refused for good (malformed, too large): logged, not retried.
    pub rejected: Counter,
    /// Records dropped because the buffer was full while the destination was unavailable.
    pub dropped: Counter,
}

struct Inner {
    /// Records and their tags (see [`Buffer::push_tagged`]).
    q: VecDeque<(String, Option<u64>)>,
    bytes: usize,
    last_drop_log: Option<Instant>,
    dropped_since_log: u64,
}

pub struct Buffer {
    pub name: &'static str,
    cap: usize,
    inner: Mutex<Inner>,
    notify: Notify,
    pub stats: SinkStats,
    /// Records taken from the buffer by the sender and not yet delivered (or given up).
    held: std::sync::atomic::AtomicUsize,
    /// Set by [`Buffer::flush`]: send what is there without lingering, from now on.
    flushing: std::sync::atomic::AtomicBool,
    /// While the sender lingers ([`Buffer::wait_batch`]): wake it only once this many
    /// records, or `wake_bytes` bytes, are held (not at every record). Else 0: wake it at
    /// every record.
    wake_items: std::sync::atomic::AtomicUsize,
    wake_bytes: std::sync::atomic::AtomicUsize,
}

impl Buffer {
    pub fn new(name: &'static str, cap: usize) -> Buffer {
        Buffer {
            name,
            cap: cap.max(1),
            inner: Mutex::new(Inner { q: VecDeque::new(), bytes: 0, last_drop_log: None, dropped_since_log: 0 }),
            notify: Notify::new(),
            stats: SinkStats::default(),
            held: std::sync::atomic::AtomicUsize::new(0),
            flushing: std::sync::atomic::AtomicBool::new(false),
            wake_items: std::sync::atomic::AtomicUsize::new(0),
            wake_bytes: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// From now on the sender lingers no more: each batch goes as soon as it has a record
    /// (a program that stops delivers what it holds at once, not after its linger).
    pub fn flush(&self) {
        self.flushing.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Appends a record; when full, drops the oldest one (counted and logged).
    pub fn push(&self, item: String) {
        self.push_tagged(item, None);
    }

    /// Appends a record with a tag the sender reports back once the record is done with
    /// (the indexer acknowledges the MQTT message then). Returns the tag of the record
    /// dropped to make room, if one was (it is never reported back).
    pub fn push_tagged(&self, item: String, tag: Option<u64>) -> Option<u64> {
        let mut g = self.inner.lock().unwrap();
        let mut dropped_tag = None;
        if g.q.len() >= self.cap {
            if let Some((old, old_tag)) = g.q.pop_front() {
                g.bytes -= old.len();
                dropped_tag = old_tag;
            }
            self.stats.dropped.inc();
            g.dropped_since_log += 1;
            let now = Instant::now();
            if g.last_drop_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                tracing::error!(
                    destination = self.name,
                    dropped = g.dropped_since_log,
                    dropped_total = self.stats.dropped.get(),
                    capacity = self.cap,
                    "buffer full: the destination is not keeping up or is down; dropping the oldest records"
                );
                g.last_drop_log = Some(now);
                g.dropped_since_log = 0;
            }
        }
        g.bytes += item.len();
        g.q.push_back((item, tag));
        // A sender lingering for a fuller batch sleeps on until there is one (a wake-up
        // per record costs more than the record); one waiting for any record wakes now.
        use std::sync::atomic::Ordering::SeqCst;
        let wake =
            g.q.len() == 1 || g.q.len() >= self.wake_items.load(SeqCst) || g.bytes >= self.wake_bytes.load(SeqCst);
        drop(g);
        if wake {
            self.notify.notify_one();
        }
        dropped_tag
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sender reports how many records it holds outside the buffer.
    pub fn set_held(&self, n: usize) {
        self.held.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records not yet delivered: buffered plus held by the sender.
    pub fn outstanding(&self) -> usize {
        self.len() + self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }

    /// Takes records from the front: at most `max_items`, and no more than `max_bytes`
    /// (but always at least one when there is one).
    pub fn drain(&self, max_items: usize, max_bytes: usize) -> Vec<String> {
        self.drain_tagged(max_items, max_bytes).into_iter().map(|(s, _)| s).collect()
    }

    /// As [`Buffer::drain`], with the records' tags.
    pub fn drain_tagged(&self, max_items: usize, max_bytes: usize) -> Vec<(String, Option<u64>)> {
        let mut g = self.inner.lock().unwrap();
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_items {
            let Some(front) = g.q.front() else { break };
            if !out.is_empty() && bytes + front.0.len() > max_bytes {
                break;
            }
            let item = g.q.pop_front().unwrap();
            bytes += item.0.len();
            g.bytes -= item.0.len();
            out.push(item);
        }
        out
    }

    /// Waits until the buffer holds something.
    pub async fn wait_non_empty(&self) {
        loop {
            let n = self.notify.notified();
            if !self.is_empty() {
                return;
            }
            n.await;
        }
    }

    /// Waits for records, then lingers up to `linger` for more (until `fill_bytes` or
    /// `fill_items` are there), so that requests carry many records each.
    pub async fn wait_batch(&self, linger: Duration, fill_bytes: usize, fill_items: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        self.wait_non_empty().await;
        let deadline = tokio::time::Instant::now() + linger;
        // Set before the first look: a record pushed from here on that fills the batch
        // wakes this (a permit is kept if it comes before the wait).
        self.wake_items.store(fill_items, SeqCst);
        self.wake_bytes.store(fill_bytes, SeqCst);
        while self.bytes() < fill_bytes
            && self.len() < fill_items
            && !self.flushing.load(SeqCst)
            && tokio::time::Instant::now() < deadline
        {
            let _ = tokio::time::timeout_at(deadline, self.notify.notified()).await;
        }
        self.wake_items.store(0, SeqCst);
        self.wake_bytes.store(0, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oldest_when_full_and_counts() {
        let b = Buffer::new("t", 3);
        for i in 0..5 {
            b.push(format!("r{i}"));
        }
        assert_eq!(b.stats.dropped.get(), 2);
        assert_eq!(b.drain(10, 1000), vec!["r2", "r3", "r4"]);
        assert!(b.is_empty() && b.bytes() == 0);
    }

    #[test]
    fn a_dropped_record_gives_back_its_tag() {
        let b = Buffer::new("t", 2);
        assert_eq!(b.push_tagged("a".into(), Some(1)), None);
        assert_eq!(b.push_tagged("b".into(), None), None);
        assert_eq!(b.push_tagged("c".into(), Some(3)), Some(1));
        assert_eq!(b.push_tagged("d".into(), Some(4)), None, "an untagged record was dropped");
        assert_eq!(b.drain_tagged(10, 100), vec![("c".to_string(), Some(3)), ("d".to_string(), Some(4))]);
    }

    #[tokio::test]
    async fn a_lingering_sender_wakes_when_its_batch_is_full_or_its_linger_is_over() {
        let b = std::sync::Arc::new(Buffer::new("t", 100));
        let linger = Duration::from_millis(1500);
        // Full by count: wakes before the linger is over.
        let w = tokio::spawn({
            let b = b.clone();
            async move {
                let t = tokio::time::Instant::now();
                b.wait_batch(linger, usize::MAX, 5).await;
                (t.elapsed(), b.len())
            }
        });
        for i in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            b.push(format!("r{i}"));
        }
        let (took, n) = w.await.unwrap();
        assert_eq!(n, 5);
        assert!(took < Duration::from_millis(1000), "{took:?}");
        b.drain(100, usize::MAX);
        // Never full: goes at the end of the linger, with what there is.
        let w = tokio::spawn({
            let b = b.clone();
            async move {
                let t = tokio::time::Instant::now();
                b.wait_batch(linger, usize::MAX, 50).await;
                (t.elapsed(), b.len())
            }
        });
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            b.push(format!("r{i}"));
        }
        let (took, n) = w.await.unwrap();
        assert_eq!(n, 3);
        assert!(took >= linger, "{took:?}");
        // A flush wakes it at once.
        b.drain(100, usize::MAX);
        b.push("x".into());
        let w = tokio::spawn({
            let b = b.clone();
            async move { b.wait_batch(linger, usize::MAX, 50).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.flush();
        tokio::time::timeout(Duration::from_millis(1000), w).await.expect("woken by the flush").unwrap();
    }

    #[test]
    fn drain_respects_limits_but_takes_one() {
        let b = Buffer::new("t", 100);
        b.push("x".repeat(50));
        b.push("y".repeat(10));
        b.push("z".repeat(10));
        assert_eq!(b.drain(10, 5).len(), 1);
        assert_eq!(b.drain(1, 1000).len(), 1);
        assert_eq!(b.bytes(), 10);
    }
}
