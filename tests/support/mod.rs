//! Test support: real filesystems on loop devices, always cleaned up.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a command, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A filesystem (ext4 or xfs) on a sparse file attached to a loop device and
/// mounted under a temporary directory. Dropping it thaws (in case a test
/// left it frozen), unmounts, detaches and deletes, even after a panic.
pub struct LoopFs {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub device: String,
    pub mount: PathBuf,
}

impl LoopFs {
    pub fn new(fs_type: &str, size_mib: u64) -> LoopFs {
        let dir = tempfile::Builder::new()
            .prefix("volsnap-fs-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("disk.img");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(size_mib << 20).unwrap();
        drop(file);
        let device = String::from_utf8(
            run("losetup", &["--find", "--show", image.to_str().unwrap()]).stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let mut fs = LoopFs {
            dir,
            image,
            device,
            mount,
        };
        // From here on Drop cleans up whatever succeeded.
        match fs_type {
            "ext4" => run("mkfs.ext4", &["-q", "-F", &fs.device]),
            "xfs" => run("mkfs.xfs", &["-q", "-f", &fs.device]),
            other => panic!("unsupported filesystem {other}"),
        };
        run("mount", &[&fs.device, fs.mount.to_str().unwrap()]);
        fs.mount = std::fs::canonicalize(&fs.mount).unwrap();
        fs
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mnt = self.mount.to_str().unwrap_or_default().to_string();
        // A thaw of an unfrozen filesystem fails with EINVAL: harmless.
        let _ = Command::new("fsfreeze").args(["-u", &mnt]).output();
        if Command::new("umount")
            .arg(&mnt)
            .status()
            .map_or(true, |s| !s.success())
        {
            let _ = Command::new("umount").args(["-l", &mnt]).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// A hooks directory holding an executable `none` hook (and any others asked
/// for) that is trusted: root-owned, mode 0755.
pub fn hooks_dir(parent: &Path, hooks: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join("hooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, body) in hooks {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

pub const NONE_HOOK: &str = "#!/bin/sh\nexit 0\n";

/// Polls `done` every 10 ms until it holds; fails the test after `limit`.
/// How long it took.
pub fn wait_until(
    limit: std::time::Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    start.elapsed()
}
