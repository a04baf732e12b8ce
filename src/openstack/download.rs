//! A backup's download, read as it arrives: a Static Large Object segment
//! by segment, straight from its segments, each checked against its
//! manifest entry.
//!
//! A GET of the manifest itself has the proxy join the segments, and the
//! proxy MD5s every segment on the way to compare it with the manifest
//! (Swift's `SegmentedIterable`): about as much CPU again as the object
//! server's read, on the proxy, for bytes whose caller checks the whole
//! stream's SHA-256 anyway. On the loopback test Swift, reading the 171
//! segments of a 2 GiB backup one after the other costs the proxy 2.9–3.2 s
//! of CPU against 5.2–5.6 s for the manifest's GET, and takes 5.1–5.6 s
//! instead of 6.0–6.4 s (see bench/RESULTS-swift.md). What the proxy's check
//! also caught, a segment replaced after the backup, is caught here from
//! the headers: each segment's size and ETag must be the manifest's.
//!
//! A segment that rots on Swift's disk is no longer cut off at its end, as
//! the proxy's check did, but found by the stream's SHA-256 at the end of
//! the download; either way the restore hook never sees the stream's end
//! (`stream::HOLD_BACK`). The object server, having read a rotten object
//! whole, quarantines it, so the next download names it as missing.

use std::io::{self, Read};
use std::iter::Peekable;

use super::http::{Early, Error};
use super::swift::{ManifestEntry, ObjectReader, Swift};

/// How many times one segment's (or object's) body that breaks off is
/// read again from where it stopped.
const RESUMES: u32 = 3;

/// An object's bytes in order: a plain object's body, or an SLO's
/// segments one after the other, a manifest of manifests (see
/// `stream::Tree`) followed down as it is reached.
pub struct Download {
    swift: Swift,
    /// `container/name`, for errors.
    object: String,
    /// The manifests being walked, innermost last; each iterator holds
    /// the entries still to read.
    levels: Vec<Peekable<std::vec::IntoIter<ManifestEntry>>>,
    current: Option<Part>,
    /// The next segment's GET, sent as the current one starts, and its
    /// name: the round trip between two segments passes while the
    /// current one is read.
    next: Option<(String, Early)>,
    /// Bytes handed out so far, and the object's size.
    received: u64,
    size: u64,
}

/// The object or segment being read.
struct Part {
    body: ObjectReader,
    container: String,
    name: String,
    /// What it must be: its ETag and size (from the manifest, or for a
    /// plain object from its GET).
    etag: String,
    bytes: u64,
    /// A segment of a manifest (else the object itself).
    segment: bool,
    got: u64,
    resumed: u32,
}

impl Part {
    /// `/container/name`, as a manifest lists it.
    fn path(&self) -> String {
        format!("/{}/{}", self.container, self.name)
    }
}

impl Swift {
    /// Opens `container/name` for reading; an SLO is read from its
    /// segments (see [`Download`]). Each GET is retried as any request
    /// until its body starts; a body that breaks off is read again from
    /// where it stopped, if it is still the same object (`If-Match`), up to
    /// three times per segment.
    pub fn download(&self, container: &str, name: &str) -> Result<Download, Error> {
        let info = self.head_object(container, name)?;
        let mut download = Download {
            swift: self.clone(),
            object: format!("{container}/{name}"),
            levels: Vec::new(),
            current: None,
            next: None,
            received: 0,
            size: info.size,
        };
        let manifest = if info.static_large_object {
            let entries = self.get_manifest(container, name)?;
            // volsnap never writes ranges; another tool's manifest that
            // does is read the proxy's way, which knows them.
            (!entries.iter().any(|e| e.range.is_some())).then_some(entries)
        } else {
            None
        };
        match manifest {
            Some(entries) => download.levels.push(entries.into_iter().peekable()),
            None => {
                let body = self.get_object(container, name)?;
                download.size = body.info.size;
                download.current = Some(Part {
                    etag: body.info.etag.clone(),
                    bytes: body.info.size,
                    body,
                    container: container.to_string(),
                    name: name.to_string(),
                    segment: false,
                    got: 0,
                    resumed: 0,
                });
            }
        }
        Ok(download)
    }
}

