//! The watchdog: a second process that thaws what a run froze when the run
//! cannot. A frozen filesystem survives the process that froze it — SIGKILL,
//! a panic with `panic=abort`, an OOM kill — and hangs every writer on it, so
//! the thaw cannot live only in the agent.
//!
//! The agent re-executes its own binary as `volsnap __watchdog` in a new
//! session (a Ctrl-C or a closed terminal does not reach it) and talks over
//! the child's stdin/stdout: one JSON line with the plan, `armed` back once
//! the watchdog holds descriptors on every mount, and at the end `disarm`.
//! If stdin closes without `disarm` (the agent died), if the deadline passes,
//! or if the watchdog itself is told to stop, it thaws every mount of the run,
//! runs the hook's `thaw`, and records what it did.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use crate::freeze::{self, ThawError};
use crate::hooks::{Hook, HookSpec};
use crate::runtime;

/// The watchdog's deadline trails the agent's own by this much, so that in
/// the ordinary case the agent thaws and reports, and the watchdog is the
/// backstop.
pub const GRACE: Duration = Duration::from_millis(500);
/// How long the agent waits for `armed` before refusing to freeze.
const ARM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the watchdog looks at its clock and its signals.
const TICK_MS: u16 = 10;

#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    /// The run it guards (what it records when it fires).
    pub run: String,
    pub runtime_dir: PathBuf,
    pub mounts: Vec<PathBuf>,
    /// Fire after this long even if the agent is alive, until it says
    /// `freezing` (it is armed before the hook's `freeze`, so that a run
    /// killed while the database is held is released at once too)...
    pub deadline_ms: u64,
    /// ...and this long after `freezing`: the freeze's own deadline.
    pub max_freeze_ms: u64,
    /// The hook whose `thaw` it runs when it fires: carried whole, so that
    /// editing, breaking or deleting the config mid-run changes nothing.
    /// `None` when the hook's `freeze` was never attempted.
    pub hook: Option<HookSpec>,
    /// The run lock's descriptor, inherited: the lock stays held until the
    /// watchdog has thawed and released the database, so no run starts in
    /// between and the killed run's snapshots read as its until then.
    #[serde(default)]
    pub lock_fd: Option<i32>,
}

/// What a watchdog that fired did, as it told the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// When its FITHAWs were done.
    pub thawed_unix_ms: u128,
    pub summary: String,
}

/// The agent's end of an armed watchdog. Dropping it without `disarm` closes
/// the pipe, which makes the watchdog fire.
pub struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: mpsc::Receiver<String>,
}

impl Watchdog {
    pub fn arm(plan: &Plan) -> Result<Watchdog> {
        let exe =
            std::env::current_exe().context("cannot find volsnap's own binary for the watchdog")?;
        Watchdog::arm_with(&exe, plan)
    }

    /// `arm` with the binary named: tests are not the volsnap binary.
    pub fn arm_with(exe: &Path, plan: &Plan) -> Result<Watchdog> {
        let mut cmd = Command::new(exe);
        cmd.arg("__watchdog")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let lock_fd = plan.lock_fd;
        // SAFETY: setsid and fcntl are async-signal-safe. setsid puts the
        // watchdog in its own session so terminal signals and hangups aimed
        // at volsnap miss it; clearing close-on-exec (in the child only)
        // hands it the run lock's descriptor.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if let Some(fd) = lock_fd {
                    if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("cannot start the watchdog")?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let replies = read_lines(stdout);
        let mut line = serde_json::to_string(plan)?;
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .context("cannot talk to the watchdog")?;
        let mut dog = Watchdog {
            child,
            stdin: Some(stdin),
            replies,
        };
        match dog.replies.recv_timeout(ARM_TIMEOUT) {
            Ok(reply) if reply == "armed" => Ok(dog),
            Ok(reply) => {
                dog.abandon();
                bail!("the watchdog could not arm: {reply}")
            }
            Err(_) => {
                dog.abandon();
                bail!("the watchdog did not arm within {}s", ARM_TIMEOUT.as_secs())
            }
        }
    }

    /// Tells the watchdog the FIFREEZEs start now: its deadline becomes
    /// `max_freeze_ms` from here.
    pub fn freezing(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().expect("armed watchdog has stdin");
        stdin
            .write_all(b"freezing\n")
            .and_then(|_| stdin.flush())
            .context("the watchdog is gone")
    }

    /// The watchdog process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the watchdog the run thawed by itself. Returns what the watchdog
    /// did if it had already fired (the deadline passed first).
    pub fn disarm(mut self) -> Result<Option<Fired>> {
        let mut stdin = self.stdin.take().expect("armed watchdog has stdin");
        let sent = stdin.write_all(b"disarm\n").and_then(|_| stdin.flush());
        let reply = self.replies.recv_timeout(Duration::from_secs(5));
        drop(stdin);
        let _ = wait_bounded(&mut self.child, Duration::from_secs(5));
        match reply {
            Ok(r) if r == "disarmed" => Ok(None),
            Ok(r) => Ok(Some(parse_fired(&r))),
            Err(_) => match sent {
                Err(e) => Err(anyhow!("the watchdog is gone: {e}")),
                Ok(()) => Err(anyhow!("the watchdog did not answer disarm")),
            },
        }
    }

    /// The agent's way of saying "fire now": closing the pipe. Waits for the
    /// watchdog to finish its thaw (bounded).
    pub fn fire_and_wait(mut self, limit: Duration) -> Option<String> {
        drop(self.stdin.take());
        let reply = self.replies.recv_timeout(limit).ok();
        let _ = wait_bounded(&mut self.child, limit);
        reply
    }

