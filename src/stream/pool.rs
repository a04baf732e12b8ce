//! The segment buffers: a strict pool, so that a backup's memory is
//! `segment_size × concurrency` however long the stream and however late
//! the last reference to a buffer's bytes goes (see `segments`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The segment buffers: at most `limit` of `size` bytes ever exist at once.
pub(crate) struct Pool {
    size: usize,
    limit: usize,
    state: Mutex<PoolState>,
    back: Condvar,
}

struct PoolState {
    free: Vec<Vec<u8>>,
    allocated: usize,
}

impl Pool {
    pub(crate) fn new(size: usize, limit: usize) -> Arc<Pool> {
        Arc::new(Pool {
            size,
            limit: limit.max(1),
            state: Mutex::new(PoolState {
                free: Vec::new(),
                allocated: 0,
            }),
            back: Condvar::new(),
        })
    }

    /// An empty buffer with `size` bytes of capacity: a returned one, a new
    /// one while fewer than `limit` exist, else the next to come back.
    /// `None` if `stop` is set while waiting.
    pub(crate) fn take(&self, stop: &AtomicBool) -> Option<Vec<u8>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(buf) = state.free.pop() {
                return Some(buf);
            }
            if state.allocated < self.limit {
                state.allocated += 1;
                return Some(Vec::with_capacity(self.size));
            }
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            // Bounded, so a failure elsewhere (which sets `stop` without
            // returning a buffer) is noticed.
            state = self
                .back
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .push(buf);
        self.back.notify_one();
    }

    /// Buffers allocated so far (at most `limit`).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.state.lock().unwrap().allocated
    }
}
