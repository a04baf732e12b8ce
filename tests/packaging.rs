//! The shipped units, cloud-config and qemu-ga wiring are checked by the
//! tools that will read them.

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn systemd_units_verify() {
    // systemd-analyze wants ExecStart's binary to exist: point it at the build.
    let tmp = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(repo("packaging/systemd/volsnap.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/bin/volsnap backup"));
    std::fs::write(
        tmp.path().join("volsnap.service"),
        service.replace("/usr/bin/volsnap", env!("CARGO_BIN_EXE_volsnap")),
    )
    .unwrap();
    std::fs::copy(
        repo("packaging/systemd/volsnap.timer"),
        tmp.path().join("volsnap.timer"),
    )
    .unwrap();
    let archive =
        std::fs::read_to_string(repo("packaging/systemd/volsnap-archive.service")).unwrap();
    assert!(archive.contains("ExecStart=/usr/bin/volsnap archive\n"));
    std::fs::write(
        tmp.path().join("volsnap-archive.service"),
        archive.replace("/usr/bin/volsnap", env!("CARGO_BIN_EXE_volsnap")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(tmp.path().join("volsnap.service"))
        .arg(tmp.path().join("volsnap.timer"))
        .arg(tmp.path().join("volsnap-archive.service"))
        .output()
        .expect("systemd-analyze (Debian systemd) is installed by scripts/install-deps.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// The units' sandbox, as systemd scores it: at most 5.0 for the backup
/// (tests/systemd.rs runs the unit with it under a real systemd), at most
/// 4.0 for the archiver, which freezes nothing (and runs only the mysql
/// hook's archive-settings and binlog-flush, for MariaDB's binary logs).
#[test]
fn the_services_are_hardened() {
    for (unit, limit) in [("volsnap.service", 5.0), ("volsnap-archive.service", 4.0)] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(repo(&format!("packaging/systemd/{unit}")))
            .output()
            .expect("systemd-analyze (Debian systemd) is installed by scripts/install-deps.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split(&format!("exposure level for {unit}: ")).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}: {text}"));
        assert!(score <= limit, "{unit}: exposure {score}:\n{text}");
        eprintln!("{unit}: exposure {score}");
    }
}

#[test]
fn cloud_config_is_valid() {
    let out = Command::new("cloud-init")
        .args(["schema", "-c"])
        .arg(repo("etc/cloud-init.yaml"))
        .output()
        .expect("cloud-init is installed by scripts/install-deps.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Valid cloud-config"), "{text}");
}

/// The cloud-config's runcmd, turned into the script cloud-init runs (by
/// cloud-init's own `shellify`), against a `volsnap` that fails its check
/// and one that passes: the timer is enabled only after a passing check.
#[test]
fn a_failing_check_leaves_the_timer_disabled() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("runcmd");
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, yaml\nfrom cloudinit import util\n\
             d = yaml.safe_load(open(sys.argv[1]))\n\
             open(sys.argv[2], 'w').write(util.shellify(d['runcmd']))",
        ])
        .arg(repo("etc/cloud-init.yaml"))
        .arg(&script)
        .output()
        .expect("cloud-init's python is installed by scripts/install-deps.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = tmp.path().join("calls");
    for check in [1, 0] {
        let _ = std::fs::remove_file(&calls);
        for (name, code) in [("volsnap", check), ("systemctl", 0)] {
            let fake = bin.join(name);
            std::fs::write(
                &fake,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> {}\nexit {code}\n",
                    calls.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let out = Command::new("sh")
            .arg(&script)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        let called = std::fs::read_to_string(&calls).unwrap_or_default();
        if check == 0 {
            assert!(out.status.success(), "{out:?}");
            assert_eq!(
                called,
                "volsnap check\nsystemctl enable --now volsnap.timer\n"
            );
        } else {
            assert!(!out.status.success(), "a failed check must fail runcmd");
            assert_eq!(
                called, "volsnap check\n",
                "the timer was enabled after a failed check"
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("volsnap.timer is NOT enabled"),
                "{out:?}"
            );
        }
    }
}

#[test]
fn the_cloud_config_carries_a_config_volsnap_accepts() {
    let yaml = std::fs::read_to_string(repo("etc/cloud-init.yaml")).unwrap();
    let start = yaml.find("content: |\n").unwrap() + "content: |\n".len();
    let end = yaml.find("runcmd:").unwrap();
    let toml: String = yaml[start..end]
        .lines()
        .map(|l| l.strip_prefix("      ").unwrap_or(l).to_string() + "\n")
        .collect();
    let settings = volsnap::config::parse(Path::new("/etc/volsnap/volsnap.toml"), &toml).unwrap();
    assert_eq!(settings.strategy, volsnap::config::Strategy::Cinder);
}

#[test]
fn the_qemu_ga_drop_in_makes_volsnap_the_hook() {
    let drop_in =
        std::fs::read_to_string(repo("etc/qemu-ga/qemu-guest-agent.service.d-volsnap.conf"))
            .unwrap();
    // volsnap itself, not the stock wrapper (which ignores exit codes).
    assert!(
        drop_in.contains(
            "\nExecStart=\nExecStart=-/usr/sbin/qemu-ga -F/usr/lib/volsnap/fsfreeze-hook\n"
        ),
        "{drop_in}"
    );
    let hook = std::fs::read_to_string(repo("etc/qemu-ga/fsfreeze-hook")).unwrap();
    assert!(hook.contains("exec /usr/bin/volsnap hook \"$@\""));
    let hook_d = std::fs::read_to_string(repo("etc/qemu-ga/volsnap")).unwrap();
    assert!(hook_d.contains("exec /usr/bin/volsnap hook \"$1\""));
    assert!(hook_d.contains("WARNING"), "{hook_d}");
    for script in ["etc/qemu-ga/fsfreeze-hook", "etc/qemu-ga/volsnap"] {
        let out = Command::new("shellcheck")
            .arg(repo(script))
            .output()
            .expect("shellcheck");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
