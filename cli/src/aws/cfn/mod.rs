//! CloudFormation: stacks as plain data ([`stacks`]: read, list, create, delete) and a
//! bounded waiter that follows a stack to a terminal state, streaming its events and
//! naming every failed resource ([`wait`](mod@wait)).

pub mod stacks;
pub mod wait;

pub use stacks::{create, delete, get, list_tyrell, template, update_parameters, StackInfo, StackSpec, StackStatus};
pub use wait::{wait, Event, Op, Progress, WaitError, WaitOptions};
