//! `[cinder] backup`: Cinder backups (cinder-backup's Swift driver, into the
//! test cloud's own Swift) of every good run's snapshots, against the real
//! loopback cloud (tests/cloud, which runs cinder-backup since it has
//! `VOLSNAP_TESTCLOUD_BACKUP_DRIVER` in env.sh). Restores are attached with
//! losetup (attach.sh), checked with `e2fsck -fn` and compared file by file.
//!
//! A full backup of a 1 GiB volume takes cinder-backup 20-40 s here, so the
//! scenarios share runs, and hold one lock: the fault knobs are files the
//! whole cloud reads.

#[path = "support/cloud.rs"]
mod cloud;
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cloud::{cinder_config, output, volsnap, Cloud, DataVolume};
use serde_json::Value;
use support::{hooks_dir, run};
use volsnap::openstack::cinder::{Schedule, Target, Until};
use volsnap::openstack::cinder_backups::{Backup, BackupApi};
use volsnap::openstack::Cinder;

static KNOBS: Mutex<()> = Mutex::new(());

fn backup_cloud() -> Option<Cloud> {
    let cloud = Cloud::load();
    if cloud.vars.contains_key("VOLSNAP_TESTCLOUD_BACKUP_DRIVER") {
        Some(cloud)
    } else {
        eprintln!("skipped: this test cloud runs no cinder-backup (tests/cloud/up.sh --restart)");
        None
    }
}

fn backup_json(cloud: &Cloud, config: &Path, want: i32) -> Value {
    let (code, stdout, stderr) = output(&mut volsnap(cloud, config, &["--json", "backup"]));
    assert_eq!(code, Some(want), "stdout: {stdout}\nstderr: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Incompressible bytes (xorshift), so that the full backup's size is the
/// data's and a few changed files stay a small part of it.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(mount: &Path, name: &str, data: &[u8]) {
    let mut f = std::fs::File::create(mount.join(name)).unwrap();
    f.write_all(data).unwrap();
}

/// Every regular file under `root` → its SHA-256 (hex), by relative path.
fn checksums(root: &Path) -> BTreeMap<PathBuf, String> {
    let out = run(
        "sh",
        &[
            "-c",
            &format!(
                "cd {:?} && find . -path ./lost+found -prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum",
                root.display().to_string()
            ),
        ],
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sum, path)| (PathBuf::from(path), sum.to_string()))
        .collect()
}

fn api(cinder: &Cinder) -> BackupApi {
    cinder.backup_api().unwrap()
}

fn backups_of(cinder: &Cinder, volume: &str) -> Vec<Backup> {
    let mut all: Vec<Backup> = cinder
        .backups(api(cinder))
        .unwrap()
        .into_iter()
        .filter(|b| b.volume_id == volume)
        .collect();
    all.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    all
}

/// Bytes the backup stored in Swift: its objects in the container.
fn stored_bytes(cloud: &Cloud, backup: &Backup) -> u64 {
    let swift = volsnap::openstack::swift(&cloud.session()).unwrap();
    let container = backup.container.clone().unwrap();
    let objects = swift
        .list_objects(&container, &format!("volume_{}/", backup.volume_id))
        .unwrap();
    let mine: Vec<_> = objects
        .iter()
        .filter(|o| o.name.contains(&backup.id))
        .collect();
    assert!(
        mine.len() >= 3,
        "backup {} has objects {objects:?}",
        backup.id
    );
    mine.iter().map(|o| o.bytes).sum()
}

/// Deletes every backup of the volumes (newest first: incrementals before
/// their full) when dropped, so a failing test leaves no chain in Swift.
struct BackupsGuard {
    cinder: Cinder,
    volumes: Vec<String>,
}

impl Drop for BackupsGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let Ok(api) = self.cinder.backup_api() else {
            return;
        };
        for volume in &self.volumes {
            let Ok(all) = self.cinder.backups(api) else {
                continue;
            };
            let mut mine: Vec<Backup> =
                all.into_iter().filter(|b| &b.volume_id == volume).collect();
            mine.sort_by(|a, b| b.created_at.cmp(&a.created_at));
            for b in mine {
                let until = Until {
                    deadline,
                    schedule: Schedule::PATIENT,
                    stop: None,
                    stats: None,
                };
                let _ = self
                    .cinder
                    .wait_backup(api, &b.id, Target::Left("creating"), &until);
                let _ = self.cinder.delete_backup(&b.id);
                let _ = self.cinder.wait_backup_gone(&b.id, deadline);
            }
        }
    }
}

