//! Faults the real Keystone, Cinder and Swift in `tests/cloud/` cannot be made
//! to produce on demand: a 500 that goes away, connection resets, a server
//! that never answers, 429 with `Retry-After`, a 200 with a broken body, a
//! token refused twice. Everything else is tested against the real services
//! (`tests/openstack.rs`). Each test asserts the exact number of attempts.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;
use volsnap::openstack::auth::{self, Env, Session};
use volsnap::openstack::cinder::{self, Cinder, Target};
use volsnap::openstack::http::{Http, HttpOptions, RetryPolicy};
use volsnap::openstack::swift::Swift;
use volsnap::secret::Secret;

const RETRIES: u32 = 3;

fn options() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            max_retries: RETRIES,
            backoff_start: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(40),
            max_retry_after: Duration::from_secs(2),
        },
        ..HttpOptions::default()
    }
}

fn session() -> Session {
    Session::with_token(Http::new(&options()).unwrap(), Secret::new("t0ken"))
}

fn cinder(base: &str) -> Cinder {
    Cinder::new(session(), Url::parse(&format!("{base}/v3/proj")).unwrap())
}

const VOLUME: &str = r#"{"volume": {"id": "v1", "status": "in-use", "size": 1,
  "attachments": [{"server_id": "s1", "device": "/dev/vdb"}]}}"#;

