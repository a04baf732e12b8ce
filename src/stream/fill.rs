//! One segment's buffer, sent while it is written.
//!
//! A segment goes to an upload thread with its first byte, not once it is
//! full: its PUT streams the bytes as the producer appends them (chunked
//! transfer), so Swift's time per object (the object server's fsync and
//! container update: ≈ 40 ms per PUT on the loopback test Swift, see
//! bench/RESULTS-swift.md) passes while the next segment is already being
//! written and sent, instead of every buffer waiting its turn whole. The
//! bytes stay in the buffer until Swift has answered, so a PUT that fails,
//! even half-way, is sent again whole from memory.
//!
//! One writer appends; any number of readers read what is written. Bytes
//! below the published length are never written again, so readers borrow
//! them without a copy or a lock held while they use them.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use md5::{Digest, Md5};

use super::pool::Pool;

/// What computes the segments' MD5s as they are written (the
/// [`etags`](super::etags) thread): given each segment as it starts, told
/// as it grows and ends, it answers with [`Fill::set_md5`].
pub(crate) trait Hasher: Send + Sync {
    fn queue(&self, fill: Arc<Fill>);
    fn poke(&self);
}

/// How far a segment's writing has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// More bytes may come.
    Open,
    /// Every byte is written.
    Complete,
    /// The stream stopped before the segment was complete: it must never
    /// reach Swift (a truncated segment would look like a whole one).
    Abandoned,
}

struct State {
    len: usize,
    end: End,
    /// The streamed PUT waiting for more bytes.
    waker: Option<Waker>,
}

/// The buffer of one segment: written by the producer, read by its upload.
pub(crate) struct Fill {
    /// The pool's buffer; its heap bytes are reached through `ptr` only,
    /// until it goes back to the pool when the last reference drops.
    buf: Vec<u8>,
    ptr: *mut u8,
    capacity: usize,
    state: Mutex<State>,
    grew: Condvar,
    /// The segment's MD5, from the hasher (see [`etags`](super::etags)).
    md5: Mutex<Md5Slot>,
    started: Instant,
    pool: Arc<Pool>,
    /// Told when the segment grows or ends.
    hasher: Option<Arc<dyn Hasher>>,
}

#[derive(Clone, Copy)]
enum Md5Slot {
    Pending,
    Done([u8; 16]),
    /// The hasher ended without it: the segment hashes itself.
    Orphaned,
}

// SAFETY: the bytes behind `ptr` are written only by the one
// `FillWriter` (at and past the published `len`, never below it) and read
// only below `len`, published under the mutex after the write.
unsafe impl Send for Fill {}
unsafe impl Sync for Fill {}

