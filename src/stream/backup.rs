//! The backup direction: plain stream in, uploaded segments out.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::compress::Compressor;
use super::crypt::Recipients;
use super::progress::{Figures, Progress};
use super::segments::{with_uploads, Segment, SegmentInfo, SegmentWriter, DEFAULT_MAX_SEGMENTS};
use super::{hex, serialize_secs};
use crate::config::{Compression, SwiftSettings};

/// How the hook's bytes are read: the hook's whole pipe (1 MiB, see
/// `hooks`) at a time, so the hook and volsnap wake each other up once per
/// MiB (2 % faster than 256 KiB reads in bench/RESULTS-swift.md), and small
/// enough to keep memory flat.
const READ_CHUNK: usize = 1 << 20;

/// How a backup is encoded and cut: the Swift settings, with the recipients
/// loaded.
#[derive(Debug)]
pub struct BackupPlan {
    pub segment_size: usize,
    /// Uploads in flight at once (≥ 1).
    pub concurrency: usize,
    pub compression: Compression,
    pub compression_level: i32,
    /// `None`: not encrypted.
    pub recipients: Option<Recipients>,
    /// The most entries a manifest may list (Swift's `max_manifest_segments`,
    /// from `/info` when the cluster says, else [`DEFAULT_MAX_SEGMENTS`]).
    /// More segments than that are listed by a [`Tree`](super::tree::Tree)
    /// of manifests.
    pub max_segments: u32,
}

impl BackupPlan {
    /// Reads the recipients file, if any.
    pub fn from_settings(swift: &SwiftSettings) -> Result<BackupPlan> {
        Ok(BackupPlan {
            segment_size: usize::try_from(swift.segment_size).context("swift.segment_size")?,
            concurrency: swift.concurrency.max(1) as usize,
            compression: swift.compression,
            compression_level: swift.compression_level,
            recipients: Recipients::from_settings(swift)?,
            max_segments: DEFAULT_MAX_SEGMENTS,
        })
    }
}

/// A backup whose every segment is in Swift. The SLO manifest is not written
/// yet: that is the caller's next step (and the hook's exit status before it).
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    /// In order, one per segment, for the SLO manifest.
    pub segments: Vec<SegmentInfo>,
    /// SHA-256 (lower-case hex) of the plain stream, as the hook wrote it.
    pub sha256: String,
    pub plain_bytes: u64,
    /// The size of the stored object (compressed, encrypted).
    pub stored_bytes: u64,
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    /// Plain bytes, rate and elapsed time, as the progress line showed them.
    pub progress: Figures,
}

/// A backup that did not complete. `uploaded` lists the segments that reached
/// Swift before the pipeline stopped (every upload in flight has finished):
/// delete them, so that no half backup is left behind. There is no manifest,
/// so nothing looks complete.
pub struct BackupFailure {
    pub error: anyhow::Error,
    pub uploaded: Vec<SegmentInfo>,
}

impl fmt::Debug for BackupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#} ({} segments uploaded)",
            self.error,
            self.uploaded.len()
        )
    }
}

impl fmt::Display for BackupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for BackupFailure {}

/// Streams `source` (the hook's stdout) into Swift as segments.
///
/// `upload` is called from `plan.concurrency` threads at once with each
/// [`Segment`]; it PUTs `segment.data`, retrying as it sees fit from the same
/// bytes, and returns the ETag Swift answered, which must equal volsnap's MD5
/// of the segment (computed meanwhile). The first upload error stops the pipeline: no new
/// segment is uploaded, the uploads in flight finish, and the error comes back
/// in a [`BackupFailure`] with the segments that were uploaded.
///
/// To abort from outside (a deadline passed), make `source` return an error:
/// the pipeline stops the same way. A source that just ends (a killed hook's
/// pipe reads EOF) looks complete here: a summary is a backup only once the
/// hook has exited 0; if it did not, delete `summary.segments` and write no
/// manifest. An empty stream is an error: no datastore's backup is zero
/// bytes, so it means the hook failed, and nothing is uploaded for it. (This
/// also means no segment is ever empty: Swift refuses zero-byte segments in
/// an SLO of more than one.)
///
/// Memory: about `segment_size × concurrency` plus the compressor's
/// state (a few MiB for zstd), whatever the stream's length.
pub fn backup<R, U>(
    mut source: R,
    plan: &BackupPlan,
    upload: U,
    progress: &mut Progress,
) -> Result<BackupSummary, BackupFailure>
where
    R: Read,
    U: Fn(&Segment) -> Result<String> + Sync,
{
    let started = Instant::now();
    let mut sha = Sha256::new();
    let mut plain: u64 = 0;
    let (result, uploaded) = with_uploads(
        plan.segment_size,
        plan.concurrency,
        super::tree::max_segments_total(plan.max_segments),
        &upload,
        |segments: &mut SegmentWriter| {
            let encrypted: Encrypted<&mut SegmentWriter> = match &plan.recipients {
                Some(r) => Encrypted::Age(r.encrypt(segments)?),
                None => Encrypted::Plain(segments),
            };
            let mut sink = Compressor::new(encrypted, plan.compression, plan.compression_level)
                .context("starting the compressor")?;
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading the backup stream from the hook"),
                };
                sha.update(&buf[..n]);
                plain += n as u64;
                sink.write_all(&buf[..n])
                    .context("compressing, encrypting and cutting the backup stream")?;
                progress.update(plain);
            }
            if plain == 0 {
                bail!("the hook wrote nothing: an empty backup stream is not stored");
            }
            let segments = sink
                .finish()
                .and_then(Encrypted::finish)
                .context("ending the backup stream")?;
            Ok(segments.stored())
        },
    );
    let figures = progress.finish();
    match result {
        Ok(stored_bytes) => Ok(BackupSummary {
            segments: uploaded,
            sha256: hex(&sha.finalize()),
            plain_bytes: plain,
            stored_bytes,
            duration: started.elapsed(),
            progress: figures,
        }),
        Err(error) => Err(BackupFailure { error, uploaded }),
    }
}

/// The optional encryption layer of the writer chain.
enum Encrypted<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Encrypted<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Encrypted::Plain(w) => Ok(w),
            Encrypted::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Encrypted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encrypted::Plain(w) => w.write(buf),
            Encrypted::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encrypted::Plain(w) => w.flush(),
            Encrypted::Age(w) => w.flush(),
        }
    }
}
