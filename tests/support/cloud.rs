//! Test support for the loopback cloud of `tests/cloud/`: its env.sh, data
//! volumes attached on loop devices, and the Cinder driver's fault knobs.
//! Everything made here is undone on drop, even when the test fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use volsnap::config::OpenStack;
use volsnap::openstack::auth::{self, Env, Service, Session};
use volsnap::openstack::cinder::{Cinder, NewVolume, SnapshotFilter, Target};

/// The values of env.sh: `OS_*` and `VOLSNAP_TESTCLOUD_*`.
pub struct Cloud {
    pub vars: BTreeMap<String, String>,
}

impl Cloud {
    pub fn load() -> Cloud {
        let path = std::env::var_os("VOLSNAP_TESTCLOUD_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cloud/run/env.sh")
            });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the test cloud is not up: run tests/cloud/up.sh first ({}: {e})",
                path.display()
            )
        });
        let vars = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), unquote(v)))
            .collect();
        Cloud { vars }
    }

    pub fn get(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in env.sh"))
    }

    /// Only the `OS_*` variables: the backup user's application credential.
    pub fn os_vars(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .filter(|(k, _)| k.starts_with("OS_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn os_env(&self) -> Env {
        Env {
            vars: self.os_vars().into_iter().collect(),
            cwd: None,
        }
    }

    pub fn session(&self) -> Session {
        Session::connect(auth::resolve(&OpenStack::default(), &self.os_env()).unwrap()).unwrap()
    }

    pub fn cinder(&self) -> Cinder {
        let session = self.session();
        let endpoint = session.endpoint(Service::BlockStorage).unwrap();
        Cinder::new(session, endpoint)
    }

    pub fn volumes_dir(&self) -> PathBuf {
        PathBuf::from(self.get("VOLSNAP_TESTCLOUD_VOLUMES"))
    }

    pub fn snapshot_image(&self, snapshot_id: &str) -> PathBuf {
        self.volumes_dir()
            .join(format!("snapshot-{snapshot_id}.img"))
    }

    /// The driver's knobs are shared by every snapshot of the cloud: the
    /// guard makes tests that use them (or mind them) take turns, across
    /// test binaries too, and removes the knobs when dropped.
    pub fn knobs(&self) -> Knobs {
        let lock_path = self.volumes_dir().join(".knobs.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap();
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        let knobs = Knobs {
            dir: self.volumes_dir(),
            _lock: lock,
        };
        knobs.clear();
        knobs
    }
}

pub struct Knobs {
    dir: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Knobs {
    pub fn delay(&self, seconds: f64) {
        std::fs::write(self.dir.join("snapshot-delay"), format!("{seconds}\n")).unwrap();
    }

    pub fn fail_next(&self) {
        std::fs::write(self.dir.join("snapshot-fail-next"), "1\n").unwrap();
    }

    pub fn clear(&self) {
        let _ = std::fs::remove_file(self.dir.join("snapshot-delay"));
        let _ = std::fs::remove_file(self.dir.join("snapshot-fail-next"));
    }
}

impl Drop for Knobs {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A snapshot volsnap calls a backup (final label and `freeze_ms`).
pub fn is_good(s: &volsnap::openstack::cinder::Snapshot) -> bool {
    volsnap::agent::cinder::runs::state(s) == volsnap::agent::cinder::runs::State::Good
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        Some(inner) => inner.replace("'\\''", "'"),
        None => v.to_string(),
    }
}

pub fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "volsnap-test-{what}-{}-{}-{}",
        std::process::id(),
        now.as_millis(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A script of the cloud that is running: the one whose env.sh was loaded
/// (`VOLSNAP_TESTCLOUD_ENV=/elsewhere/tests/cloud/run/env.sh`: a worktree
/// testing against another checkout's cloud uses that checkout's scripts,
/// which find their `run/` beside them), else this checkout's.
fn script(name: &str) -> PathBuf {
    let cloud_dir = std::env::var_os("VOLSNAP_TESTCLOUD_ENV")
        .map(PathBuf::from)
        .and_then(|env| Some(env.parent()?.parent()?.to_path_buf()))
        .filter(|dir| dir.join(name).is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cloud"));
    cloud_dir.join(name)
}

/// A Cinder volume, attached (`in-use`) on a loop device with a filesystem
/// mounted. Drop thaws, unmounts, detaches, deletes its snapshots and the
/// volume.
pub struct DataVolume {
    pub id: String,
    pub device: String,
    pub mount: PathBuf,
    dir: tempfile::TempDir,
    cinder: Cinder,
}

impl DataVolume {
    pub fn new(cloud: &Cloud, fs_type: &str) -> DataVolume {
        DataVolume::new_in(cloud, fs_type, &std::env::temp_dir())
    }

    /// Mounted under `base` (a test that boots systemd gives it a /tmp of
    /// its own: the volume must live elsewhere to be seen there).
    pub fn new_in(cloud: &Cloud, fs_type: &str, base: &Path) -> DataVolume {
        let cinder = cloud.cinder();
        let volume = cinder
            .create_volume(&NewVolume {
                size: 1,
                name: unique("data"),
                ..NewVolume::default()
            })
            .unwrap();
        DataVolume::attach(cinder, &volume.id, Some(fs_type), base)
    }

    /// Attaches an existing volume (a restored one) and mounts its filesystem.
    pub fn existing(cloud: &Cloud, id: &str) -> DataVolume {
        let mut data = DataVolume::existing_unmounted(cloud, id);
        data.mount();
        data
    }

    /// Attaches an existing volume without mounting it, so that its
    /// filesystem can be looked at as the snapshot left it (`dumpe2fs`,
    /// `e2fsck -n`) before a mount replays anything; then `mount`.
    pub fn existing_unmounted(cloud: &Cloud, id: &str) -> DataVolume {
        DataVolume::attach(cloud.cinder(), id, None, &std::env::temp_dir())
    }

    fn attach(cinder: Cinder, id: &str, mkfs: Option<&str>, base: &Path) -> DataVolume {
        cinder
            .wait_volume(
                id,
                Target::Status("available"),
                Instant::now() + Duration::from_secs(60),
            )
            .unwrap();
        let volume = cinder.volume(id).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("volsnap-vol-")
            .tempdir_in(base)
            .unwrap();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let mut data = DataVolume {
            id: volume.id.clone(),
            device: String::new(),
            mount,
            dir,
            cinder,
        };
        let out = Command::new(script("attach.sh"))
            .arg(&volume.id)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "attach.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        data.device = String::from_utf8(out.stdout).unwrap().trim().to_string();
        match mkfs {
            Some("ext4") => drop(crate::support::run(
                "mkfs.ext4",
                &["-q", "-F", &data.device],
            )),
            Some("xfs") => drop(crate::support::run("mkfs.xfs", &["-q", "-f", &data.device])),
            Some(other) => panic!("unsupported filesystem {other}"),
            None => return data,
        };
        data.mount();
        data
    }

    /// Mounts the attached device on `mount`.
    pub fn mount(&mut self) {
        let target = self.mount.to_str().unwrap().to_string();
        let plain = Command::new("mount")
            .args([&self.device, &target])
            .status()
            .is_ok_and(|s| s.success());
        if !plain {
            // A restored XFS carries its original's UUID, which is mounted too.
            crate::support::run("mount", &["-o", "nouuid", &self.device, &target]);
        }
        self.mount = std::fs::canonicalize(&self.mount).unwrap();
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Snapshots of this volume, whoever made them.
    pub fn snapshots(&self) -> Vec<volsnap::openstack::cinder::Snapshot> {
        self.cinder
            .snapshots(&SnapshotFilter {
                volume_id: Some(self.id.clone()),
                ..SnapshotFilter::default()
            })
            .unwrap()
    }
}

impl Drop for DataVolume {
    fn drop(&mut self) {
        let mnt = self.mount.to_str().unwrap_or_default().to_string();
        let _ = Command::new("fsfreeze").args(["-u", &mnt]).output();
        let unmounted = (0..20).any(|_| {
            Command::new("umount")
                .arg(&mnt)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                || {
                    std::thread::sleep(Duration::from_millis(50));
                    false
                }
        });
        if !unmounted {
            let _ = Command::new("umount").args(["-l", &mnt]).status();
        }
        let _ = Command::new(script("detach.sh")).arg(&self.id).output();
        let deadline = Instant::now() + Duration::from_secs(120);
        if let Ok(snaps) = self.cinder.snapshots(&SnapshotFilter {
            volume_id: Some(self.id.clone()),
            ..SnapshotFilter::default()
        }) {
            for s in snaps {
                let _ = self
                    .cinder
                    .wait_snapshot(&s.id, Target::Status("available"), deadline);
                let _ = self.cinder.delete_snapshot(&s.id);
                let _ = self.cinder.wait_snapshot(&s.id, Target::Gone, deadline);
            }
        }
        let _ = self.cinder.delete_volume(&self.id);
        let _ = &self.dir;
    }
}

/// A volsnap.toml for the Cinder strategy in `dir`, 0600.
pub fn cinder_config(
    dir: &Path,
    volumes: &[&DataVolume],
    hooks: &Path,
    datastore: &str,
    extra: &str,
) -> PathBuf {
    let mounts: Vec<String> = volumes
        .iter()
        .map(|v| format!("{:?}", v.path().display().to_string()))
        .collect();
    let ids: Vec<String> = volumes
        .iter()
        .map(|v| format!("{:?} = {:?}", v.path().display().to_string(), v.id))
        .collect();
    let config = dir.join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "backup_agent = \"CinderAgent\"\nstorage_strategy = \"Cinder\"\ndatastore = {datastore:?}\nmounts = [{}]\nruntime_dir = {:?}\n{extra}\n[hooks]\ndir = {:?}\ntimeout = \"20s\"\n[cinder.volumes]\n{}\n",
            mounts.join(", "),
            dir.join("run").display().to_string(),
            hooks.display().to_string(),
            ids.join("\n"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    config
}

/// `volsnap --config CONFIG ARGS…` (this build) against the cloud.
pub fn volsnap(cloud: &Cloud, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volsnap"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("VOLSNAP_CONFIG")
        .envs(cloud.os_vars());
    cmd
}

/// Exit code, stdout and stderr.
pub fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out: Output = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
