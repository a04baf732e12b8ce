//! The restore and verify direction: stored stream in, checked plain bytes out.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::compress::Decompressor;
use super::crypt::Identities;
use super::meta::{BackupMeta, Encryption};
use super::progress::{Figures, Progress};
use super::{hex, serialize_secs};

/// The plain bytes held back from the writer until the whole stream has been
/// checked. Every format a hook restores ends with its end marker in the last
/// few KiB (tar's two zero blocks and record padding, a Redis RDB's EOF byte
/// and CRC, an xbstream's last chunk), so the hook cannot reach the end of
/// its input, and swap a restore in, before volsnap has compared the SHA-256.
pub const HOLD_BACK: usize = 1 << 20;

/// Plain bytes are read, hashed and held in buffers of this size, filled
/// whole (the hold-back keeps [`HOLD_BACK`] and one more at most, and
/// writes the others as they are, without a copy).
const READ_CHUNK: usize = 256 << 10;

/// A stream that decrypted, decompressed, and matched the manifest.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub sha256: String,
    pub plain_bytes: u64,
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    pub progress: Figures,
}

/// Decrypts and decompresses `stored` (a GET of the SLO manifest) as `meta`
/// says, writing the plain bytes to `out` (the hook's stdin, or
/// `io::sink()` to verify), and checks their SHA-256 and size against `meta`.
///
/// The contract with the caller, so that a corrupt backup is never swapped in:
///
/// - `out` is borrowed, never closed here. The last [`HOLD_BACK`] bytes are
///   written only after the SHA-256 and size match; then `out` is flushed and
///   `Ok` returned. Only then may the caller close it (drop the hook's stdin),
///   which is the hook's signal that the stream is complete.
/// - On `Err` (a damaged, truncated or longer stream, a wrong key, a hook that
///   stopped reading), `out` has received an incomplete stream and must not be
///   closed as if complete: kill the hook first (its process group), then
///   drop `out`.
///
/// Which error a damaged byte gives: unencrypted, `none` → the SHA-256
/// mismatch; `zstd` or `gzip` → usually the decompressor's own checksum or
/// format error first, else the SHA-256 mismatch; encrypted → age's
/// authentication error for the damaged 64 KiB chunk, before any of its bytes
/// are written.
pub fn restore_into<R: Read, W: Write + ?Sized>(
    stored: R,
    out: &mut W,
    meta: &BackupMeta,
    identities: Option<&Identities>,
    progress: &mut Progress,
) -> Result<Verified> {
    let started = Instant::now();
    let decrypted = match (&meta.encryption, identities) {
        (Encryption::None, _) => Decrypted::Plain(stored),
        (Encryption::Age { recipients }, Some(ids)) => {
            Decrypted::Age(Box::new(ids.decrypt(stored, recipients)?))
        }
        (Encryption::Age { recipients }, None) => bail!(
            "the backup is encrypted with age (to {}); give the identity file to decrypt it",
            recipients.join(", ")
        ),
    };
    let mut plain =
        Decompressor::new(decrypted, meta.compression).context("starting the decompressor")?;
    let mut sha = Sha256::new();
    let mut count: u64 = 0;
    let mut held = HoldBack::new();
    loop {
        let mut buf = held.spare();
        let n = match read_full(&mut plain, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err((n, e)) => {
                return Err(e).context(read_context(meta, count + n as u64));
            }
        };
        count += n as u64;
        if count > meta.size {
            bail!(
                "the stream is longer than the {} bytes the manifest records: \
                 it is not this backup's",
                meta.size
            );
        }
        sha.update(&buf[..n]);
        held.push(buf, n, out)
            .context("writing the restored stream to the hook")?;
        progress.update(count);
    }
    let figures = progress.finish();
    let sha256 = hex(&sha.finalize());
    if count != meta.size {
        bail!(
            "the stream is truncated: the manifest records {} bytes (SHA-256 {}), \
             the stream ended after {count} bytes",
            meta.size,
            meta.sha256
        );
    }
    if sha256 != meta.sha256 {
        bail!(
            "SHA-256 mismatch: the manifest records {} for {} bytes, the restored stream's \
             is {sha256}; the backup is damaged",
            meta.sha256,
            meta.size
        );
    }
    held.release(out)
        .context("writing the end of the restored stream to the hook")?;
    Ok(Verified {
        sha256,
        plain_bytes: count,
        duration: started.elapsed(),
        progress: figures,
    })
}

