//! The Swift strategy's data path, without any HTTP.
//!
//! Backup: the hook's stdout → SHA-256 and byte count of the plain stream →
//! compression (zstd, gzip or none) → age encryption (when recipients are
//! configured) → segments of exactly `segment_size` bytes → up to
//! `concurrency` uploads in parallel, each checked against its MD5 → the
//! manifests over them (one SLO, or a [`Tree`] of them past Swift's
//! `max_manifest_segments`).
//!
//! Restore and verify: the stored stream (a GET of the SLO) → age decryption
//! → decompression → SHA-256 and size compared with the manifest's metadata →
//! the hook's stdin (or a sink).
//!
//! The uploads and downloads are parameters (a closure and an `impl Read`),
//! so everything here is tested with in-memory stores; `openstack::swift`
//! does the HTTP and `agent::swift` knows the order of the steps.
//!
//! What is stored is a standard file: the concatenated segments are an age
//! file wrapping a zstd (or gzip) stream, so `swift download`, `age -d` and
//! `zstd -d` restore a backup by hand.

mod backup;
mod compress;
mod crypt;
mod etags;
mod fill;
mod meta;
mod naming;
pub mod object;
mod pool;
mod progress;
mod restore;
mod segments;
mod tree;

pub use backup::{backup, BackupFailure, BackupPlan, BackupSummary};
pub use compress::compression_name;
pub use crypt::{Identities, Recipients};
pub use meta::{BackupMeta, Encryption, META_PREFIX};
pub use naming::{segments_container, BackupName};
pub use progress::{Figures, Progress};
pub use restore::{restore_into, Verified, HOLD_BACK};
pub use segments::{Segment, SegmentBody, SegmentInfo, DEFAULT_MAX_SEGMENTS};
pub use tree::{max_segments_total, Entry as ManifestEntry, SubManifest, Tree, MAX_LEVELS};

/// Lower-case hex of a digest, as Swift writes ETags and `sha256sum` prints.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Serializes a `Duration` as seconds (a float), for the `--json` report.
pub(crate) fn serialize_secs<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
