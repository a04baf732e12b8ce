//! The segments' MD5s (their ETags), computed while the segments are sent.
//!
//! A segment is PUT without an `ETag`; Swift answers the MD5 of what it
//! stored, and the upload thread compares it with the MD5 volsnap computed
//! of its buffer, here, during the PUT. A segment whose MD5 differs fails the
//! backup (and is deleted with the others); the SLO manifest lists volsnap's
//! MD5 of every segment, and Swift refuses the manifest if any stored segment
//! differs. So every byte is checked end to end, as an `ETag` sent with the
//! PUT would check it; computed during the PUT instead of before it, the
//! MD5s of the segments in flight can be computed together, in the lanes of
//! [`md5_lanes`](super::md5_lanes), for a fraction of the CPU.
//!
//! With AVX2, one hasher thread holds every segment in flight in a lane and
//! advances them in lockstep. It waits for a full batch (as many segments
//! as uploads run at once) before it works, unless an upload that has
//! finished is waiting for its MD5 or no more segments are coming: that
//! keeps the lanes full. Without AVX2, each upload thread hashes its own
//! segment with the `md-5` crate while a helper thread sends it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use md5::{Digest, Md5};

use md5_lanes::{simd_available, Lanes, LANES};

/// Blocks each lane advances between two looks at the queue: 1 MiB.
const ROUND_BLOCKS: usize = 16 << 10;

/// Hashes the segments in flight; shared by the upload threads and the
/// hasher thread.
pub(crate) struct Etags {
    state: Mutex<State>,
    changed: Condvar,
    /// How many segments make a full batch.
    batch: usize,
    lanes: bool,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    queued: VecDeque<(u64, Bytes)>,
    done: HashMap<u64, [u8; 16]>,
    /// Upload threads waiting for an MD5.
    waiting: usize,
    /// No more segments will come.
    draining: bool,
    /// The hasher thread should end (every upload thread has).
    closed: bool,
    /// The hasher thread is not running (ended, or panicked): waiters hash
    /// for themselves.
    gone: bool,
}

impl Etags {
    /// For `concurrency` uploads at once; `run` is then the hasher thread's
    /// body, if [`Etags::needs_thread`].
    pub(crate) fn new(concurrency: usize) -> Etags {
        Etags::with_lanes(concurrency, simd_available())
    }

    /// `lanes`: the hasher thread and its AVX2 lanes (only where the CPU has
    /// AVX2), or each upload thread hashing its own segment.
    fn with_lanes(concurrency: usize, lanes: bool) -> Etags {
        Etags {
            state: Mutex::new(State {
                gone: !lanes,
                ..State::default()
            }),
            changed: Condvar::new(),
            batch: concurrency.clamp(1, LANES),
            lanes,
        }
    }

