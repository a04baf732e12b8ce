//! `volsnap backup` with the Cinder strategy against the real loopback cloud
//! (tests/cloud), on real ext4 and XFS filesystems on attached volumes.
//! Every DataVolume thaws, unmounts, detaches and deletes when dropped.

#[path = "support/cloud.rs"]
mod cloud;
mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloud::{cinder_config, is_good, output, volsnap, Cloud, DataVolume};
use support::{hooks_dir, run, wait_until};
use volsnap::freeze;
use volsnap::openstack::cinder::{NewSnapshot, Target};

/// A `none`-like hook that records each action (off the frozen filesystems)
/// and prints a key=value on freeze; `freeze_exit` makes freeze fail.
fn marking_hook(dir: &Path, freeze_exit: i32) -> (PathBuf, PathBuf) {
    let marks = dir.join("marks");
    let body = format!(
        "#!/bin/sh\necho \"$1\" >> {marks}\ncase \"$1\" in freeze) echo hook_said=hello; exit {freeze_exit};; esac\nexit 0\n",
        marks = marks.display()
    );
    (hooks_dir(dir, &[("none", &body)]), marks)
}

fn marks(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Writes a file and does not sync it: only a freeze puts it on the disk
/// before the snapshot.
fn write_unsynced(mount: &Path, name: &str, size: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut f = std::fs::File::create(mount.join(name)).unwrap();
    f.write_all(&data).unwrap();
    data
}

fn debugfs_cat(image: &Path, file: &str) -> Vec<u8> {
    Command::new("debugfs")
        .args(["-R", &format!("cat /{file}")])
        .arg(image)
        .output()
        .unwrap()
        .stdout
}

fn needs_recovery(image: &Path) -> bool {
    let out = run("dumpe2fs", &["-h", image.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("Filesystem features:") && l.contains("needs_recovery"))
}

/// The freeze window volsnap's log reports: "thawed after N ms frozen".
fn thawed_after_ms(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.split("thawed after ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'thawed after' line: {stderr}"))
}

fn assert_thawed(mount: &Path) {
    assert!(
        !freeze::is_frozen(mount).unwrap(),
        "{} left frozen",
        mount.display()
    );
}

/// Waits (bounded) until the run has POSTed a snapshot: it is frozen then.
fn wait_for_snapshot(volume: &DataVolume, limit: Duration) {
    let start = Instant::now();
    while volume.snapshots().is_empty() {
        assert!(start.elapsed() < limit, "no snapshot after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
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

#[test]
fn ext4_snapshot_holds_unsynced_data_and_the_unfrozen_control_does_not() {
    let cloud = Cloud::load();
    let _knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 0);
    let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");

    let data = write_unsynced(volume.path(), "data.bin", 3 << 20);
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["--json", "backup"]));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_thawed(volume.path());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["strategy"], "cinder");
    assert_eq!(report["consistency"], "filesystem");
    let freeze_ms = report["freeze_ms"].as_u64().unwrap();
    let lock_ms = report["lock_ms"].as_u64().unwrap();
    assert!(freeze_ms > 0 && lock_ms >= freeze_ms, "{report}");
    assert!(report["total_ms"].as_u64().unwrap() >= lock_ms);
    let snap = &report["snapshots"][0];
    assert_eq!(snap["status"], "available");
    assert_eq!(snap["volume_id"], volume.id.as_str());
    assert_eq!(snap["mount"], volume.path().display().to_string());
    assert_eq!(marks(&marks_file), "freeze\nthaw\n");

    let stored = cloud
        .cinder()
        .snapshot(snap["id"].as_str().unwrap())
        .unwrap();
    for (k, v) in [
        ("created_by", "volsnap"),
        ("consistency", "filesystem"),
        ("datastore", "none"),
        ("hook_said", "hello"),
    ] {
        assert_eq!(
            stored.metadata.get(k).map(String::as_str),
            Some(v),
            "{:?}",
            stored.metadata
        );
    }
    assert_eq!(stored.metadata["freeze_ms"], freeze_ms.to_string());
    assert_eq!(
        stored.metadata["volsnap_version"],
        env!("CARGO_PKG_VERSION")
    );

    let image = cloud.snapshot_image(&stored.id);
    assert!(
        debugfs_cat(&image, "data.bin") == data,
        "the snapshot lacks the unsynced data"
    );
    assert!(
        !needs_recovery(&image),
        "a frozen snapshot must not need journal recovery"
    );
    run("e2fsck", &["-fn", image.to_str().unwrap()]);

    // The control: the same kind of write, a snapshot without the freeze.
    let control = write_unsynced(volume.path(), "control.bin", 3 << 20);
    let cinder = cloud.cinder();
    let raw = cinder
        .create_snapshot(&NewSnapshot {
            volume_id: volume.id.clone(),
            name: cloud::unique("control"),
            ..NewSnapshot::default()
        })
        .unwrap();
    cinder
        .wait_snapshot(
            &raw.id,
            Target::Status("available"),
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap();
    let image = cloud.snapshot_image(&raw.id);
    let has_data = debugfs_cat(&image, "control.bin") == control;
    assert!(
        !has_data || needs_recovery(&image),
        "the unfrozen control snapshot looks as good as a frozen one: this test could not tell them apart"
    );
}

/// Mounts a copy of a snapshot image (XFS replays its log on mount).
struct ImageCopy {
    dir: tempfile::TempDir,
    device: String,
}

impl ImageCopy {
    fn mount(image: &Path) -> ImageCopy {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.img");
        run(
            "cp",
            &[
                "--sparse=always",
                image.to_str().unwrap(),
                copy.to_str().unwrap(),
            ],
        );
        let device =
            String::from_utf8(run("losetup", &["--find", "--show", copy.to_str().unwrap()]).stdout)
                .unwrap()
                .trim()
                .to_string();
        let m = ImageCopy { dir, device };
        std::fs::create_dir(m.path()).unwrap();
        run(
            "mount",
            &["-o", "nouuid", &m.device, m.path().to_str().unwrap()],
        );
        m
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for ImageCopy {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn xfs_snapshot_mounts_with_the_data() {
    let cloud = Cloud::load();
    let _knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "xfs");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, _) = marking_hook(tmp.path(), 0);
    let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
    let data = write_unsynced(volume.path(), "data.bin", 2 << 20);
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["--json", "backup"]));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_thawed(volume.path());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let image = cloud.snapshot_image(report["snapshots"][0]["id"].as_str().unwrap());
    let copy = ImageCopy::mount(&image);
    assert!(
        std::fs::read(copy.path().join("data.bin")).unwrap() == data,
        "the XFS snapshot lacks the data"
    );
}

