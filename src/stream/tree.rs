//! The manifests over a backup's segments: one SLO when the segments fit in
//! one (Swift's `max_manifest_segments`, 1000 by default), else a tree.
//!
//! Segments are small, so that a backup's memory stays small (they are held
//! whole until Swift has them, for the retries: see `segments`), and a
//! stream longer than `max_manifest_segments × segment_size` (11.7 GiB with the
//! defaults) needs more segments than one SLO may list. An SLO's segments
//! may themselves be SLOs, so the segments are grouped `max` at a time into
//! sub-manifests in the segments container (`<manifest>/seg/L1-00000000`,
//! …), those `max` at a time into the next level, and so on until one level
//! fits in the backup's own manifest. Swift joins the levels on a GET (up to
//! ten: [`MAX_LEVELS`]); with the defaults two levels hold 1000 × 1000 × 12
//! MiB = 11 TiB, more than one SLO of 1000 segments of Swift's largest
//! object (`max_file_size`, 5 GiB) can hold.
//!
//! Every entry carries its size and ETag, so Swift checks each sub-manifest
//! against its segments when it is written, and the backup's manifest
//! against the sub-manifests; the manifest is written last, so a backup
//! that failed half-way never looks complete.

use super::naming::BackupName;
use super::naming::SegmentInfo;

/// How many levels of manifests Swift follows when it serves a GET
/// (`max_slo_recursion_depth` in Swift's `slo` middleware): the backup's
/// manifest and nine levels below it.
pub const MAX_LEVELS: u32 = 10;

/// One entry of a manifest: a segment, or a sub-manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The object's name in the segments container.
    pub object: String,
    /// A segment's MD5; a sub-manifest's SLO ETag (the MD5 of its entries'
    /// ETags), which is what Swift answers for it.
    pub etag: String,
    /// A sub-manifest's: the sum of its entries'.
    pub size: u64,
}

/// A manifest to write into the segments container before the next level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubManifest {
    pub object: String,
    pub entries: Vec<Entry>,
}

/// What to write, in order: `subs` (lowest level first), then the backup's
/// manifest listing `top`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub subs: Vec<SubManifest>,
    pub top: Vec<Entry>,
    /// The segments' names, in order.
    segments: Vec<String>,
}

impl Tree {
    /// The tree over `segments` (in order), at most `max` entries per
    /// manifest (≥ 2).
    pub fn new(name: &BackupName, segments: &[SegmentInfo], max: u32) -> Tree {
        let max = max.max(2) as usize;
        let mut level: Vec<Entry> = segments
            .iter()
            .map(|s| Entry {
                object: name.segment(s.index),
                etag: s.md5.clone(),
                size: s.size,
            })
            .collect();
        let names = level.iter().map(|e| e.object.clone()).collect();
        let mut subs = Vec::new();
        let mut depth = 0;
        while level.len() > max {
            depth += 1;
            let mut next = Vec::with_capacity(level.len().div_ceil(max));
            for (i, group) in level.chunks(max).enumerate() {
                let sub = SubManifest {
                    object: name.sub_manifest(depth, i as u32),
                    entries: group.to_vec(),
                };
                next.push(Entry {
                    object: sub.object.clone(),
                    etag: slo_etag(&sub.entries),
                    size: sub.entries.iter().map(|e| e.size).sum(),
                });
                subs.push(sub);
            }
            level = next;
        }
        Tree {
            subs,
            top: level,
            segments: names,
        }
    }

    /// The backup's manifest's ETag, as Swift will answer it.
    pub fn etag(&self) -> String {
        slo_etag(&self.top)
    }

    /// Every object the tree names in the segments container: the segments
    /// and the sub-manifests.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        self.segments
            .iter()
            .map(String::as_str)
            .chain(self.subs.iter().map(|s| s.object.as_str()))
    }
}

/// The most segments a backup may have with `max` entries per manifest.
pub fn max_segments_total(max: u32) -> u32 {
    u64::from(max.max(2))
        .checked_pow(MAX_LEVELS)
        .map_or(u32::MAX, |n| n.min(u64::from(u32::MAX)) as u32)
}

