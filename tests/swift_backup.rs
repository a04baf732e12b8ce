//! `volsnap backup` / `restore` / `verify` / `list` / `prune` with the Swift
//! strategy, through the real binary, against the loopback cloud's real Swift
//! (tests/cloud) and real MariaDB, PostgreSQL and Redis servers (tests/db).
//!
//! Every test has its own containers (`volsnap-test-…` and `…_segments`),
//! runtime directory and servers, so the tests run in parallel; each [`Rig`]
//! deletes its containers' objects and the containers, and each [`Server`]
//! stops its database, even when the test fails.
//!
//! The checks talk to Swift directly (GET, HEAD, listings, with the test's
//! own token from the cloud's application credential), not through volsnap.

#[path = "support/cloud.rs"]
mod cloud;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloud::Cloud;
use md5::Digest as _;
use serde_json::Value;
// cloud.rs calls `super::run`.
#[allow(unused_imports)]
use support::{hooks_dir, run};

const MIB: usize = 1 << 20;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Deterministic incompressible bytes (xorshift64), so a run can be repeated.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

fn md5_hex(data: &[u8]) -> String {
    hex(&md5::Md5::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a shell command, panicking with its output if it fails.
fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "sh -c {script:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Single-quoted for sh.
fn q(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

// ---------------------------------------------------------------- Swift, raw

/// Swift as the test sees it: plain HTTP with the backup user's token.
struct SwiftApi {
    client: reqwest::blocking::Client,
    token: String,
    /// `http://127.0.0.1:18020/v1/AUTH_<project>`
    endpoint: String,
}

impl SwiftApi {
    fn new(cloud: &Cloud) -> SwiftApi {
        // reqwest is built without a default TLS provider (see openstack::http).
        let _ = rustls::crypto::ring::default_provider().install_default();
        SwiftApi {
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            token: cloud.session().token().expose().to_string(),
            endpoint: cloud.get("VOLSNAP_TESTCLOUD_SWIFT_ENDPOINT").to_string(),
        }
    }

    /// The names used here are letters, digits, `-`, `_` and `/`: no encoding.
    fn url(&self, container: &str, object: Option<&str>) -> String {
        match object {
            Some(o) => format!("{}/{container}/{o}", self.endpoint),
            None => format!("{}/{container}", self.endpoint),
        }
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> reqwest::blocking::Response {
        req.header("x-auth-token", &self.token).send().unwrap()
    }

    /// Object names, `[]` when the container does not exist.
    fn list(&self, container: &str) -> Vec<String> {
        self.try_list(container)
            .unwrap_or_else(|e| panic!("listing {container}: {e}"))
    }

    /// [`SwiftApi::list`] that never panics (for `Drop`, maybe unwinding).
    fn try_list(&self, container: &str) -> Result<Vec<String>, String> {
        let resp = self
            .client
            .get(format!("{}?format=json", self.url(container, None)))
            .header("x-auth-token", &self.token)
            .send()
            .map_err(|e| e.to_string())?;
        if resp.status() == 404 {
            return Ok(Vec::new());
        }
        if !resp.status().is_success() {
            return Err(format!("{resp:?}"));
        }
        let rows: Vec<Value> = resp.json().map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect())
    }

    fn head(&self, container: &str, object: &str) -> Option<reqwest::header::HeaderMap> {
        let resp = self.send(self.client.head(self.url(container, Some(object))));
        if resp.status() == 404 {
            return None;
        }
        assert!(resp.status().is_success(), "HEAD {object}: {resp:?}");
        Some(resp.headers().clone())
    }

    /// The whole object (an SLO joined by Swift).
    fn get(&self, container: &str, object: &str) -> Vec<u8> {
        let resp = self.send(self.client.get(self.url(container, Some(object))));
        assert!(resp.status().is_success(), "GET {object}: {resp:?}");
        resp.bytes().unwrap().to_vec()
    }

    /// An SLO's manifest as stored: `[{"name", "hash", "bytes", …}]`.
    fn manifest(&self, container: &str, object: &str) -> Vec<Value> {
        let resp = self.send(self.client.get(format!(
            "{}?multipart-manifest=get",
            self.url(container, Some(object))
        )));
        assert!(
            resp.status().is_success(),
            "GET manifest {object}: {resp:?}"
        );
        resp.json().unwrap()
    }

    fn put(&self, container: &str, object: &str, body: Vec<u8>) {
        let resp = self.send(
            self.client
                .put(self.url(container, Some(object)))
                .body(body),
        );
        assert!(resp.status().is_success(), "PUT {object}: {resp:?}");
    }

    fn delete(&self, container: &str, object: Option<&str>) {
        let _ = self
            .client
            .delete(self.url(container, object))
            .header("x-auth-token", &self.token)
            .send();
    }
}

/// The meta header Swift returns for a volsnap key (`Volsnap-Sha256`).
fn meta(headers: &reqwest::header::HeaderMap, key: &str) -> String {
    headers
        .get(format!("x-object-meta-{key}"))
        .unwrap_or_else(|| panic!("no X-Object-Meta-{key} in {headers:?}"))
        .to_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------- the rig

/// One test's containers, temporary directory and volsnap configs. Drop
/// deletes every object of both containers, then the containers.
struct Rig {
    cloud: Cloud,
    api: SwiftApi,
    dir: tempfile::TempDir,
    container: String,
    segments: String,
}

/// What a config differs in; `Conf::new` has the common defaults.
#[derive(Clone)]
struct Conf {
    datastore: &'static str,
    mounts: Vec<PathBuf>,
    hooks: PathBuf,
    compression: &'static str,
    segment_size: &'static str,
    concurrency: u32,
    recipients: Vec<String>,
    identity: Option<PathBuf>,
    env: Vec<(String, String)>,
    endpoint: Option<String>,
    retention: &'static str,
    metrics_file: Option<PathBuf>,
    /// `hooks.timeout` (freeze, thaw, check); streams have 5 minutes.
    hook_timeout: &'static str,
    /// Another runtime directory than the rig's: another configuration.
    runtime_dir: Option<PathBuf>,
    create_container: bool,
    /// `swift.max_manifest_segments`, below the test cloud's 1000.
    max_manifest_segments: Option<u32>,
    /// `openstack.request_timeout`.
    request_timeout: Option<&'static str>,
}

impl Conf {
    fn new(datastore: &'static str, hooks: &Path) -> Conf {
        Conf {
            datastore,
            mounts: Vec::new(),
            hooks: hooks.to_path_buf(),
            compression: "zstd",
            segment_size: "1MiB",
            concurrency: 4,
            recipients: Vec::new(),
            identity: None,
            env: Vec::new(),
            endpoint: None,
            retention: "",
            metrics_file: None,
            hook_timeout: "60s",
            runtime_dir: None,
            create_container: true,
            max_manifest_segments: None,
            request_timeout: None,
        }
    }

    fn env(mut self, key: &str, value: impl Into<String>) -> Conf {
        self.env.push((key.to_string(), value.into()));
        self
    }
}

impl Rig {
    fn new(what: &str) -> Rig {
        let cloud = Cloud::load();
        let api = SwiftApi::new(&cloud);
        let dir = tempfile::Builder::new()
            .prefix("volsnap-swift-")
            .tempdir()
            .unwrap();
        // The postgres user must reach the database directories under it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let container = cloud::unique(what);
        let segments = format!("{container}_segments");
        Rig {
            cloud,
            api,
            dir,
            container,
            segments,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `NAME.toml` (0600) and returns its path.
    fn config(&self, name: &str, c: &Conf) -> PathBuf {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mounts: Vec<String> = c.mounts.iter().map(|m| m.display().to_string()).collect();
        let mut text = format!(
            "datastore = {:?}\nmounts = [{}]\nruntime_dir = {:?}\n",
            c.datastore,
            list(&mounts),
            c.runtime_dir
                .clone()
                .unwrap_or_else(|| self.path().join("run"))
                .display()
                .to_string()
        );
        if let Some(metrics) = &c.metrics_file {
            text += &format!("metrics_file = {:?}\n", metrics.display().to_string());
        }
        if c.endpoint.is_some() || c.request_timeout.is_some() {
            text += "[openstack]\n";
        }
        if let Some(endpoint) = &c.endpoint {
            text += &format!("object_store_endpoint = {endpoint:?}\n");
        }
        if let Some(timeout) = c.request_timeout {
            text += &format!("request_timeout = {timeout:?}\n");
        }
        text += &format!(
            "[swift]\ncontainer = {:?}\ncreate_container = {}\nsegment_size = {:?}\nconcurrency = {}\ncompression = {:?}\nage_recipients = [{}]\n",
            self.container,
            c.create_container,
            c.segment_size,
            c.concurrency,
            c.compression,
            list(&c.recipients)
        );
        if let Some(identity) = &c.identity {
            text += &format!("age_identity_file = {:?}\n", identity.display().to_string());
        }
        if let Some(n) = c.max_manifest_segments {
            text += &format!("max_manifest_segments = {n}\n");
        }
        text += &format!(
            "[hooks]\ndir = {:?}\ntimeout = {:?}\nstream_timeout = \"5m\"\n[hooks.env]\n",
            c.hooks.display().to_string(),
            c.hook_timeout
        );
        for (k, v) in &c.env {
            text += &format!("{k} = {v:?}\n");
        }
        if !c.retention.is_empty() {
            text += &format!("[retention]\n{}\n", c.retention);
        }
        let path = self.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn volsnap(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_volsnap"));
        cmd.arg("--config")
            .arg(config)
            .args(args)
            .env_remove("VOLSNAP_CONFIG")
            .env_remove("RUST_LOG")
            .envs(self.cloud.os_vars());
        cmd
    }

    /// Runs volsnap: exit code, stdout, stderr.
    fn run(&self, config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.volsnap(config, args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs volsnap and expects exit 0.
    fn ok(&self, config: &Path, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(config, args);
        assert_eq!(
            code,
            Some(0),
            "volsnap {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// `volsnap --json backup`: the report.
    fn backup(&self, config: &Path) -> Value {
        serde_json::from_str(&self.ok(config, &["--json", "backup"])).unwrap()
    }

    /// Runs volsnap and expects exit 1; returns stderr.
    fn fails(&self, config: &Path, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(config, args);
        assert_eq!(
            code,
            Some(1),
            "volsnap {args:?} should have failed:\n{stdout}\n{stderr}"
        );
        stderr
    }

    /// Segments of `manifest` in the segments container, by listing.
    fn segments_of(&self, manifest: &str) -> Vec<String> {
        let prefix = format!("{manifest}/seg/");
        self.api
            .list(&self.segments)
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// Where Swift keeps an object's body: `objects/<part>/<sfx>/<hash>/<ts>.data`
    /// under the cloud's device, the hash being the MD5 of
    /// `prefix/account/container/object suffix` (swift.conf's
    /// `swift_hash_path_prefix`/`_suffix`).
    fn data_file(&self, container: &str, object: &str) -> (PathBuf, String) {
        let swift = PathBuf::from(self.cloud.get("VOLSNAP_TESTCLOUD_RUN")).join("swift");
        let conf = std::fs::read_to_string(swift.join("swift.conf")).unwrap();
        let value = |key: &str| {
            conf.lines()
                .find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == key))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let account = format!("AUTH_{}", self.cloud.get("VOLSNAP_TESTCLOUD_PROJECT_ID"));
        let hash = md5_hex(
            format!(
                "{}/{account}/{container}/{object}{}",
                value("swift_hash_path_prefix"),
                value("swift_hash_path_suffix")
            )
            .as_bytes(),
        );
        let objects = swift.join("devices/sdb1/objects");
        for part in std::fs::read_dir(&objects).unwrap() {
            let dir = part.unwrap().path().join(&hash[29..]).join(&hash);
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries {
                    let p = e.unwrap().path();
                    if p.extension().is_some_and(|x| x == "data") {
                        return (p, hash);
                    }
                }
            }
        }
        panic!("no .data file for /{account}/{container}/{object} (hash {hash})");
    }

    /// Replaces segment `index` of `manifest` with different bytes of the
    /// same length and rewrites the manifest to match, keeping its metadata:
    /// a backup Swift finds consistent, but not the stream volsnap hashed.
    fn tamper(&self, manifest: &str, index: usize) {
        let segments = self.api.manifest(&self.container, manifest);
        let victim = segments[index]["name"]
            .as_str()
            .unwrap()
            .trim_start_matches('/');
        let (container, object) = victim.split_once('/').unwrap();
        let mut body = self.api.get(container, object);
        body[1000] ^= 0x5a;
        let new_md5 = md5_hex(&body);
        self.api.put(container, object, body);
        let headers = self.api.head(&self.container, manifest).unwrap();
        let put: Vec<Value> = segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({
                    "path": s["name"],
                    "etag": if i == index { Value::from(new_md5.clone()) } else { s["hash"].clone() },
                    "size_bytes": s["bytes"],
                })
            })
            .collect();
        let mut req = self
            .api
            .client
            .put(format!(
                "{}?multipart-manifest=put",
                self.api.url(&self.container, Some(manifest))
            ))
            .header("x-auth-token", &self.api.token)
            .body(serde_json::to_vec(&put).unwrap());
        for (k, v) in &headers {
            if k.as_str().starts_with("x-object-meta-") {
                req = req.header(k, v);
            }
        }
        assert!(req.send().unwrap().status().is_success());
    }

    /// Flips bytes in the body of one stored object, as a failing disk would
    /// (Swift keeps the object's metadata in xattrs, the body is the file).
    /// Swift quarantines the file once a read finds it damaged; the guard
    /// removes the quarantined copy.
    fn rot(&self, container: &str, object: &str, offset: u64) -> Rotten {
        let (path, hash) = self.data_file(container, object);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8; 4];
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset)).unwrap();
        f.read_exact(&mut byte).unwrap();
        for b in &mut byte {
            *b ^= 0x5a;
        }
        f.seek(std::io::SeekFrom::Start(offset)).unwrap();
        f.write_all(&byte).unwrap();
        f.sync_all().unwrap();
        Rotten {
            quarantine: path
                .ancestors()
                .nth(5)
                .unwrap()
                .join("quarantined/objects")
                .join(hash),
        }
    }
}

struct Rotten {
    quarantine: PathBuf,
}

impl Drop for Rotten {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.quarantine);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for container in [&self.container, &self.segments] {
            match self.api.try_list(container) {
                Ok(objects) => {
                    for object in objects {
                        self.api.delete(container, Some(&object));
                    }
                    self.api.delete(container, None);
                }
                Err(e) => eprintln!("cleanup: cannot list {container}: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------- databases

/// A database server started by tests/db/<script> under `dir`; stopped (by
/// its pid file, through the same script) when dropped.
struct Server {
    script: PathBuf,
    dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl Server {
    fn start(script: &str, dir: &Path) -> Server {
        let script = repo().join("tests/db").join(script);
        let mut server = Server {
            script,
            dir: dir.to_path_buf(),
            env: BTreeMap::new(),
        };
        let out = Command::new(&server.script)
            .arg("start")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} start: {}",
            server.script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        server.env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        server
    }

    fn get(&self, key: &str) -> &str {
        &self.env[key]
    }

    /// The shell command the hooks run to stop / start this server.
    fn command(&self, action: &str) -> String {
        let redirect = if action == "start" { " >/dev/null" } else { "" };
        format!("{} {action} {}{redirect}", q(&self.script), q(&self.dir))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

fn redis_cli(redis: &Server, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-s")
        .arg(redis.get("REDIS_SOCKET"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn redis_set(redis: &Server, key: &str, value: &[u8]) {
    let mut child = Command::new("redis-cli")
        .arg("-s")
        .arg(redis.get("REDIS_SOCKET"))
        .args(["-x", "SET", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success());
}

/// SHA-256 of each key's value, by key: what "the same data" means for Redis.
fn redis_digest(redis: &Server) -> BTreeMap<String, String> {
    let keys = redis_cli(redis, &["--raw", "KEYS", "*"]);
    let mut out = BTreeMap::new();
    for key in keys.lines().filter(|l| !l.is_empty()) {
        let key = key.to_string();
        let value = Command::new("redis-cli")
            .arg("-s")
            .arg(redis.get("REDIS_SOCKET"))
            .args(["--raw", "GET", &key])
            .output()
            .unwrap()
            .stdout;
        out.insert(key, sha256_hex(&value));
    }
    out
}

fn redis_env(conf: Conf, redis: &Server) -> Conf {
    conf.env(
        "VOLSNAP_REDIS_CLI_ARGS",
        format!("-s {}", redis.get("REDIS_SOCKET")),
    )
    .env("VOLSNAP_REDIS_RDB_PATH", redis.get("REDIS_RDB_PATH"))
    .env("VOLSNAP_REDIS_STOP_CMD", redis.command("stop"))
    .env("VOLSNAP_REDIS_START_CMD", redis.command("start"))
}

// ---------------------------------------------------------------- age

/// An `age-keygen` identity file; returns it and its public recipient.
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    sh(&format!("age-keygen -o {} 2>/dev/null", q(&path)));
    let public = sh(&format!("age-keygen -y {}", q(&path)))
        .trim()
        .to_string();
    assert!(public.starts_with("age1"), "{public}");
    (path, public)
}

// ---------------------------------------------------------------- the none datastore

/// A tree with what tar must keep: modes, owners, a symlink, an empty
/// directory, a name with spaces, and a 3 MiB file half random, half text
/// (so the stored stream spans several 1 MiB segments, compressed or not).
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("a.txt"), "hello\n").unwrap();
    let mut blob = random_bytes(3 * MIB / 2, 7);
    blob.extend(b"INSERT INTO t VALUES (42, 'pending');\n".repeat(3 * MIB / 2 / 38));
    std::fs::write(root.join("sub/blob.bin"), blob).unwrap();
    std::fs::write(root.join("sub/deeper/odd name with spaces"), "x").unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).unwrap();
    std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(root.join("sub/blob.bin"), Some(1234), Some(4321)).unwrap();
}

/// Content, modes, owners and link targets of a tree, as text.
fn tree_listing(root: &Path) -> String {
    sh(&format!(
        "cd {} && find . -printf '%p %y %m %U:%G %l\\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum",
        q(root)
    ))
}

/// The stored object, decoded by hand with the standard tools (`age -d`,
/// `zstd -d`, `gzip -d`), as the README tells an operator to.
fn decode_by_hand(stored: &Path, compression: &str, identity: Option<&Path>) -> Vec<u8> {
    let decrypt = match identity {
        Some(key) => format!("age -d -i {} {} | ", q(key), q(stored)),
        None => format!("cat {} | ", q(stored)),
    };
    let decompress = match compression {
        "zstd" => "zstd -d -c",
        "gzip" => "gzip -d -c",
        _ => "cat",
    };
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; {decrypt}{decompress}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "decoding by hand: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The `none` datastore (GNU tar of the mounts) every way a backup can be
/// stored: zstd, gzip and none, each plain and age-encrypted. Each round:
/// `volsnap backup`, the stored object opened by hand (GET with the test's
/// token, then `age -d -i key`, `zstd -d`/`gzip -d`: its SHA-256 is the
/// manifest's `Volsnap-Sha256`, and `tar -t` lists the tree), then `volsnap
/// restore --latest` into a fresh directory holds the same tree. Six backups
/// in one container in a few seconds: each gets its own name.
#[test]
fn none_datastore_round_trips_every_compression_with_and_without_age() {
    let rig = Rig::new("none-all");
    let src = rig.path().join("src");
    make_tree(&src);
    let before = tree_listing(&src);
    let (key, public) = age_key(rig.path(), "key.txt");
    let hooks = repo().join("hooks");
    let mut names = Vec::new();
    for (round, (compression, encrypted)) in [
        ("zstd", false),
        ("gzip", false),
        ("none", false),
        ("zstd", true),
        ("gzip", true),
        ("none", true),
    ]
    .into_iter()
    .enumerate()
    {
        let label = format!("{compression}{}", if encrypted { "+age" } else { "" });
        let restored = rig.path().join(format!("restored-{round}"));
        let mut conf =
            Conf::new("none", &hooks).env("VOLSNAP_RESTORE_DIR", restored.display().to_string());
        conf.mounts = vec![src.clone()];
        conf.compression = compression;
        if encrypted {
            conf.recipients = vec![public.clone()];
        }
        let config = rig.config(&format!("round-{round}"), &conf);

        let report = rig.backup(&config);
        let name = report["name"].as_str().unwrap().to_string();
        assert!(!names.contains(&name), "{label}: name {name} reused");
        names.push(name.clone());
        assert_eq!(report["compression"], compression, "{label}");
        assert_eq!(
            report["encryption"],
            if encrypted {
                serde_json::json!([public])
            } else {
                serde_json::json!([])
            },
            "{label}"
        );
        let stored_size = report["stored_size"].as_u64().unwrap();
        assert!(
            report["segments"].as_u64().unwrap() >= 2,
            "{label}: {report}"
        );

        // By hand: GET the SLO with the test's own token, decode with the CLIs.
        let headers = rig.api.head(&rig.container, &name).unwrap();
        assert_eq!(meta(&headers, "volsnap-compression"), compression);
        assert_eq!(
            meta(&headers, "volsnap-encryption"),
            if encrypted { "age" } else { "none" }
        );
        // What a download is, for a browser or `swift download`.
        let content_type = match (encrypted, compression) {
            (false, "zstd") => "application/zstd",
            (false, "gzip") => "application/gzip",
            _ => "application/octet-stream",
        };
        assert_eq!(headers["content-type"], content_type, "{label}");
        let stored = rig.api.get(&rig.container, &name);
        assert_eq!(stored.len() as u64, stored_size, "{label}");
        if encrypted {
            assert!(stored.starts_with(b"age-encryption.org/v1\n"), "{label}");
        }
        let stored_path = rig.path().join(format!("stored-{round}"));
        std::fs::write(&stored_path, &stored).unwrap();
        let plain = decode_by_hand(&stored_path, compression, encrypted.then_some(&*key));
        assert_eq!(
            sha256_hex(&plain),
            meta(&headers, "volsnap-sha256"),
            "{label}: the stream decoded by hand is not the one volsnap hashed"
        );
        assert_eq!(plain.len().to_string(), meta(&headers, "volsnap-size"));
        let listed = {
            let mut tar = Command::new("tar")
                .args(["-t", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            tar.stdin.take().unwrap().write_all(&plain).unwrap();
            String::from_utf8(tar.wait_with_output().unwrap().stdout).unwrap()
        };
        let rel = src.strip_prefix("/").unwrap().display().to_string();
        for file in ["a.txt", "sub/blob.bin", "sub/deeper/odd name with spaces"] {
            assert!(
                listed.lines().any(|l| l == format!("{rel}/{file}")),
                "{label}: tar -t lacks {file}:\n{listed}"
            );
        }

        // volsnap restore --latest (the identity from the command line).
        let mut args = vec!["restore", "--latest"];
        let key_arg = key.display().to_string();
        if encrypted {
            args.extend(["--identity", &key_arg]);
        }
        let out = rig.ok(&config, &args);
        assert!(out.contains(&name), "{label}: {out}");
        assert_eq!(
            tree_listing(&restored.join(&rel)),
            before,
            "{label}: the restored tree differs"
        );
        // verify, with the identity from the config this time.
        if encrypted {
            let mut conf = conf.clone();
            conf.identity = Some(key.clone());
            let config = rig.config(&format!("round-{round}-id"), &conf);
            rig.ok(&config, &["verify", "--backup", &name]);
        } else {
            rig.ok(&config, &["verify", "--backup", &name]);
        }
    }
    assert_eq!(rig.api.list(&rig.container).len(), 6);
}

/// A restore of an encrypted backup without the right identity stops before
/// the hook could restore anything, and says why and to whom the backup was
/// encrypted.
#[test]
fn a_wrong_or_missing_age_identity_is_a_clear_error() {
    let rig = Rig::new("age-id");
    let src = rig.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("secret.txt"), "the data").unwrap();
    let (_key, public) = age_key(rig.path(), "key.txt");
    let (other, other_public) = age_key(rig.path(), "other.txt");
    let restored = rig.path().join("restored");
    let mut conf = Conf::new("none", &repo().join("hooks"))
        .env("VOLSNAP_RESTORE_DIR", restored.display().to_string());
    conf.mounts = vec![src.clone()];
    conf.recipients = vec![public.clone()];
    let config = rig.config("age", &conf);
    rig.backup(&config);

    let err = rig.fails(
        &config,
        &["restore", "--latest", "--identity", other.to_str().unwrap()],
    );
    assert!(
        err.contains("does not match any recipient") && err.contains(&public),
        "{err}"
    );
    assert!(!err.contains(&other_public), "{err}");
    let err = rig.fails(&config, &["restore", "--latest"]);
    assert!(
        err.contains("encrypted with age") && err.contains("give the identity file"),
        "{err}"
    );
    let err = rig.fails(
        &config,
        &["verify", "--latest", "--identity", other.to_str().unwrap()],
    );
    assert!(err.contains("does not match any recipient"), "{err}");
    let nothing = std::fs::read_dir(&restored).map_or(true, |mut d| d.next().is_none());
    assert!(
        nothing,
        "something was restored into {}",
        restored.display()
    );
}

// ---------------------------------------------------------------- size and memory

/// Peak RSS in KiB of `volsnap ARGS`, measured by GNU time (`%M`).
fn peak_rss_kib(rig: &Rig, config: &Path, args: &[&str]) -> (u64, String) {
    let rss = rig.path().join("rss.txt");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(env!("CARGO_BIN_EXE_volsnap"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("VOLSNAP_CONFIG")
        .env_remove("RUST_LOG")
        .envs(rig.cloud.os_vars());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "volsnap {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let kib = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (kib, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// 48 MiB of incompressible data through 1 MiB segments, four uploads at
/// once: the manifest (GET ?multipart-manifest=get) lists every segment in
/// order, each exactly 1 MiB but the last; volsnap's peak RSS stays within
/// the bound the sample config states, segment_size × concurrency plus a
/// few MiB (here with one segment to spare) (the zstd window), over the RSS of the same backup of a 1 KiB
/// stream; restore and verify stay flat too. The restored stream is the
/// file, byte for byte.
#[test]
fn many_segments_and_memory_stays_bounded() {
    let rig = Rig::new("big");
    let input = rig.path().join("input.bin");
    let data = random_bytes(48 * MIB, 11);
    std::fs::write(&input, &data).unwrap();
    let tiny = rig.path().join("tiny.bin");
    std::fs::write(&tiny, random_bytes(1024, 12)).unwrap();
    let output = rig.path().join("output.bin");
    let source = rig.path().join("source");
    std::fs::write(&source, input.display().to_string()).unwrap();
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            &format!(
                "#!/bin/sh\ncase \"$1\" in\nbackup) cat \"$(cat {})\" ;;\nrestore) cat > {} ;;\nesac\n",
                q(&source),
                q(&output)
            ),
        )],
    );
    let conf = Conf::new("none", &hooks);
    let config = rig.config("big", &conf);

    std::fs::write(&source, tiny.display().to_string()).unwrap();
    let (baseline, _) = peak_rss_kib(&rig, &config, &["-q", "--json", "backup"]);
    std::fs::write(&source, input.display().to_string()).unwrap();
    let (peak, stdout) = peak_rss_kib(&rig, &config, &["-q", "--json", "backup"]);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let name = report["name"].as_str().unwrap();
    let stored = report["stored_size"].as_u64().unwrap();
    assert_eq!(report["size"], (48 * MIB) as u64);
    assert_eq!(report["sha256"], sha256_hex(&data));

    let manifest = rig.api.manifest(&rig.container, name);
    let expected = stored.div_ceil(MIB as u64) as usize;
    assert_eq!(manifest.len(), expected, "{stored} bytes in 1 MiB segments");
    assert!(manifest.len() > 4 * 4, "{}", manifest.len());
    assert_eq!(report["segments"], expected as u64);
    let listed = rig.segments_of(name);
    assert_eq!(listed.len(), expected);
    let mut total = 0;
    for (i, seg) in manifest.iter().enumerate() {
        assert_eq!(
            seg["name"],
            format!("/{}/{name}/seg/{i:08}", rig.segments),
            "segment {i}"
        );
        let bytes = seg["bytes"].as_u64().unwrap();
        if i + 1 < manifest.len() {
            assert_eq!(bytes, MIB as u64, "segment {i}");
        } else {
            assert!(bytes > 0 && bytes <= MIB as u64, "last segment: {bytes}");
        }
        total += bytes;
    }
    assert_eq!(total, stored);
    let headers = rig.api.head(&rig.container, name).unwrap();
    assert_eq!(meta(&headers, "volsnap-segments"), expected.to_string());
    assert_eq!(meta(&headers, "volsnap-stored-size"), stored.to_string());

    let (verify_peak, _) = peak_rss_kib(&rig, &config, &["-q", "verify", "--backup", name]);
    let (restore_peak, _) = peak_rss_kib(&rig, &config, &["-q", "restore", "--backup", name]);
    let restored = std::fs::read(&output).unwrap();
    assert!(restored == data, "the restored stream differs");

    let bound = (MIB * (4 + 1)) as u64 / 1024 + 8 * 1024;
    eprintln!(
        "peak RSS: backup of 1 KiB {baseline} KiB, of 48 MiB {peak} KiB (+{} KiB; bound +{bound} KiB); verify {verify_peak} KiB, restore {restore_peak} KiB",
        peak.saturating_sub(baseline)
    );
    assert!(
        peak <= baseline + bound,
        "backup peak RSS {peak} KiB exceeds {baseline} + {bound} KiB"
    );
    for (what, kib) in [("verify", verify_peak), ("restore", restore_peak)] {
        assert!(
            kib <= baseline + bound,
            "{what} peak RSS {kib} KiB exceeds {baseline} + {bound} KiB"
        );
    }
}

/// More segments than one manifest may list: `max_manifest_segments = 3`
/// (the real Swift allows 1000; a lower setting stands in for a stream of
/// more than 1000 segments), 1 MiB segments, 20 MiB not compressed: 20
/// segments under 7 sub-manifests, those under 3, those in the backup's
/// manifest. Swift accepts every level (each checked against its entries'
/// sizes and ETags), serves the backup as one object of the stored size;
/// restore and verify bring back every byte with every checksum checked;
/// retention deletes every segment and sub-manifest with the manifest.
#[test]
fn a_stream_longer_than_one_manifest_round_trips_through_nested_manifests() {
    let rig = Rig::new("nested");
    let input = rig.path().join("input.bin");
    let data = random_bytes(20 * MIB, 21);
    std::fs::write(&input, &data).unwrap();
    let output = rig.path().join("output.bin");
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            &format!(
                "#!/bin/sh\ncase \"$1\" in\nbackup) cat {} ;;\nrestore) cat > {} ;;\nesac\n",
                q(&input),
                q(&output)
            ),
        )],
    );
    let mut conf = Conf::new("none", &hooks);
    conf.compression = "none";
    conf.max_manifest_segments = Some(3);
    conf.retention = "keep_last = 1";
    let config = rig.config("nested", &conf);
    let report = rig.backup(&config);
    let name = report["name"].as_str().unwrap().to_string();
    assert_eq!(report["segments"], 20);
    assert_eq!(report["sha256"], sha256_hex(&data));

    let top = rig.api.manifest(&rig.container, &name);
    let names: Vec<&str> = top.iter().map(|e| e["name"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..3)
        .map(|i| format!("/{}/{name}/seg/L2-{i:08}", rig.segments))
        .collect();
    assert_eq!(names, want);
    assert!(top.iter().all(|e| e["sub_slo"] == true), "{top:?}");
    let level1 = rig
        .api
        .manifest(&rig.segments, &format!("{name}/seg/L1-00000006"));
    let last: Vec<&str> = level1.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        last,
        [
            format!("/{}/{name}/seg/00000018", rig.segments),
            format!("/{}/{name}/seg/00000019", rig.segments)
        ]
    );
    assert_eq!(rig.segments_of(&name).len(), 20 + 7 + 3);
    let headers = rig.api.head(&rig.container, &name).unwrap();
    assert_eq!(headers["content-length"], (20 * MIB).to_string().as_str());
    assert!(
        rig.api.get(&rig.container, &name) == data,
        "the joined object differs"
    );

    rig.ok(&config, &["verify", "--backup", &name]);
    rig.ok(&config, &["restore", "--backup", &name]);
    assert!(std::fs::read(&output).unwrap() == data);

    // keep_last = 1: the next backup deletes this one, every level of it.
    std::thread::sleep(Duration::from_millis(1100));
    let next = rig.backup(&config);
    assert_eq!(next["pruned"], serde_json::json!([name]));
    assert!(rig.api.head(&rig.container, &name).is_none());
    assert_eq!(rig.segments_of(&name), Vec::<String>::new());
}

/// A restore that takes longer than `openstack.request_timeout` (5 s here:
/// the hook stops reading for 8 s after its first 64 KiB, as a slow disk
/// or a busy database would): the download's timeout bounds the wait for
/// the headers and for each read, not the whole body, so the restore
/// completes, bit for bit. (A whole-exchange timeout cut every restore of
/// more than a minute, `request_timeout`'s default, short.)
#[test]
fn a_restore_longer_than_request_timeout_completes() {
    let rig = Rig::new("slow-restore");
    let input = rig.path().join("input.bin");
    let data = random_bytes(3 * MIB + 3, 31);
    std::fs::write(&input, &data).unwrap();
    let output = rig.path().join("output.bin");
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            &format!(
                "#!/bin/sh\ncase \"$1\" in\nbackup) cat {} ;;\nrestore) {{ head -c 65536; sleep 8; cat; }} > {} ;;\nesac\n",
                q(&input),
                q(&output)
            ),
        )],
    );
    let mut conf = Conf::new("none", &hooks);
    conf.compression = "none";
    conf.request_timeout = Some("5s");
    let config = rig.config("slow", &conf);
    rig.backup(&config);
    let started = std::time::Instant::now();
    rig.ok(&config, &["restore", "--latest"]);
    assert!(started.elapsed() > Duration::from_secs(8));
    assert!(std::fs::read(&output).unwrap() == data);
}

// ---------------------------------------------------------------- faults

/// A hook that writes 3.5 MiB and then exits 3 (a disk filled up, a server
/// went away): volsnap exits 1 with the hook's reason, writes no manifest,
/// and deletes the segments it had uploaded. A hook that fails before it
/// writes anything gets its own reason into the error too.
#[test]
fn a_hook_failing_halfway_leaves_nothing_behind() {
    let rig = Rig::new("hook-fail");
    let input = rig.path().join("input.bin");
    std::fs::write(&input, random_bytes(8 * MIB, 3)).unwrap();
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            &format!(
                "#!/bin/sh\n[ \"$1\" = backup ] || exit 0\nhead -c 3670016 {}\necho 'no space left on device' >&2\nexit 3\n",
                q(&input)
            ),
        )],
    );
    let mut conf = Conf::new("none", &hooks);
    conf.compression = "none";
    let config = rig.config("fail", &conf);
    let err = rig.fails(&config, &["backup"]);
    assert!(
        err.contains("exit status: 3") && err.contains("no space left on device"),
        "{err}"
    );
    // 3.5 MiB in 1 MiB segments: four were uploaded, then deleted.
    assert!(err.contains("deleted the 4 segment(s)"), "{err}");
    assert_eq!(rig.api.list(&rig.container), Vec::<String>::new());
    assert_eq!(rig.api.list(&rig.segments), Vec::<String>::new());

    let hooks = hooks_dir(
        &rig.path().join("at-once"),
        &[(
            "none",
            "#!/bin/sh\n[ \"$1\" = backup ] || exit 0\necho 'cannot connect to the server' >&2\nexit 2\n",
        )],
    );
    let config = rig.config("at-once", &Conf::new("none", &hooks));
    let err = rig.fails(&config, &["backup"]);
    assert!(
        err.contains("wrote nothing")
            && err.contains("exit status: 2")
            && err.contains("cannot connect to the server"),
        "{err}"
    );
    assert_eq!(rig.api.list(&rig.container), Vec::<String>::new());
    assert_eq!(rig.api.list(&rig.segments), Vec::<String>::new());
}

/// The value of `volsnap_backup_NAME{…}` in a metrics file, if present.
fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("volsnap_backup_{name}{{strategy=\"swift\",datastore=\"none\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

#[test]
fn the_metrics_file_records_every_outcome() {
    let rig = Rig::new("metrics");
    let input = rig.path().join("input.bin");
    let data = random_bytes(3 * MIB + 5, 11);
    std::fs::write(&input, &data).unwrap();
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = backup ] || exit 0\n[ -e {fail} ] && {{ echo 'disk full' >&2; exit 1; }}\nexec cat {input}\n",
        fail = q(&rig.path().join("fail")),
        input = q(&input)
    );
    let hooks = hooks_dir(rig.path(), &[("none", &script)]);
    let prom = rig.path().join("textfile/volsnap.prom");
    std::fs::create_dir(prom.parent().unwrap()).unwrap();
    let mut conf = Conf::new("none", &hooks);
    conf.metrics_file = Some(prom.clone());
    let config = rig.config("metrics", &conf);

    // A success: its sizes, exit 0, and it is the last success.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let report = rig.backup(&config);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(metric(&text, "last_run_exit_code"), Some(0.0), "{text}");
    assert_eq!(
        metric(&text, "last_run_plain_bytes"),
        Some(data.len() as f64)
    );
    assert_eq!(
        metric(&text, "last_run_stored_bytes"),
        report["stored_size"].as_f64()
    );
    let ended = metric(&text, "last_run_timestamp_seconds").unwrap();
    assert!(ended >= before, "{ended} < {before}");
    assert_eq!(metric(&text, "last_success_timestamp_seconds"), Some(ended));
    assert!(metric(&text, "last_run_duration_seconds").unwrap() > 0.0);
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter must read it");

    // The hook fails: exit 1, no sizes, the last success stays.
    std::fs::write(rig.path().join("fail"), "").unwrap();
    rig.fails(&config, &["backup"]);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(metric(&text, "last_run_exit_code"), Some(1.0), "{text}");
    assert!(metric(&text, "last_run_timestamp_seconds").unwrap() > ended);
    assert_eq!(metric(&text, "last_success_timestamp_seconds"), Some(ended));
    assert_eq!(metric(&text, "last_run_plain_bytes"), None, "{text}");

    // Another run holds the lock: exit 75, and that run reports, not this one.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(rig.path().join("run/lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let (code, _, stderr) = rig.run(&config, &["backup"]);
    assert_eq!(code, Some(75), "{stderr}");
    assert_eq!(std::fs::read_to_string(&prom).unwrap(), text);
    // A dry run takes no lock: it plans, and says a run holds it.
    std::fs::write(rig.path().join("run/lock"), "4242\n").unwrap();
    let (code, stdout, stderr) = rig.run(&config, &["--json", "backup", "--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    let planned: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(planned["lock_holder_pid"], 4242, "{stdout}");
    drop(held);

    // A dry run writes nothing either; the textfile directory holds only the file.
    std::fs::remove_file(rig.path().join("fail")).unwrap();
    rig.ok(&config, &["backup", "--dry-run"]);
    assert_eq!(std::fs::read_to_string(&prom).unwrap(), text);
    let names: Vec<_> = std::fs::read_dir(prom.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("volsnap.prom")]);

    // An unwritable metrics file does not fail a backup that worked, but
    // `check` (what cloud-init runs) names it first.
    std::fs::remove_file(&prom).unwrap();
    std::fs::remove_dir(prom.parent().unwrap()).unwrap();
    let (code, stdout, _) = rig.run(&config, &["check", "--offline"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "problem: metrics_file {}: its directory {}: No such file or directory",
            prom.display(),
            prom.parent().unwrap().display()
        )),
        "{stdout}"
    );
    let (code, _, stderr) = rig.run(&config, &["backup"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("metrics_file {}: not written", prom.display())),
        "{stderr}"
    );
}

/// A proxy between volsnap and Swift that spoils the first PUT of a segment
/// (see [`Fault`]) and forwards everything else. The real Swift does not
/// fail on demand and a loopback socket does not flip bits, and volsnap must
/// be tested as built: a man in the middle on 127.0.0.1 is the one place
/// these faults can be injected without changing volsnap or Swift. One
/// request per connection (`Connection: close` both ways) keeps it simple.
struct FaultProxy {
    /// The Swift endpoint (with the account) through the proxy.
    endpoint: String,
    log: Arc<Mutex<Vec<(String, String, u16)>>>,
    /// The paths of the requests whose body came chunked (a segment PUT
    /// streamed as the segment was written), in order.
    chunked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy)]
enum Fault {
    /// Answer 503 Service Unavailable, without forwarding.
    Unavailable,
    /// Flip the bits of one byte in the middle of the body, then forward:
    /// Swift stores the damaged bytes and answers their MD5.
    Damage,
    /// Take the SLO manifest PUT and never forward it or answer: volsnap
    /// waits in the middle of writing its manifest.
    HoldManifest,
    /// Read half of the first segment PUT's body, then close the
    /// connection without an answer: the PUT breaks off in the middle of
    /// its body, as when a proxy restarts or a load balancer drops it.
    Cut,
}

impl FaultProxy {
    /// A proxy in front of the test cloud's Swift.
    fn in_front_of_swift(rig: &Rig, fault: Fault) -> FaultProxy {
        let swift_url = rig.cloud.get("VOLSNAP_TESTCLOUD_SWIFT_URL");
        let upstream: SocketAddr = swift_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let chunked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let injected = Arc::new(AtomicBool::new(false));
        let (log2, chunked2, stop2) = (log.clone(), chunked.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (log, chunked, injected) =
                            (log2.clone(), chunked2.clone(), injected.clone());
                        std::thread::spawn(move || {
                            let _ = proxy_one(client, upstream, fault, &log, &chunked, &injected);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let endpoint = rig
            .cloud
            .get("VOLSNAP_TESTCLOUD_SWIFT_ENDPOINT")
            .replace(swift_url, &format!("http://{addr}"));
        FaultProxy {
            endpoint,
            log,
            chunked,
            stop,
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads an HTTP head (through the blank line); `None` at EOF.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(Some(lines));
        }
        lines.push(line);
    }
}

/// The head with `Connection: close` instead of whatever it said.
fn closing(head: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for line in head {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out += line;
            out += "\r\n";
        }
    }
    out += "Connection: close\r\n\r\n";
    out.into_bytes()
}

/// A request head whose chunked body is forwarded whole, with its length.
fn unchunked(head: &[String], length: usize) -> Vec<String> {
    head.iter()
        .filter(|l| !l.to_ascii_lowercase().starts_with("transfer-encoding:"))
        .cloned()
        .chain([format!("Content-Length: {length}")])
        .collect()
}

/// Reads a chunked body (decoded) until its end, or until `limit` bytes.
fn read_chunked(r: &mut impl BufRead, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < limit {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(std::io::Error::other)?;
        if size == 0 {
            // The trailer's blank line.
            read_head(r)?;
            break;
        }
        let at = body.len();
        body.resize(at + size, 0);
        r.read_exact(&mut body[at..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
    Ok(body)
}

fn proxy_one(
    client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    log: &Mutex<Vec<(String, String, u16)>>,
    chunked_log: &Mutex<Vec<String>>,
    injected: &AtomicBool,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(mut head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let chunked = head.iter().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let mut parts = head[0].split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let length: usize = head
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if chunked {
        chunked_log.lock().unwrap().push(path.clone());
    }
    if matches!(fault, Fault::Cut)
        && method == "PUT"
        && path.contains("_segments/")
        && (length > 1 || chunked)
        && !injected.swap(true, Ordering::SeqCst)
    {
        if chunked {
            // What the segment holds so far, then no more.
            read_chunked(&mut reader, 256 << 10)?;
        } else {
            let mut half = vec![0u8; length / 2];
            reader.read_exact(&mut half)?;
        }
        log.lock().unwrap().push((method, path, 0));
        // Unread bytes in the socket: closing it resets the connection.
        return client.shutdown(std::net::Shutdown::Both);
    }
    let body = if chunked {
        let body = read_chunked(&mut reader, usize::MAX)?;
        head = unchunked(&head, body.len());
        body
    } else {
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        body
    };
    let mut body = body;
    if matches!(fault, Fault::HoldManifest)
        && method == "PUT"
        && path.contains("multipart-manifest=put")
    {
        log.lock().unwrap().push((method, path, 0));
        // Until volsnap's end closes the connection (or the read timeout).
        return std::io::copy(&mut reader, &mut std::io::sink()).map(drop);
    }
    let spoil = method == "PUT"
        && path.contains("_segments/")
        && !body.is_empty()
        && !injected.swap(true, Ordering::SeqCst);
    if spoil && matches!(fault, Fault::Damage) {
        let middle = body.len() / 2;
        body[middle] ^= 0xff;
    }
    if spoil && matches!(fault, Fault::Unavailable) {
        log.lock().unwrap().push((method, path, 503));
        let text = "<html><h1>Service Unavailable</h1><p>injected by the test proxy</p></html>";
        write!(
            client,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )?;
        return client.flush();
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&closing(&head))?;
    up.write_all(&body)?;
    let mut up = BufReader::new(up);
    let Some(resp) = read_head(&mut up)? else {
        return Ok(());
    };
    let status = resp[0]
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    log.lock().unwrap().push((method, path, status));
    client.write_all(&closing(&resp))?;
    std::io::copy(&mut up, &mut client)?;
    client.flush()
}

/// A hook's `backup` action writing `input` 256 KiB at a time, 20 ms
/// apart: slower than volsnap cuts and sends, so that each segment's PUT
/// starts while the segment is being written (streamed, chunked) instead of
/// once it is whole, as it does from a fast hook.
fn trickle(input: &Path, len: usize) -> String {
    format!(
        "i=0; while [ $i -lt {} ]; do dd if={} bs=262144 skip=$i count=1 2>/dev/null; \
         sleep 0.02; i=$((i+1)); done",
        len.div_ceil(256 << 10),
        q(input)
    )
}

/// Swift answers 503 to the first segment PUT, which streams the segment as
/// it is written (chunked): volsnap sends the segment again whole from its
/// buffer (a whole PUT, with its own retries), the backup completes, and it
/// restores.
#[test]
fn a_503_on_a_segment_put_is_retried() {
    let rig = Rig::new("503");
    let proxy = FaultProxy::in_front_of_swift(&rig, Fault::Unavailable);
    let input = rig.path().join("input.bin");
    let data = random_bytes(3 * MIB + 5, 5);
    std::fs::write(&input, &data).unwrap();
    let output = rig.path().join("output.bin");
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            &format!(
                "#!/bin/sh\ncase \"$1\" in\nbackup) {} ;;\nrestore) cat > {} ;;\nesac\n",
                trickle(&input, data.len()),
                q(&output)
            ),
        )],
    );
    let mut conf = Conf::new("none", &hooks);
    conf.endpoint = Some(proxy.endpoint.clone());
    conf.compression = "none";
    let config = rig.config("proxied", &conf);
    let (code, stdout, stderr) = rig.run(&config, &["--json", "backup"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("503") && stderr.contains("sending it again whole"),
        "no retry logged: {stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let name = report["name"].as_str().unwrap();
    let log = proxy.log.lock().unwrap().clone();
    let failed: Vec<&(String, String, u16)> = log.iter().filter(|(_, _, s)| *s == 503).collect();
    assert_eq!(failed.len(), 1, "{log:?}");
    let chunked = proxy.chunked.lock().unwrap().clone();
    assert_eq!(
        chunked.iter().filter(|p| **p == failed[0].1).count(),
        1,
        "the failed PUT was streamed, its retry whole: {chunked:?}"
    );
    let retried = log
        .iter()
        .filter(|(m, p, s)| m == "PUT" && *p == failed[0].1 && *s == 201)
        .count();
    assert_eq!(retried, 1, "the failed segment was not PUT again: {log:?}");
    let segment_puts = log
        .iter()
        .filter(|(m, p, s)| m == "PUT" && p.contains("_segments/") && *s == 201)
        .count();
    assert_eq!(segment_puts, 4, "{log:?}");
    assert_eq!(rig.segments_of(name).len(), 4);

    rig.ok(&config, &["restore", "--latest"]);
    assert!(std::fs::read(&output).unwrap() == data);
}

/// A segment PUT, streaming the segment as it is written, that breaks off
/// in the middle of its body (the proxy reads part of it and drops the
/// connection: a fault the real Swift does not produce on demand): volsnap
/// sends the whole segment again from its buffer, which it holds until
/// Swift has answered; the backup completes, every segment's MD5 matches
/// Swift's ETag, and it restores bit for bit.
#[test]
fn a_segment_put_cut_mid_body_is_sent_again_whole() {
    let rig = Rig::new("cut");
    let proxy = FaultProxy::in_front_of_swift(&rig, Fault::Cut);
    let input = rig.path().join("input.bin");
    let data = random_bytes(5 * MIB + 77, 8);
    std::fs::write(&input, &data).unwrap();
    let output = rig.path().join("output.bin");
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            &format!(
                "#!/bin/sh\ncase \"$1\" in\nbackup) {} ;;\nrestore) cat > {} ;;\nesac\n",
                trickle(&input, data.len()),
                q(&output)
            ),
        )],
    );
    let mut conf = Conf::new("none", &hooks);
    conf.endpoint = Some(proxy.endpoint.clone());
    conf.compression = "none";
    let config = rig.config("proxied", &conf);
    let (code, stdout, stderr) = rig.run(&config, &["--json", "backup"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("sending it again whole"),
        "no retry logged: {stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let name = report["name"].as_str().unwrap();
    let log = proxy.log.lock().unwrap().clone();
    let cut: Vec<&(String, String, u16)> = log.iter().filter(|(_, _, s)| *s == 0).collect();
    assert_eq!(cut.len(), 1, "{log:?}");
    let chunked = proxy.chunked.lock().unwrap().clone();
    assert!(
        chunked.contains(&cut[0].1),
        "the cut PUT was not streamed: {chunked:?}"
    );
    let again = log
        .iter()
        .filter(|(m, p, s)| m == "PUT" && *p == cut[0].1 && *s == 201)
        .count();
    assert_eq!(again, 1, "the cut segment was not PUT again: {log:?}");
    assert_eq!(rig.segments_of(name).len(), 6);

    rig.ok(&config, &["restore", "--latest"]);
    assert!(std::fs::read(&output).unwrap() == data);
}

/// A segment damaged between volsnap and Swift's disk (here: by the proxy,
/// after volsnap computed its MD5): Swift stores it and answers the MD5 of
/// what it got, volsnap's own MD5 of the segment differs, the backup fails
/// saying so, and nothing is left in Swift: no manifest, no segment.
#[test]
fn a_segment_damaged_on_the_way_fails_the_backup() {
    let rig = Rig::new("damaged-put");
    let proxy = FaultProxy::in_front_of_swift(&rig, Fault::Damage);
    let input = rig.path().join("input.bin");
    std::fs::write(&input, random_bytes(3 * MIB + 5, 6)).unwrap();
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            &format!(
                "#!/bin/sh\ncase \"$1\" in\nbackup) cat {} ;;\nesac\n",
                q(&input)
            ),
        )],
    );
    let mut conf = Conf::new("none", &hooks);
    conf.endpoint = Some(proxy.endpoint.clone());
    conf.compression = "none";
    let config = rig.config("damaging", &conf);
    let (code, stdout, stderr) = rig.run(&config, &["backup"]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Swift stored MD5") && stderr.contains("damaged on the way"),
        "{stderr}"
    );
    let log = proxy.log.lock().unwrap().clone();
    let stored = log
        .iter()
        .filter(|(m, p, s)| m == "PUT" && p.contains("_segments/") && *s == 201)
        .count();
    assert!(
        stored >= 1,
        "the damaged segment never reached Swift: {log:?}"
    );
    assert!(
        !log.iter()
            .any(|(_, p, _)| p.contains("multipart-manifest=put")),
        "a manifest was written: {log:?}"
    );
    assert_eq!(rig.api.list(&rig.container), Vec::<String>::new());
    assert_eq!(rig.api.list(&rig.segments), Vec::<String>::new());
}

/// A damaged backup never reaches the datastore. On a real Redis:
/// - a segment's bytes rotted on Swift's disk: Swift's SLO download checks
///   each segment's MD5 and breaks off at the damaged one; the restore fails
///   saying so, Redis keeps its current data, the hook never stopped it; the
///   read made Swift quarantine the segment, so `verify` then fails too;
/// - a segment replaced and the manifest rewritten to match (consistent for
///   Swift, not what was backed up): only volsnap's SHA-256 can tell, and it
///   does, for `verify` and `restore`;
/// - rot in an age-encrypted backup: age's authentication fails on the
///   damaged chunk.
#[test]
fn damaged_backups_fail_verify_and_restore_and_leave_the_data_alone() {
    let rig = Rig::new("damage");
    let redis = Server::start("redis.sh", &rig.path().join("redis"));
    for i in 0..3 {
        redis_set(&redis, &format!("blob{i}"), &random_bytes(MIB, 100 + i));
    }
    redis_cli(&redis, &["SET", "state", "backed-up"]);
    let (key, public) = age_key(rig.path(), "key.txt");
    let mut conf = redis_env(Conf::new("redis", &repo().join("hooks")), &redis);
    conf.compression = "none";
    let plain = rig.config("plain", &conf);
    let mut conf_age = conf.clone();
    conf_age.compression = "zstd";
    conf_age.recipients = vec![public];
    conf_age.identity = Some(key);
    let encrypted = rig.config("age", &conf_age);

    // What must survive every failed restore below.
    let rdb = PathBuf::from(redis.get("REDIS_RDB_PATH"));
    let untouched = |what: &str, rdb_sha: &str| {
        assert_eq!(
            redis_cli(&redis, &["GET", "state"]),
            "current",
            "{what}: Redis lost its current data"
        );
        assert_eq!(
            sha256_hex(&std::fs::read(&rdb).unwrap()),
            rdb_sha,
            "{what}: the RDB file changed"
        );
    };
    let rotted = rig.backup(&plain)["name"].as_str().unwrap().to_string();
    let tampered = rig.backup(&plain)["name"].as_str().unwrap().to_string();
    let sealed = rig.backup(&encrypted)["name"].as_str().unwrap().to_string();
    redis_cli(&redis, &["SET", "state", "current"]);
    redis_cli(&redis, &["SAVE"]);
    let rdb_sha = sha256_hex(&std::fs::read(&rdb).unwrap());

    // 1. Bit rot on the disk, segment 1 of 3+.
    let _rot = rig.rot(&rig.segments, &format!("{rotted}/seg/00000001"), 1000);
    let err = rig.fails(&plain, &["restore", "--backup", &rotted]);
    // The segments are read one by one: the stream's SHA-256 finds the rot
    // (the proxy no longer MD5s each segment), and the hook never gets the
    // stream's end. Swift's object server, having read the rotten segment
    // whole, quarantines it: the next read names it as missing.
    assert!(
        err.contains("SHA-256 mismatch")
            && err.contains("the hook was stopped before it swapped anything in"),
        "{err}"
    );
    untouched("rot", &rdb_sha);
    let err = rig.fails(&plain, &["verify", "--backup", &rotted]);
    assert!(
        err.contains(&format!("verify of {}/{rotted} failed", rig.container)),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "segment /{}/{rotted}/seg/00000001 is missing",
            rig.segments
        )),
        "{err}"
    );

    // 2. Consistent tampering: segment 1 replaced, the manifest rewritten.
    rig.tamper(&tampered, 1);
    for action in ["verify", "restore"] {
        let err = rig.fails(&plain, &[action, "--backup", &tampered]);
        assert!(
            err.contains("SHA-256 mismatch") && err.contains("the backup is damaged"),
            "{action}: {err}"
        );
        untouched(action, &rdb_sha);
    }

    // 3. Rot in an age-encrypted, compressed backup.
    let _rot = rig.rot(&rig.segments, &format!("{sealed}/seg/00000001"), 1000);
    let err = rig.fails(&encrypted, &["restore", "--backup", &sealed]);
    assert!(err.contains("age authentication failed"), "{err}");
    untouched("age", &rdb_sha);
    assert_eq!(redis_cli(&redis, &["PING"]), "PONG");
}

