//! Cutting the stored stream into segments and uploading them in parallel,
//! with bounded memory.
//!
//! The producer (the thread that reads, compresses and encrypts) writes
//! into one segment's buffer at a time; a segment goes to one of
//! `concurrency` upload threads with its first byte, and its PUT sends the
//! bytes as they are written (see [`fill`](super::fill)). Each segment is
//! held whole until Swift has answered (a failed PUT is sent again from
//! memory), so at most `concurrency` segments exist: the one being written
//! and sent, and the ones whose PUTs are finishing. Memory is
//! `segment_size × concurrency` whatever the stream's length. That bound is
//! strict: the buffers come from a [`Pool`] that allocates no more than
//! that many, and a buffer goes back to it only when the last reference to
//! its bytes is gone (the HTTP client's, a retry's), however late that is;
//! until then the producer waits. (Recycling "when the upload returns"
//! allocated a spare buffer whenever a reference outlived the upload, and
//! the allocator kept the freed ones: 79 MiB of RSS for two 24 MiB
//! buffers.)
//!
//! Each segment's MD5 is computed as its bytes are sent (by the upload
//! thread, off the producer's) and compared with the ETag Swift answers:
//! the segment is PUT without an `ETag`, Swift answers the MD5 of what it
//! stored, and a difference fails the backup. The SLO manifest lists
//! volsnap's MD5s, which Swift checks against the stored segments.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::etags::Etags;
use super::fill::{Fill, FillWriter};
pub use super::fill::{Segment, SegmentBody};
use super::hex;
pub use super::naming::SegmentInfo;
use super::pool::Pool;

/// Swift's default `max_manifest_segments`: an SLO lists at most this many.
pub const DEFAULT_MAX_SEGMENTS: u32 = 1000;

/// What the upload threads share.
struct Shared<'u, U> {
    upload: &'u U,
    /// Set by the first failure: later segments are not uploaded.
    failed: AtomicBool,
    first_error: Mutex<Option<anyhow::Error>>,
    uploaded: Mutex<Vec<SegmentInfo>>,
}

impl<U> Shared<'_, U>
where
    U: Fn(&Segment) -> Result<String> + Sync,
{
    fn work(&self, queue: &Mutex<Receiver<Segment>>) {
        loop {
            // The lock is held only while waiting for the next segment.
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(segment) = next else { return };
            if !self.failed.load(Ordering::SeqCst) {
                self.upload_one(&segment);
            }
            // This thread's reference goes before it waits for more: the
            // buffer returns to the pool once no one else holds it either.
            drop(segment);
        }
    }

    fn upload_one(&self, segment: &Segment) {
        let sent = (self.upload)(segment);
        let md5 = match (&sent, segment.md5()) {
            (Ok(_), Some(md5)) => md5,
            // The stream stopped in the middle of this segment: its PUT
            // broke off, Swift stored nothing, and why the stream stopped
            // (the hook, or another upload) is the error that counts.
            (_, None) => {
                log::debug!(
                    "segment {}: not uploaded, the stream stopped",
                    segment.index
                );
                return;
            }
            (Err(_), Some(_)) => [0; 16],
        };
        let md5 = hex(&md5);
        let result = sent
            .with_context(|| format!("uploading segment {}", segment.index))
            .and_then(|etag| {
                let size = segment.whole()?.len() as u64;
                // The segment is in Swift whatever its ETag says: list it for
                // deletion either way.
                self.record(segment.index, size, &md5);
                let etag = etag.trim().trim_matches('"');
                if etag.eq_ignore_ascii_case(&md5) {
                    Ok(())
                } else {
                    Err(anyhow!(
                        "segment {}: Swift stored MD5 {etag:?}, but the MD5 of what volsnap \
                         sent is {md5}: damaged on the way",
                        segment.index,
                    ))
                }
            });
        if let Err(e) = result {
            self.fail(e);
        }
    }

    fn record(&self, index: u32, size: u64, md5: &str) {
        self.uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(SegmentInfo {
                index,
                size,
                md5: md5.to_string(),
            });
    }

    fn fail(&self, e: anyhow::Error) {
        self.failed.store(true, Ordering::SeqCst);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }
}