/// A restored volume attached with losetup: `e2fsck -fn` clean, then
/// mounted, its files' checksums.
fn restored_checksums(cloud: &Cloud, volume_id: &str) -> BTreeMap<PathBuf, String> {
    let mut restored = DataVolume::existing_unmounted(cloud, volume_id);
    let fsck = run("e2fsck", &["-fn", &restored.device]);
    assert!(
        fsck.status.success(),
        "e2fsck -fn of the restored volume: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    restored.mount();
    checksums(restored.path())
}

fn restore(cloud: &Cloud, config: &Path, backup: &str, name: &str) -> String {
    let (code, stdout, stderr) = output(&mut volsnap(
        cloud,
        config,
        &[
            "--json",
            "restore",
            "--cinder-backup",
            backup,
            "--name",
            name,
        ],
    ));
    assert_eq!(code, Some(0), "restore: {stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["status"], "available");
    assert_eq!(v["backup_id"], backup);
    v["volume_id"].as_str().unwrap().to_string()
}

fn with_retention(config: &Path, keep_last: u32) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let path = config.with_file_name(format!("keep-{keep_last}.toml"));
    std::fs::write(
        &path,
        format!("{text}\n[retention]\nkeep_last = {keep_last}\nafter_backup = false\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

#[test]
fn incremental_chain_restores_bit_for_bit_a_failed_backup_exits_4_and_retention_keeps_chains() {
    let Some(cloud) = backup_cloud() else { return };
    let _knobs = KNOBS.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let cinder = cloud.cinder();
    let dir = tempfile::tempdir().unwrap();
    let data = DataVolume::new(&cloud, "ext4");
    let _guard = BackupsGuard {
        cinder: cinder.clone(),
        volumes: vec![data.id.clone()],
    };
    let hooks = hooks_dir(dir.path(), &[("none", "#!/bin/sh\nexit 0\n")]);
    let config = cinder_config(
        dir.path(),
        &[&data],
        &hooks,
        "none",
        "[cinder]\nbackup = \"incremental\"\nfull_every = 5\nbackup_timeout = \"5m\"\n",
    );

    // Run 1: 24 MiB of data and a few small files -> a full backup.
    write(data.path(), "big.bin", &noise(1, 24 << 20));
    for i in 0..8 {
        write(
            data.path(),
            &format!("small-{i}.txt"),
            format!("run 1 file {i}\n").as_bytes(),
        );
    }
    let first_sums = checksums(data.path());
    let first = backup_json(&cloud, &config, 0);
    assert_eq!(first["backup_error"], Value::Null);
    let b1 = &first["backups"][0];
    assert_eq!(
        (b1["incremental"].as_bool(), b1["status"].as_str()),
        (Some(false), Some("available")),
        "{first}"
    );
    let full_id = b1["id"].as_str().unwrap().to_string();
    let snap1 = first["snapshots"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(b1["snapshot_id"], snap1.as_str());

    // Run 2: a few files change -> an incremental on the full.
    write(data.path(), "small-3.txt", b"run 2 changed this one\n");
    write(data.path(), "new.bin", &noise(2, 64 << 10));
    std::fs::remove_file(data.path().join("small-5.txt")).unwrap();
    let second_sums = checksums(data.path());
    assert_ne!(first_sums, second_sums);
    let second = backup_json(&cloud, &config, 0);
    let b2 = &second["backups"][0];
    assert_eq!(
        (b2["incremental"].as_bool(), b2["status"].as_str()),
        (Some(true), Some("available")),
        "{second}"
    );
    let inc_id = b2["id"].as_str().unwrap().to_string();

    // Both in Swift, labelled like their snapshots; the incremental a small
    // fraction of the full.
    let ours = backups_of(&cinder, &data.id);
    let full = ours.iter().find(|b| b.id == full_id).unwrap();
    let inc = ours.iter().find(|b| b.id == inc_id).unwrap();
    assert!(inc.is_incremental && !full.is_incremental);
    for (b, run) in [(full, &first["run"]), (inc, &second["run"])] {
        assert_eq!(
            b.metadata.get("volsnap_run").map(String::as_str),
            run.as_str()
        );
        assert_eq!(
            b.metadata.get("consistency").map(String::as_str),
            Some("filesystem")
        );
        assert_eq!(
            b.metadata.get("created_by").map(String::as_str),
            Some("volsnap")
        );
    }
    let (full_bytes, inc_bytes) = (stored_bytes(&cloud, full), stored_bytes(&cloud, inc));
    eprintln!("stored in Swift: full {full_bytes} bytes, incremental {inc_bytes} bytes");
    assert!(full_bytes > 24 << 20, "full stored {full_bytes}");
    assert!(
        inc_bytes * 5 < full_bytes,
        "incremental {inc_bytes} vs full {full_bytes}"
    );

    // list shows both, with the chain.
    let (code, stdout, _) = output(&mut volsnap(&cloud, &config, &["--json", "list"]));
    assert_eq!(code, Some(0));
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    let row = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {rows}"))
            .clone()
    };
    assert_eq!(
        (
            row(&inc_id)["kind"].as_str(),
            row(&inc_id)["state"].as_str()
        ),
        (Some("backup"), Some("good"))
    );
    assert_eq!(row(&inc_id)["parent"], full_id.as_str());
    assert_eq!(row(&full_id)["incremental"], false);

    // Each restores into a volume whose files are its run's, bit for bit.
    let vol1 = restore(&cloud, &config, &full_id, "volsnap-test-from-full");
    assert_eq!(restored_checksums(&cloud, &vol1), first_sums);
    let vol2 = restore(&cloud, &config, &inc_id, "volsnap-test-from-incremental");
    assert_eq!(restored_checksums(&cloud, &vol2), second_sums);

    // Run 3: the backup goes to error -> exit 4, the good snapshot stays,
    // the failed backup is gone.
    let knob = cloud.volumes_dir().join("backup-fail-next");
    std::fs::write(&knob, "").unwrap();
    let third = backup_json(&cloud, &config, 4);
    let _ = std::fs::remove_file(&knob);
    let error = third["backup_error"].as_str().unwrap();
    assert!(error.contains("the snapshot stays"), "{error}");
    let snap3 = third["snapshots"][0]["id"].as_str().unwrap().to_string();
    let s3 = cinder.snapshot(&snap3).unwrap();
    assert!(cloud::is_good(&s3), "{s3:?}");
    let failed = third["backups"][0]["id"].as_str().unwrap();
    assert!(
        cinder
            .backup(api(&cinder), failed)
            .is_err_and(|e| e.is_not_found())
            || {
                cinder
                    .wait_backup_gone(failed, Instant::now() + Duration::from_secs(60))
                    .is_ok()
            }
    );
    let (_, help, _) = output(&mut volsnap(&cloud, &config, &["--help"]));
    assert!(
        help.contains("4   the snapshots are good, but a Cinder backup of one failed"),
        "{help}"
    );

    // Retention: keep_last = 2 keeps runs 2 and 3; run 1's snapshot goes,
    // but its full stays while run 2's incremental needs it.
    let keep2 = with_retention(&config, 2);
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &keep2, &["prune"]));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("deleted snapshot {snap1}")),
        "{stdout}"
    );
    assert!(!stdout.contains(&full_id), "{stdout}");
    let left: Vec<String> = backups_of(&cinder, &data.id)
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(left, [full_id.clone(), inc_id.clone()]);
    // keep_last = 1: the whole chain goes, incremental first.
    let keep1 = with_retention(&config, 1);
    let (code, stdout, stderr) = output(&mut volsnap(&cloud, &keep1, &["prune"]));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("deleted backup {inc_id}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("deleted backup {full_id}")),
        "{stdout}"
    );
    assert!(backups_of(&cinder, &data.id).is_empty());
    assert!(cinder.snapshot(&snap3).is_ok(), "run 3 is kept");
    eprintln!("took {:.0} s", started.elapsed().as_secs_f64());
}

