//! The freeze module, the watchdog and `volsnap thaw` on real ext4 and XFS
//! filesystems on loop devices. Nothing here writes to a frozen filesystem;
//! every LoopFs thaws, unmounts and detaches when dropped, even on failure.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{hooks_dir, LoopFs};
use volsnap::freeze::{self, Frozen, ThawError};
use volsnap::hooks::{Hook, HookSpec};
use volsnap::runtime::{self, FrozenRecord, RunLock};
use volsnap::watchdog::{Plan, Watchdog};

fn open(mounts: &[&Path]) -> Vec<(PathBuf, std::fs::File)> {
    mounts
        .iter()
        .map(|m| (m.to_path_buf(), freeze::open_mount(m).unwrap()))
        .collect()
}

/// Freezes with no guard, as a killed agent leaves it; the descriptor is
/// closed so the filesystem can still be unmounted at the end.
fn freeze_unguarded(mount: &Path) {
    let file = freeze::open_mount(mount).unwrap();
    freeze::freeze_fd(&file, mount).unwrap();
}

fn wait_thawed(mount: &Path, limit: Duration) -> Duration {
    let start = Instant::now();
    while freeze::is_frozen(mount).unwrap() {
        assert!(
            start.elapsed() < limit,
            "{} still frozen after {limit:?}",
            mount.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn freeze_and_thaw_ext4_and_xfs() {
    let ext4 = LoopFs::new("ext4", 64);
    let xfs = LoopFs::new("xfs", 300);
    freeze::syncfs(ext4.path()).unwrap();
    let frozen = Frozen::freeze(open(&[ext4.path(), xfs.path()])).unwrap();
    assert!(freeze::is_frozen(ext4.path()).unwrap());
    assert!(freeze::is_frozen(xfs.path()).unwrap());
    frozen.thaw().unwrap();
    assert!(!freeze::is_frozen(ext4.path()).unwrap());
    assert!(!freeze::is_frozen(xfs.path()).unwrap());
}

#[test]
fn freezing_a_frozen_filesystem_is_ebusy_and_freezes_nothing_else() {
    let a = LoopFs::new("ext4", 64);
    let b = LoopFs::new("ext4", 64);
    let theirs = Frozen::freeze(open(&[b.path()])).unwrap();
    // a before b: a gets frozen, b fails, and a must be thawed again.
    let err = Frozen::freeze(open(&[a.path(), b.path()])).err().unwrap();
    assert!(
        err.to_string()
            .contains("already frozen by someone else (EBUSY)"),
        "{err:#}"
    );
    assert!(!freeze::is_frozen(a.path()).unwrap());
    assert!(freeze::is_frozen(b.path()).unwrap());
    theirs.thaw().unwrap();
}

/// The mounts freeze at once (a thread each): all of them, or none when one
/// fails, whichever froze before or after the failing one.
#[test]
fn eight_filesystems_freeze_together_all_or_nothing() {
    let fss: Vec<LoopFs> = (0..8).map(|_| LoopFs::new("ext4", 64)).collect();
    let paths: Vec<&Path> = fss.iter().map(|f| f.path()).collect();
    let frozen = Frozen::freeze(open(&paths)).unwrap();
    for p in &paths {
        assert!(freeze::is_frozen(p).unwrap(), "{}", p.display());
    }
    frozen.thaw().unwrap();
    for p in &paths {
        assert!(!freeze::is_frozen(p).unwrap(), "{}", p.display());
    }

    let theirs = Frozen::freeze(open(&[paths[3]])).unwrap();
    let err = Frozen::freeze(open(&paths)).err().unwrap();
    assert!(
        err.to_string().contains(&format!(
            "cannot freeze {}: it is already frozen by someone else (EBUSY)",
            paths[3].display()
        )),
        "{err:#}"
    );
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(freeze::is_frozen(p).unwrap(), i == 3, "{}", p.display());
    }
    theirs.thaw().unwrap();
}

#[test]
fn thaw_of_an_unfrozen_filesystem_is_reported() {
    let fs = LoopFs::new("ext4", 64);
    let file = freeze::open_mount(fs.path()).unwrap();
    match freeze::thaw_fd(&file, fs.path()) {
        Err(ThawError::NotFrozen(m)) => assert_eq!(m, fs.path()),
        other => panic!("expected NotFrozen, got {other:?}"),
    }
    // A guard whose mount someone else thawed says so.
    let frozen = Frozen::freeze(open(&[fs.path()])).unwrap();
    freeze::thaw_fd(&file, fs.path()).unwrap();
    let errors = frozen.thaw().unwrap_err();
    assert!(
        matches!(errors[..], [ThawError::NotFrozen(_)]),
        "{errors:?}"
    );
}

/// In a build that unwinds (the tests, the library used elsewhere). The
/// release binary has `panic = "abort"` and ends on any panic (main.rs's
/// `end_on_panic`): there the watchdog thaws, as after a SIGKILL
/// (`the_watchdog_thaws_when_its_agent_goes_away`).
#[test]
fn the_guard_thaws_on_panic() {
    let fs = LoopFs::new("ext4", 64);
    let mount = fs.path().to_path_buf();
    let result = std::panic::catch_unwind(move || {
        let _frozen = Frozen::freeze(open(&[&mount])).unwrap();
        panic!("boom inside the frozen window");
    });
    assert!(result.is_err());
    assert!(!freeze::is_frozen(fs.path()).unwrap());
}

#[test]
fn freezing_tmpfs_is_an_error_not_success() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("t");
    std::fs::create_dir(&mnt).unwrap();
    support::run("mount", &["-t", "tmpfs", "tmpfs", mnt.to_str().unwrap()]);
    let result = Frozen::freeze(open(&[&mnt]));
    let _ = Command::new("umount").arg(&mnt).status();
    let err = result.err().expect("tmpfs cannot be frozen");
    assert!(
        err.to_string().contains("does not support freezing"),
        "{err:#}"
    );
}

/// A config and a `none` hook whose `thaw` leaves a mark off the frozen fs.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    runtime: PathBuf,
    marks: PathBuf,
}

