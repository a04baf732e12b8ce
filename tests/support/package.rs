//! What the packaging tests (`tests/deb.rs`, `tests/rpm.rs`) share:
//! running commands under a timeout in the repository, `make` without the
//! variables `cargo test` sets, and what every package must contain.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Files every package installs (directories aside), but the zsh completion,
/// whose place differs.
pub const FILES: &[&str] = &[
    "/usr/bin/volsnap",
    "/usr/lib/volsnap/hooks/mysql",
    "/usr/lib/volsnap/hooks/none",
    "/usr/lib/volsnap/hooks/postgresql",
    "/usr/lib/volsnap/hooks/redis",
    "/usr/lib/volsnap/fsfreeze-hook",
    "/usr/lib/systemd/system/volsnap.service",
    "/usr/lib/systemd/system/volsnap.timer",
    "/usr/lib/systemd/system/volsnap-archive.service",
    "/usr/share/volsnap/qemu-ga/fsfreeze-hook.d-volsnap",
    "/usr/share/volsnap/qemu-ga/qemu-guest-agent.service.d-volsnap.conf",
    "/usr/share/volsnap/cloud-init.yaml",
    "/usr/share/bash-completion/completions/volsnap",
    "/usr/share/fish/vendor_completions.d/volsnap.fish",
    "/etc/volsnap/volsnap.toml.sample",
];

/// The mode a packaged file must have.
pub fn mode_of(file: &str) -> u32 {
    let exec = file.starts_with("/usr/lib/volsnap/hooks/")
        || file.ends_with("/fsfreeze-hook.d-volsnap")
        || file == "/usr/lib/volsnap/fsfreeze-hook"
        || file == "/usr/bin/volsnap";
    if exec {
        0o755
    } else {
        0o644
    }
}

/// The man pages every package ships (`make gen`).
pub const MAN: &[&str] = &[
    "/usr/share/man/man1/volsnap.1.gz",
    "/usr/share/man/man1/volsnap-archive.1.gz",
    "/usr/share/man/man1/volsnap-backup.1.gz",
    "/usr/share/man/man1/volsnap-check.1.gz",
    "/usr/share/man/man1/volsnap-hook.1.gz",
    "/usr/share/man/man1/volsnap-list.1.gz",
    "/usr/share/man/man1/volsnap-prune.1.gz",
    "/usr/share/man/man1/volsnap-restore.1.gz",
    "/usr/share/man/man1/volsnap-thaw.1.gz",
    "/usr/share/man/man1/volsnap-verify.1.gz",
    "/usr/share/man/man1/volsnap-wal.1.gz",
];

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `args` under timeout(1) (TERM after `secs`, KILL 10 s later), in the
/// repository.
pub fn run(secs: u64, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["--kill-after=10", &secs.to_string()])
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// [`run`], which must succeed; its stdout.
pub fn ok(secs: u64, args: &[&str]) -> String {
    let out = run(secs, args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `make TARGET` in the repository; its stdout. Incremental after the first
/// `make static` (~5 min from cold). Without the variables `cargo test`
/// sets for this process: ring's build script tracks CARGO_MANIFEST_DIR,
/// and a value that differs from a `make static` run from a shell would
/// relink the static binary (1.5 min) every time the two alternate.
pub fn make(target: &str) -> String {
    let mut make = Command::new("timeout");
    make.args([
        "--kill-after=10",
        "1800",
        "make",
        "--no-print-directory",
        target,
    ])
    .current_dir(repo(""));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO"
            || [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|p| name.starts_with(p))
        {
            make.env_remove(&*name);
        }
    }
    let out = make.output().expect("make");
    assert!(out.status.success(), "make {target}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `make TARGET`, which must name `file` (under the repository) as what it
/// built; the package's absolute path.
pub fn build(target: &str, file: &str) -> String {
    // Once per test binary: two tests of one binary running `make deb` at
    // once race on target/gen and target/deb (and one may copy a package
    // the other is rewriting).
    static BUILT: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{target} {file}");
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return path.clone();
    }
    let path = build_now(target, file);
    built.push((key, path.clone()));
    path
}

fn build_now(target: &str, file: &str) -> String {
    let built = make(target);
    assert!(
        built.contains(file),
        "make {target} does not name {file}: {built}"
    );
    let path = repo(file).to_str().unwrap().to_string();
    eprintln!("{path}: {} bytes", std::fs::metadata(&path).unwrap().len());
    path
}
