//! `make deb`, then `dpkg -i` of the built package into the real system (CI
//! runs as root on a throwaway machine): what it installs, with which owners
//! and modes, that the binary and units work from there, and that `dpkg -r`
//! and `dpkg --purge` take it all away again. A guard purges the package
//! whatever happens. A `volsnap` package this test did not build, or a
//! volsnap installed without dpkg (`make install`), makes the test refuse
//! rather than overwrite or remove it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MAINTAINER: &str = "volsnap developers <volsnap@localhost>";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Files the package installs (directories aside).
const FILES: &[&str] = &[
    "/usr/bin/volsnap",
    "/usr/lib/volsnap/hooks/mysql",
    "/usr/lib/volsnap/hooks/none",
    "/usr/lib/volsnap/hooks/postgresql",
    "/usr/lib/volsnap/hooks/redis",
    "/usr/lib/systemd/system/volsnap.service",
    "/usr/lib/systemd/system/volsnap.timer",
    "/usr/share/volsnap/qemu-ga/fsfreeze-hook.d-volsnap",
    "/usr/share/volsnap/qemu-ga/qemu-guest-agent.service.d-volsnap.conf",
    "/usr/share/volsnap/cloud-init.yaml",
    "/usr/share/bash-completion/completions/volsnap",
    "/usr/share/zsh/vendor-completions/_volsnap",
    "/usr/share/fish/vendor_completions.d/volsnap.fish",
    "/etc/volsnap/volsnap.toml.sample",
];