#[test]
fn sigkill_while_frozen_the_watchdog_thaws_within_a_second() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 0);
    let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
    knobs.delay(6.0);
    let mut child = volsnap(&cloud, &config, &["backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_snapshot(&volume, Duration::from_secs(20));
    assert!(
        tmp.path().join("run/frozen.json").exists(),
        "the frozen set is recorded before the freeze"
    );
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    loop {
        if !freeze::is_frozen(volume.path()).unwrap() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "still frozen 1 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let thawed_after = killed.elapsed();
    // The hook's thaw runs right after the filesystems thaw.
    let start = Instant::now();
    let log_file = tmp.path().join("run/watchdog.log");
    while !(marks(&marks_file).contains("thaw") && log_file.exists())
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        marks(&marks_file),
        "freeze\nthaw\n",
        "thawed after {thawed_after:?}"
    );
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("volsnap exited without thawing"), "{log}");
    assert!(!tmp.path().join("run/frozen.json").exists());
}

#[test]
fn max_freeze_shorter_than_the_snapshot_thaws_at_the_deadline_and_deletes_it() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 0);
    let config = cinder_config(
        tmp.path(),
        &[&volume],
        &hooks,
        "none",
        "[cinder]\nmax_freeze = \"1s\"\n",
    );
    knobs.delay(4.0);
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["backup"]));
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("still creating at max_freeze (1 s)"),
        "{stderr}"
    );
    assert!(stderr.contains("deleted this run's snapshots"), "{stderr}");
    let frozen_ms = thawed_after_ms(&stderr);
    assert!(
        (1000..1500).contains(&frozen_ms),
        "frozen {frozen_ms} ms with max_freeze 1 s"
    );
    assert_thawed(volume.path());
    assert!(
        volume.snapshots().is_empty(),
        "the run's snapshot was left behind"
    );
    assert_eq!(marks(&marks_file), "freeze\nthaw\n");
}

