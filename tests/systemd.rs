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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloud::{is_good, Cloud, DataVolume};
use support::{hooks_dir, wait_until};
use volsnap::archive::spool::local_user;
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
        Systemd::boot_units(
            &[("volsnap.service", Some(args)), ("volsnap.timer", None)],
            env_file,
            deb,
        )
    }

    /// The repo's `units` as shipped, each service's with `ExecStart=` set
    /// to the build and those arguments in its drop-in.
    fn boot_units(units: &[(&str, Option<&str>)], env_file: &Path, deb: Option<&str>) -> Systemd {
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
        let unit_files = units;
        let units = dir.path().join("units");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
        let no_sysinit = "[Unit]\nDefaultDependencies=no\nRequires=systemd-journald.socket\nAfter=systemd-journald.socket\n";
        for (unit, args) in unit_files {
            std::fs::create_dir_all(units.join(format!("{unit}.d"))).unwrap();
            std::fs::copy(repo.join(unit), units.join(unit)).unwrap();
            let drop_in = match args {
                Some(args) => format!(
                    "{no_sysinit}[Service]\nExecStart=\nExecStart={exec} {args}\nEnvironmentFile={}\n",
                    env_file.display()
                ),
                None => no_sysinit.to_string(),
            };
            std::fs::write(units.join(format!("{unit}.d/test.conf")), drop_in).unwrap();
        }
        std::fs::write(
            units.join("volsnap-test.target"),
            "[Unit]\nDescription=volsnap test boot: wants nothing\n",
        )
        .unwrap();
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
                         rm {shipped}\n",
                        shipped = unit_files
                            .iter()
                            .map(|(u, _)| units.join(u).display().to_string())
                            .collect::<Vec<_>>()
                            .join(" "),
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
        self.journal_of("volsnap.service")
    }

    fn journal_of(&self, unit: &str) -> String {
        self.ok(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"])
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

/// A TCP relay in front of Swift whose uploads can be slowed and whose
/// connections can be cut: a test needs an upload in flight at the moment
/// it stops or kills the service, and Swift's own connection dropped in the
/// middle of one, which the real Swift cannot be made to do on cue.
struct Relay {
    port: u16,
    /// Client-to-Swift bytes per second; 0: as fast as they come.
    rate: Arc<AtomicU64>,
    /// Client-to-Swift bytes relayed so far.
    sent: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// Swift unreachable: new connections are closed at once.
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn new(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            port: listener.local_addr().unwrap().port(),
            rate: Arc::default(),
            sent: Arc::default(),
            conns: Arc::default(),
            down: Arc::default(),
            stop: Arc::default(),
        };
        let (rate, sent, conns, down, stop) = (
            relay.rate.clone(),
            relay.sent.clone(),
            relay.conns.clone(),
            relay.down.clone(),
            relay.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if down.load(Ordering::SeqCst) {
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(upstream.try_clone().unwrap());
                }
                let (mut from, mut to) =
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let (rate, sent) = (rate.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent.fetch_add(n as u64, Ordering::SeqCst);
                        let r = rate.load(Ordering::SeqCst);
                        if r > 0 {
                            std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                let (mut from, mut to) = (upstream, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        relay
    }

    /// Cuts every connection open now, both ways, and with `down` refuses
    /// the next ones (the client's retries) until it is `false` again.
    fn cut(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut(true);
    }
}

/// The test's archive container, emptied and removed on drop.
struct ArchiveContainer {
    swift: volsnap::openstack::Swift,
    name: String,
}

impl ArchiveContainer {
    /// WAL file name → object name.
    fn objects(&self) -> BTreeMap<String, String> {
        match self.swift.list_objects(&self.name, "") {
            Ok(list) => list
                .into_iter()
                .filter_map(|e| Some((e.name.rsplit_once("/wal/")?.1.to_string(), e.name)))
                .collect(),
            Err(e) if e.is_not_found() => BTreeMap::new(),
            Err(e) => panic!("listing {}: {e}", self.name),
        }
    }
}

impl Drop for ArchiveContainer {
    fn drop(&mut self) {
        if let Ok(objects) = self.swift.list_objects(&self.name, "") {
            for o in objects {
                let _ = self.swift.delete_object(&self.name, &o.name);
            }
        }
        let _ = self.swift.delete_container(&self.name);
    }
}

/// volsnap-archive.service from the built .deb, installed with `dpkg -i` in
/// the booted image (its drop-in changes only the unit's dependencies and
/// adds the environment file with the cloud's credentials; the package's
/// static /usr/bin/volsnap runs, reading /etc/volsnap/volsnap.toml),
/// enabled and started, shipping to the test cloud's Swift through a
/// [`Relay`]:
/// 1. a file `postgres` pushes into the spool is shipped, with its content,
///    and the metrics file is written (the sandbox lets it create the spool
///    for postgres, read and remove its files, write the metrics);
/// 2. `systemctl stop` while a file is being uploaded: the upload ends,
///    the file is in Swift and gone from the spool, the unit inactive;
/// 3. `systemctl stop` and Swift's connection cut mid-upload: nothing is
///    counted shipped, the file stays in the spool, nothing half-written in
///    Swift, and the unit stops cleanly (exit 0);
/// 4. SIGKILL mid-upload: `Restart=` brings it back after `RestartSec`,
///    and the file left in the spool is shipped then.
#[test]
fn the_archive_service_ships_the_spool_stops_cleanly_and_restarts_after_a_crash() {
    let cloud = Cloud::load();
    let swift = volsnap::openstack::swift(&cloud.session()).unwrap();
    let endpoint = swift.endpoint().clone();
    let target = endpoint.socket_addrs(|| None).unwrap()[0];
    let relay = Relay::new(target);
    let container = ArchiveContainer {
        swift,
        name: cloud::unique("archive-unit"),
    };
    // Outside every overlay of the image boot: the spool and the metrics
    // the service writes are seen here.
    let work = tempfile::Builder::new()
        .prefix("volsnap-systemd-archive-")
        .tempdir_in("/srv")
        .unwrap();
    // postgres must reach the spool (created by the service) and its WAL.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = work.path().join("spool");
    let metrics = work.path().join("metrics");
    std::fs::create_dir(&metrics).unwrap();
    let config = work.path().join("volsnap.toml");
    std::fs::write(
        &config,
        format!(
            "storage_strategy = \"Swift\"\ndatastore = \"postgresql\"\nmetrics_file = {:?}\n\
             [openstack]\nobject_store_endpoint = \"http://127.0.0.1:{}{}\"\n\
             [archive]\ncontainer = {:?}\nspool_dir = {:?}\n",
            metrics.join("volsnap.prom").display().to_string(),
            relay.port,
            endpoint.path().trim_end_matches('/'),
            container.name,
            spool.display().to_string(),
        ),
    )
    .unwrap();
    let env = work.path().join("os.env");
    let lines: Vec<String> = cloud
        .os_vars()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    std::fs::write(&env, lines.join("\n") + "\n").unwrap();
    for f in [&config, &env] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let unit = "volsnap-archive.service";
    let deb = package::build(
        "deb",
        &format!("target/volsnap_{}_amd64.deb", package::VERSION),
    );
    // The ExecStart the unit ships, kept as it is.
    let systemd = Systemd::boot_units(&[(unit, Some("archive"))], &env, Some(&deb));
    let shipped = systemd.ok(&["systemctl", "cat", unit]);
    assert!(
        // /lib is /usr/lib on Debian 12 (merged /usr).
        shipped.contains("/lib/systemd/system/volsnap-archive.service\n")
            && shipped.contains("ExecStart=/usr/bin/volsnap archive\n"),
        "{shipped}"
    );
    systemd.ok(&[
        "sh",
        "-c",
        &format!(
            "install -m 600 {} /etc/volsnap/volsnap.toml",
            config.display()
        ),
    ]);
    // Enabled as an operator would (in /run: /etc is the host's), and started.
    systemd.ok(&["systemctl", "enable", "--runtime", "--now", unit]);
    assert_eq!(systemd.show(unit, "UnitFileState"), "enabled-runtime");
    wait_until(Duration::from_secs(20), "the service's spool", || {
        spool.is_dir()
    });
    let meta = std::fs::metadata(&spool).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
    assert_eq!(Some((meta.uid(), meta.gid())), local_user("postgres"));

    let wal = work.path().join("pg_wal");
    std::fs::create_dir(&wal).unwrap();
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o755)).unwrap();
    let push = |n: u32| -> (String, Vec<u8>) {
        let name = format!("0000000100000000{n:08X}");
        // Random, so that compression leaves 4 MiB to upload.
        let mut data = vec![0u8; 4 << 20];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut data)
            .unwrap();
        let path = wal.join(&name);
        std::fs::write(&path, &data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(env!("CARGO_BIN_EXE_volsnap"))
            .args(["wal", "push", "--spool"])
            .arg(&spool)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (name, data)
    };
    let in_spool = |name: &str| spool.join(name).exists();
    let fetched = |name: &str| -> Vec<u8> {
        let dest = work.path().join("fetched");
        let out = Command::new(env!("CARGO_BIN_EXE_volsnap"))
            .arg("--config")
            .arg(&config)
            .args(["wal", "fetch", name])
            .arg(&dest)
            .envs(cloud.os_vars())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&dest).unwrap()
    };
    // Until the relay carried `bytes` more towards Swift (an upload begun).
    let uploading = |bytes: u64| {
        let from = relay.sent.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(30), "an upload under way", || {
            relay.sent.load(Ordering::SeqCst) > from + bytes
        });
    };

    // 1. Shipped, with its content; the metrics written.
    let (first, data) = push(1);
    wait_until(Duration::from_secs(30), "the first file shipped", || {
        !in_spool(&first) && container.objects().contains_key(&first)
    });
    assert!(fetched(&first) == data, "{first}: other content in Swift");
    let prom = metrics.join("volsnap-archive.prom");
    wait_until(Duration::from_secs(10), "the metrics", || {
        std::fs::read_to_string(&prom)
            .unwrap_or_default()
            .contains(&format!("segment=\"{first}\""))
    });

    // 2. Stopped while uploading at 1 MiB/s: the file in flight is finished.
    relay.rate.store(1 << 20, Ordering::SeqCst);
    let (second, data) = push(2);
    uploading(512 << 10);
    let stopping = Instant::now();
    systemd.ok(&["systemctl", "stop", unit]);
    let stopped = stopping.elapsed();
    assert_eq!(systemd.show(unit, "ActiveState"), "inactive");
    assert_eq!(systemd.show(unit, "Result"), "success");
    assert!(!in_spool(&second), "the upload in flight was finished");
    relay.rate.store(0, Ordering::SeqCst);
    assert!(fetched(&second) == data, "{second}: other content in Swift");
    assert!(stopped < Duration::from_secs(30), "stop took {stopped:?}");

    // 3. Stopped, and Swift's connection cut mid-upload: nothing counted
    // shipped, the file kept, the unit stopped cleanly.
    systemd.ok(&["systemctl", "start", unit]);
    relay.rate.store(256 << 10, Ordering::SeqCst);
    let (third, data) = push(3);
    uploading(512 << 10);
    systemd.ok(&["systemctl", "stop", "--no-block", unit]);
    std::thread::sleep(Duration::from_millis(200));
    relay.cut(true);
    wait_until(Duration::from_secs(30), "the unit stopped", || {
        systemd.show(unit, "ActiveState") == "inactive"
    });
    assert_eq!(
        systemd.show(unit, "Result"),
        "success",
        "{}",
        systemd.journal_of(unit)
    );
    assert!(
        in_spool(&third),
        "a cut upload must leave the file in the spool"
    );
    assert!(
        !container.objects().contains_key(&third),
        "half an object in Swift"
    );
    let journal = systemd.journal_of(unit);
    let last = journal
        .lines()
        .rfind(|l| l.contains(" shipped, "))
        .unwrap_or_else(|| panic!("no closing line:\n{journal}"));
    assert!(
        last.contains("0 shipped") && last.contains("1 waiting"),
        "{journal}"
    );
    assert!(!journal.contains(&format!("{third} shipped")), "{journal}");
    relay.down.store(false, Ordering::SeqCst);

    // 4. SIGKILL mid-upload: restarted by systemd (RestartSec=10 as
    // shipped), which ships what the killed run left (the third file too).
    relay.rate.store(0, Ordering::SeqCst);
    systemd.ok(&["systemctl", "start", unit]);
    wait_until(Duration::from_secs(30), "the third file shipped", || {
        !in_spool(&third)
    });
    assert!(fetched(&third) == data, "{third}: other content in Swift");
    relay.rate.store(256 << 10, Ordering::SeqCst);
    let (fourth, data) = push(4);
    uploading(512 << 10);
    let restarts = systemd.show(unit, "NRestarts");
    systemd.ok(&["systemctl", "kill", "-s", "KILL", unit]);
    relay.cut(false);
    wait_until(
        Duration::from_secs(5),
        "the unit waiting to restart",
        || systemd.show(unit, "SubState") == "auto-restart",
    );
    assert!(in_spool(&fourth));
    assert!(
        !container.objects().contains_key(&fourth),
        "half an object in Swift"
    );
    relay.rate.store(0, Ordering::SeqCst);
    let restarted = wait_until(Duration::from_secs(30), "a restart", || {
        systemd.show(unit, "NRestarts") != restarts && systemd.show(unit, "ActiveState") == "active"
    });
    wait_until(Duration::from_secs(30), "the fourth file shipped", || {
        !in_spool(&fourth)
    });
    assert!(fetched(&fourth) == data, "{fourth}: other content in Swift");
    assert_eq!(container.objects().len(), 4);
    systemd.ok(&["systemctl", "stop", unit]);
    eprintln!("stop with an upload in flight took {stopped:?}; restarted after {restarted:?}");
}
