//! The segments' MD5s (their ETags), computed while the segments are
//! written and sent.
//!
//! A segment is PUT without an `ETag`; Swift answers the MD5 of what it
//! stored, and the upload thread compares it with the MD5 volsnap computed
//! of its buffer, here. A segment whose MD5 differs fails the backup (and
//! is deleted with the others); the SLO manifest lists volsnap's MD5 of
//! every segment, and Swift refuses the manifest if any stored segment
//! differs. So every byte is checked end to end, as an `ETag` sent with the
//! PUT would check it.
//!
//! One MD5 cannot be sped up, but independent ones can share instructions:
//! [`md5_lanes`] advances up to eight in lockstep for the price of one. Only
//! one segment is written at a time, so the hasher thread gathers segments:
//! it leaves the segments being written alone until as many have started
//! as there are buffers (`company`, at most eight), then hashes them
//! together as the newest one is written (the older ones' bytes are all
//! there). The group's MD5s are thus ready about when its newest segment is
//! full, which is when the oldest one's buffer is needed again (see
//! `segments`). With two buffers two lanes are busy instead of one, which
//! halves the MD5's CPU (≈ 2.5 instead of ≈ 4.3 s per 2 GiB here); with
//! four, a quarter. Segments that are all complete with no next one
//! starting soon (the last, or the producer waiting for a buffer) are
//! hashed without waiting for company.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use md5_lanes::{Lanes, LANES};

use super::fill::{Fill, Hasher};

/// Blocks each lane advances between two looks at the queue: 1 MiB.
const ROUND_BLOCKS: usize = 16 << 10;

/// How long complete segments wait for the next to start before they are
/// hashed without it: the producer starts the next one at once when a
/// buffer is free.
const COMPANY_WAIT: Duration = Duration::from_millis(5);

/// Hashes the segments in flight, in order; shared by the producer (which
/// queues each segment as it starts), the segments (which wake it as they
/// grow) and the hasher thread.
pub(crate) struct Etags {
    state: Mutex<State>,
    changed: Condvar,
    /// How many segments are hashed together: as many as can exist at once
    /// (the buffers), at most [`LANES`].
    company: usize,
}

#[derive(Default)]
struct State {
    queued: VecDeque<Arc<Fill>>,
    /// Something changed since the hasher last looked (a segment grew).
    poked: bool,
    /// No more segments will come.
    closed: bool,
}