fn setup(mount: &Path, hook_exit: i32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let hook = format!(
        "#!/bin/sh\necho \"$1 $VOLSNAP_DATASTORE $VOLSNAP_MOUNTS\" >> {}\nexit {hook_exit}\n",
        marks.display()
    );
    let hooks = hooks_dir(dir.path(), &[("none", &hook)]);
    let runtime = dir.path().join("run");
    let config = dir.path().join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [{:?}]\nruntime_dir = {:?}\n[hooks]\ndir = {:?}\ntimeout = \"5s\"\n",
            mount.display().to_string(),
            runtime.display().to_string(),
            hooks.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    runtime::ensure_dir(&runtime).unwrap();
    Setup {
        dir,
        config,
        runtime,
        marks,
    }
}

fn marks(s: &Setup) -> String {
    std::fs::read_to_string(&s.marks).unwrap_or_default()
}

/// The watchdog's plan carries the hook whole, built from the config now:
/// the watchdog never reads the config.
fn plan(s: &Setup, mount: &Path, deadline: Duration) -> Plan {
    let settings = volsnap::config::load(&s.config).unwrap();
    Plan {
        run: "20261203T000000Z-1".into(),
        runtime_dir: s.runtime.clone(),
        mounts: vec![mount.to_path_buf()],
        deadline_ms: deadline.as_millis() as u64,
        max_freeze_ms: deadline.as_millis() as u64,
        hook: Some(HookSpec::from(&Hook::new(
            &settings,
            settings.hooks.timeout,
        ))),
        lock_fd: None,
    }
}

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_volsnap"))
}

#[test]
fn the_watchdog_thaws_when_its_agent_goes_away() {
    let fs = LoopFs::new("ext4", 64);
    let s = setup(fs.path(), 0);
    let dog = Watchdog::arm_with(exe(), &plan(&s, fs.path(), Duration::from_secs(60))).unwrap();
    // What SIGKILL of the agent does: no guard runs, the pipe closes. The
    // config broken meanwhile changes nothing: the plan has the hook.
    std::fs::write(&s.config, "this is not = = toml\n").unwrap();
    freeze_unguarded(fs.path());
    let start = Instant::now();
    let reply = dog.fire_and_wait(Duration::from_secs(5)).unwrap();
    let took = wait_thawed(fs.path(), Duration::from_secs(1));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "thawed after {took:?}"
    );
    assert!(reply.contains("volsnap exited without thawing"), "{reply}");
    assert!(
        reply.contains(&format!("thawed {}", fs.path().display())),
        "{reply}"
    );
    assert_eq!(marks(&s), format!("thaw none {}\n", fs.path().display()));
    let log = std::fs::read_to_string(s.runtime.join("watchdog.log")).unwrap();
    assert!(log.contains("hook thaw ran"), "{log}");
}

