//! End to end with real databases: MariaDB, PostgreSQL and Redis with their
//! data on a Cinder volume of the loopback cloud (tests/cloud), the real
//! hooks of `hooks/`, `volsnap backup` while a writer commits one row per
//! transaction, `volsnap restore` into a new volume, and a second server on
//! the restored copy. Plus the lock through volsnap, SIGKILL mid-freeze, and
//! volsnap as qemu-ga's fsfreeze hook.
//!
//! Layout of every server: the data directory on the volume, everything
//! else (socket, pid file, log, client defaults file) in a temporary
//! directory on `/`, as a Debian server has it (/var/lib/mysql on the volume,
//! /run/mysqld and the log elsewhere). The tests' own records (the writer's
//! acknowledgements) are kept in memory.
//!
//! What "before the freeze" means, and the bounds used. A writer sends one
//! INSERT (autocommit) at a time and counts an id as acknowledged only once
//! the client printed the marker that the server runs after the INSERT
//! returned. `started` is taken before volsnap is spawned, `exited` after it
//! was reaped. The hook's quiesce (and the freeze, and the snapshot) all
//! happen between the two, so, soundly, with the copy's ids checked to be
//! exactly 1..=max (no holes):
//!   * every id acknowledged before `started` is in the snapshot;
//!   * no id whose INSERT was sent after `exited` is in it.
//!
//! Ids acknowledged between the two may go either way; the test prints how
//! many there were. For MariaDB the boundary is pinned exactly by another
//! route: the copy's rows are exactly the INSERTs of the binary log up to the
//! position the hook read under its lock, and the GTID it read is the
//! copy's row count plus the statements before the writer.
//!
//! Every test cleans up when it fails: the guards thaw, stop the servers (by
//! their pid files, through tests/db/*.sh stop), stop qemu-ga, unmount,
//! detach and delete the volumes.

#[path = "support/cloud.rs"]
mod cloud;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud::{cinder_config, Cloud, DataVolume};
use support::{run, LoopFs};
use volsnap::freeze;

