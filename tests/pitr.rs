//! Point-in-time recovery for PostgreSQL (issue #15, the PostgreSQL half),
//! through the real binary, against the loopback cloud's real Swift
//! (tests/cloud) and a real PostgreSQL 15 (tests/db/postgres.sh):
//! `volsnap wal push` as PostgreSQL's archive_command, run as `postgres`;
//! `volsnap archive` shipping the spool; `volsnap restore --until`.
//!
//! Every test has its own containers, spool, runtime directory and servers,
//! all removed on drop, even when the test fails.

#[path = "support/cloud.rs"]
mod cloud;
mod support;

use std::collections::{BTreeMap, BTreeSet};
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

/// One test's containers, directory and config.
struct Rig {
    cloud: Cloud,
    swift: Swift,
    dir: tempfile::TempDir,
    backups: String,
    archive: String,
}

impl Rig {
    fn new(what: &str) -> Rig {
        let cloud = Cloud::load();
        let swift = volsnap::openstack::swift(&cloud.session()).unwrap();
        // Not under /tmp: `check` refuses a spool or metrics file there,
        // which the volsnap-archive service (PrivateTmp=yes) would not see.
        let dir = tempfile::Builder::new()
            .prefix("volsnap-pitr-")
            .tempdir_in("/var/lib")
            .unwrap();
        // The postgres user must reach the database directories and the spool.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Rig {
            backups: cloud::unique(what),
            archive: cloud::unique(&format!("{what}-wal")),
            cloud,
            swift,
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn spool(&self) -> PathBuf {
        self.path().join("spool")
    }

    /// Writes the config (0600): Swift strategy, PostgreSQL, `[archive]`.
    fn config(&self, pg_env: &[(&str, String)]) -> PathBuf {
        self.config_with("volsnap", pg_env, "")
    }

    /// `NAME.toml`, with `tail` appended (e.g. a `[retention]` table).
    fn config_with(&self, name: &str, pg_env: &[(&str, String)], tail: &str) -> PathBuf {
        let mut text = format!(
            "datastore = \"postgresql\"\nruntime_dir = {:?}\nmetrics_file = {:?}\n\
             [swift]\ncontainer = {:?}\nsegment_size = \"4MiB\"\n\
             [archive]\ncontainer = {:?}\nspool_dir = {:?}\nmax_lag = \"1m\"\n\
             [hooks]\ndir = {:?}\ntimeout = \"30s\"\nstream_timeout = \"5m\"\n[hooks.env]\n",
            self.path().join("run").display().to_string(),
            self.path()
                .join("metrics/volsnap.prom")
                .display()
                .to_string(),
            self.backups,
            self.archive,
            self.spool().display().to_string(),
            repo().join("hooks").display().to_string(),
        );
        for (k, v) in pg_env {
            text += &format!("{k} = {v:?}\n");
        }
        text += tail;
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

    fn fails(&self, config: &Path, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(config, args);
        assert_eq!(
            code,
            Some(1),
            "volsnap {args:?} should fail:\n{stdout}\n{stderr}"
        );
        stderr
    }

    /// The archive's objects: name (after `PREFIX/HOST/wal/`) → last modified.
    fn archived(&self) -> BTreeMap<String, String> {
        match self.swift.list_objects(&self.archive, "") {
            Ok(list) => list
                .into_iter()
                .filter_map(|e| {
                    let name = e.name.rsplit('/').next()?.to_string();
                    Some((name, e.last_modified.unwrap_or_default()))
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
            .find(|n| n.ends_with(&format!("/wal/{name}")))
            .unwrap_or_else(|| panic!("{name} is not archived"))
    }

    fn waiting(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.spool())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
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

/// A PostgreSQL started by tests/db/postgres.sh on `dir` (data in
/// `dir/data`, or in `data` when given: on a volume); stopped on drop.
struct Pg {
    dir: PathBuf,
    data: Option<PathBuf>,
    env: BTreeMap<String, String>,
}

impl Pg {
    fn script() -> PathBuf {
        repo().join("tests/db/postgres.sh")
    }

    fn start(dir: &Path) -> Pg {
        Pg::start_on(dir, None)
    }

    fn start_on(dir: &Path, port: Option<&str>) -> Pg {
        Pg {
            dir: dir.to_path_buf(),
            data: None,
            env: Pg::run_start(dir, None, port),
        }
    }

    /// Data directory `data` elsewhere (on a volume); socket and log in `dir`.
    fn start_with_data(dir: &Path, data: &Path) -> Pg {
        let mut pg = Pg {
            dir: dir.to_path_buf(),
            data: Some(data.to_path_buf()),
            env: BTreeMap::new(),
        };
        // Stopped by Drop even when the start fails half way.
        pg.env = Pg::run_start(dir, Some(data), None);
        pg
    }

    fn run_start(dir: &Path, data: Option<&Path>, port: Option<&str>) -> BTreeMap<String, String> {
        let mut cmd = Command::new(Pg::script());
        cmd.arg("start").arg(dir);
        if let Some(port) = port {
            cmd.env("PG_PORT", port);
        }
        if let Some(data) = data {
            cmd.env("DB_DATA_DIR", data);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "postgres.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect()
    }

    /// On the same port: the config names it.
    fn restart(&mut self) {
        self.stop();
        let port = self.get("PG_PORT").to_string();
        self.env = Pg::run_start(&self.dir, self.data.as_deref(), Some(&port));
    }

    fn stop(&self) {
        let mut cmd = Command::new(Pg::script());
        cmd.arg("stop").arg(&self.dir);
        if let Some(data) = &self.data {
            cmd.env("DB_DATA_DIR", data);
        }
        let _ = cmd.output();
    }

    fn get(&self, key: &str) -> &str {
        &self.env[key]
    }

    /// psql as `postgres`, running `sql`.
    fn psql(&self, sql: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(format!("{}/psql", self.get("PG_BINDIR")))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.get("PG_HOST"))
            .args([
                "-p",
                self.get("PG_PORT"),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql]);
        cmd
    }

    fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = self.psql(sql).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn hook_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("VOLSNAP_PG_HOST", self.get("PG_HOST").to_string()),
            ("VOLSNAP_PG_PORT", self.get("PG_PORT").to_string()),
            ("VOLSNAP_PG_BINDIR", self.get("PG_BINDIR").to_string()),
            ("VOLSNAP_PG_DATADIR", self.get("PG_DATADIR").to_string()),
        ]
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A writer commits rows with their commit times; a Swift base backup; the
/// writer goes on while `volsnap archive` ships the WAL; `restore --until`
/// a time T between two later commits, and PostgreSQL started on the
/// result holds exactly the rows committed at or before T. Then the
/// refusals: a T before any base finished, a T the archive does not reach
/// yet, and a gap in the archive, each named, leaving nothing behind.
#[test]
fn postgresql_restores_to_a_time_between_two_commits() {
    let rig = Rig::new("pitr");
    let mut pg = Pg::start(&rig.path().join("db"));
    let config = rig.config(&pg.hook_env());

    // Before archiving is set up, check says what to change.
    let (code, stdout, _) = rig.run(&config, &["check"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("archive_mode is \"off\": run ALTER SYSTEM SET archive_mode = on"),
        "{stdout}"
    );
    assert!(stdout.contains("archive_timeout"), "{stdout}");

    let command = format!("{BIN} wal push --spool {} %p", rig.spool().display());
    pg.sql("ALTER SYSTEM SET archive_mode = on");
    pg.sql(&format!("ALTER SYSTEM SET archive_command = '{command}'"));
    pg.sql("ALTER SYSTEM SET archive_timeout = '30s'");
    pg.sql("ALTER SYSTEM SET track_commit_timestamp = on");
    pg.restart();
    let archiver = Archiver::start(&rig, &config);
    wait_for(Duration::from_secs(20), "the spool", || {
        rig.spool().is_dir()
    });
    let stdout = rig.ok(&config, &["check"]);
    assert!(
        stdout.contains("ok: postgresql archiving: archive_mode on"),
        "{stdout}"
    );

    pg.sql("CREATE TABLE t (i int PRIMARY KEY)");
    for i in 1..=5 {
        pg.sql(&format!("INSERT INTO t VALUES ({i})"));
    }
    let backup: Value = serde_json::from_str(&rig.ok(&config, &["--json", "backup"])).unwrap();
    assert_eq!(backup["datastore"], "postgresql");
    let after_base = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_millis(1100));

    // One commit every ~60 ms, a segment switch every 10 rows.
    pg.sql(
        "DO $$ BEGIN FOR i IN 6..60 LOOP
             INSERT INTO t VALUES (i); COMMIT;
             IF i % 10 = 0 THEN PERFORM pg_switch_wal(); END IF;
             PERFORM pg_sleep(0.06);
         END LOOP; END $$",
    );
    let last = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.sql("SELECT pg_switch_wal()");
    wait_for(Duration::from_secs(60), "the last segment in Swift", || {
        rig.archived().contains_key(&last)
    });

    let commits: Vec<(i32, i64)> = pg
        .sql("SELECT i, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint FROM t ORDER BY i")
        .lines()
        .map(|l| {
            let (i, t) = l.split_once('|').unwrap();
            (i.parse().unwrap(), t.parse().unwrap())
        })
        .collect();
    assert_eq!(commits.len(), 60);
    // T halfway between the commits of rows 25 and 26.
    let k = 25;
    let t_us = (commits[k - 1].1 + commits[k].1) / 2;
    let until = jiff::Timestamp::from_microsecond(t_us).unwrap();
    let expected: Vec<i32> = commits
        .iter()
        .filter(|(_, t)| *t <= t_us)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(expected, (1..=k as i32).collect::<Vec<_>>());

    let target = rig.path().join("restored");
    std::fs::create_dir(&target).unwrap();
    let datadir = target.join("data");
    let started = Instant::now();
    let report: Value = serde_json::from_str(&rig.ok(
        &config,
        &[
            "--json",
            "restore",
            "--until",
            &until.to_string(),
            "--datadir",
            datadir.to_str().unwrap(),
        ],
    ))
    .unwrap();
    eprintln!("restore --until: {:?}, {report}", started.elapsed());
    assert_eq!(report["base"], backup["name"]);
    assert!(
        report["segments_fetched"].as_u64().unwrap() >= 2,
        "{report}"
    );
    assert!(datadir.join("recovery.signal").is_file());

    let restored = Pg::start(&target);
    wait_for(Duration::from_secs(60), "the promotion", || {
        restored.try_sql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
    });
    let rows = restored.sql("SELECT string_agg(i::text, ',' ORDER BY i) FROM t");
    let want: Vec<String> = expected.iter().map(i32::to_string).collect();
    assert_eq!(rows, want.join(","), "rows committed at or before {until}");
    let log = std::fs::read_to_string(target.join("postgres.log")).unwrap_or_default();
    assert!(log.contains("recovery stopping before commit"), "{log}");
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
    // T beyond what is archived.
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
    assert!(err.contains("does not reach"), "{err}");
    assert!(
        !rig.path().join("y").exists(),
        "a refused restore leaves nothing"
    );
    assert!(!rig.path().join("y.volsnap-wal").exists());

    // A gap: the segment before the last one the restore needed (it holds
    // commits after the base) deleted from Swift.
    let last_needed = report["last_segment"].as_str().unwrap();
    let number = u32::from_str_radix(&last_needed[16..], 16).unwrap();
    let gap = format!("{}{:08X}", &last_needed[..16], number - 1);
    assert!(gap.as_str() > report["first_segment"].as_str().unwrap());
    rig.swift
        .delete_object(&rig.archive, &rig.object_name(&gap))
        .unwrap();
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
    assert!(err.contains("gap in the archived WAL"), "{err}");
    assert!(err.contains(&gap), "the gap is named: {err}");
    assert!(!rig.path().join("z").exists());
    let listing = rig.ok(&config, &["list"]);
    assert!(
        listing.contains("archived WAL: restore --until reaches from"),
        "{listing}"
    );
    assert!(listing.contains(&format!("gap at {gap}")), "{listing}");

    // Retention: a second base with keep_last = 1 deletes the first base
    // and the archived WAL before the second's start; history files stay.
    let before = rig.archived();
    let config = rig.config_with("keep1", &pg.hook_env(), "[retention]\nkeep_last = 1\n");
    let second: Value = serde_json::from_str(&rig.ok(&config, &["--json", "backup"])).unwrap();
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
    let head = rig
        .swift
        .head_object(&rig.backups, second["name"].as_str().unwrap())
        .unwrap();
    let start = head.metadata["volsnap-hook-wal-start-segment"].clone();
    let after = rig.archived();
    assert!(after.len() < before.len(), "{before:?} {after:?}");
    for name in before.keys() {
        let kept = after.contains_key(name);
        let old = name.len() >= 24 && !name.ends_with(".history") && name[8..24] < start[8..24];
        assert_eq!(kept, !old, "{name} (the second base starts at {start})");
    }

    // The metrics file shows the archive.
    let prom = std::fs::read_to_string(rig.path().join("metrics/volsnap-archive.prom")).unwrap();
    assert!(prom.contains("volsnap_archive_lag_seconds"), "{prom}");
    assert!(
        prom.contains("volsnap_archive_last_shipped_segment{segment=\""),
        "{prom}"
    );
    archiver.stop();
}

/// `check --offline` with `[archive]`, with no credential at all: the spool
/// and its owner, the service's sandbox, the metrics directory, and the
/// archiving settings of a PostgreSQL on this machine while its socket is
/// there (`not checked` once it is gone: offline asks no remote server).
#[test]
fn check_offline_checks_the_spool_the_metrics_and_a_local_servers_settings() {
    let rig = Rig::new("pitr-offline");
    let mut pg = Pg::start(&rig.path().join("db"));
    let config = rig.config(&pg.hook_env());
    let check = |config: &Path| -> (Option<i32>, String) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(["check", "--offline"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        (out.status.code(), format!("{stdout}{stderr}"))
    };
    // Archiving off; no spool yet, which the service would create.
    let (code, out) = check(&config);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("problem: postgresql archiving: archive_mode is \"off\": run ALTER SYSTEM SET archive_mode = on"),
        "{out}"
    );
    assert!(out.contains("ok: archive spool: "), "{out}");
    assert!(out.contains("does not exist yet"), "{out}");
    assert!(
        out.contains(&format!(
            "ok: archive metrics: {}",
            rig.path().join("metrics/volsnap-archive.prom").display()
        )),
        "{out}"
    );

    let command = format!("{BIN} wal push --spool {} %p", rig.spool().display());
    pg.sql("ALTER SYSTEM SET archive_mode = on");
    pg.sql(&format!("ALTER SYSTEM SET archive_command = '{command}'"));
    pg.sql("ALTER SYSTEM SET archive_timeout = '30s'");
    pg.restart();
    std::fs::create_dir(rig.spool()).unwrap();
    let chown = Command::new("chown")
        .arg("postgres:")
        .arg(rig.spool())
        .status()
        .unwrap();
    assert!(chown.success());
    std::fs::set_permissions(rig.spool(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok: postgresql archiving: archive_mode on"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "ok: archive spool: {} (owner postgres, mode 0700)",
            rig.spool().display()
        )),
        "{out}"
    );
    let json = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["--json", "check", "--offline"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["archive spool", "archive metrics", "postgresql archiving"],
        "{v}"
    );

    // A spool others may write into.
    std::fs::set_permissions(rig.spool(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("problem: archive spool: "), "{out}");
    assert!(out.contains("chmod 700"), "{out}");
    std::fs::set_permissions(rig.spool(), std::fs::Permissions::from_mode(0o700)).unwrap();

    // An owner that does not exist; a spool and a metrics file where the
    // service cannot reach them; a metrics directory that is not there.
    let text = std::fs::read_to_string(&config).unwrap();
    let metrics_line = format!(
        "metrics_file = {:?}",
        rig.path()
            .join("metrics/volsnap.prom")
            .display()
            .to_string()
    );
    for (from, to, expected) in [
        (
            &"[archive]\n".to_string(),
            "[archive]\nspool_owner = \"volsnap-nobody\"\n".to_string(),
            "problem: archive spool: archive.spool_owner: no OS user \"volsnap-nobody\"",
        ),
        (
            &format!("spool_dir = {:?}", rig.spool().display().to_string()),
            "spool_dir = \"/tmp/volsnap-spool\"".to_string(),
            "problem: archive spool: archive.spool_dir /tmp/volsnap-spool: /tmp is private to it (PrivateTmp=yes)",
        ),
        (
            &metrics_line,
            "metrics_file = \"/etc/volsnap/volsnap.prom\"".to_string(),
            "problem: archive metrics: /etc/volsnap/volsnap-archive.prom: /etc is read-only (ProtectSystem=full)",
        ),
        (
            &metrics_line,
            format!(
                "metrics_file = {:?}",
                rig.path().join("gone/volsnap.prom").display().to_string()
            ),
            "problem: archive metrics: ",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let bad = rig.path().join("bad.toml");
        std::fs::write(&bad, text.replacen(from, &to, 1)).unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (code, out) = check(&bad);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(expected), "{expected}\n{out}");
    }

    // The server stopped: its settings are not checked, and that is no
    // problem offline.
    pg.stop();
    let (code, out) = check(&config);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok: postgresql archiving: not checked with --offline: no server listens on"),
        "{out}"
    );
}

fn sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pushes a file through `volsnap wal push`, as PostgreSQL would: as the
/// `postgres` user.
fn push_as_postgres(spool: &Path, file: &Path) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", BIN, "wal", "push", "--spool"])
        .arg(spool)
        .arg(file)
        .output()
        .unwrap()
}

/// 16 segments of 4 MiB (a WAL segment size initdb allows; random, so
/// incompressible and uploads take time)
/// pushed by `postgres`; `volsnap archive` SIGKILLed five times while it
/// ships, then restarted to the end. After every kill, every segment is in
/// the spool or in Swift (nothing lost); at the end all are in Swift with
/// their content, the spool is empty, and no object seen after a kill was
/// uploaded again (nothing shipped twice). Then a different file under a
/// shipped name: refused loudly, nothing overwritten, kept in the spool.
#[test]
fn the_archiver_killed_mid_upload_loses_nothing_and_ships_nothing_twice() {
    let rig = Rig::new("pitr-kill");
    let config = rig.config(&[]);
    // --once with an empty spool creates it (owned by postgres, 0700).
    let report: Value =
        serde_json::from_str(&rig.ok(&config, &["--json", "archive", "--once"])).unwrap();
    assert_eq!(report["uploaded"], 0);
    let src = rig.path().join("pg_wal");
    std::fs::create_dir(&src).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut sums = BTreeMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 1..=16u32 {
        let name = format!("0000000100000000{n:08X}");
        let mut data = vec![0u8; 4 << 20];
        for chunk in data.chunks_exact_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes());
        }
        let path = src.join(&name);
        std::fs::write(&path, &data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = push_as_postgres(&rig.spool(), &path);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sums.insert(name, sha256(&data));
    }
    assert_eq!(rig.waiting().len(), 16);
    // Pushed again (PostgreSQL does, after a crash): fine. Another file
    // under a name the spool holds: refused.
    let first = src.join("000000010000000000000001");
    assert!(push_as_postgres(&rig.spool(), &first).status.success());
    let other = rig.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(other.join("000000010000000000000001"), b"not the same").unwrap();
    let out = push_as_postgres(&rig.spool(), &other.join("000000010000000000000001"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different content"));

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut mid = 0;
    for delay in [0u64, 20, 40, 60, 80] {
        // Killed while it ships: once one more object is in Swift, after
        // a delay that puts the kill at several points of the next upload.
        let before = rig.archived().len();
        let archiver = Archiver::start(&rig, &config);
        wait_for(Duration::from_secs(30), "an upload", || {
            rig.archived().len() > before
        });
        std::thread::sleep(Duration::from_millis(delay));
        archiver.sigkill();
        let archived = rig.archived();
        let waiting = rig.waiting();
        for name in sums.keys() {
            assert!(
                archived.contains_key(name) || waiting.contains(name),
                "{name} is neither in Swift nor in the spool after a SIGKILL"
            );
        }
        if !waiting.is_empty() && !archived.is_empty() {
            mid += 1;
        }
        for (name, modified) in archived {
            if let Some(before) = seen.insert(name.clone(), modified.clone()) {
                assert_eq!(before, modified, "{name} was uploaded again");
            }
        }
    }
    assert_eq!(mid, 5, "every kill came while the spool was being shipped");
    let report: Value =
        serde_json::from_str(&rig.ok(&config, &["--json", "archive", "--once"])).unwrap();
    assert_eq!(report["failed"], 0, "{report}");
    assert!(rig.waiting().is_empty());
    let archived = rig.archived();
    assert_eq!(
        archived.keys().cloned().collect::<Vec<_>>(),
        sums.keys().cloned().collect::<Vec<_>>()
    );
    for (name, modified) in &seen {
        assert_eq!(&archived[name], modified, "{name} was uploaded again");
    }
    // Each one's content: the first through `volsnap wal fetch` as root
    // with the config, every one read back from Swift and checked.
    let dest = rig.path().join("fetched");
    let first_name = sums.keys().next().unwrap().clone();
    rig.ok(
        &config,
        &["wal", "fetch", &first_name, dest.to_str().unwrap()],
    );
    assert_eq!(sha256(&std::fs::read(&dest).unwrap()), sums[&first_name]);
    for (name, sum) in &sums {
        let reader = rig
            .swift
            .get_object(&rig.archive, &rig.object_name(name))
            .unwrap();
        let meta = volsnap::stream::object::meta_from_metadata(&reader.info.metadata).unwrap();
        let mut plain = Vec::new();
        volsnap::stream::object::open(reader, &mut plain, &meta, None).unwrap();
        assert_eq!(&sha256(&plain), sum, "{name}");
    }

    // Another file under a shipped name: loud, nothing overwritten.
    let out = push_as_postgres(&rig.spool(), &other.join("000000010000000000000001"));
    assert!(out.status.success(), "the spool no longer holds it");
    let before = rig.archived()["000000010000000000000001"].clone();
    let err = rig.fails(&config, &["archive", "--once"]);
    assert!(err.contains("exists with other content"), "{err}");
    assert!(rig.waiting().contains("000000010000000000000001"));
    assert_eq!(rig.archived()["000000010000000000000001"], before);
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len() + 1..].parse().ok())
}

/// Swift away (its endpoint refusing connections, as an unreachable Swift
/// does; the shared test cloud cannot be stopped): the service keeps
/// running and retrying, the spool keeps every file, the lag metric grows;
/// SIGTERM ends it with exit 0. With Swift back, everything is shipped and
/// the lag is 0.
#[test]
fn while_swift_is_away_the_spool_grows_and_the_lag_shows_then_all_is_shipped() {
    let rig = Rig::new("pitr-away");
    let config = rig.config(&[]);
    rig.ok(&config, &["archive", "--once"]);
    let src = rig.path().join("pg_wal");
    std::fs::create_dir(&src).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
    for n in 1..=3u32 {
        let path = src.join(format!("0000000100000000{n:08X}"));
        std::fs::write(&path, vec![n as u8; 1 << 20]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = push_as_postgres(&rig.spool(), &path);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let away = rig.config_with(
        "away",
        &[],
        "[openstack]\nobject_store_endpoint = \"http://127.0.0.1:9/v1/AUTH_away\"\n",
    );
    let prom = rig.path().join("metrics/volsnap-archive.prom");
    let _ = std::fs::remove_file(&prom);
    let archiver = Archiver::start(&rig, &away);
    let mut lag = 0.0;
    wait_for(Duration::from_secs(60), "a lag in the metrics", || {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        lag = metric(&text, "volsnap_archive_lag_seconds").unwrap_or(0.0);
        metric(&text, "volsnap_archive_waiting_files") == Some(3.0) && lag > 0.0
    });
    assert_eq!(rig.waiting().len(), 3, "nothing left the spool");
    assert!(rig.archived().is_empty());
    archiver.stop();

    let report: Value =
        serde_json::from_str(&rig.ok(&config, &["--json", "archive", "--once"])).unwrap();
    assert_eq!(report["uploaded"], 3, "{report}");
    assert!(rig.waiting().is_empty());
    assert_eq!(rig.archived().len(), 3);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        metric(&text, "volsnap_archive_lag_seconds"),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains(
            "volsnap_archive_last_shipped_segment{segment=\"000000010000000000000003\"} 1"
        ),
        "{text}"
    );
}

/// A child process killed on drop (the writer).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Row number → commit time (µs since the epoch), from `track_commit_timestamp`.
fn commit_times(pg: &Pg) -> Vec<(i32, i64)> {
    pg.sql("SELECT i, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint FROM t ORDER BY i")
        .lines()
        .map(|l| {
            let (i, t) = l.split_once('|').unwrap();
            (i.parse().unwrap(), t.parse().unwrap())
        })
        .collect()
}

/// Issue #15 with a Cinder snapshot as the base. PostgreSQL on ext4 on a
/// loop-attached test-cloud volume archives through `volsnap wal push` and
/// `volsnap archive`; a writer commits a row every ~50 ms (a segment switch
/// every 10) while `volsnap backup` takes the Cinder snapshot with the
/// postgresql hook, and goes on after it. A volume made of the snapshot
/// (`restore --snapshot`) is mounted; `restore --until T --snapshot ID
/// --datadir` on it for a T between two commits after the snapshot, and
/// PostgreSQL started on it (crash recovery of the frozen image, then
/// archive recovery) holds exactly the rows committed at or before T.
/// Refused first, each leaving the data directory as it was: no
/// --snapshot; a T before the snapshot; a snapshot that is not good; a T
/// the archive does not reach; an older snapshot's id; a gap in the
/// archive. And after the recovery: a server running on the directory,
/// then the directory shut down, no longer the snapshot's.
#[test]
fn postgresql_recovers_a_cinder_snapshot_to_a_time_between_two_later_commits() {
    let started = Instant::now();
    let rig = Rig::new("pitr-snap");
    let volume = cloud::DataVolume::new(&rig.cloud, "ext4");
    let through = |dir: &Path| {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011)).unwrap();
    };
    through(volume.path().parent().unwrap());
    let mut pg = Pg::start_with_data(&rig.path().join("db"), &volume.path().join("pgdata"));
    let command = format!("{BIN} wal push --spool {} %p", rig.spool().display());
    pg.sql("ALTER SYSTEM SET archive_mode = on");
    pg.sql(&format!("ALTER SYSTEM SET archive_command = '{command}'"));
    pg.sql("ALTER SYSTEM SET archive_timeout = '30s'");
    pg.sql("ALTER SYSTEM SET track_commit_timestamp = on");
    pg.restart();
    let extra = format!(
        "[swift]\ncontainer = {:?}\n[archive]\ncontainer = {:?}\nspool_dir = {:?}\nmax_lag = \"1m\"\n\
         [hooks.env]\nVOLSNAP_PG_HOST = {:?}\nVOLSNAP_PG_PORT = {:?}\n",
        rig.backups,
        rig.archive,
        rig.spool().display().to_string(),
        pg.get("PG_HOST"),
        pg.get("PG_PORT"),
    );
    let config = cloud::cinder_config(
        rig.path(),
        &[&volume],
        &repo().join("hooks"),
        "postgresql",
        &extra,
    );
    let archiver = Archiver::start(&rig, &config);
    wait_for(Duration::from_secs(20), "the spool", || {
        rig.spool().is_dir()
    });

    pg.sql("CREATE TABLE t (i int PRIMARY KEY)");
    for i in 1..=5 {
        pg.sql(&format!("INSERT INTO t VALUES ({i})"));
    }
    // An older snapshot, to be named for the newer one's data.
    let knobs = rig.cloud.knobs();
    let older: Value = serde_json::from_str(&rig.ok(&config, &["--json", "backup"])).unwrap();
    drop(knobs);
    let older_id = older["snapshots"][0]["id"].as_str().unwrap().to_string();
    // The writer runs until told to stop, however slow the machine.
    pg.sql("CREATE TABLE writer_stop (x int)");
    let rows = || pg.sql("SELECT count(*) FROM t").parse::<usize>().unwrap();
    let mut writer = Killed(
        pg.psql(
            "DO $$ DECLARE i int := 6; BEGIN
                 WHILE NOT EXISTS (SELECT 1 FROM writer_stop) LOOP
                     INSERT INTO t VALUES (i); COMMIT;
                     IF i % 10 = 0 THEN PERFORM pg_switch_wal(); END IF;
                     PERFORM pg_sleep(0.05);
                     i := i + 1;
                 END LOOP; END $$",
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_for(Duration::from_secs(30), "the writer", || rows() >= 15);
    let knobs = rig.cloud.knobs(); // no delay or failure injected meanwhile
    let backup: Value = serde_json::from_str(&rig.ok(&config, &["--json", "backup"])).unwrap();
    drop(knobs);
    assert_eq!(backup["consistency"], "application", "{backup}");
    let snapshot_id = backup["snapshots"][0]["id"].as_str().unwrap().to_string();
    let snapshot = rig.cloud.cinder().snapshot(&snapshot_id).unwrap();
    let wal_lsn = snapshot.metadata["wal_lsn"].clone();
    let created =
        volsnap::agent::cinder::parse_cinder_time(snapshot.created_at.as_deref().unwrap()).unwrap();
    // 40 commits (2 s at least) after the snapshot is labelled good, and
    // until 4 s after its creation: T (below, 1.5 s after it) must lie
    // more than volsnap's margin (1 s) before the last segment archived,
    // however quickly the backup ended after the snapshot.
    let at_backup = rows();
    let long_enough = created.checked_add(Duration::from_secs(4)).unwrap();
    wait_for(Duration::from_secs(60), "commits after the backup", || {
        rows() >= at_backup + 40 && volsnap::time::Timestamp::now() > long_enough
    });
    pg.sql("INSERT INTO writer_stop VALUES (1)");
    wait_for(Duration::from_secs(60), "the writer's end", || {
        writer.0.try_wait().unwrap().is_some()
    });
    assert!(writer.0.wait().unwrap().success(), "the writer failed");
    let last = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.sql("SELECT pg_switch_wal()");
    wait_for(Duration::from_secs(60), "the last segment in Swift", || {
        rig.archived().contains_key(&last)
    });

    let commits = commit_times(&pg);
    assert!(
        commits.iter().map(|(i, _)| *i).eq(1..=commits.len() as i32),
        "rows 1..=n"
    );
    // T halfway between two commits more than half a second after the
    // snapshot could hold anything (its creation + 1 s).
    let created_us = created.as_millisecond() * 1000;
    let k = commits
        .iter()
        .position(|(_, t)| *t > created_us + 1_500_000)
        .expect("commits after the snapshot");
    assert!(k + 1 < commits.len(), "the writer stopped too early");
    let t_us = (commits[k].1 + commits[k + 1].1) / 2;
    let until = jiff::Timestamp::from_microsecond(t_us).unwrap();
    let expected: Vec<i32> = commits
        .iter()
        .filter(|(_, t)| *t <= t_us)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(expected.len(), k + 1);
    let redo_bound = pg.sql(&format!("SELECT pg_walfile_name('{wal_lsn}')"));

    // A volume of the snapshot, mounted: the data directory as frozen.
    let made: Value =
        serde_json::from_str(&rig.ok(&config, &["--json", "restore", "--snapshot", &snapshot_id]))
            .unwrap();
    let restored = cloud::DataVolume::existing(&rig.cloud, made["volume_id"].as_str().unwrap());
    through(restored.path().parent().unwrap());
    let datadir = restored.path().join("pgdata");
    let datadir_arg = datadir.to_str().unwrap().to_string();
    let wal_dir = restored.path().join("pgdata.volsnap-wal");
    let until_arg = until.to_string();
    let untouched = |what: &str| {
        assert!(
            !datadir.join("recovery.signal").exists(),
            "{what}: recovery.signal written"
        );
        assert!(
            datadir.join("postmaster.pid").exists(),
            "{what}: postmaster.pid removed"
        );
        assert!(
            !wal_dir.exists(),
            "{what}: {} left behind",
            wal_dir.display()
        );
    };
    let restore = |until: &str, snapshot: Option<&str>| {
        let mut args = vec!["restore", "--until", until, "--datadir", &datadir_arg];
        if let Some(id) = snapshot {
            args.extend(["--snapshot", id]);
        }
        rig.run(&config, &args)
    };
    let refused = |(code, stdout, stderr): (Option<i32>, String, String), want: &str| {
        assert_eq!(code, Some(1), "should be refused:\n{stdout}\n{stderr}");
        assert!(stderr.contains(want), "{want:?} not in:\n{stderr}");
        stderr
    };

    let err = refused(restore(&until_arg, None), "give --snapshot ID");
    assert!(
        err.contains(&snapshot_id),
        "the candidates are named: {err}"
    );
    untouched("no --snapshot");
    let before = jiff::Timestamp::from_microsecond(commits[2].1)
        .unwrap()
        .to_string();
    refused(
        restore(&before, Some(&snapshot_id)),
        &format!("snapshot {snapshot_id} was taken at"),
    );
    untouched("a time before the snapshot");
    // A snapshot of the same volume labelled as a failed run leaves it.
    let cinder = rig.cloud.cinder();
    let mut labels = snapshot.metadata.clone();
    labels.insert("consistency".into(), "none-failed-run".into());
    labels.remove("freeze_ms");
    let bad = cinder
        .create_snapshot(&volsnap::openstack::cinder::NewSnapshot {
            volume_id: volume.id.clone(),
            name: cloud::unique("not-good"),
            metadata: labels,
            ..Default::default()
        })
        .unwrap();
    cinder
        .wait_snapshot(
            &bad.id,
            volsnap::openstack::cinder::Target::Status("available"),
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap();
    refused(restore(&until_arg, Some(&bad.id)), "is not a good backup");
    untouched("a snapshot that is not good");
    let future = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(3600))
        .unwrap()
        .to_string();
    refused(restore(&future, Some(&snapshot_id)), "does not reach");
    untouched("a time not archived yet");
    // The older snapshot's id for this data: its checkpoint is later.
    refused(
        restore(&until_arg, Some(&older_id)),
        &format!("is after snapshot {older_id}'s wal_lsn"),
    );
    untouched("another snapshot's id");
    // A gap: the segment the snapshot's wal_lsn is in (replay needs it)
    // gone from Swift for a while.
    let object = rig.object_name(&redo_bound);
    let mut stored = rig.swift.get_object(&rig.archive, &object).unwrap();
    let metadata = stored.info.metadata.clone();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut stored, &mut body).unwrap();
    rig.swift.delete_object(&rig.archive, &object).unwrap();
    let err = refused(
        restore(&until_arg, Some(&snapshot_id)),
        "gap in the archived WAL",
    );
    assert!(err.contains(&redo_bound), "the gap is named: {err}");
    untouched("a gap");
    rig.swift
        .put_object(&rig.archive, &object, body.into(), &metadata)
        .unwrap();

    let t0 = Instant::now();
    let (code, stdout, stderr) = rig.run(
        &config,
        &[
            "--json",
            "restore",
            "--until",
            &until_arg,
            "--snapshot",
            &snapshot_id,
            "--datadir",
            &datadir_arg,
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    eprintln!("restore --until --snapshot: {:?}, {report}", t0.elapsed());
    assert_eq!(report["base_kind"], "cinder-snapshot");
    assert_eq!(report["base"], snapshot_id.as_str());
    let first = report["first_segment"].as_str().unwrap();
    assert!(
        first <= redo_bound.as_str(),
        "replay starts at the checkpoint's REDO, {first}, not after {redo_bound}"
    );
    assert!(datadir.join("recovery.signal").is_file());
    assert!(
        !datadir.join("postmaster.pid").exists(),
        "the source's pid file is removed"
    );

    let copy = Pg::start_with_data(&rig.path().join("copy"), &datadir);
    wait_for(Duration::from_secs(60), "the promotion", || {
        copy.try_sql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
    });
    let rows = copy.sql("SELECT string_agg(i::text, ',' ORDER BY i) FROM t");
    let want: Vec<String> = expected.iter().map(i32::to_string).collect();
    assert_eq!(rows, want.join(","), "rows committed at or before {until}");
    let log = std::fs::read_to_string(rig.path().join("copy/postgres.log")).unwrap_or_default();
    assert!(log.contains("was interrupted"), "a crash image: {log}");
    assert!(log.contains("recovery stopping before commit"), "{log}");
    // Running: a live server's data directory.
    refused(restore(&until_arg, Some(&snapshot_id)), "is running on");
    drop(copy);
    // Recovered and shut down: no longer the snapshot's data.
    let _ = std::fs::remove_dir_all(&wal_dir);
    refused(
        restore(&until_arg, Some(&snapshot_id)),
        "cluster state \"shut down\"",
    );
    archiver.stop();
    eprintln!("the whole test: {:?}", started.elapsed());
}
