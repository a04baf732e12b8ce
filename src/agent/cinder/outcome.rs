//! What a run says of what it made: the snapshots' names and labels
//! (within Cinder's limit), how consistent they are, and each snapshot's
//! line in the report.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// How consistent a run's snapshots are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// The datastore hook quiesced the database.
    Application,
    /// Datastore `none`: the filesystems were frozen, nothing more.
    Filesystem,
    /// The hook failed and `on_hook_failure = "crash-consistent"` allowed it.
    Crash,
}

impl Consistency {
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Application => "application",
            Consistency::Filesystem => "filesystem",
            Consistency::Crash => "crash",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    pub id: String,
    pub name: String,
    pub volume_id: String,
    pub mount: PathBuf,
    pub status: String,
}

/// Cinder's limit for a metadata key or value.
pub(super) const METADATA_MAX: usize = 255;

/// Cuts to Cinder's 255, on a character boundary.
pub(super) fn clip(value: &str) -> String {
    if value.len() <= METADATA_MAX {
        return value.to_string();
    }
    let mut end = METADATA_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

pub(super) fn snapshot_name(prefix: &str, host: &str, mount: &Path, run: &str) -> String {
    let slug: String = mount
        .display()
        .to_string()
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    clip(&format!("{prefix}-{host}-{slug}-{run}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_clipping() {
        assert_eq!(
            snapshot_name(
                "volsnap",
                "db1",
                Path::new("/var/lib/my sql"),
                "20261125T224600Z-42"
            ),
            "volsnap-db1-var_lib_my_sql-20261125T224600Z-42"
        );
        let long = "é".repeat(200);
        let c = clip(&long);
        assert!(c.len() <= 255 && c.chars().all(|ch| ch == 'é'));
    }
}
