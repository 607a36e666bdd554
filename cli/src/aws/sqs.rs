//! SQS: how many messages a queue still holds (read-only).

use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;

use super::{describe, error_code, AwsError};

/// Messages in a queue, visible, in flight and delayed (SQS's approximate counts);
/// `Ok(None)` when the queue does not exist.
pub async fn messages(sqs: &Client, queue_url: &str) -> Result<Option<u64>, AwsError> {
    let names = [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        QueueAttributeName::ApproximateNumberOfMessagesDelayed,
    ];
    let out =
        match sqs.get_queue_attributes().queue_url(queue_url).set_attribute_names(Some(names.to_vec())).send().await {
            Ok(out) => out,
            Err(e) if error_code(&e).is_some_and(|c| c.contains("NonExistentQueue")) => return Ok(None),
            Err(e) => return Err(describe(&format!("cannot read the attributes of queue {queue_url}"), e)),
        };
    let attrs = out.attributes();
    Ok(Some(names.iter().filter_map(|n| attrs.and_then(|a| a.get(n)).and_then(|v| v.parse::<u64>().ok())).sum()))
}