    fn abandon(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fired UNIX_MS SUMMARY`, the watchdog's reply once it thawed.
fn parse_fired(reply: &str) -> Fired {
    let rest = reply.trim_start_matches("fired ");
    match rest.split_once(' ') {
        Some((ms, summary)) if ms.parse::<u128>().is_ok() => Fired {
            thawed_unix_ms: ms.parse().unwrap_or(0),
            summary: summary.to_string(),
        },
        _ => Fired {
            thawed_unix_ms: runtime::now_unix_ms(),
            summary: rest.to_string(),
        },
    }
}

fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line.trim().to_string()).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Result<()> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("watchdog pid {} did not exit", child.id())
}

/// Why the watchdog fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    AgentGone,
    Deadline,
    Signal,
}

impl Trigger {
    fn describe(self) -> &'static str {
        match self {
            Trigger::AgentGone => "volsnap exited without thawing (killed or crashed)",
            Trigger::Deadline => "max_freeze passed",
            Trigger::Signal => "the watchdog was told to stop",
        }
    }
}

/// The watchdog process's body (`volsnap __watchdog`).
pub fn run_child() -> Result<()> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut first = String::new();
    stdin
        .lock()
        .read_line(&mut first)
        .context("reading the watchdog plan")?;
    let plan: Plan = match serde_json::from_str(&first) {
        Ok(plan) => plan,
        Err(e) => {
            // Position only: the plan carries the hook's environment.
            let why = format!("line {} column {}", e.line(), e.column());
            let _ = writeln!(stdout, "bad plan at {why}");
            bail!("bad watchdog plan at {why}");
        }
    };
    if let Some(fd) = plan.lock_fd {
        // Held, not handed on: the hook's thaw must not keep the lock.
        // SAFETY: fcntl on a descriptor this process owns by inheritance.
        unsafe {
            nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut opened = Vec::new();
    for mount in &plan.mounts {
        match freeze::open_mount(mount) {
            Ok(file) => opened.push((mount.clone(), file)),
            Err(e) => {
                let _ = writeln!(stdout, "{e:#}");
                bail!("{e:#}");
            }
        }
    }
    let mut deadline = Instant::now() + Duration::from_millis(plan.deadline_ms);
    writeln!(stdout, "armed")?;
    stdout.flush()?;

    let max_freeze = Duration::from_millis(plan.max_freeze_ms);
    let trigger = match watch(&stop, &mut deadline, max_freeze)? {
        None => {
            let _ = writeln!(stdout, "disarmed");
            return Ok(());
        }
        Some(trigger) => trigger,
    };
    let mut summary = format!("{}: {}", trigger.describe(), thaw(&opened));
    let thawed_unix_ms = runtime::now_unix_ms();
    let _ = writeln!(stdout, "fired {thawed_unix_ms} {summary}");
    let _ = stdout.flush();
    let hook_is_mine = match trigger {
        // The agent is alive and runs the hook's thaw itself once it sees its
        // deadline; the watchdog does it only if the agent goes without
        // disarming.
        Trigger::Deadline => {
            let limit = plan.hook.as_ref().map_or(Duration::ZERO, |h| {
                Duration::from_millis(h.timeout_ms()) + Duration::from_secs(5)
            });
            watch(&stop, &mut (Instant::now() + limit), Duration::ZERO)?.is_some()
        }
        Trigger::AgentGone | Trigger::Signal => true,
    };
    if let (true, Some(spec)) = (hook_is_mine, plan.hook) {
        summary.push_str(match Hook::from(spec).run("thaw") {
            Ok(_) => "; hook thaw ran",
            Err(e) => {
                log::error!("watchdog: hook thaw failed: {e:#}");
                "; hook thaw FAILED (see the log)"
            }
        });
    }
    log::error!("watchdog: run {}: {summary}", plan.run);
    runtime::note_watchdog(&plan.runtime_dir, &format!("run {}: {summary}", plan.run));
    runtime::write_watchdog_record(
        &plan.runtime_dir,
        &runtime::WatchdogRecord {
            run: plan.run.clone(),
            fired_unix_ms: thawed_unix_ms,
            summary: summary.clone(),
        },
    );
    if !summary.contains("FAILED: cannot thaw") {
        let _ = runtime::clear_frozen(&plan.runtime_dir);
    }
    Ok(())
}

/// Waits for `disarm` (None), or for a reason to fire; `freezing` moves the
/// deadline to `max_freeze` from now.
fn watch(
    stop: &AtomicBool,
    deadline: &mut Instant,
    max_freeze: Duration,
) -> Result<Option<Trigger>> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Some(Trigger::Signal));
        }
        if Instant::now() >= *deadline {
            return Ok(Some(Trigger::Deadline));
        }
        let ready = {
            let fd = stdin.as_fd();
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(TICK_MS)) {
                Ok(n) => n > 0,
                Err(nix::errno::Errno::EINTR) => false,
                Err(e) => return Err(e.into()),
            }
        };
        if !ready {
            continue;
        }
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => return Ok(Some(Trigger::AgentGone)),
            Ok(_) if line.trim() == "disarm" => return Ok(None),
            Ok(_) if line.trim() == "freezing" => *deadline = Instant::now() + max_freeze,
            Ok(_) => log::warn!("watchdog: ignoring {:?}", line.trim()),
        }
    }
}

/// Thaws every mount of the run (in reverse order) and says what happened.
fn thaw(opened: &[(PathBuf, File)]) -> String {
    freeze::thaw_in_reverse(opened)
        .into_iter()
        .map(|(mount, result)| match result {
            Ok(()) => format!("thawed {}", mount.display()),
            Err(ThawError::NotFrozen(_)) => format!("{} was not frozen", mount.display()),
            Err(e) => format!("FAILED: {e}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
