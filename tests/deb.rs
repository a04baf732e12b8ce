//! `make deb`, then `dpkg -i` of the built package into the real system (CI
//! runs as root on a throwaway machine): what it installs, with which owners
//! and modes, that the binary and units work from there, and that `dpkg -r`
//! and `dpkg --purge` take it all away again. A guard purges the package
//! whatever happens. A `volsnap` package this test did not build, or a
//! volsnap installed without dpkg (`make install`), makes the test refuse
//! rather than overwrite or remove it.

#[path = "support/package.rs"]
mod package;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use package::{build, mode_of, ok, run, text, FILES, MAN, VERSION};

const MAINTAINER: &str = "volsnap developers <volsnap@localhost>";

/// Where Debian's zsh looks for completions.
const ZSH: &str = "/usr/share/zsh/vendor-completions/_volsnap";

/// Every file the package installs (directories aside).
fn files() -> Vec<&'static str> {
    FILES.iter().copied().chain([ZSH]).collect()
}

/// In the package, but a dpkg path-exclude (minimal images) may drop it,
/// and the man pages ([`MAN`]).
const DOC: &str = "/usr/share/doc/volsnap/copyright";

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
    for f in &files() {
        assert!(
            !Path::new(f).exists(),
            "{f} exists but no volsnap package is installed (make install?): \
             dpkg -i would overwrite it and dpkg -r remove it; remove it to run this test"
        );
    }
    let etc_existed = Path::new("/etc/volsnap").exists();

    let deb = build("deb", &format!("target/volsnap_{VERSION}_amd64.deb"));
    let deb = deb.as_str();

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
    for f in files().iter().chain([&DOC]).chain(MAN) {
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
    for f in &files() {
        let m = std::fs::metadata(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, mode_of(f)),
            "{f}"
        );
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
    for f in &files() {
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
                "/usr/lib/systemd/system/volsnap-archive.service",
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
    for f in &files() {
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
    for f in &files() {
        assert!(!Path::new(f).exists(), "{f} after dpkg --purge");
    }
    if !etc_existed {
        assert!(!Path::new("/etc/volsnap").exists());
    }
}
