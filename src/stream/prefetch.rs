//! Reading the stored stream on a thread of its own, a few MiB ahead.
//!
//! A restore is one stream from Swift, and Swift's proxy is the slow end
//! (it joins the segments). Read on the thread that also hashes, decrypts,
//! decompresses and writes into the hook's pipe, the socket was drained only
//! between those steps: the TCP window filled and the proxy waited. Here a
//! `download` thread reads into [`DEPTH`] buffers of [`CHUNK`] bytes in turn
//! and hands each full one over, so the socket is read while the rest of the
//! pipeline works (bench/RESULTS-swift.md). Memory: `DEPTH × CHUNK`, 1 MiB.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};

/// One hand-over: a `read` from the socket returns far less at once, so
/// the pipeline sees fewer, larger reads.
const CHUNK: usize = 256 << 10;
/// Buffers: one being filled, the others full and waiting, or being read.
const DEPTH: usize = 4;

type Filled = io::Result<(Vec<u8>, usize)>;

/// A [`Read`] over `inner`, read ahead on its own thread. Dropping it ends
/// the thread at its next hand-over (a read in progress finishes first).
pub struct Prefetch {
    full: Receiver<Filled>,
    empty: SyncSender<Vec<u8>>,
    current: Option<(Vec<u8>, usize)>,
    pos: usize,
}

impl Prefetch {
    pub fn new<R: Read + Send + 'static>(mut inner: R) -> io::Result<Prefetch> {
        let (full_tx, full) = mpsc::sync_channel::<Filled>(DEPTH);
        let (empty, empty_rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH);
        for _ in 0..DEPTH {
            empty
                .send(Vec::new())
                .expect("the receiver is alive and the channel has room");
        }
        std::thread::Builder::new()
            .name("download".into())
            .spawn(move || {
                while let Ok(mut buf) = empty_rx.recv() {
                    if buf.len() < CHUNK {
                        buf.resize(CHUNK, 0);
                    }
                    let mut n = 0;
                    let mut failed = None;
                    while n < CHUNK {
                        match inner.read(&mut buf[n..]) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    let end = n < CHUNK;
                    if n > 0 && full_tx.send(Ok((buf, n))).is_err() {
                        return;
                    }
                    if let Some(e) = failed {
                        let _ = full_tx.send(Err(e));
                        return;
                    }
                    if end {
                        return; // the closed channel is the end of the stream
                    }
                }
            })?;
        Ok(Prefetch {
            full,
            empty,
            current: None,
            pos: 0,
        })
    }
}

impl Read for Prefetch {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some((buf, n)) = &self.current {
                if self.pos < *n {
                    let k = out.len().min(n - self.pos);
                    out[..k].copy_from_slice(&buf[self.pos..self.pos + k]);
                    self.pos += k;
                    return Ok(k);
                }
                let (buf, _) = self.current.take().expect("checked above");
                // The thread may be gone (the end): nothing to give back to.
                let _ = self.empty.try_send(buf);
            }
            match self.full.recv() {
                Ok(Ok(filled)) => {
                    self.current = Some(filled);
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives out `data` a few odd-sized bytes at a time, then `error` if any.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        error: Option<io::Error>,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.error.take() {
                    Some(e) => Err(e),
                    None => Ok(0),
                };
            }
            let n = buf.len().min(7919).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn every_byte_arrives_in_order() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 333] {
            let want = data(len);
            let mut p = Prefetch::new(Trickle {
                data: want.clone(),
                at: 0,
                error: None,
            })
            .unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 100_003];
            loop {
                let n = p.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == want, "{len} bytes");
        }
    }

    #[test]
    fn an_error_comes_after_the_bytes_before_it() {
        let want = data(2 * CHUNK + 10);
        let mut p = Prefetch::new(Trickle {
            data: want.clone(),
            at: 0,
            error: Some(io::Error::new(io::ErrorKind::ConnectionReset, "broke off")),
        })
        .unwrap();
        let mut got = Vec::new();
        let err = p.read_to_end(&mut got).expect_err("no error");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(err.to_string(), "broke off");
        assert!(got == want);
    }
}
