//! volsnap.service and volsnap.timer under a real systemd (Debian's 252),
//! booted as PID 1 of a private PID and mount namespace, against the
//! loopback cloud.
//!
//! What keeps the host safe, measured on this machine: the boot gets tmpfs
//! mounts of its own on /tmp and /run (systemd-tmpfiles would wipe the
//! host's /tmp otherwise), boots a target that wants nothing (not the
//! default one: every service with an enable link would start), keeps its
//! journal in memory, and the units under test get `DefaultDependencies=no`
//! in a drop-in, so that sysinit.target (sysctl, sysusers, remount-fs …,
//! which act on the whole machine) is never pulled in. Only the shipped
//! units' dependencies change; their [Service] sections run as shipped.
//! The namespace ends when its PID 1 is killed, which Drop does.

#[path = "support/cloud.rs"]
mod cloud;
#[path = "support/package.rs"]
mod package;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cloud::{is_good, Cloud, DataVolume};
use support::{hooks_dir, wait_until};
use volsnap::freeze;

/// Where everything the booted systemd and the unit must see lives: not
/// under /tmp or /var/tmp (the boot's and PrivateTmp= hide them), nor
/// /home or /root (ProtectHome=read-only), nor /usr or /etc (ProtectSystem).
const BASE: &str = "/var/lib";

struct Systemd {
    /// The `unshare` process; systemd is its child.
    unshare: Child,
    /// systemd's pid as the host sees it.
    pid: u32,
    dir: tempfile::TempDir,
}

impl Systemd {
    /// Boots with the repo's volsnap.service and volsnap.timer, each with a
    /// drop-in: `args` (volsnap's arguments), `env` (the environment file).
    /// The build is copied next to the units: the checkout may be under
    /// /tmp, which the boot replaces.
    fn boot(args: &str, env_file: &Path) -> Systemd {
        Systemd::boot_image(args, env_file, None)
    }