/// Runs `produce` with a writer whose bytes become segments, uploaded by
/// `concurrency` threads calling `upload`. Returns `produce`'s result (or the
/// first upload error, which wins: it is the cause) and the segments that
/// reached Swift, sorted, once every upload in flight has finished.
pub(crate) fn with_uploads<U, T>(
    segment_size: usize,
    concurrency: usize,
    max_segments: u32,
    upload: &U,
    produce: impl FnOnce(&mut SegmentWriter) -> Result<T>,
) -> (Result<T>, Vec<SegmentInfo>)
where
    U: Fn(&Segment) -> Result<String> + Sync,
{
    let shared = Shared {
        upload,
        failed: AtomicBool::new(false),
        first_error: Mutex::new(None),
        uploaded: Mutex::new(Vec::new()),
    };
    let pool = Pool::new(segment_size, concurrency.max(1));
    let etags = Arc::new(Etags::new(concurrency.max(1)));
    let (sender, receiver) = mpsc::sync_channel::<Segment>(0);
    let queue = Mutex::new(receiver);
    let result = std::thread::scope(|scope| {
        // Ends the MD5 thread however this closure ends (a panic too), or
        // the scope would wait for it forever.
        struct Close<'e>(&'e Etags);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.close();
            }
        }
        let _close = Close(&etags);
        let hasher = &etags;
        std::thread::Builder::new()
            .name("md5".into())
            .spawn_scoped(scope, move || hasher.run())
            .expect("spawning the MD5 thread");
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|i| {
                let (shared, queue) = (&shared, &queue);
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn_scoped(scope, move || shared.work(queue))
                    .expect("spawning an upload thread")
            })
            .collect();
        let mut writer = SegmentWriter {
            segment_size,
            max_segments,
            current: None,
            next_index: 0,
            stored: 0,
            sender: Some(sender),
            failed: &shared.failed,
            pool: &pool,
            etags: &etags,
            waited: Duration::ZERO,
            error: None,
        };
        let mut result = produce(&mut writer).and_then(|t| writer.finish().map(|()| t));
        if let Some(e) = writer.error.take() {
            // The writer's own reason beats the I/O error it surfaced as.
            result = Err(e);
        }
        log::debug!(
            "segments: {} started, {:.2} s waiting for a free buffer and upload",
            writer.next_index,
            writer.waited.as_secs_f64()
        );
        // Abandons a segment left half-written (its PUT breaks off) and
        // closes the channel: the threads go once their upload is done.
        drop(writer);
        etags.close();
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result
    });
    let upload_error = shared
        .first_error
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let mut uploaded = shared
        .uploaded
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    uploaded.sort_by_key(|s| s.index);
    let result = match upload_error {
        Some(e) => Err(e),
        None => result,
    };
    (result, uploaded)
}

/// The end of the encoding chain: bytes in, segments out.
pub(crate) struct SegmentWriter<'s> {
    segment_size: usize,
    max_segments: u32,
    /// The segment being written (and sent); `None` between segments.
    current: Option<FillWriter>,
    next_index: u32,
    stored: u64,
    sender: Option<SyncSender<Segment>>,
    failed: &'s AtomicBool,
    pool: &'s Arc<Pool>,
    etags: &'s Arc<Etags>,
    /// Time spent waiting for a free buffer and upload thread: where the
    /// uploads, not the producer, set the pace.
    waited: Duration,
    /// Why this writer refused bytes, when the reason is its own.
    error: Option<anyhow::Error>,
}

impl SegmentWriter<'_> {
    /// Bytes written so far: the size of the stored object.
    pub(crate) fn stored(&self) -> u64 {
        self.stored
    }

    /// Starts the next segment and hands it to an upload thread (blocks
    /// until a buffer and a thread are free), before its first byte.
    fn start(&mut self) -> io::Result<()> {
        if self.next_index >= self.max_segments {
            return Err(self.refuse(anyhow!(
                "the stored stream needs more than {} segments of {} bytes, more than \
                 Swift's manifests can list (max_manifest_segments per manifest, {} levels); \
                 raise swift.segment_size",
                self.max_segments,
                self.segment_size,
                super::tree::MAX_LEVELS
            )));
        }
        let waiting = std::time::Instant::now();
        let Some(buf) = self.pool.take(self.failed) else {
            return Err(io::Error::other("stopped: an upload failed"));
        };
        let (fill, writer) = Fill::new(buf, Arc::clone(self.pool), Some(self.etags.clone()));
        let segment = Segment {
            index: self.next_index,
            fill,
        };
        self.next_index += 1;
        let sent = self.sender.as_ref().map(|s| s.send(segment));
        if !matches!(sent, Some(Ok(()))) {
            return Err(io::Error::other("the upload threads are gone"));
        }
        self.waited += waiting.elapsed();
        self.current = Some(writer);
        Ok(())
    }

    /// Completes the last segment (never an empty one: a segment starts
    /// with its first byte) and closes the channel.
    fn finish(&mut self) -> Result<()> {
        if let Some(last) = self.current.take() {
            last.complete();
        }
        self.sender = None;
        Ok(())
    }

    fn refuse(&mut self, e: anyhow::Error) -> io::Error {
        let err = io::Error::other(e.to_string());
        self.error = Some(e);
        err
    }
}