/// The `none` hook extracts nothing from a stream volsnap stops: a
/// tampered backup (segment 1 of 3+ replaced, manifest rewritten, so Swift
/// serves it whole) fails `restore` with the SHA-256 mismatch, and the
/// restore directory stays empty — tar would have written every file before
/// the damaged one, so the hook spools the stream and extracts only once
/// volsnap closes its stdin; stopped with SIGTERM, it removes its spool.
#[test]
fn a_damaged_none_backup_extracts_nothing() {
    let rig = Rig::new("none-damage");
    let src = rig.path().join("src");
    make_tree(&src);
    let restored = rig.path().join("restored");
    let mut conf = Conf::new("none", &repo().join("hooks"))
        .env("VOLSNAP_RESTORE_DIR", restored.display().to_string());
    conf.mounts = vec![src.clone()];
    conf.compression = "none";
    let config = rig.config("none", &conf);
    let name = rig.backup(&config)["name"].as_str().unwrap().to_string();
    rig.tamper(&name, 1);
    let err = rig.fails(&config, &["restore", "--latest"]);
    assert!(
        err.contains("SHA-256 mismatch") && err.contains("stopped before it swapped anything in"),
        "{err}"
    );
    let left: Vec<String> = std::fs::read_dir(&restored)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the hook left {left:?} in {}",
        restored.display()
    );
}