impl Fill {
    /// `buf`: an empty buffer from `pool` (its capacity is the segment
    /// size). `hasher` gets the segment queued and is told as it grows.
    pub(crate) fn new(
        mut buf: Vec<u8>,
        pool: Arc<Pool>,
        hasher: Option<Arc<dyn Hasher>>,
    ) -> (Arc<Fill>, FillWriter) {
        buf.clear();
        let fill = Arc::new(Fill {
            ptr: buf.as_mut_ptr(),
            capacity: buf.capacity(),
            buf,
            state: Mutex::new(State {
                len: 0,
                end: End::Open,
                waker: None,
            }),
            grew: Condvar::new(),
            md5: Mutex::new(Md5Slot::Pending),
            started: Instant::now(),
            pool,
            hasher,
        });
        if let Some(hasher) = &fill.hasher {
            hasher.queue(Arc::clone(&fill));
        }
        let writer = FillWriter {
            fill: Arc::clone(&fill),
            len: 0,
            ended: false,
        };
        (fill, writer)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes `[from, to)`, all below the published length.
    fn bytes(&self, from: usize, to: usize) -> &[u8] {
        debug_assert!(from <= to && to <= self.capacity);
        // SAFETY: below the published length (see the `Sync` impl).
        unsafe { std::slice::from_raw_parts(self.ptr.add(from), to - from) }
    }

    /// Waits until the segment is complete (its length) or abandoned.
    fn wait_end(&self) -> Option<usize> {
        let mut state = self.lock();
        while state.end == End::Open {
            state = self.grew.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        (state.end == End::Complete).then_some(state.len)
    }

    /// The published length, and whether the segment ended (complete or
    /// abandoned).
    pub(crate) fn progress(&self) -> (usize, bool) {
        let state = self.lock();
        (state.len, state.end != End::Open)
    }

    /// The first `len` bytes: `len` at most a length [`progress`] gave.
    pub(crate) fn written(&self, len: usize) -> &[u8] {
        assert!(len <= self.lock().len, "reading past the written bytes");
        self.bytes(0, len)
    }

    /// The hasher's answer: the MD5 of every byte written, or `None` if it
    /// ended without one.
    pub(crate) fn set_md5(&self, md5: Option<[u8; 16]>) {
        *self.md5.lock().unwrap_or_else(|e| e.into_inner()) = match md5 {
            Some(md5) => Md5Slot::Done(md5),
            None => Md5Slot::Orphaned,
        };
        // Taken under the state's lock, so that a waiter cannot miss it.
        drop(self.lock());
        self.grew.notify_all();
    }

    fn md5_slot(&self) -> Md5Slot {
        *self.md5.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the hasher that the segment grew or ended.
    fn poke(&self) {
        if let Some(hasher) = &self.hasher {
            hasher.poke();
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

/// The producer's end: appends, then completes or (dropped) abandons.
pub(crate) struct FillWriter {
    fill: Arc<Fill>,
    /// The length written (and published).
    len: usize,
    ended: bool,
}

impl FillWriter {
    /// Room left in the segment.
    pub(crate) fn room(&self) -> usize {
        self.fill.capacity - self.len
    }

    /// Appends `data` (at most [`room`](Self::room) bytes) and publishes it.
    pub(crate) fn append(&mut self, data: &[u8]) {
        assert!(data.len() <= self.room(), "a segment overflows its buffer");
        // SAFETY: past the published length, within the capacity, and this
        // is the only writer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.fill.ptr.add(self.len), data.len());
        }
        self.len += data.len();
        let waker = {
            let mut state = self.fill.lock();
            state.len = self.len;
            state.waker.take()
        };
        self.fill.grew.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        self.fill.poke();
    }

    /// No more bytes: the segment is whole.
    pub(crate) fn complete(mut self) {
        self.end(End::Complete);
    }

    fn end(&mut self, end: End) {
        if !self.ended {
            self.ended = true;
            let waker = {
                let mut state = self.fill.lock();
                state.end = end;
                state.waker.take()
            };
            self.fill.grew.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
            self.fill.poke();
        }
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        self.end(End::Abandoned);
    }
}

/// Below this rate of writing, a segment is not streamed: its PUT would
/// last longer than Swift and volsnap wait for a request (Swift's proxy
/// drops a client silent for `client_timeout`, 60 s by default; volsnap's
/// `request_timeout` bounds a whole PUT). A slow hook's segments are sent
/// whole once written, as every segment was before.
const STREAM_WITHIN: Duration = Duration::from_secs(20);

/// The part of a segment written before its rate is judged.
const JUDGE_AFTER: usize = 8;

/// One segment handed to an upload: its position in the stored stream and
/// its bytes, as they are written.
#[derive(Clone)]
pub struct Segment {
    /// 0, 1, 2, …: the position in the stored stream.
    pub index: u32,
    pub(crate) fill: Arc<Fill>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.fill.lock();
        write!(
            f,
            "segment {} ({} bytes, {:?})",
            self.index, state.len, state.end
        )
    }
}

impl Segment {
    /// The segment's bytes in order as they are written, as an HTTP body:
    /// each chunk is what was written since the last (no copy), the end of
    /// the segment ends the body, and a segment the stream abandoned is a
    /// body error (so its PUT breaks off and Swift stores nothing).
    pub fn body(&self) -> SegmentBody {
        SegmentBody {
            fill: Arc::clone(&self.fill),
            pos: 0,
        }
    }

    /// The whole segment, once every byte is written (waits for that);
    /// an error if the stream stopped first. Cloning it is cheap.
    pub fn whole(&self) -> Result<Bytes> {
        let len = self
            .fill
            .wait_end()
            .ok_or_else(|| anyhow!("segment {}: the stream stopped before its end", self.index))?;
        Ok(Bytes::from_owner(View {
            fill: Arc::clone(&self.fill),
            from: 0,
            to: len,
        }))
    }

    /// Whether the stream stopped before this segment was complete.
    pub fn abandoned(&self) -> bool {
        self.fill.lock().end == End::Abandoned
    }

    /// The MD5 of the whole segment, from the hasher (waits for it);
    /// `None` if the segment was abandoned.
    pub(crate) fn md5(&self) -> Option<[u8; 16]> {
        let len = self.fill.wait_end()?;
        let mut state = self.fill.lock();
        loop {
            match self.fill.md5_slot() {
                Md5Slot::Done(md5) => return Some(md5),
                Md5Slot::Orphaned => break,
                Md5Slot::Pending if self.fill.hasher.is_none() => break,
                Md5Slot::Pending => {}
            }
            state = self
                .fill
                .grew
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        Some(Md5::digest(self.fill.bytes(0, len)).into())
    }

    /// Sends the segment: streamed while it is written, with `streamed`,
    /// when it is written fast enough for one request, else (or if the
    /// streamed PUT fails: it is never retried half-sent) whole with
    /// `whole`, which may retry from the same bytes as it likes. Returns
    /// what the send that worked returned (Swift's ETag).
    pub fn send(
        &self,
        streamed: impl FnOnce(SegmentBody) -> Result<String>,
        whole: impl FnOnce(Bytes) -> Result<String>,
    ) -> Result<String> {
        if self.worth_streaming() {
            match streamed(self.body()) {
                Ok(etag) => return Ok(etag),
                Err(e) if self.abandoned() => return Err(e),
                Err(e) => log::warn!(
                    "segment {}: its PUT, sent while it was written, failed ({e:#}); \
                     sending it again whole",
                    self.index
                ),
            }
        }
        whole(self.whole()?)
    }

    /// Waits until the segment is complete, or an eighth of it is written;
    /// true if it is not complete and is being written fast enough to
    /// stream.
    fn worth_streaming(&self) -> bool {
        let judge = (self.fill.capacity / JUDGE_AFTER).max(1);
        let mut state = self.fill.lock();
        while state.len < judge && state.end == End::Open {
            state = self
                .fill
                .grew
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.end != End::Open {
            return false;
        }
        let projected = self.fill.started.elapsed().as_secs_f64() * self.fill.capacity as f64
            / state.len as f64;
        projected <= STREAM_WITHIN.as_secs_f64()
    }
}

/// Written bytes of a segment, `[from, to)`, owned by a [`Bytes`]: the
/// buffer goes back to the pool only once every such view is gone.
struct View {
    fill: Arc<Fill>,
    from: usize,
    to: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        self.fill.bytes(self.from, self.to)
    }
}

/// See [`Segment::body`].
pub struct SegmentBody {
    fill: Arc<Fill>,
    pos: usize,
}

impl http_body::Body for SegmentBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        let (len, end) = {
            let mut state = self.fill.lock();
            if state.len <= self.pos && state.end == End::Open {
                state.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            (state.len, state.end)
        };
        if len > self.pos {
            let chunk = Bytes::from_owner(View {
                fill: Arc::clone(&self.fill),
                from: self.pos,
                to: len,
            });
            self.pos = len;
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        match end {
            End::Abandoned => Poll::Ready(Some(Err(io::Error::other(
                "the backup stream stopped before the end of this segment",
            )))),
            _ => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::sync::atomic::AtomicBool;

    /// Every chunk of `body` until its end or error, as a PUT would send it.
    fn read_body(body: &mut SegmentBody, up_to: usize) -> io::Result<Vec<u8>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = Vec::new();
        while out.len() < up_to {
            let frame = runtime.block_on(std::future::poll_fn(|cx| {
                Pin::new(&mut *body).poll_frame(cx)
            }));
            match frame {
                None => break,
                Some(frame) => out.extend_from_slice(frame?.data_ref().unwrap()),
            }
        }
        Ok(out)
    }

    fn segment(size: usize) -> (Segment, FillWriter, Arc<Pool>) {
        let pool = Pool::new(size, 1);
        let buf = pool.take(&AtomicBool::new(false)).unwrap();
        let (fill, writer) = Fill::new(buf, Arc::clone(&pool), None);
        (Segment { index: 0, fill }, writer, pool)
    }

    #[test]
    fn a_reader_gets_the_bytes_as_they_are_written() {
        let (seg, mut w, _pool) = segment(1000);
        let reader = std::thread::spawn({
            let seg = seg.clone();
            move || read_body(&mut seg.body(), usize::MAX).unwrap()
        });
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        for chunk in data.chunks(77) {
            w.append(chunk);
            std::thread::sleep(Duration::from_millis(1));
        }
        w.complete();
        assert_eq!(reader.join().unwrap(), data);
        assert_eq!(&seg.whole().unwrap()[..], &data[..]);
        let md5: [u8; 16] = Md5::digest(&data).into();
        assert_eq!(seg.md5(), Some(md5));
    }

    #[test]
    fn an_abandoned_segment_reads_as_an_error_never_as_its_end() {
        let (seg, mut w, _pool) = segment(100);
        w.append(&[1u8; 40]);
        drop(w);
        let mut body = seg.body();
        assert_eq!(read_body(&mut body, 40).unwrap().len(), 40);
        let err = read_body(&mut body, usize::MAX).unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
        assert!(seg.whole().is_err());
        assert!(seg.abandoned());
        assert_eq!(seg.md5(), None);
    }

    /// A streamed PUT that fails half-way: the segment is sent again whole,
    /// with every byte, and its MD5 counts each byte once.
    #[test]
    fn a_failed_streamed_send_is_sent_again_whole() {
        let (seg, mut w, pool) = segment(1 << 16);
        let data: Vec<u8> = (0..1u32 << 16).map(|i| (i % 251) as u8).collect();
        let (go, wait) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let (first, rest) = data.split_at(1 << 15);
            w.append(first);
            // The rest only once the streamed PUT broke off.
            wait.recv().unwrap();
            for chunk in rest.chunks(1000) {
                w.append(chunk);
            }
            w.complete();
            data
        });
        let mut whole_sent = None;
        let mut streamed = false;
        let etag = seg
            .send(
                |mut body| {
                    streamed = true;
                    read_body(&mut body, 1 << 14)?;
                    go.send(()).unwrap();
                    Err(anyhow!("connection reset"))
                },
                |bytes| {
                    whole_sent = Some(bytes.to_vec());
                    Ok("etag".into())
                },
            )
            .unwrap();
        let data = writer.join().unwrap();
        assert!(streamed, "the segment was not streamed");
        assert_eq!(etag, "etag");
        assert_eq!(whole_sent.unwrap(), data);
        let md5: [u8; 16] = Md5::digest(&data).into();
        assert_eq!(seg.md5(), Some(md5));
        drop(seg);
        assert_eq!(pool.allocated(), 1);
    }

    #[test]
    fn a_segment_complete_before_its_send_goes_whole() {
        let (seg, mut w, _pool) = segment(10);
        w.append(b"0123456789");
        w.complete();
        let etag = seg
            .send(
                |_| panic!("streamed"),
                |bytes| Ok(String::from_utf8(bytes.to_vec()).unwrap()),
            )
            .unwrap();
        assert_eq!(etag, "0123456789");
    }
}