fn snapshot(status: &str) -> String {
    format!(r#"{{"snapshot": {{"id": "s1", "status": "{status}", "volume_id": "v1", "size": 1}}}}"#)
}

/// Why a mock: a real Cinder does not fail with a 500 once and then recover.
#[test]
fn a_500_is_retried_then_succeeds() {
    let mut server = mockito::Server::new();
    let fail = server
        .mock("GET", "/v3/proj/volumes/v1")
        .match_header("x-auth-token", "t0ken")
        .match_header("openstack-api-version", cinder::MICROVERSION)
        .with_status(500)
        .with_header("x-openstack-request-id", "req-500")
        .with_body(r#"{"computeFault": {"message": "boom", "code": 500}}"#)
        .expect(1)
        .create();
    let ok = server
        .mock("GET", "/v3/proj/volumes/v1")
        .with_status(200)
        .with_body(VOLUME)
        .expect(1)
        .create();
    let v = cinder(&server.url()).volume("v1").unwrap();
    assert_eq!(v.attachments[0].device.as_deref(), Some("/dev/vdb"));
    fail.assert();
    ok.assert();
}

/// Why a mock: 5xx on every attempt, to see the retries end at the bound.
#[test]
fn persistent_500s_give_up_after_the_bound_with_the_evidence() {
    let mut server = mockito::Server::new();
    let fail = server
        .mock("GET", "/v3/proj/volumes/v1")
        .with_status(502)
        .with_header("x-openstack-request-id", "req-502")
        .with_body("Bad Gateway")
        .expect(1 + RETRIES as usize)
        .create();
    let err = cinder(&server.url()).volume("v1").unwrap_err();
    fail.assert();
    let text = err.to_string();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(502));
    for part in [
        "GET http://",
        "/v3/proj/volumes/v1",
        "502 Bad Gateway: Bad Gateway",
        "request id req-502",
        "gave up after 4 attempts",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    assert!(!text.contains("t0ken"));
}

/// Why a mock: the real services never send 429; Retry-After is honoured.
#[test]
fn a_429_waits_for_retry_after() {
    let mut server = mockito::Server::new();
    let busy = server
        .mock("HEAD", "/v1/AUTH_p/backups")
        .with_status(429)
        .with_header("retry-after", "1")
        .expect(1)
        .create();
    let ok = server
        .mock("HEAD", "/v1/AUTH_p/backups")
        .with_status(204)
        .expect(1)
        .create();
    let swift = Swift::new(
        session(),
        Url::parse(&format!("{}/v1/AUTH_p", server.url())).unwrap(),
    );
    let started = Instant::now();
    swift.ensure_container("backups", false).unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "did not wait");
    busy.assert();
    ok.assert();
}

/// Why a mock: a Retry-After beyond volsnap's bound ends the retries at once.
#[test]
fn a_retry_after_beyond_the_bound_is_not_waited_for() {
    let mut server = mockito::Server::new();
    let busy = server
        .mock("GET", "/v3/proj/volumes/v1")
        .with_status(503)
        .with_header("retry-after", "3600")
        .with_body("maintenance")
        .expect(1)
        .create();
    let started = Instant::now();
    let err = cinder(&server.url()).volume("v1").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    busy.assert();
    assert!(
        err.to_string()
            .contains("asked to retry after 3600s, longer than volsnap waits (2s)"),
        "{err}"
    );
}

/// Why a mock: a real Cinder does not answer 200 with a broken body. Not
/// retried: the server did answer.
#[test]
fn malformed_json_is_an_error_naming_the_request() {
    let mut server = mockito::Server::new();
    let broken = server
        .mock("GET", "/v3/proj/snapshots/s1")
        .with_status(200)
        .with_header("x-openstack-request-id", "req-bad")
        .with_body(r#"{"snapshot": {"id": "s1", "stat"#)
        .expect(1)
        .create();
    let err = cinder(&server.url()).snapshot("s1").unwrap_err();
    broken.assert();
    let text = err.to_string();
    assert!(
        text.contains("/v3/proj/snapshots/s1: 200 OK: the response is not the JSON expected")
            && text.contains("req-bad"),
        "{text}"
    );
}

/// Why a mock: the real services answer 4xx only for real mistakes; this
/// proves a 4xx is never retried, whatever it is.
#[test]
fn a_4xx_is_not_retried() {
    let mut server = mockito::Server::new();
    let bad = server
        .mock("POST", "/v3/proj/snapshots")
        .with_status(400)
        .with_header("x-openstack-request-id", "req-400")
        .with_body(r#"{"badRequest": {"message": "Invalid input received", "code": 400}}"#)
        .expect(1)
        .create();
    let err = cinder(&server.url())
        .create_snapshot(&cinder::NewSnapshot {
            volume_id: "v1".into(),
            name: "x".into(),
            ..Default::default()
        })
        .unwrap_err();
    bad.assert();
    assert_eq!(
        err.to_string(),
        format!(
            "POST {}/v3/proj/snapshots: 400 Bad Request: Invalid input received (request id req-400)",
            server.url()
        )
    );
}

/// A tiny TCP server: the first `resets` connections are reset (closed with
/// the request unread, so the kernel sends RST), later ones get `answer`.
/// Why not mockito: it cannot reset a connection.
fn resetting_server(resets: usize, answer: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1];
            // Wait until the request is there, leave it unread, close: RST.
            let _ = stream.peek(&mut buf);
            if n < resets {
                drop(stream);
                continue;
            }
            let mut request = vec![0u8; 64 * 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                )
                .as_bytes(),
            );
        }
    });
    (url, count)
}

#[test]
fn a_connection_reset_is_retried() {
    let (url, count) = resetting_server(2, VOLUME);
    let v = cinder(&url).volume("v1").unwrap();
    assert_eq!(v.id, "v1");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn resets_on_every_attempt_end_at_the_bound() {
    let (url, count) = resetting_server(usize::MAX, "");
    let err = cinder(&url).volume("v1").unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 1 + RETRIES as usize);
    assert!(err.status().is_none());
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("gave up after 4 attempts"),
        "{err}"
    );
}

/// A server that accepts and never answers. Why not mockito: it always answers.
fn stalled_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, count)
}