#[test]
fn sigkill_during_the_backup_wait_then_the_next_run_cleans_up() {
    let Some(cloud) = backup_cloud() else { return };
    let _knobs = KNOBS.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let cinder = cloud.cinder();
    let dir = tempfile::tempdir().unwrap();
    let data = DataVolume::new(&cloud, "ext4");
    let _guard = BackupsGuard {
        cinder: cinder.clone(),
        volumes: vec![data.id.clone()],
    };
    let hooks = hooks_dir(dir.path(), &[("none", "#!/bin/sh\nexit 0\n")]);
    let config = cinder_config(
        dir.path(),
        &[&data],
        &hooks,
        "none",
        "[cinder]\nbackup = \"incremental\"\nbackup_timeout = \"5m\"\n",
    );
    write(data.path(), "a.txt", b"before the kill\n");

    // The backup stays `creating` for a while: kill volsnap as it waits.
    let delay = cloud.volumes_dir().join("backup-delay");
    std::fs::write(&delay, "6").unwrap();
    let mut child = volsnap(&cloud, &config, &["backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let limit = Instant::now() + Duration::from_secs(60);
    let killed = loop {
        if let Some(b) = backups_of(&cinder, &data.id).into_iter().next() {
            break b;
        }
        assert!(Instant::now() < limit, "no backup within 60 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "volsnap ended before its backup"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&delay);
    assert_eq!(
        killed.metadata.get("consistency").map(String::as_str),
        Some("pending")
    );
    // The run's snapshot was labelled before the backups began: it is good.
    let snaps = data.snapshots();
    assert_eq!(snaps.len(), 1);
    // (`backing-up` while cinder-backup copies it.)
    assert_eq!(
        snaps[0].metadata.get("consistency").map(String::as_str),
        Some("filesystem")
    );
    assert!(
        snaps[0].metadata.contains_key("freeze_ms"),
        "{:?}",
        snaps[0]
    );
    let (code, stdout, _) = output(&mut volsnap(&cloud, &config, &["--json", "list"]));
    assert_eq!(code, Some(0));
    let rows: Value = serde_json::from_str(&stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == killed.id.as_str())
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(row["state"], "incomplete", "{row}");

    // The next run removes it (once out of `creating`) and backs up in full:
    // a pending backup is no chain to build on.
    let next = backup_json(&cloud, &config, 0);
    let removed: Vec<&str> = next["removed_leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(removed.contains(&killed.id.as_str()), "{next}");
    let b = &next["backups"][0];
    assert_eq!(
        (b["incremental"].as_bool(), b["status"].as_str()),
        (Some(false), Some("available")),
        "{next}"
    );
    let left: Vec<String> = backups_of(&cinder, &data.id)
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(left, [b["id"].as_str().unwrap().to_string()]);
    eprintln!("took {:.0} s", started.elapsed().as_secs_f64());
}