#[test]
fn the_watchdog_thaws_at_its_deadline() {
    let fs = LoopFs::new("xfs", 300);
    let s = setup(fs.path(), 0);
    // The watchdog's clock starts once it has read the plan: after this.
    let armed = Instant::now();
    let dog = Watchdog::arm_with(exe(), &plan(&s, fs.path(), Duration::from_millis(300))).unwrap();
    let frozen = Frozen::freeze(open(&[fs.path()])).unwrap();
    wait_thawed(fs.path(), Duration::from_secs(3));
    let took = armed.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "thawed too early: {took:?} after arming"
    );
    // The agent's own thaw now finds nothing frozen, and says so.
    assert!(matches!(
        frozen.thaw().unwrap_err()[..],
        [ThawError::NotFrozen(_)]
    ));
    let fired = dog.disarm().unwrap().expect("the watchdog fired");
    assert!(fired.summary.starts_with("max_freeze passed"), "{fired:?}");
    assert!(
        fired
            .summary
            .contains(&format!("thawed {}", fs.path().display())),
        "{fired:?}"
    );
    let now = volsnap::runtime::now_unix_ms();
    assert!(
        fired.thawed_unix_ms <= now && now - fired.thawed_unix_ms < 5000,
        "{fired:?}"
    );
    // The agent is alive and disarmed: the hook's thaw is its own to run.
    assert_eq!(marks(&s), "");
}

#[test]
fn the_run_lock_outlives_a_killed_run_until_its_watchdog_is_done() {
    let fs = LoopFs::new("ext4", 64);
    let s = setup(fs.path(), 0);
    let lock = RunLock::acquire(&s.runtime).unwrap();
    let mut p = plan(&s, fs.path(), Duration::from_secs(60));
    p.lock_fd = Some(lock.fd());
    let dog = Watchdog::arm_with(exe(), &p).unwrap();
    // The agent dies: its descriptor of the lock closes, without the unlock
    // a clean drop would do.
    let fd = lock.fd();
    std::mem::forget(lock);
    nix::unistd::close(fd).unwrap();
    let err = RunLock::acquire(&s.runtime)
        .err()
        .expect("the watchdog holds the lock");
    assert_eq!(volsnap::exit::code_for(&err), 75);
    freeze_unguarded(fs.path());
    dog.fire_and_wait(Duration::from_secs(5)).unwrap();
    wait_thawed(fs.path(), Duration::from_secs(1));
    assert!(marks(&s).starts_with("thaw"), "{}", marks(&s));
    RunLock::acquire(&s.runtime).expect("released once the watchdog is done");
    let record = runtime::read_watchdog_record(&s.runtime).unwrap();
    assert_eq!(record.run, "20261203T000000Z-1");
}

#[test]
fn a_disarmed_watchdog_does_nothing() {
    let fs = LoopFs::new("ext4", 64);
    let s = setup(fs.path(), 0);
    let dog = Watchdog::arm_with(exe(), &plan(&s, fs.path(), Duration::from_secs(60))).unwrap();
    let frozen = Frozen::freeze(open(&[fs.path()])).unwrap();
    frozen.thaw().unwrap();
    assert_eq!(dog.disarm().unwrap(), None);
    assert_eq!(marks(&s), "");
    assert!(!s.runtime.join("watchdog.log").exists());
}

#[test]
fn sigterm_to_the_watchdog_thaws_first() {
    let fs = LoopFs::new("ext4", 64);
    let s = setup(fs.path(), 0);
    let dog = Watchdog::arm_with(exe(), &plan(&s, fs.path(), Duration::from_secs(60))).unwrap();
    freeze_unguarded(fs.path());
    // This test's own watchdog: other tests run theirs at the same time.
    support::run("kill", &["-TERM", &dog.pid().to_string()]);
    wait_thawed(fs.path(), Duration::from_secs(2));
    let reply = dog
        .fire_and_wait(Duration::from_secs(5))
        .unwrap_or_default();
    assert!(reply.contains("the watchdog was told to stop"), "{reply}");
    assert!(marks(&s).starts_with("thaw"), "{}", marks(&s));
}

