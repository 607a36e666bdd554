//! Counters, logged periodically and at exit as one structured line.
//!
//! SQS bills every 64 KiB of a request's payload as one request, so besides the calls the
//! worker counts `sqs_billed`: what the calls cost at list price.

use std::sync::atomic::{AtomicU64, Ordering};

/// SQS counts each started 64 KiB of payload as one billed request.
pub const SQS_BILLING_CHUNK: usize = 64 * 1024;

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        #[derive(Debug, Default)]
        pub struct Counters {
            $(#[doc = $doc] pub $name: AtomicU64,)*
        }

        impl Counters {
            /// The current values, as `(name, value)` pairs in declaration order.
            #[cfg(test)]
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }

            /// Logs every counter as a field of one structured line.
            pub fn log(&self, what: &str) {
                tracing::info!($($name = self.$name.load(Ordering::Relaxed),)* "{what}");
            }
        }
    };
}

counters! {
    records: "records archived: lines in record objects that were stored (a message that comes back after a failed batch or delete is archived, and counted, again)",
    set_aside: "lines set aside under errors/ (not valid records) in objects that were stored",
    messages: "messages taken in (received while this worker did not hold them)",
    redelivered: "messages received again while this worker still held them",
    deleted: "messages deleted: DeleteMessageBatch entries SQS reported successful",
    undeleted: "messages stored but not deleted (their DeleteMessageBatch entry or call failed): they come back",
    objects: "record objects stored",
    bytes_in: "record bytes (uncompressed NDJSON) stored",
    bytes_out: "gzip bytes stored",
    malformed: "malformed messages (no line readable) archived whole under errors/",
    errors: "failed API calls (each attempt) and failed batch entries",
    sqs_receive: "ReceiveMessage calls",
    sqs_delete: "DeleteMessageBatch calls",
    sqs_visibility: "ChangeMessageVisibilityBatch calls",
    sqs_attributes: "GetQueueAttributes calls",
    sqs_billed: "SQS requests as billed (64 KiB chunks of payload)",
    s3_put: "PutObject calls",
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Counts one SQS call carrying `payload` bytes.
    pub fn sqs_call(&self, call: &AtomicU64, payload: usize) {
        Self::inc(call);
        Self::add(&self.sqs_billed, payload.div_ceil(SQS_BILLING_CHUNK).max(1) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_counts_64k_chunks() {
        let c = Counters::default();
        c.sqs_call(&c.sqs_receive, 0);
        c.sqs_call(&c.sqs_receive, 64 * 1024);
        c.sqs_call(&c.sqs_receive, 64 * 1024 + 1);
        let snap: std::collections::HashMap<_, _> = c.snapshot().into_iter().collect();
        assert_eq!((snap["sqs_receive"], snap["sqs_billed"]), (3, 4));
    }
}