// ---------------------------------------------------------------- list, prune

/// `volsnap list` shows this host's backups newest first with their time,
/// size, datastore, compression and encryption; `volsnap prune` with
/// `keep_last = 1` deletes the others with their segments (a dry run first
/// deletes nothing); retention after a backup does the same.
#[test]
fn list_and_prune() {
    let rig = Rig::new("prune");
    let input = rig.path().join("input.bin");
    std::fs::write(&input, random_bytes(2_500_000, 9)).unwrap();
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            &format!(
                "#!/bin/sh\n[ \"$1\" = backup ] || exit 0\ncat {}\n",
                q(&input)
            ),
        )],
    );
    let (_, public) = age_key(rig.path(), "key.txt");
    let mut made = Vec::new();
    for (compression, age) in [("gzip", false), ("zstd", true), ("none", false)] {
        let mut conf = Conf::new("none", &hooks);
        conf.compression = compression;
        if age {
            conf.recipients = vec![public.clone()];
        }
        conf.retention = "keep_last = 1\nafter_backup = false";
        let config = rig.config(compression, &conf);
        let report = rig.backup(&config);
        assert_eq!(report["pruned"], serde_json::json!([]));
        made.push((
            report["name"].as_str().unwrap().to_string(),
            compression,
            age,
            config,
        ));
    }
    let config = &made[2].3;
    let listing: Value = serde_json::from_str(&rig.ok(config, &["--json", "list"])).unwrap();
    assert_eq!(listing["orphans"], serde_json::json!([]), "{listing}");
    let rows = listing["backups"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, (name, compression, age, _)) in rows.iter().zip(made.iter().rev()) {
        assert_eq!(row["name"], name.as_str());
        assert_eq!(row["size"], 2_500_000);
        assert_eq!(row["datastore"], "none");
        assert_eq!(row["compression"], *compression);
        assert_eq!(row["encryption"], if *age { "age" } else { "none" });
        let created: jiff::Timestamp = row["created"].as_str().unwrap().parse().unwrap();
        assert!(
            (jiff::Timestamp::now().as_second() - created.as_second()).abs() < 120,
            "{row}"
        );
    }
    let created: Vec<&str> = rows
        .iter()
        .map(|r| r["created"].as_str().unwrap())
        .collect();
    assert!(
        created[0] > created[1] && created[1] > created[2],
        "{created:?}"
    );
    let text = rig.ok(config, &["list"]);
    let header = text.lines().next().unwrap();
    for column in [
        "BACKUP",
        "CREATED",
        "SIZE",
        "DATASTORE",
        "COMPRESSION",
        "ENCRYPTION",
    ] {
        assert!(header.contains(column), "{text}");
    }
    assert!(text.contains("2.4 MiB") && text.contains(" age"), "{text}");

    for (name, ..) in &made {
        assert!(rig.segments_of(name).len() >= 2, "{name}");
    }
    let dry: Value =
        serde_json::from_str(&rig.ok(config, &["--json", "prune", "--dry-run"])).unwrap();
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(rig.api.list(&rig.container).len(), 3);

    let pruned: Value = serde_json::from_str(&rig.ok(config, &["--json", "prune"])).unwrap();
    assert_eq!(
        pruned["deleted"],
        serde_json::json!([made[0].0, made[1].0]),
        "{pruned}"
    );
    assert_eq!(rig.api.list(&rig.container), vec![made[2].0.clone()]);
    for (name, ..) in &made[..2] {
        assert_eq!(rig.segments_of(name), Vec::<String>::new(), "{name}");
    }
    let kept = rig.segments_of(&made[2].0);
    assert!(kept.len() >= 2);
    assert_eq!(rig.api.list(&rig.segments), kept);

    // Retention right after a backup.
    let mut conf = Conf::new("none", &hooks);
    conf.retention = "keep_last = 1";
    let config = rig.config("after", &conf);
    let report = rig.backup(&config);
    assert_eq!(report["pruned"], serde_json::json!([made[2].0]));
    let newest = report["name"].as_str().unwrap();
    assert_eq!(rig.api.list(&rig.container), vec![newest.to_string()]);
    assert_eq!(rig.api.list(&rig.segments), rig.segments_of(newest));
}

