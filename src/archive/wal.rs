//! PostgreSQL's WAL file names: what `archive_command` is given and
//! `restore_command` asked for, and the order of segments on a timeline.
//!
//! A segment is `TTTTTTTTLLLLLLLLSSSSSSSS` (timeline, then the segment
//! number as log id and segment within it, in hex); beside segments the
//! archive holds `TTTTTTTT.history` (timeline switches), `….partial` (the
//! last, incomplete segment of a timeline that was left at a promotion)
//! and `….XXXXXXXX.backup` (a base backup's label).

use std::fmt;

/// One WAL segment on one timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    /// The segment number: log id × segments per log id + segment.
    pub number: u64,
}

impl Segment {
    /// Parses a 24-hex-digit segment name for a segment size of `seg_size` bytes.
    pub fn parse(name: &str, seg_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = per_log(seg_size);
        if seg >= per_log {
            return None;
        }
        Some(Segment {
            timeline,
            number: log * per_log + seg,
        })
    }

    pub fn name(&self, seg_size: u64) -> String {
        let per_log = per_log(seg_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_log,
            self.number % per_log
        )
    }

    pub fn next(&self) -> Segment {
        Segment {
            timeline: self.timeline,
            number: self.number + 1,
        }
    }
}

/// Segments per log id: 2^32 bytes of WAL each.
fn per_log(seg_size: u64) -> u64 {
    (1u64 << 32) / seg_size.max(1)
}

/// Whether `size` can be a WAL segment size: a power of two from 1 MiB to
/// 1 GiB (initdb's `--wal-segsize`).
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

/// What kind of file `archive_command` may hand over; anything else is
/// refused, so that no other file can be slipped into the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Segment,
    History,
    Partial,
    BackupLabel,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Segment => "segment",
            Kind::History => "timeline history file",
            Kind::Partial => "partial segment",
            Kind::BackupLabel => "backup history file",
        })
    }
}

fn hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// The kind of a WAL archive file name, `None` for any other name.
pub fn kind(name: &str) -> Option<Kind> {
    if hex(name, 24) {
        return Some(Kind::Segment);
    }
    if let Some(tli) = name.strip_suffix(".history") {
        return hex(tli, 8).then_some(Kind::History);
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return hex(seg, 24).then_some(Kind::Partial);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        let (seg, offset) = rest.split_once('.')?;
        return (hex(seg, 24) && hex(offset, 8)).then_some(Kind::BackupLabel);
    }
    None
}

/// The largest file a WAL archive holds (a 1 GiB segment); anything
/// larger in the spool is not PostgreSQL's.
pub const MAX_FILE: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    const MIB16: u64 = 16 << 20;

    #[test]
    fn names_and_order() {
        let s = Segment::parse("0000000100000000000000FF", MIB16).unwrap();
        assert_eq!(s.timeline, 1);
        assert_eq!(s.number, 255);
        assert_eq!(s.next().name(MIB16), "000000010000000100000000");
        assert_eq!(s.name(MIB16), "0000000100000000000000FF");
        // 16 MiB segments: 256 per log id; 0x100 is not a segment there.
        assert!(Segment::parse("000000010000000000000100", MIB16).is_none());
        let big = Segment::parse("000000020000000300000001", 1 << 30).unwrap();
        assert_eq!(big.number, 3 * 4 + 1);
        assert_eq!(big.next().name(1 << 30), "000000020000000300000002");
        assert!(Segment::parse("00000001000000000000000g", MIB16).is_none());
    }

    #[test]
    fn only_wal_names_are_accepted() {
        assert_eq!(kind("000000010000000000000003"), Some(Kind::Segment));
        assert_eq!(kind("00000002.history"), Some(Kind::History));
        assert_eq!(
            kind("000000010000000000000003.partial"),
            Some(Kind::Partial)
        );
        assert_eq!(
            kind("000000010000000000000002.00000028.backup"),
            Some(Kind::BackupLabel)
        );
        for bad in [
            "",
            "../etc/shadow",
            "00000001000000000000000a",
            ".000000010000000000000003",
            "000000010000000000000003.tmp",
            "00000002.history.x",
            "/00000002.history",
        ] {
            assert_eq!(kind(bad), None, "{bad}");
        }
        assert!(valid_segment_size(MIB16));
        assert!(!valid_segment_size(3 << 20));
    }
}