impl Etags {
    /// `buffers`: how many segments can exist at once.
    pub(crate) fn new(buffers: usize) -> Etags {
        Etags {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            company: buffers.clamp(1, LANES),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No more segments are coming: the hasher thread ends once every
    /// queued one is hashed.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The hasher thread. However it ends (a panic too), the segments it
    /// held or had queued are told to hash themselves: no upload waits
    /// for it forever.
    pub(crate) fn run(&self) {
        struct Orphans<'a> {
            etags: &'a Etags,
            held: [Option<Arc<Fill>>; LANES],
        }
        impl Drop for Orphans<'_> {
            fn drop(&mut self) {
                let queued: Vec<Arc<Fill>> = self.etags.lock().queued.drain(..).collect();
                for fill in self.held.iter_mut().filter_map(Option::take).chain(queued) {
                    fill.set_md5(None);
                }
            }
        }
        let mut lanes = Lanes::new();
        let mut mine = Orphans {
            etags: self,
            held: Default::default(),
        };
        let held = &mut mine.held;
        let (mut blocks, mut rounds) = (0u64, 0u64);
        loop {
            // What each lane's segment holds now: (published length, ended).
            let mut seen: [(usize, bool); LANES] = [(0, false); LANES];
            {
                let mut state = self.lock();
                loop {
                    while let Some(slot) = lanes.free_slot() {
                        let Some(fill) = state.queued.pop_front() else {
                            break;
                        };
                        lanes.start(slot);
                        held[slot] = Some(fill);
                    }
                    state.poked = false;
                    for (slot, fill) in held.iter().enumerate() {
                        if let Some(fill) = fill {
                            seen[slot] = fill.progress();
                        }
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
                    let all_ended = seen
                        .iter()
                        .zip(held.iter())
                        .all(|(s, h)| h.is_none() || s.1);
                    if active >= self.company || (active >= 1 && state.closed) {
                        break;
                    }
                    if active >= 1 && all_ended {
                        // All complete: the next segment may start in a
                        // moment; if not (the producer waits for one of
                        // these buffers, or is slow), hash them now.
                        let (next, timeout) = self
                            .changed
                            .wait_timeout_while(state, COMPANY_WAIT, |s| {
                                s.queued.is_empty() && !s.closed
                            })
                            .unwrap_or_else(|e| e.into_inner());
                        state = next;
                        if timeout.timed_out() {
                            break;
                        }
                        continue;
                    }
                    // Nothing, or too few segments and one being written:
                    // wait for more.
                    state = self
                        .changed
                        .wait_while(state, |s| !s.poked && s.queued.is_empty() && !s.closed)
                        .unwrap_or_else(|e| e.into_inner());
                }
            }
            let (done, stuck) = {
                let data: [&[u8]; LANES] = std::array::from_fn(|i| {
                    held[i]
                        .as_ref()
                        .map_or(&[][..], |fill| fill.written(seen[i].0))
                });
                let active = lanes.active() as u64;
                let advanced = lanes.advance(&data, ROUND_BLOCKS) as u64;
                blocks += advanced * active;
                rounds += advanced;
                // A lane whose segment ended with less than a block left
                // is done.
                let done: Vec<(usize, [u8; 16])> = lanes
                    .finishable(&data)
                    .into_iter()
                    .filter(|&slot| seen[slot].1)
                    .map(|slot| (slot, lanes.finish(slot, data[slot])))
                    .collect();
                let stuck = advanced == 0 && done.is_empty();
                (done, stuck)
            };
            for (slot, md5) in done {
                if let Some(fill) = held[slot].take() {
                    fill.set_md5(Some(md5));
                }
            }
            if stuck {
                // Every lane is waiting for bytes of a segment being
                // written (less than a block past what is hashed).
                let state = self.lock();
                if !state.poked && state.queued.is_empty() && !state.closed {
                    drop(
                        self.changed
                            .wait_timeout_while(state, COMPANY_WAIT, |s| !s.poked)
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
            }
        }
    }
}

impl Hasher for Etags {
    /// A segment has started: hash it.
    fn queue(&self, fill: Arc<Fill>) {
        self.lock().queued.push_back(fill);
        self.changed.notify_all();
    }

    /// A segment grew or ended.
    fn poke(&self) {
        self.lock().poked = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::fill::Segment;
    use crate::stream::pool::Pool;
    use md5::{Digest, Md5};
    use std::sync::atomic::AtomicBool;

    /// Writes `sizes` segments one after the other, as the producer does,
    /// with `buffers` buffers, while the hasher runs; returns each
    /// segment's MD5 as its upload would get it, and the data.
    fn hash_in_sequence(sizes: &[usize], buffers: usize) -> Vec<(Option<[u8; 16]>, Vec<u8>)> {
        let etags = Arc::new(Etags::new(buffers));
        let pool = Pool::new(sizes.iter().copied().max().unwrap(), buffers);
        std::thread::scope(|scope| {
            let hasher = scope.spawn(|| etags.run());
            let mut uploads = Vec::new();
            for (i, &size) in sizes.iter().enumerate() {
                let buf = pool.take(&AtomicBool::new(false)).unwrap();
                let (fill, mut writer) = Fill::new(
                    buf,
                    Arc::clone(&pool),
                    Some(etags.clone() as Arc<dyn Hasher>),
                );
                let segment = Segment {
                    index: i as u32,
                    fill,
                };
                // The upload: waits for the MD5, then lets the buffer go.
                uploads.push(scope.spawn(move || {
                    let md5 = segment.md5();
                    (md5, segment.whole().map(|b| b.to_vec()).unwrap_or_default())
                }));
                let data: Vec<u8> = (0..size).map(|j| (j * 7 + i * 13) as u8).collect();
                for chunk in data.chunks(10_007) {
                    writer.append(chunk);
                }
                writer.complete();
            }
            etags.close();
            let out = uploads.into_iter().map(|u| u.join().unwrap()).collect();
            hasher.join().unwrap();
            out
        })
    }

    #[test]
    fn every_segment_gets_its_md5_with_one_or_more_buffers() {
        let sizes = [300_000, 300_000, 300_000, 300_000, 123_457, 64, 1];
        for buffers in [1, 2, 3, 4, 8, 9] {
            let got = hash_in_sequence(&sizes, buffers);
            assert_eq!(got.len(), sizes.len());
            for (i, (md5, data)) in got.iter().enumerate() {
                assert_eq!(data.len(), sizes[i]);
                let want: [u8; 16] = Md5::digest(data).into();
                assert_eq!(*md5, Some(want), "segment {i}, {buffers} buffers");
            }
        }
    }

    #[test]
    fn an_abandoned_segment_has_no_md5_and_the_rest_do() {
        let etags = Arc::new(Etags::new(2));
        let pool = Pool::new(1000, 2);
        std::thread::scope(|scope| {
            let hasher = scope.spawn(|| etags.run());
            let stop = AtomicBool::new(false);
            let (a, mut wa) = Fill::new(
                pool.take(&stop).unwrap(),
                Arc::clone(&pool),
                Some(etags.clone() as Arc<dyn Hasher>),
            );
            wa.append(&[1u8; 1000]);
            wa.complete();
            let (b, mut wb) = Fill::new(
                pool.take(&stop).unwrap(),
                Arc::clone(&pool),
                Some(etags.clone() as Arc<dyn Hasher>),
            );
            wb.append(&[2u8; 500]);
            drop(wb);
            etags.close();
            let a = Segment { index: 0, fill: a };
            let b = Segment { index: 1, fill: b };
            assert_eq!(a.md5(), Some(Md5::digest([1u8; 1000]).into()));
            assert_eq!(b.md5(), None);
            hasher.join().unwrap();
        });
    }

    /// A segment the hasher ended without (what its drop guard does on a
    /// panic: `set_md5(None)`) hashes itself when its upload asks.
    #[test]
    fn an_orphaned_segment_hashes_itself() {
        let etags = Arc::new(Etags::new(1));
        let pool = Pool::new(100, 1);
        let (fill, mut w) = Fill::new(
            pool.take(&AtomicBool::new(false)).unwrap(),
            Arc::clone(&pool),
            Some(etags.clone() as Arc<dyn Hasher>),
        );
        w.append(b"abc");
        w.complete();
        fill.set_md5(None);
        let segment = Segment { index: 0, fill };
        assert_eq!(segment.md5(), Some(Md5::digest(b"abc").into()));
    }
}