#[test]
fn a_snapshot_in_error_fails_the_run_and_is_deleted() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 0);
    let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
    knobs.fail_next();
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["backup"]));
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("went to status \"error\""), "{stderr}");
    assert_thawed(volume.path());
    assert!(
        volume.snapshots().is_empty(),
        "the failed snapshot was left behind"
    );
    assert_eq!(marks(&marks_file), "freeze\nthaw\n");
}

#[test]
fn sigterm_and_sigint_mid_freeze_thaw_at_once_and_clean_up() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    for signal in ["-TERM", "-INT"] {
        let tmp = tempfile::tempdir().unwrap();
        let (hooks, marks_file) = marking_hook(tmp.path(), 0);
        let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
        knobs.delay(3.0);
        let mut child = volsnap(&cloud, &config, &["backup"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_snapshot(&volume, Duration::from_secs(20));
        run("kill", &[signal, &child.id().to_string()]);
        let signalled = Instant::now();
        // Thawed at once: well before the snapshot could finish.
        loop {
            if !freeze::is_frozen(volume.path()).unwrap() {
                break;
            }
            assert!(
                signalled.elapsed() < Duration::from_secs(1),
                "{signal}: still frozen after 1 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = wait_exit(&mut child, Duration::from_secs(60));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(1), "{signal}: {stderr}");
        assert!(stderr.contains("interrupted by a signal"), "{stderr}");
        assert!(
            volume.snapshots().is_empty(),
            "{signal}: the run's snapshot was left behind"
        );
        assert_eq!(marks(&marks_file), "freeze\nthaw\n");
    }
}

#[test]
fn a_second_run_exits_75_while_the_first_holds_the_lock() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, _) = marking_hook(tmp.path(), 0);
    let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
    knobs.delay(2.0);
    let mut first = volsnap(&cloud, &config, &["backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_snapshot(&volume, Duration::from_secs(20));
    let (code, _, stderr) = output(&mut volsnap(&cloud, &config, &["backup"]));
    assert_eq!(code, Some(75), "{stderr}");
    assert!(
        stderr.contains(&format!("(pid {})", first.id())),
        "{stderr}"
    );
    assert_eq!(
        wait_exit(&mut first, Duration::from_secs(60)).code(),
        Some(0)
    );
    assert_eq!(volume.snapshots().len(), 1);
}

#[test]
fn bad_input_freezes_and_creates_nothing() {
    let cloud = Cloud::load();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 0);
    let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
    // A typo in a key.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout = ", "timeuot = ");
    std::fs::write(&config, text).unwrap();
    let (code, _, stderr) = output(&mut volsnap(&cloud, &config, &["backup"]));
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("hooks.timeuot: unknown field"), "{stderr}");
    // The root filesystem, reached through a symlink the config cannot see through.
    let link = tmp.path().join("root");
    std::os::unix::fs::symlink("/", &link).unwrap();
    std::fs::write(
        &config,
        format!(
            "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [{:?}]\nruntime_dir = {:?}\n[hooks]\ndir = {:?}\n",
            link.display().to_string(),
            tmp.path().join("run").display().to_string(),
            hooks.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, stderr) = output(&mut volsnap(&cloud, &config, &["backup"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is the root filesystem"), "{stderr}");
    assert!(volume.snapshots().is_empty());
    assert_eq!(marks(&marks_file), "", "no hook may run on bad input");
    assert_thawed(volume.path());
}

#[test]
fn hook_failure_aborts_or_takes_a_crash_consistent_snapshot() {
    let cloud = Cloud::load();
    let _knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");

    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 1);
    let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
    let (code, _, stderr) = output(&mut volsnap(&cloud, &config, &["backup"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no snapshot was taken (on_hook_failure = \"abort\")"),
        "{stderr}"
    );
    assert!(volume.snapshots().is_empty());
    assert_eq!(
        marks(&marks_file),
        "freeze\nthaw\n",
        "thaw runs once freeze was attempted"
    );

    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 1);
    let prom = tmp.path().join("volsnap.prom");
    let config = cinder_config(
        tmp.path(),
        &[&volume],
        &hooks,
        "none",
        &format!(
            "metrics_file = {:?}\n[cinder]\non_hook_failure = \"crash-consistent\"\n",
            prom.display().to_string()
        ),
    );
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["--json", "backup"]));
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["consistency"], "crash");
    // The metrics file says so: exit 3, the freeze window, and no success yet.
    let metrics = std::fs::read_to_string(&prom).unwrap();
    let labels = "{strategy=\"cinder\",datastore=\"none\"}";
    assert!(
        metrics.contains(&format!("volsnap_backup_last_run_exit_code{labels} 3\n")),
        "{metrics}"
    );
    let freeze_ms = report["freeze_ms"].as_u64().unwrap();
    assert!(
        metrics.contains(&format!(
            "volsnap_backup_last_run_freeze_seconds{labels} {:.3}\n",
            freeze_ms as f64 / 1000.0
        )),
        "{metrics}"
    );
    assert!(!metrics.contains("last_success"), "{metrics}");
    let snaps = volume.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].metadata["consistency"], "crash");
    assert_eq!(marks(&marks_file), "freeze\nthaw\n");
    assert_thawed(volume.path());
}

