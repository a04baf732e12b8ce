//! MariaDB's binary log files: their names (`BASE.NNNNNN`, numbered in the
//! order the server wrote them, one more at every rotation or restart) and
//! the little of their format the archive reads: when a file was opened,
//! and whether it holds any transaction yet.
//!
//! A file is 4 magic bytes, then events; each event starts with a 19-byte
//! header: timestamp (4, seconds), type (1), server id (4), event size (4),
//! position of the next event (4), flags (2), all little-endian.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::time::Timestamp;

const MAGIC: &[u8; 4] = b"\xfebin";
const HEADER: usize = 19;

/// A binary log file's name split into its base and number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name {
    pub base: String,
    pub number: u64,
    /// The digits as written (at least six; more past 999999).
    width: usize,
}

impl Name {
    pub fn parse(name: &str) -> Option<Name> {
        let (base, digits) = name.rsplit_once('.')?;
        let valid_base = !base.is_empty()
            && !base.starts_with('.')
            && base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_base || digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Name {
            base: base.to_string(),
            number: digits.parse().ok()?,
            width: digits.len(),
        })
    }

    pub fn with_number(&self, number: u64) -> Name {
        Name {
            base: self.base.clone(),
            number,
            width: 6,
        }
    }

    pub fn next(&self) -> Name {
        self.with_number(self.number + 1)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{:0w$}",
            self.base,
            self.number,
            w = self.width.max(6)
        )
    }
}

/// Events every new file starts with, before any transaction: format
/// description, rotate, stop, heartbeat, MySQL's previous-GTIDs, MariaDB's
/// binlog checkpoint, GTID list and start-encryption.
const PREAMBLE: &[u8] = &[15, 4, 3, 27, 35, 161, 163, 164];

/// What the start of a binary log file says.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// When the server opened it (its format description event's time).
    pub opened: Timestamp,
    /// Whether an event other than the preamble lies before `end`.
    pub has_content: bool,
}

/// Reads the head of `path` up to `end` (the server's write position in
/// it: what lies before is whole events). Encrypted events after a
/// start-encryption event cannot be told apart and count as content.
pub fn head(path: &Path, end: u64) -> Result<Head> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    // The preamble is a few hundred bytes; a GTID list with many domains more.
    let mut buf = Vec::new();
    file.by_ref()
        .take(end.min(1 << 20))
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    parse_head(&buf).with_context(|| format!("{}", path.display()))
}

fn parse_head(buf: &[u8]) -> Result<Head> {
    if buf.len() < 4 + HEADER || &buf[..4] != MAGIC {
        bail!("not a binary log file (no magic number and first event)");
    }
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    let opened = Timestamp::from_second(i64::from(u32_at(4))).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut at = 4;
    let mut encrypted = false;
    while at + HEADER <= buf.len() {
        let kind = buf[at + 4];
        let size = u32_at(at + 9) as usize;
        if encrypted || !PREAMBLE.contains(&kind) {
            return Ok(Head {
                opened,
                has_content: true,
            });
        }
        if size < HEADER {
            bail!("event at {at} claims {size} bytes");
        }
        encrypted = kind == 164;
        at += size;
    }
    Ok(Head {
        opened,
        has_content: false,
    })
}

/// A base's binary log position, as mariadb-backup records it in the
/// backup (`xtrabackup_binlog_info`; `mariadb_backup_binlog_info` from
/// MariaDB 11): `FILE<TAB>POSITION[<TAB>GTID]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub file: Name,
    pub pos: u64,
}

pub const POSITION_FILES: &[&str] = &["mariadb_backup_binlog_info", "xtrabackup_binlog_info"];

pub fn parse_position(text: &str) -> Option<Position> {
    let mut fields = text.split_whitespace();
    let file = Name::parse(fields.next()?)?;
    let pos = fields.next()?.parse().ok()?;
    Some(Position { file, pos })
}

/// The position recorded in a prepared mariadb-backup directory.
pub fn read_position(dir: &Path) -> Result<Position> {
    for name in POSITION_FILES {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return parse_position(&text).with_context(|| {
                    format!(
                        "{}: no binary log file and position in {text:?}",
                        path.display()
                    )
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        }
    }
    bail!(
        "{}: no {} in the backup: the server had its binary log off when it was taken, \
         so it records no position to replay from",
        dir.display(),
        POSITION_FILES.join(" or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_order_and_print() {
        let n = Name::parse("binlog.000009").unwrap();
        assert_eq!((n.base.as_str(), n.number), ("binlog", 9));
        assert_eq!(n.next().to_string(), "binlog.000010");
        assert_eq!(
            Name::parse("mysql-bin.1000000").unwrap().to_string(),
            "mysql-bin.1000000"
        );
        assert!(
            Name::parse("mysql-bin.999999").unwrap() < Name::parse("mysql-bin.1000000").unwrap()
        );
        for bad in [
            "binlog.index",
            "binlog.00001",
            ".binlog.000001",
            "a/b.000001",
            "binlog.00000x",
        ] {
            assert!(Name::parse(bad).is_none(), "{bad}");
        }
    }

    fn event(kind: u8, when: u32, body: usize) -> Vec<u8> {
        let size = (HEADER + body) as u32;
        let mut e = when.to_le_bytes().to_vec();
        e.push(kind);
        e.extend(1u32.to_le_bytes());
        e.extend(size.to_le_bytes());
        e.extend(0u32.to_le_bytes());
        e.extend(0u16.to_le_bytes());
        e.resize(size as usize, 0);
        e
    }

    #[test]
    fn the_head_tells_when_it_was_opened_and_whether_it_holds_a_transaction() {
        let mut file = MAGIC.to_vec();
        file.extend(event(15, 1_700_000_000, 230));
        file.extend(event(163, 1_700_000_000, 8));
        file.extend(event(161, 1_700_000_000, 17));
        let head = parse_head(&file).unwrap();
        assert_eq!(head.opened.as_second(), 1_700_000_000);
        assert!(!head.has_content);
        file.extend(event(162, 1_700_000_005, 20));
        assert!(parse_head(&file).unwrap().has_content);
        assert!(parse_head(b"\xfebin").is_err());
        assert!(parse_head(&[0u8; 64]).is_err());
    }

    #[test]
    fn positions() {
        let p = parse_position("binlog.000002\t799\t0-1-3\n").unwrap();
        assert_eq!((p.file.to_string(), p.pos), ("binlog.000002".into(), 799));
        assert!(parse_position("").is_none());
        assert!(parse_position("binlog.000002").is_none());
    }
}
