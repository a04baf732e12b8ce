//! The one HTTP request path every OpenStack service goes through: TLS,
//! timeouts, retries with a capped backoff, and errors that carry the
//! evidence (method, URL, status, the server's message, the request id).
//!
//! What is retried, and why:
//! - transport errors (connect refused/reset, timeouts; not a refused TLS
//!   certificate, which stays refused) and 5xx, with a capped
//!   exponential backoff, at most [`RetryPolicy::max_retries`] times;
//! - 429 and 503 also honour `Retry-After` (seconds) up to
//!   [`RetryPolicy::max_retry_after`]; a longer wait asked by the server ends
//!   the retries;
//! - never any other 4xx (a 401 is the session's business: it re-authenticates
//!   once, see `auth.rs`);
//! - a request that is not idempotent (a POST that creates something) is
//!   retried only when the server cannot have acted on it: the connection was
//!   never made, or the answer was 429/503. A retried snapshot create after a
//!   timeout could otherwise leave two snapshots behind.
//!
//! Bodies are [`Bytes`], so a retry re-sends the same buffer without a copy.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::streamer::{Answer, Streamer};
pub use super::streamer::{BodyReader, Early};
use crate::secret::Secret;

/// Time to establish a TCP (and TLS) connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for one request: send the body and receive the response headers; and
/// separately for each read of a streamed response body.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries after the first attempt, for transport errors and 5xx.
pub const MAX_RETRIES: u32 = 4;
/// The first backoff; each retry doubles it, up to [`BACKOFF_CAP`].
pub const BACKOFF_START: Duration = Duration::from_millis(250);
pub const BACKOFF_CAP: Duration = Duration::from_secs(8);
/// The longest `Retry-After` volsnap waits; a server asking more ends the retries.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of a server's plain-text error body goes into a message.
const MAX_MESSAGE: usize = 300;

/// The headers OpenStack services put their request id in (Keystone and
/// Cinder, Nova-style, Swift).
const REQUEST_ID_HEADERS: [&str; 3] = [
    "x-openstack-request-id",
    "x-compute-request-id",
    "x-trans-id",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff_start: Duration,
    pub backoff_cap: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: MAX_RETRIES,
            backoff_start: BACKOFF_START,
            backoff_cap: BACKOFF_CAP,
            max_retry_after: MAX_RETRY_AFTER,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based).
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_start
            .checked_mul(factor)
            .unwrap_or(self.backoff_cap)
            .min(self.backoff_cap)
    }
}

/// How to build the HTTP client; every field has a named default.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// A PEM file of CA certificates trusted besides the system's.
    pub cacert: Option<std::path::PathBuf>,
    /// Skip certificate verification (only when set explicitly; logged).
    pub insecure: bool,
    pub retry: RetryPolicy,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cacert: None,
            insecure: false,
            retry: RetryPolicy::default(),
        }
    }
}

