//! Waiting: a bounded waiter that follows a stack to a terminal state, streaming its
//! events and naming every failed resource; its whole state machine is [`judge`].

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_cloudformation::Client;

use super::stacks::{get, StackInfo, StackStatus};
use crate::aws::{describe, AwsError};

/// The operation being waited on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    /// A parameter update of an existing stack (`tyrell up`).
    Update,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// What a stack status means for the operation being waited on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still going the right way.
    Wait,
    /// Going the wrong way (rolling back, deleting a failed create): keep waiting for
    /// the end, the outcome is already a failure.
    Failing,
    /// Reached the wanted state.
    Done,
    /// Reached a terminal state other than the wanted one.
    Failed,
}

/// The verdict on `status` (a CloudFormation stack status, or `None` when the stack no
/// longer exists) for the operation `op`. Pure: the waiter's whole state machine.
pub fn judge(op: Op, status: Option<&StackStatus>) -> Verdict {
    use StackStatus as S;
    use Verdict::*;
    let Some(status) = status else {
        // Gone: what a delete wants; for a create, one that failed and deleted itself
        // (OnFailure=DELETE).
        return if op == Op::Delete { Done } else { Failed };
    };
    match (op, status) {
        (Op::Create, S::CreateComplete) | (Op::Delete, S::DeleteComplete) => Done,
        (Op::Create, S::CreateInProgress | S::ReviewInProgress) => Wait,
        (Op::Delete, S::DeleteInProgress) => Wait,
        (Op::Update, S::UpdateComplete) => Done,
        (Op::Update, S::UpdateInProgress | S::UpdateCompleteCleanupInProgress) => Wait,
        (_, s) if s.as_str().ends_with("_IN_PROGRESS") => Failing,
        // Every other status is terminal and not the one wanted: *_FAILED, ROLLBACK_*,
        // DELETE_COMPLETE of a create, ...
        _ => Failed,
    }
}

/// A stack event, as shown to the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub time: String,
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    pub reason: Option<String>,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}  {:<28} {:<40} {}", self.time, self.status, self.resource_type, self.logical_id)?;
        if let Some(r) = &self.reason {
            write!(f, "  {r}")?;
        }
        Ok(())
    }
}