impl Write for SegmentWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(io::Error::other("stopped: an upload failed"));
        }
        if data.is_empty() {
            return Ok(0);
        }
        if self.current.is_none() {
            self.start()?;
        }
        let Some(current) = self.current.as_mut() else {
            return Err(io::Error::other("no segment to write into"));
        };
        let n = data.len().min(current.room());
        current.append(&data[..n]);
        self.stored += n as u64;
        if current.room() == 0 {
            if let Some(full) = self.current.take() {
                full.complete();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    fn md5_of(s: &Segment) -> Result<String> {
        Ok(hex(&Md5::digest(s.whole()?)))
    }
    use std::collections::BTreeMap;

    #[test]
    fn segments_are_exact_and_buffers_reused() {
        let store = Mutex::new(BTreeMap::new());
        let ptrs = Mutex::new(std::collections::BTreeSet::new());
        let upload = |s: &Segment| {
            let data = s.whole()?;
            ptrs.lock().unwrap().insert(data.as_ptr() as usize);
            store.lock().unwrap().insert(s.index, data.to_vec());
            Ok(hex(&Md5::digest(&data)))
        };
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let (result, uploaded) = with_uploads(1000, 2, 100, &upload, |w| {
            for chunk in data.chunks(333) {
                w.write_all(chunk)?;
            }
            Ok(w.stored())
        });
        assert_eq!(result.unwrap(), 10_000);
        assert_eq!(uploaded.len(), 10);
        assert!(uploaded.iter().all(|s| s.size == 1000));
        let store = store.into_inner().unwrap();
        assert_eq!(store.values().flatten().copied().collect::<Vec<_>>(), data);
        // Two segments in flight, the one being written among them: at
        // most two distinct buffers.
        assert!(ptrs.lock().unwrap().len() <= 2, "{:?}", ptrs);
    }

    /// The HTTP client may drop its reference to a body after the upload
    /// returned: the buffer is not reused, nor a new one allocated, until
    /// it does. Never more than `concurrency` buffers, and every byte lands
    /// where it belongs.
    #[test]
    fn a_late_reference_delays_the_buffer_never_adds_one() {
        let store = Mutex::new(BTreeMap::new());
        let late = Mutex::new(Vec::new());
        let upload = |s: &Segment| {
            let data = s.whole()?;
            store.lock().unwrap().insert(s.index, data.to_vec());
            let held = data.clone();
            late.lock().unwrap().push(std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                drop(held);
            }));
            Ok(hex(&Md5::digest(&data)))
        };
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13 + 5) as u8).collect();
        let mut pool = None;
        let (result, uploaded) = with_uploads(1000, 2, 100, &upload, |w| {
            pool = Some(Arc::clone(w.pool));
            for chunk in data.chunks(777) {
                w.write_all(chunk)?;
            }
            Ok(())
        });
        result.unwrap();
        for t in late.into_inner().unwrap() {
            t.join().unwrap();
        }
        assert_eq!(uploaded.len(), 20);
        assert_eq!(pool.unwrap().allocated(), 2, "2 segments in flight");
        let store = store.into_inner().unwrap();
        assert_eq!(store.values().flatten().copied().collect::<Vec<_>>(), data);
    }

    #[test]
    fn the_last_segment_is_shorter_never_empty() {
        let upload = md5_of;
        for len in [1, 999, 1000, 1001, 2000] {
            let (result, uploaded) = with_uploads(1000, 3, 100, &upload, |w| {
                w.write_all(&vec![1u8; len])?;
                Ok(())
            });
            result.unwrap();
            let sizes: Vec<u64> = uploaded.iter().map(|s| s.size).collect();
            let expected: Vec<u64> = (0..len.div_ceil(1000))
                .map(|i| (len - i * 1000).min(1000) as u64)
                .collect();
            assert_eq!(sizes, expected, "{len}");
        }
    }

    #[test]
    fn too_many_segments_is_a_clear_error() {
        let upload = md5_of;
        let (result, uploaded) = with_uploads(10, 2, 3, &upload, |w| {
            w.write_all(&[0u8; 35])?;
            Ok(())
        });
        let msg = format!("{:#}", result.unwrap_err());
        assert!(msg.contains("more than 3 segments"), "{msg}");
        assert_eq!(uploaded.len(), 3);
    }

    #[test]
    fn a_wrong_etag_fails_but_lists_the_segment() {
        let upload = |_: &Segment| Ok("\"0123\"".to_string());
        let (result, uploaded) = with_uploads(10, 1, 100, &upload, |w| {
            w.write_all(&[0u8; 5])?;
            Ok(())
        });
        let msg = format!("{:#}", result.unwrap_err());
        assert!(msg.contains("Swift stored MD5 \"0123\""), "{msg}");
        assert_eq!(uploaded.len(), 1);
    }
}
