//! The datastore hooks: `hooks/<datastore> ACTION`, run as root, so the files
//! themselves must be as trustworthy as the binary.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::config::Settings;

pub fn hook_path(settings: &Settings) -> PathBuf {
    settings.hooks.dir.join(settings.datastore.name())
}

/// The configured datastore's hook is trustworthy: its directory, then the
/// file (what `check` and every run ask first).
pub fn check_configured(settings: &Settings) -> Result<(), String> {
    check_dir(&settings.hooks.dir)?;
    check_file(&hook_path(settings))
}

/// Refuses a hooks directory that others could change.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("hooks directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "hooks directory {}: is not a directory",
            dir.display()
        ));
    }
    trusted(dir, &meta, "hooks directory")
}

/// Refuses a hook that is missing, not executable, or that someone other
/// than root could have changed.
pub fn check_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("hook {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("hook {}: is not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "hook {}: is not executable; run: chmod 755 {}",
            path.display(),
            path.display()
        ));
    }
    trusted(path, &meta, "hook")
}

fn trusted(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    if meta.uid() != 0 {
        return Err(format!(
            "{what} {}: is owned by uid {}, not root; volsnap runs it as root; run: chown root: {}",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{what} {}: is writable by group or others (mode {mode:04o}); run: chmod go-w {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// A datastore hook ready to run: its path and the environment it gets.
#[derive(Clone, Debug)]
pub struct Hook {
    pub path: PathBuf,
    pub datastore: String,
    /// `VOLSNAP_*` and `[hooks] env`, passed to every action.
    env: Vec<(String, crate::secret::Secret)>,
    pub timeout: Duration,
    lock_timeout: Duration,
}

/// The environment every hook starts from (`[hooks.env]` may override it).
/// A fixed locale and time zone, so that the output volsnap parses and the
/// times hooks log do not depend on who started volsnap.
pub const HOOK_BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C.UTF-8"),
    ("LC_ALL", "C.UTF-8"),
    ("TZ", "UTC"),
];

/// Everything a [`Hook`] is, for a process that must run it without the
/// config (the watchdog): the config may be edited, broken or gone by then.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HookSpec {
    path: PathBuf,
    datastore: String,
    env: Vec<(String, crate::secret::Revealed)>,
    timeout_ms: u64,
    lock_timeout_ms: u64,
}

impl HookSpec {
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }
}

impl From<&Hook> for HookSpec {
    fn from(hook: &Hook) -> HookSpec {
        HookSpec {
            path: hook.path.clone(),
            datastore: hook.datastore.clone(),
            env: hook
                .env
                .iter()
                .map(|(k, v)| (k.clone(), crate::secret::Revealed(v.clone())))
                .collect(),
            timeout_ms: hook.timeout.as_millis() as u64,
            lock_timeout_ms: hook.lock_timeout.as_millis() as u64,
        }
    }
}

impl From<HookSpec> for Hook {
    fn from(spec: HookSpec) -> Hook {
        Hook {
            path: spec.path,
            datastore: spec.datastore,
            env: spec.env.into_iter().map(|(k, v)| (k, v.0)).collect(),
            timeout: Duration::from_millis(spec.timeout_ms),
            lock_timeout: Duration::from_millis(spec.lock_timeout_ms),
        }
    }
}

/// What a finished action printed.
#[derive(Debug, Default)]
pub struct HookOutput {
    /// `key=value` lines from stdout, in order, later keys winning.
    pub values: BTreeMap<String, String>,
}

impl Hook {
    /// `lock_timeout` becomes `VOLSNAP_TIMEOUT`: how long a hook may keep the
    /// database locked if `thaw` never comes.
    pub fn new(settings: &Settings, lock_timeout: Duration) -> Hook {
        let mounts: Vec<String> = settings
            .mounts
            .iter()
            .map(|m| m.display().to_string())
            .collect();
        let mut env: Vec<(String, crate::secret::Secret)> = settings
            .hooks
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, value) in [
            ("VOLSNAP_DATASTORE", settings.datastore.name().to_string()),
            ("VOLSNAP_MOUNTS", mounts.join(" ")),
            (
                "VOLSNAP_RUNTIME_DIR",
                settings.runtime_dir.display().to_string(),
            ),
            ("VOLSNAP_TIMEOUT", lock_timeout.as_secs().max(1).to_string()),
        ] {
            env.push((key.to_string(), crate::secret::Secret::new(value)));
        }
        Hook {
            path: hook_path(settings),
            datastore: settings.datastore.name().to_string(),
            env,
            timeout: settings.hooks.timeout,
            lock_timeout: Duration::from_secs(lock_timeout.as_secs().max(1)),
        }
    }

    /// How long the hook may hold the database if `thaw` never comes
    /// (`VOLSNAP_TIMEOUT`).
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// The hook runs as root with nothing of volsnap's own environment:
    /// not its `OS_*` credentials, not an `LD_PRELOAD` or `BASH_ENV` that
    /// whoever started volsnap had set. It gets [`HOOK_BASE_ENV`], then
    /// `[hooks.env]` and the `VOLSNAP_*` variables.
    fn command(&self, action: &str) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(action)
            .env_clear()
            .envs(HOOK_BASE_ENV.iter().copied())
            .envs(self.env.iter().map(|(k, v)| (k, v.expose())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so an overrun kills the hook and all it
            // started, and a Ctrl-C meant for volsnap is volsnap's to handle.
            .process_group(0);
        cmd
    }

    /// Runs `freeze`, `thaw` or `check` to completion within the timeout.
    /// Stderr lines go to the log; stdout's `key=value` lines are returned.
    pub fn run(&self, action: &str) -> Result<HookOutput> {
        let started = Instant::now();
        let mut child = self
            .command(action)
            .spawn()
            .with_context(|| format!("cannot run hook {}", self.path.display()))?;
        let pid = child.id();
        let stdout = collect(child.stdout.take().expect("piped"));
        let stderr = log_lines(
            child.stderr.take().expect("piped"),
            format!("hook {} {action}", self.datastore),
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(self.timeout) {
            Ok(status) => {
                status.with_context(|| format!("waiting for hook {}", self.path.display()))?
            }
            Err(_) => {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = rx.recv_timeout(Duration::from_secs(5));
                bail!(
                    "hook {} {action} did not finish within {}s; its process group was killed",
                    self.path.display(),
                    self.timeout.as_secs_f64()
                );
            }
        };
        // A background helper the hook left running (the mysql lock holder)
        // must not hold our pipes open: take what has arrived and go on.
        let stdout = stdout.take(Duration::from_millis(200));
        let last_error = stderr.take(Duration::from_millis(200));
        log::debug!(
            "hook {} {action}: {status} in {} ms",
            self.datastore,
            started.elapsed().as_millis()
        );
        if !status.success() {
            let why = last_error.map_or(String::new(), |line| format!(": {line}"));
            bail!(
                "hook {} {action} failed ({status}){why}",
                self.path.display()
            );
        }
        Ok(HookOutput {
            values: parse_key_values(&String::from_utf8_lossy(&stdout)),
        })
    }
}

/// `key=value` lines; other lines are ignored (and logged at debug).
pub fn parse_key_values(text: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    for line in text.lines() {
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !k.contains(char::is_whitespace) => {
                values.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ if line.trim().is_empty() => {}
            _ => log::debug!("hook output ignored (not key=value): {line}"),
        }
    }
    values
}

/// A reader drained on its own thread; `take` waits a bounded time for it.
struct Pending<T> {
    rx: mpsc::Receiver<T>,
    partial: Arc<Mutex<T>>,
}

impl<T: Clone> Pending<T> {
    fn take(&self, grace: Duration) -> T {
        match self.rx.recv_timeout(grace) {
            Ok(done) => done,
            Err(_) => self
                .partial
                .lock()
                .map(|p| p.clone())
                .unwrap_or_else(|p| p.into_inner().clone()),
        }
    }
}

fn collect(mut reader: impl Read + Send + 'static) -> Pending<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let partial = Arc::new(Mutex::new(Vec::new()));
    let shared = partial.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if let Ok(mut p) = shared.lock() {
                p.extend_from_slice(&chunk[..n]);
            }
        }
        let done = shared.lock().map(|p| p.clone()).unwrap_or_default();
        let _ = tx.send(done);
    });
    Pending { rx, partial }
}