/// In the package, but a dpkg path-exclude (minimal images) may drop them.
const DOC: &str = "/usr/share/doc/volsnap/copyright";
const MAN: &[&str] = &[
    "/usr/share/man/man1/volsnap.1.gz",
    "/usr/share/man/man1/volsnap-backup.1.gz",
    "/usr/share/man/man1/volsnap-check.1.gz",
    "/usr/share/man/man1/volsnap-hook.1.gz",
    "/usr/share/man/man1/volsnap-list.1.gz",
    "/usr/share/man/man1/volsnap-prune.1.gz",
    "/usr/share/man/man1/volsnap-restore.1.gz",
    "/usr/share/man/man1/volsnap-thaw.1.gz",
    "/usr/share/man/man1/volsnap-verify.1.gz",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `args` under timeout(1) (TERM after `secs`, KILL 10 s later), in the
/// repository.
fn run(secs: u64, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["--kill-after=10", &secs.to_string()])
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(secs: u64, args: &[&str]) -> String {
    let out = run(secs, args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg, waiting up to a minute for its lock if something else (apt) holds it.
fn dpkg(args: &[&str]) -> Output {
    let start = Instant::now();
    loop {
        let mut full = vec!["dpkg"];
        full.extend_from_slice(args);
        let out = run(120, &full);
        let locked = !out.status.success() && text(&out).contains("lock");
        if !locked || start.elapsed() > Duration::from_secs(60) {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn dpkg_ok(args: &[&str]) -> String {
    let out = dpkg(args);
    assert!(out.status.success(), "dpkg {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `${Status}|${Maintainer}` of the volsnap package, None when dpkg knows
/// nothing of it.
fn status() -> Option<String> {
    let out = run(
        30,
        &[
            "dpkg-query",
            "-W",
            "-f=${db:Status-Abbrev}|${Status}|${Maintainer}",
            "volsnap",
        ],
    );
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !s.starts_with("un ")).then_some(s)
}

/// Purges the package when dropped, so a failed assertion leaves nothing.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let out = dpkg(&["--purge", "volsnap"]);
        if !out.status.success() {
            eprintln!("cleanup: dpkg --purge volsnap: {}", text(&out));
        }
    }
}

#[test]
fn dpkg_installs_and_removes_the_package() {
    // Refuse to touch a volsnap someone else installed.
    if let Some(s) = status() {
        assert!(
            s.ends_with(&format!("|{MAINTAINER}")),
            "a volsnap package this test did not build is installed ({s}): \
             remove it (dpkg --purge volsnap) to run this test"
        );
        eprintln!("purging the volsnap package a previous run left ({s})");
        drop(Purge);
        assert_eq!(status(), None, "could not purge the previous run's package");
    }
    for f in FILES {
        assert!(
            !Path::new(f).exists(),
            "{f} exists but no volsnap package is installed (make install?): \
             dpkg -i would overwrite it and dpkg -r remove it; remove it to run this test"
        );
    }
    let etc_existed = Path::new("/etc/volsnap").exists();

    // Build. Incremental after the first `make static` (~5 min from cold).
    // Without the variables `cargo test` sets for this process: ring's build
    // script tracks CARGO_MANIFEST_DIR, and a value that differs from a
    // `make static` run from a shell would relink the static binary (1.5 min)
    // every time the two alternate.
    let mut make = Command::new("timeout");
    make.args([
        "--kill-after=10",
        "1800",
        "make",
        "--no-print-directory",
        "deb",
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
    assert!(out.status.success(), "make deb: {}", text(&out));
    let deb = format!("target/volsnap_{VERSION}_amd64.deb");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&deb),
        "make deb does not name {deb}: {}",
        text(&out)
    );
    let deb = repo(&deb);
    let deb = deb.to_str().unwrap();
    eprintln!("{deb}: {} bytes", std::fs::metadata(deb).unwrap().len());

    // The archive: fields, and every entry owned by root/root.
    let fields = ok(
        30,
        &[
            "dpkg-deb",
            "--field",
            deb,
            "Package",
            "Version",
            "Architecture",
            "Maintainer",
        ],
    );
    for want in [
        "Package: volsnap".to_string(),
        format!("Version: {VERSION}"),
        "Architecture: amd64".to_string(),
        format!("Maintainer: {MAINTAINER}"),
    ] {
        assert!(fields.contains(&want), "{want} not in\n{fields}");
    }
    let contents = ok(30, &["dpkg-deb", "--contents", deb]);
    for line in contents.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.get(1), Some(&"root/root"), "{line}");
        let mode = cols[0].as_bytes();
        assert!(
            mode[5] != b'w' && mode[8] != b'w',
            "writable by group or others: {line}"
        );
    }
    for f in FILES.iter().chain([&DOC]).chain(MAN) {
        assert!(
            contents.contains(&format!(" .{f}\n")),
            "{f} not in the package:\n{contents}"
        );
    }
    assert!(
        !contents.contains("./etc/volsnap/volsnap.toml\n"),
        "the package ships a live config"
    );

    let _purge = Purge;
    dpkg_ok(&["-i", deb]);

    let s = status().expect("volsnap is not known to dpkg after dpkg -i");
    assert!(s.starts_with("ii |install ok installed|"), "{s}");
    let info = dpkg_ok(&["-s", "volsnap"]);
    assert!(info.contains(&format!("Version: {VERSION}\n")), "{info}");

    let version = ok(30, &["/usr/bin/volsnap", "--version"]);
    assert_eq!(version.trim(), format!("volsnap {VERSION}"));

    // Hooks: root-owned, 0755, as volsnap demands of what it runs as root.
    for dir in ["/usr/lib/volsnap", "/usr/lib/volsnap/hooks"] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, 0o755),
            "{dir}"
        );
    }
    for f in FILES {
        let m = std::fs::metadata(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        let exec = f.starts_with("/usr/lib/volsnap/hooks/")
            || f.ends_with("/fsfreeze-hook.d-volsnap")
            || *f == "/usr/bin/volsnap";
        let mode = if exec { 0o755 } else { 0o644 };
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, mode), "{f}");
    }
    assert!(!Path::new("/etc/volsnap/volsnap.toml").exists());

    // The man pages, as man renders them (unless dpkg was told to drop them).
    let manual = Path::new(MAN[0]);
    if manual.exists() && Path::new("/usr/bin/man").exists() {
        let out = Command::new("timeout")
            .args(["--kill-after=10", "60", "man", "--warnings", "-l", MAN[0]])
            .env("MANWIDTH", "80")
            .output()
            .expect("man");
        let page = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && warnings.is_empty(), "{warnings}");
        for want in ["volsnap-backup(1)", "EXIT", "--config"] {
            assert!(page.contains(want), "{want} not in man volsnap:\n{page}");
        }
    } else {
        eprintln!(
            "{} or man is not installed: the page is not rendered",
            MAN[0]
        );
    }

    // volsnap itself accepts the installed hooks (its default hooks dir).
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("volsnap.toml");
    for datastore in ["mysql", "postgresql", "redis", "none"] {
        std::fs::write(
            &config,
            format!(
                "storage_strategy = \"Swift\"\ndatastore = \"{datastore}\"\nmounts = [\"{}\"]\n",
                tmp.path().display()
            ),
        )
        .unwrap();
        let out = ok(
            30,
            &[
                "/usr/bin/volsnap",
                "--config",
                config.to_str().unwrap(),
                "check",
                "--offline",
            ],
        );
        assert!(out.starts_with("ok: "), "{datastore}: {out}");
    }

    // The sample config is a conffile; nothing else in /etc.
    let conffiles = ok(30, &["dpkg-query", "-W", "-f=${Conffiles}", "volsnap"]);
    assert!(
        conffiles.contains("/etc/volsnap/volsnap.toml.sample "),
        "{conffiles}"
    );

    // Every installed file is in `dpkg -L`, and dpkg's checksums match.
    let listed = dpkg_ok(&["-L", "volsnap"]);
    for f in FILES {
        assert!(
            listed.lines().any(|l| l == *f),
            "{f} not in dpkg -L:\n{listed}"
        );
    }
    dpkg_ok(&["--verify", "volsnap"]);

    // The installed units, as systemd reads them, where it is installed.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let out = run(
            60,
            &[
                "systemd-analyze",
                "verify",
                "/usr/lib/systemd/system/volsnap.service",
                "/usr/lib/systemd/system/volsnap.timer",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    } else {
        eprintln!("systemd-analyze not installed: the units are not verified");
    }

    // Remove: everything but the conffile goes.
    dpkg_ok(&["-r", "volsnap"]);
    let s = status().expect("dpkg -r forgot the conffile");
    assert!(s.starts_with("rc |deinstall ok config-files|"), "{s}");
    for f in FILES {
        let kept = f.starts_with("/etc/");
        assert_eq!(Path::new(f).exists(), kept, "{f} after dpkg -r");
    }
    assert!(!Path::new("/usr/lib/volsnap").exists());
    assert!(!Path::new("/usr/share/volsnap").exists());
    for f in MAN {
        assert!(!Path::new(f).exists(), "{f} after dpkg -r");
    }

    // Purge: the conffile too.
    dpkg_ok(&["--purge", "volsnap"]);
    assert_eq!(status(), None);
    for f in FILES {
        assert!(!Path::new(f).exists(), "{f} after dpkg --purge");
    }
    if !etc_existed {
        assert!(!Path::new("/etc/volsnap").exists());
    }
}
