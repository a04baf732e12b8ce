//! Replaying archived binary logs into a restored MariaDB data directory,
//! up to a time: a temporary `mariadbd` on the directory (no network, its
//! own socket, no binary log of its own, the InnoDB options the base
//! needs), `mariadb-binlog
//! --start-position=POS --stop-datetime=TIME FILES… | mariadb` into it,
//! then the server stopped by its PID. Every wait is bounded. The base may
//! be a prepared mariadb-backup (Swift) or a snapshot's copy of a data
//! directory: the server's start does the crash recovery either needs.
//!
//! The time: binary log events carry whole seconds (when their statement
//! started), and `--stop-datetime` stops at the first event at or after
//! it. Given T's whole second S, the replay stops at S: every transaction
//! whose commit was written before S is applied, none from S on — exactly
//! the rows committed at or before T when T is a whole second (a commit at
//! S.000000 aside). With a fraction of a second in T, commits between S
//! and T are left out too: the binary log cannot tell them from those just
//! after T. `mariadb-binlog` reads the time in its own time zone, so it
//! runs with TZ=UTC and is given UTC: the server's time zone plays no part
//! (events hold seconds since the epoch).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::binlog::{Name, Position};
use crate::time::Timestamp;

/// How long the temporary server may take to start (crash recovery of a
/// large InnoDB log included) and to stop.
const START_WAIT: Duration = Duration::from_secs(600);
const STOP_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize)]
pub struct Replayed {
    /// The files replayed, the first from the start position.
    pub files: Vec<String>,
    pub bytes: u64,
    /// What `--stop-datetime` was given (UTC).
    pub stop_datetime: String,
    pub seconds: f64,
}

/// `--stop-datetime` for `until`: its whole second, UTC, as
/// `YYYY-MM-DD HH:MM:SS`.
pub fn stop_datetime(until: Timestamp) -> String {
    Timestamp::from_second(until.as_second())
        .unwrap_or(until)
        .rfc3339(0)
        .trim_end_matches('Z')
        .replacen('T', " ", 1)
}

/// The files in `dir` from `start`'s on, in order; a missing number
/// between two of them is a gap, named.
pub fn files_from(dir: &Path, start: &Name) -> Result<Vec<Name>> {
    let mut names: Vec<Name> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .filter_map(|e| Name::parse(&e.file_name().to_string_lossy()))
        .filter(|n| n.base == start.base && n.number >= start.number)
        .collect();
    names.sort();
    let mut expected = start.clone();
    for n in &names {
        if n.number != expected.number {
            bail!(
                "{}: {expected} is missing (the binary logs go on at {n}): the replay cannot cross the gap",
                dir.display()
            );
        }
        expected = n.next();
    }
    if names.first().map(|n| n.number) != Some(start.number) {
        bail!(
            "{}: no {start}, where the base's position is",
            dir.display()
        );
    }
    Ok(names)
}

/// Replays the binary logs in `binlog_dir` from `start` up to `until` into
/// `datadir`, with a temporary server run as `owner` (the database's OS
/// user, who must own `datadir`) reading only `defaults` (the InnoDB
/// options the data needs: a mariadb-backup's `backup-my.cnf`), or no
/// option file.
pub fn replay(
    datadir: &Path,
    start: &Position,
    binlog_dir: &Path,
    until: Timestamp,
    owner: &str,
    defaults: Option<&Path>,
) -> Result<Replayed> {
    let files = files_from(binlog_dir, &start.file)?;
    let stop = stop_datetime(until);
    if Timestamp::from_second(until.as_second()).ok() != Some(until) {
        log::warn!(
            "binary log events carry whole seconds: the replay stops at {stop} UTC, leaving out \
             commits between it and {until}"
        );
    }
    let began = Instant::now();
    let server = Server::start(datadir, owner, defaults)?;
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|n| binlog_dir.join(n.to_string()))
        .collect();
    let bytes = paths
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let applied = server.apply(&paths, start.pos, &stop);
    let stopped = server.stop();
    applied?;
    stopped?;
    Ok(Replayed {
        files: files.iter().map(Name::to_string).collect(),
        bytes,
        stop_datetime: stop,
        seconds: began.elapsed().as_secs_f64(),
    })
}

/// The first program of `names` on PATH.
fn program(names: &[&str]) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "{} not found: install the MariaDB server and client (mariadb-server, mariadb-client)",
        names.join(" or ")
    )
}