/// An SLO's ETag: the MD5 of its entries' ETags (hex) concatenated.
fn slo_etag(entries: &[Entry]) -> String {
    use md5::{Digest, Md5};
    let mut md5 = Md5::new();
    for e in entries {
        md5.update(e.etag.as_bytes());
    }
    super::hex(&md5.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(n: u32) -> Vec<SegmentInfo> {
        (0..n)
            .map(|i| SegmentInfo {
                index: i,
                size: 10 + u64::from(i),
                md5: format!("{:032x}", i * 7919),
            })
            .collect()
    }

    fn name() -> BackupName {
        BackupName::new("p", "h", "2026-12-03T17:00:00Z".parse().unwrap()).unwrap()
    }

    /// Walks the tree down from `top` and returns the segments it reaches,
    /// in order, checking every level's size and ETag on the way.
    fn leaves(tree: &Tree, entries: &[Entry], out: &mut Vec<String>, max: usize) {
        assert!(entries.len() <= max, "{} entries > {max}", entries.len());
        for e in entries {
            match tree.subs.iter().find(|s| s.object == e.object) {
                Some(sub) => {
                    assert_eq!(e.size, sub.entries.iter().map(|x| x.size).sum::<u64>());
                    assert_eq!(e.etag, slo_etag(&sub.entries));
                    leaves(tree, &sub.entries, out, max);
                }
                None => out.push(e.object.clone()),
            }
        }
    }

    #[test]
    fn a_tree_lists_every_segment_once_in_order_within_max() {
        let name = name();
        for (n, max, levels) in [
            (1, 3, 0),
            (3, 3, 0),
            (4, 3, 1),
            (9, 3, 1),
            (10, 3, 2),
            (28, 3, 3),
            (1000, 1000, 0),
            (1001, 1000, 1),
        ] {
            let segs = segments(n);
            let tree = Tree::new(&name, &segs, max);
            let mut got = Vec::new();
            leaves(&tree, &tree.top, &mut got, max as usize);
            let want: Vec<String> = segs.iter().map(|s| name.segment(s.index)).collect();
            assert_eq!(got, want, "{n} segments, {max} per manifest");
            let depth = tree
                .subs
                .iter()
                .map(|s| {
                    s.object.split("/seg/L").nth(1).unwrap()[..1]
                        .parse::<u32>()
                        .unwrap()
                })
                .max()
                .unwrap_or(0);
            assert_eq!(depth, levels, "{n} segments, {max} per manifest");
            // Lower levels are written first: each sub-manifest's entries
            // exist before it.
            for (i, sub) in tree.subs.iter().enumerate() {
                for e in &sub.entries {
                    if let Some(j) = tree.subs.iter().position(|s| s.object == e.object) {
                        assert!(j < i, "{} before {}", e.object, sub.object);
                    }
                }
            }
            let mut objects: Vec<&str> = tree.objects().collect();
            let count = objects.len();
            objects.sort_unstable();
            objects.dedup();
            assert_eq!(objects.len(), count, "an object named twice");
            assert_eq!(count, n as usize + tree.subs.len());
            let total: u64 = tree.top.iter().map(|e| e.size).sum();
            assert_eq!(total, segs.iter().map(|s| s.size).sum::<u64>());
        }
    }

    #[test]
    fn one_level_is_a_plain_slo_with_swifts_etag() {
        let segs = segments(2);
        let tree = Tree::new(&name(), &segs, 1000);
        assert!(tree.subs.is_empty());
        // Swift's SLO ETag: MD5 of the concatenated hex MD5s.
        let concat = format!("{}{}", segs[0].md5, segs[1].md5);
        assert_eq!(
            tree.etag(),
            crate::openstack::swift::md5_hex(concat.as_bytes())
        );
    }

    /// The defaults (12 MiB segments, 1000 per manifest) hold any stream one
    /// SLO of Swift's largest objects could (1000 × 5 GiB), and so does every
    /// allowed segment size against every `max_manifest_segments` ≥ 10.
    #[test]
    fn the_levels_cover_what_swift_allows_one_slo() {
        let max_file_size: u64 = 5 << 30;
        for (max, segment) in [
            (1000u32, 12u64 << 20),
            (10, 1 << 20),
            (100, 1 << 20),
            (1000, 1 << 20),
        ] {
            let covered = u64::from(max_segments_total(max)).saturating_mul(segment);
            assert!(
                covered >= u64::from(max) * max_file_size,
                "{max} per manifest, {segment}-byte segments: {covered}"
            );
        }
        assert_eq!(max_segments_total(1000), u32::MAX);
        assert_eq!(max_segments_total(2), 1024);
    }
}
