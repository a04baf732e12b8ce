//! The hook runner: environment, key=value output, failures and deadlines.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::hooks_dir;
use volsnap::hooks::Hook;

fn hook(dir: &Path, body: &str, timeout: &str) -> Hook {
    let hooks = hooks_dir(dir, &[("none", body)]);
    let config = dir.join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "datastore = \"none\"\nmounts = [\"/srv/a\", \"/srv/b\"]\nruntime_dir = {:?}\n[hooks]\ndir = {:?}\ntimeout = {timeout:?}\n[hooks.env]\nMY_SETTING = \"on\"\n",
            dir.join("run").display().to_string(),
            hooks.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let settings = volsnap::config::load(&config).unwrap();
    Hook::new(&settings, Duration::from_secs(42))
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[test]
fn passes_the_environment_and_returns_key_values() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hook(
        tmp.path(),
        "#!/bin/sh\necho \"action=$1\"\necho \"mounts=$VOLSNAP_MOUNTS\"\necho \"timeout=$VOLSNAP_TIMEOUT\"\necho \"ds=$VOLSNAP_DATASTORE\"\necho \"mine=$MY_SETTING\"\necho 'not a pair'\necho \"rt=$VOLSNAP_RUNTIME_DIR\"\n",
        "5s",
    );
    let out = h.run("freeze").unwrap();
    assert_eq!(out.values["action"], "freeze");
    assert_eq!(out.values["mounts"], "/srv/a /srv/b");
    assert_eq!(out.values["timeout"], "42");
    assert_eq!(out.values["ds"], "none");
    assert_eq!(out.values["mine"], "on");
    assert_eq!(
        out.values["rt"],
        tmp.path().join("run").display().to_string()
    );
    assert_eq!(out.values.len(), 6);
}

#[test]
fn a_failing_hook_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hook(
        tmp.path(),
        "#!/bin/sh\necho 'first' >&2\necho 'cannot connect to server' >&2\nexit 3\n",
        "5s",
    );
    let err = h.run("freeze").unwrap_err().to_string();
    assert!(err.contains("hook"), "{err}");
    assert!(
        err.contains("freeze failed (exit status: 3): cannot connect to server"),
        "{err}"
    );
}

#[test]
fn an_overrunning_hook_and_its_children_are_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("child.pid");
    let h = hook(
        tmp.path(),
        &format!(
            "#!/bin/sh\nsleep 30 &\necho $! > {}\nwait\n",
            pidfile.display()
        ),
        "500ms",
    );
    let start = Instant::now();
    let err = h.run("freeze").unwrap_err().to_string();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains("did not finish within 0.5s; its process group was killed"),
        "{err}"
    );
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    while alive(child) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(child), "the hook's child {child} survived");
}

#[test]
fn a_background_helper_holding_stdout_does_not_hang_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("bg.pid");
    // Like a lock holder that forgot to close stdout: it outlives the hook.
    let h = hook(
        tmp.path(),
        &format!(
            "#!/bin/sh\nsetsid sleep 5 &\necho $! > {}\necho k=v\n",
            pidfile.display()
        ),
        "5s",
    );
    let start = Instant::now();
    let out = h.run("freeze").unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.values["k"], "v");
    let bg: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bg),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// `VOLSNAP_TIMEOUT` is the bound of the action the hook runs: for the
/// streams `backup` and `restore` the stream's limit (hooks.stream_timeout),
/// which a hook may put on its own tools (pg_basebackup runs under
/// `timeout "$VOLSNAP_TIMEOUT"`); `freeze` keeps its lock time. A stream
/// that outlasts hooks.timeout is not cut.
#[test]
fn streams_see_their_own_bound_as_volsnap_timeout() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let h = hook(
        tmp.path(),
        "#!/bin/sh\ncase \"$1\" in\nbackup) sleep 1.5; echo \"timeout=$VOLSNAP_TIMEOUT\" ;;\nrestore) sleep 1.5; [ \"$(cat)\" = \"in\" ] && [ \"$VOLSNAP_TIMEOUT\" = 300 ] ;;\n*) echo \"timeout=$VOLSNAP_TIMEOUT\" ;;\nesac\n",
        "1s",
    );
    assert_eq!(h.run("freeze").unwrap().values["timeout"], "42");

    let (running, mut stdout) = h.spawn_backup(Duration::from_secs(300)).unwrap();
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    running.finish().unwrap();
    assert_eq!(text.trim(), "timeout=300");

    let (running, mut stdin) = h.spawn_restore(Duration::from_secs(300)).unwrap();
    stdin.write_all(b"in").unwrap();
    drop(stdin);
    running.finish().unwrap();
}