#[test]
fn dry_run_prints_the_plan_and_touches_nothing() {
    let cloud = Cloud::load();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 0);
    let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["backup", "--dry-run"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("snapshot volume {} (in-use)", volume.id)),
        "{stdout}"
    );
    assert!(volume.snapshots().is_empty());
    assert_eq!(marks(&marks_file), "");

    // It takes no lock: with a run holding it, it still plans, and says so.
    let held = volsnap::runtime::RunLock::acquire(&tmp.path().join("run")).unwrap();
    let (code, stdout, stderr) = output(&mut volsnap(
        &cloud,
        &config,
        &["--json", "backup", "--dry-run"],
    ));
    assert_eq!(code, Some(0), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["lock_holder_pid"], std::process::id(), "{stdout}");
    assert_eq!(plan["plan"]["volumes"][0]["volume_id"], volume.id.as_str());
    drop(held);
}

#[test]
fn list_restore_and_prune() {
    let cloud = Cloud::load();
    let _knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, _) = marking_hook(tmp.path(), 0);
    let config = cinder_config(
        tmp.path(),
        &[&volume],
        &hooks,
        "none",
        "[retention]\nkeep_last = 1\nafter_backup = false\n",
    );
    let first = write_unsynced(volume.path(), "first.bin", 1 << 20);
    assert_eq!(
        output(&mut volsnap(&cloud, &config, &["backup"])).0,
        Some(0)
    );
    // Cinder's created_at has one-second resolution.
    std::thread::sleep(Duration::from_millis(1100));
    write_unsynced(volume.path(), "second.bin", 1 << 20);
    assert_eq!(
        output(&mut volsnap(&cloud, &config, &["backup"])).0,
        Some(0)
    );

    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["--json", "list"]));
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let ours: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["volume_id"] == volume.id.as_str())
        .collect();
    assert_eq!(ours.len(), 2, "{stdout}");
    assert!(
        ours[0]["created_at"].as_str() >= ours[1]["created_at"].as_str(),
        "newest first: {stdout}"
    );
    assert_eq!(ours[0]["consistency"], "filesystem");
    let (code, human, _) = output(&mut volsnap(&cloud, &config, &["list"]));
    assert_eq!(code, Some(0));
    assert!(
        human.contains("CONSISTENCY") && human.contains(ours[0]["id"].as_str().unwrap()),
        "{human}"
    );

    // The older snapshot into a new volume: it has the first file only.
    let older = ours[1]["id"].as_str().unwrap().to_string();
    let (code, stdout, stderr) = output(&mut volsnap(
        &cloud,
        &config,
        &["restore", "--snapshot", &older],
    ));
    assert_eq!(code, Some(0), "{stderr}");
    let restored_id = stdout.trim().to_string();
    {
        let restored = DataVolume::existing(&cloud, &restored_id);
        assert!(std::fs::read(restored.path().join("first.bin")).unwrap() == first);
        assert!(!restored.path().join("second.bin").exists());
    }

    let (code, stdout, _) = output(&mut volsnap(&cloud, &config, &["prune", "--dry-run"]));
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(&format!("would delete snapshot {older}")),
        "{stdout}"
    );
    assert_eq!(volume.snapshots().len(), 2);
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["--json", "prune"]));
    assert_eq!(code, Some(0), "{stderr}");
    let pruned: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(pruned["deleted"], serde_json::json!([older]));
    let start = Instant::now();
    while volume.snapshots().len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "prune did not delete"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `none`-like hook that marks each action as it starts and then sleeps