/// A resource that failed, with CloudFormation's reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}) {}: {}", self.logical_id, self.resource_type, self.status, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("stack {stack} did not {verb}: it ended {status}{}", failures_text(.failures, .reason))]
    Failed { stack: String, verb: &'static str, status: String, reason: Option<String>, failures: Vec<Failure> },
    #[error("gave up after {waited:?} waiting for stack {stack} to {verb} (still {status}); CloudFormation goes on: follow it with `tyrell ... describe` or `aws cloudformation describe-stack-events --stack-name {stack}`")]
    Timeout { stack: String, verb: &'static str, status: String, waited: Duration },
    #[error(transparent)]
    Aws(#[from] AwsError),
}

fn failures_text(failures: &[Failure], reason: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(r) = reason {
        s.push_str(&format!(" ({r})"));
    }
    for f in failures {
        s.push_str(&format!("\n  failed: {f}"));
    }
    s
}

/// How to wait.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    pub timeout: Duration,
    /// First delay between polls; doubled (up to `max_delay`) while nothing changes.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl WaitOptions {
    pub fn with_timeout(timeout: Duration) -> Self {
        WaitOptions { timeout, first_delay: Duration::from_millis(1000), max_delay: Duration::from_secs(15) }
    }
}

/// Receives what the waiter sees.
pub trait Progress {
    /// A new stack event, oldest first.
    fn event(&mut self, stack: &str, event: &Event);
    /// The stack's status after a poll.
    fn status(&mut self, stack: &str, status: &str, elapsed: Duration);
    /// What is still going on in AWS if the process stopped now (`None`: nothing), for
    /// the message an interrupt prints.
    fn in_flight(&mut self, _what: Option<String>) {}
}

/// Follows `stack` (name or id) until `op` reaches a terminal state or `opts.timeout`
/// passes, reporting events and status to `progress`. Returns the final stack (`None`
/// after a delete).
pub async fn wait(
    cfn: &Client,
    stack: &str,
    display: &str,
    op: Op,
    opts: &WaitOptions,
    progress: &mut dyn Progress,
) -> Result<Option<StackInfo>, WaitError> {
    let start = tokio::time::Instant::now();
    let mut backoff = common::Backoff::exact(opts.first_delay, opts.max_delay);
    let mut seen: HashSet<String> = HashSet::new();
    let mut first = true;
    let mut last_status = String::new();
    let mut events_supported = true;
    loop {
        // A poll AWS throttled (after the SDK's own retries) says nothing about the
        // stack: the operation goes on in CloudFormation, so wait and ask again rather than
        // report a finished operation failed. Only the timeout ends a run of them.
        let info = match get(cfn, stack).await {
            Ok(info) => info,
            Err(e) if e.is_throttled() => {
                let shown = format!("{} (status unknown: AWS throttled the last poll)", or_unknown(&last_status));
                progress.status(display, &shown, start.elapsed());
                if start.elapsed() >= opts.timeout {
                    return Err(WaitError::Timeout {
                        stack: display.to_string(),
                        verb: op.verb(),
                        status: shown,
                        waited: opts.timeout,
                    });
                }
                let left = opts.timeout.saturating_sub(start.elapsed());
                tokio::time::sleep(backoff.next_delay().min(left)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let status = info.as_ref().map(|s| s.status.clone());
        progress.in_flight(Some(format!("stack {display} is {}", status.as_ref().map_or("gone", |s| s.as_str()))));
        if events_supported {
            match new_events(cfn, stack, &mut seen, first && op != Op::Create).await {
                Ok(evs) => evs.iter().for_each(|e| progress.event(display, e)),
                Err(_) if info.is_none() => {}
                // Throttled: the next poll reads what this one missed.
                Err(e) if e.is_throttled() => {}
                Err(_) => events_supported = false,
            }
        }
        first = false;
        let shown = status.as_ref().map_or("DELETE_COMPLETE", |s| s.as_str());
        progress.status(display, shown, start.elapsed());
        let changed = shown != last_status;
        last_status = shown.to_string();
        match judge(op, status.as_ref()) {
            Verdict::Done => {
                progress.in_flight(None);
                return Ok(info);
            }
            Verdict::Failed => {
                progress.in_flight(None);
                let failures = failures(cfn, stack).await.unwrap_or_default();
                return Err(WaitError::Failed {
                    stack: display.to_string(),
                    verb: op.verb(),
                    status: shown.to_string(),
                    reason: info.and_then(|i| i.reason),
                    failures,
                });
            }
            Verdict::Wait | Verdict::Failing => {}
        }
        if start.elapsed() >= opts.timeout {
            return Err(WaitError::Timeout {
                stack: display.to_string(),
                verb: op.verb(),
                status: shown.to_string(),
                waited: opts.timeout,
            });
        }
        if changed {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let left = opts.timeout.saturating_sub(start.elapsed());
        tokio::time::sleep(delay.min(left)).await;
    }
}

/// The last status seen, or `UNKNOWN` before the first.
fn or_unknown(last: &str) -> &str {
    if last.is_empty() {
        "UNKNOWN"
    } else {
        last
    }
}

/// The stack's events, oldest first: DescribeStackEvents pages newest first, and pages
/// are read until one holds an event for which `enough` is true (or to the last page),
/// so a busy stack's history never hides the events a caller needs.
async fn events(cfn: &Client, stack: &str, enough: impl Fn(&Event) -> bool) -> Result<Vec<Event>, AwsError> {
    let mut evs: Vec<Event> = Vec::new();
    let mut pages = cfn.describe_stack_events().stack_name(stack).into_paginator().send();
    while let Some(page) = pages.next().await {
        let out = page.map_err(|e| describe(&format!("cannot read events of {stack}"), e))?;
        let before = evs.len();
        evs.extend(out.stack_events().iter().map(|e| Event {
            id: e.event_id().unwrap_or_default().to_string(),
            time: e.timestamp().map(|t| t.to_string()).unwrap_or_default(),
            logical_id: e.logical_resource_id().unwrap_or_default().into(),
            resource_type: e.resource_type().unwrap_or_default().into(),
            status: e.resource_status().map(|s| s.as_str().to_string()).unwrap_or_default(),
            reason: e.resource_status_reason().map(str::to_string),
        }));
        if evs[before..].iter().any(&enough) {
            break;
        }
    }
    evs.reverse();
    Ok(evs)
}

/// Events not seen before, oldest first. With `baseline`, everything present now is
/// marked seen and nothing is returned (events of earlier operations on the stack).
async fn new_events(
    cfn: &Client,
    stack: &str,
    seen: &mut HashSet<String>,
    baseline: bool,
) -> Result<Vec<Event>, AwsError> {
    let known = seen.clone();
    let fresh: Vec<Event> = events(cfn, stack, |e| known.contains(&e.id))
        .await?
        .into_iter()
        .filter(|e| seen.insert(e.id.clone()))
        .collect();
    Ok(if baseline { Vec::new() } else { fresh })
}

/// The failed resources of the latest operation on `stack`, with their reasons. The
/// stack's own summary line ("The following resource(s) failed...") comes last.
pub async fn failures(cfn: &Client, stack: &str) -> Result<Vec<Failure>, AwsError> {
    let mut res: Vec<Failure> = Vec::new();
    let mut own: Vec<Failure> = Vec::new();
    // Back to the start of the latest operation: the stack's own "User Initiated" event.
    let starts =
        |e: &Event| e.resource_type == "AWS::CloudFormation::Stack" && e.reason.as_deref() == Some("User Initiated");
    let all = events(cfn, stack, starts).await?;
    let start = all.iter().rposition(starts).unwrap_or(0);
    for e in all.into_iter().skip(start) {
        if !e.status.ends_with("_FAILED") {
            continue;
        }
        let stack_itself = e.resource_type == "AWS::CloudFormation::Stack";
        let f = Failure {
            logical_id: e.logical_id,
            resource_type: e.resource_type,
            status: e.status,
            reason: e.reason.unwrap_or_else(|| "no reason given".into()),
        };
        if stack_itself {
            own.push(f);
        } else if !res.contains(&f) {
            res.push(f);
        }
    }
    res.extend(own);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_cover_documented_sequences() {
        use Verdict::*;
        let seq = |op, sts: &[Option<&str>]| {
            sts.iter().map(|s| judge(op, s.map(StackStatus::from).as_ref())).collect::<Vec<_>>()
        };
        assert_eq!(seq(Op::Create, &[Some("CREATE_IN_PROGRESS"), Some("CREATE_COMPLETE")]), vec![Wait, Done]);
        assert_eq!(
            seq(Op::Create, &[Some("CREATE_IN_PROGRESS"), Some("ROLLBACK_IN_PROGRESS"), Some("ROLLBACK_COMPLETE")]),
            vec![Wait, Failing, Failed]
        );
        assert_eq!(seq(Op::Create, &[Some("ROLLBACK_FAILED"), Some("CREATE_FAILED")]), vec![Failed, Failed]);
        assert_eq!(seq(Op::Create, &[Some("DELETE_IN_PROGRESS"), None]), vec![Failing, Failed]);
        assert_eq!(seq(Op::Delete, &[Some("DELETE_IN_PROGRESS"), Some("DELETE_FAILED")]), vec![Wait, Failed]);
        assert_eq!(seq(Op::Delete, &[Some("DELETE_IN_PROGRESS"), None]), vec![Wait, Done]);
        assert_eq!(
            seq(
                Op::Update,
                &[Some("UPDATE_IN_PROGRESS"), Some("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"), Some("UPDATE_COMPLETE")]
            ),
            vec![Wait, Wait, Done]
        );
        assert_eq!(
            seq(
                Op::Update,
                &[Some("UPDATE_IN_PROGRESS"), Some("UPDATE_ROLLBACK_IN_PROGRESS"), Some("UPDATE_ROLLBACK_COMPLETE")]
            ),
            vec![Wait, Failing, Failed]
        );
    }

    // The waiter on AWS's documented state sequences, with mocked responses: the emulator
    // completes every operation synchronously and emits no per-resource events.
    mod waiter {
        use super::super::*;
        use aws_sdk_cloudformation::operation::describe_stack_events::DescribeStackEventsOutput;
        use aws_sdk_cloudformation::operation::describe_stacks::{DescribeStacksError, DescribeStacksOutput};
        use aws_sdk_cloudformation::types::{ResourceStatus, Stack, StackEvent, StackStatus};
        use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
        use aws_smithy_types::error::ErrorMetadata;
        use aws_smithy_types::DateTime;

        #[derive(Default)]
        struct Seen {
            events: Vec<String>,
            statuses: Vec<String>,
        }
        impl Progress for Seen {
            fn event(&mut self, _: &str, e: &Event) {
                self.events.push(format!("{} {}", e.logical_id, e.status));
            }
            fn status(&mut self, _: &str, status: &str, _: Duration) {
                self.statuses.push(status.to_string());
            }
        }

        fn stacks_rule(statuses: &[&str]) -> Rule {
            let mut seq = mock!(Client::describe_stacks).sequence();
            for st in statuses {
                let st = st.to_string();
                seq = if st == "GONE" {
                    seq.error(|| {
                        DescribeStacksError::generic(
                            ErrorMetadata::builder()
                                .code("ValidationError")
                                .message("Stack with id s does not exist")
                                .build(),
                        )
                    })
                } else {
                    seq.output(move || {
                        DescribeStacksOutput::builder()
                            .stacks(
                                Stack::builder()
                                    .stack_name("s")
                                    .stack_id("arn:s")
                                    .stack_status(StackStatus::from(st.as_str()))
                                    .creation_time(DateTime::from_secs(0))
                                    .build(),
                            )
                            .build()
                    })
                };
            }
            seq.build()
        }

        fn event(n: u32, logical: &str, kind: &str, status: &str, reason: Option<&str>) -> StackEvent {
            StackEvent::builder()
                .stack_id("arn:s")
                .stack_name("s")
                .event_id(format!("e{n}"))
                .timestamp(DateTime::from_secs(n as i64))
                .logical_resource_id(logical)
                .resource_type(kind)
                .resource_status(ResourceStatus::from(status))
                .set_resource_status_reason(reason.map(str::to_string))
                .build()
        }

        /// Events as AWS returns them: newest first.
        fn events_rule(events: Vec<StackEvent>) -> Rule {
            mock!(Client::describe_stack_events).then_output(move || {
                let mut evs = events.clone();
                evs.reverse();
                DescribeStackEventsOutput::builder().set_stack_events(Some(evs)).build()
            })
        }

        fn quick(timeout_ms: u64) -> WaitOptions {
            WaitOptions {
                timeout: Duration::from_millis(timeout_ms),
                first_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            }
        }

        #[tokio::test]
        async fn create_in_progress_then_complete() {
            let stacks = stacks_rule(&["CREATE_IN_PROGRESS", "CREATE_IN_PROGRESS", "CREATE_COMPLETE"]);
            let events = events_rule(vec![
                event(1, "s", "AWS::CloudFormation::Stack", "CREATE_IN_PROGRESS", Some("User Initiated")),
                event(2, "Queue", "AWS::SQS::Queue", "CREATE_IN_PROGRESS", None),
                event(3, "Queue", "AWS::SQS::Queue", "CREATE_COMPLETE", None),
            ]);
            let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, &[&stacks, &events]);
            let mut seen = Seen::default();
            let done = wait(&cfn, "s", "s", Op::Create, &quick(5_000), &mut seen).await.unwrap();
            assert_eq!(done.unwrap().status, StackStatus::CreateComplete);
            assert_eq!(seen.statuses, vec!["CREATE_IN_PROGRESS", "CREATE_IN_PROGRESS", "CREATE_COMPLETE"]);
            // Each event shown once, oldest first, however often it was polled.
            assert_eq!(seen.events, vec!["s CREATE_IN_PROGRESS", "Queue CREATE_IN_PROGRESS", "Queue CREATE_COMPLETE"]);
        }

        #[tokio::test]
        async fn rollback_complete_names_each_failed_resource() {
            let stacks = stacks_rule(&["CREATE_IN_PROGRESS", "ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE"]);
            let events = events_rule(vec![
                event(1, "s", "AWS::CloudFormation::Stack", "CREATE_IN_PROGRESS", Some("User Initiated")),
                event(2, "Bucket", "AWS::S3::Bucket", "CREATE_FAILED", Some("swarm1-archive already exists")),
                event(
                    3,
                    "Alb",
                    "AWS::ElasticLoadBalancingV2::LoadBalancer",
                    "CREATE_FAILED",
                    Some("Resource creation cancelled"),
                ),
                event(
                    4,
                    "s",
                    "AWS::CloudFormation::Stack",
                    "ROLLBACK_IN_PROGRESS",
                    Some("The following resource(s) failed to create: [Bucket, Alb]."),
                ),
                event(5, "s", "AWS::CloudFormation::Stack", "ROLLBACK_COMPLETE", None),
            ]);
            let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, &[&stacks, &events]);
            let err = wait(&cfn, "s", "swarm1", Op::Create, &quick(5_000), &mut Seen::default()).await.unwrap_err();
            let WaitError::Failed { status, failures, .. } = &err else { panic!("{err}") };
            assert_eq!(status, "ROLLBACK_COMPLETE");
            assert_eq!(failures.len(), 2, "{failures:?}");
            assert_eq!(
                (failures[0].logical_id.as_str(), failures[0].reason.as_str()),
                ("Bucket", "swarm1-archive already exists")
            );
            let text = err.to_string();
            assert!(text.contains("stack swarm1 did not create: it ended ROLLBACK_COMPLETE"), "{text}");
            assert!(
                text.contains("failed: Bucket (AWS::S3::Bucket) CREATE_FAILED: swarm1-archive already exists"),
                "{text}"
            );
        }

        /// Events are paged (newest first): the failure and the operation's start are on
        /// the second page, an older operation's failure on the third. The report reads
        /// to the operation's start, never stops at the first page, never reaches past it.
        #[tokio::test]
        async fn failures_are_read_across_pages_back_to_the_operations_start() {
            let stacks = stacks_rule(&["ROLLBACK_COMPLETE"]);
            let page = |evs: Vec<StackEvent>, next: Option<&str>| {
                let mut evs = evs;
                evs.reverse();
                DescribeStackEventsOutput::builder()
                    .set_stack_events(Some(evs))
                    .set_next_token(next.map(str::to_string))
                    .build()
            };
            let p1 = mock!(Client::describe_stack_events).match_requests(|r| r.next_token().is_none()).then_output(
                move || {
                    page(
                        vec![
                            event(
                                20,
                                "s",
                                "AWS::CloudFormation::Stack",
                                "ROLLBACK_IN_PROGRESS",
                                Some("failed: [Bucket]"),
                            ),
                            event(21, "s", "AWS::CloudFormation::Stack", "ROLLBACK_COMPLETE", None),
                        ],
                        Some("p2"),
                    )
                },
            );
            let p2 = mock!(Client::describe_stack_events).match_requests(|r| r.next_token() == Some("p2")).then_output(
                move || {
                    page(
                        vec![
                            event(10, "s", "AWS::CloudFormation::Stack", "CREATE_IN_PROGRESS", Some("User Initiated")),
                            event(11, "Bucket", "AWS::S3::Bucket", "CREATE_FAILED", Some("BucketAlreadyExists")),
                        ],
                        Some("p3"),
                    )
                },
            );
            let p3 = mock!(Client::describe_stack_events).match_requests(|r| r.next_token() == Some("p3")).then_output(
                move || {
                    page(vec![event(1, "Old", "AWS::SQS::Queue", "CREATE_FAILED", Some("an older operation"))], None)
                },
            );
            let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, &[&stacks, &p1, &p2, &p3]);
            let found = failures(&cfn, "s").await.unwrap();
            let ids: Vec<&str> = found.iter().map(|f| f.logical_id.as_str()).collect();
            assert!(ids.contains(&"Bucket"), "the failure on page 2 is found: {found:?}");
            assert!(!ids.contains(&"Old"), "an older operation's failure is not reported: {found:?}");
            assert_eq!(p3.num_calls(), 0, "no page beyond the operation's start is read");
        }

        #[tokio::test]
        async fn create_that_deletes_itself_on_failure_is_a_failure() {
            // OnFailure=DELETE: the stack goes away; that is not success for a create.
            let stacks = stacks_rule(&["CREATE_IN_PROGRESS", "DELETE_IN_PROGRESS", "GONE"]);
            let events = events_rule(vec![event(
                2,
                "Asg",
                "AWS::AutoScaling::AutoScalingGroup",
                "CREATE_FAILED",
                Some("AMI not found"),
            )]);
            let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, &[&stacks, &events]);
            let err = wait(&cfn, "s", "s", Op::Create, &quick(5_000), &mut Seen::default()).await.unwrap_err();
            assert!(
                err.to_string().contains("Asg (AWS::AutoScaling::AutoScalingGroup) CREATE_FAILED: AMI not found"),
                "{err}"
            );
        }

        #[tokio::test]
        async fn delete_failed_names_the_resource() {
            let stacks = stacks_rule(&["DELETE_IN_PROGRESS", "DELETE_FAILED"]);
            let events = events_rule(vec![
                event(1, "s", "AWS::CloudFormation::Stack", "DELETE_IN_PROGRESS", Some("User Initiated")),
                event(
                    2,
                    "Bucket",
                    "AWS::S3::Bucket",
                    "DELETE_FAILED",
                    Some("The bucket you tried to delete is not empty"),
                ),
            ]);
            let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, &[&stacks, &events]);
            let err = wait(&cfn, "s", "s", Op::Delete, &quick(5_000), &mut Seen::default()).await.unwrap_err();
            assert!(matches!(&err, WaitError::Failed { status, .. } if status == "DELETE_FAILED"), "{err}");
            assert!(
                err.to_string()
                    .contains("Bucket (AWS::S3::Bucket) DELETE_FAILED: The bucket you tried to delete is not empty"),
                "{err}"
            );
        }

        #[tokio::test]
        async fn delete_ends_when_the_stack_is_gone() {
            let stacks = stacks_rule(&["DELETE_IN_PROGRESS", "GONE"]);
            let events = events_rule(vec![]);
            let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, &[&stacks, &events]);
            let mut seen = Seen::default();
            assert!(wait(&cfn, "s", "s", Op::Delete, &quick(5_000), &mut seen).await.unwrap().is_none());
            assert_eq!(seen.statuses, vec!["DELETE_IN_PROGRESS", "DELETE_COMPLETE"]);
        }

        #[tokio::test]
        async fn a_stack_that_never_settles_times_out() {
            let stacks = mock!(Client::describe_stacks).then_output(|| {
                DescribeStacksOutput::builder()
                    .stacks(
                        Stack::builder()
                            .stack_name("s")
                            .stack_status(StackStatus::CreateInProgress)
                            .creation_time(DateTime::from_secs(0))
                            .build(),
                    )
                    .build()
            });
            let events = events_rule(vec![]);
            let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, &[&stacks, &events]);
            let started = std::time::Instant::now();
            let err = wait(&cfn, "s", "s", Op::Create, &quick(50), &mut Seen::default()).await.unwrap_err();
            assert!(matches!(err, WaitError::Timeout { ref status, .. } if status == "CREATE_IN_PROGRESS"), "{err}");
            assert!(started.elapsed() < Duration::from_secs(5));
            assert!(err.to_string().contains("describe-stack-events --stack-name s"), "{err}");
        }
    }
}