/// Logs each line at info; the last non-empty line is kept for messages.
fn log_lines(reader: impl Read + Send + 'static, prefix: String) -> Pending<Option<String>> {
    let (tx, rx) = mpsc::channel();
    let partial = Arc::new(Mutex::new(None));
    let shared = partial.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(|l| l.ok()) {
            if line.trim().is_empty() {
                continue;
            }
            log::info!("{prefix}: {line}");
            if let Ok(mut p) = shared.lock() {
                *p = Some(line);
            }
        }
        let done = shared.lock().map(|p| p.clone()).unwrap_or_default();
        let _ = tx.send(done);
    });
    Pending { rx, partial }
}

/// The size of the pipe a backup or restore streams through (Linux's
/// default is 64 KiB, `/proc/sys/fs/pipe-max-size` is 1 MiB): both ends wake
/// up 16 times less often per MiB, which shows on a busy machine.
const PIPE_SIZE: i32 = 1 << 20;

fn widen_pipe(fd: std::os::fd::RawFd) {
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        log::debug!("cannot make the hook's pipe {PIPE_SIZE} bytes: {e}");
    }
}

/// How long a streaming hook has after SIGTERM before its process group is
/// killed.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Whether a child that has not been waited for has exited (is a zombie),
/// without reaping it.
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which may hold ") ".
        Ok(stat) => stat
            .rsplit_once(')')
            .map_or(true, |(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// A `backup` or `restore` action running with its data on a pipe. It has
/// `stream_timeout` to finish; past that its process group is killed.
pub struct Streaming {
    child: std::process::Child,
    action: &'static str,
    path: PathBuf,
    datastore: String,
    stderr: Pending<Option<String>>,
    cancel_timer: mpsc::Sender<()>,
    timed_out: Arc<std::sync::atomic::AtomicBool>,
    limit: Duration,
}

impl Hook {
    /// Starts `backup`; read the stream from the returned stdout.
    pub fn spawn_backup(&self, limit: Duration) -> Result<(Streaming, std::process::ChildStdout)> {
        let mut cmd = self.command("backup");
        let mut streaming = self.spawn_streaming(&mut cmd, "backup", limit)?;
        let stdout = streaming.child.stdout.take().expect("piped");
        widen_pipe(stdout.as_raw_fd());
        Ok((streaming, stdout))
    }

    /// Starts `restore`; write the stream to the returned stdin and drop it
    /// only once the whole stream was verified.
    pub fn spawn_restore(&self, limit: Duration) -> Result<(Streaming, std::process::ChildStdin)> {
        let mut cmd = self.command("restore");
        cmd.stdin(Stdio::piped()).stdout(Stdio::null());
        let mut streaming = self.spawn_streaming(&mut cmd, "restore", limit)?;
        let stdin = streaming.child.stdin.take().expect("piped");
        widen_pipe(stdin.as_raw_fd());
        Ok((streaming, stdin))
    }

    fn spawn_streaming(
        &self,
        cmd: &mut Command,
        action: &'static str,
        limit: Duration,
    ) -> Result<Streaming> {
        // A hook bounds its own tools by VOLSNAP_TIMEOUT (pg_basebackup runs
        // under `timeout`): for a stream that must be the stream's limit, not
        // the lock-holding time of `freeze`, or every real backup is killed.
        cmd.env("VOLSNAP_TIMEOUT", limit.as_secs().max(1).to_string());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run hook {} {action}", self.path.display()))?;
        let stderr = log_lines(
            child.stderr.take().expect("piped"),
            format!("hook {} {action}", self.datastore),
        );
        let (cancel_timer, cancelled) = mpsc::channel::<()>();
        let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pid = child.id() as i32;
        let flag = timed_out.clone();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(limit) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        });
        Ok(Streaming {
            child,
            action,
            path: self.path.clone(),
            datastore: self.datastore.clone(),
            stderr,
            cancel_timer,
            timed_out,
            limit,
        })
    }
}

