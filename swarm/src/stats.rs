//! Counters: every program keeps a few, logs them periodically (one JSON line) and the
//! indexer also serves them on `/metrics` (Prometheus text format).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Something with named counters.
pub trait Snapshot: Send + Sync + 'static {
    fn snapshot(&self) -> Vec<(&'static str, u64)>;
}

/// Prometheus text exposition of a snapshot, names prefixed with `prefix_`.
pub fn prometheus(prefix: &str, snap: &[(&'static str, u64)]) -> String {
    let mut out = String::new();
    for (name, v) in snap {
        out.push_str(&format!("{prefix}_{name} {v}\n"));
    }
    out
}

/// Logs the counters every `every` (one `stats` line with every counter as a field).
pub fn spawn_logger<S: Snapshot>(what: &'static str, stats: std::sync::Arc<S>, every: Duration) {
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        t.tick().await;
        loop {
            t.tick().await;
            let snap = stats.snapshot();
            let fields: serde_json::Map<String, serde_json::Value> =
                snap.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
            tracing::info!(program = what, counters = %serde_json::Value::Object(fields), "stats");
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn exposition() {
        assert_eq!(super::prometheus("indexer", &[("a", 1), ("b", 2)]), "indexer_a 1\nindexer_b 2\n");
    }
}