/// A temporary mariadbd; stopped (TERM, then KILL) on drop if not before.
struct Server {
    child: Option<Child>,
    run: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(datadir: &Path, owner: &str, defaults: Option<&Path>) -> Result<Server> {
        let (uid, gid) = super::spool::local_user(owner)
            .ok_or_else(|| anyhow!("no OS user {owner:?} in /etc/passwd to run mariadbd as"))?;
        // Its own directory for socket, pid file and log, short enough for
        // a socket path, writable by the server's user only.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let run =
            std::env::temp_dir().join(format!("volsnap-replay-{}-{nanos:x}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&run)
            .with_context(|| format!("creating {}", run.display()))?;
        nix::unistd::chown(
            &run,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .with_context(|| format!("chown {owner} {}", run.display()))?;
        let socket = run.join("mysqld.sock");
        let log = run.join("mysqld.log");
        let mut server = Server {
            child: None,
            socket: socket.clone(),
            log: log.clone(),
            run: run.clone(),
        };
        let mut command = Command::new(program(&["mariadbd", "mysqld"])?);
        match defaults {
            Some(file) => command.arg(format!("--defaults-file={}", file.display())),
            None => command.arg("--no-defaults"),
        };
        command
            .arg(format!("--user={owner}"))
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", run.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--tmpdir={}", run.display()))
            .args([
                "--skip-networking",
                "--skip-log-bin",
                "--skip-slave-start",
                "--innodb-buffer-pool-size=256M",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not in volsnap's process group: a Ctrl-C reaches volsnap,
            // which stops the server itself.
            .process_group(0);
        let child = command.spawn().context("starting mariadbd")?;
        log::info!(
            "replay: mariadbd (pid {}) on {}, socket {}",
            child.id(),
            datadir.display(),
            socket.display()
        );
        server.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        loop {
            if UnixStream::connect(&socket).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.as_mut().expect("started").try_wait()? {
                server.child = None;
                bail!(
                    "mariadbd on {} exited at start ({status}): {}",
                    datadir.display(),
                    server.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mariadbd on {} not ready after {}s: {}",
                    datadir.display(),
                    START_WAIT.as_secs(),
                    server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 8)
    }

    /// `mariadb-binlog … | mariadb`, both checked.
    fn apply(&self, files: &[PathBuf], pos: u64, stop: &str) -> Result<()> {
        let err_binlog = self.run.join("mariadb-binlog.err");
        let err_client = self.run.join("mariadb.err");
        let mut binlog = Command::new(program(&["mariadb-binlog", "mysqlbinlog"])?)
            .arg("--no-defaults")
            .arg(format!("--start-position={pos}"))
            .arg(format!("--stop-datetime={stop}"))
            .args(files)
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&err_binlog)?)
            .spawn()
            .context("running mariadb-binlog")?;
        let sql = binlog.stdout.take().expect("piped");
        let client = Command::new(program(&["mariadb", "mysql"])?)
            .args(["--no-defaults", "--user=root", "--binary-mode", "--batch"])
            .arg(format!("--socket={}", self.socket.display()))
            .stdin(sql)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err_client)?)
            .status();
        let binlog_status = binlog.wait()?;
        let client = client.context("running mariadb")?;
        let read = |p: &Path| tail(&fs::read_to_string(p).unwrap_or_default(), 5);
        if !client.success() {
            bail!(
                "applying the binary logs failed (mariadb {client}): {}",
                read(&err_client)
            );
        }
        if !binlog_status.success() {
            bail!(
                "mariadb-binlog failed ({binlog_status}): {}",
                read(&err_binlog)
            );
        }
        Ok(())
    }

    /// SIGTERM by PID and a bounded wait for a clean shutdown, then SIGKILL.
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let result = stop_child(&mut child);
        if result.is_ok() {
            let _ = fs::remove_dir_all(&self.run);
        }
        result.map_err(|e| anyhow!("{e}: {}", self.log_tail()))
    }
}

fn stop_child(child: &mut Child) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("mariadbd stopped with {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "mariadbd did not stop within {}s of SIGTERM; killed",
                STOP_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = stop_child(&mut child);
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_is_the_whole_second_in_utc() {
        let t: Timestamp = "2026-12-03T18:00:05.750+01:00".parse().unwrap();
        assert_eq!(stop_datetime(t), "2026-12-03 17:00:05");
        let t: Timestamp = "2026-12-03T17:00:05Z".parse().unwrap();
        assert_eq!(stop_datetime(t), "2026-12-03 17:00:05");
    }

    #[test]
    fn files_from_the_start_on_and_a_gap_named() {
        let dir = tempfile::tempdir().unwrap();
        for n in [3, 4, 5, 7] {
            fs::write(dir.path().join(format!("binlog.{n:06}")), b"x").unwrap();
        }
        fs::write(dir.path().join("binlog.000002"), b"x").unwrap();
        let start = Name::parse("binlog.000003").unwrap();
        let err = files_from(dir.path(), &start).unwrap_err().to_string();
        assert!(err.contains("binlog.000006 is missing"), "{err}");
        fs::remove_file(dir.path().join("binlog.000007")).unwrap();
        let names: Vec<String> = files_from(dir.path(), &start)
            .unwrap()
            .iter()
            .map(Name::to_string)
            .collect();
        assert_eq!(names, ["binlog.000003", "binlog.000004", "binlog.000005"]);
        let err = files_from(dir.path(), &Name::parse("binlog.000009").unwrap());
        assert!(err.is_err());
    }
}