// ---------------------------------------------------------------- databases

fn mariadb_sql(db: &Server, sql: &str) -> String {
    let out = Command::new("mariadb")
        .arg(format!("--defaults-file={}", db.get("MYSQL_DEFAULTS_FILE")))
        .args(["--batch", "--skip-column-names", "-e", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// MariaDB through mariadb-backup's xbstream, gzip, age-encrypted: rows
/// written, backup, rows changed (and a table dropped), `restore --latest
/// --identity`: the rows are the backed-up rows.
#[test]
fn mariadb_round_trip_gzip_age() {
    let rig = Rig::new("mariadb");
    let db = Server::start("mariadb.sh", &rig.path().join("db"));
    mariadb_sql(
        &db,
        "CREATE DATABASE d; CREATE TABLE d.r (k INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB;
         INSERT INTO d.r VALUES (1, 'one'), (2, 'two'), (3, 'three');
         CREATE TABLE d.gone (i INT) ENGINE=InnoDB; INSERT INTO d.gone VALUES (7);",
    );
    let query = "SELECT k, v FROM d.r ORDER BY k; SELECT i FROM d.gone";
    let before = mariadb_sql(&db, query);
    let (key, public) = age_key(rig.path(), "key.txt");
    let mut conf = Conf::new("mysql", &repo().join("hooks"))
        .env("VOLSNAP_MYSQL_DEFAULTS_FILE", db.get("MYSQL_DEFAULTS_FILE"))
        .env("VOLSNAP_MYSQL_DATADIR", db.get("MYSQL_DATADIR"))
        .env("VOLSNAP_MYSQL_STOP_CMD", db.command("stop"))
        .env("VOLSNAP_MYSQL_START_CMD", db.command("start"));
    conf.compression = "gzip";
    conf.segment_size = "4MiB";
    conf.recipients = vec![public];
    let config = rig.config("mysql", &conf);
    let report = rig.backup(&config);
    assert_eq!(report["datastore"], "mysql");
    assert!(
        report["datastore_version"]
            .as_str()
            .unwrap()
            .starts_with("10."),
        "{report}"
    );
    mariadb_sql(
        &db,
        "DELETE FROM d.r WHERE k = 2; UPDATE d.r SET v = 'changed' WHERE k = 1;
         INSERT INTO d.r VALUES (4, 'four'); DROP TABLE d.gone",
    );
    assert_ne!(mariadb_sql(&db, "SELECT k, v FROM d.r ORDER BY k"), before);
    rig.ok(
        &config,
        &["restore", "--latest", "--identity", key.to_str().unwrap()],
    );
    assert_eq!(mariadb_sql(&db, query), before);
}

fn psql(db: &Server, sql: &str) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{}/psql", db.get("PG_BINDIR")))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(db.get("PG_HOST"))
        .args([
            "-p",
            db.get("PG_PORT"),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// PostgreSQL through pg_basebackup's tar, zstd, not encrypted: rows
/// written, backup, the table truncated and refilled, `restore --latest`:
/// the rows are the backed-up rows, the server recovered from the backup's
/// WAL.
#[test]
fn postgresql_round_trip_zstd() {
    let rig = Rig::new("pg");
    let db = Server::start("postgres.sh", &rig.path().join("db"));
    psql(
        &db,
        "CREATE TABLE r (k int PRIMARY KEY, v text);
         INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
    );
    let query = "SELECT count(*), md5(string_agg(k || '=' || v, ',' ORDER BY k)) FROM r";
    let before = psql(&db, query);
    let mut conf = Conf::new("postgresql", &repo().join("hooks"))
        .env("VOLSNAP_PG_HOST", db.get("PG_HOST"))
        .env("VOLSNAP_PG_PORT", db.get("PG_PORT"))
        .env("VOLSNAP_PG_DATADIR", db.get("PG_DATADIR"))
        .env("VOLSNAP_PG_BINDIR", db.get("PG_BINDIR"))
        .env("VOLSNAP_PG_STOP_CMD", db.command("stop"))
        .env("VOLSNAP_PG_START_CMD", db.command("start"));
    conf.compression = "zstd";
    conf.segment_size = "4MiB";
    let config = rig.config("pg", &conf);
    let report = rig.backup(&config);
    assert_eq!(report["datastore"], "postgresql");
    assert_eq!(report["compression"], "zstd");
    psql(
        &db,
        "TRUNCATE r; INSERT INTO r VALUES (1, 'after the backup')",
    );
    assert_ne!(psql(&db, query), before);
    rig.ok(&config, &["restore", "--latest"]);
    assert_eq!(psql(&db, query), before);
}

/// Redis through `redis-cli --rdb`, not compressed, age-encrypted with the
/// identity from the config: keys written, backup, the server wiped
/// (FLUSHALL) and written to, `restore --latest`: the keys are the
/// backed-up keys, and only those.
#[test]
fn redis_round_trip_uncompressed_age() {
    let rig = Rig::new("redis");
    let redis = Server::start("redis.sh", &rig.path().join("redis"));
    for i in 0..3 {
        redis_set(&redis, &format!("blob{i}"), &random_bytes(700_000, 200 + i));
    }
    redis_cli(&redis, &["SET", "small", "value"]);
    let before = redis_digest(&redis);
    assert_eq!(before.len(), 4);
    let (key, public) = age_key(rig.path(), "key.txt");
    let mut conf = redis_env(Conf::new("redis", &repo().join("hooks")), &redis);
    conf.compression = "none";
    conf.recipients = vec![public];
    conf.identity = Some(key);
    let config = rig.config("redis", &conf);
    let report = rig.backup(&config);
    assert_eq!(report["datastore"], "redis");
    assert!(report["segments"].as_u64().unwrap() >= 2, "{report}");
    redis_cli(&redis, &["FLUSHALL"]);
    redis_cli(&redis, &["SET", "new", "after the backup"]);
    rig.ok(&config, &["restore", "--latest"]);
    assert_eq!(redis_digest(&redis), before);
}

// ---------------------------------------------------------------- orphans

/// A `none` hook whose `backup` writes its pid to `pidfile` (it leads its
/// process group), streams `input`, then waits while `gate` exists (at most
/// 60 s) before it ends the stream: a run caught mid-upload.
fn gated_hook(input: &Path, gate: &Path, pidfile: &Path) -> String {
    format!(
        "#!/bin/sh\n[ \"$1\" = backup ] || exit 0\necho $$ > {pid}\ncat {input}\ni=0\nwhile [ -e {gate} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done\n",
        pid = q(pidfile),
        input = q(input),
        gate = q(gate)
    )
}

/// A volsnap run in the background; dropping it SIGKILLs it and the hook's
/// process group (the hook outlives a killed volsnap until its stream ends).
struct Running {
    child: std::process::Child,
    hook_pidfile: PathBuf,
}

impl Running {
    fn start(rig: &Rig, config: &Path, pidfile: &Path) -> Running {
        let child = rig
            .volsnap(config, &["--json", "backup"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running {
            child,
            hook_pidfile: pidfile.to_path_buf(),
        }
    }

    fn kill_hook(&self) {
        if let Some(pid) = std::fs::read_to_string(&self.hook_pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// SIGKILL, as the OOM killer or `kill -9` would: no handler runs.
    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.kill_hook();
    }

    /// Waits (bounded) for the run to end; its report.
    fn finish(mut self, limit: Duration) -> Value {
        let until = std::time::Instant::now() + limit;
        while self.child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < until, "the backup did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        let mut err = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{out}\n{err}");
        serde_json::from_str(&out).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.kill_hook();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < until,
            "{what}: not within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn host() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A backup killed outright (SIGKILL: no handler, no cleanup) leaves its
/// segments and no manifest: once mid-upload, once while Swift has not
/// answered its manifest PUT (a proxy takes it and never forwards it). Each
/// time `list` names the orphans as removable (the run's record in the
/// runtime dir is no longer held), and the next `backup` deletes them and
/// says how much it freed: afterwards every segment belongs to a manifest.
#[test]
fn a_sigkilled_backup_leaves_no_orphan_after_the_next_run() {
    let rig = Rig::new("sigkill");
    let input = rig.path().join("input.bin");
    std::fs::write(&input, random_bytes(3 * MIB + MIB / 2, 11)).unwrap();
    let gate = rig.path().join("gate");
    let pidfile = rig.path().join("hook.pid");
    let hooks = hooks_dir(
        rig.path(),
        &[("none", &gated_hook(&input, &gate, &pidfile))],
    );
    let mut conf = Conf::new("none", &hooks);
    conf.compression = "none";
    conf.retention = "keep_last = 10";
    let config = rig.config("direct", &conf);
    let proxy = FaultProxy::in_front_of_swift(&rig, Fault::HoldManifest);
    let mut held = conf.clone();
    held.endpoint = Some(proxy.endpoint.clone());
    let held = rig.config("held", &held);

    // Each cleaned up by one of the three commands that sweep.
    for (phase, killed_config, segments, cleaner) in [
        ("mid-upload", &config, 3, "backup"),
        ("mid-manifest", &held, 4, "check"),
        ("mid-upload", &config, 3, "prune"),
    ] {
        let mid_upload = phase == "mid-upload";
        if mid_upload {
            std::fs::write(&gate, "").unwrap();
        }
        let run = Running::start(&rig, killed_config, &pidfile);
        if mid_upload {
            // 3.5 MiB in 1 MiB segments: three are full while the hook waits.
            wait_for("three segments uploaded", Duration::from_secs(30), || {
                rig.api.list(&rig.segments).len() >= 3
            });
        } else {
            wait_for("the manifest PUT", Duration::from_secs(30), || {
                proxy
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(_, p, _)| p.contains("multipart-manifest=put"))
            });
        }
        run.sigkill();
        let _ = std::fs::remove_file(&gate);
        let left = rig.api.list(&rig.segments);
        assert_eq!(left.len(), segments, "{phase}: {left:?}");
        assert_eq!(
            rig.api.list(&rig.container),
            Vec::<String>::new(),
            "{phase}"
        );
        let run_name = left[0].split("/seg/").next().unwrap().to_string();

        let listing: Value = serde_json::from_str(&rig.ok(&config, &["--json", "list"])).unwrap();
        let orphans = listing["orphans"].as_array().unwrap();
        assert_eq!(orphans.len(), 1, "{phase}: {listing}");
        assert_eq!(orphans[0]["run"], run_name.as_str(), "{phase}");
        assert_eq!(orphans[0]["state"], "removable", "{phase}");
        assert_eq!(orphans[0]["segments"], segments, "{phase}");
        let text = rig.ok(&config, &["list"]);
        assert!(
            text.contains(&format!("orphan segments of {run_name}")),
            "{phase}: {text}"
        );

        let bytes = if segments == 3 {
            3 * MIB
        } else {
            3 * MIB + MIB / 2
        };
        let sweep = match cleaner {
            "backup" => {
                let report = rig.backup(&config);
                let manifests = rig.api.list(&rig.container);
                assert_eq!(
                    manifests,
                    vec![report["name"].as_str().unwrap().to_string()]
                );
                assert_eq!(
                    rig.api.list(&rig.segments),
                    rig.segments_of(&manifests[0]),
                    "{phase}"
                );
                report["orphans"].clone()
            }
            "prune" => {
                let pruned: Value =
                    serde_json::from_str(&rig.ok(&config, &["--json", "prune"])).unwrap();
                pruned["orphans"].clone()
            }
            _ => {
                let out = rig.ok(&config, &["check"]);
                assert!(
                    out.contains(&format!(
                        "ok: orphan segments: removed {segments} orphan segment(s) of 1 killed run(s), freed 3.5 MiB"
                    )),
                    "{phase}: {out}"
                );
                serde_json::json!({"freed_segments": segments, "freed_bytes": bytes, "found": [{"state": "removed"}]})
            }
        };
        assert_eq!(sweep["freed_segments"], segments, "{phase}: {sweep}");
        assert_eq!(sweep["freed_bytes"], bytes, "{phase}: {sweep}");
        assert_eq!(sweep["found"][0]["state"], "removed", "{phase}");
        let listing: Value = serde_json::from_str(&rig.ok(&config, &["--json", "list"])).unwrap();
        assert_eq!(listing["orphans"], serde_json::json!([]), "{phase}");
        // The next round starts from empty containers again.
        for manifest in rig.api.list(&rig.container) {
            rig.api.delete(
                &rig.container,
                Some(&format!("{manifest}?multipart-manifest=delete")),
            );
        }
        wait_for("the backup deleted", Duration::from_secs(10), || {
            rig.api.list(&rig.container).is_empty() && rig.api.list(&rig.segments).is_empty()
        });
    }
}

/// Orphans are judged by their run, never by their look alone. While a
/// backup of another configuration (another runtime dir, same container)
/// is uploading: `backup` from this configuration sees its segments as
/// `recent` (no record of its run here, too young to be over) and leaves
/// them; `check` and `prune` from the uploading run's own runtime dir see
/// its held record (`in-flight`) and leave them. The uploading run then
/// completes and verifies. A prefix older than stream_timeout + 1 h with no
/// record is removed; another host's never is.
#[test]
fn a_concurrent_runs_segments_are_never_touched() {
    let rig = Rig::new("concurrent");
    let input = rig.path().join("input.bin");
    std::fs::write(&input, random_bytes(3 * MIB + MIB / 2, 12)).unwrap();
    let gate = rig.path().join("gate");
    let pidfile = rig.path().join("hook.pid");
    let slow = hooks_dir(
        &rig.path().join("slow"),
        &[("none", &gated_hook(&input, &gate, &pidfile))],
    );
    let mut conf = Conf::new("none", &slow);
    conf.compression = "none";
    conf.runtime_dir = Some(rig.path().join("run-slow"));
    conf.retention = "keep_last = 5";
    let slow_config = rig.config("slow", &conf);
    let fast = hooks_dir(
        &rig.path().join("fast"),
        &[(
            "none",
            &format!(
                "#!/bin/sh\n[ \"$1\" = backup ] || exit 0\nhead -c 100000 {}\n",
                q(&input)
            ),
        )],
    );
    let fast_config = rig.config("fast", &Conf::new("none", &fast));

    let old = "volsnap/{host}/20200102T030405Z/seg/00000000";
    let mine_old = old.replace("{host}", &host());
    let theirs_old = old.replace("{host}", "another-host");
    std::fs::write(&gate, "").unwrap();
    let run = Running::start(&rig, &slow_config, &pidfile);
    wait_for("three segments uploaded", Duration::from_secs(30), || {
        rig.api.list(&rig.segments).len() >= 3
    });
    let in_flight = rig.api.list(&rig.segments);
    // Planted after the slow run's own sweep (which would remove one).
    rig.api.put(&rig.segments, &mine_old, vec![7u8; 1000]);
    rig.api.put(&rig.segments, &theirs_old, vec![7u8; 1000]);
    let run_name = in_flight[0].split("/seg/").next().unwrap().to_string();

    let report = rig.backup(&fast_config);
    let orphans = report["orphans"]["found"].as_array().unwrap();
    let state = |run: &str| {
        orphans
            .iter()
            .find(|o| o["run"] == run)
            .map(|o| o["state"].as_str().unwrap().to_string())
    };
    assert_eq!(state(&run_name).as_deref(), Some("recent"), "{report}");
    let mine_old_run = mine_old.split("/seg/").next().unwrap();
    assert_eq!(state(mine_old_run).as_deref(), Some("removed"), "{report}");
    assert_eq!(report["orphans"]["freed_bytes"], 1000, "{report}");

    let out = rig.ok(&slow_config, &["check"]);
    assert!(
        out.contains(&format!("segments of {run_name}"))
            && out.contains("a backup is uploading them now"),
        "{out}"
    );
    let pruned: Value = serde_json::from_str(&rig.ok(&slow_config, &["--json", "prune"])).unwrap();
    assert_eq!(
        pruned["orphans"]["found"][0]["state"], "in-flight",
        "{pruned}"
    );
    assert_eq!(pruned["orphans"]["freed_bytes"], 0, "{pruned}");

    let now: Vec<String> = rig
        .api
        .list(&rig.segments)
        .into_iter()
        .filter(|n| n.starts_with(&format!("{run_name}/")))
        .collect();
    assert!(
        in_flight.iter().all(|n| now.contains(n)),
        "{in_flight:?} {now:?}"
    );
    assert!(rig.api.list(&rig.segments).contains(&theirs_old));
    assert!(!rig.api.list(&rig.segments).contains(&mine_old));

    std::fs::remove_file(&gate).unwrap();
    let done = run.finish(Duration::from_secs(60));
    assert_eq!(done["name"], run_name.as_str(), "{done}");
    assert_eq!(done["segments"], 4, "{done}");
    rig.ok(&slow_config, &["verify", "--backup", &run_name]);
}

/// Two configurations of one host share a container: datastore `none` and
/// `redis` (a stand-in hook streaming a file). `list` shows both with their
/// datastore; `verify --latest` and `restore --latest` take the newest
/// backup of their own datastore even when the other's is newer, and
/// `prune` applies retention to its own datastore's backups only.
#[test]
fn latest_and_retention_stay_within_the_datastore() {
    let rig = Rig::new("latest");
    let body = |name: &str, out: &Path| {
        format!(
            "#!/bin/sh\ncase \"$1\" in\nbackup) echo {name} ;;\nrestore) cat > {} ;;\nesac\n",
            q(out)
        )
    };
    let restored = rig.path().join("restored");
    let hooks = hooks_dir(
        rig.path(),
        &[
            ("none", &body("none-data", &restored)),
            ("redis", &body("redis-data", &restored)),
        ],
    );
    let mut none = Conf::new("none", &hooks);
    none.retention = "keep_last = 1\nafter_backup = false";
    let none = rig.config("none", &none);
    let redis = rig.config("redis", &Conf::new("redis", &hooks));
    let first_none = rig.backup(&none)["name"].as_str().unwrap().to_string();
    let second_none = rig.backup(&none)["name"].as_str().unwrap().to_string();
    let newest_redis = rig.backup(&redis)["name"].as_str().unwrap().to_string();

    let listing: Value = serde_json::from_str(&rig.ok(&none, &["--json", "list"])).unwrap();
    let rows: Vec<(&str, &str)> = listing["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["datastore"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (&*newest_redis, "redis"),
            (&*second_none, "none"),
            (&*first_none, "none")
        ]
    );

    let verified: Value =
        serde_json::from_str(&rig.ok(&none, &["--json", "verify", "--latest"])).unwrap();
    assert_eq!(verified["name"], second_none.as_str());
    rig.ok(&none, &["restore", "--latest"]);
    assert_eq!(std::fs::read_to_string(&restored).unwrap(), "none-data\n");
    let verified: Value =
        serde_json::from_str(&rig.ok(&redis, &["--json", "verify", "--latest"])).unwrap();
    assert_eq!(verified["name"], newest_redis.as_str());

    let pruned: Value = serde_json::from_str(&rig.ok(&none, &["--json", "prune"])).unwrap();
    assert_eq!(
        pruned["deleted"],
        serde_json::json!([first_none]),
        "{pruned}"
    );
    let mut left = rig.api.list(&rig.container);
    left.sort();
    let mut want = vec![second_none, newest_redis];
    want.sort();
    assert_eq!(left, want);
}

/// `check` looks at both containers and creates neither: a missing one is
/// what a backup creates with create_container = true (ok, and said so),
/// and a problem without it. Once a backup made them, `check` says they
/// exist and that no segment is an orphan.
#[test]
fn check_creates_no_container() {
    let rig = Rig::new("check");
    let hooks = hooks_dir(
        rig.path(),
        &[(
            "none",
            "#!/bin/sh\n[ \"$1\" = backup ] || exit 0\necho data\n",
        )],
    );
    let status = |container: &str| {
        rig.api
            .send(rig.api.client.head(rig.api.url(container, None)))
            .status()
            .as_u16()
    };
    let config = rig.config("create", &Conf::new("none", &hooks));
    let out = rig.ok(&config, &["check"]);
    for container in [&rig.container, &rig.segments] {
        assert!(
            out.contains(&format!("ok: container: container {container} does not exist; a backup will create it (create_container = true)")),
            "{out}"
        );
        assert_eq!(status(container), 404, "check created {container}");
    }
    let mut conf = Conf::new("none", &hooks);
    conf.create_container = false;
    let strict = rig.config("strict", &conf);
    let (code, out, err) = rig.run(&strict, &["check"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "problem: container: container {} does not exist and create_container = false",
            rig.container
        )),
        "{out}"
    );
    assert_eq!(status(&rig.container), 404);

    rig.backup(&config);
    let out = rig.ok(&strict, &["check"]);
    assert!(
        out.contains(&format!("ok: container: container {} exists", rig.segments)),
        "{out}"
    );
    assert!(out.contains("ok: orphan segments: none"), "{out}");
}

// ------------------------------------------------ streams longer than hooks.timeout

/// `PARENT/hooks/<datastore>`: the repository's hook, its `backup` stream
/// read and its `restore` stream fed with a 3 s pause after the first
/// 64 KiB, so that each action lasts longer than `hooks.timeout = "2s"`
/// however fast the machine. Behind the pause the real tools block on a
/// full pipe, as they do behind a slow Swift; the real hook still bounds
/// them by the `VOLSNAP_TIMEOUT` it is given, as in production.
fn slowed_hooks(parent: &Path, datastore: &str) -> PathBuf {
    let body = format!(
        r#"#!/bin/sh
set -eu
real={real}
pause() {{ head -c 65536; sleep 3; cat; }}
case "$1" in
backup)
    status=$(mktemp)
    {{ if "$real" backup; then echo 0 >"$status"; else echo $? >"$status"; fi; }} | pause
    rc=$(cat "$status")
    rm -f "$status"
    exit "$rc"
    ;;
restore) pause | "$real" restore ;;
*) exec "$real" "$1" ;;
esac
"#,
        real = q(&repo().join("hooks").join(datastore))
    );
    hooks_dir(parent, &[(datastore, &body)])
}

/// Row for row; on a difference, the first differing row, not megabytes.
fn assert_same_rows(what: &str, got: &str, want: &str) {
    let (got, want): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: row {i} differs: restored {:?}, backed up {:?} ({} rows restored, {} backed up)",
            got.get(i),
            want.get(i),
            got.len(),
            want.len()
        );
    }
}

/// A PostgreSQL backup and restore each lasting longer than `hooks.timeout`
/// (2 s here; a real database takes minutes to hours): both are bounded by
/// `hooks.stream_timeout`, in volsnap and in the hook (pg_basebackup runs
/// under `timeout "$VOLSNAP_TIMEOUT"`, which was hooks.timeout). 100,000
/// rows in 1 MiB segments, several of them; the restore gives back every
/// row as it was.
#[test]
fn postgresql_stream_longer_than_hooks_timeout_round_trips() {
    let rig = Rig::new("pg-long");
    let db = Server::start("postgres.sh", &rig.path().join("db"));
    psql(
        &db,
        "CREATE TABLE r (k int PRIMARY KEY, v text);
         INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
    );
    let query = "SELECT k, v FROM r ORDER BY k";
    let before = psql(&db, query);
    assert_eq!(before.lines().count(), 100_000);
    let mut conf = Conf::new("postgresql", &slowed_hooks(rig.path(), "postgresql"))
        .env("VOLSNAP_PG_HOST", db.get("PG_HOST"))
        .env("VOLSNAP_PG_PORT", db.get("PG_PORT"))
        .env("VOLSNAP_PG_DATADIR", db.get("PG_DATADIR"))
        .env("VOLSNAP_PG_BINDIR", db.get("PG_BINDIR"))
        .env("VOLSNAP_PG_STOP_CMD", db.command("stop"))
        .env("VOLSNAP_PG_START_CMD", db.command("start"));
    conf.hook_timeout = "2s";
    let config = rig.config("pg", &conf);
    round_trip_longer_than_hooks_timeout(
        &rig,
        "postgresql",
        &config,
        || {
            psql(
                &db,
                "TRUNCATE r; INSERT INTO r VALUES (1, 'after the backup')",
            );
        },
        || psql(&db, query),
        &before,
    );
}

/// A backup and a restore each longer than the config's `hooks.timeout`
/// (2 s; the hooks' streams are slowed), over several segments: `change`
/// runs between them, and `rows` must read as `before` after the restore.
fn round_trip_longer_than_hooks_timeout(
    rig: &Rig,
    what: &str,
    config: &Path,
    change: impl FnOnce(),
    rows: impl Fn() -> String,
    before: &str,
) {
    let report = rig.backup(config);
    eprintln!(
        "{what}: backup {} ms, {} segments, {} bytes stored",
        report["total_ms"], report["segments"], report["stored_size"]
    );
    assert!(report["total_ms"].as_u64().unwrap() > 3000, "{report}");
    assert!(report["segments"].as_u64().unwrap() >= 3, "{report}");
    change();
    let started = std::time::Instant::now();
    rig.ok(config, &["restore", "--latest"]);
    eprintln!("{what}: restore {} ms", started.elapsed().as_millis());
    assert!(started.elapsed() > Duration::from_secs(3));
    assert_same_rows(what, &rows(), before);
}

/// The same for MariaDB through mariadb-backup's xbstream: a backup and a
/// restore (extract, --prepare, swap, start) each longer than
/// `hooks.timeout`, several segments, every row back as it was.
#[test]
fn mariadb_stream_longer_than_hooks_timeout_round_trips() {
    let rig = Rig::new("mariadb-long");
    let db = Server::start("mariadb.sh", &rig.path().join("db"));
    mariadb_sql(
        &db,
        "CREATE DATABASE d; CREATE TABLE d.r (k INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB;
         USE d; INSERT INTO d.r SELECT seq, md5(seq) FROM seq_1_to_100000",
    );
    let query = "SELECT k, v FROM d.r ORDER BY k";
    let before = mariadb_sql(&db, query);
    assert_eq!(before.lines().count(), 100_000);
    let mut conf = Conf::new("mysql", &slowed_hooks(rig.path(), "mysql"))
        .env("VOLSNAP_MYSQL_DEFAULTS_FILE", db.get("MYSQL_DEFAULTS_FILE"))
        .env("VOLSNAP_MYSQL_DATADIR", db.get("MYSQL_DATADIR"))
        .env("VOLSNAP_MYSQL_STOP_CMD", db.command("stop"))
        .env("VOLSNAP_MYSQL_START_CMD", db.command("start"));
    conf.hook_timeout = "2s";
    let config = rig.config("mysql", &conf);
    round_trip_longer_than_hooks_timeout(
        &rig,
        "mariadb",
        &config,
        || {
            mariadb_sql(
                &db,
                "DELETE FROM d.r WHERE k % 7 = 0; UPDATE d.r SET v = 'changed' WHERE k < 100",
            );
        },
        || mariadb_sql(&db, query),
        &before,
    );
}

/// Redis (`redis-cli --rdb`) and `none` (a tar of the mounts): a backup and
/// a restore each longer than `hooks.timeout`, the data back as it was.
#[test]
fn redis_and_none_streams_longer_than_hooks_timeout_round_trip() {
    let rig = Rig::new("redis-none-long");
    let redis = Server::start("redis.sh", &rig.path().join("redis"));
    for i in 0..3 {
        redis_set(&redis, &format!("blob{i}"), &random_bytes(700_000, 300 + i));
    }
    let before = redis_digest(&redis);
    let mut conf = redis_env(
        Conf::new("redis", &slowed_hooks(&rig.path().join("r"), "redis")),
        &redis,
    );
    conf.hook_timeout = "2s";
    let config = rig.config("redis", &conf);
    let report = rig.backup(&config);
    assert!(report["total_ms"].as_u64().unwrap() > 3000, "{report}");
    redis_cli(&redis, &["FLUSHALL"]);
    let started = std::time::Instant::now();
    rig.ok(&config, &["restore", "--latest"]);
    assert!(started.elapsed() > Duration::from_secs(3));
    assert_eq!(redis_digest(&redis), before);

    let src = rig.path().join("src");
    make_tree(&src);
    let restored = rig.path().join("restored");
    let mut conf = Conf::new("none", &slowed_hooks(&rig.path().join("n"), "none"))
        .env("VOLSNAP_RESTORE_DIR", restored.display().to_string());
    conf.mounts = vec![src.clone()];
    conf.hook_timeout = "2s";
    let config = rig.config("none", &conf);
    let report = rig.backup(&config);
    assert!(report["total_ms"].as_u64().unwrap() > 3000, "{report}");
    let started = std::time::Instant::now();
    rig.ok(&config, &["restore", "--latest"]);
    assert!(started.elapsed() > Duration::from_secs(3));
    let rel = src.strip_prefix("/").unwrap();
    assert_eq!(tree_listing(&restored.join(rel)), tree_listing(&src));
}
