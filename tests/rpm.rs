//! `make rpm`, then the package as rpm reads it (fields, dependencies, files
//! with owners and modes, the config file, the scriptlets) and installed with
//! the real rpm into a scratch root (`rpm --root`): the binary runs from
//! there, `volsnap check` accepts the installed hooks, `rpm -V` is clean, and
//! `rpm -e` takes everything away but an edited config. Nothing touches this
//! machine's own files or rpm database. The scriptlets are not run there (a
//! scratch root has no shell to run them with); they are the Debian maintainer
//! scripts' twins, which tests/deb.rs runs for real, and `sh -n` checks them.

#[path = "support/package.rs"]
mod package;

use std::os::unix::fs::MetadataExt;

use package::{build, mode_of, ok, run, text, FILES, MAN, VERSION};

/// Where zsh looks for completions on RPM distributions.
const ZSH: &str = "/usr/share/zsh/site-functions/_volsnap";

/// Every file the package installs (directories aside).
fn files() -> Vec<&'static str> {
    FILES
        .iter()
        .copied()
        .chain([ZSH])
        .chain(MAN.iter().copied())
        .collect()
}

fn query(rpm: &str, format: &str) -> String {
    ok(30, &["rpm", "-qp", "--queryformat", format, rpm])
}

#[test]
fn the_rpm_installs_into_a_root_and_erases_cleanly() {
    let rpm = build("rpm", &format!("target/volsnap-{VERSION}-1.x86_64.rpm"));
    let rpm = rpm.as_str();

    // Fields, and no dependency but a shell for the scriptlets: the binary
    // is static.
    assert_eq!(
        query(rpm, "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}"),
        format!("volsnap {VERSION} 1 x86_64 Apache-2.0")
    );
    let requires = ok(30, &["rpm", "-qp", "--requires", rpm]);
    for line in requires.lines() {
        assert!(
            line == "/bin/sh" || line.starts_with("rpmlib("),
            "unexpected dependency {line:?}:\n{requires}"
        );
    }

    // Files: every one, owned by root, with its mode; nothing else but
    // directories (and rpm's build-id links are off).
    let listing = ok(30, &["rpm", "-qlvp", rpm]);
    let mut listed = Vec::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (mode, owner, group, path) = (cols[0], cols[2], cols[3], cols[cols.len() - 1]);
        assert_eq!((owner, group), ("root", "root"), "{line}");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "{line}");
            continue;
        }
        let want = if mode_of(path) == 0o755 {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "{line}");
        listed.push(path);
    }
    let mut want = files();
    want.sort();
    listed.sort();
    assert_eq!(listed, want, "rpm -qlvp:\n{listing}");
    assert_eq!(
        ok(30, &["rpm", "-qpc", rpm]).trim(),
        "/etc/volsnap/volsnap.toml.sample"
    );

    // The scriptlets: valid sh; systemd reloaded; the timer disabled on
    // removal and never enabled.
    for tag in ["POSTIN", "PREUN", "POSTUN"] {
        let script = query(rpm, &format!("%{{{tag}}}"));
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), &script).unwrap();
        ok(30, &["sh", "-n", path.path().to_str().unwrap()]);
        let code: Vec<&str> = script
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        assert!(
            !code
                .iter()
                .any(|l| l.contains("enable") && !l.contains("disable")),
            "{tag} enables something:\n{script}"
        );
        let want = if tag == "PREUN" {
            "disable volsnap.timer"
        } else {
            "daemon-reload"
        };
        assert!(code.iter().any(|l| l.contains(want)), "{tag}:\n{script}");
    }

    // Installed into a scratch root with the real rpm.
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    ok(60, &["rpm", "--root", r, "--initdb"]);
    ok(
        120,
        &["rpm", "--root", r, "-i", "--nodeps", "--noscripts", rpm],
    );
    for f in files() {
        let m = std::fs::metadata(root.path().join(&f[1..])).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, mode_of(f)),
            "{f}"
        );
    }
    // No /bin/sh in the scratch root: only the files are verified.
    let out = run(60, &["rpm", "--root", r, "-V", "--nodeps", "volsnap"]);
    assert!(out.status.success(), "rpm -V: {}", text(&out));

    let volsnap = root.path().join("usr/bin/volsnap");
    let version = ok(30, &[volsnap.to_str().unwrap(), "--version"]);
    assert_eq!(version.trim(), format!("volsnap {VERSION}"));
    let config = root.path().join("etc/volsnap/volsnap.toml");
    let hooks = root.path().join("usr/lib/volsnap/hooks");
    std::fs::create_dir(root.path().join("srv")).unwrap();
    for datastore in ["mysql", "postgresql", "redis", "none"] {
        std::fs::write(
            &config,
            format!(
                "storage_strategy = \"Swift\"\ndatastore = \"{datastore}\"\nmounts = [\"{}\"]\n\
                 [hooks]\ndir = \"{}\"\n",
                root.path().join("srv").display(),
                hooks.display()
            ),
        )
        .unwrap();
        let out = ok(
            30,
            &[
                volsnap.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "check",
                "--offline",
            ],
        );
        assert!(out.starts_with("ok: "), "{datastore}: {out}");
    }
    std::fs::remove_file(&config).unwrap();

    // Erase: an edited sample is kept as .rpmsave; everything else goes.
    let sample = root.path().join("etc/volsnap/volsnap.toml.sample");
    std::fs::write(&sample, "# edited\n").unwrap();
    ok(120, &["rpm", "--root", r, "-e", "--noscripts", "volsnap"]);
    for f in files() {
        assert!(!root.path().join(&f[1..]).exists(), "{f} after rpm -e");
    }
    for dir in ["usr/lib/volsnap", "usr/share/volsnap"] {
        assert!(!root.path().join(dir).exists(), "{dir} after rpm -e");
    }
    assert!(root
        .path()
        .join("etc/volsnap/volsnap.toml.sample.rpmsave")
        .exists());
}
