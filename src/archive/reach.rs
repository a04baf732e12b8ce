//! What a `restore --until` can reach: the archive's window, as `volsnap
//! list` shows it, for either kind of log.

use serde::Serialize;

/// The archive's window.
#[derive(Debug, Default, Serialize)]
pub struct Window {
    /// What is archived: `WAL` or `binlog`.
    pub log: &'static str,
    /// The oldest base's end: the earliest time a restore can reach.
    pub from: Option<String>,
    /// When the last segment (binary log) of the unbroken archive was written.
    pub to: Option<String>,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    /// The first missing segment, when later ones are archived.
    pub gap: Option<String>,
    pub archived_files: usize,
    /// Why there is no window, when there is none.
    pub note: Option<String>,
}