/// (`freeze_sleep`, `thaw_sleep` seconds), so a test can kill volsnap while
/// the hook runs.
fn sleeping_hook(dir: &Path, freeze_sleep: u32, thaw_sleep: u32) -> (PathBuf, PathBuf) {
    let marks = dir.join("marks");
    let body = format!(
        "#!/bin/sh\necho \"$1\" >> {marks}\ncase \"$1\" in freeze) sleep {freeze_sleep};; thaw) sleep {thaw_sleep};; esac\nexit 0\n",
        marks = marks.display()
    );
    (hooks_dir(dir, &[("none", &body)]), marks)
}

/// SIGKILL at three points of a run — while the hook's freeze holds the
/// database, while Cinder is still making the snapshot (with the config
/// broken meanwhile), and after the thaw but before the labels (while the
/// hook's thaw runs) — leaves the filesystem writable within 1 s, the
/// hook's thaw run within 2 s, no snapshot labelled good, and nothing of
/// the killed run after the next backup, whose own snapshot is good.
#[test]
fn sigkill_at_each_step_leaves_nothing_labelled_good() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    for (step, freeze_sleep, thaw_sleep, delay) in [
        ("hook freeze", 3, 0, 0.0),
        ("snapshot creating", 0, 0, 3.0),
        ("hook thaw", 0, 3, 0.0),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (hooks, marks_file) = sleeping_hook(tmp.path(), freeze_sleep, thaw_sleep);
        let config = cinder_config(tmp.path(), &[&volume], &hooks, "none", "");
        knobs.delay(delay);
        let mut child = volsnap(&cloud, &config, &["backup"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        match step {
            "hook freeze" => {
                wait_until(Duration::from_secs(20), step, || {
                    marks(&marks_file) == "freeze\n"
                });
            }
            "snapshot creating" => {
                wait_for_snapshot(&volume, Duration::from_secs(20));
                // Editing, breaking or deleting the config changes nothing.
                std::fs::write(&config, "not = = toml\n").unwrap();
            }
            _ => {
                wait_until(Duration::from_secs(20), step, || {
                    marks(&marks_file).contains("thaw")
                });
            }
        }
        child.kill().unwrap();
        let killed = Instant::now();
        child.wait().unwrap();
        let writable = wait_until(Duration::from_secs(1), "writable", || {
            !freeze::is_frozen(volume.path()).unwrap()
        });
        wait_until(Duration::from_secs(2), "hook thaw", || {
            marks(&marks_file).contains("thaw")
        });
        let released = killed.elapsed();
        // Let Cinder finish what it was making: a torn copy would be made now.
        knobs.clear();
        let cinder = cloud.cinder();
        for s in volume.snapshots() {
            cinder
                .wait_snapshot(
                    &s.id,
                    volsnap::openstack::cinder::Target::Status("available"),
                    Instant::now() + Duration::from_secs(30),
                )
                .unwrap();
        }
        let left = volume.snapshots();
        assert!(
            left.iter().all(|s| !is_good(s)),
            "{step}: a killed run's snapshot is labelled good: {left:?}"
        );
        if step != "hook freeze" {
            assert_eq!(left.len(), 1, "{step}: {left:?}");
            assert_eq!(left[0].metadata["consistency"], "pending", "{step}");
        }

        let tmp2 = tempfile::tempdir().unwrap();
        let (hooks2, _) = marking_hook(tmp2.path(), 0);
        let next = cinder_config(tmp2.path(), &[&volume], &hooks2, "none", "");
        // The killed run's lock was its own runtime dir's: run the next one
        // from the same directory, as a timer would.
        let text = std::fs::read_to_string(&next).unwrap().replace(
            &tmp2.path().join("run").display().to_string(),
            &tmp.path().join("run").display().to_string(),
        );
        std::fs::write(&next, text).unwrap();
        let (code, stdout, stderr) = output(&mut volsnap(&cloud, &next, &["--json", "backup"]));
        assert_eq!(code, Some(0), "{step}: {stdout}\n{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let removed: Vec<String> =
            serde_json::from_value(report["removed_leftovers"].clone()).unwrap();
        let expected: Vec<String> = left.iter().map(|s| s.id.clone()).collect();
        assert_eq!(removed, expected, "{step}: {stderr}");
        let after = volume.snapshots();
        assert_eq!(after.len(), 1, "{step}: {after:?}");
        assert!(is_good(&after[0]), "{step}: {after:?}");
        assert_eq!(after[0].id, report["snapshots"][0]["id"].as_str().unwrap());
        assert_eq!(
            after[0].metadata["freeze_ms"],
            report["freeze_ms"].to_string()
        );
        eprintln!("{step}: writable {writable:?} and hook thaw {released:?} after SIGKILL");
        let cinder = cloud.cinder();
        cinder.delete_snapshot(&after[0].id).unwrap();
        cinder
            .wait_snapshot(
                &after[0].id,
                volsnap::openstack::cinder::Target::Gone,
                Instant::now() + Duration::from_secs(60),
            )
            .unwrap();
    }
}

/// A relay between volsnap and Cinder that can stop answering, the way a
/// Cinder API that was SIGSTOPped does: connections are accepted, requests
/// read, and nothing comes back. The real Cinder cannot be stopped here — it
/// serves every test running at the same time — so this is the one fault
/// injected between them. When it answers again, the requests it held are
/// dropped (the client sees the connection close) and new ones go through.
struct Blackhole {
    endpoint: String,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Blackhole {
    fn in_front_of_cinder(cloud: &Cloud) -> Blackhole {
        use std::net::{SocketAddr, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let url = cloud.get("VOLSNAP_TESTCLOUD_CINDER_URL").to_string();
        let upstream: SocketAddr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hang = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (hang2, stop2) = (hang.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let copy =
                    |mut from: TcpStream, mut to: TcpStream, hang: Option<Arc<AtomicBool>>| {
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16384];
                            loop {
                                let n = match std::io::Read::read(&mut from, &mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if let Some(hang) = &hang {
                                    if hang.load(Ordering::SeqCst) {
                                        // Held, never forwarded; dropped once it answers again.
                                        while hang.load(Ordering::SeqCst) {
                                            std::thread::sleep(Duration::from_millis(10));
                                        }
                                        break;
                                    }
                                }
                                if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = from.shutdown(std::net::Shutdown::Both);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    };
                copy(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(hang2.clone()),
                );
                copy(server, client, None);
            }
        });
        Blackhole {
            endpoint: cloud
                .get("VOLSNAP_TESTCLOUD_CINDER_ENDPOINT")
                .replace(&url, &format!("http://{addr}")),
            hang,
            stop,
        }
    }

    fn hang(&self, on: bool) {
        self.hang.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.hang(false);
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Cinder stops answering right after the 202: the window still ends at
/// max_freeze (volsnap thaws, not its watchdog), the report says so, and the
/// snapshot Cinder goes on to make is never labelled good.
#[test]
fn cinder_silent_mid_window_thaws_at_max_freeze_and_labels_nothing() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let volume = DataVolume::new(&cloud, "ext4");
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 0);
    let hole = Blackhole::in_front_of_cinder(&cloud);
    let config = cinder_config(
        tmp.path(),
        &[&volume],
        &hooks,
        "none",
        &format!(
            "[cinder]\nmax_freeze = \"2s\"\n[openstack]\nblock_storage_endpoint = {:?}\n",
            hole.endpoint
        ),
    );
    knobs.delay(5.0);
    let mut child = volsnap(&cloud, &config, &["backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_snapshot(&volume, Duration::from_secs(20));
    hole.hang(true);
    let silent = Instant::now();
    wait_until(Duration::from_secs(4), "thawed", || {
        !freeze::is_frozen(volume.path()).unwrap()
    });
    let thawed = silent.elapsed();
    hole.hang(false);
    let status = wait_exit(&mut child, Duration::from_secs(120));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("still creating at max_freeze (2 s)"),
        "{stderr}"
    );
    assert!(!stderr.contains("the watchdog thawed"), "{stderr}");
    let frozen_ms = thawed_after_ms(&stderr);
    assert!(
        (2000..2600).contains(&frozen_ms),
        "frozen {frozen_ms} ms with max_freeze 2 s; {thawed:?} after Cinder went silent"
    );
    assert_eq!(marks(&marks_file), "freeze\nthaw\n");
    knobs.clear();
    let left = volume.snapshots();
    assert!(left.iter().all(|s| !is_good(s)), "{left:?}");
}

/// Milliseconds into the day of a log line's timestamp ("…T17:01:14.204Z …").
fn log_ms(line: &str) -> u64 {
    let t = line
        .get(11..23)
        .unwrap_or_else(|| panic!("no time in {line}"));
    let n: Vec<u64> = t
        .split([':', '.'])
        .map(|x| x.parse().unwrap_or_else(|_| panic!("no time in {line}")))
        .collect();
    ((n[0] * 60 + n[1]) * 60 + n[2]) * 1000 + n[3]
}

/// How long a request took, from its log line ("… -> 200 (83 ms, req-…)").
fn request_ms(line: &str) -> u64 {
    line.split(" -> 200 (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"))
}

/// Three volumes under one freeze, each snapshot held `creating` by the
/// driver past the 2 s where the polls used to back off: the run is good
/// (every snapshot seen `available` before the thaw, each image clean), and
/// the window asks Cinder ONE request per poll round (the run's list while
/// several are pending), rounds 10 ms apart however long it lasts.
#[test]
fn several_volumes_under_one_freeze_are_polled_with_one_request_per_round() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let volumes: Vec<DataVolume> = (0..3).map(|_| DataVolume::new(&cloud, "ext4")).collect();
    let tmp = tempfile::tempdir().unwrap();
    let (hooks, marks_file) = marking_hook(tmp.path(), 0);
    let refs: Vec<&DataVolume> = volumes.iter().collect();
    let config = cinder_config(tmp.path(), &refs, &hooks, "none", "");
    let data: Vec<Vec<u8>> = volumes
        .iter()
        .map(|v| write_unsynced(v.path(), "data.bin", 1 << 20))
        .collect();

    knobs.delay(3.0);
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &config, &["-v", "--json", "backup"]));
    knobs.clear();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for v in &volumes {
        assert_thawed(v.path());
    }
    assert_eq!(marks(&marks_file), "freeze\nthaw\n");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["consistency"], "filesystem");
    let snaps = report["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 3, "{report}");
    let cinder = cloud.cinder();
    for (v, d) in volumes.iter().zip(&data) {
        let snap = snaps
            .iter()
            .find(|s| s["volume_id"] == v.id.as_str())
            .unwrap_or_else(|| panic!("no snapshot of {}: {report}", v.id));
        let stored = cinder.snapshot(snap["id"].as_str().unwrap()).unwrap();
        assert!(is_good(&stored), "{:?}", stored.metadata);
        let image = cloud.snapshot_image(&stored.id);
        assert!(
            debugfs_cat(&image, "data.bin") == *d,
            "the snapshot of {} lacks the unsynced data",
            v.id
        );
        assert!(!needs_recovery(&image), "{} needs recovery", stored.id);
    }

    // The window's polls, from the -v log: after the last 202, before the thaw.
    let lines: Vec<&str> = stderr.lines().collect();
    let last_202 = lines
        .iter()
        .rposition(|l| l.contains(" POST ") && l.contains("/snapshots -> 202"))
        .unwrap_or_else(|| panic!("no 202 in {stderr}"));
    let thawed = lines
        .iter()
        .position(|l| l.contains("DEBUG thawed "))
        .unwrap_or_else(|| panic!("no thaw in {stderr}"));
    let polls: Vec<&str> = lines[last_202..thawed]
        .iter()
        .filter(|l| l.contains(" GET ") && l.contains("/snapshots"))
        .copied()
        .collect();
    let rounds = stderr
        .split(" polls (")
        .filter_map(|s| s.rsplit(' ').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or_else(|| panic!("no breakdown in {stderr}"));
    assert_eq!(polls.len(), rounds, "one request per round:\n{stderr}");
    assert!(rounds >= 10, "{rounds} rounds in 3 s:\n{stderr}");
    assert!(
        polls[0].contains("/snapshots/detail?") && polls[0].contains("volsnap_run"),
        "the first round lists the run's snapshots: {}",
        polls[0]
    );
    // The pause between rounds is what the log's clock shows between two
    // answers, less the second request's own time: flat at 10 ms (the old
    // schedule's grew to 170 ms and more past 2 s). Loose, for a busy machine.
    let longest = polls
        .windows(2)
        .map(|w| (log_ms(w[1]) - log_ms(w[0])).saturating_sub(request_ms(w[1])))
        .max()
        .unwrap();
    assert!(longest < 150, "a pause of {longest} ms:\n{stderr}");
}