#[test]
fn a_stalled_response_times_out_and_is_retried_when_idempotent() {
    let (url, count) = stalled_server();
    let started = Instant::now();
    let err = cinder(&url).volume("v1").unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(count.load(Ordering::SeqCst), 1 + RETRIES as usize);
    // Four timeouts of 500 ms each, plus short backoffs.
    assert!(elapsed >= Duration::from_millis(2000), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let text = err.to_string();
    assert!(
        text.contains("timed out") || text.contains("timeout"),
        "{text}"
    );
}

#[test]
fn a_stalled_create_is_not_repeated() {
    // A snapshot create that timed out may have been done: repeating it
    // could leave a second snapshot behind.
    let (url, count) = stalled_server();
    let err = cinder(&url)
        .create_snapshot(&cinder::NewSnapshot {
            volume_id: "v1".into(),
            name: "x".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(
        err.to_string()
            .contains("not retried: the request may have reached the server"),
        "{err}"
    );
}

/// Why a mock: a real Cinder cannot be told to fail polls with a 503 for a
/// while. A wait tolerates a few transient errors and still sees `available`.
#[test]
fn a_wait_tolerates_transient_errors() {
    let mut server = mockito::Server::new();
    let path = "/v3/proj/snapshots/s1";
    let creating = server
        .mock("GET", path)
        .with_body(snapshot("creating"))
        .expect(1)
        .create();
    let flaky = server.mock("GET", path).with_status(503).expect(2).create();
    let available = server
        .mock("GET", path)
        .with_body(snapshot("available"))
        .expect(1)
        .create();
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = cinder(&server.url())
        .wait_snapshot("s1", Target::Status("available"), deadline)
        .unwrap()
        .unwrap();
    assert_eq!(s.status, "available");
    creating.assert();
    flaky.assert();
    available.assert();
}

/// Why a mock: a poll that keeps failing must exhaust the budget, each poll
/// sent once (the wait's budget replaces the HTTP retries).
#[test]
fn a_wait_gives_up_after_its_transient_budget() {
    let mut server = mockito::Server::new();
    let flaky = server
        .mock("GET", "/v3/proj/snapshots/s1")
        .with_status(500)
        .expect(1 + cinder::POLL_TRANSIENT_BUDGET as usize)
        .create();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = cinder(&server.url())
        .wait_snapshot("s1", Target::Status("available"), deadline)
        .unwrap_err();
    flaky.assert();
    assert!(
        format!("{err:#}").contains("while waiting for snapshot s1"),
        "{err:#}"
    );
}

/// Why a mock: to see the deadline hit without waiting for a slow backend.
#[test]
fn a_wait_ends_at_its_deadline() {
    let mut server = mockito::Server::new();
    let _creating = server
        .mock("GET", "/v3/proj/snapshots/s1")
        .with_body(snapshot("creating"))
        .expect_at_least(3)
        .create();
    let started = Instant::now();
    let err = cinder(&server.url())
        .wait_snapshot(
            "s1",
            Target::Status("available"),
            started + Duration::from_millis(400),
        )
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
    assert!(
        err.to_string().contains("still \"creating\"") && err.to_string().contains("deadline"),
        "{err}"
    );
}

const TOKEN_BODY: &str = r#"{"token": {"expires_at": "2099-01-01T00:00:00Z",
  "project": {"id": "p", "name": "db"}, "user": {"id": "u", "name": "alice"},
  "catalog": [{"type": "block-storage", "name": "cinder", "endpoints": [
    {"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "CINDER"}]}]}}"#;

/// Why a mock: a real service does not refuse a fresh token twice in a row.
/// A 401 re-authenticates once and repeats the request; a second 401 is final.
#[test]
fn a_401_reauthenticates_once_then_fails() {
    let mut server = mockito::Server::new();
    let body = TOKEN_BODY.replace("CINDER", &format!("{}/v3/p", server.url()));
    let keystone = server
        .mock("POST", "/v3/auth/tokens")
        .match_body(mockito::Matcher::PartialJsonString(
            r#"{"auth": {"identity": {"methods": ["application_credential"]}}}"#.into(),
        ))
        .with_status(201)
        .with_header("x-subject-token", "tok-fresh")
        .with_body(body)
        .expect(2)
        .create();
    let refused = server
        .mock("GET", "/v3/p/volumes/v1")
        .with_status(401)
        .with_header("x-openstack-request-id", "req-401")
        .with_body(r#"{"error": {"message": "The request you have made requires authentication.", "code": 401}}"#)
        .expect(2)
        .create();
    let env = Env {
        vars: [
            ("OS_AUTH_URL", format!("{}/v3", server.url())),
            ("OS_APPLICATION_CREDENTIAL_ID", "ac".to_string()),
            ("OS_APPLICATION_CREDENTIAL_SECRET", "s3cret".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        cwd: None,
    };
    let mut config = auth::resolve(&Default::default(), &env).unwrap();
    config.http = options();
    let session = Session::connect(config).unwrap();
    let cinder = volsnap::openstack::cinder(&session).unwrap();
    let err = cinder.volume("v1").unwrap_err();
    keystone.assert();
    refused.assert();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
    assert!(err.to_string().contains("req-401"), "{err}");
    assert!(!err.to_string().contains("s3cret"));
}

/// Why a mock: OpenStack services do not redirect. A redirect is not
/// followed: it would carry the X-Auth-Token to wherever it points.
#[test]
fn a_redirect_is_not_followed() {
    let mut server = mockito::Server::new();
    let moved = server
        .mock("GET", "/v3/proj/volumes/v1")
        .with_status(302)
        .with_header("location", "http://elsewhere.example/steal")
        .expect(1)
        .create();
    let err = cinder(&server.url()).volume("v1").unwrap_err();
    moved.assert();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(302));
    assert!(
        err.to_string().contains(
            "302 Found: redirected to http://elsewhere.example/steal, which volsnap does not follow"
        ),
        "{err}"
    );
}

// ------------------------------------------------- a download's body

/// A piece of a body, sent after its pause.
type Piece = (Duration, Vec<u8>);

/// A server that answers each connection with the next of `answers`: a
/// status line and headers, then body pieces, each after its pause; the
/// connection then stays open (a stall) unless the answer says `close`.
/// Why not mockito: it cannot pause in the middle of a body.
fn scripted_server(answers: Vec<(&'static str, Vec<Piece>)>) -> (String, Arc<AtomicUsize>) {
    let (url, count, _) = scripted_server_seeing(answers);
    (url, count)
}

/// As [`scripted_server`], with the head of each request it read.
fn scripted_server_seeing(
    answers: Vec<(&'static str, Vec<Piece>)>,
) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let heads = requests.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let mut answers = answers.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            seen.fetch_add(1, Ordering::SeqCst);
            let Some((head, pieces)) = answers.next() else {
                return;
            };
            let mut request = vec![0u8; 64 * 1024];
            let n = stream.read(&mut request).unwrap_or(0);
            heads
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&request[..n]).into_owned());
            let _ = stream.write_all(head.as_bytes());
            for (pause, piece) in pieces {
                std::thread::sleep(pause);
                if stream.write_all(&piece).is_err() {
                    break;
                }
            }
            held.push(stream);
        }
    });
    (url, count, requests)
}

fn swift_at(url: &str) -> Swift {
    Swift::new(session(), Url::parse(&format!("{url}/v1/AUTH_p")).unwrap())
}

fn read_all(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).map(|_| out)
}

/// A download's body is read on the caller's thread: a body that stops
/// coming fails after `request_timeout` without more (no hang), naming how
/// far it got.
#[test]
fn a_download_that_stalls_mid_body_fails_after_the_request_timeout() {
    let (url, count) = scripted_server(vec![(
        "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n",
        vec![(Duration::ZERO, vec![7u8; 100_000])],
    )]);
    let reader = swift_at(&url).get_object("c", "o").unwrap();
    assert_eq!(reader.info.size, 1_048_576);
    let started = Instant::now();
    // On a thread, so that a read with no timeout fails this test, not hangs it.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(read_all(reader)));
    let err = result
        .recv_timeout(Duration::from_secs(10))
        .expect("the stalled download did not fail in 10 s")
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let text = err.to_string();
    assert!(text.contains("after 100000 of 1048576 bytes"), "{text}");
    assert!(text.contains("timed out"), "{text}");
    assert_eq!(count.load(Ordering::SeqCst), 1, "a body is never retried");
}

/// The request timeout bounds each read, not the whole body: a download
/// that keeps coming, slower than the timeout in total, completes.
#[test]
fn a_download_longer_than_the_request_timeout_completes() {
    let pieces: Vec<_> = (0..5u8)
        .map(|i| (Duration::from_millis(300), vec![i; 10_000]))
        .collect();
    let (url, _) = scripted_server(vec![(
        "HTTP/1.1 200 OK\r\ncontent-length: 50000\r\n\r\n",
        pieces,
    )]);
    let started = Instant::now();
    let body = read_all(swift_at(&url).get_object("c", "o").unwrap()).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(body.len(), 50_000);
    assert!(body[..10_000].iter().all(|b| *b == 0) && body[40_000..].iter().all(|b| *b == 4));
}

/// A 503 before the body is retried as any GET's; then the body is read
/// whole on a new connection.
#[test]
fn a_download_refused_with_503_is_retried() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (url, count) = scripted_server(vec![
        (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy",
            vec![],
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 300000\r\nconnection: close\r\n\r\n",
            vec![(Duration::ZERO, data.clone())],
        ),
    ]);
    let body = read_all(swift_at(&url).get_object("c", "o").unwrap()).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(body == data);
}

// Two small SLOs for the download tests: "hello" + "world" (md5
// 5d41402a…, 7d793037…) and "hello" alone: the HEAD, the manifest, and
// segment 2 whole.
const HELLO_WORLD_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\
    x-static-large-object: True\r\nconnection: close\r\n\r\n";
const HELLO_WORLD_MANIFEST: &str = "HTTP/1.1 200 OK\r\ncontent-length: 159\r\n\
    connection: close\r\n\r\n\
    [{\"name\":\"/c_segments/s/1\",\"hash\":\"5d41402abc4b2a76b9719d911017c592\",\"bytes\":5},\
    {\"name\":\"/c_segments/s/2\",\"hash\":\"7d793037a0760186574b0282f2f435e7\",\"bytes\":5}]";
const HELLO_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\
    x-static-large-object: True\r\nconnection: close\r\n\r\n";
const HELLO_MANIFEST: &str = "HTTP/1.1 200 OK\r\ncontent-length: 80\r\n\
    connection: close\r\n\r\n\
    [{\"name\":\"/c_segments/s/1\",\"hash\":\"5d41402abc4b2a76b9719d911017c592\",\"bytes\":5}]";
const WORLD: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\
    etag: 7d793037a0760186574b0282f2f435e7\r\nconnection: close\r\n\r\nworld";

/// An answer sent whole at once.
fn answer(text: &'static str) -> (&'static str, Vec<Piece>) {
    (text, vec![])
}

/// A download reads an SLO's segments, each GET sent while the one before
/// is read: that early GET's answer is the first attempt's, so a 503 to it
/// is retried like any, and a 200 to it is read (the server answers no
/// further connection); each segment is checked against its manifest entry.
#[test]
fn a_segment_sent_early_is_used_and_retried_when_refused() {
    let (url, count) = scripted_server(vec![
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 11\r\nx-static-large-object: True\r\n\
             connection: close\r\n\r\n",
            vec![],
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 238\r\nconnection: close\r\n\r\n\
             [{\"name\":\"/c_segments/s/1\",\"hash\":\"5d41402abc4b2a76b9719d911017c592\",\"bytes\":5},{\"name\":\"/c_segments/s/2\",\"hash\":\"7d793037a0760186574b0282f2f435e7\",\"bytes\":5},{\"name\":\"/c_segments/s/3\",\"hash\":\"9033e0e305f247c0c3c80d0c7848c8b3\",\"bytes\":1}]",
            vec![],
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\netag: \"5d41402abc4b2a76b9719d911017c592\"\r\n\
             connection: close\r\n\r\nhello",
            vec![],
        ),
        // Segment 2's GET, sent early while segment 1 is read.
        (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy",
            vec![],
        ),
        answer(WORLD),
        // Segment 3's GET, sent early while segment 2 is read: the last answer.
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\netag: 9033e0e305f247c0c3c80d0c7848c8b3\r\n\
             connection: close\r\n\r\n!",
            vec![],
        ),
    ]);
    let body = read_all(swift_at(&url).download("c", "o").unwrap()).unwrap();
    assert_eq!(body, b"helloworld!");
    assert_eq!(count.load(Ordering::SeqCst), 6);
}

/// A segment whose body ends before the manifest's size is an error naming
/// it, not a short stream.
#[test]
fn a_segment_shorter_than_its_manifest_entry_is_an_error() {
    let (url, _) = scripted_server(vec![
        answer(HELLO_HEAD),
        answer(HELLO_MANIFEST),
        // Swift's headers agree; the body breaks off after 3 bytes.
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\netag: 5d41402abc4b2a76b9719d911017c592\r\n\
             connection: close\r\n\r\nhel",
            vec![],
        ),
    ]);
    let err = read_all(swift_at(&url).download("c", "o").unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/c_segments/s/1"), "{text}");
    assert!(text.contains("at byte 3 of 5"), "{text}");
}

/// A segment whose body stops coming is read again from where it stopped
/// (`Range`), if it is still the same segment (`If-Match` its ETag), and
/// the download goes on; the segment sent early meanwhile is used.
#[test]
fn a_segment_that_breaks_off_is_read_again_from_where_it_stopped() {
    let (url, count, requests) = scripted_server_seeing(vec![
        answer(HELLO_WORLD_HEAD),
        answer(HELLO_WORLD_MANIFEST),
        // Three of five bytes, then nothing: a read times out.
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\netag: 5d41402abc4b2a76b9719d911017c592\r\n\
             connection: close\r\n\r\nhel",
            vec![],
        ),
        // Segment 2's GET, sent early while segment 1 is read.
        answer(WORLD),
        (
            "HTTP/1.1 206 Partial Content\r\ncontent-length: 2\r\ncontent-range: bytes 3-4/5\r\n\
             etag: 5d41402abc4b2a76b9719d911017c592\r\nconnection: close\r\n\r\nlo",
            vec![],
        ),
    ]);
    let body = read_all(swift_at(&url).download("c", "o").unwrap()).unwrap();
    assert_eq!(body, b"helloworld");
    assert_eq!(count.load(Ordering::SeqCst), 5);
    let requests = requests.lock().unwrap();
    let again = requests[4].to_ascii_lowercase();
    assert!(
        again.starts_with("get /v1/auth_p/c_segments/s/1 "),
        "{again}"
    );
    assert!(again.contains("range: bytes=3-\r\n"), "{again}");
    assert!(
        again.contains("if-match: \"5d41402abc4b2a76b9719d911017c592\""),
        "{again}"
    );
}

/// A segment that keeps breaking off ends the download after three reads
/// again, saying so.
#[test]
fn a_segment_that_keeps_breaking_off_ends_the_download() {
    let broken = (
        "HTTP/1.1 206 Partial Content\r\ncontent-length: 4\r\ncontent-range: bytes 1-4/5\r\n\
         connection: close\r\n\r\n",
        vec![],
    );
    let (url, count) = scripted_server(vec![
        answer(HELLO_HEAD),
        answer(HELLO_MANIFEST),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\netag: 5d41402abc4b2a76b9719d911017c592\r\n\
             connection: close\r\n\r\nh",
            vec![],
        ),
        broken.clone(),
        broken.clone(),
        broken,
    ]);
    let err = read_all(swift_at(&url).download("c", "o").unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("segment /c_segments/s/1"), "{text}");
    assert!(text.contains("read again 3 times"), "{text}");
    assert_eq!(count.load(Ordering::SeqCst), 6);
}