#[test]
fn one_run_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = RunLock::acquire(dir.path()).unwrap();
    let err = RunLock::acquire(dir.path()).err().unwrap();
    assert_eq!(volsnap::exit::code_for(&err), 75);
    assert!(
        err.to_string()
            .contains(&format!("(pid {})", std::process::id())),
        "{err:#}"
    );
    drop(first);
    RunLock::acquire(dir.path()).unwrap();
}

/// A run is live while the lock file names it and somebody holds the lock;
/// asking never takes the lock (a run starting meanwhile is not turned away).
#[test]
fn a_run_is_live_while_it_holds_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock");
    let mut lock = RunLock::acquire(dir.path()).unwrap();
    lock.name_run("run-a").unwrap();
    assert!(runtime::run_is_live(&path, "run-a"));
    assert!(!runtime::run_is_live(&path, "run-b"));
    assert_eq!(runtime::lock_holder(dir.path()), Some(std::process::id()));
    drop(lock);
    assert!(!runtime::run_is_live(&path, "run-a"), "a dead run's lock");
    assert_eq!(runtime::lock_holder(dir.path()), None);
    let mut next = RunLock::acquire(dir.path()).unwrap();
    next.name_run("run-c").unwrap();
    assert!(
        !runtime::run_is_live(&path, "run-a"),
        "a later run holds it"
    );
    assert!(runtime::run_is_live(&path, "run-c"));
}

#[test]
fn volsnap_thaw_repairs_what_the_record_says() {
    let fs = LoopFs::new("ext4", 64);
    let s = setup(fs.path(), 0);
    let volsnap = |args: &[&str]| {
        Command::new(exe())
            .arg("--config")
            .arg(&s.config)
            .args(args)
            .output()
            .unwrap()
    };
    let out = volsnap(&["thaw"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing is recorded as frozen"));
    // --json: one object, nothing else on stdout.
    let out = volsnap(&["--json", "thaw"]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["ok"], true, "{answer}");

    runtime::write_frozen(
        &s.runtime,
        &FrozenRecord {
            pid: 1,
            config: s.config.clone(),
            mounts: vec![fs.path().to_path_buf()],
            started_unix_ms: runtime::now_unix_ms(),
        },
    )
    .unwrap();
    freeze_unguarded(fs.path());

    // Not while a run holds the lock.
    let held = RunLock::acquire(&s.runtime).unwrap();
    let out = volsnap(&["thaw"]);
    assert_eq!(out.status.code(), Some(75), "{:?}", out);
    assert!(freeze::is_frozen(fs.path()).unwrap());
    drop(held);

    let out = volsnap(&["thaw"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("thawed {}", fs.path().display())),
        "{stdout}"
    );
    assert!(!freeze::is_frozen(fs.path()).unwrap());
    assert!(marks(&s).starts_with("thaw"));
    assert!(runtime::read_frozen(&s.runtime).unwrap().is_none());
    drop(s.dir);
}

/// One filesystem under two paths (a bind mount): `check` refuses it, as the
/// backup's plan does, before the second FIFREEZE would fail with EBUSY.
#[test]
fn one_filesystem_listed_twice_is_refused_before_anything_runs() {
    let fs = LoopFs::new("ext4", 64);
    let s = setup(fs.path(), 0);
    let bind = s.dir.path().join("bind");
    std::fs::create_dir(&bind).unwrap();
    support::run(
        "mount",
        &[
            "--bind",
            fs.path().to_str().unwrap(),
            bind.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        &format!("mounts = [{:?}]", fs.path().display().to_string()),
        &format!(
            "mounts = [{:?}, {:?}]",
            fs.path().display().to_string(),
            bind.display().to_string()
        ),
    );
    std::fs::write(&s.config, text).unwrap();
    let out = Command::new(exe())
        .args(["--config", s.config.to_str().unwrap(), "check", "--offline"])
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&bind).status();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("is the same filesystem as"), "{stdout}");
    assert_eq!(marks(&s), "");
}