impl Streaming {
    /// Waits for the hook to exit and says whether it succeeded.
    pub fn finish(mut self) -> Result<()> {
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for hook {}", self.path.display()))?;
        self.outcome(status)
    }

    /// For a run that failed: gives the hook `grace` to exit by itself, and
    /// kills it (its process group) otherwise. `Some` is how it exited by
    /// itself — its own failure is often the reason the run failed (a backup
    /// that wrote nothing, a restore that refused its input) — and `None`
    /// means it was killed. The caller keeps the hook's stdin open meanwhile,
    /// so a restore hook never sees the end of an incomplete stream.
    pub fn exit_or_kill(mut self, grace: Duration) -> Option<Result<()>> {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(self.outcome(status)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    self.kill_group();
                    return None;
                }
            }
        }
    }

    fn outcome(&mut self, status: std::process::ExitStatus) -> Result<()> {
        let _ = self.cancel_timer.send(());
        let last_error = self.stderr.take(Duration::from_millis(200));
        if self.timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            bail!(
                "hook {} {} did not finish within {}s (hooks.stream_timeout); its process group was killed",
                self.path.display(),
                self.action,
                self.limit.as_secs()
            );
        }
        if !status.success() {
            let why = last_error.map_or(String::new(), |line| format!(": {line}"));
            bail!(
                "hook {} {} failed ({status}){why}",
                self.path.display(),
                self.action
            );
        }
        log::debug!("hook {} {}: {status}", self.datastore, self.action);
        Ok(())
    }

    /// Stops the hook and everything it started, so that a stream known to
    /// be bad is never taken as complete: SIGTERM to its process group (its
    /// traps may remove temporary files: a spool, a staging directory), and
    /// SIGKILL once the hook has exited or after [`TERM_GRACE`]. A restore
    /// hook's stdin stays open throughout: it never sees the end of the stream.
    pub fn kill(mut self) {
        self.kill_group();
    }

    fn kill_group(&mut self) {
        let pid = self.child.id();
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline && !has_exited(pid) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Not reaped yet (a zombie at most), so the group id is still ours:
        // whatever the hook started and left behind goes too.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
        let _ = self.cancel_timer.send(());
    }
}