/// A blocking HTTP client shared by all services (cheap to clone).
#[derive(Clone, Debug)]
pub struct Http {
    client: Client,
    /// Retries and timeouts, and what the async client for bodies sent or
    /// read as they go is built from (see [`Http::send_streamed`]).
    options: HttpOptions,
    /// Tells this client's streamed clients from another's on a thread.
    id: u64,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

static CRYPTO_PROVIDER: Once = Once::new();

/// rustls is built without a default provider (to keep aws-lc out of a
/// static binary); ring is installed as the process default once.
fn install_crypto_provider() {
    CRYPTO_PROVIDER.call_once(|| {
        // Err means another provider was installed first; that one serves too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Http {
    pub fn new(options: &HttpOptions) -> anyhow::Result<Http> {
        install_crypto_provider();
        let builder = Client::builder()
            .use_rustls_tls()
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            // OpenStack APIs do not redirect; following one would carry the
            // X-Auth-Token to wherever it points (reqwest strips only the
            // standard credential headers).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT);
        let mut builder = extra_roots(options)?
            .into_iter()
            .fold(builder, |b, cert| b.add_root_certificate(cert));
        if options.insecure {
            log::warn!(
                "TLS certificate verification is OFF (insecure = true): anyone on the path can read the credentials"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder.build().context("cannot build the HTTP client")?;
        Ok(Http {
            client,
            options: options.clone(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn streamer(&self, req: &Request) -> Result<Arc<Streamer>, Error> {
        Streamer::for_thread(self.id, || async_client(&self.options))
            .map_err(|e| Error::invalid(req, format!("{e:#}")))
    }

    /// `req` (its body aside) on `streamer`'s client, with `token`, and
    /// `timeout` over the whole exchange if any.
    fn async_request(
        streamer: &Streamer,
        req: &Request,
        token: Option<&Secret>,
        timeout: Option<Duration>,
    ) -> reqwest::RequestBuilder {
        let mut builder = streamer
            .client()
            .request(req.method.clone(), req.url.clone())
            .headers(req.headers.clone());
        if let Some(token) = token {
            builder = builder.header("x-auth-token", token_header(token));
        }
        match timeout {
            Some(timeout) => builder.timeout(timeout),
            None => builder,
        }
    }

    /// Sends `req` (which has no body of its own) with `body`, sent as it
    /// yields its chunks (chunked transfer), and reads the answer whole.
    /// One attempt: the caller decides what a failure means (a body that
    /// was read cannot be read again here). Each thread has its own client.
    pub fn send_streamed<B>(
        &self,
        req: &Request,
        token: Option<&Secret>,
        body: B,
    ) -> Result<(StatusCode, HeaderMap), Error>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let streamer = self.streamer(req)?;
        let timeout = Some(req.timeout.unwrap_or(self.options.request_timeout));
        let mut body = Some(reqwest::Body::wrap(body));
        // One attempt: a body that was read cannot be read again.
        let once = req.clone().no_retry();
        let answer = self.send_with(&once, || {
            let body = body.take().expect("one attempt");
            let builder = Self::async_request(&streamer, req, token, timeout).body(body);
            streamer
                .block_on(async { builder.send().await })
                .map(|resp| Answer::new(Arc::clone(&streamer), resp))
        })?;
        let (status, headers) = (answer.status(), answer.headers().clone());
        // Read whole, so that the connection is kept for the next.
        answer.text();
        Ok((status, headers))
    }

    /// Sends `req` (retried as [`send`](Self::send) does) and returns the
    /// answer's status and headers, and its body to read as it arrives, on
    /// the reading thread (see [`streamer`](super::streamer)). The request
    /// timeout bounds the wait for the headers and each read, not the whole
    /// body: a download of hours is fine, a read that stalls is not.
    ///
    /// `early`: the same request, sent ahead by [`send_early`](Self::send_early):
    /// its answer is the first attempt's.
    pub fn send_for_body(
        &self,
        req: &Request,
        token: Option<&Secret>,
        early: Option<Early>,
    ) -> Result<(StatusCode, HeaderMap, BodyReader), Error> {
        let streamer = self.streamer(req)?;
        let mut early = early;
        let answer = self.send_with(req, || {
            if let Some(outcome) = early.take().and_then(Early::answer) {
                return outcome;
            }
            let builder = self.body_request(&streamer, req, token);
            // Inside the runtime: `send` sets its timers as it is called.
            streamer
                .block_on(async { builder.send().await })
                .map(|resp| Answer::new(Arc::clone(&streamer), resp))
        })?;
        let (status, headers) = (answer.status(), answer.headers().clone());
        Ok((status, headers, answer.into_body()))
    }

    /// Sends `req` now, on this thread's runtime, for a
    /// [`send_for_body`](Self::send_for_body) to come; `None` if it cannot
    /// be (it is then sent when it is needed).
    pub fn send_early(&self, req: &Request, token: Option<&Secret>) -> Option<Early> {
        let streamer = self.streamer(req).ok()?;
        let builder = self.body_request(&streamer, req, token);
        Some(Early::send(streamer, builder))
    }

    fn body_request(
        &self,
        streamer: &Streamer,
        req: &Request,
        token: Option<&Secret>,
    ) -> reqwest::RequestBuilder {
        let timeout = req
            .timeout
            .or(req.deadline.map(|_| self.options.request_timeout))
            .map(|t| req.left().map_or(t, |left| t.min(left)));
        let builder = Self::async_request(streamer, req, token, timeout);
        match &req.body {
            Some(body) => builder.body(body.clone()),
            None => builder,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        self.options.request_timeout
    }

    /// Sends a request, retrying as the module doc says. A 2xx response
    /// comes back as is; anything else (a redirect too) becomes an [`Error`].
    pub fn send(&self, req: &Request, token: Option<&Secret>) -> Result<Response, Error> {
        self.send_with(req, || self.attempt(req, token))
    }

    /// The retry loop of [`send`](Self::send), over either client's answers.
    fn send_with<A: Answered>(
        &self,
        req: &Request,
        mut attempt: impl FnMut() -> reqwest::Result<A>,
    ) -> Result<A, Error> {
        let mut retry = 0;
        loop {
            if req.left().is_some_and(|left| left.is_zero()) {
                return Err(Error::past_deadline(req));
            }
            let started = Instant::now();
            let outcome = attempt();
            let elapsed = started.elapsed().as_millis();
            let (error, wait) = match outcome {
                Ok(resp) if resp.status().is_success() => {
                    log::debug!(
                        "{} {} -> {} ({elapsed} ms{})",
                        req.method,
                        req.url,
                        resp.status().as_u16(),
                        request_id(resp.headers())
                            .map(|id| format!(", {id}"))
                            .unwrap_or_default()
                    );
                    return Ok(resp);
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    let headers = resp.headers().clone();
                    let error = Error::from_parts(req, status, &headers, &resp.text());
                    log::debug!("{error} ({elapsed} ms)");
                    let retryable = if req.idempotent {
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
                    } else {
                        status == StatusCode::SERVICE_UNAVAILABLE
                            || status == StatusCode::TOO_MANY_REQUESTS
                    };
                    if !retryable {
                        return Err(error);
                    }
                    let honours = matches!(
                        status,
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    );
                    let wait = match retry_after.filter(|_| honours) {
                        Some(asked) if asked > self.options.retry.max_retry_after => {
                            return Err(error.note(format!(
                                "the server asked to retry after {}s, longer than volsnap waits ({}s)",
                                asked.as_secs(),
                                self.options.retry.max_retry_after.as_secs()
                            )));
                        }
                        Some(asked) => asked,
                        None => self.options.retry.backoff(retry + 1),
                    };
                    (error, wait)
                }
                Err(e) => {
                    let never_sent = e.is_connect();
                    let error = Error::transport(req, &e);
                    log::debug!("{error} ({elapsed} ms)");
                    if is_tls_failure(&e) {
                        // A certificate refused now is refused on every try.
                        return Err(error);
                    }
                    if !(req.idempotent || never_sent) {
                        return Err(error.note(
                            "not retried: the request may have reached the server".to_string(),
                        ));
                    }
                    (error, self.options.retry.backoff(retry + 1))
                }
            };
            if !req.retry || retry >= self.options.retry.max_retries {
                if req.retry && retry > 0 {
                    return Err(error.note(format!("gave up after {} attempts", retry + 1)));
                }
                return Err(error);
            }
            if req.left().is_some_and(|left| left <= wait) {
                return Err(error.note("no time left before the deadline to retry".to_string()));
            }
            retry += 1;
            log::warn!(
                "{error}; retry {retry}/{} in {} ms",
                self.options.retry.max_retries,
                wait.as_millis()
            );
            std::thread::sleep(wait);
        }
    }

    fn attempt(&self, req: &Request, token: Option<&Secret>) -> reqwest::Result<Response> {
        let mut builder = self
            .client
            .request(req.method.clone(), req.url.clone())
            .headers(req.headers.clone());
        if let Some(token) = token {
            builder = builder.header("x-auth-token", token_header(token));
        }
        if let Some(body) = &req.body {
            // Bytes clones share the buffer: a retry costs no copy.
            builder = builder.body(body.clone());
        }
        // A per-request timeout bounds the whole exchange, body included
        // (a body read as it arrives goes through `send_for_body`).
        let timeout = req.timeout.unwrap_or(self.options.request_timeout);
        builder
            .timeout(req.left().map_or(timeout, |left| timeout.min(left)))
            .send()
    }
}

/// The client for bodies sent or read as they go (see
/// [`streamer`](super::streamer)), configured as the blocking one except its
/// timeouts: it bounds each read (a restore of hours is fine, a read that
/// stalls for `request_timeout` is not); a request that must end in time
/// sets its own timeout.
fn async_client(options: &HttpOptions) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT);
    extra_roots(options)?
        .into_iter()
        .fold(builder, |b, cert| b.add_root_certificate(cert))
        .danger_accept_invalid_certs(options.insecure)
        .build()
        .context("cannot build the HTTP client for streamed bodies")
}

const USER_AGENT: &str = concat!("volsnap/", env!("CARGO_PKG_VERSION"));

/// The token as a header value, marked sensitive (never in a debug dump).
fn token_header(token: &Secret) -> HeaderValue {
    let mut value = HeaderValue::from_str(token.expose())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-token"));
    value.set_sensitive(true);
    value
}

/// What the retry loop needs of an answer, from either client.
trait Answered {
    fn status(&self) -> StatusCode;
    fn headers(&self) -> &HeaderMap;
    /// The whole body (an error's message); empty if unreadable.
    fn text(self) -> String;
}

impl Answered for Response {
    fn status(&self) -> StatusCode {
        Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        Response::headers(self)
    }
    fn text(self) -> String {
        Response::text(self).unwrap_or_default()
    }
}

impl Answered for Answer {
    fn status(&self) -> StatusCode {
        Answer::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        Answer::headers(self)
    }
    fn text(self) -> String {
        Answer::text(self)
    }
}

/// The CA certificates a client trusts besides the system's.
fn extra_roots(options: &HttpOptions) -> anyhow::Result<Vec<reqwest::Certificate>> {
    match &options.cacert {
        Some(path) => read_certificates(path),
        None => Ok(Vec::new()),
    }
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the CA file {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// One request, described once and sent (maybe several times) by [`Http::send`].
/// Its `Debug` shows neither headers nor body: an auth body holds a secret.
#[derive(Clone)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Overrides the client's request timeout (a large upload, a poll near a deadline).
    pub timeout: Option<Duration>,
    /// Safe to repeat after it may have reached the server.
    pub idempotent: bool,
    /// Whether [`Http::send`] retries at all (a status poll has its own budget).
    pub retry: bool,
    /// Nothing of this request outlives it: each attempt's timeout is cut to
    /// the time left, and no retry starts that would end past it (a request
    /// made while filesystems are frozen).
    pub deadline: Option<Instant>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)?;
        if let Some(body) = &self.body {
            write!(f, " ({} bytes)", body.len())?;
        }
        Ok(())
    }
}

impl Request {
    pub fn new(method: Method, url: Url) -> Request {
        let idempotent = method != Method::POST && method != Method::PATCH;
        Request {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            timeout: None,
            idempotent,
            retry: true,
            deadline: None,
        }
    }

    pub fn get(url: Url) -> Request {
        Request::new(Method::GET, url)
    }

    /// Adds a header; a name or value HTTP cannot carry is an
    /// [`ErrorKind::Invalid`] error naming both.
    pub fn header(mut self, name: &str, value: &str) -> Result<Request, Error> {
        let header = HeaderName::from_bytes(name.as_bytes())
            .ok()
            .zip(HeaderValue::from_str(value).ok());
        let Some((name, value)) = header else {
            return Err(Error::invalid(
                &self,
                format!("header {name}: {value:?} cannot be sent in an HTTP header (ASCII only)"),
            ));
        };
        self.headers.insert(name, value);
        Ok(self)
    }

    /// A JSON body (and its content type).
    pub fn json<T: serde::Serialize>(mut self, body: &T) -> Request {
        // Serializing plain structs and maps of strings cannot fail.
        let bytes = serde_json::to_vec(body).expect("JSON body");
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.body = Some(Bytes::from(bytes));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = Some(body.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    pub fn idempotent(mut self, idempotent: bool) -> Request {
        self.idempotent = idempotent;
        self
    }

    pub fn no_retry(mut self) -> Request {
        self.retry = false;
        self
    }

    pub fn deadline(mut self, deadline: Option<Instant>) -> Request {
        self.deadline = deadline;
        self
    }

    /// The time left before the deadline; `None` without one.
    fn left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Reads a successful response's JSON body; a body that does not parse is an
/// [`Error`] naming the request.
pub fn read_json<T: DeserializeOwned>(req: &Request, resp: Response) -> Result<T, Error> {
    let id = request_id(resp.headers());
    let status = resp.status();
    let bytes = resp.bytes().map_err(|e| Error::transport(req, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::decode(
            req,
            status,
            format!("the response is not the JSON expected: {e}"),
            id,
        )
    })
}

/// A failed OpenStack API call. The URL never holds a token (tokens travel in
/// headers only) and no header is ever part of the message.
#[derive(Debug)]
pub struct Error {
    pub method: Method,
    pub url: String,
    /// Boxed: an `Error` travels in every `Result` of the clients.
    pub kind: Box<ErrorKind>,
    notes: Vec<String>,
}

#[derive(Debug)]
pub enum ErrorKind {
    /// The server answered with a status that is not a success.
    Status {
        status: StatusCode,
        message: String,
        request_id: Option<String>,
    },
    /// No answer: connect, TLS, reset, timeout.
    Transport { message: String, timeout: bool },
    /// A success status whose body is not what the API promises.
    Decode {
        status: StatusCode,
        message: String,
        request_id: Option<String>,
    },
    /// Not sent: the request cannot be expressed (a name HTTP cannot carry).
    Invalid { message: String },
}

impl Error {
    /// A status that is not a success, from the answer's parts.
    fn from_parts(req: &Request, status: StatusCode, headers: &HeaderMap, body: &str) -> Error {
        let location = headers
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| format!("redirected to {l}, which volsnap does not follow"));
        Error {
            method: req.method.clone(),
            url: req.url.to_string(),
            kind: Box::new(ErrorKind::Status {
                status,
                message: location.unwrap_or_else(|| server_message(body)),
                request_id: request_id(headers),
            }),
            notes: Vec::new(),
        }
    }

    fn transport(req: &Request, err: &reqwest::Error) -> Error {
        Error {
            method: req.method.clone(),
            url: req.url.to_string(),
            kind: Box::new(ErrorKind::Transport {
                message: error_chain(err),
                timeout: err.is_timeout(),
            }),
            notes: Vec::new(),
        }
    }

    /// A success status with a body that is not what the API promises.
    pub fn decode(
        req: &Request,
        status: StatusCode,
        message: String,
        request_id: Option<String>,
    ) -> Error {
        Error {
            method: req.method.clone(),
            url: req.url.to_string(),
            kind: Box::new(ErrorKind::Decode {
                status,
                message,
                request_id,
            }),
            notes: Vec::new(),
        }
    }

    pub fn invalid(req: &Request, message: String) -> Error {
        Error {
            method: req.method.clone(),
            url: req.url.to_string(),
            kind: Box::new(ErrorKind::Invalid { message }),
            notes: Vec::new(),
        }
    }

    fn past_deadline(req: &Request) -> Error {
        Error {
            method: req.method.clone(),
            url: req.url.to_string(),
            kind: Box::new(ErrorKind::Transport {
                message: "not sent: its deadline has passed".to_string(),
                timeout: true,
            }),
            notes: Vec::new(),
        }
    }

    pub(crate) fn note(mut self, note: String) -> Error {
        self.notes.push(note);
        self
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self.kind.as_ref() {
            ErrorKind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// Worth asking again later: no answer, or a 5xx/429.
    pub fn is_transient(&self) -> bool {
        match self.kind.as_ref() {
            ErrorKind::Transport { .. } => true,
            ErrorKind::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ErrorKind::Decode { .. } | ErrorKind::Invalid { .. } => false,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self.kind.as_ref() {
            ErrorKind::Status { request_id, .. } | ErrorKind::Decode { request_id, .. } => {
                request_id.as_deref()
            }
            ErrorKind::Transport { .. } | ErrorKind::Invalid { .. } => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.method, self.url)?;
        match self.kind.as_ref() {
            ErrorKind::Status {
                status, message, ..
            }
            | ErrorKind::Decode {
                status, message, ..
            } => {
                write!(f, "{status}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
            }
            ErrorKind::Transport { message, .. } | ErrorKind::Invalid { message } => {
                f.write_str(message)?
            }
        }
        if let Some(id) = self.request_id() {
            write!(f, " (request id {id})")?;
        }
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// A TLS failure (certificate, protocol) somewhere in the cause chain. An
/// `io::Error` hides what it wraps from `source()`: look inside it too.
fn is_tls_failure(err: &reqwest::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    false
}

/// The whole cause chain of a reqwest error, without the URL (said once already).
fn error_chain(err: &reqwest::Error) -> String {
    let mut parts = vec![];
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        let text = match e.downcast_ref::<reqwest::Error>() {
            Some(r) => {
                let text = r.to_string();
                // reqwest appends " for url (...)"; the message names the URL already.
                match text.find(" for url (") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                }
            }
            None => e.to_string(),
        };
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// The request id of a response, from whichever header the service uses.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    REQUEST_ID_HEADERS
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The server's own words: Keystone `{"error": {"message": …}}`, Cinder
/// `{"itemNotFound": {"message": …}}` (the first key's `message`), or a plain
/// text body (Swift), trimmed and cut to a readable length.
pub fn server_message(body: &str) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(body) {
        let from_object = map.values().find_map(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        });
        if let Some(message) = from_object.or_else(|| {
            map.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        }) {
            return truncate(message.trim());
        }
    }
    let text = strip_html(body);
    truncate(text.split_whitespace().collect::<Vec<_>>().join(" ").trim())
}

/// Swift and some proxies answer with a small HTML page; keep its words only.
fn strip_html(body: &str) -> String {
    if !body.trim_start().starts_with('<') {
        return body.to_string();
    }
    let mut out = String::with_capacity(body.len());
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX_MESSAGE).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_each_service() {
        assert_eq!(
            server_message(
                r#"{"itemNotFound": {"message": "Volume abc could not be found.", "code": 404}}"#
            ),
            "Volume abc could not be found."
        );
        assert_eq!(
            server_message(
                r#"{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            server_message(
                "<html><h1>Not Found</h1><p>The resource could not be found.</p></html>"
            ),
            "Not Found The resource could not be found."
        );
        assert_eq!(server_message("  Unauthorized\n"), "Unauthorized");
        let long = "x".repeat(1000);
        assert_eq!(server_message(&long).chars().count(), MAX_MESSAGE + 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(250));
        assert_eq!(p.backoff(2), Duration::from_millis(500));
        assert_eq!(p.backoff(4), Duration::from_secs(2));
        assert_eq!(p.backoff(10), BACKOFF_CAP);
        assert_eq!(p.backoff(100), BACKOFF_CAP);
    }

    #[test]
    fn error_shows_the_evidence() {
        let e = Error {
            method: Method::GET,
            url: "http://cinder/v3/p/volumes/abc".into(),
            kind: Box::new(ErrorKind::Status {
                status: StatusCode::NOT_FOUND,
                message: "Volume abc could not be found.".into(),
                request_id: Some("req-123".into()),
            }),
            notes: vec![],
        };
        assert_eq!(
            e.to_string(),
            "GET http://cinder/v3/p/volumes/abc: 404 Not Found: Volume abc could not be found. (request id req-123)"
        );
        assert!(e.is_not_found());
    }
}