// ------------------------------------------------------------------ basics

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's own hooks (or `$VOLSNAP_HOOKS_DIR`, as in
/// tests/hooks), as volsnap will check them: root-owned and not writable by
/// group or others (a checkout made with umask 002 is not).
fn repo_hooks() -> PathBuf {
    let dir = std::env::var_os("VOLSNAP_HOOKS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("hooks"));
    for path in [
        dir.clone(),
        dir.join("mysql"),
        dir.join("postgresql"),
        dir.join("redis"),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert!(
            meta.uid() == 0 && meta.mode() & 0o022 == 0,
            "{} must be root-owned and not group/other-writable for volsnap to run it \
             (mode {:o}, uid {}): chmod go-w hooks hooks/*",
            path.display(),
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
    dir
}

fn volsnap(cloud: &Cloud, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volsnap"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("VOLSNAP_CONFIG")
        .envs(cloud.os_vars());
    cmd
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn output(cmd: &mut Command) -> Ran {
    let out = cmd.output().unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A database client's answer: its stdout, or its stderr when it failed
/// (both trimmed).
fn answer(cmd: &mut Command) -> Result<String, String> {
    let ran = output(cmd);
    if ran.code == Some(0) {
        Ok(ran.stdout.trim().to_string())
    } else {
        Err(ran.stderr.trim().to_string())
    }
}

/// A port nobody listens on right now (the kernel's choice).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lets the `postgres` user through a directory that tempfile made 0700.
fn let_through(dir: &Path) {
    let mode = std::fs::metadata(dir).unwrap().mode() & 0o7777;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011)).unwrap();
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A volsnap run in the background. If the test fails while it runs, Drop
/// kills it (SIGKILL: its watchdog thaws and runs the hook's thaw) and reaps
/// it, before the server and the volume are taken down.
struct Background(Child);

impl std::ops::Deref for Background {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Background {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("volsnap did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until the run has POSTed a snapshot: it is frozen then.
fn wait_for_snapshot(volume: &DataVolume, limit: Duration) {
    wait_until("the run's snapshot", limit, || {
        !volume.snapshots().is_empty()
    });
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ----------------------------------------------------------------- servers

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    MariaDb,
    Postgres,
    Redis,
}

impl Kind {
    fn script(self) -> PathBuf {
        let name = match self {
            Kind::MariaDb => "mariadb.sh",
            Kind::Postgres => "postgres.sh",
            Kind::Redis => "redis.sh",
        };
        repo().join("tests/db").join(name)
    }

    fn port_var(self) -> &'static str {
        match self {
            Kind::MariaDb => "MARIADB_PORT",
            Kind::Postgres => "PG_PORT",
            Kind::Redis => "REDIS_PORT",
        }
    }
}

/// A server started by tests/db/<kind>.sh: data directory `data` (on a
/// volume), socket/pid/log in a temporary directory on `/`. Drop thaws the
/// volume (a server cannot shut down cleanly on a frozen filesystem) and
/// stops the server by its pid file.
struct Server {
    kind: Kind,
    /// Socket, pid file, log, client.cnf.
    dir: tempfile::TempDir,
    data: PathBuf,
    /// The mountpoint holding `data`.
    mount: PathBuf,
    /// What the script needs at start and stop (data dir, port, options).
    env: Vec<(String, String)>,
    /// What `start` printed: MYSQL_SOCKET=…, PG_HOST=…, REDIS_SOCKET=…
    info: BTreeMap<String, String>,
    running: bool,
}

impl Server {
    fn start(kind: Kind, mount: &Path, data: &Path, extra: &[(&str, &str)]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("volsnap-db-")
            .tempdir()
            .unwrap();
        let mut env = vec![
            ("DB_DATA_DIR".to_string(), data.display().to_string()),
            (kind.port_var().to_string(), free_port().to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut server = Server {
            kind,
            dir,
            data: data.to_path_buf(),
            mount: mount.to_path_buf(),
            env,
            info: BTreeMap::new(),
            running: true, // from here on Drop stops whatever started
        };
        let out = server.script("start");
        assert!(
            out.status.success(),
            "{:?} start failed: {}\n{}",
            kind,
            String::from_utf8_lossy(&out.stderr),
            server.log_tail()
        );
        server.info = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        server
    }

    fn script(&self, action: &str) -> std::process::Output {
        Command::new(self.kind.script())
            .arg(action)
            .arg(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn get(&self, key: &str) -> &str {
        self.info
            .get(key)
            .unwrap_or_else(|| panic!("{key} not in {:?}", self.info))
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let out = self.script("stop");
        assert!(
            out.status.success(),
            "{:?} stop: {}",
            self.kind,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn log_tail(&self) -> String {
        let log = match self.kind {
            Kind::MariaDb => "mysqld.log",
            Kind::Postgres => "postgres.log",
            Kind::Redis => "redis.log",
        };
        let text = std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    // MariaDB

    fn defaults_file(&self) -> String {
        format!("--defaults-file={}", self.get("MYSQL_DEFAULTS_FILE"))
    }

    /// One statement batch in a new session; Err(stderr) when it fails.
    fn sql(&self, sql: &str) -> Result<String, String> {
        answer(
            Command::new("timeout")
                .args(["60", "mariadb", &self.defaults_file()])
                .args(["--batch", "--skip-column-names", "-e", sql]),
        )
    }

    fn sql_ok(&self, sql: &str) -> String {
        self.sql(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.log_tail()))
    }

    /// Whether another session finds the hook's backup lock held. The probe
    /// is a second `BACKUP STAGE START`: it conflicts with the hook's
    /// `BACKUP STAGE START`+`BLOCK_COMMIT` (and with FTWRL) in the metadata
    /// lock system before it touches any file, so it answers 1205 after
    /// `lock_wait_timeout` even while the filesystem is frozen. An INSERT is
    /// not a reliable probe there: it may block on I/O to the frozen
    /// filesystem (extending a tablespace, writing out a page, the binlog
    /// cache) before it ever asks for the commit lock, and then it neither
    /// fails with 1205 nor returns until the thaw.
    ///
    /// Unopposed, `BACKUP STAGE START` itself writes (its DDL log), so on a
    /// frozen filesystem with no lock held it hangs: a probe that neither
    /// gets the lock nor 1205 within 10 s counts as "not held".
    fn backup_lock_held(&self) -> bool {
        let out = Command::new("timeout")
            .args(["10", "mariadb", &self.defaults_file(), "-e"])
            .arg("SET SESSION lock_wait_timeout = 1; BACKUP STAGE START")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => false,
            Some(124) => {
                eprintln!(
                    "lock probe: no answer in 10 s (blocked on the frozen disk, not on a lock)"
                );
                false
            }
            _ if stderr.contains("1205") => true,
            _ => panic!("unexpected answer to the lock probe: {stderr}"),
        }
    }

    // PostgreSQL

    fn psql(&self, sql: &str) -> Result<String, String> {
        answer(
            Command::new("timeout")
                .arg("60")
                .args(self.psql_args())
                .args(["-c", sql]),
        )
    }

    fn psql_ok(&self, sql: &str) -> String {
        self.psql(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.log_tail()))
    }

    fn psql_args(&self) -> Vec<String> {
        [
            "psql",
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-h",
            self.get("PG_HOST"),
            "-p",
            self.get("PG_PORT"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    // Redis

    fn redis(&self) -> Resp {
        Resp::connect(Path::new(self.get("REDIS_SOCKET")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let _ = Command::new("fsfreeze")
            .args(["-u"])
            .arg(&self.mount)
            .stderr(Stdio::null())
            .status();
        self.running = false;
        let out = self.script("stop");
        if !out.status.success() {
            eprintln!(
                "stopping {:?} on {}: {}",
                self.kind,
                self.data.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A minimal RESP client over the unix socket: one connection, one command
/// at a time, each reply read before the next command is sent.
struct Resp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

#[derive(Debug, PartialEq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Resp {
    fn connect(socket: &Path) -> Resp {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Resp {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        self.writer.write_all(&buf)?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        let bad = || std::io::Error::other(format!("bad reply {line:?}"));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.read_reply()?);
                }
                Reply::Array(items)
            }
            _ => return Err(bad()),
        })
    }

    fn int(&mut self, args: &[&str]) -> i64 {
        match self.cmd(args).unwrap() {
            Reply::Int(n) => n,
            other => panic!("{args:?}: {other:?}"),
        }
    }
}

// ------------------------------------------------------------------ writer

#[derive(Clone, Copy, Debug)]
struct Ack {
    id: u64,
    sent: Instant,
    acked: Instant,
}

/// Commits ids 1, 2, 3, … one at a time on its own thread, through `step`
/// (which returns once the datastore confirmed id), recording when each was
/// sent and acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The client process, killed if the thread does not end by itself.
    client_pid: Option<u32>,
}

impl Writer {
    fn start(
        client_pid: Option<u32>,
        mut step: impl FnMut(u64) -> Result<(), String> + Send + 'static,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let failure = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, acks, failure) = (stop.clone(), acks.clone(), failure.clone());
            std::thread::spawn(move || {
                let mut id = 1;
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    if let Err(e) = step(id) {
                        *failure.lock().unwrap() = Some(format!("id {id}: {e}"));
                        return;
                    }
                    let acked = Instant::now();
                    acks.lock().unwrap().push(Ack { id, sent, acked });
                    id += 1;
                }
            })
        };
        Writer {
            stop,
            acks,
            failure,
            thread: Some(thread),
            client_pid,
        }
    }

    /// A client process reading statements on stdin and printing `ack N`
    /// once statement batch N is done; `statement(N)` must end with the
    /// query that prints that marker.
    fn process(mut cmd: Command, statement: impl Fn(u64) -> String + Send + 'static) -> Writer {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut client = Client::new(child);
        Writer::start(Some(pid), move |id| {
            let stdin = client.stdin.as_mut().expect("open until the end");
            writeln!(stdin, "{}", statement(id)).map_err(|e| e.to_string())?;
            stdin.flush().map_err(|e| e.to_string())?;
            let want = format!("ack {id}");
            loop {
                let mut line = String::new();
                match client.stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => return Err(client.stderr()),
                    Ok(_) if line.trim() == want => return Ok(()),
                    Ok(_) => {}
                }
            }
        })
    }

    fn mariadb(server: &Server) -> Writer {
        let mut cmd = Command::new("mariadb");
        cmd.arg(server.defaults_file()).args([
            "--batch",
            "--skip-column-names",
            "--unbuffered",
            "--connect-timeout=10",
        ]);
        Writer::process(cmd, |id| {
            format!("INSERT INTO d.t (id) VALUES ({id}); SELECT 'ack {id}';")
        })
    }

    fn postgres(server: &Server) -> Writer {
        let args = server.psql_args();
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]);
        Writer::process(cmd, |id| {
            format!("INSERT INTO t (id) VALUES ({id}); SELECT 'ack {id}';")
        })
    }

    fn redis(server: &Server) -> Writer {
        let mut conn = server.redis();
        Writer::start(None, move |id| {
            let (key, value) = (format!("k:{id}"), id.to_string());
            match conn.cmd(&["SET", &key, &value]) {
                Ok(Reply::Status(s)) if s == "OK" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    }

    fn count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    fn check(&self) {
        if let Some(e) = self.failure.lock().unwrap().as_ref() {
            panic!("the writer failed: {e}");
        }
    }

    /// Waits until `n` more ids are acknowledged (and `min` has passed).
    fn wait_for(&self, n: usize, min: Duration) {
        let target = self.count() + n;
        let start = Instant::now();
        while self.count() < target || start.elapsed() < min {
            self.check();
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the writer is stuck at {} acknowledgements",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops after the id in flight; returns every acknowledgement.
    fn finish(mut self) -> Vec<Ack> {
        self.end(Duration::from_secs(30));
        self.check();
        let acks = self.acks.lock().unwrap().clone();
        acks
    }

    /// Stops, waiting `grace` for the id in flight before killing the client.
    fn end(&mut self, grace: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !thread.is_finished() && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !thread.is_finished() {
            if let Some(pid) = self.client_pid {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = thread.join();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A failed test: its id in flight may be stuck behind a frozen disk.
        self.end(Duration::from_secs(1));
    }
}

/// A client process; Drop closes its stdin and kills it if need be.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn new(mut child: Child) -> Client {
        Client {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    fn stderr(&mut self) -> String {
        let _ = self.child.kill();
        let mut text = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut text);
        }
        format!("the client ended: {}", text.trim())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // EOF first: the client ends its session cleanly.
        drop(self.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ backup steps

/// One `volsnap --json backup` while the writer runs, with the instants
/// taken around the process.
struct Backup {
    report: serde_json::Value,
    stderr: String,
    started: Instant,
    exited: Instant,
    snapshot_id: String,
    metadata: BTreeMap<String, String>,
}

fn backup_while_writing(cloud: &Cloud, config: &Path, writer: &Writer) -> Backup {
    writer.wait_for(100, Duration::from_millis(500));
    let knobs = cloud.knobs(); // no delay, no failure injected by another test
    let started = Instant::now();
    let ran = output(&mut volsnap(cloud, config, &["--json", "backup"]));
    let exited = Instant::now();
    drop(knobs);
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    // The writer goes on after the thaw: some ids must be sent after `exited`.
    writer.wait_for(100, Duration::from_millis(300));
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(report["consistency"], "application", "{report}");
    let snapshot_id = report["snapshots"][0]["id"].as_str().unwrap().to_string();
    let metadata = cloud.cinder().snapshot(&snapshot_id).unwrap().metadata;
    Backup {
        report,
        stderr: ran.stderr,
        started,
        exited,
        snapshot_id,
        metadata,
    }
}

/// `volsnap restore --snapshot` → a new volume, attached but not mounted;
/// its ext4 as the snapshot left it must be clean *without* journal
/// recovery (an unfrozen snapshot carries `needs_recovery`); then mounted.
fn restore_and_check_ext4(cloud: &Cloud, config: &Path, snapshot_id: &str) -> DataVolume {
    let ran = output(&mut volsnap(
        cloud,
        config,
        &["--json", "restore", "--snapshot", snapshot_id],
    ));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let restored: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(restored["snapshot_id"], snapshot_id);
    let mut volume = DataVolume::existing_unmounted(cloud, restored["volume_id"].as_str().unwrap());
    let header = String::from_utf8(run("dumpe2fs", &["-h", &volume.device]).stdout).unwrap();
    let features = header
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_default();
    assert!(
        !features.contains("needs_recovery"),
        "the restored ext4 needs journal recovery: it was not frozen ({features})"
    );
    run("e2fsck", &["-fn", &volume.device]);
    volume.mount();
    volume
}

/// The sound bounds of the module comment, on a copy holding exactly the
/// ids 1..=max.
fn check_bounds(what: &str, acks: &[Ack], backup: &Backup, max: u64) {
    let last_before = acks
        .iter()
        .filter(|a| a.acked < backup.started)
        .map(|a| a.id)
        .max()
        .unwrap_or(0);
    let first_after = acks
        .iter()
        .find(|a| a.sent > backup.exited)
        .map(|a| a.id)
        .unwrap_or_else(|| panic!("{what}: no id was sent after volsnap exited"));
    // The longest wait for one acknowledgement during the run, for the record.
    let stall = acks
        .iter()
        .filter(|a| a.acked >= backup.started && a.sent <= backup.exited)
        .max_by_key(|a| a.acked - a.sent);
    let stall_text = stall.map_or("none".into(), |a| {
        format!("id {} waited {} ms", a.id, ms(a.acked - a.sent))
    });
    eprintln!(
        "{what}: copy holds 1..={max}; acknowledged before volsnap started: 1..={last_before}; \
         sent after it exited: {first_after}..; undecided by timing: {} ids; longest wait {stall_text}; \
         volsnap freeze {} ms, lock {} ms, total {} ms",
        first_after - last_before - 1,
        backup.report["freeze_ms"],
        backup.report["lock_ms"],
        backup.report["total_ms"]
    );
    eprintln!("{what}: volsnap said:\n{}", backup.stderr.trim_end());
    assert!(last_before > 0, "{what}: the writer had not started");
    assert!(
        max >= last_before,
        "{what}: ids up to {last_before} were acknowledged before volsnap started, the copy ends at {max}"
    );
    assert!(
        max < first_after,
        "{what}: id {first_after} was sent after volsnap exited, the copy holds up to {max}"
    );
}

fn metadata_has(backup: &Backup, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        assert_eq!(
            backup.metadata.get(*k).map(String::as_str),
            Some(*v),
            "{k}: {:?}",
            backup.metadata
        );
    }
}

fn hooks_env(pairs: &[(&str, &str)]) -> String {
    let mut text = String::from("[hooks.env]\n");
    for (k, v) in pairs {
        text.push_str(&format!("{k} = {v:?}\n"));
    }
    text
}

// ----------------------------------------------------------------- MariaDB

fn mariadb_on(volume: &DataVolume) -> Server {
    let server = Server::start(
        Kind::MariaDb,
        volume.path(),
        &volume.path().join("mysql"),
        &[],
    );
    server.sql_ok("CREATE DATABASE d; CREATE TABLE d.t (id BIGINT PRIMARY KEY) ENGINE=InnoDB");
    server
}

fn mariadb_config(tmp: &Path, volume: &DataVolume, server: &Server) -> PathBuf {
    cinder_config(
        tmp,
        &[volume],
        &repo_hooks(),
        "mysql",
        &hooks_env(&[(
            "VOLSNAP_MYSQL_DEFAULTS_FILE",
            server.get("MYSQL_DEFAULTS_FILE"),
        )]),
    )
}

/// The INSERT ids of a binary log, in order (`mariadb-binlog ARGS FILE`).
fn binlog_inserts(file: &Path, args: &[&str]) -> Vec<u64> {
    let out = Command::new("mariadb-binlog")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mariadb-binlog {args:?} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("INSERT INTO d.t (id) VALUES ("))
        .map(|rest| rest.trim_end_matches(')').parse().unwrap())
        .collect()
}

fn gtid_seq(gtid: &str) -> u64 {
    gtid.rsplit('-').next().unwrap().parse().unwrap()
}

#[test]
fn mariadb_snapshot_holds_every_acknowledged_row_up_to_the_binlog_position() {
    let cloud = Cloud::load();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let server = mariadb_on(&volume);
    let config = mariadb_config(tmp.path(), &volume, &server);
    let gtid_base = gtid_seq(&server.sql_ok("SELECT @@global.gtid_binlog_pos"));

    let writer = Writer::mariadb(&server);
    let backup = backup_while_writing(&cloud, &config, &writer);
    let status_after = server.sql_ok("SHOW MASTER STATUS");
    let acks = writer.finish();

    let version = server.sql_ok("SELECT VERSION()");
    metadata_has(
        &backup,
        &[
            ("datastore", "mysql"),
            ("consistency", "application"),
            ("lock", "backup_stage"),
            ("datastore_version", version.split('-').next().unwrap()),
        ],
    );
    let meta = &backup.metadata;
    for key in ["binlog_file", "binlog_pos", "gtid"] {
        assert_eq!(
            backup.report["metadata"][key].as_str(),
            meta.get(key).map(String::as_str),
            "the report and the snapshot disagree on {key}"
        );
    }
    let binlog_file = meta["binlog_file"].clone();
    let binlog_pos: u64 = meta["binlog_pos"].parse().unwrap();
    // The original went on writing after the thaw, from that position on.
    let mut cols = status_after.split('\t');
    assert_eq!(cols.next(), Some(binlog_file.as_str()), "{status_after}");
    let pos_after: u64 = cols.next().unwrap().parse().unwrap();
    assert!(pos_after >= binlog_pos, "{status_after} < {binlog_pos}");

    let restored = restore_and_check_ext4(&cloud, &config, &backup.snapshot_id);
    let copy_data = restored.path().join("mysql");
    // Read before the copy starts: the binary log as the snapshot holds it.
    // Under BLOCK_COMMIT nothing was binlogged after the hook read the
    // position, so the snapshot's binlog ends exactly there.
    let copy_binlog = copy_data.join(&binlog_file);
    let size = std::fs::metadata(&copy_binlog).unwrap().len();
    assert_eq!(
        size, binlog_pos,
        "the snapshot's {binlog_file} does not end at the position read under the lock"
    );
    let logged = binlog_inserts(&copy_binlog, &[]);
    let after_pos = binlog_inserts(
        &volume.path().join("mysql").join(&binlog_file),
        &[&format!("--start-position={binlog_pos}")],
    );

    // Without the original's binary log: a transaction left "prepared" in the
    // snapshot would stop this server from starting.
    let copy = Server::start(
        Kind::MariaDb,
        restored.path(),
        &copy_data,
        &[("MARIADB_LOG_BIN", "off")],
    );
    let row = copy.sql_ok("SELECT COUNT(*), IFNULL(MIN(id), 0), IFNULL(MAX(id), 0) FROM d.t");
    let n: Vec<u64> = row.split('\t').map(|v| v.parse().unwrap()).collect();
    let (count, min, max) = (n[0], n[1], n[2]);
    assert!(
        count == max && (max == 0 || min == 1),
        "ids in the copy are not 1..=max: count {count}, min {min}, max {max}"
    );
    check_bounds("mariadb", &acks, &backup, max);
    let check = copy.sql_ok("CHECK TABLE d.t EXTENDED");
    assert!(check.ends_with("status\tOK"), "{check}");

    // The data is exactly the binary log up to the recorded position: a
    // replica built from this snapshot starts at binlog_file:binlog_pos.
    assert_eq!(
        logged,
        (1..=max).collect::<Vec<u64>>(),
        "the copy's binlog up to {binlog_pos} is not the copy's rows"
    );
    assert_eq!(
        after_pos.first(),
        Some(&(max + 1)),
        "the original's first INSERT after {binlog_file}:{binlog_pos} is not the copy's max + 1"
    );
    assert_eq!(
        gtid_seq(&meta["gtid"]),
        gtid_base + max,
        "gtid {} is not the {} statements before the writer plus the copy's {max} rows",
        meta["gtid"],
        gtid_base
    );
}

#[test]
fn mariadb_lock_is_held_through_the_freeze_and_released_after() {
    let cloud = Cloud::load();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let server = mariadb_on(&volume);
    let config = mariadb_config(tmp.path(), &volume, &server);
    assert!(!server.backup_lock_held(), "locked before the backup");

    let knobs = cloud.knobs();
    knobs.delay(5.0);
    let mut child = Background(
        volsnap(&cloud, &config, &["--json", "backup"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for_snapshot(&volume, Duration::from_secs(30));
    // Frozen now, and for ~5 s: the snapshot stays `creating`.
    assert!(freeze::is_frozen(volume.path()).unwrap());
    assert!(
        server.backup_lock_held(),
        "another session could take the backup lock while volsnap had the volume frozen"
    );
    // An INSERT cannot commit either while frozen: it fails with 1205 after
    // its 1 s lock_wait_timeout, or it waits on the frozen disk before it
    // gets to the lock; either way no commit until the thaw.
    let insert = std::thread::spawn({
        let defaults = server.defaults_file();
        move || {
            let out = Command::new("timeout")
                .args(["60", "mariadb", &defaults, "-e"])
                .arg("SET SESSION lock_wait_timeout = 1; INSERT INTO d.t VALUES (-1)")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                Instant::now(),
            )
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let done_while_frozen = insert.is_finished();
    // Still frozen after that look, so the look was inside the window.
    assert!(
        freeze::is_frozen(volume.path()).unwrap(),
        "the frozen window ended before the INSERT probe was done: raise the delay"
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let exited = Instant::now();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    drop(knobs);
    let (inserted, why, ended) = insert.join().unwrap();
    assert!(
        !(inserted && done_while_frozen),
        "an INSERT committed while volsnap held the database frozen"
    );
    assert!(
        inserted || why.contains("1205"),
        "the INSERT failed otherwise: {why}"
    );
    eprintln!(
        "INSERT sent while frozen: {}",
        if inserted {
            format!(
                "waited, committed {} ms before volsnap exited (after the thaw)",
                ms(exited.saturating_duration_since(ended))
            )
        } else {
            format!("failed: {}", why.lines().last().unwrap_or_default().trim())
        }
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let lock_ms = report["lock_ms"].as_u64().unwrap();
    assert!(lock_ms >= 5000, "lock {lock_ms} ms with a 5 s snapshot");

    // Released: the write goes through at once, and no holder is left.
    server.sql_ok("SET SESSION lock_wait_timeout = 1; INSERT INTO d.t VALUES (1)");
    assert!(!server.backup_lock_held());
    assert!(!freeze::is_frozen(volume.path()).unwrap());
    assert!(!tmp.path().join("run/mysql.client.pid").exists());
}

#[test]
fn mariadb_sigkill_mid_freeze_the_watchdog_releases_the_database_within_2s() {
    let cloud = Cloud::load();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let server = mariadb_on(&volume);
    let config = mariadb_config(tmp.path(), &volume, &server);

    let knobs = cloud.knobs();
    knobs.delay(6.0);
    let mut child = Background(
        volsnap(&cloud, &config, &["backup"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_snapshot(&volume, Duration::from_secs(30));
    assert!(freeze::is_frozen(volume.path()).unwrap());
    assert!(server.backup_lock_held(), "the hook's lock is not held");
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    // One INSERT, sent at once: it waits (disk, then lock) and commits as
    // soon as the watchdog has thawed and run the hook's thaw.
    let out = Command::new("timeout")
        .args(["30", "mariadb", &server.defaults_file(), "-e"])
        .arg("SET SESSION lock_wait_timeout = 20; INSERT INTO d.t VALUES (1)")
        .output()
        .unwrap();
    let released = killed.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        released < Duration::from_secs(2),
        "the INSERT committed {released:?} after the SIGKILL"
    );
    assert!(!freeze::is_frozen(volume.path()).unwrap());
    let log = tmp.path().join("run/watchdog.log");
    wait_until("the watchdog's log", Duration::from_secs(10), || {
        log.exists()
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("volsnap exited without thawing") && text.contains("hook thaw ran"),
        "{text}"
    );
    assert!(!server.backup_lock_held());
    assert!(!tmp.path().join("run/mysql.client.pid").exists());
    eprintln!("INSERT committed {} ms after the SIGKILL", ms(released));

    // Cinder finishes the copy after the thaw: a torn image, never labelled
    // good. The next backup removes it and its own snapshot is the one good.
    knobs.clear();
    let cinder = cloud.cinder();
    let torn = volume.snapshots();
    assert_eq!(torn.len(), 1);
    cinder
        .wait_snapshot(
            &torn[0].id,
            volsnap::openstack::cinder::Target::Status("available"),
            Instant::now() + Duration::from_secs(30),
        )
        .unwrap();
    let torn = cinder.snapshot(&torn[0].id).unwrap();
    assert_eq!(
        torn.metadata["consistency"], "pending",
        "{:?}",
        torn.metadata
    );
    assert!(!torn.metadata.contains_key("freeze_ms"));
    let ran = output(&mut volsnap(&cloud, &config, &["--json", "backup"]));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(report["removed_leftovers"], serde_json::json!([torn.id]));
    let after = volume.snapshots();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].metadata["consistency"], "application");
    assert!(
        after[0].metadata.contains_key("binlog_pos"),
        "{:?}",
        after[0].metadata
    );
    drop(knobs);
}

// -------------------------------------------------------------- PostgreSQL

#[test]
fn postgresql_snapshot_holds_every_acknowledged_row_and_passes_amcheck() {
    let cloud = Cloud::load();
    let volume = DataVolume::new(&cloud, "ext4");
    let_through(volume.path().parent().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        Kind::Postgres,
        volume.path(),
        &volume.path().join("pgdata"),
        &[],
    );
    server.psql_ok("CREATE TABLE t (id BIGINT PRIMARY KEY)");
    let config = cinder_config(
        tmp.path(),
        &[&volume],
        &repo_hooks(),
        "postgresql",
        &hooks_env(&[
            ("VOLSNAP_PG_HOST", server.get("PG_HOST")),
            ("VOLSNAP_PG_PORT", server.get("PG_PORT")),
        ]),
    );

    let writer = Writer::postgres(&server);
    let backup = backup_while_writing(&cloud, &config, &writer);
    let acks = writer.finish();
    let version = server.psql_ok("SHOW server_version");
    metadata_has(
        &backup,
        &[
            ("datastore", "postgresql"),
            ("consistency", "application"),
            ("datastore_version", version.split(' ').next().unwrap()),
        ],
    );
    let wal_lsn = backup.metadata["wal_lsn"].clone();
    assert!(wal_lsn.contains('/'), "wal_lsn {wal_lsn}");

    let restored = restore_and_check_ext4(&cloud, &config, &backup.snapshot_id);
    let_through(restored.path().parent().unwrap());
    let copy_data = restored.path().join("pgdata");
    // The snapshot carries the live server's pid file (and that pid is alive).
    std::fs::remove_file(copy_data.join("postmaster.pid")).unwrap();
    let copy = Server::start(Kind::Postgres, restored.path(), &copy_data, &[]);
    let row = copy.psql_ok("SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM t");
    let n: Vec<u64> = row.split('|').map(|v| v.parse().unwrap()).collect();
    let (count, min, max) = (n[0], n[1], n[2]);
    assert!(
        count == max && (max == 0 || min == 1),
        "ids in the copy are not 1..=max: count {count}, min {min}, max {max}"
    );
    check_bounds("postgresql", &acks, &backup, max);
    // The copy's WAL reaches at least the position the hook recorded after
    // its CHECKPOINT: the snapshot is not older than the hook's freeze.
    assert_eq!(
        copy.psql_ok(&format!(
            "SELECT pg_current_wal_lsn() >= '{wal_lsn}'::pg_lsn"
        )),
        "t"
    );
    copy.psql_ok("CREATE EXTENSION amcheck");
    copy.psql_ok("SELECT bt_index_check('t_pkey'::regclass, true)");
    copy.psql_ok("SELECT bt_index_parent_check('t_pkey'::regclass, true)");
    let corrupt = copy.psql_ok("SELECT count(*) FROM verify_heapam('t')");
    assert_eq!(corrupt, "0", "verify_heapam found corruption");
}

// ------------------------------------------------------------------- Redis

#[test]
fn redis_snapshot_rdb_holds_every_key_written_before_the_freeze() {
    let cloud = Cloud::load();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        Kind::Redis,
        volume.path(),
        &volume.path().join("redis"),
        &[],
    );
    let config = cinder_config(
        tmp.path(),
        &[&volume],
        &repo_hooks(),
        "redis",
        &hooks_env(&[(
            "VOLSNAP_REDIS_CLI_ARGS",
            &format!("-s {}", server.get("REDIS_SOCKET")),
        )]),
    );
    let saves_before = info_field(&mut server.redis(), "rdb_saves");

    let writer = Writer::redis(&server);
    let backup = backup_while_writing(&cloud, &config, &writer);
    let acks = writer.finish();
    metadata_has(
        &backup,
        &[("datastore", "redis"), ("consistency", "application")],
    );
    let version = info_field(&mut server.redis(), "redis_version");
    assert_eq!(backup.metadata["datastore_version"], version);
    let last_save: i64 = backup.metadata["rdb_last_save"].parse().unwrap();
    let saves_after = info_field(&mut server.redis(), "rdb_saves");

    let restored = restore_and_check_ext4(&cloud, &config, &backup.snapshot_id);
    let copy = Server::start(
        Kind::Redis,
        restored.path(),
        &restored.path().join("redis"),
        &[],
    );
    let mut conn = copy.redis();
    let keys = conn.int(&["DBSIZE"]) as u64;
    // Gapless: k:1..=k:keys all exist (and nothing else does).
    let mut id = 1;
    while id <= keys {
        let last = (id + 999).min(keys);
        let names: Vec<String> = (id..=last).map(|i| format!("k:{i}")).collect();
        let mut args = vec!["EXISTS"];
        args.extend(names.iter().map(String::as_str));
        let found = conn.int(&args) as u64;
        assert_eq!(found, last - id + 1, "keys missing among k:{id}..k:{last}");
        id = last + 1;
    }
    match conn.cmd(&["GET", &format!("k:{keys}")]).unwrap() {
        Reply::Bulk(Some(v)) => assert_eq!(v, keys.to_string().into_bytes()),
        other => panic!("{other:?}"),
    }
    check_bounds("redis", &acks, &backup, keys);
    assert!(last_save > 0);
    assert!(
        saves_after.parse::<u64>().unwrap() > saves_before.parse::<u64>().unwrap(),
        "the hook did not save"
    );
}

fn info_field(conn: &mut Resp, name: &str) -> String {
    let text = match conn.cmd(&["INFO"]).unwrap() {
        Reply::Bulk(Some(v)) => String::from_utf8(v).unwrap(),
        other => panic!("{other:?}"),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in INFO"))
        .trim()
        .to_string()
}

// ----------------------------------------------------------------- qemu-ga

/// qemu-ga on a unix socket with volsnap as its fsfreeze hook. Drop thaws
/// (qemu-ga ignores SIGTERM while frozen), kills it, and releases the
/// database through `volsnap hook thaw`.
struct Agent {
    child: Child,
    socket: PathBuf,
    mount: PathBuf,
    config: PathBuf,
}

impl Agent {
    fn start(dir: &Path, hook: &Path, config: &Path, mount: &Path) -> Agent {
        let socket = dir.join("qga.sock");
        let state = dir.join("qga-state");
        std::fs::create_dir_all(&state).unwrap();
        let child = Command::new("qemu-ga")
            .args(["-m", "unix-listen", "-p"])
            .arg(&socket)
            .arg(format!("-F{}", hook.display()))
            .arg("-t")
            .arg(&state)
            .arg("-l")
            .arg(dir.join("qga.log"))
            .arg("-v")
            // The hook (volsnap) finds its config in qemu-ga's environment:
            // qemu-ga passes its own environment to the hook.
            .env("VOLSNAP_CONFIG", config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent {
            child,
            socket,
            mount: mount.to_path_buf(),
            config: config.to_path_buf(),
        };
        wait_until("qemu-ga's socket", Duration::from_secs(10), || {
            UnixStream::connect(&agent.socket).is_ok()
        });
        agent
    }

    /// One command on a fresh connection; its reply.
    fn call(&self, command: &str, arguments: Option<serde_json::Value>) -> serde_json::Value {
        let mut request = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            request["arguments"] = a;
        }
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(90)))
            .unwrap();
        writeln!(stream, "{request}").unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{command}: {e}: {line:?}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Thaw behind qemu-ga's back (it ignores SIGTERM while frozen, and a
        // hung agent must not hang the cleanup), kill it, then release the
        // database the way its thaw hook would have.
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.mount)
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(env!("CARGO_BIN_EXE_volsnap"))
            .arg("--config")
            .arg(&self.config)
            .args(["hook", "thaw"])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn qemu_ga_with_volsnap_as_fsfreeze_hook_locks_mariadb_while_frozen() {
    // qemu-ga's thaw thaws every frozen filesystem of the machine: the
    // knobs' lock keeps the other tests' backups from running meanwhile.
    let cloud = Cloud::load();
    let _knobs = cloud.knobs();
    let fs = LoopFs::new("ext4", 400);
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(Kind::MariaDb, fs.path(), &fs.path().join("mysql"), &[]);
    server.sql_ok("CREATE DATABASE d; CREATE TABLE d.t (id BIGINT PRIMARY KEY) ENGINE=InnoDB");
    // A config of its own: qemu-ga's hook needs no cloud.
    let config = tmp.path().join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "storage_strategy = \"Cinder\"\ndatastore = \"mysql\"\nmounts = [{:?}]\n\
             runtime_dir = {:?}\nlog_file = {:?}\n{}[hooks]\ndir = {:?}\ntimeout = \"20s\"\n",
            fs.path().display().to_string(),
            tmp.path().join("run").display().to_string(),
            tmp.path().join("volsnap.log").display().to_string(),
            hooks_env(&[(
                "VOLSNAP_MYSQL_DEFAULTS_FILE",
                server.get("MYSQL_DEFAULTS_FILE"),
            )]),
            repo_hooks().display().to_string(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    // qemu-ga runs `-F PATH freeze`; the binary under the name
    // `fsfreeze-hook` is `volsnap hook`.
    let hook = tmp.path().join("fsfreeze-hook");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_volsnap"), &hook).unwrap();
    let agent = Agent::start(tmp.path(), &hook, &config, fs.path());
    let volsnap_log =
        || std::fs::read_to_string(tmp.path().join("volsnap.log")).unwrap_or_default();

    let sync = agent.call("guest-sync", Some(serde_json::json!({ "id": 4242 })));
    assert_eq!(sync["return"], 4242, "{sync}");
    let mounts = serde_json::json!({ "mountpoints": [fs.path()] });
    let started = Instant::now();
    let frozen = agent.call("guest-fsfreeze-freeze-list", Some(mounts.clone()));
    let took = started.elapsed();
    assert_eq!(frozen["return"], 1, "{frozen}\n{}", volsnap_log());
    assert!(
        took < Duration::from_secs(15),
        "freeze-list took {took:?}: qemu-ga waited on the hook's lock holder"
    );
    assert_eq!(
        agent.call("guest-fsfreeze-status", None)["return"],
        "frozen"
    );
    assert!(freeze::is_frozen(fs.path()).unwrap());
    assert!(
        server.backup_lock_held(),
        "the database is not locked while qemu-ga has it frozen\n{}",
        volsnap_log()
    );
    // What the hook read under the lock, recorded by `volsnap hook freeze`.
    let record = std::fs::read_to_string(tmp.path().join("run/fsfreeze-hook.last")).unwrap();
    assert!(
        record.contains("lock=backup_stage") && record.contains("binlog_pos="),
        "{record}"
    );
    assert!(
        volsnap_log().contains("qemu-ga fsfreeze hook: mysql freeze done"),
        "{}",
        volsnap_log()
    );

    let thawed = agent.call("guest-fsfreeze-thaw", None);
    // (More than 1 if something else on the machine was frozen too.)
    assert!(thawed["return"].as_u64() >= Some(1), "{thawed}");
    assert!(!freeze::is_frozen(fs.path()).unwrap());
    server.sql_ok("SET SESSION lock_wait_timeout = 1; INSERT INTO d.t VALUES (1)");
    assert!(!server.backup_lock_held());
    assert!(volsnap_log().contains("qemu-ga fsfreeze hook: mysql thaw done"));
    assert!(!tmp.path().join("run/mysql.client.pid").exists());

    // The datastore cannot be quiesced: qemu-ga must refuse, and freeze nothing.
    server.stop();
    let refused = agent.call("guest-fsfreeze-freeze-list", Some(mounts));
    assert_eq!(refused["error"]["class"], "GenericError", "{refused}");
    assert!(
        refused["error"]["desc"]
            .as_str()
            .unwrap_or_default()
            .contains("fsfreeze hook has failed"),
        "{refused}"
    );
    assert_eq!(
        agent.call("guest-fsfreeze-status", None)["return"],
        "thawed"
    );
    assert!(!freeze::is_frozen(fs.path()).unwrap());
}

/// qemu-ga (with volsnap as its hook) and volsnap backups on one MariaDB on
/// a Cinder volume, sharing one config and so one runtime directory.
struct Shared {
    agent: Agent,
    server: Server,
    config: PathBuf,
    log: PathBuf,
    tmp: tempfile::TempDir,
    volume: DataVolume,
}

fn shared(cloud: &Cloud) -> Shared {
    let volume = DataVolume::new(cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let server = mariadb_on(&volume);
    let log = tmp.path().join("volsnap.log");
    let config = cinder_config(
        tmp.path(),
        &[&volume],
        &repo_hooks(),
        "mysql",
        &format!(
            "log_file = {:?}\n{}",
            log.display().to_string(),
            hooks_env(&[(
                "VOLSNAP_MYSQL_DEFAULTS_FILE",
                server.get("MYSQL_DEFAULTS_FILE"),
            )])
        ),
    );
    let hook = tmp.path().join("fsfreeze-hook");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_volsnap"), &hook).unwrap();
    let agent = Agent::start(tmp.path(), &hook, &config, volume.path());
    Shared {
        agent,
        server,
        config,
        log,
        tmp,
        volume,
    }
}

impl Shared {
    fn mounts(&self) -> serde_json::Value {
        serde_json::json!({ "mountpoints": [self.volume.path()] })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A Nova quiesced snapshot in progress (qemu-ga froze, its hook holds the
/// database): a volsnap backup must not take the database over (the mysql
/// hook would release the lock it finds, and then hang on the frozen disk).
#[test]
fn a_backup_is_refused_while_qemu_ga_has_the_database_quiesced() {
    let cloud = Cloud::load();
    let _knobs = cloud.knobs();
    let s = shared(&cloud);
    let frozen = s.agent.call("guest-fsfreeze-freeze-list", Some(s.mounts()));
    assert_eq!(frozen["return"], 1, "{frozen}\n{}", s.log());
    assert!(s.server.backup_lock_held());

    let started = Instant::now();
    let ran = output(&mut volsnap(&cloud, &s.config, &["backup"]));
    let took = started.elapsed();
    assert_eq!(ran.code, Some(75), "{}\n{}", ran.stderr, s.log());
    assert!(ran.stderr.contains("qemu-ga"), "{}", ran.stderr);
    assert!(
        took < Duration::from_secs(10),
        "refused only after {took:?}"
    );
    assert!(
        s.server.backup_lock_held(),
        "the refused backup released qemu-ga's database lock"
    );
    assert_eq!(
        s.agent.call("guest-fsfreeze-status", None)["return"],
        "frozen"
    );
    assert!(s.volume.snapshots().is_empty());

    let thawed = s.agent.call("guest-fsfreeze-thaw", None);
    assert!(thawed["return"].as_u64() >= Some(1), "{thawed}");
    s.server
        .sql_ok("SET SESSION lock_wait_timeout = 1; INSERT INTO d.t VALUES (1)");
    // And once qemu-ga has thawed, backups work again.
    let ran = output(&mut volsnap(&cloud, &s.config, &["backup"]));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
}

/// libvirt calls qemu-ga's thaw even after a failed freeze: during a volsnap
/// backup, qemu-ga's freeze is refused, and its thaw (which thaws every
/// frozen filesystem, the backup's too) must not release the backup's
/// database lock; the backup sees its filesystem thawed under it, fails and
/// deletes its snapshot.
#[test]
fn qemu_ga_thaw_during_a_backup_leaves_the_backups_database_lock_alone() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let s = shared(&cloud);
    // Long enough for two lock probes, a refused freeze and a thaw.
    knobs.delay(8.0);
    let mut child = Background(
        volsnap(&cloud, &s.config, &["backup"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for_snapshot(&s.volume, Duration::from_secs(30));
    assert!(s.server.backup_lock_held());

    let refused = s.agent.call("guest-fsfreeze-freeze-list", Some(s.mounts()));
    assert_eq!(refused["error"]["class"], "GenericError", "{refused}");
    let thawed = s.agent.call("guest-fsfreeze-thaw", None);
    assert!(
        thawed["return"].as_u64() >= Some(1),
        "qemu-ga did not thaw the backup's filesystem: {thawed}"
    );
    assert!(
        s.server.backup_lock_held(),
        "qemu-ga's thaw hook released the running backup's database lock\n{}",
        s.log()
    );

    let status = wait_exit(&mut child, Duration::from_secs(60));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("someone else thawed it"), "{stderr}");
    assert!(stderr.contains("deleted this run's snapshots"), "{stderr}");
    assert!(s.volume.snapshots().is_empty());
    s.server
        .sql_ok("SET SESSION lock_wait_timeout = 1; INSERT INTO d.t VALUES (1)");
    assert!(!s.tmp.path().join("run/mysql.client.pid").exists());
}
