//! What the archiving service reports of its work, as `--json` prints it
//! and the metrics file counts it.

use serde::Serialize;

/// What the service has done since it started (or `--once` did).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub uploaded: u64,
    pub already_there: u64,
    pub failed: u64,
    /// The newest file shipped (uploaded or found there).
    pub last_shipped: Option<String>,
    /// Files still in the spool when it stopped.
    pub waiting: usize,
}