    /// `deb`: a first boot of an image with that package installed (the
    /// built .deb, `dpkg -i` before the boot). /etc, /usr, /var/lib,
    /// /var/log and /var/cache become overlays whose changes live in the
    /// namespace's /run: what dpkg and cloud-init write never reaches the
    /// host. The package's own units run, with the drop-ins only.
    fn boot_image(args: &str, env_file: &Path, deb: Option<&str>) -> Systemd {
        let image = deb.is_some();
        let dir = tempfile::Builder::new()
            .prefix("volsnap-systemd-")
            .tempdir_in(BASE)
            .unwrap();
        // What the boot needs from the checkout, copied where it can see it.
        let exec = match deb {
            Some(deb) => {
                std::fs::copy(deb, dir.path().join("volsnap.deb")).unwrap();
                "/usr/bin/volsnap".to_string()
            }
            None => {
                let exe = dir.path().join("volsnap");
                std::fs::copy(env!("CARGO_BIN_EXE_volsnap"), &exe).unwrap();
                exe.display().to_string()
            }
        };
        let units = dir.path().join("units");
        std::fs::create_dir_all(units.join("volsnap.service.d")).unwrap();
        std::fs::create_dir_all(units.join("volsnap.timer.d")).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
        for unit in ["volsnap.service", "volsnap.timer"] {
            std::fs::copy(repo.join(unit), units.join(unit)).unwrap();
        }
        std::fs::write(
            units.join("volsnap-test.target"),
            "[Unit]\nDescription=volsnap test boot: wants nothing\n",
        )
        .unwrap();
        let no_sysinit = "[Unit]\nDefaultDependencies=no\nRequires=systemd-journald.socket\nAfter=systemd-journald.socket\n";
        std::fs::write(
            units.join("volsnap.service.d/test.conf"),
            format!(
                "{no_sysinit}[Service]\nExecStart=\nExecStart={exec} {args}\nEnvironmentFile={}\n",
                env_file.display()
            ),
        )
        .unwrap();
        std::fs::write(units.join("volsnap.timer.d/test.conf"), no_sysinit).unwrap();
        let boot = dir.path().join("boot.sh");
        std::fs::write(
            &boot,
            format!(
                "#!/bin/sh\nset -e\n\
                 mount -t tmpfs -o mode=1777 tmpfs /tmp\n\
                 mount -t tmpfs -o mode=755 tmpfs /run\n\
                 mkdir -p /run/systemd/system /run/systemd/journald.conf.d\n\
                 printf '[Journal]\\nStorage=volatile\\n' > /run/systemd/journald.conf.d/volatile.conf\n\
                 {image}\
                 cp -r {units}/. {unit_dir}/\n\
                 exec env container=volsnap-test /lib/systemd/systemd --system --unit=volsnap-test.target\n",
                units = units.display(),
                image = match deb {
                    Some(_) => format!(
                        "for d in /etc /usr /var/lib /var/log /var/cache; do\n\
                           o=/run/overlay$d; mkdir -p $o/upper $o/work\n\
                           mount -t overlay overlay -o lowerdir=$d,upperdir=$o/upper,workdir=$o/work $d\n\
                         done\n\
                         DEBIAN_FRONTEND=noninteractive dpkg -i {deb} >/run/dpkg.log 2>&1\n\
                         rm {units}/volsnap.service {units}/volsnap.timer\n",
                        units = units.display(),
                        deb = dir.path().join("volsnap.deb").display(),
                    ),
                    None => String::new(),
                },
                unit_dir = if image {
                    "/etc/systemd/system"
                } else {
                    "/run/systemd/system"
                },
            ),
        )
        .unwrap();
        std::fs::set_permissions(&boot, std::fs::Permissions::from_mode(0o755)).unwrap();
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
            ])
            .arg(&boot)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let pid = loop {
            let children = std::fs::read_to_string(format!(
                "/proc/{}/task/{}/children",
                unshare.id(),
                unshare.id()
            ))
            .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                break pid.parse().unwrap();
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no systemd");
            std::thread::sleep(Duration::from_millis(20));
        };
        let systemd = Systemd { unshare, pid, dir };
        loop {
            let out = systemd.run(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "systemd did not come up: {state:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        systemd
    }

    /// A command inside the namespace (bounded: `timeout` kills it).
    fn run(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args([
                "60",
                "nsenter",
                "-t",
                &self.pid.to_string(),
                "-m",
                "-p",
                "--",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&["systemctl", "show", "-P", property, unit])
            .trim()
            .to_string()
    }

    fn journal(&self) -> String {
        self.ok(&[
            "journalctl",
            "-u",
            "volsnap.service",
            "-o",
            "cat",
            "--no-pager",
        ])
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // SIGKILL to the namespace's PID 1 ends the namespace and every
        // process in it.
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let _ = &self.dir;
    }
}

/// A `none`-like hook that records its actions in `marks` (off the frozen fs).
fn marking_hook(dir: &Path) -> (PathBuf, PathBuf) {
    let marks = dir.join("marks");
    let body = format!("#!/bin/sh\necho \"$1\" >> {}\nexit 0\n", marks.display());
    (hooks_dir(dir, &[("none", &body)]), marks)
}

fn marks(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The config (runtime dir: the unit's /run/volsnap) and the environment
/// file with the cloud's credentials, both 0600.
fn setup(cloud: &Cloud, dir: &Path, volume: &DataVolume, hooks: &Path) -> (PathBuf, PathBuf) {
    let config = dir.join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [{mount:?}]\n\
             [hooks]\ndir = {hooks:?}\ntimeout = \"20s\"\n[cinder]\nmax_freeze = \"20s\"\n\
             [cinder.volumes]\n{mount:?} = {id:?}\n",
            mount = volume.path().display().to_string(),
            hooks = hooks.display().to_string(),
            id = volume.id,
        ),
    )
    .unwrap();
    let env = dir.join("os.env");
    let lines: Vec<String> = cloud
        .os_vars()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    std::fs::write(&env, lines.join("\n") + "\n").unwrap();
    for f in [&config, &env] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (config, env)
}

#[test]
fn the_service_backs_up_survives_a_kill_and_a_stop_and_the_timer_is_scheduled() {
    let cloud = Cloud::load();
    let knobs = cloud.knobs();
    let work = tempfile::Builder::new()
        .prefix("volsnap-systemd-work-")
        .tempdir_in(BASE)
        .unwrap();
    // Mounted before the boot: the namespace sees the mounts it starts with.
    let volume = DataVolume::new_in(&cloud, "ext4", work.path());
    let (hooks, marks_file) = marking_hook(work.path());
    let (config, env) = setup(&cloud, work.path(), &volume, &hooks);
    let systemd = Systemd::boot(&format!("--config {} backup", config.display()), &env);

    // 1. A backup, as the timer would start it.
    systemd.ok(&["systemctl", "start", "volsnap.service"]);
    assert_eq!(systemd.show("volsnap.service", "Result"), "success");
    let journal = systemd.journal();
    assert!(journal.contains("thawed after"), "{journal}");
    // journald stamps each line: volsnap's own lines carry no second stamp.
    assert!(
        journal
            .lines()
            .filter(|l| l.contains("thawed after"))
            .all(|l| !l.starts_with("20") && !l.starts_with('[')),
        "{journal}"
    );
    let snaps = volume.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(is_good(&snaps[0]), "{snaps:?}");
    assert_eq!(marks(&marks_file), "freeze\nthaw\n");
    delete(&cloud, &snaps[0].id);

    // 2. The main process SIGKILLed inside the freeze window: the watchdog,
    // in the unit's cgroup, thaws and releases; nothing is labelled good.
    std::fs::write(&marks_file, "").unwrap();
    knobs.delay(4.0);
    systemd.ok(&["systemctl", "start", "--no-block", "volsnap.service"]);
    wait_until(Duration::from_secs(20), "a snapshot", || {
        !volume.snapshots().is_empty()
    });
    systemd.ok(&[
        "systemctl",
        "kill",
        "--kill-whom=main",
        "-s",
        "KILL",
        "volsnap.service",
    ]);
    let writable = wait_until(Duration::from_secs(1), "writable after the kill", || {
        !freeze::is_frozen(volume.path()).unwrap()
    });
    wait_until(Duration::from_secs(2), "the hook's thaw", || {
        marks(&marks_file).contains("thaw")
    });
    knobs.clear();
    wait_until(
        Duration::from_secs(30),
        "the torn snapshot available",
        || volume.snapshots().iter().all(|s| s.status == "available"),
    );
    let torn = volume.snapshots();
    assert!(torn.iter().all(|s| !is_good(s)), "{torn:?}");
    wait_until(Duration::from_secs(30), "the unit to stop", || {
        systemd.show("volsnap.service", "ActiveState") != "activating"
    });
    // The next run (the same /run/volsnap) removes what the killed one left.
    systemd.ok(&["systemctl", "reset-failed", "volsnap.service"]);
    systemd.ok(&["systemctl", "start", "volsnap.service"]);
    let after = volume.snapshots();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(is_good(&after[0]) && after[0].id != torn[0].id, "{after:?}");
    delete(&cloud, &after[0].id);

    // 3. `systemctl stop` inside the window: volsnap thaws at once, runs the
    // hook's thaw, deletes the run's snapshot, and the unit is inactive well
    // within TimeoutStopSec.
    std::fs::write(&marks_file, "").unwrap();
    knobs.delay(3.0);
    systemd.ok(&["systemctl", "start", "--no-block", "volsnap.service"]);
    wait_until(Duration::from_secs(20), "a snapshot", || {
        !volume.snapshots().is_empty()
    });
    let stopping = Instant::now();
    systemd.ok(&["systemctl", "stop", "volsnap.service"]);
    let stopped = stopping.elapsed();
    assert!(!freeze::is_frozen(volume.path()).unwrap());
    assert_eq!(marks(&marks_file), "freeze\nthaw\n");
    assert!(
        stopped < Duration::from_secs(30),
        "stop took {stopped:?} (TimeoutStopSec=120)"
    );
    assert_eq!(systemd.show("volsnap.service", "ActiveState"), "failed");
    assert!(volume.snapshots().is_empty(), "{:?}", volume.snapshots());
    let journal = systemd.journal();
    assert!(journal.contains("interrupted by a signal"), "{journal}");
    knobs.clear();

    // 4. The timer: loaded, and scheduled once started.
    systemd.ok(&["systemctl", "start", "volsnap.timer"]);
    assert_eq!(systemd.show("volsnap.timer", "ActiveState"), "active");
    let next = systemd.show("volsnap.timer", "NextElapseUSecRealtime");
    assert!(!next.is_empty() && next != "0", "next elapse: {next:?}");
    eprintln!("writable {writable:?} after SIGKILL; stop took {stopped:?}; timer next {next}");
}

fn delete(cloud: &Cloud, id: &str) {
    let cinder = cloud.cinder();
    cinder.delete_snapshot(id).unwrap();
    cinder
        .wait_snapshot(
            id,
            volsnap::openstack::cinder::Target::Gone,
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap();
}

/// cloud-init 22.4's four stages, run for real inside the booted systemd on
/// a NoCloud seed made of etc/cloud-init.yaml (its volsnap config replaced
/// by one for the test cloud), on an "image" with the built .deb installed
/// (what the example asks of an image): the
/// config lands 0600 root, `volsnap check` passes and the timer is enabled
/// and scheduled. A seed whose credentials are wrong: the check fails, the
/// timer stays disabled, and cloud-init's output log says why.
#[test]
fn cloud_init_first_boot_enables_the_timer_only_after_a_passing_check() {
    let cloud = Cloud::load();
    // Outside every overlay of the image boot (/etc, /usr, /var/lib, /var/log).
    let work = tempfile::Builder::new()
        .prefix("volsnap-cloud-init-")
        .tempdir_in("/srv")
        .unwrap();
    let volume = DataVolume::new_in(&cloud, "ext4", work.path());
    let (hooks, _) = marking_hook(work.path());
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/cloud-init.yaml"))
            .unwrap();
    let seed = |secret: &str| -> String {
        let config = format!(
            "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [{mount:?}]\n\
             [openstack]\nauth_url = {url:?}\nauth_type = \"v3applicationcredential\"\n\
             application_credential_id = {id:?}\napplication_credential_secret = {secret:?}\n\
             region_name = {region:?}\n[hooks]\ndir = {hooks:?}\n[cinder.volumes]\n{mount:?} = {vol:?}\n",
            mount = volume.path().display().to_string(),
            url = cloud.get("OS_AUTH_URL"),
            id = cloud.get("OS_APPLICATION_CREDENTIAL_ID"),
            region = cloud.get("OS_REGION_NAME"),
            hooks = hooks.display().to_string(),
            vol = volume.id,
        );
        let start = shipped.find("    content: |\n").unwrap() + "    content: |\n".len();
        let end = shipped.find("runcmd:").unwrap();
        let indented: String = config.lines().map(|l| format!("      {l}\n")).collect();
        format!("{}{indented}{}", &shipped[..start], &shipped[end..])
    };
    let cfg = "datasource_list: [NoCloud]\nnetwork: {config: disabled}\n\
               cloud_init_modules: [write_files]\ncloud_config_modules: [runcmd]\n\
               cloud_final_modules: [scripts_user]\n";
    let env = work.path().join("empty.env");
    std::fs::write(&env, "").unwrap();
    // The image: the built package, installed as an image build would.
    let deb = package::build(
        "deb",
        &format!("target/volsnap_{}_amd64.deb", package::VERSION),
    );
    for (secret, passes) in [
        (cloud.get("OS_APPLICATION_CREDENTIAL_SECRET"), true),
        ("wrong", false),
    ] {
        let dir = work.path().join(if passes { "good" } else { "bad" });
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("user-data"), seed(secret)).unwrap();
        std::fs::write(dir.join("meta-data"), "instance-id: volsnap-test\n").unwrap();
        std::fs::write(dir.join("99-volsnap-test.cfg"), cfg).unwrap();
        let systemd = Systemd::boot_image("backup", &env, Some(&deb));
        systemd.ok(&[
            "sh",
            "-c",
            &format!(
                "mkdir -p /var/lib/cloud/seed/nocloud && cp {d}/user-data {d}/meta-data /var/lib/cloud/seed/nocloud/ \
                 && cp {d}/99-volsnap-test.cfg /etc/cloud/cloud.cfg.d/ && rm -f /etc/cloud/cloud-init.disabled",
                d = dir.display()
            ),
        ]);
        for stage in [
            &["cloud-init", "init", "--local"][..],
            &["cloud-init", "init"],
            &["cloud-init", "modules", "--mode", "config"],
        ] {
            systemd.ok(stage);
        }
        let final_stage = systemd.run(&["cloud-init", "modules", "--mode", "final"]);
        let log = systemd.ok(&["cat", "/var/log/cloud-init-output.log"]);
        let stat = systemd.ok(&["stat", "-c", "%a %U", "/etc/volsnap/volsnap.toml"]);
        assert_eq!(stat.trim(), "600 root", "{log}");
        let enabled = systemd.run(&["systemctl", "is-enabled", "volsnap.timer"]);
        let enabled = String::from_utf8_lossy(&enabled.stdout).trim().to_string();
        if passes {
            assert!(final_stage.status.success(), "{log}");
            assert!(log.contains("ok: volume for"), "{log}");
            assert_eq!(enabled, "enabled", "{log}");
            assert_eq!(systemd.show("volsnap.timer", "ActiveState"), "active");
        } else {
            assert!(!final_stage.status.success(), "{log}");
            assert!(log.contains("problem: authentication"), "{log}");
            assert!(log.contains("volsnap.timer is NOT enabled"), "{log}");
            assert_eq!(enabled, "disabled", "{log}");
        }
    }
}
