//! `volsnap hook freeze|thaw` and the binary run as `fsfreeze-hook`: what
//! qemu-ga calls. (qemu-ga itself drives these in the datastore tests.)

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::hooks_dir;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    marks: PathBuf,
    log: PathBuf,
}

fn setup(hook_exit: i32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let log = dir.path().join("volsnap.log");
    let hook = format!(
        "#!/bin/sh\necho \"$1 timeout=$VOLSNAP_TIMEOUT\" >> {}\necho binlog_pos=42\necho 'said on stderr' >&2\nexit {hook_exit}\n",
        marks.display()
    );
    let hooks = hooks_dir(dir.path(), &[("mysql", &hook)]);
    let config = dir.path().join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "datastore = \"mysql\"\nruntime_dir = {:?}\nlog_file = {:?}\n[cinder]\nmax_freeze = \"20s\"\n[hooks]\ndir = {:?}\ntimeout = \"5s\"\n",
            dir.path().join("run").display().to_string(),
            log.display().to_string(),
            hooks.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    Setup {
        dir,
        config,
        marks,
        log,
    }
}

fn run(exe: &Path, s: &Setup, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env("VOLSNAP_CONFIG", &s.config)
        .output()
        .unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn hook_freeze_and_thaw_run_the_datastore_hook_and_log_to_the_file() {
    let s = setup(0);
    let exe = Path::new(env!("CARGO_BIN_EXE_volsnap"));
    let out = run(exe, &s, &["hook", "freeze"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(exe, &s, &["hook", "thaw"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The lock may be held for max_freeze + the hook timeout.
    assert_eq!(read(&s.marks), "freeze timeout=25\nthaw timeout=25\n");
    let log = read(&s.log);
    assert!(log.contains("hook mysql freeze: said on stderr"), "{log}");
    assert!(log.contains("mysql freeze done binlog_pos=42"), "{log}");
    assert!(log.contains("mysql thaw done"), "{log}");
    assert_eq!(
        read(&s.dir.path().join("run/fsfreeze-hook.last")),
        "binlog_pos=42\n"
    );
}

#[test]
fn a_failing_hook_fails_the_freeze_and_says_so_in_the_log() {
    let s = setup(3);
    let out = run(
        Path::new(env!("CARGO_BIN_EXE_volsnap")),
        &s,
        &["hook", "freeze"],
    );
    assert_eq!(out.status.code(), Some(1));
    let log = read(&s.log);
    assert!(log.contains("error: hook"), "{log}");
    assert!(
        log.contains("freeze failed (exit status: 3): said on stderr"),
        "{log}"
    );
}

#[test]
fn invoked_as_fsfreeze_hook() {
    let s = setup(0);
    let link = s.dir.path().join("fsfreeze-hook");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_volsnap"), &link).unwrap();
    let out = run(&link, &s, &["freeze"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(read(&s.marks), "freeze timeout=25\n");
}

/// Any name ending in `fsfreeze-hook` is hook mode: `thaw` is qemu-ga's,
/// not the repair command `volsnap thaw`.
#[test]
fn invoked_as_volsnap_fsfreeze_hook() {
    let s = setup(0);
    let link = s.dir.path().join("volsnap-fsfreeze-hook");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_volsnap"), &link).unwrap();
    for action in ["freeze", "thaw"] {
        let out = run(&link, &s, &[action]);
        assert_eq!(out.status.code(), Some(0), "{action}: {out:?}");
    }
    assert!(
        read(&s.marks).starts_with("freeze timeout=25\nthaw"),
        "{}",
        read(&s.marks)
    );
}

/// Installed, not configured: quiesce nothing and exit 0, so that qemu-ga
/// freezes as it would without volsnap (and says why in syslog).
#[test]
fn without_a_config_the_hook_does_nothing_and_succeeds() {
    let s = setup(0);
    let exe = Path::new(env!("CARGO_BIN_EXE_volsnap"));
    for action in ["freeze", "thaw"] {
        let out = Command::new(exe)
            .args(["hook", action])
            .env("VOLSNAP_CONFIG", s.dir.path().join("absent.toml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{action}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("volsnap is not configured"),
            "{out:?}"
        );
    }
    assert_eq!(read(&s.marks), "");
}

#[test]
fn freeze_is_refused_while_a_backup_runs() {
    let s = setup(0);
    let _held = volsnap::runtime::RunLock::acquire(&s.dir.path().join("run")).unwrap();
    let out = run(
        Path::new(env!("CARGO_BIN_EXE_volsnap")),
        &s,
        &["hook", "freeze"],
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert_eq!(read(&s.marks), "");
}

#[test]
fn freeze_records_the_quiesce_and_thaw_clears_it() {
    let s = setup(0);
    let exe = Path::new(env!("CARGO_BIN_EXE_volsnap"));
    let record = s.dir.path().join("run/fsfreeze-hook.quiesced");
    let out = run(exe, &s, &["hook", "freeze"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let q = volsnap::runtime::read_quiesced(&s.dir.path().join("run"))
        .unwrap()
        .expect("a freeze leaves the quiesce recorded");
    // Until the hook's lock releases by itself: max_freeze + hooks.timeout.
    assert_eq!(q.until_unix_ms - q.since_unix_ms, 25_000);
    let out = run(exe, &s, &["hook", "thaw"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!record.exists());
}

#[test]
fn thaw_during_a_backup_leaves_the_backups_database_lock_alone() {
    let s = setup(0);
    let _held = volsnap::runtime::RunLock::acquire(&s.dir.path().join("run")).unwrap();
    let out = run(
        Path::new(env!("CARGO_BIN_EXE_volsnap")),
        &s,
        &["hook", "thaw"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(read(&s.marks), "", "the datastore hook's thaw ran");
    assert!(
        read(&s.log).contains("the database lock is the backup's"),
        "{}",
        read(&s.log)
    );
}
