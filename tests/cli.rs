//! The real binary on good and bad configs: exit codes and messages.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::{hooks_dir, LoopFs, NONE_HOOK};

fn volsnap(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volsnap"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("VOLSNAP_CONFIG")
        .output()
        .unwrap()
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("volsnap.toml");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cinder_config(tmp: &Path, mounts: &[&Path]) -> std::path::PathBuf {
    let hooks = hooks_dir(tmp, &[("none", NONE_HOOK)]);
    let mounts: Vec<String> = mounts
        .iter()
        .map(|m| format!("{:?}", m.display().to_string()))
        .collect();
    write_config(
        tmp,
        &format!(
            "backup_agent = \"CinderAgent\"\nstorage_strategy = \"Cinder\"\ndatastore = \"none\"\n\
             mounts = [{}]\nruntime_dir = {:?}\n[hooks]\ndir = {:?}\n",
            mounts.join(", "),
            tmp.join("run").display().to_string(),
            hooks.display().to_string()
        ),
    )
}

#[test]
fn version_and_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_volsnap"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(text(&out).0.starts_with("volsnap "));
    let out = Command::new(env!("CARGO_BIN_EXE_volsnap"))
        .arg("--help")
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("75  another volsnap run holds the lock"),
        "{stdout}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_volsnap"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_config_exits_78_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        "datastore = \"none\"\n[cinder]\nmax_freeze = \"soon\"\n",
    );
    let out = volsnap(&config, &["check", "--offline"]);
    assert_eq!(out.status.code(), Some(78));
    let (stdout, stderr) = text(&out);
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {}:3:14: cinder.max_freeze: invalid duration \"soon\": expected a number and a unit (ms, s, m, h, d), like \"30s\", \"250ms\" or \"1h30m\"",
            config.display()
        )
    );
}

#[test]
fn missing_config_exits_78() {
    let out = volsnap(
        Path::new("/nonexistent/volsnap.toml"),
        &["check", "--offline"],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out)
        .1
        .contains("/nonexistent/volsnap.toml: cannot read"));
}

#[test]
fn group_readable_secret_exits_78_with_the_chmod() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        "datastore = \"none\"\n[openstack]\npassword = \"pw-123\"\n",
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = volsnap(&config, &["check", "--offline"]);
    assert_eq!(out.status.code(), Some(78));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!("run: chmod 600 {}", config.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-123"));
}

#[test]
fn check_offline_accepts_a_real_mountpoint() {
    let fs = LoopFs::new("ext4", 64);
    let tmp = tempfile::tempdir().unwrap();
    let config = cinder_config(tmp.path(), &[fs.path()]);
    let out = volsnap(&config, &["check", "--offline"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    let out = volsnap(&config, &["--json", "check", "--offline"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["strategy"], "cinder");
}

#[test]
fn check_offline_refuses_a_plain_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("data");
    std::fs::create_dir(&plain).unwrap();
    let config = cinder_config(tmp.path(), &[&plain]);
    let out = volsnap(&config, &["check", "--offline"]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!(
            "problem: mount {}: is not a mountpoint",
            plain.display()
        )),
        "{stdout}"
    );
}

#[test]
fn check_offline_refuses_root() {
    let tmp = tempfile::tempdir().unwrap();
    // Written as "/" the config itself refuses it.
    let config = cinder_config(tmp.path(), &[Path::new("/")]);
    let out = volsnap(&config, &["check", "--offline"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).1.contains("\"/\" cannot be frozen"));
    // Reached through a symlink, the check sees through it.
    let link = tmp.path().join("rootlink");
    std::os::unix::fs::symlink("/", &link).unwrap();
    let config = cinder_config(tmp.path(), &[&link]);
    let out = volsnap(&config, &["check", "--offline"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).0.contains("is the root filesystem"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn check_offline_refuses_the_filesystem_of_the_runtime_dir_or_the_metrics_file() {
    let fs = LoopFs::new("ext4", 64);
    let tmp = tempfile::tempdir().unwrap();
    let hooks = hooks_dir(tmp.path(), &[("none", NONE_HOOK)]);
    // Each is written while the data may be frozen, or just after.
    let on_fs = fs.path().display().to_string();
    let off_fs = tmp.path().display().to_string();
    for (runtime_dir, metrics_dir, refused) in [
        (&on_fs, &off_fs, "holds the runtime directory"),
        (&off_fs, &on_fs, "holds the metrics file"),
    ] {
        let config = write_config(
            tmp.path(),
            &format!(
                "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [{on_fs:?}]\n\
                 runtime_dir = \"{runtime_dir}/run\"\nmetrics_file = \"{metrics_dir}/volsnap.prom\"\n\
                 [hooks]\ndir = {:?}\n",
                hooks.display().to_string()
            ),
        );
        let out = volsnap(&config, &["check", "--offline"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).0.contains(refused), "{:?}", text(&out));
    }
}

#[test]
fn check_offline_refuses_untrusted_hooks() {
    let fs = LoopFs::new("ext4", 64);
    let tmp = tempfile::tempdir().unwrap();
    let config = cinder_config(tmp.path(), &[fs.path()]);
    let hook = tmp.path().join("hooks/none");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o775)).unwrap();
    let out = volsnap(&config, &["check", "--offline"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .0
            .contains("is writable by group or others (mode 0775)"),
        "{:?}",
        text(&out)
    );
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = volsnap(&config, &["check", "--offline"]);
    assert!(
        text(&out).0.contains("is not executable"),
        "{:?}",
        text(&out)
    );
    std::fs::remove_file(&hook).unwrap();
    let out = volsnap(&config, &["check", "--offline"]);
    assert!(text(&out).0.contains("No such file"), "{:?}", text(&out));
}

#[test]
fn sample_config_is_accepted() {
    // The sample names the installed hooks directory, which a build tree does
    // not have: the copy points at a trusted one, everything else unchanged.
    let sample =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/volsnap.toml"))
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let hooks = hooks_dir(tmp.path(), &[("mysql", NONE_HOOK)]);
    let line = "dir = \"/usr/lib/volsnap/hooks\"";
    assert!(sample.contains(line));
    let config = write_config(
        tmp.path(),
        &sample.replace(line, &format!("dir = {:?}", hooks.display().to_string())),
    );
    let out = volsnap(&config, &["check", "--offline"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
}