impl Download {
    /// Opens the next segment, following sub-manifests; false at the end.
    fn open_next(&mut self) -> io::Result<bool> {
        loop {
            let Some(level) = self.levels.last_mut() else {
                return Ok(false);
            };
            let Some(entry) = level.next() else {
                self.levels.pop();
                continue;
            };
            let Some((container, object)) = entry.location() else {
                return Err(self.broken(format!(
                    "its manifest lists {:?}, which is not a /container/object path",
                    entry.name
                )));
            };
            if entry.sub_slo {
                let entries = self
                    .swift
                    .get_manifest(container, object)
                    .map_err(|e| self.failed(&entry, e))?;
                check_sub_manifest(&entry, &entries).map_err(|m| self.broken(m))?;
                self.levels.push(entries.into_iter().peekable());
                continue;
            }
            let early = self
                .next
                .take()
                .and_then(|(name, early)| (name == entry.name).then_some(early));
            let body = self
                .swift
                .get_object_sent(container, object, early)
                .map_err(|e| self.failed(&entry, e))?;
            if body.info.size != entry.bytes || !body.info.etag.eq_ignore_ascii_case(&entry.hash) {
                return Err(self.broken(format!(
                    "segment {} holds {} bytes with ETag {}, but the manifest lists {} bytes \
                     with ETag {}: it was replaced after the backup",
                    entry.name, body.info.size, body.info.etag, entry.bytes, entry.hash
                )));
            }
            let (container, name) = (container.to_string(), object.to_string());
            self.current = Some(Part {
                body,
                container,
                name,
                etag: entry.hash,
                bytes: entry.bytes,
                segment: true,
                got: 0,
                resumed: 0,
            });
            self.send_next_early();
            return Ok(true);
        }
    }

    /// Sends the GET of the segment after the current one, if the same
    /// manifest lists it.
    fn send_next_early(&mut self) {
        let Some(next) = self.levels.last_mut().and_then(|l| l.peek()) else {
            return;
        };
        if next.sub_slo {
            return;
        }
        if let Some((container, object)) = next.location() {
            if let Some(early) = self.swift.get_object_early(container, object) {
                self.next = Some((next.name.clone(), early));
            }
        }
    }

    /// The current part's body broke off with `e`: reads the rest again
    /// from where it stopped, or says why not.
    fn resume(&mut self, e: io::Error) -> io::Result<()> {
        let part = self.current.as_mut().expect("a part being read");
        let what = if part.segment { "segment" } else { "object" };
        let path = part.path();
        if part.resumed >= RESUMES {
            let resumed = part.resumed;
            return Err(self.error(
                e.kind(),
                format!("{what} {path}: {e} (read again {resumed} times from where it broke off)"),
            ));
        }
        part.resumed += 1;
        log::warn!(
            "{}: {what} {path} broke off at byte {} of {} ({e}); reading the rest again \
             ({}/{RESUMES})",
            self.object,
            part.got,
            part.bytes,
            part.resumed
        );
        let left = part.bytes - part.got;
        match self
            .swift
            .get_object_from(&part.container, &part.name, part.got, &part.etag)
        {
            Ok(body) if body.info.size == left => {
                part.body = body;
                Ok(())
            }
            Ok(body) => Err(self.error(
                io::ErrorKind::InvalidData,
                format!(
                    "{what} {path} broke off ({e}), and Swift offers {} bytes for the {left} left",
                    body.info.size
                ),
            )),
            Err(again) => Err(self.error(
                if again.is_not_found() {
                    io::ErrorKind::NotFound
                } else {
                    e.kind()
                },
                format!(
                    "{what} {path} broke off ({e}), and reading the rest again failed: {again}"
                ),
            )),
        }
    }