    /// Whether [`Etags::run`] must run on a thread of its own.
    pub(crate) fn needs_thread(&self) -> bool {
        self.lanes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `send` (the PUT of `data`) and returns its result with the MD5 of
    /// `data`, computed meanwhile.
    pub(crate) fn during<T: Send>(
        &self,
        data: &Bytes,
        send: impl FnOnce() -> T + Send,
    ) -> (T, [u8; 16]) {
        if !self.lanes {
            return std::thread::scope(|scope| {
                let sending = scope.spawn(send);
                let md5: [u8; 16] = Md5::digest(data).into();
                match sending.join() {
                    Ok(sent) => (sent, md5),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            });
        }
        let ticket = {
            let mut state = self.lock();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.queued.push_back((ticket, data.clone()));
            ticket
        };
        self.changed.notify_all();
        let sent = send();
        (sent, self.wait(ticket, data))
    }

    fn wait(&self, ticket: u64, data: &Bytes) -> [u8; 16] {
        let mut state = self.lock();
        state.waiting += 1;
        self.changed.notify_all();
        loop {
            if let Some(md5) = state.done.remove(&ticket) {
                state.waiting -= 1;
                return md5;
            }
            if state.gone {
                state.waiting -= 1;
                state.queued.retain(|(t, _)| *t != ticket);
                drop(state);
                return Md5::digest(data).into();
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No more segments are coming: hash what is left without waiting for a
    /// full batch.
    pub(crate) fn drain(&self) {
        self.lock().draining = true;
        self.changed.notify_all();
    }

    /// Ends the hasher thread once its work is done.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.draining = true;
        state.closed = true;
        drop(state);
        self.changed.notify_all();
    }

    /// The hasher thread.
    pub(crate) fn run(&self) {
        // However this ends, waiters must not wait for it any more.
        struct Gone<'a>(&'a Etags);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                self.0.lock().gone = true;
                self.0.changed.notify_all();
            }
        }
        let _gone = Gone(self);
        let mut lanes = Lanes::new();
        let mut held: [Option<(u64, Bytes)>; LANES] = Default::default();
        // Blocks hashed, and lockstep rounds of blocks: their ratio is how
        // full the lanes were.
        let (mut blocks, mut rounds) = (0u64, 0u64);
        loop {
            {
                let mut state = self.lock();
                loop {
                    while let Some(slot) = lanes.free_slot() {
                        let Some(job) = state.queued.pop_front() else {
                            break;
                        };
                        lanes.start(slot);
                        held[slot] = Some(job);
                    }
                    let active = lanes.active();
                    if active == 0 && state.closed {
                        if rounds > 0 {
                            log::debug!(
                                "segment MD5s: {blocks} blocks in {rounds} lockstep steps \
                                 ({:.1} lanes in use on average)",
                                blocks as f64 / rounds as f64
                            );
                        }
                        return;
                    }
                    if active > 0 && (active >= self.batch || state.waiting > 0 || state.draining) {
                        break;
                    }
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            }
            let data: [&[u8]; LANES] =
                std::array::from_fn(|i| held[i].as_ref().map_or(&[][..], |(_, d)| &d[..]));
            let active = lanes.active() as u64;
            let advanced = lanes.advance(&data, ROUND_BLOCKS) as u64;
            blocks += advanced * active;
            rounds += advanced;
            let finished: Vec<(usize, [u8; 16])> = lanes
                .finishable(&data)
                .into_iter()
                .map(|slot| (slot, lanes.finish(slot, data[slot])))
                .collect();
            let finished: Vec<(u64, [u8; 16])> = finished
                .into_iter()
                .filter_map(|(slot, md5)| held[slot].take().map(|(ticket, _)| (ticket, md5)))
                .collect();
            // The buffers were dropped above: an upload thread that gets its
            // MD5 can reuse its buffer at once.
            if !finished.is_empty() {
                self.lock().done.extend(finished);
                self.changed.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reference(data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }

    /// Both ways of hashing this CPU can run.
    fn each_mode(concurrency: usize) -> Vec<Etags> {
        let mut modes = vec![Etags::with_lanes(concurrency, false)];
        if simd_available() {
            modes.push(Etags::with_lanes(concurrency, true));
        }
        modes
    }

    /// Runs `f` while the hasher thread runs (in the mode that has one), then
    /// ends it, also when `f` panics: a failing test must not hang.
    fn with_hasher(etags: &Etags, f: impl FnOnce()) {
        std::thread::scope(|scope| {
            let hasher = etags.needs_thread().then(|| scope.spawn(|| etags.run()));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            etags.close();
            if let Some(h) = hasher {
                h.join().unwrap();
            }
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        });
    }

    /// Sends `msgs` from threads of their own, `per_thread` each in turn
    /// (the i-th send of a thread taking 5 × i ms), and checks every MD5.
    fn send_all(etags: &Etags, msgs: &[Bytes], per_thread: usize) {
        with_hasher(etags, || {
            std::thread::scope(|scope| {
                let senders: Vec<_> = msgs
                    .chunks(per_thread)
                    .map(|chunk| {
                        scope.spawn(move || {
                            for (i, m) in chunk.iter().enumerate() {
                                let (sent, md5) = etags.during(m, || {
                                    std::thread::sleep(Duration::from_millis(5 * i as u64));
                                    m.len()
                                });
                                assert_eq!(sent, m.len());
                                assert_eq!(md5, reference(m));
                            }
                        })
                    })
                    .collect();
                for s in senders {
                    s.join().unwrap();
                }
            })
        });
    }

    #[test]
    fn md5s_during_sends_match_whatever_the_order() {
        let msgs: Vec<Bytes> = (0..12)
            .map(|i| Bytes::from(vec![i as u8; 100_000 + 977 * i]))
            .collect();
        for etags in each_mode(3) {
            send_all(&etags, &msgs, 4);
        }
    }

    #[test]
    fn more_uploads_than_lanes_all_get_their_md5() {
        // 12 uploads at once, 8 lanes: four segments wait for a free lane.
        let msgs: Vec<Bytes> = (0..12)
            .map(|i| Bytes::from(vec![i as u8 + 1; 200_000 + 64 * i]))
            .collect();
        for etags in each_mode(12) {
            send_all(&etags, &msgs, 1);
        }
    }

    #[test]
    fn a_lone_segment_is_hashed_once_its_send_waits() {
        // A batch of 4 never fills: the waiting sender gets its MD5 anyway.
        let m = Bytes::from(vec![5u8; 1 << 20]);
        for etags in each_mode(4) {
            with_hasher(&etags, || {
                let ((), md5) = etags.during(&m, || ());
                assert_eq!(md5, reference(&m));
            });
        }
    }

    #[test]
    fn waiters_hash_for_themselves_when_the_hasher_is_gone() {
        let etags = Etags::with_lanes(2, simd_available());
        etags.close();
        if etags.needs_thread() {
            etags.run();
        }
        let m = Bytes::from_static(b"abc");
        let ((), md5) = etags.during(&m, || ());
        assert_eq!(md5, reference(b"abc"));
    }

    #[test]
    fn the_buffer_is_free_once_the_md5_is_back() {
        for etags in each_mode(1) {
            let m = bytes::BytesMut::from(&[1u8; 300_000][..]).freeze();
            with_hasher(&etags, || {
                let ((), _) = etags.during(&m, || ());
                assert!(m.try_into_mut().is_ok(), "a clone is still held");
            });
        }
    }
}
