//! The async client, driven on the thread that uses it: a request body
//! sent as it is written (a segment's PUT), and a response body read on the
//! thread that consumes it (a restore's GET).
//!
//! reqwest's blocking client runs its own runtime thread and hands every
//! chunk of a body across a channel to the caller: two thread wake-ups per
//! chunk, on a VM whose few vCPUs Swift's own download already fills (see
//! bench/RESULTS-swift.md). Here the caller's `block_on` drives the
//! connection itself, so a chunk goes from the socket to the caller on one
//! thread.

use std::cell::RefCell;
use std::io::{self, Read};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::{Buf, Bytes};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// A client and the current-thread runtime that drives its connections.
/// A pooled connection is driven by a task of the runtime that opened it,
/// which runs only while some thread waits in that runtime's `block_on`.
pub(super) struct Streamer {
    /// The [`Http`](super::http::Http) it was built for (its options).
    owner: u64,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

thread_local! {
    static THREAD_STREAMER: RefCell<Option<Arc<Streamer>>> = const { RefCell::new(None) };
}

impl Streamer {
    /// This thread's streamer for the client numbered `owner`, which
    /// `client` builds on first use. One per thread, so that concurrent
    /// uploads each drive their own connection; shared (an `Arc`) with a
    /// body being read, which may be read from another thread.
    pub(super) fn for_thread(
        owner: u64,
        client: impl FnOnce() -> anyhow::Result<reqwest::Client>,
    ) -> anyhow::Result<Arc<Streamer>> {
        THREAD_STREAMER.with(|cell| {
            let mut cell = cell.borrow_mut();
            match cell.as_ref() {
                Some(s) if s.owner == owner => Ok(Arc::clone(s)),
                _ => {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start the runtime for streamed bodies")?;
                    let s = Arc::new(Streamer {
                        owner,
                        runtime,
                        client: client()?,
                    });
                    *cell = Some(Arc::clone(&s));
                    Ok(s)
                }
            }
        })
    }

    pub(super) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub(super) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

/// A request sent ahead of its need (the next segment of a download): its
/// round trip passes while the runtime reads the current body, as the
/// runtime's task for it runs whenever the thread waits in `block_on`.
pub struct Early {
    streamer: Arc<Streamer>,
    sent: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl Early {
    pub(super) fn send(streamer: Arc<Streamer>, request: reqwest::RequestBuilder) -> Early {
        // `send` inside the task: it sets its timers as it is called.
        let sent = streamer.runtime.spawn(async move { request.send().await });
        Early { streamer, sent }
    }

    /// Its outcome, waiting for it; `None` if the task was lost (then the
    /// request is simply sent again).
    pub(super) fn answer(mut self) -> Option<reqwest::Result<Answer>> {
        let outcome = self.streamer.block_on(&mut self.sent).ok()?;
        Some(outcome.map(|resp| Answer::new(Arc::clone(&self.streamer), resp)))
    }
}

impl Drop for Early {
    /// Not needed after all (the download stopped): its connection closes.
    fn drop(&mut self) {
        self.sent.abort();
    }
}

/// An answer whose body is still to be read, with the runtime that reads it.
pub(super) struct Answer {
    streamer: Arc<Streamer>,
    response: reqwest::Response,
}

impl Answer {
    pub(super) fn new(streamer: Arc<Streamer>, response: reqwest::Response) -> Answer {
        Answer { streamer, response }
    }

    pub(super) fn status(&self) -> StatusCode {
        self.response.status()
    }

    pub(super) fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The whole body as text (an error's message); empty if unreadable.
    pub(super) fn text(self) -> String {
        self.streamer
            .block_on(self.response.text())
            .unwrap_or_default()
    }

    pub(super) fn into_body(self) -> BodyReader {
        BodyReader {
            streamer: self.streamer,
            response: self.response,
            pending: Bytes::new(),
        }
    }
}

/// A response body as an [`io::Read`], read on the caller's thread, each
/// chunk handed out without a copy until it is used up.
pub struct BodyReader {
    streamer: Arc<Streamer>,
    response: reqwest::Response,
    pending: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.streamer.block_on(self.response.chunk()) {
                Ok(Some(chunk)) => self.pending = chunk,
                Ok(None) => return Ok(0),
                Err(e) => {
                    let kind = if e.is_timeout() {
                        io::ErrorKind::TimedOut
                    } else {
                        io::ErrorKind::Other
                    };
                    return Err(io::Error::new(kind, e));
                }
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(n)
    }
}