    fn failed(&self, entry: &ManifestEntry, e: Error) -> io::Error {
        let (kind, what) = if e.is_not_found() {
            (io::ErrorKind::NotFound, "is missing")
        } else {
            (io::ErrorKind::Other, "could not be read")
        };
        let part = if entry.sub_slo { "manifest" } else { "segment" };
        self.error(kind, format!("{part} {} {what}: {e}", entry.name))
    }

    fn broken(&self, message: String) -> io::Error {
        self.error(io::ErrorKind::InvalidData, message)
    }

    /// An error of the download, saying how far it got.
    fn error(&self, kind: io::ErrorKind, message: String) -> io::Error {
        io::Error::new(
            kind,
            format!(
                "{}, at byte {} of {}: {message}",
                self.object, self.received, self.size
            ),
        )
    }
}

/// A sub-manifest must add up to what its parent's entry says: its
/// segments' sizes to the entry's size, their ETags to its ETag (an SLO's
/// ETag is the MD5 of its segments' ETags).
fn check_sub_manifest(entry: &ManifestEntry, entries: &[ManifestEntry]) -> Result<(), String> {
    let bytes: u64 = entries.iter().map(|e| e.bytes).sum();
    let etags: String = entries
        .iter()
        .map(|e| e.hash.to_ascii_lowercase())
        .collect();
    let etag = super::swift::md5_hex(etags.as_bytes());
    if bytes != entry.bytes || !etag.eq_ignore_ascii_case(&entry.hash) {
        return Err(format!(
            "the manifest {} lists {} bytes with ETag {etag}, but its parent lists {} bytes \
             with ETag {}: it was replaced after the backup",
            entry.name, bytes, entry.bytes, entry.hash
        ));
    }
    Ok(())
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(part) = self.current.as_mut() else {
                if self.open_next()? {
                    continue;
                }
                return Ok(0);
            };
            let n = match part.body.read(buf) {
                Ok(n) => n,
                Err(e) => {
                    self.resume(e)?;
                    continue;
                }
            };
            if n > 0 {
                part.got += n as u64;
                self.received += n as u64;
                return Ok(n);
            }
            let part = self.current.take().expect("read from it");
            if part.got != part.bytes {
                return Err(self.broken(format!(
                    "{} {} ended after {} of its {} bytes",
                    if part.segment { "segment" } else { "object" },
                    part.path(),
                    part.got,
                    part.bytes
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, hash: &str, bytes: u64) -> ManifestEntry {
        ManifestEntry {
            name: name.to_string(),
            sub_slo: false,
            hash: hash.to_string(),
            bytes,
            range: None,
        }
    }

    #[test]
    fn a_sub_manifest_must_add_up_to_its_parents_entry() {
        let segs = [
            entry("/c/a", "5d41402abc4b2a76b9719d911017c592", 5),
            entry("/c/b", "7d793037a0760186574b0282f2f435e7", 5),
        ];
        let etag = super::super::swift::md5_hex(
            b"5d41402abc4b2a76b9719d911017c5927d793037a0760186574b0282f2f435e7",
        );
        let mut parent = entry("/c/m", &etag, 10);
        parent.sub_slo = true;
        assert_eq!(check_sub_manifest(&parent, &segs), Ok(()));
        parent.hash = parent.hash.to_ascii_uppercase();
        assert_eq!(check_sub_manifest(&parent, &segs), Ok(()));
        parent.bytes = 11;
        let err = check_sub_manifest(&parent, &segs).unwrap_err();
        assert!(
            err.contains("lists 10 bytes") && err.contains("replaced"),
            "{err}"
        );
        parent.bytes = 10;
        parent.hash = "0".repeat(32);
        assert!(check_sub_manifest(&parent, &segs).is_err());
    }
}
