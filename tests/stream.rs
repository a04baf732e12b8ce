//! The Swift data path end to end, with in-memory uploads and downloads:
//! round trips, the stored object opened by hand with `age` and `zstd`,
//! memory bounded by the segment pool, and the faults a backup meets.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use age::secrecy::ExposeSecret;
use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use volsnap::config::{Compression, SwiftSettings};
use volsnap::stream::{
    backup, restore_into, BackupFailure, BackupMeta, BackupPlan, BackupSummary, Encryption,
    Identities, Progress, Recipients, Segment, HOLD_BACK,
};

const MIB: usize = 1 << 20;

/// Deterministic bytes: a xorshift generator, with every other 4 KiB block
/// drawn from a small vocabulary so compression has something to do.
struct Data {
    state: u64,
    left: usize,
    at: usize,
}

impl Data {
    fn new(len: usize, seed: u64) -> Data {
        Data {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            left: len,
            at: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
}

impl Read for Data {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const WORDS: [&[u8]; 8] = [
            b"INSERT ",
            b"INTO ",
            b"orders ",
            b"VALUES ",
            b"(42, ",
            b"'pending'",
            b");\n",
            b"NULL, ",
        ];
        let n = buf.len().min(self.left).min(4096 - self.at % 4096);
        let random = (self.at / 4096) % 4 != 3;
        let mut i = 0;
        while i < n {
            let r = self.next();
            if random {
                let bytes = r.to_le_bytes();
                let k = (n - i).min(8);
                buf[i..i + k].copy_from_slice(&bytes[..k]);
                i += k;
            } else {
                let word = WORDS[(r % 8) as usize];
                let k = (n - i).min(word.len());
                buf[i..i + k].copy_from_slice(&word[..k]);
                i += k;
            }
        }
        self.left -= n;
        self.at += n;
        Ok(n)
    }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    Data::new(len, seed).read_to_end(&mut v).unwrap();
    v
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest as _;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Swift, as far as the pipeline can tell: segments by index.
#[derive(Default)]
struct Store {
    objects: Mutex<BTreeMap<u32, Vec<u8>>>,
    /// Uploads running now, and the most at once.
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Store {
    /// An uploader that takes `delay` per segment and answers the MD5 of
    /// what it received, as Swift does.
    fn uploader(&self, delay: Duration) -> impl Fn(&Segment) -> Result<String> + Sync + '_ {
        move |s: &Segment| {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(delay);
            // Waits for the segment's end; an error if the stream stopped
            // first (nothing is stored then, as Swift stores nothing of a
            // PUT that broke off).
            let stored = s.whole().map(|data| {
                let etag = md5_hex(&data);
                self.objects.lock().unwrap().insert(s.index, data.to_vec());
                etag
            });
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(format!("\"{}\"", stored?))
        }
    }

    /// The SLO's GET: every segment in order.
    fn object(&self) -> Vec<u8> {
        self.objects
            .lock()
            .unwrap()
            .values()
            .flatten()
            .copied()
            .collect()
    }

    fn indexes(&self) -> Vec<u32> {
        self.objects.lock().unwrap().keys().copied().collect()
    }
}

fn plan(compression: Compression, recipients: Option<Recipients>) -> BackupPlan {
    BackupPlan {
        segment_size: MIB,
        concurrency: 3,
        compression,
        compression_level: match compression {
            Compression::Zstd => 3,
            Compression::Gzip => 6,
            Compression::None => 0,
        },
        recipients,
        max_segments: 1000,
    }
}

/// A fresh age key: (identities, recipients, secret text).
fn age_key() -> (Identities, Recipients, String) {
    let id = age::x25519::Identity::generate();
    let secret = format!("{}\n", id.to_string().expose_secret());
    let public = id.to_public().to_string();
    (
        Identities::parse(&secret, Path::new("key.txt")).unwrap(),
        Recipients::parse(&public, "test").unwrap(),
        secret,
    )
}

fn meta_of(plan: &BackupPlan, summary: &BackupSummary) -> BackupMeta {
    let hook = BTreeMap::from([("datastore_version".to_string(), "1.2.3".to_string())]);
    let meta = BackupMeta::new("none", &hook, plan, summary);
    // Through the headers, as the restore will get it from a HEAD.
    let headers = meta.to_headers();
    let back =
        BackupMeta::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
    assert_eq!(back, meta);
    back
}

fn restore(stored: &[u8], meta: &BackupMeta, ids: Option<&Identities>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    restore_into(
        stored,
        &mut out,
        meta,
        ids,
        &mut Progress::hidden("restore"),
    )?;
    Ok(out)
}

fn round_trip(compression: Compression, encrypted: bool) {
    let plain = data(7 * MIB + 12_345, 7);
    let (ids, recipients, _) = age_key();
    let plan = plan(compression, encrypted.then_some(recipients));
    let store = Store::default();
    let summary = backup(
        &plain[..],
        &plan,
        store.uploader(Duration::ZERO),
        &mut Progress::hidden("backup"),
    )
    .unwrap();

    let stored = store.object();
    let label = format!("{compression:?}, encrypted: {encrypted}");
    assert_eq!(summary.sha256, sha256_hex(&plain), "{label}");
    assert_eq!(summary.plain_bytes, plain.len() as u64);
    assert_eq!(summary.stored_bytes, stored.len() as u64);
    assert_eq!(summary.progress.bytes, plain.len() as u64);
    // Every segment but the last is exactly segment_size; none is empty.
    let n = summary.segments.len();
    assert!(n >= 4, "{label}: only {n} segments");
    assert_eq!(store.indexes(), (0..n as u32).collect::<Vec<_>>());
    for (i, s) in summary.segments.iter().enumerate() {
        assert_eq!(s.index, i as u32);
        if i + 1 < n {
            assert_eq!(s.size, MIB as u64, "{label}: segment {i}");
        } else {
            assert!(s.size > 0 && s.size <= MIB as u64);
        }
        assert_eq!(s.md5, md5_hex(&store.objects.lock().unwrap()[&s.index]));
    }
    match compression {
        Compression::None if !encrypted => assert_eq!(stored, plain),
        Compression::None => assert!(stored.len() > plain.len()),
        _ => assert!(stored.len() < plain.len(), "{label}: compressed"),
    }
    assert_eq!(stored.starts_with(b"age-encryption.org/v1\n"), encrypted);

    let meta = meta_of(&plan, &summary);
    assert_eq!(meta.datastore_version.as_deref(), Some("1.2.3"));
    assert_eq!(matches!(meta.encryption, Encryption::Age { .. }), encrypted);
    let back = restore(&stored, &meta, Some(&ids)).unwrap();
    assert!(back == plain, "{label}: restored bytes differ");
    // Verify is the same with a sink.
    let verified = restore_into(
        &stored[..],
        &mut io::sink(),
        &meta,
        Some(&ids),
        &mut Progress::hidden("verify"),
    )
    .unwrap();
    assert_eq!(verified.sha256, summary.sha256);
    assert_eq!(verified.plain_bytes, plain.len() as u64);
}

#[test]
fn zstd_round_trip() {
    round_trip(Compression::Zstd, false);
}

#[test]
fn gzip_round_trip() {
    round_trip(Compression::Gzip, false);
}

#[test]
fn uncompressed_round_trip() {
    round_trip(Compression::None, false);
}

#[test]
fn zstd_age_round_trip() {
    round_trip(Compression::Zstd, true);
}

#[test]
fn gzip_age_round_trip() {
    round_trip(Compression::Gzip, true);
}

#[test]
fn uncompressed_age_round_trip() {
    round_trip(Compression::None, true);
}

#[test]
fn uploads_run_in_parallel_up_to_concurrency() {
    let plain = data(6 * MIB, 3);
    let store = Store::default();
    let mut plan = plan(Compression::None, None);
    plan.concurrency = 4;
    backup(
        &plain[..],
        &plan,
        store.uploader(Duration::from_millis(50)),
        &mut Progress::hidden("backup"),
    )
    .unwrap();
    let most = store.most.load(Ordering::SeqCst);
    assert!((2..=4).contains(&most), "{most} uploads at once");
    assert_eq!(store.object(), plain);
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/install-deps.sh");
}

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .args(["-eu", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn swift_settings(compression: Compression, recipients_file: PathBuf) -> SwiftSettings {
    SwiftSettings {
        container: "volsnap".into(),
        prefix: "volsnap".into(),
        create_container: true,
        segment_size: MIB as u64,
        concurrency: 2,
        max_manifest_segments: None,
        compression,
        compression_level: if compression == Compression::Zstd {
            3
        } else {
            6
        },
        age_recipients: Vec::new(),
        age_recipients_file: Some(recipients_file),
        age_identity_file: None,
    }
}

/// The design's promise: `swift download`, then `age -d` and `zstd -d`,
/// restore a backup by hand. The download is the concatenated segments.
#[test]
fn age_and_zstd_clis_restore_a_backup_by_hand() {
    tool("age");
    tool("age-keygen");
    tool("zstd");
    let dir = tempfile::tempdir().unwrap();
    sh("age-keygen -o key.txt 2>/dev/null", dir.path());
    let public = Command::new("age-keygen")
        .args(["-y", "key.txt"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap();
    std::fs::write(
        dir.path().join("recipients.txt"),
        format!("# the backup key\n\n{public}"),
    )
    .unwrap();

    let plain = data(5 * MIB + 777, 11);
    let plan = BackupPlan::from_settings(&swift_settings(
        Compression::Zstd,
        dir.path().join("recipients.txt"),
    ))
    .unwrap();
    let store = Store::default();
    let summary = backup(
        &plain[..],
        &plan,
        store.uploader(Duration::ZERO),
        &mut Progress::hidden("backup"),
    )
    .unwrap();
    assert!(summary.segments.len() >= 4);
    std::fs::write(dir.path().join("backup.age"), store.object()).unwrap();

    sh(
        "age -d -i key.txt backup.age | zstd -d -q > restored",
        dir.path(),
    );
    let restored = std::fs::read(dir.path().join("restored")).unwrap();
    assert!(restored == plain, "age -d | zstd -d gave other bytes");

    // And volsnap reads the same file with the same key file.
    let ids = Identities::from_file(&dir.path().join("key.txt")).unwrap();
    let meta = meta_of(&plan, &summary);
    assert_eq!(restore(&store.object(), &meta, Some(&ids)).unwrap(), plain);
}

/// An SSH ed25519 key as the recipient, gzip as the compression: `age -d -i
/// id_ed25519 | gzip -d` opens it, and so does volsnap with the private key.
#[test]
fn ssh_recipient_and_gzip_restore_by_hand() {
    tool("age");
    tool("ssh-keygen");
    let dir = tempfile::tempdir().unwrap();
    sh(
        "ssh-keygen -q -t ed25519 -N '' -C test -f id_ed25519",
        dir.path(),
    );
    let plain = data(2 * MIB + 5, 13);
    let plan = BackupPlan::from_settings(&swift_settings(
        Compression::Gzip,
        dir.path().join("id_ed25519.pub"),
    ))
    .unwrap();
    let labels = plan.recipients.as_ref().unwrap().labels().to_vec();
    let fingerprint = Command::new("ssh-keygen")
        .args(["-l", "-f", "id_ed25519.pub"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let fingerprint = String::from_utf8(fingerprint.stdout).unwrap();
    let sha = fingerprint.split_whitespace().nth(1).unwrap();
    assert_eq!(
        labels,
        [format!("ssh-ed25519 {sha}")],
        "as ssh-keygen -l shows it"
    );

    let store = Store::default();
    let summary = backup(
        &plain[..],
        &plan,
        store.uploader(Duration::ZERO),
        &mut Progress::hidden("backup"),
    )
    .unwrap();
    std::fs::write(dir.path().join("backup.age"), store.object()).unwrap();
    sh(
        "age -d -i id_ed25519 backup.age | gzip -d > restored",
        dir.path(),
    );
    assert!(std::fs::read(dir.path().join("restored")).unwrap() == plain);

    let ids = Identities::from_file(&dir.path().join("id_ed25519")).unwrap();
    let meta = meta_of(&plan, &summary);
    assert_eq!(restore(&store.object(), &meta, Some(&ids)).unwrap(), plain);
}

/// A source that gives `len` good bytes, then fails, as a hook's pipe does
/// when volsnap's watchdog or the caller gives up on it.
struct Failing {
    data: Data,
    left: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("the hook was killed"));
        }
        let n = buf.len().min(self.left);
        let n = self.data.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn a_failing_source_stops_the_backup_and_lists_what_to_delete() {
    let store = Store::default();
    let plan = plan(Compression::None, None);
    let source = Failing {
        data: Data::new(100 * MIB, 5),
        left: 3 * MIB + MIB / 2,
    };
    let failure: BackupFailure = backup(
        source,
        &plan,
        store.uploader(Duration::from_millis(20)),
        &mut Progress::hidden("backup"),
    )
    .unwrap_err();
    let msg = format!("{failure}");
    assert!(
        msg.contains("reading the backup stream from the hook"),
        "{msg}"
    );
    assert!(msg.contains("the hook was killed"), "{msg}");
    // Every segment uploaded is listed (no more, no less), all in flight
    // finished, and the half segment was never sent.
    let listed: Vec<u32> = failure.uploaded.iter().map(|s| s.index).collect();
    assert_eq!(listed, store.indexes());
    assert_eq!(listed, [0, 1, 2]);
    assert_eq!(store.running.load(Ordering::SeqCst), 0);
}

#[test]
fn an_upload_error_is_returned_after_the_uploads_in_flight() {
    let store = Store::default();
    let ok = store.uploader(Duration::from_millis(30));
    let started = AtomicUsize::new(0);
    let upload = |s: &Segment| {
        started.fetch_add(1, Ordering::SeqCst);
        if s.index == 4 {
            std::thread::sleep(Duration::from_millis(5));
            bail!("PUT …/seg/00000004: 503 Service Unavailable");
        }
        ok(s)
    };
    let mut plan = plan(Compression::None, None);
    plan.concurrency = 3;
    let failure = backup(
        &data(40 * MIB, 9)[..],
        &plan,
        upload,
        &mut Progress::hidden("backup"),
    )
    .unwrap_err();
    let msg = format!("{failure}");
    assert!(msg.contains("uploading segment 4"), "{msg}");
    assert!(msg.contains("503 Service Unavailable"), "{msg}");
    assert_eq!(
        store.running.load(Ordering::SeqCst),
        0,
        "in flight finished"
    );
    let listed: Vec<u32> = failure.uploaded.iter().map(|s| s.index).collect();
    assert_eq!(listed, store.indexes());
    assert!(!listed.contains(&4));
    // It stopped: nowhere near the 40 segments of the stream were tried.
    let tried = started.load(Ordering::SeqCst);
    assert!(tried <= 4 + 1 + plan.concurrency, "{tried} uploads started");
}

#[test]
fn an_empty_stream_is_refused_and_nothing_is_uploaded() {
    for compression in [Compression::None, Compression::Zstd] {
        let store = Store::default();
        let (_, recipients, _) = age_key();
        let failure = backup(
            io::empty(),
            &plan(compression, Some(recipients)),
            store.uploader(Duration::ZERO),
            &mut Progress::hidden("backup"),
        )
        .unwrap_err();
        assert!(format!("{failure}").contains("the hook wrote nothing"));
        assert!(failure.uploaded.is_empty());
        assert!(store.indexes().is_empty());
    }
}

/// Backs up `plain` and returns the stored object and its metadata.
fn stored(
    plain: &[u8],
    compression: Compression,
    recipients: Option<Recipients>,
) -> (Vec<u8>, BackupMeta) {
    let plan = plan(compression, recipients);
    let store = Store::default();
    let summary = backup(
        plain,
        &plan,
        store.uploader(Duration::ZERO),
        &mut Progress::hidden("backup"),
    )
    .unwrap();
    let meta = meta_of(&plan, &summary);
    (store.object(), meta)
}

/// A writer that remembers how much it got and whether it was flushed.
#[derive(Default)]
struct Hook {
    got: Vec<u8>,
    flushed: bool,
}

impl Write for Hook {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flushed = false;
        self.got.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flushed = true;
        Ok(())
    }
}

#[test]
fn a_damaged_byte_fails_the_restore_before_the_hook_sees_the_end() {
    let plain = data(5 * MIB, 21);
    let (ids, recipients, _) = age_key();
    // (compression, encrypted, what the error says)
    let cases = [
        (Compression::None, false, "SHA-256 mismatch"),
        (Compression::Zstd, false, ""),
        (Compression::Gzip, false, ""),
        (Compression::Zstd, true, "age authentication failed"),
    ];
    for (compression, encrypted, says) in cases {
        let recipients =
            encrypted.then(|| Recipients::parse(&recipients.labels()[0], "r").unwrap());
        let (mut object, meta) = stored(&plain, compression, recipients);
        let at = object.len() / 2;
        object[at] ^= 0x20;
        let mut hook = Hook::default();
        let err = restore_into(
            &object[..],
            &mut hook,
            &meta,
            Some(&ids),
            &mut Progress::hidden("restore"),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        eprintln!("damaged {compression:?}, encrypted: {encrypted}: {msg}");
        assert!(msg.contains(says), "{compression:?}/{encrypted}: {msg}");
        if says == "SHA-256 mismatch" {
            assert!(
                msg.contains(&meta.sha256),
                "names the expected value: {msg}"
            );
            assert!(
                msg.contains(&sha256_hex(&{
                    let mut p = plain.clone();
                    p[at] ^= 0x20;
                    p
                })),
                "names the actual value: {msg}"
            );
        }
        assert!(
            hook.got.len() + HOLD_BACK <= plain.len(),
            "{compression:?}: the hook got {} of {} bytes",
            hook.got.len(),
            plain.len()
        );
        assert!(!hook.flushed);
    }
}

#[test]
fn a_truncated_stream_fails() {
    let plain = data(3 * MIB, 22);
    let (ids, recipients, _) = age_key();
    let labels = recipients.labels().to_vec();
    for (compression, encrypted) in [
        (Compression::None, false),
        (Compression::Zstd, false),
        (Compression::Gzip, false),
        (Compression::None, true),
        (Compression::Zstd, true),
    ] {
        let recipients = encrypted.then(|| Recipients::parse(&labels[0], "r").unwrap());
        let (object, meta) = stored(&plain, compression, recipients);
        // Cut at a segment boundary (a missing last segment) and mid-way.
        for cut in [MIB, object.len() - 1] {
            let err = restore(&object[..cut], &meta, Some(&ids)).unwrap_err();
            let msg = format!("{err:#}");
            eprintln!("truncated {compression:?}, encrypted: {encrypted}, at {cut}: {msg}");
            assert!(
                !msg.is_empty(),
                "{compression:?}/{encrypted}: cut at {cut}: {msg}"
            );
            if encrypted {
                assert!(msg.contains("age authentication failed"), "{msg}");
            } else if compression == Compression::None {
                assert!(msg.contains("truncated"), "{msg}");
            }
        }
    }
}

#[test]
fn a_longer_stream_fails_as_soon_as_it_is_longer() {
    let (object, mut meta) = stored(&data(2 * MIB, 23), Compression::None, None);
    meta.size = MIB as u64;
    let mut hook = Hook::default();
    let err = restore_into(
        &object[..],
        &mut hook,
        &meta,
        None,
        &mut Progress::hidden("restore"),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("longer than the 1048576 bytes"),
        "{err:#}"
    );
    assert!(hook.got.is_empty());
}

#[test]
fn a_wrong_identity_is_named() {
    let (_, recipients, _) = age_key();
    let (other, _, _) = age_key();
    let label = recipients.labels()[0].clone();
    let (object, meta) = stored(&data(100_000, 24), Compression::Zstd, Some(recipients));
    let err = restore(&object, &meta, Some(&other)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("the age identity in key.txt does not match any recipient"),
        "{msg}"
    );
    assert!(msg.contains(&label), "names the recipients: {msg}");

    let err = restore(&object, &meta, None).unwrap_err();
    assert!(
        format!("{err:#}").contains("give the identity file"),
        "{err:#}"
    );
}

#[test]
fn metadata_that_says_encrypted_on_a_plain_stream_fails_clearly() {
    let (ids, recipients, _) = age_key();
    let (object, mut meta) = stored(&data(100_000, 25), Compression::Zstd, None);
    meta.encryption = Encryption::Age {
        recipients: recipients.labels().to_vec(),
    };
    let err = restore(&object, &meta, Some(&ids)).unwrap_err();
    assert!(format!("{err:#}").contains("valid age header"), "{err:#}");
}

/// Peak memory of a 64 MiB backup (zstd level 3, age, 1 MiB segments,
/// concurrency 4, slow uploads), measured in a child process so the
/// test harness's other tests do not count.
#[test]
fn memory_stays_bounded() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VOLSNAP_MEMORY_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figure = |key: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
            .parse()
            .unwrap()
    };
    let (before, peak) = (figure("before_kib="), figure("peak_kib="));
    let grown = peak.saturating_sub(before);
    let segments = (MEMORY_SEGMENT * MEMORY_CONCURRENCY / 1024) as u64;
    eprintln!(
        "child: {}",
        stdout
            .lines()
            .find(|l| l.contains("peak_kib"))
            .unwrap_or("")
    );
    eprintln!(
        "memory: {before} KiB before, {peak} KiB peak: grew {grown} KiB for {segments} KiB of \
         segment buffers, overhead {} KiB",
        grown.saturating_sub(segments)
    );
    assert!(
        grown <= segments + MEMORY_OVERHEAD_KIB,
        "grew {grown} KiB > {segments} KiB of segments + {MEMORY_OVERHEAD_KIB} KiB"
    );
}

const MEMORY_SEGMENT: usize = MIB;
const MEMORY_CONCURRENCY: usize = 4;
/// Beyond the segment buffers: zstd level 3's context and its 2 MiB window,
/// the 1 MiB read buffer, age's 64 KiB chunk, the upload threads' stacks.
/// Measured: 4.3 MiB (14.0 MiB peak from 4.7 MiB, for 5 MiB of buffers).
const MEMORY_OVERHEAD_KIB: u64 = 6 * 1024;

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "run by memory_stays_bounded in its own process"]
fn memory_child() {
    if std::env::var_os("VOLSNAP_MEMORY_CHILD").is_none() {
        return;
    }
    let (_, recipients, _) = age_key();
    let plan = BackupPlan {
        segment_size: MEMORY_SEGMENT,
        concurrency: MEMORY_CONCURRENCY,
        compression: Compression::Zstd,
        compression_level: 3,
        recipients: Some(recipients),
        max_segments: 1000,
    };
    let before = rss_kib("VmRSS:");
    let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let summary = backup(
        Data::new(64 * MIB, 31),
        &plan,
        |s: &Segment| {
            // Slower than the producer: every buffer ends up in use.
            most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(250));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(md5_hex(&s.whole()?))
        },
        &mut Progress::hidden("backup"),
    )
    .unwrap();
    assert_eq!(summary.plain_bytes, 64 * MIB as u64);
    assert!(summary.segments.len() > 40);
    assert_eq!(
        most.load(Ordering::SeqCst),
        MEMORY_CONCURRENCY,
        "uploads saturated"
    );
    println!(
        "before_kib={before} peak_kib={} segments={} stored={} secs={:.1}",
        rss_kib("VmHWM:"),
        summary.segments.len(),
        summary.stored_bytes,
        summary.duration.as_secs_f64()
    );
}
