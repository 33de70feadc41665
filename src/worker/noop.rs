//! The built-in `noop` kind: completes at once with an empty result. For
//! smoke tests of a deployment and for measuring the queue's own overhead.

use super::{Handler, JobContext};
use crate::queue::Outcome;

/// Completes every job at once.
pub struct NoopHandler;

impl NoopHandler {
    /// The job kind it handles.
    pub const KIND: &'static str = "noop";
}

impl Handler for NoopHandler {
    fn kind(&self) -> &str {
        Self::KIND
    }

    async fn handle(&self, _ctx: JobContext) -> Outcome {
        Outcome::Completed {
            result: serde_json::Value::Null,
            usage: None,
        }
    }
}