fn read_context(meta: &BackupMeta, count: u64) -> String {
    let layers = match (&meta.encryption, meta.compression) {
        (Encryption::None, crate::config::Compression::None) => "reading",
        (Encryption::None, _) => "reading and decompressing",
        (Encryption::Age { .. }, _) => "reading, decrypting and decompressing",
    };
    format!(
        "{layers} the stored stream (compression {}) after {count} plain bytes",
        super::compress::compression_name(meta.compression)
    )
}

/// The optional decryption layer of the reader chain.
enum Decrypted<R: Read> {
    Plain(R),
    Age(Box<age::stream::StreamReader<R>>),
}

impl<R: Read> Read for Decrypted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decrypted::Plain(r) => r.read(buf),
            // age authenticates every 64 KiB chunk, and the last one as the
            // last: a damaged, cut or reordered stream fails here, before any
            // byte of the bad chunk is given out.
            Decrypted::Age(r) => r.read(buf).map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "age authentication failed ({e}): the stored stream is damaged, \
                             truncated or was tampered with"
                        ),
                    )
                } else {
                    e
                }
            }),
        }
    }
}

/// Fills `buf` from `r` (less only at the end); on an error, how many
/// bytes came before it.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, (usize, io::Error)> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((n, e)),
        }
    }
    Ok(n)
}

/// Keeps the last [`HOLD_BACK`] bytes back. Bytes are never copied: the
/// buffers they were read into wait in a queue and are written whole once
/// the bytes after them add up to the hold-back, then come back as spares.
struct HoldBack {
    held: VecDeque<(Vec<u8>, usize)>,
    bytes: usize,
    spares: Vec<Vec<u8>>,
}

impl HoldBack {
    fn new() -> HoldBack {
        HoldBack {
            held: VecDeque::new(),
            bytes: 0,
            spares: Vec::new(),
        }
    }

    /// A buffer of [`READ_CHUNK`] bytes to read into.
    fn spare(&mut self) -> Vec<u8> {
        self.spares.pop().unwrap_or_else(|| vec![0u8; READ_CHUNK])
    }

    /// Takes `buf`'s first `n` bytes; writes what is now more than
    /// [`HOLD_BACK`] bytes from the end.
    fn push<W: Write + ?Sized>(&mut self, buf: Vec<u8>, n: usize, out: &mut W) -> io::Result<()> {
        self.held.push_back((buf, n));
        self.bytes += n;
        while let Some((_, first)) = self.held.front() {
            if self.bytes - first < HOLD_BACK {
                break;
            }
            let (buf, n) = self.held.pop_front().expect("checked above");
            out.write_all(&buf[..n])?;
            self.bytes -= n;
            self.spares.push(buf);
        }
        Ok(())
    }

    fn release<W: Write + ?Sized>(self, out: &mut W) -> io::Result<()> {
        for (buf, n) in &self.held {
            out.write_all(&buf[..*n])?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_back_keeps_the_tail_until_released() {
        let data: Vec<u8> = (0..5 * HOLD_BACK + 123).map(|i| (i % 253) as u8).collect();
        let mut out = Vec::new();
        let mut h = HoldBack::new();
        for chunk in data.chunks(100_000) {
            let mut buf = h.spare();
            buf[..chunk.len()].copy_from_slice(chunk);
            h.push(buf, chunk.len(), &mut out).unwrap();
            assert!(out.len() + HOLD_BACK <= data.len());
        }
        assert!(data.len() - out.len() >= HOLD_BACK);
        assert_eq!(out[..], data[..out.len()]);
        h.release(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
