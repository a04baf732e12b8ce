//! Where a backup's objects live in Swift.
//!
//! The manifest (the SLO, the object people see) is
//! `<prefix>/<host>/<UTC time>` in the configured container, e.g.
//! `volsnap/db1/20261125T224600Z` in `volsnap`. Its segments are
//! `<manifest>/seg/00000000`, `…/00000001`, … in the container
//! `<container>_segments`.
//!
//! Why a second container rather than a prefix in the same one: it is what
//! `swift upload` itself does for large objects, so the standard tools behave
//! as people expect. `swift list volsnap` and a listing by `<prefix>/<host>/`
//! (what retention and `volsnap list` do) show backups only, not thousands of
//! segments beside them, and need no delimiter tricks; a segment can never be
//! mistaken for a backup. `swift delete volsnap <name>` removes the manifest
//! and its segments together (SLO delete), and leftovers of a failed backup
//! are found by listing `<container>_segments` with the manifest's name as
//! prefix. The cost is one more container to create (with
//! `create_container`) and to grant access to.
//!
//! The time is UTC to the second, so names sort in time order and a host's
//! backups are one prefix listing; the run lock keeps two backups of one host
//! from starting in the same second. Segment numbers have 8 digits, so they
//! sort in order far beyond Swift's default 1000 segments per SLO.

use crate::time::Timestamp;
use anyhow::{bail, Result};
use serde::Serialize;

/// A segment that is in Swift: what the SLO manifest lists. `md5` is
/// volsnap's MD5 of what it sent, which Swift's answer matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentInfo {
    pub index: u32,
    pub size: u64,
    pub md5: String,
}

/// Swift's longest container name.
const MAX_CONTAINER: usize = 256;

/// The container that holds the segments of the backups in `container`.
pub fn segments_container(container: &str) -> Result<String> {
    let name = format!("{container}_segments");
    if name.len() > MAX_CONTAINER {
        bail!(
            "swift.container {container:?} is too long for its segments container \
             {name:?} ({MAX_CONTAINER} characters at most)"
        );
    }
    Ok(name)
}

/// One backup's name: prefix, host, time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupName {
    /// `swift.prefix`; may be empty.
    pub prefix: String,
    pub host: String,
    /// Whole seconds: what the name can hold.
    pub created: Timestamp,
}

impl BackupName {
    /// `host` is the machine's hostname; it must not contain `/`.
    pub fn new(prefix: &str, host: &str, created: Timestamp) -> Result<BackupName> {
        if host.is_empty() || host.contains('/') || host.chars().any(char::is_control) {
            bail!("hostname {host:?} cannot be part of an object name");
        }
        let created = Timestamp::from_second(created.as_second())?;
        Ok(BackupName {
            prefix: prefix.to_string(),
            host: host.to_string(),
            created,
        })
    }

    /// What to list (in the backups container) to find this host's backups.
    pub fn host_prefix(prefix: &str, host: &str) -> String {
        if prefix.is_empty() {
            format!("{host}/")
        } else {
            format!("{prefix}/{host}/")
        }
    }

    /// The manifest's object name.
    pub fn manifest(&self) -> String {
        format!(
            "{}{}",
            BackupName::host_prefix(&self.prefix, &self.host),
            self.created.compact()
        )
    }

    /// Segment `index`'s object name, in [`segments_container`].
    pub fn segment(&self, index: u32) -> String {
        format!("{}{index:08}", self.segment_prefix())
    }

    /// A sub-manifest's object name (see `tree`), in [`segments_container`]:
    /// beside the segments, under the same prefix, so whatever finds or
    /// deletes a run's segments finds and deletes these with them.
    pub fn sub_manifest(&self, level: u32, index: u32) -> String {
        format!("{}L{level}-{index:08}", self.segment_prefix())
    }

    /// Whether an object of the segments container is a sub-manifest.
    pub fn is_sub_manifest(object: &str) -> bool {
        object
            .rsplit_once("/seg/")
            .is_some_and(|(_, rest)| rest.starts_with('L'))
    }

    /// What to list in the segments container to find this backup's
    /// segments (after a failure, to delete them).
    pub fn segment_prefix(&self) -> String {
        format!("{}/seg/", self.manifest())
    }

