//! Point-in-time recovery for MariaDB (issue #15, the MariaDB half),
//! through the real binary, against the loopback cloud's real Swift
//! (tests/cloud) and a real MariaDB 10.11 (tests/db/mariadb.sh): `volsnap
//! archive` shipping the closed binary logs (closing them itself at
//! max_lag), `volsnap restore --until` replaying them onto a Swift base or
//! a Cinder snapshot's data directory (a loop-attached test-cloud volume).
//!
//! Every test has its own containers, runtime directory and server, all
//! removed on drop, even when the test fails.

#[path = "support/cloud.rs"]
mod cloud;
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloud::Cloud;
use serde_json::Value;
use sha2::Digest as _;
// cloud.rs calls `super::run`.
#[allow(unused_imports)]
use support::run;

use volsnap::openstack::Swift;

const BIN: &str = env!("CARGO_BIN_EXE_volsnap");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One test's containers, directory, server and config.
struct Rig {
    cloud: Cloud,
    swift: Swift,
    db: Db,
    dir: tempfile::TempDir,
    backups: String,
    archive: String,
}

impl Rig {
    fn new(what: &str) -> Rig {
        Rig::with_data(what, None)
    }

    /// With the server's data directory at `data` (on a volume).
    fn with_data(what: &str, data: Option<&Path>) -> Rig {
        let cloud = Cloud::load();
        let swift = volsnap::openstack::swift(&cloud.session()).unwrap();
        // Not under /tmp: `check` refuses a metrics file there, which the
        // volsnap-archive service (PrivateTmp=yes) would not see.
        let dir = tempfile::Builder::new()
            .prefix("volsnap-binlog-")
            .tempdir_in("/var/lib")
            .unwrap();
        // The mysql user (the replay's server) must reach the restored data.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = Db::start_with(&dir.path().join("db"), data);
        Rig {
            backups: cloud::unique(what),
            archive: cloud::unique(&format!("{what}-binlog")),
            cloud,
            swift,
            db,
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `NAME.toml` (0600): Swift strategy, datastore mysql, `[archive]`
    /// with `max_lag`, then `tail`.
    fn config(&self, name: &str, max_lag: &str, tail: &str) -> PathBuf {
        let text = format!(
            "datastore = \"mysql\"\nruntime_dir = {:?}\nmetrics_file = {:?}\n\
             [swift]\ncontainer = {:?}\nsegment_size = \"4MiB\"\n\
             [archive]\ncontainer = {:?}\nmax_lag = {max_lag:?}\n\
             [hooks]\ndir = {:?}\ntimeout = \"30s\"\nstream_timeout = \"5m\"\n[hooks.env]\n\
             VOLSNAP_MYSQL_DEFAULTS_FILE = {:?}\n{tail}",
            self.path().join("run").display().to_string(),
            self.path()
                .join("metrics/volsnap.prom")
                .display()
                .to_string(),
            self.backups,
            self.archive,
            repo().join("hooks").display().to_string(),
            self.db.defaults_file().display().to_string(),
        );
        std::fs::create_dir_all(self.path().join("metrics")).unwrap();
        let path = self.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn volsnap(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(config)
            .args(args)
            .env_remove("VOLSNAP_CONFIG")
            .env_remove("RUST_LOG")
            .envs(self.cloud.os_vars());
        cmd
    }

    fn run(&self, config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.volsnap(config, args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, config: &Path, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(config, args);
        assert_eq!(code, Some(0), "volsnap {args:?}:\n{stdout}\n{stderr}");
        stdout
    }

    fn json(&self, config: &Path, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(config, &all)).unwrap()
    }

    fn fails(&self, config: &Path, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(config, args);
        assert_eq!(
            code,
            Some(1),
            "volsnap {args:?} should fail:\n{stdout}\n{stderr}"
        );
        stderr
    }

    /// The archive's objects: binlog name → last modified.
    fn archived(&self) -> BTreeMap<String, String> {
        match self.swift.list_objects(&self.archive, "") {
            Ok(list) => list
                .into_iter()
                .filter_map(|e| {
                    assert!(e.name.contains("/binlog/"), "{}", e.name);
                    let name = e.name.rsplit('/').next()?.to_string();
                    // The quiet server's mark, not a binary log.
                    (name != "reached").then(|| (name, e.last_modified.unwrap_or_default()))
                })
                .collect(),
            Err(e) if e.is_not_found() => BTreeMap::new(),
            Err(e) => panic!("listing {}: {e}", self.archive),
        }
    }

    fn object_name(&self, name: &str) -> String {
        self.swift
            .list_objects(&self.archive, "")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .find(|n| n.ends_with(&format!("/binlog/{name}")))
            .unwrap_or_else(|| panic!("{name} is not archived"))
    }

    /// An archived file's content, checked against its SHA-256.
    fn archived_content(&self, name: &str) -> Vec<u8> {
        let reader = self
            .swift
            .get_object(&self.archive, &self.object_name(name))
            .unwrap();
        let meta = volsnap::stream::object::meta_from_metadata(&reader.info.metadata).unwrap();
        let mut plain = Vec::new();
        volsnap::stream::object::open(reader, &mut plain, &meta, None).unwrap();
        plain
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let segments = format!("{}_segments", self.backups);
        for container in [&self.backups, &segments, &self.archive] {
            if let Ok(objects) = self.swift.list_objects(container, "") {
                for o in objects {
                    let _ = self.swift.delete_object(container, &o.name);
                }
                let _ = self.swift.delete_container(container);
            }
        }
    }
}

/// A MariaDB started by tests/db/mariadb.sh on `dir` (data in `dir/data`
/// or elsewhere, binary log on); stopped on drop.
struct Db {
    dir: PathBuf,
    data: Option<PathBuf>,
}

impl Db {
    fn script() -> PathBuf {
        repo().join("tests/db/mariadb.sh")
    }

    fn start(dir: &Path) -> Db {
        Db::start_with(dir, None)
    }

    fn command(&self, action: &str) -> Command {
        let mut cmd = Command::new(Db::script());
        cmd.arg(action).arg(&self.dir);
        if let Some(data) = &self.data {
            cmd.env("DB_DATA_DIR", data);
        }
        cmd
    }

    fn start_with(dir: &Path, data: Option<&Path>) -> Db {
        // Stopped by Drop even when the start fails half way.
        let db = Db {
            dir: dir.to_path_buf(),
            data: data.map(Path::to_path_buf),
        };
        let out = db.command("start").output().unwrap();
        assert!(
            out.status.success(),
            "mariadb.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        db
    }

    fn defaults_file(&self) -> PathBuf {
        self.dir.join("client.cnf")
    }

    fn data(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(|| self.dir.join("data"))
    }

    fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg(format!(
                "--defaults-file={}",
                self.defaults_file().display()
            ))
            .args(["--batch", "--skip-column-names", "-e", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The binary log being written.
    fn current_binlog(&self) -> String {
        self.sql("SHOW MASTER STATUS")
            .split('\t')
            .next()
            .unwrap()
            .to_string()
    }

    /// The closed binary logs, with their SHA-256.
    fn closed_binlogs(&self) -> BTreeMap<String, String> {
        let current = self.current_binlog();
        self.sql("SHOW BINARY LOGS")
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .filter(|n| *n < current)
            .map(|n| {
                let sum = sha256(&std::fs::read(self.data().join(&n)).unwrap());
                (n, sum)
            })
            .collect()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}

/// `volsnap archive` running in the background; SIGKILLed on drop.
struct Archiver(Child);

impl Archiver {
    fn start(rig: &Rig, config: &Path) -> Archiver {
        Archiver(
            rig.volsnap(config, &["archive"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn sigkill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM: the service ends its current file and exits 0.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "volsnap archive after SIGTERM: {status}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "archive ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len() + 1..].parse().ok())
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// Sleeps until the wall clock is at `fraction` (in ms) of a second.
fn sleep_to_fraction(ms: i64) {
    let now = now_us();
    let into = now.rem_euclid(1_000_000);
    let mut wait = ms * 1000 - into;
    if wait <= 0 {
        wait += 1_000_000;
    }
    std::thread::sleep(Duration::from_micros(wait as u64));
}

/// A writer commits rows with their commit times; a Swift base backup; the
/// writer goes on (the archive service closes the binary log at max_lag,
/// so it rotates after the base) while `volsnap archive` ships; `restore
/// --until` a whole second T between two later commits, and MariaDB
/// started on the result holds exactly the rows committed at or before T
/// (those of T's own second come after T). Then the refusals: a T before
/// any base finished, a T the archive does not reach yet, and a gap in the
/// archive, each named, leaving nothing behind; `list` and retention.
#[test]
fn mariadb_restores_to_a_time_between_two_commits() {
    let rig = Rig::new("binlog-pitr");
    let config = rig.config("volsnap", "4s", "");

    // check says what to change in my.cnf.
    rig.db.sql("SET GLOBAL binlog_format = 'STATEMENT'");
    let (code, stdout, _) = rig.run(&config, &["check"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("binlog_format is \"STATEMENT\"")
            && stdout.contains("add `binlog_format = ROW` under [mysqld] in my.cnf"),
        "{stdout}"
    );
    rig.db.sql("SET GLOBAL binlog_format = 'MIXED'");
    let stdout = rig.ok(&config, &["check"]);
    assert!(
        stdout
            .contains("ok: mariadb binlog archiving: log_bin ON, binlog_format MIXED, server_id 1"),
        "{stdout}"
    );

    let archiver = Archiver::start(&rig, &config);
    rig.db
        .sql("CREATE DATABASE d; CREATE TABLE d.t (i int PRIMARY KEY, at bigint NOT NULL)");
    let insert = |i: i32| {
        let before = now_us();
        rig.db
            .sql(&format!("INSERT INTO d.t VALUES ({i}, {before})"));
        let after = now_us();
        (i, before, after)
    };
    let mut commits: Vec<(i32, i64, i64)> = (1..=3).map(insert).collect();
    let backup = rig.json(&config, &["backup"]);
    assert_eq!(backup["datastore"], "mysql");
    // The file being written when the base started: its position is there
    // or in a later one (the service may have closed it meanwhile).
    let base_file = backup["metadata"]["Volsnap-Hook-Binlog-Start-File"]
        .as_str()
        .unwrap_or_else(|| panic!("{backup}"))
        .to_string();
    assert!(base_file.starts_with("binlog."), "{backup}");
    let after_base = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_millis(1100));

    // Two commits a second, away from the second's edges, for 7 seconds.
    for i in 4..=17 {
        sleep_to_fraction(if i % 2 == 0 { 250 } else { 700 });
        commits.push(insert(i));
    }
    // T: a whole second with a commit in the second before it and one in its own.
    let t_s = commits[10].1.div_euclid(1_000_000);
    let until = jiff::Timestamp::from_second(t_s).unwrap();
    let expected: Vec<i32> = commits
        .iter()
        .filter(|(_, _, after)| *after <= t_s * 1_000_000)
        .map(|(i, _, _)| *i)
        .collect();
    let later = commits
        .iter()
        .find(|(_, before, _)| *before > t_s * 1_000_000)
        .unwrap();
    assert!(
        later.1 < (t_s + 1) * 1_000_000,
        "a commit in T's own second"
    );
    assert_eq!(
        expected.len() + commits.iter().filter(|c| c.1 > t_s * 1_000_000).count(),
        commits.len(),
        "no commit straddles T"
    );

    // The archive reaches past T: the service closed the file within
    // max_lag and shipped it.
    let reached = Instant::now() + Duration::from_secs(30);
    loop {
        let list = rig.json(&config, &["list"]);
        let to = list["archive"]["to"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if to.is_some_and(|to| to.as_microsecond() > (t_s + 2) * 1_000_000) {
            break;
        }
        assert!(
            Instant::now() < reached,
            "the archive past T: not within 30s: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listing = rig.ok(&config, &["list"]);
    assert!(
        listing.contains("archived binlog: restore --until reaches from"),
        "{listing}"
    );

    let target = rig.path().join("restored");
    std::fs::create_dir(&target).unwrap();
    let datadir = target.join("data");
    let started = Instant::now();
    let report = rig.json(
        &config,
        &[
            "restore",
            "--until",
            &until.to_string(),
            "--datadir",
            datadir.to_str().unwrap(),
        ],
    );
    eprintln!("restore --until: {:?}, {report}", started.elapsed());
    assert_eq!(report["base"], backup["name"]);
    assert!(
        report["start_file"].as_str().unwrap() >= base_file.as_str(),
        "{report}"
    );
    assert!(
        report["binlogs_fetched"].as_u64().unwrap() >= 2,
        "a rotation after the base: {report}"
    );
    assert!(
        !target.join("data.volsnap-binlog").exists(),
        "the fetched binlogs go once replayed"
    );
    let restored = Db::start(&target);
    let rows = restored.sql("SELECT GROUP_CONCAT(i ORDER BY i) FROM d.t");
    let want: Vec<String> = expected.iter().map(i32::to_string).collect();
    assert_eq!(rows, want.join(","), "rows committed at or before {until}");
    drop(restored);

    // The writer has stopped: the service closed and shipped its last
    // file, and marks that the server writes nothing since, so the window
    // reaches on, and a restore to a time after the last commit has all rows.
    let last_commit = commits.last().unwrap().2;
    let quiet_t = last_commit.div_euclid(1_000_000) + 3;
    let reached = Instant::now() + Duration::from_secs(30);
    loop {
        let list = rig.json(&config, &["list"]);
        let to = list["archive"]["to"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if to.is_some_and(|to| to.as_microsecond() > (quiet_t + 2) * 1_000_000) {
            break;
        }
        assert!(
            Instant::now() < reached,
            "a quiet server's archive reaches on: not within 30s: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let quiet = rig.path().join("quiet");
    std::fs::create_dir(&quiet).unwrap();
    rig.json(
        &config,
        &[
            "restore",
            "--until",
            &jiff::Timestamp::from_second(quiet_t).unwrap().to_string(),
            "--datadir",
            quiet.join("data").to_str().unwrap(),
        ],
    );
    let restored = Db::start(&quiet);
    let all: Vec<String> = commits.iter().map(|c| c.0.to_string()).collect();
    assert_eq!(
        restored.sql("SELECT GROUP_CONCAT(i ORDER BY i) FROM d.t"),
        all.join(",")
    );
    drop(restored);

    // No base finished before T.
    let err = rig.fails(
        &config,
        &[
            "restore",
            "--until",
            &after_base
                .checked_sub(jiff::SignedDuration::from_secs(30))
                .unwrap()
                .to_string(),
            "--datadir",
            rig.path().join("x").to_str().unwrap(),
        ],
    );
    assert!(err.contains("no base backup of this host"), "{err}");
    // T beyond what is archived: refused before anything is downloaded.
    let future = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(3600))
        .unwrap();
    let err = rig.fails(
        &config,
        &[
            "restore",
            "--until",
            &future.to_string(),
            "--datadir",
            rig.path().join("y").to_str().unwrap(),
        ],
    );
    assert!(err.contains("do not reach"), "{err}");
    assert!(
        !rig.path().join("y").exists(),
        "a refused restore leaves nothing"
    );

    // A gap: the base's file deleted from Swift, later ones archived.
    archiver.stop();
    let gap = base_file.clone();
    let object = rig.object_name(&gap);
    let kept = rig.swift.get_object(&rig.archive, &object).unwrap();
    let kept_meta = kept.info.metadata.clone();
    let mut kept_body = Vec::new();
    std::io::Read::read_to_end(&mut { kept }, &mut kept_body).unwrap();
    rig.swift.delete_object(&rig.archive, &object).unwrap();
    let err = rig.fails(
        &config,
        &[
            "restore",
            "--until",
            &until.to_string(),
            "--datadir",
            rig.path().join("z").to_str().unwrap(),
        ],
    );
    assert!(err.contains("gap in the archived binary logs"), "{err}");
    assert!(
        err.contains(&format!("{gap} is missing")),
        "the gap is named: {err}"
    );
    assert!(!rig.path().join("z").exists());
    let listing = rig.ok(&config, &["list"]);
    assert!(listing.contains(&format!("gap at {gap}")), "{listing}");
    rig.swift
        .put_object(&rig.archive, &object, kept_body.into(), &kept_meta)
        .unwrap();

    // Retention: a second base with keep_last = 1 deletes the first base
    // and the archived binlogs before the second's file.
    rig.db.sql("FLUSH BINARY LOGS");
    rig.ok(&config, &["archive", "--once"]);
    let before = rig.archived();
    let keep1 = rig.config("keep1", "4s", "[retention]\nkeep_last = 1\n");
    let second = rig.json(&keep1, &["backup"]);
    let pruned: Vec<&str> = second["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        pruned.contains(&backup["name"].as_str().unwrap()),
        "{second}"
    );
    let start = second["metadata"]["Volsnap-Hook-Binlog-Start-File"]
        .as_str()
        .unwrap()
        .to_string();
    let after = rig.archived();
    assert!(after.len() < before.len(), "{before:?} {after:?}");
    for name in before.keys() {
        assert_eq!(
            after.contains_key(name),
            *name >= start,
            "{name} (the second base starts in {start})"
        );
    }
    let prom = std::fs::read_to_string(rig.path().join("metrics/volsnap-archive.prom")).unwrap();
    assert!(
        prom.contains("volsnap_archive_last_shipped_segment{segment=\"binlog."),
        "{prom}"
    );
}

/// Twelve binary logs of ~8 MiB of random rows each (incompressible, so
/// uploads take time; twelve, so that five kills, each after at least one
/// more upload, all come before the last is shipped even on a quiet
/// machine: with eight, one run shipped them all by the fifth, and with
/// 3 MiB each a quiet machine with a fast Swift shipped twelve by the
/// fourth; the uploads are watched for every 20 ms);
/// `volsnap archive` SIGKILLed five times while it ships, then run to the end. After every kill, each object in Swift
/// holds its file's exact content (an upload cut short leaves none); at
/// the end every closed file is in Swift, and no object seen after a kill
/// was uploaded again. Then RESET MASTER (numbers start over): another
/// file under a shipped name is refused loudly, nothing overwritten.
#[test]
fn the_binlog_archiver_killed_mid_upload_loses_nothing_and_ships_nothing_twice() {
    let rig = Rig::new("binlog-kill");
    let config = rig.config("volsnap", "10m", "");
    rig.db
        .sql("CREATE DATABASE d; CREATE TABLE d.b (i int AUTO_INCREMENT PRIMARY KEY, v blob)");
    for _ in 0..12 {
        rig.db.sql(
            "USE d; INSERT INTO b (v) SELECT RANDOM_BYTES(1024) FROM seq_1_to_8000; FLUSH BINARY LOGS",
        );
    }
    let closed = rig.db.closed_binlogs();
    assert!(closed.len() >= 12, "{closed:?}");

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut mid = 0;
    for delay in [0u64, 20, 40, 60, 80] {
        let before = rig.archived().len();
        let archiver = Archiver::start(&rig, &config);
        let start = Instant::now();
        while rig.archived().len() <= before {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "an upload: not within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(delay));
        archiver.sigkill();
        let archived = rig.archived();
        if archived.len() < closed.len() {
            mid += 1;
        }
        for (name, modified) in archived {
            assert_eq!(
                sha256(&rig.archived_content(&name)),
                closed[&name],
                "{name} in Swift after a SIGKILL"
            );
            if let Some(before) = seen.insert(name.clone(), modified.clone()) {
                assert_eq!(before, modified, "{name} was uploaded again");
            }
        }
    }
    assert_eq!(
        mid, 5,
        "every kill came while the binlogs were being shipped"
    );
    let report = rig.json(&config, &["archive", "--once"]);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["waiting"], 0, "{report}");
    let archived = rig.archived();
    assert_eq!(
        archived.keys().collect::<Vec<_>>(),
        closed.keys().collect::<Vec<_>>()
    );
    for (name, modified) in &seen {
        assert_eq!(&archived[name], modified, "{name} was uploaded again");
    }
    for (name, sum) in &closed {
        assert_eq!(&sha256(&rig.archived_content(name)), sum, "{name}");
    }
    // Once more: nothing to do.
    let report = rig.json(&config, &["archive", "--once"]);
    assert_eq!(
        (
            report["uploaded"].as_u64(),
            report["already_there"].as_u64()
        ),
        (Some(0), Some(0))
    );

    // The server's numbers start over: a different binlog.000001.
    rig.db.sql("RESET MASTER");
    rig.db
        .sql("INSERT INTO d.b (v) VALUES ('other'); FLUSH BINARY LOGS");
    let first = closed.keys().next().unwrap().clone();
    let before = rig.archived()[&first].clone();
    let err = rig.fails(&config, &["archive", "--once"]);
    assert!(err.contains("exists with other content"), "{err}");
    assert_eq!(rig.archived()[&first], before);
}

/// Swift away (its endpoint refusing connections): the service keeps
/// running, still closes the binary log at max_lag, the closed files wait
/// on the server and the lag metric grows while MariaDB goes on taking
/// commits; SIGTERM ends it with exit 0. With Swift back, everything is
/// shipped and the lag is 0.
#[test]
fn while_swift_is_away_binlogs_wait_and_the_lag_shows_then_all_are_shipped() {
    let rig = Rig::new("binlog-away");
    let config = rig.config("volsnap", "2s", "");
    let report = rig.json(&config, &["archive", "--once"]);
    assert_eq!(report["uploaded"], 0, "{report}");
    let away = rig.config(
        "away",
        "2s",
        "[openstack]\nobject_store_endpoint = \"http://127.0.0.1:9/v1/AUTH_away\"\n",
    );
    let prom = rig.path().join("metrics/volsnap-archive.prom");
    let _ = std::fs::remove_file(&prom);
    rig.db
        .sql("CREATE DATABASE d; CREATE TABLE d.t (i int PRIMARY KEY)");
    let archiver = Archiver::start(&rig, &away);
    let mut lag = 0.0;
    let mut i = 0;
    wait_for(
        Duration::from_secs(60),
        "closed binlogs waiting, with a lag",
        || {
            i += 1;
            rig.db.sql(&format!("INSERT INTO d.t VALUES ({i})"));
            let text = std::fs::read_to_string(&prom).unwrap_or_default();
            lag = metric(&text, "volsnap_archive_lag_seconds").unwrap_or(0.0);
            metric(&text, "volsnap_archive_waiting_files").unwrap_or(0.0) >= 2.0 && lag >= 1.0
        },
    );
    assert!(rig.archived().is_empty());
    archiver.stop();
    let closed = rig.db.closed_binlogs();
    assert!(closed.len() >= 2, "{closed:?}");
    assert_eq!(rig.db.sql("SELECT COUNT(*) FROM d.t"), i.to_string());

    let report = rig.json(&config, &["archive", "--once"]);
    assert!(
        report["uploaded"].as_u64().unwrap() >= closed.len() as u64,
        "{report}"
    );
    let archived = rig.archived();
    for (name, sum) in &closed {
        assert!(archived.contains_key(name), "{name} shipped");
        assert_eq!(&sha256(&rig.archived_content(name)), sum, "{name}");
    }
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        metric(&text, "volsnap_archive_lag_seconds"),
        Some(0.0),
        "{text}"
    );
}

/// Issue #15 with a Cinder snapshot as the MariaDB base. MariaDB's data
/// directory on ext4 on a loop-attached test-cloud volume, `volsnap
/// archive` shipping its binary logs (closing them at max_lag); `volsnap
/// backup` takes the Cinder snapshot with the mysql hook (binlog_file,
/// binlog_pos under the lock), and the writer goes on, twice a second,
/// across a rotation. A volume of the snapshot mounted; a T before the
/// snapshot refused, DIR untouched; `restore --until T --snapshot ID
/// --datadir` (crash recovery in the temporary server, then the archived
/// binary logs from the snapshot's position), and MariaDB started on it
/// holds exactly the rows committed at or before T; while it runs, a
/// restore on it is refused.
#[test]
fn mariadb_recovers_a_cinder_snapshot_to_a_time_between_two_later_commits() {
    let started = Instant::now();
    let cloud = Cloud::load();
    let volume = cloud::DataVolume::new(&cloud, "ext4");
    let through = |dir: &Path| {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011)).unwrap();
    };
    through(volume.path().parent().unwrap());
    // Declared after the volume: the server stops before it is unmounted.
    let rig = Rig::with_data("binlog-snap", Some(&volume.path().join("mysql")));
    let extra = format!(
        "[swift]\ncontainer = {:?}\n[archive]\ncontainer = {:?}\nmax_lag = \"4s\"\n\
         [hooks.env]\nVOLSNAP_MYSQL_DEFAULTS_FILE = {:?}\n",
        rig.backups,
        rig.archive,
        rig.db.defaults_file().display().to_string(),
    );
    let config = cloud::cinder_config(
        rig.path(),
        &[&volume],
        &repo().join("hooks"),
        "mysql",
        &extra,
    );
    let archiver = Archiver::start(&rig, &config);
    rig.db
        .sql("CREATE DATABASE d; CREATE TABLE d.t (i int PRIMARY KEY, at bigint NOT NULL)");
    let insert = |i: i32| {
        let before = now_us();
        rig.db
            .sql(&format!("INSERT INTO d.t VALUES ({i}, {before})"));
        (i, before, now_us())
    };
    let mut commits: Vec<(i32, i64, i64)> = (1..=3).map(insert).collect();

    let knobs = rig.cloud.knobs(); // no delay or failure injected meanwhile
    let backup = rig.json(&config, &["backup"]);
    drop(knobs);
    assert_eq!(backup["consistency"], "application", "{backup}");
    let snapshot_id = backup["snapshots"][0]["id"].as_str().unwrap().to_string();
    let snapshot = rig.cloud.cinder().snapshot(&snapshot_id).unwrap();
    let (binlog_file, binlog_pos) = (
        snapshot.metadata["binlog_file"].clone(),
        snapshot.metadata["binlog_pos"].clone(),
    );
    let created =
        volsnap::agent::cinder::parse_cinder_time(snapshot.created_at.as_deref().unwrap()).unwrap();

    // Two commits a second, away from the second's edges, for 8 seconds.
    for i in 4..=19 {
        sleep_to_fraction(if i % 2 == 0 { 250 } else { 700 });
        commits.push(insert(i));
    }
    // T: a whole second late in the writer's run, past the snapshot's
    // consistency (created + 1 s), a commit in the second before it.
    let t_s = commits[12].1.div_euclid(1_000_000);
    assert!(
        t_s * 1000 >= created.as_millisecond() + 1000,
        "T {t_s} before the snapshot's state ({created})"
    );
    let until = jiff::Timestamp::from_second(t_s).unwrap();
    let expected: Vec<i32> = commits
        .iter()
        .filter(|(_, _, after)| *after <= t_s * 1_000_000)
        .map(|(i, _, _)| *i)
        .collect();
    assert_eq!(
        expected.len() + commits.iter().filter(|c| c.1 > t_s * 1_000_000).count(),
        commits.len(),
        "no commit straddles T"
    );
    // The file being written now closed and shipped: the archive reaches past T.
    let last = rig.db.current_binlog();
    rig.db.sql("FLUSH BINARY LOGS");
    wait_for(Duration::from_secs(30), "the last binlog in Swift", || {
        rig.archived().contains_key(&last)
    });

    // A volume of the snapshot, mounted: the data directory as frozen.
    let made = rig.json(&config, &["restore", "--snapshot", &snapshot_id]);
    let restored = cloud::DataVolume::existing(&rig.cloud, made["volume_id"].as_str().unwrap());
    through(restored.path().parent().unwrap());
    let datadir = restored.path().join("mysql");
    let datadir_arg = datadir.to_str().unwrap().to_string();
    let binlog_dir = restored.path().join("mysql.volsnap-binlog");
    let restore = |until: &str| {
        rig.run(
            &config,
            &[
                "--json",
                "restore",
                "--until",
                until,
                "--snapshot",
                &snapshot_id,
                "--datadir",
                &datadir_arg,
            ],
        )
    };
    let owner = |p: &Path| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap());

    let before = jiff::Timestamp::from_microsecond(commits[1].1)
        .unwrap()
        .to_string();
    let (code, stdout, stderr) = restore(&before);
    assert_eq!(
        code,
        Some(1),
        "a T before the snapshot:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("snapshot {snapshot_id} was taken at")),
        "{stderr}"
    );
    assert_eq!(owner(&datadir), 0, "a refusal leaves DIR as it was");
    assert!(!binlog_dir.exists(), "a refusal leaves nothing beside DIR");

    let t0 = Instant::now();
    let (code, stdout, stderr) = restore(&until.to_string());
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    eprintln!("restore --until --snapshot: {:?}, {report}", t0.elapsed());
    assert_eq!(report["base_kind"], "cinder-snapshot");
    assert_eq!(report["base"], snapshot_id.as_str());
    assert_eq!(report["start_file"], binlog_file.as_str(), "{report}");
    assert_eq!(report["start_position"].to_string(), binlog_pos, "{report}");
    assert!(
        report["binlogs_fetched"].as_u64().unwrap() >= 2,
        "a rotation between the snapshot and T: {report}"
    );
    assert!(!binlog_dir.exists(), "the fetched binlogs go once replayed");

    let copy = Db::start_with(&rig.path().join("copy"), Some(&datadir));
    let rows = copy.sql("SELECT GROUP_CONCAT(i ORDER BY i) FROM d.t");
    let want: Vec<String> = expected.iter().map(i32::to_string).collect();
    assert_eq!(rows, want.join(","), "rows committed at or before {until}");
    let (code, _, stderr) = restore(&until.to_string());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is running on"), "{stderr}");
    drop(copy);
    archiver.stop();
    eprintln!("the whole test: {:?}", started.elapsed());
}