    /// The body of the manifest PUT (`?multipart-manifest=put`): each
    /// segment's `/container/object` path, MD5 and size, in order. Swift
    /// checks every one against the segment it finds before it accepts.
    pub fn slo_manifest(&self, segments_container: &str, segments: &[SegmentInfo]) -> String {
        #[derive(Serialize)]
        struct Entry<'a> {
            path: String,
            etag: &'a str,
            size_bytes: u64,
        }
        let entries: Vec<Entry> = segments
            .iter()
            .map(|s| Entry {
                path: format!("/{segments_container}/{}", self.segment(s.index)),
                etag: &s.md5,
                size_bytes: s.size,
            })
            .collect();
        serde_json::to_string(&entries).expect("serializing strings and numbers")
    }

    /// The name back from a manifest's object name found by listing
    /// [`BackupName::host_prefix`]; `None` for anything volsnap did not name.
    pub fn parse(prefix: &str, object: &str) -> Option<BackupName> {
        let rest = if prefix.is_empty() {
            object
        } else {
            object.strip_prefix(prefix)?.strip_prefix('/')?
        };
        let (host, time) = rest.split_once('/')?;
        if host.is_empty() || time.len() != 16 {
            return None;
        }
        let created = Timestamp::parse_compact(time)?;
        Some(BackupName {
            prefix: prefix.to_string(),
            host: host.to_string(),
            created,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn manifest_and_segment_names() {
        let name = BackupName::new("volsnap", "db1", at("2026-11-25T22:46:00.75Z")).unwrap();
        assert_eq!(name.manifest(), "volsnap/db1/20261125T224600Z");
        assert_eq!(name.segment(0), "volsnap/db1/20261125T224600Z/seg/00000000");
        assert_eq!(
            name.segment(1234),
            "volsnap/db1/20261125T224600Z/seg/00001234"
        );
        assert_eq!(BackupName::host_prefix("volsnap", "db1"), "volsnap/db1/");
        let bare = BackupName::new("", "db1", at("2026-01-02T03:04:05Z")).unwrap();
        assert_eq!(bare.manifest(), "db1/20260102T030405Z");
        assert_eq!(
            name.sub_manifest(2, 7),
            "volsnap/db1/20261125T224600Z/seg/L2-00000007"
        );
        assert!(BackupName::is_sub_manifest(&name.sub_manifest(1, 0)));
        assert!(!BackupName::is_sub_manifest(&name.segment(0)));
        assert_eq!(segments_container("volsnap").unwrap(), "volsnap_segments");
        assert!(segments_container(&"c".repeat(250)).is_err());
    }

    #[test]
    fn slo_manifest_lists_segments_in_order() {
        let name = BackupName::new("volsnap", "db1", at("2026-11-25T22:46:00Z")).unwrap();
        let segments = [
            SegmentInfo {
                index: 0,
                size: 1048576,
                md5: "0cc175b9c0f1b6a831c399e269772661".into(),
            },
            SegmentInfo {
                index: 1,
                size: 7,
                md5: "92eb5ffee6ae2fec3ad71c777531578f".into(),
            },
        ];
        assert_eq!(
            name.slo_manifest("volsnap_segments", &segments),
            "[{\"path\":\"/volsnap_segments/volsnap/db1/20261125T224600Z/seg/00000000\",\
             \"etag\":\"0cc175b9c0f1b6a831c399e269772661\",\"size_bytes\":1048576},\
             {\"path\":\"/volsnap_segments/volsnap/db1/20261125T224600Z/seg/00000001\",\
             \"etag\":\"92eb5ffee6ae2fec3ad71c777531578f\",\"size_bytes\":7}]"
        );
    }

    #[test]
    fn names_parse_back() {
        for prefix in ["volsnap", "a/b", ""] {
            let name = BackupName::new(prefix, "db-1.example", at("2026-11-25T22:46:00Z")).unwrap();
            assert_eq!(BackupName::parse(prefix, &name.manifest()), Some(name));
        }
        assert_eq!(BackupName::parse("volsnap", "volsnap/db1/notatime"), None);
        assert_eq!(
            BackupName::parse("volsnap", "volsnap/db1/20261125T224600Z/seg/00000000"),
            None
        );
        assert_eq!(
            BackupName::parse("volsnap", "other/db1/20261125T224600Z"),
            None
        );
    }

    #[test]
    fn names_sort_in_time_order() {
        let a = BackupName::new("p", "h", at("2026-09-30T23:59:59Z")).unwrap();
        let b = BackupName::new("p", "h", at("2026-10-01T00:00:00Z")).unwrap();
        assert!(a.manifest() < b.manifest());
        assert!(a.segment(9) < a.segment(10));
    }

    #[test]
    fn a_slash_in_the_host_is_refused() {
        assert!(BackupName::new("p", "a/b", Timestamp::UNIX_EPOCH).is_err());
        assert!(BackupName::new("p", "", Timestamp::UNIX_EPOCH).is_err());
    }
}
